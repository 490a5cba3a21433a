"""Errors that the CLI reports as one line with exit code 2 (bad input), never as a traceback."""


class OrthoguardError(Exception):
    """Base class for expected, user-facing errors."""


class ConfigError(OrthoguardError):
    """A config file is missing, malformed, or has an unknown key or a wrong type."""


class DataError(OrthoguardError):
    """A data file is missing or malformed, or splits overlap."""


class DirectionError(OrthoguardError):
    """A direction file does not fit the model being trained."""
