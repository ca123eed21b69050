"""Point-cloud classification (OA / mAcc) and part segmentation (instance / class mIoU) with Point-MAE style models.

Config keys:
    task = 'pointcloud_cls' | 'pointcloud_partseg'
    model = dict(type='PointMAECls' | 'PointMAEPartSeg', **constructor arguments)   (plugin/pointcloud/models.py)
    data = dict(root=..., format='auto', num_points=..., calib_split='train', eval_split='test')
    calib = dict(num=..., batch_size=...)
    eval = dict(batch_size=...)
Relative data roots are looked up from the working directory, then from the repository root.
"""
import numpy as np

from ..errors import UserInputError, check_calib_num
from ..utils.paths import REPO_ROOT
from ..tasks.base import Task, register_task


def _get(cfg, key, default=None):
    value = cfg.get(key, default) if hasattr(cfg, "get") else getattr(cfg, key, default)
    return default if value is None else value


class _PointCloudTask(Task):
    model_type = ""
    default_calib_num = 32
    default_eval_batch = 32

    def __init__(self, cfg, checkpoint, device="cpu", work_dir=None, launcher="none", unsafe_load=False):
        super().__init__(cfg, checkpoint, device, work_dir, launcher, unsafe_load)
        self._datasets = {}

    def _model_cfg(self):
        mcfg = dict(_get(self.cfg, "model", {}))
        mcfg.setdefault("type", self.model_type)
        if mcfg["type"] != self.model_type:
            raise UserInputError(f"task {self.name} needs model type {self.model_type!r}, config has {mcfg['type']!r}")
        return mcfg

    def build_model(self):
        from .models import build_model, checkpoint_filter_fn
        from ..utils.checkpoint import load_into, load_state_dict_file
        try:
            model = build_model(self._model_cfg())
        except (TypeError, ValueError) as exc:
            raise UserInputError(f"cannot build the point-cloud model from the config: {exc}") from exc
        if self.checkpoint:
            state = load_state_dict_file(self.checkpoint, unsafe=self.unsafe_load)
            load_into(model, state, self.checkpoint, filter_fn=lambda s, m: checkpoint_filter_fn(s))
        self._check_model(model, self.dataset(_get(_get(self.cfg, "data", {}), "eval_split", "test")))
        return model.to(self.device).eval()

    def dataset(self, split):
        if split not in self._datasets:
            from .data import build_dataset
            ds = build_dataset(dict(_get(self.cfg, "data", {})), split, base_dirs=[REPO_ROOT])
            if ds.task != self.dataset_task:
                raise UserInputError(f"task {self.name} cannot use a {ds.task} data set ({_get(self.cfg, 'data')})")
            self._datasets[split] = ds
        return self._datasets[split]

    def calib_data(self, model, num, seed):
        from .data import batches
        from .engine import forward_batch
        from ..quant import CalibData
        ds = self._calib_split()
        check_calib_num(num, len(ds), "the calibration split's size")
        idx = np.random.default_rng(seed).choice(len(ds), int(num), replace=False)
        bs = int(_get(_get(self.cfg, "calib", {}), "batch_size", 32))
        cal = [{k: v.to(self.device) for k, v in b.items() if k in ("points", "category")}
               for b in batches(ds, sorted(idx.tolist()), bs)]
        return CalibData(cal, lambda m, batch: forward_batch(m, batch, self.device))

    def _calib_split(self):
        return self.dataset(_get(_get(self.cfg, "data", {}), "calib_split", "train"))

    def calib_available(self, model):
        return len(self._calib_split())

    def evaluate(self, model, progress_enabled=True, desc="eval", progress=None):
        from .engine import evaluate
        if progress is not None:
            progress_enabled = progress
        ds = self.dataset(_get(_get(self.cfg, "data", {}), "eval_split", "test"))
        bs = int(_get(_get(self.cfg, "eval", {}), "batch_size", self.default_eval_batch))
        self.last_outputs = {}  # per-shape outputs of this evaluation, for agreement with the float model
        return evaluate(model, ds, bs, self.device, progress_enabled, desc, outputs=self.last_outputs)

    @staticmethod
    def agreement(fp_outputs, q_outputs):
        """Classification: OA agreement and the paired-bootstrap interval of the OA change. Part segmentation:
        per-point label agreement and the interval of the instance-mIoU change (per-shape IoUs)."""
        from ..tasks.agreement import paired_bootstrap
        if "preds" in fp_outputs:
            labels = fp_outputs["labels"]
            return {"oa_agreement": float((fp_outputs["preds"] == q_outputs["preds"]).mean() * 100.0),
                    "OA_change": paired_bootstrap(fp_outputs["preds"] == labels, q_outputs["preds"] == labels)}
        return {"point_agreement": float((fp_outputs["point_preds"] == q_outputs["point_preds"]).mean() * 100.0),
                "instance_mIoU_change": paired_bootstrap(fp_outputs["shape_ious"], q_outputs["shape_ious"])}

    def model_meta(self):
        return {"task": self.name, "model": self._model_cfg()}


@register_task("pointcloud_cls")
class PointCloudClsTask(_PointCloudTask):
    """Shape classification: overall accuracy (OA) and mean class accuracy (mAcc), in percent."""
    primary_metric = "OA"
    model_type = "PointMAECls"
    dataset_task = "cls"

    def _check_model(self, model, ds):
        if model.num_classes != len(ds.classes):
            raise UserInputError(f"the model has {model.num_classes} classes, the data set {len(ds.classes)}")


@register_task("pointcloud_partseg")
class PointCloudPartSegTask(_PointCloudTask):
    """Part segmentation: instance and class mIoU in percent (ShapeNetPart convention)."""
    primary_metric = "instance_mIoU"
    model_type = "PointMAEPartSeg"
    dataset_task = "partseg"
    default_eval_batch = 16

    def _check_model(self, model, ds):
        if model.num_categories != len(ds.categories) or model.num_parts != ds.num_parts:
            raise UserInputError(f"the model has {model.num_categories} categories and {model.num_parts} parts, the "
                                 f"data set {len(ds.categories)} and {ds.num_parts}")
