"""One package per method; each registers its recipes and imports only the core (plugin.quant.*)."""
from . import aphq, fimaq  # noqa: F401  (registration)
