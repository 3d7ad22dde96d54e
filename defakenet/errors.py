"""User-facing errors.

Anything raised as a `UserError` is the user's mistake (a bad path, a bad config key, an unreadable image):
the CLI prints its message on one line and exits with status 2, never a traceback.
"""


def first_line(e: BaseException | str | None, default: str = "") -> str:
    """The first non-blank line of an error or message, stripped (`default` if none): Ray Data appends its retry
    advice to an error raised in a task, Ray's worker errors carry tracebacks, MLflow's messages run on."""
    return next((line.strip() for line in str(e or "").splitlines() if line.strip()), default)


class UserError(Exception):
    """A mistake in the user's input; the message names the thing and what was expected."""


class ConfigError(UserError, ValueError):
    """A bad config file, key or value."""


class DataError(UserError, ValueError):
    """A dataset that cannot be read: missing paths, wrong layouts, empty classes, unreadable images."""


class TrackingServerDown(UserError):
    """The MLflow tracking server stopped answering at a point the run cannot go past; the message says what was kept
    (a saved model folder) and how to finish the job once the server is back."""
