"""Errors that the CLI reports as one clear message and a non-zero exit (no traceback).

`UserInputError` belongs to the application side (tasks, data readers, configs, tools); the quantizer library raises
its own exceptions (plugin.quant.errors). `USER_ERRORS` is what a tool catches to print one line."""
from .quant.errors import CalibrationError, CheckpointError, ConfigError, QuantError


class UserInputError(Exception):
    """Bad input from the user: a missing file, an unsupported option, data that does not fit."""


USER_ERRORS = (UserInputError, QuantError)

__all__ = ["CalibrationError", "CheckpointError", "ConfigError", "QuantError", "USER_ERRORS", "UserInputError"]
