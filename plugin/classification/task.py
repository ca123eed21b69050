"""Image classification with timm models (ViT, DeiT, Swin): top-1 / top-5.

Config keys: `model = dict(name=<timm name>, kwargs=dict(...))`, `data = dict(type=..., ...)` (see data.py),
`calib = dict(batch_size=32[, num=N])` (`num` overrides every method's own default calibration size), `eval =
dict(batch_size=..., num_workers=...)`.
"""
import sys
import warnings

import torch

from ..errors import UserInputError
from ..utils.checkpoint import load_into, load_state_dict_file
from ..quant.progress import progress, to_stderr
from ..tasks.base import Task, register_task


def _get(cfg, key, default=None):
    value = cfg.get(key, default) if hasattr(cfg, "get") else getattr(cfg, key, default)
    return default if value is None else value


def _section(cfg, key, required=False):
    """A dict entry of the config ({} when absent and optional); a wrong type is a UserInputError."""
    value = _get(cfg, key)
    if value is None and not required:
        return {}
    if not hasattr(value, "keys") or not hasattr(value, "get"):
        raise UserInputError(f"classification config: `{key}` must be a dict, got {type(value).__name__} {value!r}")
    return value


def _int(section, key, default, where, minimum=1):
    value = _get(section, key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UserInputError(f"classification config: `{where}.{key}` must be an integer >= {minimum}, got {value!r}")
    return value


def timm_filter_fn(model):
    """timm's own checkpoint_filter_fn for the model's family (official checkpoints: key renames, pos-embed resize)."""
    fn = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
    if fn is None:
        return None

    def _filter(state, model):
        own = model.state_dict()
        if set(state) == set(own):  # already in this model's layout; nothing to convert
            return state
        return fn(state, model)
    return _filter


def check_class_count(dataset, model):
    """More data classes than classifier outputs cannot be scored; fewer usually means the wrong head or data."""
    classes, outputs = getattr(dataset, "classes", None), getattr(model, "num_classes", None)
    if classes is None or not isinstance(outputs, int) or outputs <= 0:
        return
    if len(classes) > outputs:
        raise UserInputError(f"the evaluation data has {len(classes)} classes but the model's classifier has "
                             f"{outputs} outputs (model.kwargs.num_classes in the config?)")
    if len(classes) < outputs:
        warnings.warn(f"the evaluation data has {len(classes)} classes and the model's classifier {outputs} outputs: "
                      f"labels are the data's class indices 0..{len(classes) - 1}, so the head must put those classes "
                      f"first (else set model.kwargs.num_classes to {len(classes)})", stacklevel=2)


def check_input_size(dataset, model):
    """A model built for a fixed input size (timm's strict patch embedding) must get that size from the data."""
    pe = getattr(model, "patch_embed", None)
    size = getattr(pe, "img_size", None)
    if size is None or not getattr(pe, "strict_img_size", False) or getattr(pe, "dynamic_img_size", False) \
            or len(dataset) == 0:
        return
    got = tuple(dataset[0][0].shape[-2:])
    if got != tuple(size):
        raise UserInputError(f"the data gives {got[0]}x{got[1]} images but the model was built for "
                             f"{size[0]}x{size[1]}: set model.kwargs.img_size (the size it was trained at) or, for "
                             f"image folders, data.input_size")


@register_task("classification")
class ClassificationTask(Task):
    primary_metric = "top1"
    default_calib_num = 32

    def __init__(self, cfg, checkpoint, device="cpu", work_dir=None, launcher="none", unsafe_load=False):
        super().__init__(cfg, checkpoint, device, work_dir, launcher, unsafe_load)
        self._datasets = None

    def build_model(self):
        import timm
        mcfg = _get(self.cfg, "model")
        if not hasattr(mcfg, "get") or not isinstance(mcfg.get("name"), str) \
                or not hasattr(mcfg.get("kwargs") or {}, "keys"):
            raise UserInputError("classification config needs model = dict(name=<timm model>, kwargs=dict(...))")
        try:
            model = timm.create_model(mcfg["name"], pretrained=False, **dict(mcfg.get("kwargs", {}) or {}))
        except (RuntimeError, TypeError, ValueError, AssertionError) as exc:
            raise UserInputError(f"cannot build timm model {mcfg['name']!r}: {exc}") from exc
        state = load_state_dict_file(self.checkpoint, unsafe=self.unsafe_load)
        load_into(model, state, self.checkpoint, filter_fn=timm_filter_fn(model))
        return model.to(self.device).eval()

    def datasets(self, model):
        if self._datasets is None:
            from .data import build_cls_datasets
            self._datasets = build_cls_datasets(dict(_section(self.cfg, "data", required=True)), model)
            check_class_count(self._datasets[1], model)
            check_input_size(self._datasets[1], model)
        return self._datasets

    @staticmethod
    def set_data_root(cfg, root):
        """`data.root` for image folders; `data.path` (the .npz file) for the npz and packed CIFAR-10 types."""
        data = _section(cfg, "data", required=True)
        data["root" if data.get("type") == "imagefolder" else "path"] = root
        return cfg

    def calib_available(self, model):
        return len(self.datasets(model)[0])

    def calib_data(self, model, num, seed):
        from ..quant import CalibData
        from .data import calib_subset
        calib_set, _ = self.datasets(model)
        subset = calib_subset(calib_set, num, seed)
        bs = _int(_section(self.cfg, "calib"), "batch_size", 32, "calib")
        images = torch.stack([subset[i][0] for i in range(len(subset))])
        batches = [images[i:i + bs].to(self.device) for i in range(0, len(images), bs)]
        return CalibData(batches, lambda m, batch: m(batch))

    def example_input(self, model):
        """One evaluation image as a batch of 1: the input the ONNX export traces (the batch size stays dynamic)."""
        _, eval_set = self.datasets(model)
        return eval_set[0][0].unsqueeze(0).to(self.device)

    def evaluate(self, model, progress_enabled=True, desc="eval"):
        _, eval_set = self.datasets(model)
        ecfg = _section(self.cfg, "eval")
        loader = torch.utils.data.DataLoader(
            eval_set, batch_size=_int(ecfg, "batch_size", 64, "eval"), shuffle=False,
            num_workers=_int(ecfg, "num_workers", 0, "eval", minimum=0))
        correct1 = correct5 = total = 0
        kept_logits, kept_labels = [], []
        model.eval()
        with torch.no_grad():
            for images, labels in progress(loader, f"[{desc}]", log=to_stderr, enabled=progress_enabled):
                logits = model(images.to(self.device))
                if isinstance(logits, (tuple, list)):  # distilled DeiT in train mode; eval returns the mean
                    logits = logits[0]
                if not torch.isfinite(logits).all():
                    raise UserInputError("the model produced NaN/inf logits during evaluation")
                labels = labels.to(logits.device)
                top = logits.topk(min(5, logits.shape[1]), dim=1).indices
                correct1 += (top[:, 0] == labels).sum().item()
                correct5 += (top == labels[:, None]).any(1).sum().item()
                total += labels.numel()
                kept_logits.append(logits.detach().to("cpu", torch.float16))
                kept_labels.append(labels.cpu())
        if total == 0:
            raise UserInputError("the evaluation set is empty")
        # per-image outputs of the last evaluation, for agreement with the float model (float16: small on ImageNet)
        self.last_outputs = {"logits": torch.cat(kept_logits), "labels": torch.cat(kept_labels)}
        return {"top1": 100.0 * correct1 / total, "top5": 100.0 * correct5 / total, "num_images": total}

    @staticmethod
    def agreement(fp_outputs, q_outputs):
        """Top-1 agreement and mean KL with the float model, and the paired-bootstrap interval of the top-1 change."""
        from ..tasks.agreement import classification_agreement, paired_bootstrap
        labels = fp_outputs["labels"]
        out = classification_agreement(fp_outputs["logits"], q_outputs["logits"])
        out["top1_change"] = paired_bootstrap(fp_outputs["logits"].argmax(1) == labels,
                                              q_outputs["logits"].argmax(1) == labels)
        return out

    def model_meta(self):
        mcfg = _get(self.cfg, "model")
        return {"task": "classification", "timm_model": mcfg["name"], "timm_kwargs": dict(mcfg.get("kwargs", {}) or {})}
