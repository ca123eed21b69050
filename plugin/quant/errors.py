"""The quantizer library's exceptions. Each is also a ValueError or RuntimeError, so callers that know nothing of
vitq can still catch it; an application (tools/ptq_test.py) catches `QuantError` and prints one line."""


class QuantError(Exception):
    """Base of every error the library raises on purpose (as opposed to a bug)."""


class ConfigError(QuantError, ValueError):
    """Input the library cannot use: a bad recipe, spec or pass option, an unknown registered name, an argument or
    model that does not fit the call (checked before any work where possible)."""


class CalibrationError(QuantError, RuntimeError):
    """Calibration met data it cannot work with (NaN/inf activations, an empty calibration set, a site the data
    never reaches)."""


class CheckpointError(QuantError, ValueError):
    """A saved quantized model or calibration checkpoint that cannot be read, is of another format or version, or
    does not match the model or run it is loaded into."""


__all__ = ["CalibrationError", "CheckpointError", "ConfigError", "QuantError"]
