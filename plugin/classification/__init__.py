"""Image classification with timm models: data sets (ImageNet folders, CIFAR, arrays), the ``classification`` task
and its agreement metrics. Importing this package registers the task."""
from . import task  # noqa: F401  (registers the classification task)
