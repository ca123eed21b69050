"""The task interface that tools/ptq_test.py drives, and the task registry.

A task builds the float model from a config and a checkpoint, gives calibration batches from a training split and
evaluates a model to a dict of metrics. Everything method-specific lives in plugin/quant.
"""
from ..errors import UserInputError
from ..quant.registry import Registry

TASKS = Registry("task")  # name -> Task subclass


def register_task(name):
    def deco(cls):
        cls.name = name
        return TASKS.register(name, cls)
    return deco


def get_task(name):
    """The task class a config's `task` names; an unknown one raises plugin.quant.errors.ConfigError."""
    return TASKS.lookup(name, where="config")


class Task:
    """Subclasses set `primary_metric` and implement the four methods below."""
    name = "task"
    primary_metric = "metric"
    # Default number of calibration samples when the user gives no --calib-num (the papers' defaults).
    default_calib_num = 32
    # Whether evaluation runs sharded under a launcher (torchrun, --launcher pytorch) with the result of one process.
    # A task without it refuses a launcher rather than have every rank run the whole job unasked.
    distributed = False

    def __init__(self, cfg, checkpoint, device="cpu", work_dir=None, launcher="none", unsafe_load=False):
        if launcher != "none" and not self.distributed:
            raise UserInputError(f"--launcher {launcher}: the {self.name} task evaluates in one process only; run "
                                 f"it without --launcher and without torchrun")
        self.cfg, self.checkpoint, self.device, self.work_dir, self.launcher = cfg, checkpoint, device, work_dir, launcher
        self.unsafe_load = unsafe_load  # load the checkpoint with pickle (only for files the user trusts)

    def build_model(self):
        """Float model on self.device, eval mode, checkpoint loaded (safely: weights_only unless opted out)."""
        raise NotImplementedError

    def calib_data(self, model, num, seed):
        """plugin.quant.CalibData with `num` samples from a training/calibration split (never the test split)."""
        raise NotImplementedError

    @staticmethod
    def set_data_root(cfg, root):
        """Point the config's data at `root` (in place; the --data-root of tools/ptq_test.py): `data.root`."""
        data = cfg.get("data", None)
        if data is None:
            cfg["data"] = data = {}
        data["root"] = root
        return cfg

    @staticmethod
    def recipe_overrides(cfg):
        """Per-module overrides (plugin.quant.overrides) this task adds for its config's options; none by default."""
        return []

    def calib_available(self, model):
        """How many samples the calibration split holds (None: unknown, not checked before calibration)."""
        return None

    def evaluate(self, model, progress=True):
        """Dict of metric name -> float (percentages for accuracies and mAP/mIoU)."""
        raise NotImplementedError

    # Tasks that keep per-sample outputs of their last evaluation in `self.last_outputs` define
    # `agreement(fp_outputs, q_outputs) -> dict` (classification, point clouds and detection do); tools/ptq_test.py
    # reports it as `agreement`. Scalars are agreement measures; dicts are changes of the task metric with a
    # paired-bootstrap interval (plugin/tasks/agreement.py: `diff`, `ci95`, `tie`, `resamples`).
    agreement = None

    # Tasks whose model takes one tensor define `example_input(model) -> tensor` (one batch, on self.device):
    # tools/ptq_test.py --export-onnx traces the model with it. None: the task's models are not exported.
    example_input = None

    def model_meta(self):
        """JSON-serialisable description that, with the config, rebuilds the float model (saved beside weights)."""
        return {}
