"""Backing services per app and phase, against the real Docker engine (issue 9).

The service is a `FROM scratch` busybox "store": `busybox httpd` with a CGI script that keeps
key/value files under its data volume and answers only requests carrying its password. The app
is the sample app of tests/support/dockerkit.py with one more CGI script that reaches the store
by name through the injected STORE_URL (busybox wget), so every check goes app → network → service.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
import requests
from sqlalchemy import select

from app import services
from app.adapters.docker import ContainerSpec, Engine
from app.context import Context
from app.crypto import MASK
from app.exceptions import ConfigError, ReleasePipelineError
from app.models import AuditEntry, Profile, ServiceInstance
from app.pipeline import parse_repo_config
from app.web import create_app
from tests.support.dockerkit import (
    remove_instance_objects,
    APP_PORT,
    BUSYBOX,
    context_tar,
    free_port,
    require_engine,
    unique_instance,
    write_sample_app,
)
from tests.support.portal_data import ADMIN_TOKEN, add_app, csrf_from

pytestmark = pytest.mark.docker

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
STORE_PORT = 8000

_STORE_DOCKERFILE = """\
FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
COPY www /www
COPY start /start
CMD ["/bin/sh", "/start"]
"""
_STORE_START = """\
trap 'exit 0' TERM
mkdir -p /data
httpd -f -p "$LISTEN" -h /www &
wait
"""
_STORE_CGI = """\
#!/bin/sh
echo "Content-Type: text/plain"
echo ""
arg() { echo "$QUERY_STRING" | tr '&' '\\n' | sed -n "s/^$1=//p" | head -n 1; }
if [ "$(arg pw)" != "$STORE_PASSWORD" ]; then echo "denied"; exit 0; fi
key=$(arg k); value=$(arg v)
if [ -n "$value" ]; then echo "$value" > "/data/$key"; echo "stored"; exit 0; fi
cat "/data/$key" 2>/dev/null || echo "missing"
"""
_APP_CGI = """\
#!/bin/busybox sh
echo "Content-Type: text/plain"
echo ""
/bin/busybox wget -q -O - "$STORE_URL&$QUERY_STRING" 2>&1 || echo "unreachable"
"""

REPO_FILE = """\
port: {app_port}
healthcheck: /healthz
services:
  store:
    build: services/store
    port: {port}
    data: /data
    environment:
      LISTEN: "{{port}}"
      STORE_PASSWORD: "{{password}}"
{extra}    healthcheck: [/bin/wget, -q, -O, /dev/null, "http://127.0.0.1:{port}/ok"]
    health_timeout: 20
    exports:
      STORE_URL: "http://{{host}}:{{port}}/cgi-bin/kv?pw={{password}}"
"""


def repo_config(extra: str = ""):
    return parse_repo_config(REPO_FILE.format(app_port=APP_PORT, port=STORE_PORT, extra=extra))


def write_store(path: Path) -> Path:
    (path / "www" / "cgi-bin").mkdir(parents=True, exist_ok=True)
    (path / "busybox").write_bytes(BUSYBOX.read_bytes())
    (path / "busybox").chmod(0o755)
    (path / "Dockerfile").write_text(_STORE_DOCKERFILE)
    (path / "start").write_text(_STORE_START)
    (path / "www" / "ok").write_text("ok\n")
    cgi = path / "www" / "cgi-bin" / "kv"
    cgi.write_text(_STORE_CGI)
    cgi.chmod(0o755)
    return path


class Checkout:
    """Stands in for the deploy job's checkout: the tar of a directory, counting the calls."""

    def __init__(self, root: Path):
        self.root = root
        self.calls: list[str] = []

    def __call__(self, path: str) -> bytes:
        self.calls.append(path)
        return context_tar(self.root / path)


@pytest.fixture(scope="module")
def svc_instance():
    """Our own instance label: everything this module creates is removed at its end."""
    name = unique_instance()
    engine = require_engine(name)
    try:
        yield name
    finally:
        remove_instance_objects(engine.instance)


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("repo")
    write_store(root / "services" / "store")
    return root


@pytest.fixture(scope="module")
def app_image(svc_instance, tmp_path_factory) -> str:
    path = write_sample_app(tmp_path_factory.mktemp("app"), extra_files={"www/cgi-bin/store": _APP_CGI})
    (path / "www" / "cgi-bin" / "store").chmod(0o755)
    return Engine(instance=svc_instance).build_image(
        app="shop", tree="a" * 40, sha="b" * 40, context_tar=context_tar(path), on_line=lambda line: None)


@pytest.fixture
def sctx(make_settings, database_url, redis_conn, svc_instance) -> Context:
    return Context.from_settings(make_settings(DATABASE_URL=database_url, PIPELINE_INSTANCE=svc_instance,
                                               ADMIN_TOKEN=ADMIN_TOKEN))


class Log(list):
    def __call__(self, line: str) -> None:
        assert isinstance(line, str)
        self.append(line)


def provision(ctx, app_id, phase, config, checkout, log=None, **kw):
    return services.provision(ctx, app_name="shop", app_id=app_id, phase=phase, repo_config=config,
                              checkout_archive=checkout, say=log if log is not None else Log(), **kw)


class AppContainers:
    """App containers (the sample app) joined to a phase network, as the deploy job runs them."""

    def __init__(self, engine: Engine, image: str):
        self.engine, self.image, self.ids, self.next_id = engine, image, [], 1

    def run(self, phase: str, provisioned: services.Provisioned) -> int:
        running = self.engine.run_container(ContainerSpec(
            app="shop", phase=phase, version="1.0.0", sha="b" * 40, deployment_id=self.next_id, image=self.image,
            env=provisioned.env, port=APP_PORT, network=provisioned.network))
        self.next_id += 1
        self.ids.append((phase, running.id))
        return running.host_port

    def stop(self, phase: str | None = None) -> None:
        for entry in list(self.ids):
            if phase is None or entry[0] == phase:
                self.engine.stop_and_remove(entry[1], timeout=1)
                self.ids.remove(entry)


def ask(port: int, query: str) -> str:
    deadline = time.monotonic() + 15
    while True:
        try:
            response = requests.get(f"http://127.0.0.1:{port}/cgi-bin/store?{query}", timeout=10)
            if response.status_code == 200:
                return response.text.strip()
        except requests.ConnectionError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"the app on port {port} did not answer")
        time.sleep(0.1)


def password_of(ctx, app_id: int, phase: str) -> str:
    with ctx.db.session() as session:
        profile = session.scalar(select(Profile).where(Profile.app_id == app_id, Profile.phase == phase))
        return ctx.box.open(profile.secrets["STORE_PASSWORD"])


def row_of(ctx, app_id: int, phase: str) -> ServiceInstance:
    with ctx.db.session() as session:
        return session.scalar(select(ServiceInstance).where(
            ServiceInstance.app_id == app_id, ServiceInstance.phase == phase, ServiceInstance.name == "store"))


# --- the configuration ------------------------------------------------------------------------------


@pytest.mark.parametrize("text, message", [
    ("services: {db: {image: postgres, port: 0}}", "services/db/port: Input should be greater than or equal to 1"),
    ("services: {db: {image: 'postgres 16', port: 5432}}", "services/db/image: must be an image reference"),
    ("services: {db: {build: ../elsewhere, port: 5432}}", "services/db/build: must be a relative path inside"),
    ("services: {db: {image: pg, port: 5432, data: var/lib}}", "services/db/data: must be an absolute path"),
    ("services: {db: {image: pg, port: 5432, exports: {URL: '{pasword}'}}}",
     "services/db/exports: URL: unknown placeholder {pasword} (use {host}, {port}, {password})"),
    ("services: {db: {image: pg, port: 5432, exports: {1URL: x}}}", "services/db/exports: '1URL' is not a valid"),
    ("services: {db: {image: pg, port: 5432, environment: {N: 5}}}", "services/db/environment: N: must be a string"),
    ("services: {db: {image: pg, port: 5432, healthcheck: [true, 1]}}", "services/db/healthcheck: must be a command"),
    ("services: {db: {image: pg, port: 5432, command: 'run me'}}", "services/db/command: must be a command"),
    ("services: {db: {image: pg, port: 5432, health_timeout: 0}}", "services/db/health_timeout: Input should be"),
    ("services: {DB: {image: pg, port: 5432}}", "services/DB: names must be lowercase"),
])
def test_service_definitions_are_validated_with_their_path(text, message):
    with pytest.raises(ConfigError) as error:
        parse_repo_config(text)
    assert message in str(error.value)


def test_a_valid_definition_and_its_hash():
    config = repo_config()
    store = config.services["store"]
    assert store.build == "services/store" and store.data == "/data" and store.health_timeout == 20
    assert services.secret_name("my-cache") == "MY_CACHE_PASSWORD"
    assert services.render("u:{password}@{host}:{port}/{x}", host="db", port=5, password="p") == "u:p@db:5/{x}"
    # Exports and the health timeout never recreate a container; the environment does.
    same = store.model_copy(update={"exports": {"OTHER": "{host}"}, "health_timeout": 3})
    changed = store.model_copy(update={"environment": {**store.environment, "MORE": "1"}})
    assert services.definition_hash(same) == services.definition_hash(store) != services.definition_hash(changed)


def test_passwords_are_generated_once_per_phase_before_the_snapshot(sctx):
    from app.profiles import container_env, resolve

    app_id = add_app(sctx)
    config = parse_repo_config("services: {db: {image: pg, port: 5432}, my-cache: {image: redis, port: 6379}}")
    log = Log()
    assert services.ensure_passwords(sctx, app_id=app_id, phase="demo", repo_config=config, say=log) == [
        "DB_PASSWORD", "MY_CACHE_PASSWORD"]
    services.ensure_passwords(sctx, app_id=app_id, phase="demo", repo_config=config, say=log)
    services.ensure_passwords(sctx, app_id=app_id, phase="stage", repo_config=config, say=log)
    with sctx.db.session() as session:
        demo = container_env(resolve(session, sctx.config, app_id, "demo").snapshot(), sctx.box)
        stage_profile = resolve(session, sctx.config, app_id, "stage")
        stage = container_env(stage_profile.snapshot(), sctx.box)
        assert {k: v.source for k, v in stage_profile.secrets.items()} == {"DB_PASSWORD": "stage",
                                                                           "MY_CACHE_PASSWORD": "stage"}
    assert len(demo["DB_PASSWORD"]) >= 32 and demo["DB_PASSWORD"] != stage["DB_PASSWORD"]
    assert demo["DB_PASSWORD"] != demo["MY_CACHE_PASSWORD"]
    assert len(log) == 4 and not any(demo["DB_PASSWORD"] in line for line in log)


def test_no_services_declared_touches_nothing(sctx):
    provisioned = services.provision(sctx, app_name="shop", app_id=add_app(sctx), phase="demo",
                                     repo_config=parse_repo_config("port: 8080"), checkout_archive=None, say=Log())
    assert provisioned == services.Provisioned(network=None, env={})


# --- the lifecycle -----------------------------------------------------------------------------------


def test_each_phase_gets_its_own_service_whose_data_survives_redeploys(sctx, repo, app_image, caplog):
    caplog.set_level(logging.DEBUG)
    engine: Engine = sctx.engine
    app_id = add_app(sctx)
    checkout, log = Checkout(repo), Log()
    apps = AppContainers(engine, app_image)
    try:
        # First deploy to Demo: network, volume, password, image (built once), container, health.
        demo = provision(sctx, app_id, "demo", repo_config(), checkout, log, snapshot={"memory": "64m", "cpus": 0.5})
        password = password_of(sctx, app_id, "demo")
        assert demo.network == f"{engine.instance}-shop-demo"
        assert demo.env == {"STORE_PASSWORD": password,
                            "STORE_URL": f"http://store:{STORE_PORT}/cgi-bin/kv?pw={password}"}
        assert password not in repr(demo)
        assert checkout.calls == ["services/store"]
        row = row_of(sctx, app_id, "demo")
        assert row.status == "healthy" and row.pending_hash is None and row.network == demo.network
        assert row.volume == f"{engine.instance}-shop.demo.store.data"
        state = engine.service_state(row.container_id)
        assert state.status == "running" and state.memory == 64 * 2**20 and state.cpus == 0.5
        labels = state.labels
        assert labels[engine.LABEL_SERVICE] == "store" and labels[engine.LABEL_SERVICE_PHASE] == "demo"
        assert labels[engine.LABEL_SERVICE_APP] == "shop" and "release-pipeline.app" not in labels
        assert engine.list_containers(app="shop", phase="demo") == []  # never taken for an app container
        with sctx.db.session() as session:
            audit = session.scalars(select(AuditEntry).where(AuditEntry.action == "services.password")).all()
            assert [(a.phase, a.detail) for a in audit] == [("demo", {"service": "store", "secret": "STORE_PASSWORD"})]

        # The app reaches the service by name through the injected variable; data goes to the volume.
        port = apps.run("demo", demo)
        assert ask(port, "k=greeting&v=hello-demo") == "stored"
        assert ask(port, "k=greeting") == "hello-demo"

        # A redeploy / rollback / promotion of the app: the same instance, untouched, same data.
        again = provision(sctx, app_id, "demo", repo_config(), checkout, log)
        assert again == demo and checkout.calls == ["services/store"]
        assert row_of(sctx, app_id, "demo").container_id == row.container_id
        apps.stop("demo")
        port = apps.run("demo", again)
        assert ask(port, "k=greeting") == "hello-demo"

        # Stage: its own network, volume, password and container; no rebuild (same definition).
        stage = provision(sctx, app_id, "stage", repo_config(), checkout, log)
        stage_password = password_of(sctx, app_id, "stage")
        assert stage.network == f"{engine.instance}-shop-stage" and stage_password != password
        assert checkout.calls == ["services/store"]
        stage_row = row_of(sctx, app_id, "stage")
        assert stage_row.container_id != row.container_id and stage_row.volume != row.volume
        stage_port = apps.run("stage", stage)
        assert ask(stage_port, "k=greeting") == "missing"
        assert ask(stage_port, "k=greeting&v=hello-stage") == "stored"
        assert ask(port, "k=greeting") == "hello-demo"

        # A changed definition: recorded as pending, the instance kept; applied on the next deploy.
        changed = repo_config(extra='      MODE: "changed"\n')
        provision(sctx, app_id, "demo", changed, checkout, log)
        pending = row_of(sctx, app_id, "demo")
        assert pending.container_id == row.container_id and pending.pending_hash is not None
        assert any("applied on the next deploy" in line for line in log)
        assert services.describe(sctx, app_id, "demo")[0]["pending_definition"] == pending.pending_hash[:12]
        provision(sctx, app_id, "demo", changed, checkout, log, apply_pending=False)  # a rollback: not applied
        assert row_of(sctx, app_id, "demo").container_id == row.container_id
        applied = provision(sctx, app_id, "demo", changed, checkout, log)
        new_row = row_of(sctx, app_id, "demo")
        assert new_row.container_id != row.container_id and new_row.pending_hash is None
        assert new_row.definition_hash == pending.pending_hash and checkout.calls == ["services/store"] * 2
        assert applied.env == demo.env
        assert any("applying its changed definition" in line for line in log)
        apps.stop("demo")
        port = apps.run("demo", applied)
        assert ask(port, "k=greeting") == "hello-demo"  # data volume kept

        # The portal's view: health, image, volume and its size; never a password.
        described = services.describe_app(sctx, app_id)
        assert set(described) == {"demo", "stage"}
        entry = described["demo"][0]
        assert entry["name"] == "store" and entry["health"] == "healthy" and entry["status"] == "healthy"
        assert entry["image"] == "build: services/store" and entry["volume"] == new_row.volume
        assert entry["volume_size"] > 0 and entry["volume_size_label"].endswith("B")
        assert entry["exports"] == ["STORE_PASSWORD", "STORE_URL"] and entry["password_secret"] == "STORE_PASSWORD"
        assert password not in repr(described) and stage_password not in repr(described)

        # Credentials never reach the deployment log or the application's logs.
        for secret in (password, stage_password):
            assert not any(secret in line for line in log)
            assert secret not in caplog.text

        # Removing Demo's services removes only Demo's objects.
        apps.stop("demo")
        demo_port = apps.run("demo", applied)
        assert services.remove(sctx, "shop", app_id, "demo") == ["store"]
        assert engine.service_containers("shop", "demo") == []
        assert engine.service_volumes("shop", "demo") == [] and row_of(sctx, app_id, "demo") is None
        # The app keeps serving on its port, without its store; its network goes once it is left.
        assert ask(demo_port, "k=greeting").endswith("unreachable")
        assert engine.service_networks("shop", "demo") == [applied.network]
        apps.stop("demo")
        assert services.remove(sctx, "shop", app_id, "demo") == []
        assert engine.service_networks("shop", "demo") == []
        assert [c.labels[engine.LABEL_SERVICE_PHASE] for c in engine.service_containers("shop")] == ["stage"]
        assert engine.service_volumes("shop", "stage") == [stage_row.volume]
        assert ask(stage_port, "k=greeting") == "hello-stage"
    finally:
        apps.stop()


def test_reconcile_leaves_backing_services_alone(sctx, repo):
    from workers.reconcile import reconcile

    app_id = add_app(sctx)
    provision(sctx, app_id, "demo", repo_config(), Checkout(repo))
    container_id = row_of(sctx, app_id, "demo").container_id
    try:
        reconcile(sctx)
        assert sctx.engine.service_state(container_id).status == "running"
    finally:
        services.remove(sctx, "shop", app_id, "demo")


def test_a_service_that_exits_at_once_blocks_the_deploy_with_its_reason(sctx, repo):
    app_id = add_app(sctx)
    broken = repo_config(extra="").model_copy(deep=True)
    store = broken.services["store"].model_copy(update={
        "command": ["/bin/sh", "-c", 'echo "starting with $STORE_PASSWORD"; echo "no config, giving up"; exit 3'],
    })
    config = broken.model_copy(update={"services": {"store": store}})
    log = Log()
    with pytest.raises(ReleasePipelineError) as error:
        provision(sctx, app_id, "demo", config, Checkout(repo), log)
    # Noticed the exit: the reason names it, not the health timeout.
    assert "service store exited with code 3 while starting" in str(error.value)
    password = password_of(sctx, app_id, "demo")
    assert any("no config, giving up" in line for line in log)
    assert any(f"starting with {MASK}" in line for line in log)
    assert not any(password in line for line in log) and password not in str(error.value)
    assert sctx.engine.service_containers("shop", "demo") == []  # the failed container is gone
    assert row_of(sctx, app_id, "demo") is None


def test_a_service_that_never_becomes_healthy_times_out_clearly(sctx, repo):
    app_id = add_app(sctx)
    config = repo_config()
    store = config.services["store"].model_copy(update={"healthcheck": "exit 1", "health_timeout": 1.5})
    with pytest.raises(ReleasePipelineError) as error:
        provision(sctx, app_id, "stage", config.model_copy(update={"services": {"store": store}}), Checkout(repo))
    assert str(error.value) == "service store did not become healthy within 1.5s (its health check exited with 1)"


def test_a_broken_changed_definition_restores_the_running_one(sctx, repo):
    app_id = add_app(sctx)
    checkout = Checkout(repo)
    provision(sctx, app_id, "live", repo_config(), checkout)
    before = row_of(sctx, app_id, "live")
    config = repo_config(extra='      MODE: "broken"\n')
    store = config.services["store"].model_copy(update={"command": ["/bin/sh", "-c", "exit 4"]})
    broken = config.model_copy(update={"services": {"store": store}})
    provision(sctx, app_id, "live", broken, checkout)  # recorded as pending
    log = Log()
    with pytest.raises(ReleasePipelineError, match="exited with code 4"):
        provision(sctx, app_id, "live", broken, checkout, log)
    after = row_of(sctx, app_id, "live")
    assert after.definition_hash == before.definition_hash and after.pending_hash is not None
    assert sctx.engine.service_state(after.container_id).status == "running"
    assert any("starting its previous definition" in line for line in log)
    services.remove(sctx, "shop", app_id, "live")


def test_an_image_that_is_not_on_the_engine_is_never_pulled(sctx):
    app_id = add_app(sctx)
    config = parse_repo_config("services: {db: {image: 'rp-test-missing/postgres:never', port: 5432}}")
    with pytest.raises(ReleasePipelineError) as error:
        provision(sctx, app_id, "demo", config, None)
    assert "image rp-test-missing/postgres:never is not on the Docker engine" in str(error.value)
    assert "never pulled" in str(error.value)


def test_an_image_service_runs_a_local_image_and_is_reused(sctx, repo):
    """`image:` with an image the engine has (here: the store built for another app): refused,
    as it holds another app's files, unless pipeline.yml's images.allow names it."""
    from app.pipeline import Images

    engine: Engine = sctx.engine
    built = provision(sctx, add_app(sctx), "demo", repo_config(), Checkout(repo))
    definition = services.definition_hash(repo_config().services["store"])
    tag = f"{engine.instance}-shop-svc-store:{definition[:12]}"
    text = REPO_FILE.format(app_port=APP_PORT, port=STORE_PORT, extra="").replace(
        "build: services/store", f"image: {tag}")
    cafe_id = add_app(sctx, name="cafe", full_name="acme/cafe")
    for reference in (tag, engine.local_image(tag)):  # by name or by id
        refused = parse_repo_config(text.replace(tag, reference))
        with pytest.raises(ReleasePipelineError, match="was not built by this installation for cafe and is not in "
                                                       "images.allow"):
            services.provision(sctx, app_name="cafe", app_id=cafe_id, phase="demo", repo_config=refused,
                               checkout_archive=None, say=Log())
    assert engine.service_containers("cafe", "demo") == []
    sctx = Context(sctx.settings, sctx.config.model_copy(update={"images": Images(allow=[tag])}), db=sctx.db,
                   redis=sctx.redis, engine=sctx.engine)
    log = Log()
    provisioned = services.provision(sctx, app_name="cafe", app_id=cafe_id, phase="demo",
                                     repo_config=parse_repo_config(text), checkout_archive=None, say=log)
    assert provisioned.network == f"{engine.instance}-cafe-demo" != built.network
    [container] = engine.service_containers("cafe", "demo")
    assert container.image_id == engine.local_image(tag)
    assert services.describe(sctx, cafe_id, "demo")[0]["image"] == tag
    services.remove(sctx, "cafe", cafe_id, "demo")
    assert engine.local_image(tag) is not None  # removing services never removes a shared image


def test_a_build_service_without_a_checkout_says_so(sctx):
    config = parse_repo_config("services: {db: {build: db, port: 5432}}")
    with pytest.raises(ReleasePipelineError, match="no checkout of the repository was supplied"):
        provision(sctx, add_app(sctx), "demo", config, None)


def test_an_unreachable_engine_fails_the_deploy_with_a_reason(make_settings, database_url, redis_conn):
    ctx = Context.from_settings(make_settings(DATABASE_URL=database_url, DOCKER_HOST=f"tcp://127.0.0.1:{free_port()}"))
    with pytest.raises(ReleasePipelineError, match="backing services of demo: the Docker engine failed"):
        provision(ctx, add_app(ctx), "demo", repo_config(), None)


def test_two_services_may_not_give_the_app_the_same_variable(sctx):
    config = parse_repo_config("services:\n  a: {image: x, port: 1, exports: {URL: '{host}'}}\n"
                               "  b: {image: y, port: 2, exports: {URL: '{host}'}}\n")
    with pytest.raises(ConfigError, match="services/b/exports: URL is also given to the app by services/a"):
        provision(sctx, add_app(sctx), "demo", config, None)


# --- API and portal ----------------------------------------------------------------------------------


def test_api_lists_services_without_credentials_and_removes_them_only_when_confirmed(sctx, repo, redis_conn):
    app_id = add_app(sctx)
    provision(sctx, app_id, "demo", repo_config(), Checkout(repo))
    provision(sctx, app_id, "stage", repo_config(), Checkout(repo))
    passwords = [password_of(sctx, app_id, phase) for phase in ("demo", "stage")]
    client = create_app(context=sctx).test_client()
    bodies = []

    def call(method, path, **kw):
        response = client.open(path, method=method, headers=AUTH, **kw)
        bodies.append(response.get_data(as_text=True))
        return response

    listed = call("GET", "/api/v1/apps/shop/phases/demo/services")
    assert listed.status_code == 200
    body = listed.get_json()
    assert body["app"] == "shop" and body["phase"] == "demo" and body["can_remove"] is True
    [store] = body["services"]
    assert store["name"] == "store" and store["health"] == "healthy" and store["image"] == "build: services/store"
    assert call("GET", "/api/v1/apps/shop/phases/nope/services").status_code == 404
    assert call("GET", "/api/v1/apps/shop/phases/demo/profile").status_code == 200
    assert call("GET", "/api/v1/apps/shop").status_code == 200

    path = "/api/v1/apps/shop/phases/demo/services"
    missing = call("DELETE", path)
    assert missing.status_code == 400 and "confirm" in missing.get_json()["reason"]
    wrong = call("DELETE", path, json={"confirm": "shop/stage"})
    assert wrong.status_code == 400 and "shop/demo" in wrong.get_json()["reason"]
    assert len(sctx.engine.service_containers("shop", "demo")) == 1
    removed = call("DELETE", path, json={"confirm": "shop/demo"})
    assert removed.status_code == 200 and removed.get_json()["removed"] == ["store"]
    assert sctx.engine.service_containers("shop", "demo") == []
    assert len(sctx.engine.service_containers("shop", "stage")) == 1
    assert call("DELETE", path, json={"confirm": "shop/demo"}).status_code == 409  # nothing left
    assert call("GET", path).get_json()["services"] == []
    with sctx.db.session() as session:
        audit = session.scalar(select(AuditEntry).where(AuditEntry.action == "services.remove"))
        assert (audit.actor, audit.phase, audit.detail) == ("admin", "demo", {"removed": ["store"]})

    # The portal's board shows Stage's service; its form removes it only with the typed confirmation.
    portal = create_app(context=sctx).test_client()
    portal.post("/signin", data={"token": ADMIN_TOKEN, "csrf_token": csrf_from(portal.get("/signin").text)})
    board = portal.get("/apps/shop").get_data(as_text=True)
    bodies.append(board)
    assert 'data-services="stage"' in board and 'data-services="demo"' not in board
    assert 'data-service="store"' in board and "build: services/store" in board and "STORE_URL" in board
    form = {"csrf_token": csrf_from(board), "confirm": "stage"}
    refused = portal.post("/apps/shop/phases/stage/services/remove", data=form, follow_redirects=True)
    assert "confirm with “shop/stage”" in refused.get_data(as_text=True)
    assert len(sctx.engine.service_containers("shop", "stage")) == 1
    done = portal.post("/apps/shop/phases/stage/services/remove", data={**form, "confirm": "shop/stage"},
                       follow_redirects=True)
    assert "Removed the stage services (store) and their data" in done.get_data(as_text=True)
    assert sctx.engine.service_containers("shop") == [] and sctx.engine.service_volumes("shop") == []
    bodies.append(done.get_data(as_text=True))
    for secret in passwords:
        assert not any(secret in text for text in bodies)


def test_removing_services_needs_the_remove_permission(sctx, repo):
    from werkzeug.exceptions import Forbidden

    from app.portal import changes

    app_id = add_app(sctx)
    provision(sctx, app_id, "demo", repo_config(), Checkout(repo))
    with pytest.raises(Forbidden, match="remove the demo backing services needs the maintain role"):
        changes.remove_services(sctx, "shop", "demo", confirm="shop/demo", actor="wes", role_of=lambda app: "write")
    assert len(sctx.engine.service_containers("shop", "demo")) == 1
    assert changes.remove_services(sctx, "shop", "demo", confirm="shop/demo", actor="mia",
                                   role_of=lambda app: "maintain") == ["store"]
