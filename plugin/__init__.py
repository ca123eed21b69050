"""vitq: post-training quantization of vision transformers.

`import plugin` registers the quantizers, recipes, passes, adapters and tasks. The MMDetection and point-cloud
parts register themselves only when their libraries are installed (they warn otherwise).
"""
__version__ = "0.1.0"

from . import quant  # noqa: F401,E402
from . import adapters  # noqa: F401,E402
from .tasks import classification  # noqa: F401,E402
from . import det  # noqa: F401,E402  (QuantSwin + mmcv-lite ops when mmdet is installed; warns once otherwise)
from .tasks import detection  # noqa: F401,E402
from .tasks import pointcloud  # noqa: F401,E402  (Point-MAE style models; torch only)
