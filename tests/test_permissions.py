"""Every role × action × phase against a table written out by hand, not derived from the code."""

import pytest

from app.permissions import RULES, Action, check, required_role, role_allows

PHASE_ROLES = {"demo": "write", "stage": "maintain", "live": "admin"}
ROLES = ["none", "read", "triage", "write", "maintain", "admin"]
# What GitHub may also hand us: old names, other case, custom organisation roles, nothing.
UNUSUAL_ROLES = {"pull": "read", "push": "write", "ADMIN": "admin", "Maintain": "maintain"}
UNKNOWN_ROLES = ["", "owner", "deployer", "superuser", " admin", "admin ", "root", "ádmin"]

_EVERYONE = {"read", "triage", "write", "maintain", "admin"}
_WRITERS = {"write", "maintain", "admin"}
_MAINTAINERS = {"maintain", "admin"}
_ADMINS = {"admin"}

# Who may do what, per phase: the expectation, spelled out.
MAY = {
    (Action.DEPLOY, "demo"): _WRITERS,
    (Action.DEPLOY, "stage"): _MAINTAINERS,
    (Action.DEPLOY, "live"): _ADMINS,
    (Action.PROMOTE, "demo"): _WRITERS,
    (Action.PROMOTE, "stage"): _MAINTAINERS,
    (Action.PROMOTE, "live"): _ADMINS,
    (Action.ROLLBACK, "demo"): _WRITERS,
    (Action.ROLLBACK, "stage"): _MAINTAINERS,
    (Action.ROLLBACK, "live"): _ADMINS,
    (Action.EDIT_PROFILE, "demo"): _WRITERS,
    (Action.EDIT_PROFILE, "stage"): _MAINTAINERS,
    (Action.EDIT_PROFILE, "live"): _ADMINS,
    (Action.MERGE_PROMOTION, "demo"): _WRITERS,
    (Action.MERGE_PROMOTION, "stage"): _MAINTAINERS,
    (Action.MERGE_PROMOTION, "live"): _ADMINS,
    (Action.REMOVE_SERVICES, "demo"): _MAINTAINERS,  # destroying data needs maintain anywhere
    (Action.REMOVE_SERVICES, "stage"): _MAINTAINERS,
    (Action.REMOVE_SERVICES, "live"): _ADMINS,
    (Action.STATUS, "demo"): _EVERYONE,
    (Action.STATUS, "stage"): _EVERYONE,
    (Action.STATUS, "live"): _EVERYONE,
    (Action.HELP, "demo"): _EVERYONE,
    (Action.HELP, "stage"): _EVERYONE,
    (Action.HELP, "live"): _EVERYONE,
    (Action.VIEW, "demo"): _EVERYONE,
    (Action.VIEW, "stage"): _EVERYONE,
    (Action.VIEW, "live"): _EVERYONE,
    (Action.DELETE_APP, "demo"): _ADMINS,  # a whole app, every phase: admin only
    (Action.DELETE_APP, "stage"): _ADMINS,
    (Action.DELETE_APP, "live"): _ADMINS,
    **{(action, phase): who for action in (Action.REDEPLOY, Action.RETRY, Action.CANCEL, Action.FREEZE,
                                           Action.UNFREEZE)
       for phase, who in (("demo", _WRITERS), ("stage", _MAINTAINERS), ("live", _ADMINS))},
    # Previews: a PR's code (maybe a fork's) runs for writers (previews.fork_role's default), in any phase.
    **{(action, phase): _WRITERS for action in (Action.DEPLOY_PREVIEW, Action.REMOVE_PREVIEW)
       for phase in ("demo", "stage", "live")},
    # A freeze is the team's decision: only an admin may deploy through it, in any phase.
    **{(Action.OVERRIDE_FREEZE, phase): _ADMINS for phase in ("demo", "stage", "live")},
}
CHANGES = {
    Action.DEPLOY,
    Action.PROMOTE,
    Action.ROLLBACK,
    Action.EDIT_PROFILE,
    Action.MERGE_PROMOTION,
    Action.REMOVE_SERVICES,
    Action.REDEPLOY,
    Action.RETRY,
    Action.CANCEL,
    Action.FREEZE,
    Action.UNFREEZE,
}
PREVIEWS = {Action.DEPLOY_PREVIEW, Action.REMOVE_PREVIEW}
ADMIN_ONLY = {Action.DELETE_APP, Action.OVERRIDE_FREEZE}
PHASELESS = set(Action) - CHANGES - ADMIN_ONLY - PREVIEWS


def _cases(roles):
    return [
        pytest.param(role, action, phase, id=f"{role or 'empty'}-{action}-{phase}")
        for role in roles
        for action, phase in MAY
    ]


def test_the_expectation_covers_every_action_and_phase():
    assert set(MAY) == {(action, phase) for action in Action for phase in PHASE_ROLES}
    assert set(RULES) == set(Action)


@pytest.mark.parametrize(("role", "action", "phase"), _cases(ROLES))
def test_matrix(role, action, phase):
    decision = check(role, action, phase, PHASE_ROLES)
    assert decision.allowed is (role in MAY[action, phase])
    with_least_role = min(MAY[action, phase], key=ROLES.index)
    assert decision.required == with_least_role


@pytest.mark.parametrize(("role", "action", "phase"), _cases(UNUSUAL_ROLES))
def test_matrix_for_other_spellings_of_a_role(role, action, phase):
    assert check(role, action, phase, PHASE_ROLES).allowed is (
        UNUSUAL_ROLES[role] in MAY[action, phase]
    )


@pytest.mark.parametrize(("role", "action", "phase"), _cases(UNKNOWN_ROLES))
def test_unknown_roles_are_denied_everything(role, action, phase):
    decision = check(role, action, phase, PHASE_ROLES)
    assert not decision.allowed
    assert decision.reason.endswith("(you have none)")


@pytest.mark.parametrize("action", sorted(CHANGES))
@pytest.mark.parametrize("phase", sorted(PHASE_ROLES))
@pytest.mark.parametrize("role", ["none", "read", "triage"])
def test_readers_never_change_anything(role, action, phase):
    assert not check(role, action, phase, PHASE_ROLES).allowed


@pytest.mark.parametrize(
    ("role", "action", "phase", "reason"),
    [
        pytest.param(
            "write", Action.PROMOTE, "stage",
            "promote to stage needs the maintain role (you have write)", id="promote",
        ),
        pytest.param(
            "maintain", Action.DEPLOY, "live",
            "deploy to live needs the admin role (you have maintain)", id="deploy",
        ),
        pytest.param(
            "read", Action.ROLLBACK, "demo",
            "roll back demo needs the write role (you have read)", id="rollback",
        ),
        pytest.param(
            "triage", Action.EDIT_PROFILE, "demo",
            "edit the demo profile needs the write role (you have triage)", id="profile",
        ),
        pytest.param(
            "write", Action.REMOVE_SERVICES, "demo",
            "remove the demo backing services needs the maintain role (you have write)",
            id="services",
        ),
        pytest.param(
            "maintain", Action.MERGE_PROMOTION, "live",
            "merge a promotion to live needs the admin role (you have maintain)", id="merge",
        ),
        pytest.param(
            "deployer", Action.VIEW, None,
            "view this app needs the read role (you have none)", id="custom-role",
        ),
        pytest.param(
            "admin", Action.DEPLOY, "live",
            "deploy to live needs the admin role (you have admin)", id="allowed",
        ),
    ],
)
def test_reasons_say_what_is_needed_and_what_the_user_has(role, action, phase, reason):
    assert check(role, action, phase, PHASE_ROLES).reason == reason



@pytest.mark.parametrize("action", sorted(PHASELESS))
@pytest.mark.parametrize("phase", [None, "demo", "nowhere"])
def test_phaseless_actions_need_read_and_ignore_the_phase(action, phase):
    assert check("read", action, phase, PHASE_ROLES).allowed
    assert not check("none", action, phase, PHASE_ROLES).allowed


@pytest.mark.parametrize("phase", [None, "demo", "nowhere"])
def test_deleting_an_app_needs_admin_whatever_the_phase(phase):
    assert check("admin", Action.DELETE_APP, phase, PHASE_ROLES).allowed
    assert not check("maintain", Action.DELETE_APP, phase, PHASE_ROLES).allowed


@pytest.mark.parametrize("action", sorted(CHANGES))
def test_phase_actions_need_a_known_phase(action):
    with pytest.raises(ValueError, match="needs a phase"):
        check("admin", action, None, PHASE_ROLES)
    with pytest.raises(ValueError, match="unknown phase 'nowhere'"):
        check("admin", action, "nowhere", PHASE_ROLES)


@pytest.mark.parametrize(
    ("actual", "required", "expected"),
    [
        pytest.param(actual, required, ROLES.index(actual) >= ROLES.index(required),
                     id=f"{actual}-for-{required}")
        for actual in ROLES
        for required in ROLES
    ],
)
def test_role_allows(actual, required, expected):
    assert role_allows(actual, required) is expected


@pytest.mark.parametrize("actual", UNKNOWN_ROLES)
def test_unknown_actual_roles_count_as_none(actual):
    assert role_allows(actual, "none")
    assert not role_allows(actual, "read")


@pytest.mark.parametrize("required", ["", "owner", "maintainer", "deployer"])
def test_an_unknown_required_role_is_an_error_not_an_open_door(required):
    with pytest.raises(ValueError, match="unknown repository role"):
        role_allows("admin", required)
    with pytest.raises(ValueError, match="unknown repository role"):
        check("admin", Action.DEPLOY, "demo", {"demo": required})


@pytest.mark.parametrize(
    ("action", "phase_role", "expected"),
    [
        pytest.param(Action.DEPLOY, "triage", "triage", id="phase-role-as-configured"),
        pytest.param(Action.PROMOTE, "admin", "admin", id="promote-admin"),
        pytest.param(Action.DEPLOY, "read", "triage", id="deploy-floor"),
        pytest.param(Action.DEPLOY, "none", "triage", id="deploy-floor-none"),
        pytest.param(Action.REMOVE_SERVICES, "read", "maintain", id="services-floor"),
        pytest.param(Action.REMOVE_SERVICES, "write", "maintain", id="services-floor-write"),
        pytest.param(Action.REMOVE_SERVICES, "admin", "admin", id="services-phase-above-floor"),
        pytest.param(Action.STATUS, None, "read", id="status"),
        pytest.param(Action.VIEW, "admin", "read", id="view-ignores-phase-role"),
        pytest.param(Action.DEPLOY, "push", "write", id="old-name"),
    ],
)
def test_required_role(action, phase_role, expected):
    assert required_role(action, phase_role) == expected


@pytest.mark.parametrize("action", sorted(CHANGES))
@pytest.mark.parametrize("phase_role", ["none", "read"])
@pytest.mark.parametrize("role", ["none", "read"])
def test_no_phase_configuration_lets_readers_change_anything(role, action, phase_role):
    assert not check(role, action, "demo", {"demo": phase_role}).allowed
