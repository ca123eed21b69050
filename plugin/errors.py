"""Errors that the CLI reports as one clear message and a non-zero exit (no traceback).

`UserInputError` belongs to the application side (tasks, data readers, configs, tools); the quantizer library raises
its own exceptions (plugin.quant.errors). `USER_ERRORS` is what a tool catches to print one line.

Every tool answers bad input the same way: one line `<tool>: error: <message>` on stderr and exit code 2 — argparse
usage errors through `ToolParser`, everything after parsing through `run_cli` / `tool_main` (which also turn an
OSError, e.g. a full disk, into that line)."""
import argparse
import errno
import functools
import numbers
import os
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


def _number(kind, text, ok, wanted):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}")
    if value != value or not ok(value):  # NaN fails every comparison: refuse it explicitly
        raise argparse.ArgumentTypeError(f"expected {wanted}, got {text}")
    return value


def positive_int(text):
    """argparse type: an integer >= 1, else one clear line."""
    return _number(int, text, lambda v: v >= 1, "a positive integer")


def bit_width(text):
    """argparse type: a bit width the quantizers support, 2 … 8."""
    return _number(int, text, lambda v: 2 <= v <= 8, "a bit width from 2 to 8")


def nonnegative_int(text):
    """argparse type: an integer >= 0."""
    return _number(int, text, lambda v: v >= 0, "an integer >= 0")


def positive_float(text):
    """argparse type: a finite number > 0."""
    return _number(float, text, lambda v: 0 < v < float("inf"), "a positive number")


def nonnegative_float(text):
    """argparse type: a finite number >= 0."""
    return _number(float, text, lambda v: 0 <= v < float("inf"), "a number >= 0")


def fraction(text):
    """argparse type: a number in [0, 1]."""
    return _number(float, text, lambda v: 0 <= v <= 1, "a number from 0 to 1")


def check_settings(values, rules, where):
    """Check settings read from a config (or merged with the command line) by the same argparse types the command
    line uses: `rules` maps a key to such a type; None values are skipped. One UserInputError naming `where` and the
    key on the first value that fails."""
    for key, rule in rules.items():
        value = values.get(key)
        if value is None:
            continue
        try:
            rule(str(value))
        except argparse.ArgumentTypeError as exc:
            raise UserInputError(f"{where} {key}: {exc}") from None


def error_line(message):
    """`<tool>: error: <message>` folded onto one line (argparse's prefix, so both kinds of error read alike)."""
    text = "; ".join(part.strip() for part in str(message).splitlines() if part.strip())
    return f"{os.path.basename(sys.argv[0])}: error: {text}"


def describe_os_error(exc):
    """An OSError as the user needs it: what failed and on which file, without errno numbers."""
    what = exc.strerror or str(exc) or type(exc).__name__
    if exc.errno == errno.ENOSPC:
        what = "no space left on device (free some space or write elsewhere)"
    names = [n for n in (exc.filename, exc.filename2) if n is not None]
    return f"{what}: {' -> '.join(map(str, names))}" if names else what


class ToolParser(argparse.ArgumentParser):
    """argparse with a one-line usage error: `<tool>: error: <message> (see --help)` and exit 2, instead of the
    full usage block (which buried the message on a 12-line screen)."""

    def error(self, message):
        sys.stderr.write(error_line(f"{message} (see --help)") + "\n")
        sys.exit(2)


def run_cli(body, *args):
    """A tool's exit code for `body(*args)`: what it returns when that is an int (other results count as success:
    0), or 2 with one `<tool>: error: <message>` line on stderr (no traceback) when it raises one of USER_ERRORS or an
    OSError (a missing or unwritable file, a full disk)."""
    try:
        result = body(*args)
    except USER_ERRORS as exc:
        print(error_line(exc), file=sys.stderr)
        return 2
    except OSError as exc:
        print(error_line(describe_os_error(exc)), file=sys.stderr)
        return 2
    return result if isinstance(result, int) and not isinstance(result, bool) else 0


def tool_main(main):
    """Decorator for a tool's `main(argv=None)`: its exit code through `run_cli`."""
    @functools.wraps(main)
    def wrapped(argv=None):
        return run_cli(main, argv)
    return wrapped


__all__ = ["CalibrationError", "CheckpointError", "ConfigError", "QuantError", "ToolParser", "USER_ERRORS",
           "UserInputError", "bit_width", "check_calib_num", "check_settings", "error_line", "fraction", "nonnegative_float", "nonnegative_int",
           "positive_float", "positive_int", "run_cli", "tool_main"]
