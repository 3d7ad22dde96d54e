"""User-facing errors.

Anything raised as a `UserError` is the user's mistake (a bad path, a bad config key, an unreadable image):
the CLI prints its message on one line and exits with status 2, never a traceback.
"""


class UserError(Exception):
    """A mistake in the user's input; the message names the thing and what was expected."""


class ConfigError(UserError, ValueError):
    """A bad config file, key or value."""


class DataError(UserError, ValueError):
    """A dataset that cannot be read: missing paths, wrong layouts, empty classes, unreadable images."""
