"""Errors that the CLI reports as one clear message and a non-zero exit (no traceback).

`UserInputError` belongs to the application side (tasks, data readers, configs, tools); the quantizer library raises
its own exceptions (plugin.quant.errors). `USER_ERRORS` is what a tool catches to print one line."""
import numbers
import sys

from .quant.errors import CalibrationError, CheckpointError, ConfigError, QuantError


class UserInputError(Exception):
    """Bad input from the user: a missing file, an unsupported option, data that does not fit."""


USER_ERRORS = (UserInputError, QuantError)


def check_calib_num(num, available, what, integer=False):
    """Refuse a calibration size outside 1 … `available` (what the task's calibration split holds, named by `what`),
    or not an integer when `integer`, with one line, before any sample is drawn: never clamped."""
    if (integer and not isinstance(num, numbers.Integral)) or not 1 <= num <= available:
        raise UserInputError(f"calibration size must be between 1 and {available} ({what}), got {num}")


def positive_int(text):
    """argparse type: an integer >= 1, else one clear line."""
    import argparse
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def run_cli(body, *args):
    """A tool's exit code for `body(*args)`: 0, or 2 with `error: <message>` on stderr (no traceback) when it raises
    one of USER_ERRORS."""
    try:
        body(*args)
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


__all__ = ["CalibrationError", "CheckpointError", "ConfigError", "QuantError", "USER_ERRORS", "UserInputError",
           "check_calib_num", "positive_int", "run_cli"]
