"""Errors the user can act on.

Every error ACAT raises on bad input derives from :class:`ACATError` and carries one line that says
what is wrong and what to do. The CLI turns them into a one-line message and exit code 2.
"""


class ACATError(Exception):
    """Base class of every error the user can fix (bad input, bad model file, bad config)."""


class InputError(ACATError, ValueError):
    """The image given is not a CT volume ACAT can analyse (wrong dimensions, NaNs, not CT, ...)."""


class ModelFileError(ACATError):
    """A model file or its model card is missing, corrupt (checksum, schema, values) or does not fit."""


class ConfigError(ACATError, ValueError):
    """A configuration value is missing or out of range."""
