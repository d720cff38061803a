"""Errors a user can fix: the CLI prints them as one line and exits with code 2."""


class UserError(Exception):
    """Bad input or a bad request; the message names the culprit and the fix."""

    exit_code = 2


class DataError(UserError):
    """A manifest, a clip or a tensor that cannot be used."""


class ConfigError(UserError):
    """A flag, a space file or a checkpoint that does not fit the request."""
