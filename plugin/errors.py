"""Errors that the CLI reports as one clear message and a non-zero exit (no traceback)."""


class UserInputError(Exception):
    """Bad input from the user: a missing file, an unsupported option, data that does not fit."""


class CalibrationError(Exception):
    """Calibration met data it cannot work with (NaN/inf activations, an empty calibration set)."""
