"""Object detection and instance segmentation with MMDetection 3.x: COCO bbox and segm mAP.

The config is an ordinary mmdet config (``_base_`` on mmdet's own, ``custom_imports=dict(imports=['plugin.detection'])``,
``task = 'detection'``). The detector is built through mmengine's ``Runner`` exactly as mmdet's ``tools/test.py``
builds it (``--cfg-options`` are merged into the config by the CLI; ``work_dir`` is ``--work-dir``, else the config's,
else a temporary folder; ``launcher`` as given), except that the checkpoint is loaded here, without pickle. mmengine's
INFO log and pycocotools' prints show only when asked for (plugin/detection/runner_quiet.py).

Calibration images come from the config's *training* annotations (``train_dataloader.dataset``, dataset wrappers
unwrapped) run through the *test* pipeline, one image per batch, and go through ``model.test_step`` (data
preprocessor + full inference), as the papers calibrate. Evaluation is the config's test loop and evaluator
(CocoMetric); under ``launcher='pytorch'`` mmengine shards it across ranks and gathers the results, and the evaluated
model's parameters and buffers are first broadcast from rank 0 (calibration is deterministic on every rank; the
broadcast makes all ranks evaluate exactly rank 0's quantized model).

Options (config keys, overridable with ``--cfg-options``): ``keep_heads_float=True`` keeps the neck, RPN and RoI heads
in float (only the backbone is quantized): shorthand for the per-module override ``(HEADS_FLOAT_PATTERN, None)``
(``quant = dict(overrides=[...])`` in the config takes any rule, plugin.quant.overrides);
``agreement=dict(score_thr=0.3, resamples=1000)``: the float model's predictions kept as ground truth of the agreement
mAP, and the bootstrap resamples of the mAP-change intervals (plugin/detection/agreement.py).

Every evaluation also keeps the predictions per image (``last_outputs``), as CocoMetric sees them, for agreement with
the float model: the float evaluation's predictions are the reference, so no second float pass runs.
"""
import contextlib
import copy
import os

import numpy as np

from ..errors import UserInputError, check_calib_num
from ..tasks.base import Task, register_task
from .runner_quiet import quiet_runner, quiet_stdout, scratch_work_dir, set_log_level, verbose
from .loop import attach_collector, broadcast_from_rank0, run_test_step

# every module outside the backbone: the neck, RPN and RoI heads
HEADS_FLOAT_PATTERN = r"re:(?!backbone\.).*"
DATASET_WRAPPERS = ("RepeatDataset", "ClassBalancedDataset", "MultiImageMixDataset")
# Agreement with the float model: its predictions with score >= AGREEMENT_SCORE_THR are the ground truth of the
# agreement mAP (0.3: mmdet's score threshold for showing detections); intervals from AGREEMENT_RESAMPLES resamples.
AGREEMENT_SCORE_THR = 0.3
AGREEMENT_RESAMPLES = 1000


def _require_mmdet():
    from . import HAS_MMDET, MMDET_ERROR
    if not HAS_MMDET:
        raise UserInputError(f"the detection task needs MMDetection ({MMDET_ERROR}); "
                             "install it with: pip install -e '.[det]'")


def unwrap_dataset_cfg(ds_cfg):
    """The innermost dataset config under wrappers (RepeatDataset, ClassBalancedDataset, MultiImageMixDataset; the
    first member of a ConcatDataset)."""
    while True:
        if ds_cfg.get("type") in DATASET_WRAPPERS:
            ds_cfg = ds_cfg["dataset"]
        elif ds_cfg.get("type") == "ConcatDataset":
            ds_cfg = ds_cfg["datasets"][0]
        else:
            return ds_cfg


def _evaluator_cfgs(cfg, name):
    """The evaluator dicts of `cfg[name]` (one evaluator or a list of them)."""
    evaluators = cfg.get(name, None)
    return [ev for ev in (evaluators if isinstance(evaluators, (list, tuple)) else [evaluators]) if hasattr(ev, "get")]


def move_data_root(cfg, root):
    """Point every data path of an mmdet config at `root` (in place): the data_root of the train, val and test
    datasets (inside wrappers too) and the evaluators' `ann_file`s that lay under the old data_root."""
    root = root if root.endswith("/") else root + "/"
    old = cfg.get("data_root", None)
    for loader in ("train_dataloader", "val_dataloader", "test_dataloader"):
        section = cfg.get(loader, None)
        if section and section.get("dataset", None) is not None:
            ds = section["dataset"]
            members = ds["datasets"] if ds.get("type") == "ConcatDataset" else [ds]
            for member in members:
                unwrap_dataset_cfg(member)["data_root"] = root
    for name in ("val_evaluator", "test_evaluator"):
        for ev in _evaluator_cfgs(cfg, name):
            ann = ev.get("ann_file", None)
            if isinstance(ann, str) and old and ann.startswith(old):
                ev["ann_file"] = root + ann[len(old):]
    cfg["data_root"] = root
    return cfg


def missing_data_paths(cfg):
    """Annotation files the config names that do not exist: the calibration (train) and test datasets' (data_root +
    ann_file) and the test evaluator's ann_file. Relative paths are taken from the working folder, as mmdet does."""
    missing = []
    for loader in ("train_dataloader", "test_dataloader"):
        section = cfg.get(loader, None)
        ds = unwrap_dataset_cfg(section["dataset"]) if section and section.get("dataset", None) is not None else {}
        ann = ds.get("ann_file", None)
        if isinstance(ann, str) and ann:
            path = ann if os.path.isabs(ann) else os.path.join(ds.get("data_root", None) or "", ann)
            missing.append(path)
    for ev in _evaluator_cfgs(cfg, "test_evaluator"):
        ann = ev.get("ann_file", None)
        if isinstance(ann, str) and ann:
            missing.append(ann)
    return [p for p in dict.fromkeys(missing) if "://" not in p and not os.path.isfile(p)]  # remote storage: unchecked


def detector_checkpoint_filter(state, model):
    """Checkpoint keys -> this detector's keys: original-layout Swin backbones are converted (mmdet's converter), and
    the deterministic ``relative_position_index`` buffers are taken from the model where a checkpoint omits them."""
    from .swin import convert_original_swin_checkpoint, is_original_swin_layout
    if is_original_swin_layout(state):
        state = convert_original_swin_checkpoint(state)
    own = model.state_dict()
    for key, value in own.items():
        if key.endswith("relative_position_index") and key not in state:
            state[key] = value
    return state


def _first_line(exc):
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


@contextlib.contextmanager
def _as_user_error(what):
    """mmdet / pycocotools raise anything for damaged data: turn it into one UserInputError saying `what` failed."""
    try:
        yield
    except UserInputError:
        raise
    except Exception as exc:
        raise UserInputError(f"{what}: {_first_line(exc)}") from exc


def _percent(name, value):
    """CocoMetric reports AP as a fraction rounded to 3 decimals; the reports use percentages."""
    return round(100.0 * value, 1) if "_mAP" in name and value >= 0 else float(value)


@register_task("detection")
class DetectionTask(Task):
    primary_metric = "bbox_mAP"
    distributed = True  # mmengine shards the test set and gathers the results (module docstring)
    # RepQ-ViT / PTQ4ViT-style calibration uses one image for detection; reconstruction recipes carry their own number.
    default_calib_num = 1

    def __init__(self, cfg, checkpoint, device="cpu", work_dir=None, launcher="none", unsafe_load=False):
        super().__init__(cfg, checkpoint, device, work_dir, launcher, unsafe_load)
        _require_mmdet()
        from mmengine.config import Config
        if not isinstance(cfg, Config):
            raise UserInputError("the detection task needs the config loaded by mmengine (pip install -e '.[det]')")
        self.keep_heads_float = bool(cfg.get("keep_heads_float", False))  # applied as a recipe override
        self.agreement_score_thr, self.agreement_resamples = _agreement_options(cfg)
        self.runner = None
        self._calib_set = None

    @staticmethod
    def recipe_overrides(cfg):
        return [(HEADS_FLOAT_PATTERN, None)] if cfg.get("keep_heads_float", False) else []

    # -- building -------------------------------------------------------------------------------------------------
    def _runner_cfg(self):
        cfg = copy.deepcopy(self.cfg)
        if self.work_dir is not None:
            cfg.work_dir = self.work_dir
        elif cfg.get("work_dir", None) is None:
            cfg.work_dir = scratch_work_dir()
        cfg.launcher = self.launcher
        cfg.load_from, cfg.resume = None, False  # the checkpoint is loaded below, with weights_only
        return cfg

    def build_model(self):
        from mmengine.model import is_model_wrapper
        from mmengine.runner import Runner

        from ..utils.checkpoint import load_into, load_state_dict_file

        cfg = self._runner_cfg()
        missing = missing_data_paths(cfg)
        if missing:
            raise UserInputError(f"annotation file(s) not found: {', '.join(missing[:3])} (working folder "
                                 f"{os.getcwd()}); point the config at the data with --data-root DIR")
        level = cfg.get("log_level", "INFO") if verbose() else "WARNING"
        cfg.log_level = "WARNING"  # the runner's environment and full-config dump; the test loop logs at `level`
        try:
            self.runner = Runner.from_cfg(cfg)
        except (KeyError, TypeError, ValueError) as exc:
            raise UserInputError(f"cannot build the detector from {self.cfg.filename}: {type(exc).__name__}: {exc}") \
                from exc
        set_log_level(self.runner.logger, level)
        model = self.runner.model.module if is_model_wrapper(self.runner.model) else self.runner.model
        state = load_state_dict_file(self.checkpoint, unsafe=self.unsafe_load)
        load_into(model, state, self.checkpoint, filter_fn=detector_checkpoint_filter)
        if self.launcher == "none":
            model.to(self.device)
        return model.eval()

    # -- calibration ----------------------------------------------------------------------------------------------
    def calib_dataset(self):
        """The training annotations through the test pipeline (built once)."""
        if self._calib_set is None:
            from mmdet.registry import DATASETS
            from mmengine.registry import DefaultScope
            train = self.cfg.get("train_dataloader", None)
            test = self.cfg.get("test_dataloader", None)
            if not train or not test:
                raise UserInputError("the detection config needs train_dataloader (calibration images are drawn "
                                     "from the training annotations) and test_dataloader")
            ds_cfg = copy.deepcopy(unwrap_dataset_cfg(train["dataset"]))
            ds_cfg["pipeline"] = copy.deepcopy(unwrap_dataset_cfg(test["dataset"])["pipeline"])
            with DefaultScope.overwrite_default_scope(self.cfg.get("default_scope", "mmdet")):
                with _as_user_error(f"cannot load the calibration annotations ({ds_cfg.get('ann_file', '?')})"), \
                        quiet_stdout():
                    self._calib_set = DATASETS.build(ds_cfg)
        return self._calib_set

    @staticmethod
    def set_data_root(cfg, root):
        return move_data_root(cfg, root)

    def calib_available(self, model):
        return len(self.calib_dataset())

    def calib_data(self, model, num, seed):
        from mmengine.dataset import pseudo_collate

        from ..quant import CalibData
        dataset = self.calib_dataset()
        check_calib_num(num, len(dataset), "the training annotations' usable images")
        indices = np.random.RandomState(seed).choice(len(dataset), int(num), replace=False)
        with _as_user_error("cannot load a calibration image"):
            batches = [pseudo_collate([dataset[int(i)]]) for i in indices]
        return CalibData(batches, run_test_step)

    # -- evaluation -----------------------------------------------------------------------------------------------
    def evaluate(self, model, progress=True, desc="eval"):
        if self.runner is None:
            raise RuntimeError("build_model() must run before evaluate()")
        broadcast_from_rank0(model)
        self.runner.model = model  # the test loop runs runner.model.test_step; any model of this config fits
        with quiet_runner(self.runner.logger, progress and verbose()):  # also pycocotools' prints
            collector = attach_collector(self.runner.test_loop.evaluator)  # the first access builds the loop
            self.runner.logger.info(f"[{desc}] {len(self.runner.test_dataloader.dataset)} images")
            metrics = self.runner.test()
        self.last_outputs = self._outputs(collector)
        out = {}
        for key, value in metrics.items():
            name = key.split("/", 1)[-1]
            if isinstance(value, (int, float)):
                out[name] = _percent(name, value)
        if not any(k.endswith("_mAP") for k in out):
            out.update(self._zero_metrics())
        out["num_images"] = len(self.runner.test_dataloader.dataset)
        return out

    def _outputs(self, collector):
        """Per-image predictions of the evaluation just run, with what scoring them against the real annotations
        needs from the CocoMetric (its COCO object, label -> category ids, image ids, IoU thresholds). None on ranks
        other than 0 (mmengine gathers the results there)."""
        from mmdet.evaluation import CocoMetric
        if collector.collected is None:
            return None
        preds = {r.pop("img_id"): r for r in collector.collected}
        out = {"preds": preds, "coco": None}
        coco = next((m for m in self.runner.test_loop.evaluator.metrics if isinstance(m, CocoMetric)), None)
        if coco is not None and getattr(coco, "_coco_api", None) is not None and coco.cat_ids is not None \
                and coco.img_ids is not None:
            out.update(coco=coco._coco_api, cat_ids=list(coco.cat_ids), img_ids=list(coco.img_ids),
                       iou_thrs=np.asarray(coco.iou_thrs, dtype=np.float64),
                       iou_types=[k for k in ("bbox", "segm") if k in coco.metrics])
        return out

    def agreement(self, fp_outputs, q_outputs):
        """Box and mask mAP / AP50 of the quantized predictions against the float predictions with score >=
        `agreement_score_thr` (`<kind>_mAP_agreement`, `<kind>_mAP_50_agreement`, percent), and the quantized-minus-
        float change of mAP against the real annotations with a paired-bootstrap 95 % interval over the images
        (`<kind>_mAP_change`). Float-side work (its matches and resampled mAPs) is cached in `fp_outputs`."""
        from .agreement import MatchTable, agreement_map, map_change
        fp_preds, q_preds = fp_outputs["preds"], q_outputs["preds"]
        with_masks = all("masks" in p for p in list(fp_preds.values()) + list(q_preds.values()))
        kinds = fp_outputs.get("iou_types") or ["bbox", "segm"]
        kinds = [k for k in kinds if k == "bbox" or with_masks]
        out = {"float_score_thr": self.agreement_score_thr}
        with _as_user_error("cannot score the agreement with the float model"):
            for kind in kinds:
                m, m50 = agreement_map(fp_preds, q_preds, kind, self.agreement_score_thr)
                out[f"{kind}_mAP_agreement"], out[f"{kind}_mAP_50_agreement"] = m, m50
            if fp_outputs.get("coco") is None:  # no CocoMetric with annotations: agreement only
                return out
            coco, cat_ids, img_ids, iou_thrs = (fp_outputs[k] for k in ("coco", "cat_ids", "img_ids", "iou_thrs"))
            cache = fp_outputs.setdefault("_cache", {})  # (resamples, kind) -> float matches, resampled float mAPs
            for kind in kinds:
                key = (self.agreement_resamples, kind)
                fp_table, fp_resampled = cache.get(key) or (MatchTable(coco, fp_preds, kind, cat_ids, img_ids,
                                                                       iou_thrs), None)
                q_table = MatchTable(coco, q_preds, kind, cat_ids, img_ids, iou_thrs)
                out[f"{kind}_mAP_change"], fp_resampled = map_change(fp_table, q_table, self.agreement_resamples,
                                                                     seed=0, fp_resampled=fp_resampled)
                cache[key] = (fp_table, fp_resampled)
        return out

    def _zero_metrics(self):
        """CocoMetric reports nothing when the detector found no object in the whole test set: that is AP 0."""
        evaluator = self.cfg.get("test_evaluator", {})
        if not isinstance(evaluator, dict) or evaluator.get("type") != "CocoMetric":
            raise UserInputError("the test evaluator reported no mAP; the detection task needs CocoMetric")
        kinds = evaluator.get("metric", "bbox")
        kinds = [kinds] if isinstance(kinds, str) else list(kinds)
        self.runner.logger.warning("no detections on the whole test set: reporting AP 0")
        return {f"{k}_mAP{s}": 0.0 for k in kinds for s in ("", "_50", "_75", "_s", "_m", "_l")}

    def model_meta(self):
        import mmdet
        model_cfg = self.cfg.get("model", {})
        return {"task": "detection", "config": self.cfg.filename, "detector": model_cfg.get("type"),
                "backbone": model_cfg.get("backbone", {}).get("type"), "mmdet": mmdet.__version__,
                "keep_heads_float": self.keep_heads_float}


def _agreement_options(cfg):
    """(score threshold, resamples) from the config's `agreement` dict; a bad value is a UserInputError."""
    section = cfg.get("agreement", None) or {}
    if not hasattr(section, "get"):
        raise UserInputError(f"detection config: `agreement` must be a dict, got {section!r}")
    unknown = sorted(set(section) - {"score_thr", "resamples"})
    if unknown:
        raise UserInputError(f"detection config: unknown `agreement` key(s) {unknown}; known: resamples, score_thr")
    thr, resamples = section.get("score_thr", AGREEMENT_SCORE_THR), section.get("resamples", AGREEMENT_RESAMPLES)
    if isinstance(thr, bool) or not isinstance(thr, (int, float)) or not 0.0 <= thr <= 1.0:
        raise UserInputError(f"detection config: `agreement.score_thr` must be a number in [0, 1], got {thr!r}")
    if isinstance(resamples, bool) or not isinstance(resamples, int) or resamples < 1:
        raise UserInputError(f"detection config: `agreement.resamples` must be an integer >= 1, got {resamples!r}")
    return float(thr), resamples
