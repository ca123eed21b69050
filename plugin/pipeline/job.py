"""One validated PTQ job: what a run of tools/ptq_test.py will do, resolved and checked once, from the command line
and the config, before any model is built or evaluated (issue 24, "one validated job").

`resolve_job(config, checkpoint, **options)` (options named like the tool's flags) loads the config with
--cfg-options and --data-root applied, looks up its task, and builds each (method, bit widths) recipe once: the
config's and the task's per-module overrides first, --recon-setting / --recon-iters applied to the reconstruction
passes only (other passes, such as PTQ4ViT's `hessian_search`, have no iterations), every reconstruction pass's
iterations and batch size filled in, then the recipe frozen. Each method's calibration size is fixed with its source.
The returned `Job` is frozen; `Job.to_dict()` is what report.json records under "job".

Bit widths: `--bits B [B ...]` runs WbAb for each B; `--w-bits` / `--a-bits` replace one side of `--bits` (default 4).
Our choice for `--w-bits` alone (no --a-bits, no --bits): weight-only quantization, activations in float, reported
as A16 (`WEIGHT_ONLY_A_BITS`) as weight-only results usually are.
"""
import os
from dataclasses import dataclass, field
from typing import Optional, Tuple

from ..config import apply_cfg_options, load_config
from ..errors import UserInputError
from ..quant import get_recipe
from ..quant.recon import ReconConfig
from ..tasks.base import get_task
from .outdir import check_out_dir

WEIGHT_ONLY_A_BITS = 16  # the a_bits a weight-only job reports (activations stay float)
CALIB_SOURCES = ("--calib-num", "config calib.num", "method default", "task default")
INT8_BACKENDS = ("int_mm", "triton", "triton_fused")


@dataclass(frozen=True)
class ReconPlan:
    """One reconstruction pass of a method as it will run: `batch_size` is the pass's, `batch_used` that clipped to
    the calibration set (the sampler never draws more samples than it holds)."""
    kind: str
    setting: str
    iters: int
    batch_size: int
    batch_used: int


@dataclass(frozen=True)
class MethodPlan:
    """One (method, bit widths) of a job: its frozen recipe and calibration size."""
    method: str
    w_bits: int
    a_bits: int
    recipe: object = field(repr=False)
    calib_num: int
    calib_source: str
    recon: Tuple[ReconPlan, ...]

    @property
    def name(self):
        return f"{self.method}_w{self.w_bits}a{self.a_bits}"

    @property
    def weight_only(self):
        return self.a_bits == WEIGHT_ONLY_A_BITS

    def to_dict(self):
        return {"method": self.method, "w_bits": self.w_bits, "a_bits": self.a_bits, "weight_only": self.weight_only,
                "calib_num": self.calib_num, "calib_source": self.calib_source,
                "recon": [dict(vars(r)) for r in self.recon]}


@dataclass(frozen=True)
class Job:
    config: str
    checkpoint: str
    task: str
    cfg: object = field(repr=False, compare=False)  # the loaded config, overrides applied (read by the task)
    plans: Tuple[MethodPlan, ...] = ()
    seed: int = 0
    out_dir: str = ""
    overwrite: bool = False
    device: str = "cpu"
    evaluate_fp: bool = True
    checkpoint_dir: Optional[str] = None  # None: OUT/ckpt
    resume: bool = False
    save_model: bool = False
    freeze: bool = False
    int8_backend: str = "int_mm"
    export_onnx: bool = False
    onnx_nonuniform: str = "emulate"
    unsafe_load: bool = False
    work_dir: Optional[str] = None
    launcher: str = "none"
    quiet: bool = False
    dry_run: bool = False
    command: Optional[str] = None
    recon_setting: Optional[str] = None
    recon_iters: Optional[int] = None

    def ckpt_dir(self, plan):
        """Where `plan`'s reconstruction passes write their per-unit checkpoints (None: it has none)."""
        if not plan.recon:  # only reconstruction runs long enough to need checkpoints
            return None
        return os.path.join(self.checkpoint_dir or os.path.join(self.out_dir, "ckpt"), plan.name)

    def to_dict(self):
        return {"config": self.config, "checkpoint": self.checkpoint, "task": self.task, "seed": self.seed,
                "out": self.out_dir, "device": self.device, "evaluate_fp": self.evaluate_fp,
                "recon_setting": self.recon_setting, "recon_iters": self.recon_iters,
                "plans": [p.to_dict() for p in self.plans]}

    def describe(self):
        """The resolved job as text lines (--dry-run prints them)."""
        lines = [f"job: task {self.task}, config {self.config}, checkpoint {self.checkpoint}, device {self.device}, "
                 f"seed {self.seed}, out {self.out_dir}" + (" (--overwrite)" if self.overwrite else ""),
                 f"full-precision evaluation: {'yes' if self.evaluate_fp else 'no'}"]
        for p in self.plans:
            recon = "".join(f"; {r.kind} {r.setting}: {r.iters} iterations, batch {r.batch_used}"
                            + (f" (of {r.batch_size})" if r.batch_used != r.batch_size else "") for r in p.recon)
            passes = ", ".join(x.kind for x in p.recipe.passes) or "none"
            lines.append(f"{p.method} W{p.w_bits}A{p.a_bits}{' (weight-only, activations float)' * p.weight_only}: "
                         f"{p.calib_num} calibration samples ({p.calib_source}); passes: {passes}{recon}")
        return lines


def bit_pairs(bits=None, w_bits=None, a_bits=None):
    """[(w_bits, a_bits)] the flags ask for (see the module docstring; a_bits WEIGHT_ONLY_A_BITS: weight-only)."""
    if bits and len(bits) > 1 and (w_bits or a_bits):
        raise UserInputError("--w-bits/--a-bits cannot be combined with several --bits values")
    if w_bits and not a_bits and not bits:
        return [(w_bits, WEIGHT_ONLY_A_BITS)]
    base = (bits or [4])
    if w_bits or a_bits:
        return [(w_bits or base[0], a_bits or base[0])]
    return [(b, b) for b in base]


def calib_size(cli_num, cfg, recipe, task_cls):
    """(number of calibration samples, its source): --calib-num, else the config's `calib.num`, else the method's
    own (`recipe.calib_num`, its paper's), else the task's default."""
    if cli_num is not None:
        return cli_num, "--calib-num"
    section = cfg.get("calib", None) if hasattr(cfg, "get") else None
    num = section.get("num", None) if hasattr(section, "get") else None
    if num is not None:
        if isinstance(num, bool) or not isinstance(num, int) or num < 1:
            raise UserInputError(f"config: `calib.num` must be a positive integer, got {num!r}")
        return num, "config calib.num"
    if recipe.calib_num is not None:
        return recipe.calib_num, "method default"
    return task_cls.default_calib_num, "task default"


def config_overrides(cfg, task_cls):
    """The config's `quant = dict(overrides=[(pattern, rule), ...])`, then the task's (plugin.quant.overrides)."""
    from ..quant.overrides import normalize_overrides
    quant = cfg.get("quant", None) or {}
    if not hasattr(quant, "get"):
        raise UserInputError("config: `quant` must be a dict, e.g. quant = dict(overrides=[('head', None)])")
    unknown = sorted(set(quant) - {"overrides"})
    if unknown:
        raise UserInputError(f"config: unknown key(s) in `quant`: {', '.join(unknown)}; known: overrides")
    return (normalize_overrides(quant.get("overrides", None), where="config quant.overrides")
            + list(task_cls.recipe_overrides(cfg)))


def _weight_only(recipe):
    """Every activation site of `recipe` in float (sites, overrides), no activation reparameterisation."""
    sites = {k: (v if k == "weight" or k.endswith(".weight") else None) for k, v in recipe.sites.items()}
    sites["act"] = None  # the last key of every activation site (plugin.quant.attach), so no default spec applies
    recipe.sites = sites
    recipe.overrides = [(p, r if r is None else {s: (v if s == "weight" else None) for s, v in r.items()})
                        for p, r in recipe.overrides]
    recipe.reparam, recipe.a_bits = None, WEIGHT_ONLY_A_BITS


def resolve_recipe(method, w_bits, a_bits, overrides=(), recon_setting=None, recon_iters=None):
    """The frozen recipe of one method at (w_bits, a_bits): the overrides put first, --recon-setting/--recon-iters
    applied to its reconstruction passes, whose iterations and batch size are then filled in (ReconConfig.resolved)."""
    weight_only = a_bits == WEIGHT_ONLY_A_BITS
    recipe = get_recipe(method, w_bits, 8 if weight_only else a_bits)
    if overrides:
        recipe.overrides = list(overrides) + list(recipe.overrides)
    if weight_only:
        _weight_only(recipe)
    recipe.__post_init__()
    passes = []
    for p in recipe.passes:
        # every training pass that has the option takes it (reconstruction passes, APHQ-ViT's MLP step); the
        # searches (hessian_search, output_search) have neither
        changes = {k: v for k, v in (("setting", recon_setting), ("iters", recon_iters))
                   if v is not None and hasattr(p, k)}
        if changes:
            p = p.replace(**changes)
        if isinstance(p, ReconConfig):
            p = p.resolved(recipe)
        passes.append(p)
    recipe.passes = passes
    return recipe.freeze()


def _check_device(device, freeze, int8_backend, export_onnx, onnx_nonuniform, task_cls, task_name):
    import torch
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserInputError(f"--device {device} asked for, but no CUDA device is available")
    if int8_backend not in INT8_BACKENDS:
        raise UserInputError(f"unknown --int8-backend {int8_backend!r}; known: {', '.join(INT8_BACKENDS)}")
    if int8_backend != "int_mm":
        flag = f"--int8-backend {int8_backend}"
        if not freeze:
            raise UserInputError(f"{flag} applies to the integer path: add --freeze")
        if not device.startswith("cuda"):
            raise UserInputError(f"{flag} needs --device cuda, not {device}")
        try:
            import plugin.quant.deploy.triton_int8  # noqa: F401
        except ImportError as exc:
            raise UserInputError(f"{flag} needs the triton package ({exc})") from exc
    if onnx_nonuniform != "emulate" and not export_onnx:
        raise UserInputError(f"--onnx-nonuniform {onnx_nonuniform} applies to the ONNX export: add --export-onnx")
    if export_onnx:
        if task_cls.example_input is None:
            raise UserInputError(f"--export-onnx supports the classification task (timm ViT/DeiT/Swin) only, "
                                 f"not {task_name}")
        from ..quant.deploy.onnx_export import check_onnx_available
        check_onnx_available()
    return device


def resolve_job(config, checkpoint, *, method=("repq",), bits=None, w_bits=None, a_bits=None, calib_num=None,
                recon_setting=None, recon_iters=None, seed=0, out=None, overwrite=False, fp_only=False, no_fp=False,
                cfg_options=None, data_root=None, device=None, checkpoint_dir=None, resume=False, save_model=False,
                freeze=False, int8_backend="int_mm", export_onnx=False, onnx_nonuniform="emulate", unsafe_load=False,
                work_dir=None, launcher="none", quiet=False, dry_run=False, command=None) -> Job:
    """The checked, frozen job of one run (module docstring); bad input raises UserInputError or ConfigError."""
    if fp_only and no_fp:
        raise UserInputError("--fp-only and --no-fp exclude each other")
    pairs = [] if fp_only else bit_pairs(bits, w_bits, a_bits)
    cfg = apply_cfg_options(load_config(config), cfg_options)
    task_name = cfg.get("task", None) if hasattr(cfg, "get") else None
    if task_name is None:
        raise UserInputError(f"config {config} has no `task` entry (classification, detection, pointcloud_cls, "
                             "pointcloud_partseg)")
    task_cls = get_task(task_name)
    if data_root:
        task_cls.set_data_root(cfg, data_root)
    overrides = config_overrides(cfg, task_cls)
    methods = list(dict.fromkeys(method))  # a method named twice runs once
    plans = []
    for w, a in pairs:
        for m in methods:
            recipe = resolve_recipe(m, w, a, overrides, recon_setting, recon_iters)
            num, source = calib_size(calib_num, cfg, recipe, task_cls)
            recon = tuple(ReconPlan(p.kind, p.setting, p.iters, p.batch_size, min(p.batch_size, num))
                          for p in recipe.passes if isinstance(p, ReconConfig))
            plans.append(MethodPlan(m, w, a, recipe, num, source, recon))
    out_dir = os.path.abspath(out or os.path.join("work_dirs", "ptq", os.path.splitext(os.path.basename(config))[0]))
    check_out_dir(out_dir, overwrite=overwrite, resume=resume, protect=(config, checkpoint))
    device = _check_device(device, freeze, int8_backend, export_onnx, onnx_nonuniform, task_cls, task_name)
    return Job(config=config, checkpoint=checkpoint, task=task_name, cfg=cfg, plans=tuple(plans), seed=seed,
               out_dir=out_dir, overwrite=overwrite, device=device, evaluate_fp=not no_fp,
               checkpoint_dir=checkpoint_dir, resume=resume, save_model=save_model, freeze=freeze,
               int8_backend=int8_backend, export_onnx=export_onnx, onnx_nonuniform=onnx_nonuniform,
               unsafe_load=unsafe_load, work_dir=work_dir, launcher=launcher, quiet=quiet, dry_run=dry_run,
               command=command, recon_setting=recon_setting, recon_iters=recon_iters)

__all__ = ["CALIB_SOURCES", "Job", "MethodPlan", "ReconPlan", "WEIGHT_ONLY_A_BITS", "bit_pairs", "calib_size",
           "config_overrides", "resolve_job", "resolve_recipe"]
