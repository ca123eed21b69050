"""Two forks of AdaLog (GoatWu/AdaLog) with one layout, GoatWu/APHQ-ViT and ShiheWang/FIMA-Q (test_quant.py,
configs/<b>bit/best.py, utils/{calibrator,block_recon,wrap_net}.py, quant_layers/, quantizers/; AdaLog itself keeps
its configs as configs/<b>bit.py and is not a peer): their own `test_quant.main()` runs unmodified on our float model,
our images and our evaluation.

What the harness gives their main() (their command line, parsed by their own parser):
    --model deit_small --config configs/<b>bit/best.py --calibrate --optimize --seed SEED --w_bit B --a_bit B
    --calib-size CALIB --calib-batch-size BATCH  (+ what the peer adds: APHQ --reconstruct-mlp, FIMA-Q
    --optim-metric fisher_dplr --optim-size N --optim-batch-size BATCH)
- the model: `timm.create_model` in test_quant answers a copy of our float model (any timm VisionTransformer shape);
- the data: their loader generator is replaced by one over our images. Their calib_loader(num, seed) takes the first
  `num` of one seeded permutation of the training set, so their 128 calibration images are the first 128 of the 1024
  optimisation images; ours does the same with our seeded draw (all drawn images = optimisation set, the first
  CALIB = calibration set);
- their validate() records the model and the time instead of scoring it (we score it), their save_model() is
  skipped (checkpoint writes are not calibration);
- the counts the GPU budget forces down are options (`--official-args`): `iters` (iterations per block of every
  reconstruction their main() runs; their reconstruct_single_block defaults to 20000 and main() never passes
  another value), `calib` (128), `batch` (32: calibration, optimisation and reconstruction batches); the number of
  images drawn (`--calib-num`, their optim_size 1024) is the whole set.

Shims for timm >= 1.0 (their code targets timm 0.9.2; no file of theirs is edited):
- timm's Block calls `attn(x, attn_mask=None, is_causal=False)`; their attention forward takes `(x)`: it is wrapped
  to accept (and refuse, if set) those arguments;
- their Swin block forward is timm 0.9's (integer window sizes, one drop_path, no padding) and breaks on timm >= 1.0:
  Swin models are refused before any work;
- a model their ViT forwards would compute differently (gated or scale-normed attention, another MLP or block class)
  is refused.
Process state their test_quant.py changes at import (a ./checkpoint(s)/quant_result/<minute> folder it may wait a
minute for, root logging handlers, a flushing builtins.print) is confined: it runs in a scratch working folder that is
deleted afterwards, and the print and logging handlers are put back.

On a CPU (smoke tests only): their batching quantizers size candidate batches from
`torch.cuda.get_device_properties(0)` and raise without CUDA; while they run, a device of CPU_MEMORY bytes is
reported to them (their modules' view of torch only), and their `.cuda()` calls leave tensors on the CPU
(harness.cuda_calls_stay_on). On a GPU nothing is patched.
"""
import contextlib
import copy
import functools
import importlib
import os
import sys
import time
import types

from .harness import OfficialCode, cuda_calls_stay_on, is_swin, labelled, official_import_path

OFFICIAL_ITERS, OFFICIAL_CALIB, OFFICIAL_OPTIM, OFFICIAL_BATCH = 20000, 128, 1024, 32  # their configs and defaults
CPU_MEMORY = 4 * 2 ** 30  # reported as the "GPU" memory on a CPU: bounds how many scale candidates go in one batch
MODULES = ("utils", "quant_layers", "quantizers", "test_quant", "best")  # "best": their config module's name


def official_code(title, run, markers, ours, preflight):
    """The harness entry of one code of the family (APHQ-ViT, FIMA-Q): what every one shares (modules, image counts,
    --official-args, settings, how our side follows the counts) and what is its own."""
    return OfficialCode(title, run, ("",), markers, MODULES, calib_num=OFFICIAL_OPTIM, ours=ours,
                        options={"iters": int, "calib": int, "batch": int}, preflight=preflight, settings=settings,
                        tune_ours=tune_ours)


def config_path(repo_dir, bits):
    """Their config of one bit width (weights and activations alike, as every official config is)."""
    return os.path.join(repo_dir, "configs", f"{bits}bit", "best.py")


def settings(options, calib_num, w_bits, a_bits):
    """The counts the official side runs with (recorded in fidelity.json)."""
    return {"iters_per_block": options.get("iters", OFFICIAL_ITERS),
            "calib_images": options.get("calib", OFFICIAL_CALIB), "optim_images": calib_num,
            "batch": options.get("batch", OFFICIAL_BATCH), "config": f"configs/{w_bits}bit/best.py"}


def tune_ours(recipe, options, calib_num):
    """Our recipes of this family calibrate on the first `Recipe.stat_fraction` of the images, as theirs on the first
    `calib`: the same share here (in whole calibration batches on our side)."""
    if hasattr(recipe, "stat_fraction"):
        recipe.stat_fraction = options.get("calib", OFFICIAL_CALIB) / calib_num


def check_run(title, repo_dir, model, bits, options, calib_num, min_iters=1):
    """Refuse, with one clear error and before any work, what their code cannot run here."""
    from plugin.errors import UserInputError
    check_model(model, title)
    missing = [b for b in bits if not os.path.isfile(config_path(repo_dir, b))]
    if missing:
        have = sorted(d for d in os.listdir(os.path.join(repo_dir, "configs")) if d.endswith("bit"))
        raise UserInputError(f"the official {title} code has no config for {', '.join(f'{b}bit' for b in missing)} "
                             f"(configs/<b>bit/best.py: it has {', '.join(have)})")
    calib = options.get("calib", OFFICIAL_CALIB)
    if calib > calib_num:
        raise UserInputError(f"the official {title} calibration set (calib={calib}) is the first images of the "
                             f"{calib_num} drawn (--calib-num): pass --official-args calib=N with N <= {calib_num}")
    if options.get("iters", OFFICIAL_ITERS) < min_iters:
        raise UserInputError(f"the official {title} code needs at least {min_iters} iterations per block, "
                             f"got iters={options['iters']}")


def check_model(model, title):
    """Their code runs timm VisionTransformers whose blocks its own forwards compute exactly; Swin cannot run."""
    import torch.nn as nn
    from timm.layers import Attention, Mlp, PatchEmbed
    from timm.models.vision_transformer import Block, VisionTransformer
    from plugin.errors import UserInputError
    if is_swin(model):
        raise UserInputError(f"the official {title} code's Swin block forward (utils/block_recon.py "
                             f"swin_block_forward) is timm 0.9's and breaks on timm >= 1.0: Swin models cannot run "
                             f"there")
    if not isinstance(model, VisionTransformer) or not isinstance(model.patch_embed, PatchEmbed) \
            or not isinstance(model.head, nn.Linear):
        raise UserInputError(f"the official {title} code runs timm VisionTransformers with a Linear head; "
                             f"got {type(model).__name__}")
    for i, blk in enumerate(model.blocks):
        attn, mlp = getattr(blk, "attn", None), getattr(blk, "mlp", None)
        plain_attn = type(attn) is Attention and isinstance(getattr(attn, "norm", nn.Identity()), nn.Identity) \
            and getattr(attn, "gate", None) is None and attn.num_heads * attn.head_dim == attn.qkv.in_features
        if type(blk) is not Block or not plain_attn or type(mlp) is not Mlp:
            raise UserInputError(f"blocks.{i} is not a plain timm Block (Attention without gate or scale norm, Mlp): "
                                 f"the official {title} forwards would compute it differently")


class _Overlay:
    """A module seen through a few replaced attributes (the rest are the module's own)."""
    def __init__(self, module, **attrs):
        self.__dict__.update(attrs, _module=module)

    def __getattr__(self, name):
        return getattr(self._module, name)


def cpu_reports_a_gpu(device, module_names=("quant_layers.linear", "quant_layers.matmul", "quant_layers.conv")):
    """On a CPU, answer their quantizers' `torch.cuda.is_available()` / `get_device_properties(0)` with a device of
    CPU_MEMORY bytes: only the `torch` those modules see is changed (torch itself must keep saying no CUDA: its
    optimizers would look for a CUDA stream)."""
    if str(device).startswith("cuda"):
        return
    import torch
    cuda = _Overlay(torch.cuda, is_available=lambda: True,
                    get_device_properties=lambda *a, **k: types.SimpleNamespace(total_memory=CPU_MEMORY))
    for name in module_names:
        importlib.import_module(name).torch = _Overlay(torch, cuda=cuda)


@contextlib.contextmanager
def scratch_process_state():
    """A scratch working folder (deleted after) and builtins.print / root logging put back after their run."""
    import builtins
    import logging
    import tempfile
    root = logging.getLogger()
    saved_print, saved_handlers, saved_level, saved_cwd = builtins.print, list(root.handlers), root.level, os.getcwd()
    with tempfile.TemporaryDirectory(prefix="vitq_official_") as scratch:
        os.chdir(scratch)
        try:
            yield
        finally:
            os.chdir(saved_cwd)
            builtins.print = saved_print
            for h in [h for h in root.handlers if h not in saved_handlers]:
                root.removeHandler(h)
                h.close()
            root.setLevel(saved_level)


def _accept_attn_mask(wrap_net):
    """timm >= 1.0 Blocks call attn(x, attn_mask=None, is_causal=False); their vit_attn_forward takes (x)."""
    official = wrap_net.vit_attn_forward

    def vit_attn_forward(self, x, attn_mask=None, is_causal=False):
        if attn_mask is not None or is_causal:
            raise ValueError("attention masks are not supported by the official AdaLog-family attention forward")
        return official(self, x)

    wrap_net.vit_attn_forward = vit_attn_forward  # looked up by wrap_modules_in_net when it wraps each Attention


def _with_counts(cls, iters, batch):
    """Their reconstruct_single_block(..., batch_size=32, iters=20000) is called without those arguments."""
    cls.reconstruct_single_block = functools.partialmethod(cls.reconstruct_single_block, iters=iters,
                                                           batch_size=batch)


def run_main(code, repo_dir, fp_model, images, w_bits, a_bits, seed, device, options, extra_argv, reconstructors):
    """Their test_quant.main() on a copy of `fp_model` with `images` (see the module docstring). `extra_argv` are the
    peer's own flags (given `n` images and the batch), `reconstructors` the (module, class) names whose
    reconstruct_single_block gets the iteration count. Returns (quantized model, seconds of main() up to its last
    validate() call)."""
    import torch
    run_settings = settings(options, len(images), w_bits, a_bits)
    iters, calib, batch = run_settings["iters_per_block"], run_settings["calib_images"], run_settings["batch"]
    model = copy.deepcopy(fp_model).requires_grad_(True).eval()  # as timm.create_model leaves it
    check_model(model, code.title)
    repo_dir = os.path.abspath(repo_dir)
    captured = {}
    with official_import_path(code, repo_dir), scratch_process_state(), cuda_calls_stay_on(device):
        cfg_file = config_path(repo_dir, w_bits)
        sys.path.insert(0, os.path.dirname(cfg_file))
        cfg_module = importlib.import_module("best")  # their main() imports it by this name: it gets this one

        class Config(cfg_module.Config):
            def __init__(self):
                super().__init__()
                self.optim_size, self.optim_batch_size = len(images), batch  # APHQ's parser has no flags for these

        cfg_module.Config = Config
        test_quant = importlib.import_module("test_quant")  # its import makes ./checkpoint(s)/: in the scratch folder
        _accept_attn_mask(importlib.import_module("utils.wrap_net"))
        cpu_reports_a_gpu(device)
        for module_name, class_name in reconstructors:
            _with_counts(getattr(importlib.import_module(module_name), class_name), iters, batch)

        class Loaders:
            def __init__(self, root, val_batch_size=1, num_workers=0, kwargs=None):
                pass

            def val_loader(self):
                return []

            def calib_loader(self, num=1024, batch_size=32, seed=3, in_memory=True):
                data = torch.utils.data.TensorDataset(*labelled(images[:num]))
                return torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=False)

        def validate(val_loader, q_model, criterion, print_freq=10, device="cuda:0"):
            if str(device).startswith("cuda"):
                torch.cuda.synchronize()
            captured["model"], captured["t1"] = q_model, time.time()
            return 0.0, 0.0, 0.0

        test_quant.timm = types.SimpleNamespace(create_model=lambda *a, **k: model)
        test_quant.mydatasets = types.SimpleNamespace(ViTImageNetLoaderGenerator=Loaders)
        test_quant.validate = validate
        test_quant.save_model = lambda *a, **k: None
        argv = ["--model", "deit_small", "--config", cfg_file, "--dataset", "", "--device", str(device),
                "--num-workers", "0", "--calibrate", "--optimize", "--seed", str(seed), "--w_bit", str(w_bits),
                "--a_bit", str(a_bits), "--calib-size", str(calib), "--calib-batch-size", str(batch),
                "--print-freq", "100"] + list(extra_argv(len(images), batch))
        args = test_quant.get_args_parser().parse_args(argv)
        t0 = time.time()
        with contextlib.redirect_stdout(sys.stderr):
            test_quant.main(args)
    return captured["model"], captured["t1"] - t0
