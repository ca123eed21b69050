"""Image classification with timm models: data sets (ImageNet folders, CIFAR, arrays), the ``classification`` task
and its agreement metrics, and timm helpers (the input size a model was built for, the record that rebuilds it from a
saved quantized model). Importing this package registers the task; `import plugin` registers the timm model
recorder."""
from . import task  # noqa: F401  (registers the classification task)
from .timm_models import data_config_for, input_size  # noqa: F401  (re-exported)
