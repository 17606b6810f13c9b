"""The deploy job: a queued deployment becomes what serves its phase URL.

Order of a rollout (README, Zero downtime; Kamal's boot): image (reused by commit or tree, else cloned and
built once) → backing services → release command → the new instances, started by the runtime
(app.runtime: `ctx.runtime`, which knows slots or Swarm services; this job does not) → our
health gate on every one → the router sends every new request to them → the old ones, which
get none any more, drain the ones in flight and are stopped (SIGTERM, SIGKILL after the
profile's stop timeout). Anything failing before the switch leaves the previous version
serving and the route as it was.
"""

from __future__ import annotations

import errno
import logging
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from urllib.parse import urlparse

from sqlalchemy import select

from app import gates, metrics, services, shipped
from app.actions import current
from app.adapters import git
from app.approvals import PROMOTION_REQUESTED, count_approvals
from app.context import Context
from app.deployments import version_taken, version_taken_reason
from app.exceptions import EngineUnavailable, GitHubError, ReleasePipelineError, RouterError
from app.freezes import frozen
from app.jobs import ReportJob
from app.locks import deploy_lock, holder
from app.logs import log_context
from app.metrics import Step
from app.permissions import Action, check, required_role, role_allows
from app.models import AuditEntry, Build, BuildStatus, Deployment, DeploymentStatus, LogLine, utcnow
from app.plans import Trigger
from app.pipeline import DEFAULT_STOP_TIMEOUT, REPO_FILE, RepoConfig, parse_repo_config
from app.profiles import container_env, resolve
from app.runtime import HealthGate, Instance, Limits, PhaseRef, PhaseSpec, Started
from app.versions import is_release_tag
from workers import runtime

log = logging.getLogger(__name__)

#: WORK_DIR/repos/<app>.git: each app's bare repository, kept between deploys (fetch only what is new).
REPOSITORIES = "repos"
#: Deployments that put code already on the phase back (no commits to list, no release command
#: for the first two).
SAME_CODE_TRIGGERS = (*gates.RESTORING, Trigger.REDEPLOY)


def newer_queued(session, snap: Snapshot) -> int | None:
    """A deployment of the same phase queued after this one: it supersedes this one."""
    return session.scalar(
        select(Deployment.id)
        .where(Deployment.app_id == snap.app_id, Deployment.phase == snap.phase, Deployment.id > snap.id,
               Deployment.status == DeploymentStatus.QUEUED.value)
        .order_by(Deployment.id.desc())
        .limit(1)
    )


def check_version_free(session, deployment: Deployment) -> None:
    other = version_taken(session, deployment.app_id, deployment.version, deployment.sha, but=deployment.id)
    if other is not None:
        raise Refused(f"not deployed: {version_taken_reason(deployment.version, other)}")


def promotion_requesters(ctx: Context, app_id: int, pr_number: int) -> list[str]:
    """Who asked for this promotion PR (recorded when /promote opened it)."""
    with ctx.db.session() as session:
        entries = session.scalars(select(AuditEntry).where(
            AuditEntry.app_id == app_id, AuditEntry.action == PROMOTION_REQUESTED)).all()
        return [e.actor for e in entries if e.detail.get("pr_number") == pr_number]


def promotion_override(session, app_id: int, pr_number: int) -> tuple[str, str] | None:
    """(admin, reason) when the /promote --force that opened this PR overrode a freeze."""
    entries = session.scalars(select(AuditEntry).where(
        AuditEntry.app_id == app_id, AuditEntry.action == PROMOTION_REQUESTED)).all()
    for entry in entries:
        if entry.detail.get("pr_number") == pr_number and entry.detail.get("override"):
            return entry.actor, entry.detail["override"]
    return None


class BatchedLog:
    """Log lines written in batches, at most every `every` seconds and at the end: a build
    printing many lines pays one commit per batch, not one per line (a build of the sample
    app took 0.4 s longer that way). A timer writes a batch that is followed by silence (a
    slow build step), so the portal still shows the output as it comes."""

    def __init__(self, write: Callable[[list[str]], None], every: float = 0.25):
        self.write, self.every = write, every
        self.pending: list[str] = []
        self.written_at = time.monotonic()
        self.lock = threading.Lock()
        self.timer: threading.Timer | None = None

    def add(self, line: str) -> None:
        with self.lock:
            self.pending.append(line)
            due = time.monotonic() - self.written_at >= self.every
            if not due and self.timer is None:
                self.timer = threading.Timer(self.every, self.flush)
                self.timer.daemon = True
                self.timer.start()
        if due:
            self.flush()

    def flush(self) -> None:
        with self.lock:  # held while writing, so batches reach the database in order
            if self.timer is not None:
                self.timer.cancel()
                self.timer = None
            lines, self.pending = self.pending, []
            if lines:
                self.write(lines)
            self.written_at = time.monotonic()

    def __enter__(self) -> BatchedLog:
        return self

    def __exit__(self, *exc) -> None:
        self.flush()


def phase_spec(target: PhaseRef, deployment_id: int, *, version: str, sha: str, image: str,
               repo_config: RepoConfig, snapshot: dict, env: dict[str, str], network: str | None,
               health_timeout: float) -> PhaseSpec:
    """What the deployment asks the runtime to run: the image, the repository's port and health
    path, the profile snapshot's sizing and stop timeout, the environment with its secrets."""
    return PhaseSpec(
        target=target, deployment_id=deployment_id, version=version, sha=sha, image=image,
        port=repo_config.port, env=env, replicas=snapshot.get("replicas") or 1,
        limits=Limits(memory=snapshot.get("memory"), cpus=snapshot.get("cpus")),
        health=HealthGate(path=repo_config.healthcheck, timeout=health_timeout),
        stop_timeout=snapshot.get("stop_timeout") or DEFAULT_STOP_TIMEOUT, network=network)


class Refused(ReleasePipelineError):
    """The deployment is not allowed (approvals, a freeze, a taken version); nothing was touched."""


class Cancelled(ReleasePipelineError):
    """Someone cancelled the deployment while it was building; the phase keeps what it served."""


def run(*, deployment_id: int) -> str:
    """RQ entry point."""
    with log_context(deployment_id=deployment_id):
        return Rollout(runtime.context(), deployment_id).run()


@dataclass(frozen=True)
class Source:
    """The deployment a promotion, rollback or restore puts on the phase again."""

    id: int
    sha: str | None
    short_sha: str
    tree_sha: str | None
    image_id: str | None
    build_id: int | None
    version: str
    profile_snapshot: dict | None


@dataclass(frozen=True)
class Snapshot:
    """The deployment as the job found it once it held the phase's lock, read in one
    transaction: plain values, so nothing is read from a row after its session closed."""

    id: int
    status: DeploymentStatus
    app_id: int
    app_name: str
    full_name: str
    clone_url: str | None
    installation_id: int | None
    phase: str
    trigger: str
    ref: str
    sha: str | None
    version: str
    actor: str | None
    pr_number: int | None
    required_approvals: int
    override: str | None
    source: Source | None
    #: What the phase served when the job started (None: nothing yet).
    serving_id: int | None
    serving_sha: str | None


def load_snapshot(session, deployment_id: int) -> Snapshot | None:
    """None when the deployment does not exist (deleted meanwhile): nothing to do."""
    deployment = session.get(Deployment, deployment_id)
    if deployment is None:
        return None
    app, source = deployment.app, session.get(Deployment, deployment.source_id) if deployment.source_id else None
    serving = current(session, deployment.app_id, deployment.phase)
    return Snapshot(
        id=deployment.id, status=DeploymentStatus(deployment.status), app_id=app.id, app_name=app.name,
        full_name=app.full_name, clone_url=app.clone_url, installation_id=app.installation_id,
        phase=deployment.phase, trigger=deployment.trigger, ref=deployment.ref, sha=deployment.sha,
        version=deployment.version, actor=deployment.actor, pr_number=deployment.pr_number,
        required_approvals=deployment.required_approvals or 0, override=deployment.override,
        source=None if source is None else Source(
            id=source.id, sha=source.sha, short_sha=source.short_sha, tree_sha=source.tree_sha,
            image_id=source.image_id, build_id=source.build_id, version=source.version,
            profile_snapshot=source.profile_snapshot),
        serving_id=serving.id if serving is not None else None,
        serving_sha=serving.sha if serving is not None else None)


def _assign(deployment: Deployment, fields: dict) -> None:
    for key, value in fields.items():
        setattr(deployment, key, value)


class Journal:
    """Everything a rollout writes about its deployment (fields, log lines, the reports to
    GitHub), each in a short transaction of its own, so the portal shows it as it happens."""

    def __init__(self, ctx: Context, deployment_id: int):
        self.ctx, self.deployment_id = ctx, deployment_id

    def update(self, **fields) -> None:
        self.write([], **fields)

    def say(self, text: str, stream: str = "deploy") -> None:
        """A line in the deployment log."""
        self.say_all([text], stream)

    def say_all(self, lines: list[str], stream: str) -> None:
        """Several lines in the deployment log, in one transaction."""
        self.write(lines, stream)

    def write(self, lines: list[str], stream: str = "deploy", **fields) -> None:
        """Log lines and deployment fields in one transaction: on the way to the switch every
        commit is time the new version waits (10-20 ms each on a busy SQLite)."""
        with self.ctx.db.session() as session:
            if fields:
                _assign(session.get(Deployment, self.deployment_id), fields)
            session.add_all([LogLine(deployment_id=self.deployment_id, stream=stream, text=text[:2000])
                             for text in lines])

    def report(self, which: str, **fields) -> None:
        """Write the outbox entries for this moment (`started`, `finished`) and queue their
        sending; `fields` are set on the deployment in the same transaction."""
        with self.ctx.db.session() as session:
            deployment = session.get(Deployment, self.deployment_id)
            _assign(deployment, fields)
            reports = getattr(self.ctx.reports, which)(session, deployment.app, deployment)
            pending = [r.id for r in reports if r.state == "pending"]
        for report_id in pending:
            self.ctx.jobs.enqueue(ReportJob(report_id))

    def finish(self, status: DeploymentStatus, reason: str) -> str:
        log.info("deployment %s %s%s", self.deployment_id, status.value, f": {reason}" if reason else "")
        self.update(status=status.value, reason=reason[:300], finished_at=utcnow())
        self.say(f"{status.value}{': ' + reason if reason else ''}")
        self.report("finished")
        return status.value


class Rollout:
    def __init__(self, ctx: Context, deployment_id: int):
        self.ctx = ctx
        self.deployment_id = deployment_id
        self.journal = Journal(ctx, deployment_id)
        self.say, self.say_all, self.update = self.journal.say, self.journal.say_all, self.journal.update

    # -- the job -----------------------------------------------------------------------------

    def run(self) -> str:
        with self.ctx.db.session() as session:
            found = load_snapshot(session, self.deployment_id)
        if found is None or found.status.finished:
            return "nothing to do"
        ahead = holder(self.ctx.redis, found.app_name, found.phase)
        if ahead is not None:
            self.say(f"waiting behind {ahead}, which is deploying {found.app_name}/{found.phase}")
        with deploy_lock(self.ctx.redis, found.app_name, found.phase, owner=f"deployment {self.deployment_id}",
                         expires=self.ctx.settings.deploy_lock_seconds):
            with self.ctx.db.session() as session:  # as it is now that no other deploy of the phase runs
                snap = load_snapshot(session, self.deployment_id)
                newer = None if snap is None else newer_queued(session, snap)
                if snap is not None and not snap.status.finished and newer is None:  # in this transaction
                    _assign(session.get(Deployment, self.deployment_id),
                            {"status": DeploymentStatus.BUILDING.value, "started_at": utcnow()})
            if snap is None or snap.status.finished:  # settled while we waited (e.g. its app was deleted)
                return "nothing to do"
            if newer is not None:
                self.update(status=DeploymentStatus.SUPERSEDED.value, reason=f"superseded by deployment {newer}",
                            finished_at=utcnow())
                self.say(f"superseded by deployment {newer} before it started")
                self.journal.report("finished")
                return "superseded"
            finish = self.journal.finish
            try:
                self.deploy(snap)
            except Cancelled as exc:
                return finish(DeploymentStatus.CANCELLED, str(exc))
            except Refused as exc:
                return finish(DeploymentStatus.REFUSED, str(exc))
            except EngineUnavailable as exc:  # e.g. the engine is restarting
                log.warning("deployment %s: Docker engine: %s", self.deployment_id, exc)
                return finish(DeploymentStatus.FAILED, f"the Docker engine failed or is unreachable: {exc}")
            except ReleasePipelineError as exc:
                return finish(DeploymentStatus.FAILED, str(exc))
            except Exception as exc:
                if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:  # e.g. a scratch directory
                    return finish(DeploymentStatus.FAILED, git.NO_SPACE)
                log.exception("deployment %s failed unexpectedly", self.deployment_id)
                return finish(DeploymentStatus.FAILED, f"internal error: {type(exc).__name__}")
            return finish(DeploymentStatus.SUCCEEDED, "")

    def deploy(self, snap: Snapshot) -> None:
        """Checks, image, backing services, release command, then the rollout itself."""
        with self.ctx.db.session() as session:
            self.check_not_frozen(session, snap)
        self.check_cancelled()
        self.check_actor(snap.installation_id, snap.full_name, snap)
        self.check_approvals(snap.installation_id, snap.full_name, snap)
        token = self.clone_token(snap.installation_id)
        source = snap.source
        sha = (source.sha if source is not None else snap.sha) or self.resolve_sha(snap.clone_url, snap.ref, token)
        self.update(sha=sha)
        self.check_previous_phase(snap, sha)
        if source is not None and source.tree_sha and self.ctx.engine.find_image(snap.app_name, source.tree_sha):
            tree, image_id, build_id = source.tree_sha, source.image_id, source.build_id
            self.say(f"reusing the image of deployment {source.id} ({source.version}, {source.short_sha})")
        else:
            # No source, or its image was pruned: the same commit is built (once) again.
            build_id, tree, image_id = self.image_for(snap.app_id, snap.app_name, snap.clone_url, sha, token)
        version = snap.version
        if snap.trigger == Trigger.PULL_REQUEST:
            version = self.tag_version(snap.clone_url, sha, token) or version
        with self.ctx.db.session() as session:
            deployment = session.get(Deployment, self.deployment_id)
            deployment.version, deployment.sha, deployment.tree_sha = version, sha, tree
            deployment.image_id, deployment.build_id = image_id, build_id
            check_version_free(session, deployment)
            build = session.get(Build, build_id) if build_id else None
            repo_config = RepoConfig.model_validate(build.repo_config) if build else RepoConfig()
        app_id, phase = snap.app_id, snap.phase
        restoring = source is not None and snap.trigger in gates.RESTORING
        if repo_config.services and not restoring:
            # Before the snapshot, so a phase's first snapshot holds its own service passwords.
            services.ensure_passwords(self.ctx, app_id=app_id, phase=phase, repo_config=repo_config, say=self.say)
        with self.ctx.db.session() as session:
            # A rollback restores the profile it ran with.
            profile = source.profile_snapshot if restoring else resolve(
                session, self.ctx.config, app_id, phase).snapshot()
        self.journal.report("started", profile_snapshot=profile, status=DeploymentStatus.DEPLOYING.value)
        # The runtime refuses what it cannot run before anything is created, services included.
        self.ctx.runtime.check(phase_spec(
            PhaseRef(app_id, snap.app_name, phase), self.deployment_id, version=version, sha=sha, image=image_id,
            repo_config=repo_config, snapshot=profile, env={},
            network=services.network_name(self.ctx.settings.pipeline_instance, snap.app_name, phase)
            if repo_config.services else None, health_timeout=self.ctx.config.health_timeout(phase)))
        # Backing services come first (created and healthy before the app container starts);
        # a `build:` service needs the repository, fetched only if it is really built.
        provisioned = services.provision(
            self.ctx, app_name=snap.app_name, app_id=app_id, phase=phase, repo_config=repo_config,
            checkout_archive=self.lazy_archive(snap.clone_url, sha, snap.app_name, token), say=self.say,
            snapshot=profile, apply_pending=not restoring)
        spec = phase_spec(PhaseRef(app_id, snap.app_name, phase), self.deployment_id, version=version, sha=sha,
                          image=image_id, repo_config=repo_config, snapshot=profile,
                          env={**container_env(profile, self.ctx.box), **provisioned.env},
                          network=provisioned.network, health_timeout=self.ctx.config.health_timeout(phase))
        if repo_config.release and not restoring:
            self.release(spec, repo_config)
        self.check_cancelled()
        self.roll_out(spec, snap.serving_id)
        self.prune(snap.app_name)
        if snap.trigger not in SAME_CODE_TRIGGERS and phase in self.ctx.config.phase_names[1:]:
            self.record_commits(snap.clone_url, snap.installation_id, snap.serving_sha, sha)

    def lazy_archive(self, clone_url: str, sha: str, app_name: str, token: str | None):
        """A tar of a directory at the deployed commit, fetching on first use only."""
        fetched: list[git.Commit] = []

        def archive(path: str) -> bytes:
            if not fetched:
                fetched.append(self.fetch(clone_url, sha, app_name, token))
            return git.archive(fetched[0], path)

        return archive

    # -- steps -------------------------------------------------------------------------------

    def check_actor(self, installation_id: int | None, full_name: str, deployment: Snapshot) -> None:
        """Who pushed, tagged or merged needs the phase's role, as a command would (gates)."""
        action = gates.actor_action(deployment.trigger)
        if action is None:
            return  # commands, the portal and the API checked the role when asked
        if gates.proven_by_push(deployment.trigger, required_role(action, self.ctx.config.roles[deployment.phase])):
            return  # GitHub accepts a push or tag only from someone with write: nothing to ask
        if self.ctx.github is None or installation_id is None:
            if deployment.required_approvals:
                return  # check_approvals refuses it: nothing can be counted
            self.say(f"the role of @{deployment.actor or 'unknown'} is not checked: GitHub is not configured")
            return
        actor = deployment.actor
        try:
            role = self.ctx.github.repo(installation_id, full_name).collaborator_permission(actor) if actor else "none"
        except GitHubError as exc:
            raise Refused(f"not deployed: the role of @{actor} could not be read from GitHub ({exc})") from None
        decision = check(role, action, deployment.phase, self.ctx.config.roles)
        if not decision.allowed:
            what = "merged" if action is Action.MERGE_PROMOTION else "pushed"
            raise Refused(f"not deployed: {what} by @{actor or 'unknown'}, but {decision.reason}")

    def check_previous_phase(self, deployment: Snapshot, sha: str) -> None:
        config = self.ctx.config
        previous = gates.previous_phase(config.phase_names, deployment.phase, deployment.trigger,
                                        required=config.require_previous_phase)
        if previous is None:
            return
        with self.ctx.db.session() as session:
            ran = session.scalar(select(Deployment.id).where(
                Deployment.app_id == deployment.app_id, Deployment.phase == previous, Deployment.sha == sha,
                Deployment.status == DeploymentStatus.SUCCEEDED.value).limit(1))
        if ran is None:
            raise Refused(gates.previous_phase_refusal(deployment.phase, previous, sha[:7]))
        self.say(f"{sha[:7]} ran on {previous} (deployment {ran})")

    def check_not_frozen(self, session, deployment: Snapshot) -> None:
        """The authority on freezes: also catches a deployment queued before the freeze began."""
        freeze = frozen(session, self.ctx.config, deployment.app_id, deployment.phase)
        if freeze is None:
            return
        if not deployment.override and deployment.pr_number and deployment.trigger in (Trigger.PROMOTION, Trigger.PULL_REQUEST):
            override = promotion_override(session, deployment.app_id, deployment.pr_number)
            if override is not None:  # an admin's /promote --force opened this PR
                actor, reason = override
                session.get(Deployment, self.deployment_id).override = reason
                session.add(AuditEntry(actor=actor, app_id=deployment.app_id, phase=deployment.phase,
                                       action="freeze.override",
                                       detail={"deployment": deployment.id, "reason": reason,
                                               "pr_number": deployment.pr_number}))
                self.say(f"{freeze.describe()}; deploying anyway: override by @{actor} when opening "
                         f"#{deployment.pr_number}: {reason}")
                return
        if deployment.override:
            self.say(f"{freeze.describe()}; deploying anyway: override by @{deployment.actor}: {deployment.override}")
            return
        raise Refused(f"not deployed: {freeze.describe()}")

    def check_cancelled(self) -> None:
        with self.ctx.db.session() as session:
            who = session.get(Deployment, self.deployment_id).cancel_requested_by
        if who:
            raise Cancelled(f"cancelled by @{who}; nothing was switched")

    def release(self, spec: PhaseSpec, repo_config: RepoConfig) -> None:
        """The release command (migrations), once, in a one-off container of the new image,
        before the new version serves; failing or running too long fails the deployment."""
        argv = repo_config.release
        self.say(f"release command: {' '.join(argv)} (timeout {repo_config.release_timeout} s)", "release")
        with BatchedLog(lambda lines: self.say_all(lines, "release")) as release_log:
            code = self.ctx.runtime.run_once(spec, argv, timeout=repo_config.release_timeout,
                                             on_line=release_log.add)
        if code is None:
            raise ReleasePipelineError(f"release command timed out after {repo_config.release_timeout} s")
        if code != 0:
            raise ReleasePipelineError(f"release command exited with {code}")
        self.say("release command exited with 0", "release")

    def record_commits(self, clone_url: str, installation_id: int | None, base: str | None, head: str) -> None:
        commits = shipped.commits_between(self.ctx, clone_url=clone_url, installation_id=installation_id,
                                          base=base, head=head)
        self.update(commits=commits)

    def check_approvals(self, installation_id: int | None, full_name: str, deployment: Snapshot) -> None:
        needed = deployment.required_approvals
        if not needed:
            return
        if self.ctx.github is None or installation_id is None:
            raise Refused(f"{needed} approval(s) required, but GitHub is not configured to count them")
        client = self.ctx.github.repo(installation_id, full_name)
        pull = client.get_pull(deployment.pr_number)
        counted = count_approvals(client.list_reviews(deployment.pr_number),
                                  author=pull.author, needed=needed,
                                  head=deployment.sha or "",
                                  requesters=promotion_requesters(self.ctx, deployment.app_id, deployment.pr_number),
                                  # Only people who could change the code count as reviewers.
                                  eligible=lambda login: role_allows(client.collaborator_permission(login), "write"))
        self.say(f"approvals: {counted.explain()}")
        if not counted.enough:
            raise Refused(f"not deployed: {counted.explain()}")

    def clone_token(self, installation_id: int | None) -> str | None:
        if self.ctx.github is None or installation_id is None:
            return None
        try:
            return self.ctx.github.installation_token(installation_id)
        except GitHubError as exc:  # a GitHub API outage must not fail a deploy that needs no token
            self.say(f"no installation token ({exc}); cloning without one")
            return None

    def git_options(self) -> dict:
        settings = self.ctx.settings
        return {"allowed_host": urlparse(settings.github_url).hostname or "",
                "allow_file": settings.pipeline_allow_file_clones}

    def resolve_sha(self, clone_url: str, ref: str, token: str | None) -> str:
        sha = git.resolve_ref(clone_url, ref, token=token, **self.git_options())
        if sha is None:
            raise ReleasePipelineError(f"{ref} was not found in the repository")
        self.say(f"{ref} is {sha[:7]}")
        return sha

    def tag_version(self, clone_url: str, sha: str, token: str | None) -> str | None:
        """A promotion PR's version: the release tag on its head, if there is one."""
        tags = [t for t in git.tags_at(clone_url, sha, token=token, **self.git_options()) if is_release_tag(t)]
        return sorted(tags)[-1] if tags else None

    def image_for(self, app_id: int, app_name: str, clone_url: str, sha: str,
                  token: str | None) -> tuple[int, str, str]:
        """Build once, promote the artifact: reuse by commit, then by tree; build otherwise."""
        engine = self.ctx.engine
        with self.ctx.db.session() as session:
            known = session.scalars(
                select(Build).where(Build.app_id == app_id, Build.commit_sha == sha, Build.status == BuildStatus.SUCCEEDED)
                .order_by(Build.id.desc())
            ).first()
            if known is not None and engine.find_image(app_name, known.tree_sha):
                self.say(f"reusing image {known.image_id[:19]} built for tree {known.tree_sha[:7]}")
                return known.id, known.tree_sha, known.image_id
        self.say(f"fetching {sha[:7]}", "build")
        with metrics.step(Step.CLONE):
            commit = self.fetch(clone_url, sha, app_name, token)
        with self.ctx.db.session() as session:
            same_tree = session.scalars(
                select(Build).where(Build.app_id == app_id, Build.tree_sha == commit.tree,
                                    Build.status == BuildStatus.SUCCEEDED).order_by(Build.id.desc())
            ).first()
            if same_tree is not None and engine.find_image(app_name, commit.tree):
                self.say(f"tree {commit.tree[:7]} was already built: reusing its image", "build")
                return same_tree.id, commit.tree, same_tree.image_id
        repo_config = parse_repo_config(git.read_file(commit, REPO_FILE), REPO_FILE)
        with self.ctx.db.session() as session:
            build = Build(app_id=app_id, tree_sha=commit.tree, commit_sha=sha,
                          repo_config=repo_config.model_dump(mode="json"))
            session.add(build)
            session.flush()
            build_id = build.id
        self.say(f"building {repo_config.dockerfile} (tree {commit.tree[:7]}, {engine.builder_in_use()} builder)", "build")
        started = time.monotonic()
        try:
            with metrics.step(Step.BUILD), BatchedLog(lambda lines: self.say_all(lines, "build")) as build_log:
                image_id = engine.build_image(
                    app=app_name, tree=commit.tree, sha=sha,
                    context_tar=git.archive(commit, repo_config.context),
                    dockerfile=repo_config.dockerfile, on_line=build_log.add,
                )
        except ReleasePipelineError as exc:
            self._finish_build(build_id, BuildStatus.FAILED, str(exc))
            raise
        self._finish_build(build_id, BuildStatus.SUCCEEDED, "", image_id)
        self.say(f"built {image_id[:19]} in {time.monotonic() - started:.2f} s", "build")
        return build_id, commit.tree, image_id

    def fetch(self, clone_url: str, sha: str, app_name: str, token: str | None) -> git.Commit:
        """The commit, in the app's own repository on this worker (WORK_DIR/repos): a push
        fetches only what the previous ones did not bring."""
        started = time.monotonic()
        repository = self.ctx.settings.work_dir / REPOSITORIES / f"{app_name}.git"
        commit = git.fetch_commit(clone_url, sha, repository, token=token, **self.git_options())
        self.say(f"fetched {sha[:7]} in {time.monotonic() - started:.2f} s", "build")
        return commit

    def _finish_build(self, build_id: int, status: BuildStatus, reason: str, image_id: str | None = None) -> None:
        with self.ctx.db.session() as session:
            build = session.get(Build, build_id)
            build.status, build.reason, build.image_id, build.finished_at = status, reason[:300], image_id, utcnow()

    def roll_out(self, spec: PhaseSpec, serving_id: int | None) -> None:
        """Kamal's boot: the new instances start beside the serving ones (those of deployment
        `serving_id`) and must all pass our health gate; the router then sends them every new
        request, and only then are the old ones drained and stopped. Anything failing before
        the switch removes the new instances; the old ones serve on, the route untouched."""
        runtime = self.ctx.runtime
        runtime.check(spec)
        observed = runtime.observe(spec.target, serving_id)
        began = time.monotonic()
        started = runtime.start(spec, observed)
        for name in started.removed:  # e.g. from a deploy whose worker died: not serving, in the way
            self.say(f"removed the leftover container {name}")
        first = started.instances[0]
        self.journal.write([f"starting {spec.version} ({spec.image[:19]}) on {started.where}"],
                           container_id=first.id, container_name=first.name, host_port=first.port)
        try:
            with metrics.step(Step.HEALTH):
                result = runtime.wait_healthy(spec, started, progress=self.say)
            if not result.ok:
                self.give_up(started, result.reason, result.responses)
            healthy = f"{result.reason} ({time.monotonic() - began:.1f}s)"
            switching = time.monotonic()
            try:
                url = runtime.take_over(spec, started)
            except RouterError as exc:
                self.say(healthy)
                self.give_up(started, str(exc), result.responses)
        except BaseException:
            with suppress(Exception):  # whatever went wrong, the new instances must not serve
                runtime.discard(started)
            raise
        # The health line is written with the switch's, not before it: nothing waits on the log.
        self.journal.write([healthy, f"{url} now serves {spec.version} ({started.where})"], url=url)
        if started.retired_old:
            if observed.serving:
                self.say("the previous version's instances were stopped during the rollout, each once its "
                         f"replacement was healthy (SIGTERM, SIGKILL after {spec.stop_timeout} s)")
        else:
            self.retire([*observed.serving, *started.to_retire], spec.stop_timeout)
        # From healthy instances to the phase URL serving them with the old ones gone (drain included).
        metrics.DEPLOY_STEP.labels(step=Step.SWITCH.value).observe(time.monotonic() - switching)

    def retire(self, previous: list[Instance], stop_timeout: int) -> None:
        """Stop the instances the phase URL no longer sends requests to, once those in flight
        had DRAIN_SECONDS to finish; say so when one had to be killed."""
        if not previous:
            return
        drain = self.ctx.settings.drain_seconds
        self.say(f"the previous container gets no new requests; it has {drain:g} s to finish those in flight")
        time.sleep(drain)
        for old in previous:
            self.say(f"stopping the previous container {old.name}: SIGTERM, SIGKILL after {stop_timeout} s")
            for stopped in self.ctx.runtime.retire([old], stop_timeout):
                if stopped.killed:
                    self.say(f"the previous container ignored SIGTERM; stopped after {stop_timeout} s "
                             f"(SIGKILL, {old.name}; the profile's stop_timeout sets the wait)")
                else:
                    self.say(f"stopped the previous container {old.name} after {stopped.seconds:.1f} s")

    def give_up(self, started: Started, reason: str, health: list[str]) -> None:
        """Keep the evidence (health answers, the new instances' last lines), remove them, fail."""
        evidence = {"health": health, "logs": self.ctx.runtime.discard(started), "reason": reason}
        self.update(evidence=evidence, container_id=None)
        for line in evidence["logs"][-20:]:
            self.say(f"container: {line}")
        raise ReleasePipelineError(reason)

    def prune(self, app_name: str) -> None:
        """Keep what each phase can roll back to (its last two good images), what this
        deployment runs, plus the newest N."""
        with self.ctx.db.session() as session:
            deployment = session.get(Deployment, self.deployment_id)
            keep: set[str] = {deployment.image_id}
            for phase in self.ctx.config.phase_names:
                keep.update(session.scalars(
                    select(Deployment.image_id).where(
                        Deployment.app_id == deployment.app_id, Deployment.phase == phase,
                        Deployment.status == DeploymentStatus.SUCCEEDED.value, Deployment.image_id.is_not(None))
                    .order_by(Deployment.id.desc()).limit(2)
                ).all())
        self.ctx.engine.prune_images(app_name, keep_ids=keep, keep_last=self.ctx.config.images.keep_last)
