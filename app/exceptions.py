"""The few errors the domain raises, in one flat place."""


class ReleasePipelineError(Exception):
    """Base of every error this project raises on purpose."""


class SettingsError(ReleasePipelineError):
    """The environment does not describe a usable installation."""


class ConfigError(ReleasePipelineError):
    """A pipeline definition or repository file is invalid; the message names the path."""


class CloneRefused(ReleasePipelineError):
    """A clone URL or ref is not allowed (wrong host, file:// without opt-in, unsafe ref)."""


class CloneFailed(ReleasePipelineError):
    """git could not fetch the commit; the message never contains credentials."""


class BuildFailed(ReleasePipelineError):
    """The image did not build; the build log holds the details."""


class DeployFailed(ReleasePipelineError):
    """The new version did not become healthy; the previous one keeps serving."""


class EngineUnavailable(ReleasePipelineError):
    """The container engine (Docker, a Swarm manager) failed or cannot be reached."""


class QueueUnavailable(ReleasePipelineError):
    """Redis refused the jobs of work just recorded; that work was withdrawn (`app.jobs`)."""


class RouterError(ReleasePipelineError):
    """The router (Caddy) refused or could not be reached."""


class LockHeld(ReleasePipelineError):
    """Another deployment of this app and phase holds the lock."""


class GitHubError(ReleasePipelineError):
    """GitHub answered with an error that retrying will not fix."""


class TransientGitHubError(GitHubError):
    """GitHub failed in a way worth retrying (5xx, rate limit); carries the advised wait."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class OAuthFailed(ReleasePipelineError):
    """The OAuth sign-in did not produce a user; the message is safe to show."""


class InvalidVersion(ReleasePipelineError):
    """A version label is neither semver nor a safe label."""
