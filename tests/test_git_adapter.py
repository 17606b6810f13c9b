"""The git adapter on real repositories: what it fetches, what it refuses, what it never leaks."""

from __future__ import annotations

import base64
import io
import ipaddress
import logging
import ssl
import subprocess
import tarfile
import threading
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from app.adapters import git as gitadapter
from app.exceptions import CloneFailed, CloneRefused, ConfigError
from tests.support.dockerkit import free_port, make_sample_repo

TOKEN = "ghs_s3cr3tT0kenValue1234567890"
FILE_RULES = {"allowed_host": "github.com", "allow_file": True}


@pytest.fixture(scope="module")
def sample_repo(tmp_path_factory) -> tuple[str, str, str]:
    """A repo with v1.0.0 (annotated tag) then a newer commit on main: (url, v1 sha, head sha)."""
    path = tmp_path_factory.mktemp("origin")
    url, v1 = make_sample_repo(
        path,
        version_text="1.0.0",
        tag="v1.0.0",
        extra_files={".release-pipeline.yml": "port: 8080\n", "sub/Dockerfile": "FROM scratch\n"},
    )
    _, head = make_sample_repo(path, version_text="1.1.0")
    return url, v1, head


def test_fetches_one_commit_by_sha_shallowly(sample_repo, tmp_path):
    url, v1, _ = sample_repo
    checkout = gitadapter.fetch_commit(url, v1, tmp_path / "co", **FILE_RULES)
    assert checkout.sha == v1
    assert checkout.tree == _git(tmp_path / "co", "rev-parse", f"{v1}^{{tree}}")
    assert gitadapter.read_file(checkout, "www/version") == "1.0.0\n"
    assert _git(tmp_path / "co", "rev-list", "--count", v1) == "1"
    assert _git(tmp_path / "co", "rev-parse", "--is-bare-repository", "--is-shallow-repository") == "true\ntrue"
    assert url not in (tmp_path / "co" / "config").read_text()  # no remote: the URL is not kept


def test_a_later_fetch_brings_only_new_objects(tmp_path):
    """The app's repository is kept: the next commit's fetch brings what changed (the version
    files, their trees, the commit), not the unchanged 2 MB busybox again."""
    origin = tmp_path / "origin"
    url, first = make_sample_repo(origin, version_text="1.0.0")
    repository = tmp_path / "app.git"
    gitadapter.fetch_commit(url, first, repository, **FILE_RULES)
    before, size_before = _objects(repository), _size(repository / "objects")
    assert size_before > 1_000_000  # the busybox binary
    _, second = make_sample_repo(origin, version_text="1.1.0")
    commit = gitadapter.fetch_commit(url, "main", repository, **FILE_RULES)
    assert commit.sha == second and gitadapter.read_file(commit, "www/version") == "1.1.0\n"
    changed = {line.split()[0] for line in _git(origin, "rev-list", "--objects", second, "--not", first).splitlines()}
    assert _objects(repository) - before == changed
    assert _size(repository / "objects") - size_before < 100_000
    # Both commits stay readable; fetching one it holds again brings nothing.
    again = gitadapter.fetch_commit(url, first, repository, **FILE_RULES)
    assert gitadapter.read_file(again, "www/version") == "1.0.0\n"
    assert _objects(repository) == before | changed


def test_a_fetch_killed_midway_does_not_block_the_next(sample_repo, tmp_path):
    url, v1, head = sample_repo
    repository = tmp_path / "app.git"
    gitadapter.fetch_commit(url, v1, repository, **FILE_RULES)
    (repository / "shallow.lock").write_text("")  # what a fetch killed while it wrote the shallow file leaves
    (repository / "refs" / "pipeline" / "fetching.lock").write_text("")
    assert gitadapter.fetch_commit(url, head, repository, **FILE_RULES).sha == head


def test_concurrent_fetches_into_one_repository_all_succeed(sample_repo, tmp_path):
    url, v1, head = sample_repo
    repository = tmp_path / "app.git"
    results, errors = [], []

    def fetch(ref):
        try:
            results.append(gitadapter.fetch_commit(url, ref, repository, **FILE_RULES).sha)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=fetch, args=(ref,)) for ref in (v1, head) * 4]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and sorted(results) == sorted([v1, head] * 4)


def test_refuses_a_directory_that_is_not_a_repository(sample_repo, tmp_path):
    (tmp_path / "co").mkdir()
    (tmp_path / "co" / "notes.txt").write_text("mine")
    with pytest.raises(CloneFailed, match="not a bare git repository"):
        gitadapter.fetch_commit(sample_repo[0], "main", tmp_path / "co", **FILE_RULES)
    assert (tmp_path / "co" / "notes.txt").read_text() == "mine"


def test_fetches_by_tag_and_branch(sample_repo, tmp_path):
    url, v1, head = sample_repo
    assert gitadapter.fetch_commit(url, "v1.0.0", tmp_path / "tag", **FILE_RULES).sha == v1
    assert (
        gitadapter.fetch_commit(url, "refs/heads/main", tmp_path / "main", **FILE_RULES).sha == head
    )


def test_resolve_ref_peels_annotated_tags(sample_repo):
    url, v1, head = sample_repo
    assert gitadapter.resolve_ref(url, "v1.0.0", **FILE_RULES) == v1
    assert gitadapter.resolve_ref(url, "refs/tags/v1.0.0", **FILE_RULES) == v1
    assert gitadapter.resolve_ref(url, "main", **FILE_RULES) == head
    assert gitadapter.resolve_ref(url, "no-such-branch", **FILE_RULES) is None
    assert gitadapter.resolve_ref(url, head.upper(), **FILE_RULES) == head


def test_tags_at_names_the_version(sample_repo):
    url, v1, head = sample_repo
    assert gitadapter.tags_at(url, v1, **FILE_RULES) == ["v1.0.0"]
    assert gitadapter.tags_at(url, head, **FILE_RULES) == []


def test_archive_is_the_tree_without_git_metadata(sample_repo, tmp_path):
    url, v1, _ = sample_repo
    checkout = gitadapter.fetch_commit(url, v1, tmp_path / "co", **FILE_RULES)
    names = _tar_names(gitadapter.archive(checkout))
    assert {"Dockerfile", "busybox", "www/healthz", "www/cgi-bin/info"} <= names
    assert not any(name.startswith(".git/") for name in names)
    assert _tar_names(gitadapter.archive(checkout, "sub")) == {"Dockerfile"}
    with tarfile.open(fileobj=io.BytesIO(gitadapter.archive(checkout))) as tar:
        assert tar.getmember("www/cgi-bin/info").mode & 0o111
    for bad in ("../", "/etc", "sub/../../x"):
        with pytest.raises(CloneRefused):
            gitadapter.archive(checkout, bad)
    with pytest.raises(ConfigError, match="not a directory"):
        gitadapter.archive(checkout, "missing")


def test_read_file(sample_repo, tmp_path):
    url, v1, _ = sample_repo
    checkout = gitadapter.fetch_commit(url, v1, tmp_path / "co", **FILE_RULES)
    assert gitadapter.read_file(checkout, ".release-pipeline.yml") == "port: 8080\n"
    assert gitadapter.read_file(checkout, "absent.yml") is None
    assert gitadapter.read_file(checkout, "www") is None
    with pytest.raises(CloneRefused):
        gitadapter.read_file(checkout, "../../etc/passwd")


@pytest.mark.parametrize(
    ("url", "rules", "message"),
    [
        ("file:///tmp/repo", {"allowed_host": "github.com", "allow_file": False}, "file://"),
        (
            "https://evil.example/o/r.git",
            {"allowed_host": "github.com", "allow_file": True},
            "host",
        ),
        (
            "https://github.com.evil.example/o/r.git",
            {"allowed_host": "github.com", "allow_file": True},
            "host",
        ),
        (
            "https://user:pw@github.com/o/r.git",
            {"allowed_host": "github.com", "allow_file": True},
            "credentials",
        ),
        (
            "http://github.com/o/r.git",
            {"allowed_host": "github.com", "allow_file": True},
            "only https",
        ),
        (
            "ssh://git@github.com/o/r.git",
            {"allowed_host": "github.com", "allow_file": True},
            "only https",
        ),
        (
            "git@github.com:o/r.git",
            {"allowed_host": "github.com", "allow_file": True},
            "only https",
        ),
        (
            "ext::sh -c touch% /tmp/pwned",
            {"allowed_host": "github.com", "allow_file": True},
            "refused",
        ),
        ("/tmp/repo", {"allowed_host": "github.com", "allow_file": True}, "only https"),
        ("file://host/tmp/repo", {"allowed_host": "github.com", "allow_file": True}, "file:///"),
        ("https://localhost/o/r.git", {"allowed_host": "github.com", "allow_file": True}, "host"),
    ],
)
def test_refuses_urls(url, rules, message, tmp_path):
    with pytest.raises(CloneRefused, match=message):
        gitadapter.fetch_commit(url, "main", tmp_path / "co", **rules)
    with pytest.raises(CloneRefused):
        gitadapter.resolve_ref(url, "main", **rules)
    assert not (tmp_path / "co").exists()


@pytest.mark.parametrize(
    "ref",
    [
        "--upload-pack=touch /tmp/x",
        "-v",
        "../../etc",
        "a b",
        "a\tb",
        "main\n",
        "a:b",
        "a..b",
        "x^{}",
        "x~1",
        "a*",
        "refs/heads/.hidden",
        "branch.lock",
        "a//b",
        "trailing/",
        "@",
        "a@{1}",
        "",
    ],
)
def test_refuses_unsafe_refs(sample_repo, ref, tmp_path):
    url, _, _ = sample_repo
    with pytest.raises(CloneRefused, match="ref refused"):
        gitadapter.fetch_commit(url, ref, tmp_path / "co", **FILE_RULES)
    with pytest.raises(CloneRefused):
        gitadapter.resolve_ref(url, ref, **FILE_RULES)


def test_option_injection_runs_nothing(sample_repo, tmp_path):
    marker = tmp_path / "pwned"
    for ref in (f"--upload-pack=touch {marker}", f"-u touch {marker}"):
        with pytest.raises(CloneRefused):
            gitadapter.fetch_commit(sample_repo[0], ref, tmp_path / "co", **FILE_RULES)
    assert not marker.exists()


def test_tags_at_wants_a_full_sha(sample_repo):
    with pytest.raises(CloneRefused):
        gitadapter.tags_at(sample_repo[0], "main", **FILE_RULES)


def test_missing_commit_is_a_clone_failure(sample_repo, tmp_path):
    url, _, _ = sample_repo
    with pytest.raises(CloneFailed, match="git fetch failed"):
        gitadapter.fetch_commit(url, "0" * 40, tmp_path / "co", **FILE_RULES)


def test_token_never_leaks_when_fetch_fails(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    url = f"https://127.0.0.1:{free_port()}/owner/repo.git"
    rules = {"allowed_host": "127.0.0.1", "allow_file": False}
    with pytest.raises(CloneFailed) as failure:
        gitadapter.fetch_commit(url, "main", tmp_path / "co", token=TOKEN, **rules)
    with pytest.raises(CloneFailed) as ls_failure:
        gitadapter.resolve_ref(url, "main", token=TOKEN, **rules)
    for secret in (TOKEN, _basic(TOKEN)):
        for text in (
            str(failure.value),
            repr(failure.value),
            str(ls_failure.value),
            caplog.text,
            _every_file_text(tmp_path),
        ):
            assert secret not in text
    assert failure.value.__cause__ is None and failure.value.__suppress_context__
    assert "127.0.0.1" in str(failure.value)


def test_token_travels_only_as_an_authorization_header(tmp_path, monkeypatch, caplog):
    """A local https server sees the header; git's argv, .git/config and errors never hold it."""
    caplog.set_level(logging.DEBUG)
    seen_headers: list[str | None] = []
    server, ca_file = _https_server(tmp_path, seen_headers)
    monkeypatch.setenv("GIT_SSL_CAINFO", str(ca_file))
    url = f"https://127.0.0.1:{server.server_port}/owner/repo.git"
    try:
        with pytest.raises(CloneFailed) as failure:
            gitadapter.fetch_commit(
                url,
                "main",
                tmp_path / "co",
                token=TOKEN,
                allowed_host="127.0.0.1",
                allow_file=False,
            )
    finally:
        server.shutdown()
        server.server_close()
    assert f"Basic {_basic(TOKEN)}" in seen_headers
    assert TOKEN not in str(failure.value) and _basic(TOKEN) not in str(failure.value)
    assert TOKEN not in caplog.text and _basic(TOKEN) not in caplog.text
    assert TOKEN not in _every_file_text(tmp_path) and _basic(TOKEN) not in _every_file_text(tmp_path)


def _https_server(tmp_path: Path, seen_headers: list) -> tuple[ThreadingHTTPServer, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            seen_headers.append(self.headers.get("Authorization"))
            self.send_response(403)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, cert_file


def _basic(token: str) -> str:
    return base64.b64encode(f"x-access-token:{token}".encode()).decode()


def _tar_names(data: bytes) -> set[str]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {member.name for member in tar.getmembers() if member.isfile()}


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *args], check=True, capture_output=True, text=True
    ).stdout.strip()


def _objects(repository: Path) -> set[str]:
    """Every object the repository holds, loose or packed."""
    listed = _git(repository, "cat-file", "--batch-all-objects", "--batch-check=%(objectname)")
    return set(listed.split())


def _size(root: Path) -> int:
    return sum(path.stat().st_size for path in root.rglob("*") if path.is_file())


def _every_file_text(root: Path) -> str:
    return "".join(path.read_bytes().decode(errors="replace") for path in root.rglob("*") if path.is_file())
