"""vitq: post-training quantization of vision transformers.

`import plugin` registers the quantizers, recipes, passes, adapters and tasks. The MMDetection and point-cloud
parts register themselves only when their libraries are installed (they warn otherwise).
"""
__version__ = "0.1.0"

# The layers, each importing only those above it: the library, the adapters of third-party architectures, the task
# interface, then one package per task (its data, models, metrics, adapter of its own models and task runner).
from . import quant  # noqa: F401,E402
from . import adapters  # noqa: F401,E402
from . import tasks  # noqa: F401,E402
from . import classification  # noqa: F401,E402
from . import detection  # noqa: F401,E402  (QuantSwin + mmcv-lite ops when mmdet is installed; warns once otherwise)
from . import pointcloud  # noqa: F401,E402  (Point-MAE style models; torch only)
