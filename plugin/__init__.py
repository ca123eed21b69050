"""vitq: post-training quantization of vision transformers.

`import plugin` registers the quantizers, recipes, passes and adapters, and the task names. A task package (its data,
models, metrics, runner) is imported on the first lookup of one of its tasks (`plugin.tasks.get_task`), so a
classification run never imports MMDetection, MMEngine or MMCV. The MMDetection and point-cloud parts register
themselves only when their libraries are installed (they warn otherwise); an mmdet config that names `QuantSwin`
imports `plugin.detection` (`custom_imports=dict(imports=['plugin.detection'])`).
"""
__version__ = "0.1.0"

# The layers, each importing only those above it: the library, the adapters of third-party architectures, the task
# interface; then the task packages, one per task (its data, models, metrics, adapter of its own models and runner),
# by name only.
from . import quant  # noqa: F401,E402
from . import adapters  # noqa: F401,E402
from . import tasks  # noqa: F401,E402
from .tasks.base import TASKS  # noqa: E402

for _task, _package in (("classification", "plugin.classification"), ("detection", "plugin.detection"),
                        ("pointcloud_cls", "plugin.pointcloud"), ("pointcloud_partseg", "plugin.pointcloud")):
    TASKS.register_lazy(_task, _package)


def _timm_recorder(name):
    """The timm model recorder's `name` function (plugin.classification.timm_models), imported on its first call, so
    `import plugin` registers the recorder (save_quantized records a timm model, load_quantized(path) rebuilds it)
    without importing the classification package or timm."""
    def call(arg):
        from .classification import timm_models
        return getattr(timm_models, name)(arg)
    return call


quant.register_model_recorder("timm", _timm_recorder("describe_timm_model"), _timm_recorder("build_timm_model"))
