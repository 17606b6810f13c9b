"""Fetch exactly one commit of a repository, safely, and hand out its tree.

Clone URLs and refs come from webhook payloads, so both are validated before git sees them,
and the installation token travels only through git's environment-supplied configuration:
never in the URL, the argument list, `.git/config` or an error message.
"""

from __future__ import annotations

import base64
import errno
import fcntl
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

from git import Git, Repo
from git.exc import GitCommandError

from app.exceptions import CloneFailed, CloneRefused, ConfigError

_SHA = re.compile(r"^[0-9a-f]{40}$")
# What `git check-ref-format` forbids anywhere in a ref name, plus ":" (refspec separator).
_FORBIDDEN_IN_REF = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]|\.\.|@\{|//")
# git's own order for expanding a short name (refs.c, ref_rev_parse_rules), as served remotely.
_REF_EXPANSIONS = ("{}", "refs/{}", "refs/tags/{}", "refs/heads/{}")
NO_SPACE = "no space left in WORK_DIR"


@dataclass(frozen=True)
class Commit:
    """One fetched commit, in the bare repository that holds it (nothing is checked out)."""

    repository: Path
    sha: str
    tree: str


def fetch_commit(
    clone_url: str,
    ref: str,
    repository: Path,
    *,
    token: str | None = None,
    allowed_host: str,
    allow_file: bool,
) -> Commit:
    """Fetch `ref` (a commit sha or a branch/tag name) at depth 1 into the bare repository at
    `repository`, created on first use and kept: a later fetch of the app's next commit brings
    only the objects it does not hold yet (a push's changed files, not the whole tree again).

    The URL is given on the command line, never stored as a remote; each fetched commit keeps
    a ref (`refs/pipeline/<sha>`) so the next fetch can tell the remote what it already has.
    One fetch at a time per repository (a lock file beside it): git's shallow file takes no
    concurrent writers.
    """
    _check_url(clone_url, allowed_host=allowed_host, allow_file=allow_file)
    ref = _check_ref(ref)
    repository = Path(repository)
    env = _git_env(token, allow_file=allow_file)
    with _scrubbed_errors(token, "fetch"), _exclusive(repository), _bare(repository) as repo:
        fetched = "refs/pipeline/fetching"  # the lock is held: no other fetch uses it
        repo.git.fetch("--depth=1", "--no-tags", "--no-write-fetch-head", clone_url, f"+{ref}:{fetched}", env=env)
        sha, tree = repo.git.rev_parse(f"{fetched}^{{commit}}", f"{fetched}^{{tree}}", env=env).split()
        repo.git.update_ref(f"refs/pipeline/{sha}", sha, env=env)
        repo.git.update_ref("-d", fetched, env=env)
        return Commit(repository=repository, sha=sha, tree=tree)


@contextmanager
def _exclusive(repository: Path) -> Iterator[None]:
    """Hold `<repository>.lock` (flock: released even if the process dies)."""
    repository.parent.mkdir(parents=True, exist_ok=True)
    with open(repository.parent / f"{repository.name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@contextmanager
def _bare(repository: Path) -> Iterator[Repo]:
    """The bare repository at `repository`, created if missing; called with its lock held, so
    any git lock file left inside is a killed fetch's and is removed (it would block every
    later fetch)."""
    if repository.exists() and any(repository.iterdir()):
        if not (repository / "HEAD").is_file() or not (repository / "objects").is_dir():
            raise CloneFailed(f"{repository} is not a bare git repository")
        for stale in (*repository.glob("*.lock"), *repository.glob("refs/pipeline/*.lock")):
            stale.unlink(missing_ok=True)
        repo = Repo(repository)
    else:
        repo = Repo.init(repository, mkdir=True, bare=True)
    with repo:
        yield repo


def resolve_ref(
    clone_url: str,
    ref: str,
    *,
    token: str | None = None,
    allowed_host: str,
    allow_file: bool,
) -> str | None:
    """The commit `ref` names on the remote (annotated tags peeled), or None if it has none.

    A sha is returned as given: the remote cannot be asked about it without fetching.
    """
    _check_url(clone_url, allowed_host=allowed_host, allow_file=allow_file)
    ref = _check_ref(ref)
    if _SHA.fullmatch(ref):
        return ref
    # A pattern matches names by their tail, so the peeled "<tag>^{}" must be asked for too.
    advertised = _ls_remote([clone_url, ref, f"{ref}^{{}}"], token=token, allow_file=allow_file)
    for expansion in _REF_EXPANSIONS:
        name = expansion.format(ref)
        if name in advertised:
            return advertised.get(f"{name}^{{}}", advertised[name])
    return None


def tags_at(
    clone_url: str,
    sha: str,
    *,
    token: str | None = None,
    allowed_host: str,
    allow_file: bool,
) -> list[str]:
    """Names of the remote's tags that point (once peeled) at commit `sha`, sorted."""
    _check_url(clone_url, allowed_host=allowed_host, allow_file=allow_file)
    if not isinstance(sha, str) or not _SHA.fullmatch(sha.lower()):
        raise CloneRefused(f"sha refused: {str(sha)[:80]!r} is not a 40-hex commit sha")
    sha = sha.lower()
    advertised = _ls_remote(["--tags", clone_url], token=token, allow_file=allow_file)
    names = set()
    for name, target in advertised.items():
        if name.endswith("^{}"):
            continue
        if advertised.get(f"{name}^{{}}", target) == sha:
            names.add(name.removeprefix("refs/tags/"))
    return sorted(names)


@dataclass(frozen=True)
class CommitInfo:
    sha: str
    title: str
    author: str


def log_between(
    clone_url: str,
    base: str | None,
    head: str,
    *,
    token: str | None = None,
    allowed_host: str,
    allow_file: bool,
    limit: int = 100,
) -> list[CommitInfo]:
    """The commits reachable from `head` but not from `base`, newest first, at most `limit`.

    Both are fetched `limit` deep into a scratch repository; `base` None (nothing deployed
    yet) lists `head`'s own history.
    """
    _check_url(clone_url, allowed_host=allowed_host, allow_file=allow_file)
    for sha in (head, *([base] if base else [])):
        if not isinstance(sha, str) or not _SHA.fullmatch(sha.lower()):
            raise CloneRefused(f"sha refused: {str(sha)[:80]!r} is not a 40-hex commit sha")
    if base and base.lower() == head.lower():
        return []
    env = _git_env(token, allow_file=allow_file)
    wanted = [head.lower(), *([base.lower()] if base else [])]
    with (
        tempfile.TemporaryDirectory(prefix="rp-log-") as scratch,
        Repo.init(scratch) as repo,
        _scrubbed_errors(token, "fetch"),
    ):
        repo.create_remote("origin", clone_url)
        repo.git.fetch(f"--depth={limit}", "--no-tags", "--no-write-fetch-head", "origin",
                       *(f"{sha}:refs/pipeline/{index}" for index, sha in enumerate(wanted)), env=env)
        output = repo.git.log(f"--max-count={limit}", "--format=%H%x1f%an%x1f%s",
                              *([f"{wanted[1]}..{wanted[0]}"] if base else [wanted[0]]), "--", env=env)
    commits = []
    for line in output.splitlines():
        sha, author, title = (line.split("\x1f") + ["", ""])[:3]
        commits.append(CommitInfo(sha=sha, title=title, author=author))
    return commits


def archive(commit: Commit, context: str = ".") -> bytes:
    """The commit's tree below `context` as a tar rooted there: a build context without .git,
    read from the repository's objects (no working tree)."""
    subdir = _check_relative_path(context)
    treeish = commit.sha if subdir == "." else f"{commit.sha}:{subdir}"
    with Repo(commit.repository) as repo:
        if subdir != "." and _blob_or_tree(repo, commit.sha, subdir) != "tree":
            raise ConfigError(
                f"build context: {subdir!r} is not a directory at {commit.sha[:12]}"
            )
        return repo.git.archive(
            "--format=tar", treeish, stdout_as_string=False, strip_newline_in_stdout=False
        )


def read_file(commit: Commit, path: str) -> str | None:
    """The text of `path` at the commit, or None if there is no such file."""
    relative = _check_relative_path(path)
    with Repo(commit.repository) as repo:
        if _blob_or_tree(repo, commit.sha, relative) != "blob":
            return None
        data = (repo.commit(commit.sha).tree / relative).data_stream.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{relative}: not UTF-8 text") from None


def _check_url(clone_url: str, *, allowed_host: str, allow_file: bool) -> None:
    if not isinstance(clone_url, str) or re.search(r"[\x00-\x20\x7f]", clone_url):
        raise CloneRefused("clone URL refused: empty or contains whitespace/control characters")
    parts = urlsplit(clone_url)
    if parts.scheme == "https":
        if parts.username is not None or parts.password is not None:
            raise CloneRefused("clone URL refused: credentials in the URL are not accepted")
        if (parts.hostname or "") != allowed_host.lower():
            raise CloneRefused(
                f"clone URL refused: host {parts.hostname!r} is not the configured GitHub host "
                f"{allowed_host!r}"
            )
        return
    if parts.scheme == "file":
        if not allow_file:
            raise CloneRefused(
                "clone URL refused: file:// clones are disabled (PIPELINE_ALLOW_FILE_CLONES)"
            )
        if parts.netloc or not parts.path.startswith("/"):
            raise CloneRefused("clone URL refused: file:// URLs must be file:///absolute/path")
        return
    shown = parts.scheme + "://" if parts.scheme else "a URL without a scheme"
    raise CloneRefused(
        f"clone URL refused: only https:// (and opted-in file://) are allowed, got {shown}"
    )


def _check_ref(ref: str) -> str:
    """A full sha (lowercased) or a ref name `git check-ref-format` would accept; else refused."""
    if not isinstance(ref, str) or not ref:
        raise CloneRefused("ref refused: empty")
    if re.fullmatch(r"[0-9a-fA-F]{40}", ref):
        return ref.lower()
    if (
        len(ref) > 255
        or ref.startswith(("-", "/"))
        or ref.endswith(("/", ".", ".lock"))
        or ref == "@"
        or _FORBIDDEN_IN_REF.search(ref)
        or any(part.startswith(".") or part.endswith(".lock") for part in ref.split("/"))
    ):
        raise CloneRefused(f"ref refused: {ref[:80]!r} is not a valid branch, tag or commit sha")
    return ref


def _check_relative_path(path: str) -> str:
    """`path` as a normalised in-repository path ("." for the root); absolute or `..` refused."""
    if not isinstance(path, str) or not path or re.search(r"[\x00-\x1f\x7f\\]", path):
        raise CloneRefused(f"path refused: {path!r}")
    pure = PurePosixPath(path)
    if pure.is_absolute() or ".." in pure.parts:
        raise CloneRefused(f"path refused: {path!r} must stay inside the repository")
    return str(pure)


def _blob_or_tree(repo: Repo, sha: str, path: str) -> str | None:
    try:
        return (repo.commit(sha).tree / path).type
    except KeyError:
        return None


def _git_env(token: str | None, *, allow_file: bool) -> dict[str, str]:
    """Environment for every git call: no prompts, no hooks, https (and maybe file) only.

    Configuration passed as GIT_CONFIG_KEY_n/GIT_CONFIG_VALUE_n is neither written to
    .git/config nor visible in the process list.
    """
    config = {
        "core.hooksPath": "/dev/null",
        "protocol.allow": "never",
        "protocol.https.allow": "always",
    }
    if allow_file:
        config["protocol.file.allow"] = "always"
    if token:
        config["http.extraHeader"] = f"Authorization: Basic {_basic_credentials(token)}"
    env = {
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_ASKPASS": "",
        "SSH_ASKPASS": "",
        "GIT_TRACE_REDACT": "1",
        "GIT_CONFIG_COUNT": str(len(config)),
    }
    for index, (key, value) in enumerate(config.items()):
        env[f"GIT_CONFIG_KEY_{index}"] = key
        env[f"GIT_CONFIG_VALUE_{index}"] = value
    return env


def _basic_credentials(token: str) -> str:
    return base64.b64encode(f"x-access-token:{token}".encode()).decode("ascii")


def _ls_remote(arguments: list[str], *, token: str | None, allow_file: bool) -> dict[str, str]:
    """Ref name -> object sha as advertised by the remote (peeled tags as `name^{}`).

    `arguments` are options, then the (checked) URL, then patterns: git reads options only
    before the URL.
    """
    env = _git_env(token, allow_file=allow_file)
    # Run outside any repository so no local configuration (insteadOf, hooks) applies.
    with (
        tempfile.TemporaryDirectory(prefix="rp-ls-remote-") as empty,
        _scrubbed_errors(token, "ls-remote"),
    ):
        output = Git(empty).ls_remote(*arguments, env=env)
    advertised = {}
    for line in output.splitlines():
        target, _, name = line.partition("\t")
        if name:
            advertised[name] = target
    return advertised


@contextmanager
def _scrubbed_errors(token: str | None, action: str) -> Iterator[None]:
    """Turn git's failures into CloneFailed with one line of git's stderr, credentials removed."""
    try:
        yield
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise CloneFailed(NO_SPACE) from None
        raise
    except GitCommandError as exc:
        stderr = exc.stderr if isinstance(exc.stderr, str) else str(exc.stderr or "")
        if "No space left on device" in stderr:
            raise CloneFailed(NO_SPACE) from None
        lines = [
            line.strip().removeprefix("stderr: ").strip("'\" ") for line in stderr.splitlines()
        ]
        lines = [line for line in lines if line]
        # git's first "fatal:" line names the cause; later lines are generic advice.
        detail = next((line for line in lines if line.startswith(("fatal:", "error:"))), None)
        detail = detail or (lines[-1] if lines else f"exit status {exc.status}")
        if token:
            for secret in (token, _basic_credentials(token)):
                detail = detail.replace(secret, "***")
        raise CloneFailed(f"git {action} failed: {detail[:300]}") from None


@dataclass(frozen=True)
class LocalRepository:
    """A repository on this machine, as `release-pipeline simulate` describes it to GitHub's payloads."""

    path: Path
    branch: str
    head: str

    @property
    def clone_url(self) -> str:
        return self.path.as_uri()


def local_repository(path: str | Path) -> LocalRepository:
    """The repository at `path` (or containing it): its checked-out branch and commit."""
    try:
        repo = Repo(Path(path), search_parent_directories=True)
    except Exception as exc:  # InvalidGitRepositoryError, NoSuchPathError
        raise ConfigError(f"{path}: not a git repository ({type(exc).__name__})") from None
    with repo:
        if repo.head.is_detached:
            raise ConfigError(f"{repo.working_tree_dir}: HEAD is detached; check out the branch to deploy")
        if not repo.head.is_valid():
            raise ConfigError(f"{repo.working_tree_dir}: no commit yet")
        return LocalRepository(Path(repo.working_tree_dir).resolve(), repo.active_branch.name, repo.head.commit.hexsha)


def ensure_local_tag(repo: LocalRepository, tag: str, sha: str) -> bool:
    """Tag `sha` as `tag` (lightweight) unless the tag exists; True if it was created.
    A tag that exists on another commit is refused: release tags do not move."""
    _check_ref(f"refs/tags/{tag}")
    with Repo(repo.path) as handle:
        existing = next((t for t in handle.tags if t.name == tag), None)
        if existing is not None:
            if existing.commit.hexsha != sha:
                raise ConfigError(f"tag {tag} already names {existing.commit.hexsha[:7]}, not {sha[:7]}")
            return False
        handle.create_tag(tag, ref=sha)
        return True
