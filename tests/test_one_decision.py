"""Each decision in one place: Actions decides permissions (the portal asks it once per action,
reading the role once), sizing is read by the Profile model, rollback refusals have one text."""

from __future__ import annotations

import pytest
from werkzeug.exceptions import BadRequest, Forbidden

from app.actions import Actions, rollback_refusal
from app.permissions import Action
from app.pipeline import load_pipeline
from app.portal import changes
from tests.support.portal_data import add_app, add_deployment

CONFIG = load_pipeline("config/pipeline.yml")


class Roles:
    """A role lookup that counts how often it is asked (each ask may be a GitHub call)."""

    def __init__(self, role: str):
        self.role, self.asked = role, 0

    def __call__(self, app) -> str:
        self.asked += 1
        return self.role


def test_a_portal_action_reads_the_role_once_and_is_decided_by_actions(ctx):
    app_id = add_app(ctx)
    add_deployment(ctx, app_id, "demo", "v1.0.0", "a", minutes_ago=20)
    add_deployment(ctx, app_id, "demo", "v1.1.0", "b", minutes_ago=10)
    maintainer = Roles("maintain")
    result = changes.rollback(ctx, "shop", "demo", actor="ada", role_of=maintainer)
    assert result.ok and result.deployment_id is not None and maintainer.asked == 1
    reader = Roles("read")
    with pytest.raises(Forbidden) as refused:
        changes.rollback(ctx, "shop", "stage", actor="bob", role_of=reader)
    assert refused.value.description == Actions(ctx.config).refusal("read", Action.ROLLBACK, "stage").message
    assert reader.asked == 1


def test_a_profile_edit_reads_the_role_once(ctx):
    add_app(ctx)
    admin = Roles("admin")
    changes.update_profile(ctx, "shop", "demo", changes.ProfileChange(env_set={"GREETING": "hi"}), actor="ada",
                           role_of=admin)
    assert admin.asked == 1


def test_refusals_for_the_role_are_marked_forbidden():
    actions = Actions(CONFIG)
    refused = actions.refusal("write", Action.PROMOTE, "stage")
    assert refused is not None and refused.forbidden and not refused.ok
    assert actions.refusal("maintain", Action.PROMOTE, "stage") is None


@pytest.mark.parametrize("key, value, parsed", [
    ("memory", " 512M ", "512m"), ("cpus", "0.5", 0.5), ("cpus", 2, 2.0), ("replicas", "3", 3),
    ("stop_timeout", 30, 30), ("memory", "", None), ("replicas", None, None),
])
def test_sizing_is_read_by_the_profile_model(key, value, parsed):
    assert changes.parse_sizing(key, value) == parsed


@pytest.mark.parametrize("key, value, message", [
    ("memory", "5x", "sizing/memory: must be a number with a unit b, k, m or g (e.g. 512m)"),
    ("memory", 512, "sizing/memory: must be a number with a unit b, k, m or g (e.g. 512m)"),
    ("cpus", 0, "sizing/cpus: must be a number greater than 0 and at most 64"),
    ("cpus", "inf", "sizing/cpus: must be a number greater than 0 and at most 64"),
    ("replicas", 2.0, "sizing/replicas: must be a whole number from 1 to 20"),
    ("replicas", True, "sizing/replicas: must be a whole number from 1 to 20"),
    ("replicas", 21, "sizing/replicas: must be a whole number from 1 to 20"),
    ("stop_timeout", "601", "sizing/stop_timeout: must be a whole number of seconds from 1 to 600"),
    ("disk", "1g", "sizing/disk: not a setting (memory, cpus, replicas, stop_timeout)"),
])
def test_sizing_out_of_the_profile_models_limits_is_refused(key, value, message):
    with pytest.raises(BadRequest) as refused:
        changes.parse_sizing(key, value)
    assert refused.value.description == message


def test_rollback_refusals_have_one_text():
    class Row:
        pass

    assert rollback_refusal("live", None, None, None) == "live has no successful deployment to roll back from"
    assert rollback_refusal("live", Row(), None, None) == "live has no earlier successful deployment to roll back to"
    assert rollback_refusal("live", Row(), None, "v1.0.0") == "v1.0.0 was never deployed successfully to live"
    assert rollback_refusal("live", Row(), Row(), None) is None


def test_overriding_a_freeze_without_the_role_is_forbidden_not_a_conflict(ctx):
    app_id = add_app(ctx)
    add_deployment(ctx, app_id, "demo", "v1.0.0", "a")
    changes.freeze(ctx, "shop", "stage", actor="ada", role_of=Roles("admin"), reason="release week")
    with pytest.raises(Forbidden) as refused:
        changes.promote(ctx, "shop", "stage", actor="max", role_of=Roles("maintain"), force="the fix")
    assert refused.value.description.endswith(": override the freeze of stage needs the admin role (you have maintain)")
