#!/usr/bin/env python
"""Run an official PTQ code base and ours side by side: same float model, same calibration images, same test split.

    python tools/compare_official.py CONFIG CHECKPOINT --official repq=PATH/TO/RepQ-ViT \\
        --bits 3 4 6 --seeds 0 1 2 [--calib-num 32] [--device cuda] [--out DIR]

PATH is a local checkout of the official repository (zkkli/RepQ-ViT), fetched by whoever runs this: it is read at
run time and never part of this project. For every (method, bits, seed) both sides quantize a fresh copy of the float
model from CONFIG/CHECKPOINT with the same calibration images (`--seed` picks them, as in tools/ptq_test.py) and are
scored by the same evaluation code on the same split. Writes DIR/fidelity.json and DIR/fidelity.md: per method and
bit width the official and our top-1 (mean ± std over seeds), their difference and both calibration times.

The official RepQ-ViT code was written for timm 0.4–0.9. The glue for current timm lives here only: the attention
and MLP modules of the float model get classes whose forward is the official attention forward (a class method, so a
`copy.deepcopy` of the model still runs its own modules), and the official script's `main()` runs unmodified with its
data and model builders pointed at ours.
"""
import argparse
import contextlib
import copy
import importlib
import json
import os
import shlex
import statistics
import sys
import time
import types

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Our recipe that each official code base is compared with.
OURS = {"repq": "repq"}
# Module names the official scripts import at top level; dropped after each run so two code bases never mix.
_OFFICIAL_MODULES = ("utils", "quant", "test_quant")


@contextlib.contextmanager
def official_import_path(repo_dir):
    """Make the official `classification/` folder importable for the duration of one run."""
    root = os.path.join(repo_dir, "classification")
    if not os.path.isfile(os.path.join(root, "test_quant.py")):
        from plugin.errors import UserInputError
        raise UserInputError(f"{repo_dir} does not look like a RepQ-ViT checkout (no classification/test_quant.py)")
    sys.path.insert(0, root)
    try:
        yield
    finally:
        sys.path.remove(root)
        for name in list(sys.modules):
            if name.split(".")[0] in _OFFICIAL_MODULES:
                del sys.modules[name]


def _drop_identity(module, attr, where):
    """Remove an unused (Identity) submodule; a real one means the official forward would skip a layer."""
    import torch.nn as nn
    from plugin.errors import UserInputError
    sub = getattr(module, attr, None)
    if sub is not None and not isinstance(sub, nn.Identity):
        raise UserInputError(f"the official RepQ-ViT code has no {attr} in {where}; this model cannot run there")
    module._modules.pop(attr, None)


def glue_for_official_repq(model, official_build_model):
    """Make a current-timm ViT/Swin look like the timm of the official code (in place).

    - Attention / WindowAttention: class swapped for one whose forward is the official function (bound method) and
      which holds the official `matmul1`/`matmul2` modules; timm's unused q_norm/k_norm/norm Identity modules are
      dropped, because the official reparameterisation loop takes every module named '*norm*' for a LayerNorm.
    - Mlp: the Identity `norm` between act and fc2 is dropped for the same reason.
    - Swin PatchMerging: the official channel-wise quantizer expects (B, N, C) inputs; timm now passes (B, H, W, C).
    """
    import torch.nn as nn
    from timm.layers import Mlp
    from timm.layers import Attention
    from timm.models.swin_transformer import PatchMerging, WindowAttention

    ob = official_build_model

    class OfficialAttention(Attention):
        def forward(self, x, attn_mask=None, **kwargs):
            if attn_mask is not None:
                raise ValueError("attention masks are not supported by the official RepQ-ViT forward")
            return ob.attention_forward(self, x)

    class OfficialWindowAttention(WindowAttention):
        def forward(self, x, mask=None):
            return ob.window_attention_forward(self, x, mask)

    class OfficialMlp(Mlp):
        def forward(self, x):
            x = self.drop1(self.act(self.fc1(x)))
            return self.drop2(self.fc2(x))

    class OfficialPatchMerging(PatchMerging):
        def forward(self, x):
            B, H, W, C = x.shape
            x = x.reshape(B, H // 2, 2, W // 2, 2, C).permute(0, 1, 3, 4, 2, 5).flatten(3)
            x = self.reduction(self.norm(x.reshape(B, (H // 2) * (W // 2), 4 * C)))
            return x.reshape(B, H // 2, W // 2, -1)

    for name, m in list(model.named_modules()):
        if isinstance(m, Attention):
            for attr in ("q_norm", "k_norm", "norm"):
                _drop_identity(m, attr, name)
            m.__class__ = OfficialAttention
        elif isinstance(m, WindowAttention):
            m.__class__ = OfficialWindowAttention
        elif isinstance(m, Mlp) and type(m) is Mlp:
            _drop_identity(m, "norm", name)
            m.__class__ = OfficialMlp
        elif isinstance(m, PatchMerging):
            m.__class__ = OfficialPatchMerging
        else:
            continue
        if isinstance(m, (Attention, WindowAttention)):
            m.matmul1, m.matmul2 = ob.MatMul(), ob.MatMul()
    # The official reparameterisation walks model.blocks (ViT) or model.layers (Swin) for modules named '*norm*'.
    walked = getattr(model, "layers", None) if is_swin(model) else getattr(model, "blocks", None)
    for name, m in walked.named_modules():
        if "norm" in name and not isinstance(m, nn.LayerNorm):
            from plugin.errors import UserInputError
            raise UserInputError(f"{name} ({type(m).__name__}) would be taken for a LayerNorm by the official code")
    return model


def is_swin(model):
    from timm.models.swin_transformer import SwinTransformer
    return isinstance(model, SwinTransformer)


def run_official_repq(repo_dir, fp_model, calib_images, w_bits, a_bits, seed, device):
    """RepQ-ViT's own test_quant.main() on our float model and calibration images. Returns (model, seconds)."""
    import torch
    with official_import_path(repo_dir):
        test_quant = importlib.import_module("test_quant")
        official_bm = importlib.import_module("utils.build_model")
        model = glue_for_official_repq(copy.deepcopy(fp_model), official_bm)
        captured = {}

        def build_dataset(args):
            return [(calib_images, torch.zeros(len(calib_images), dtype=torch.long))], []

        def validate(args, val_loader, q_model, criterion, device):
            if str(device).startswith("cuda"):
                torch.cuda.synchronize()
            captured["model"], captured["t1"] = q_model, time.time()
            return 0.0, 0.0, 0.0

        test_quant.build_dataset = build_dataset
        test_quant.build_model = lambda name: model
        test_quant.validate = validate
        test_quant.args = types.SimpleNamespace(
            model="swin_tiny" if is_swin(model) else "vit_small", dataset="", calib_batchsize=len(calib_images),
            val_batchsize=1, num_workers=0, device=device, print_freq=100, seed=seed, w_bits=w_bits, a_bits=a_bits)
        t0 = time.time()
        with contextlib.redirect_stdout(sys.stderr):
            test_quant.main()
    return captured["model"], captured["t1"] - t0


OFFICIAL = {"repq": run_official_repq}


def _mean_std(values):
    return (statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0)


def markdown(rows, fp, model_name):
    lines = [f"# Official code vs ours: {model_name} (full precision top-1 {fp:.2f})", "",
             "| method | W/A | official | ours | ours − official | seeds | calib s (official / ours) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['w_bits']}/{r['a_bits']} | {r['official']:.2f} ± {r['official_std']:.2f} | "
                     f"{r['ours']:.2f} ± {r['ours_std']:.2f} | {r['ours'] - r['official']:+.2f} | "
                     f"{', '.join(map(str, r['seeds']))} | {r['calib_s_official']:.1f} / {r['calib_s_ours']:.1f} |")
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config")
    p.add_argument("checkpoint")
    p.add_argument("--official", nargs="+", required=True, metavar="METHOD=PATH",
                   help=f"official checkouts to run, METHOD one of {sorted(OFFICIAL)}")
    p.add_argument("--ours", nargs="*", default=None, metavar="METHOD=RECIPE",
                   help="our recipe to compare each official method with (default: the same name)")
    p.add_argument("--bits", type=int, nargs="+", default=[4])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--calib-num", type=int, default=32)
    p.add_argument("--device", default=None)
    p.add_argument("--out", default="work_dirs/fidelity")
    p.add_argument("--cfg-options", nargs="+", default=None, metavar="KEY=VALUE")
    return p.parse_args(argv)


def run(args):
    import torch

    import plugin  # noqa: F401
    from plugin.config import load_config
    from plugin.errors import UserInputError
    from plugin.quant import get_recipe, quantize
    from plugin.tasks.base import get_task
    from ptq_test import apply_cfg_options

    officials = {}
    for item in args.official:
        method, _, path = item.partition("=")
        if method not in OFFICIAL or not path:
            raise UserInputError(f"--official takes METHOD=PATH with METHOD in {sorted(OFFICIAL)}, got {item!r}")
        if not os.path.isdir(path):
            raise UserInputError(f"official checkout {path} is not a folder")
        officials[method] = path
    ours = dict(OURS)
    for item in args.ours or []:
        method, _, recipe = item.partition("=")
        ours[method] = recipe
    for method in officials:
        get_recipe(ours[method], 4, 4)
    for b in args.bits:
        if not 2 <= b <= 8:
            raise UserInputError(f"bit widths must be from 2 to 8, got {b}")
    cfg = apply_cfg_options(load_config(args.config), args.cfg_options)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    task = get_task(cfg.get("task"))(cfg, args.checkpoint, device=device)
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    os.makedirs(args.out, exist_ok=True)  # fail on an unwritable folder before any work

    fp_model = task.build_model()
    fp = task.evaluate(fp_model, False)[task.primary_metric]
    log(f"full precision {task.primary_metric}: {fp:.2f}")
    rows = []
    for method, repo in officials.items():
        for bits in args.bits:
            runs = {"official": [], "ours": [], "t_official": [], "t_ours": []}
            for seed in args.seeds:
                torch.manual_seed(seed)
                calib = task.calib_data(fp_model, args.calib_num, seed)
                images = torch.cat(list(calib.batches))
                q_model, seconds = OFFICIAL[method](repo, fp_model, images, bits, bits, seed, device)
                runs["official"].append(task.evaluate(q_model, False)[task.primary_metric])
                runs["t_official"].append(seconds)
                del q_model
                model = copy.deepcopy(fp_model)
                torch.manual_seed(seed)
                t0 = time.time()
                quantize(model, get_recipe(ours[method], bits, bits), calib, log=lambda s: None, seed=seed)
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                runs["t_ours"].append(time.time() - t0)
                runs["ours"].append(task.evaluate(model, False)[task.primary_metric])
                del model
                log(f"{method} W{bits}A{bits} seed {seed}: official {runs['official'][-1]:.2f}, "
                    f"ours ({ours[method]}) {runs['ours'][-1]:.2f}")
            off, off_std = _mean_std(runs["official"])
            our, our_std = _mean_std(runs["ours"])
            rows.append({"model": os.path.splitext(os.path.basename(args.config))[0], "method": method,
                         "ours_recipe": ours[method], "w_bits": bits, "a_bits": bits, "fp": fp,
                         "official": off, "official_std": off_std, "official_runs": runs["official"],
                         "ours": our, "ours_std": our_std, "ours_runs": runs["ours"], "seeds": list(args.seeds),
                         "calib_num": args.calib_num,
                         "calib_s_official": statistics.mean(runs["t_official"]),
                         "calib_s_ours": statistics.mean(runs["t_ours"]), "device": device,
                         "command": args.command})
            write_tables(args.out, rows, fp)  # after every row: a run cut short keeps what it finished
    print(markdown(rows, fp, rows[0]["model"]))
    return rows


def write_tables(out, rows, fp):
    from plugin.quant.io import write_json, write_text
    write_json(os.path.join(out, "fidelity.json"), rows)
    write_text(os.path.join(out, "fidelity.md"), markdown(rows, fp, rows[0]["model"]))


def main(argv=None):
    args = parse_args(argv)
    args.command = "python " + shlex.join(["tools/compare_official.py"] + list(sys.argv[1:] if argv is None else argv))
    from plugin.errors import CalibrationError, UserInputError
    try:
        run(args)
    except (UserInputError, CalibrationError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
