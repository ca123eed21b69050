#!/usr/bin/env python
"""Run an official PTQ code base and ours side by side: same float model, same calibration images, same test split.

    python tools/compare_official.py CONFIG CHECKPOINT --official METHOD=PATH [METHOD=PATH ...] \\
        --bits 3 4 6 --seeds 0 1 2 [--calib-num N] [--official-args KEY=VALUE ...] [--device cuda] [--out DIR]

METHOD is one of
    repq     zkkli/RepQ-ViT              (classification/test_quant.py main())           vs our `repq`
    isvit    I&S-ViT (IaS-ViT)            (test_quant.py main(): 3-stage block recon)      vs our `isvit`
    ptq4vit  hahnyuan/PTQ4ViT             (example/test_all.py test_all(): Hessian search) vs our `ptq4vit`
and PATH a local checkout of that repository, fetched by whoever runs this: it is read at run time and never part of
this project. For every (method, bits, seed) both sides quantize a fresh copy of the float model from
CONFIG/CHECKPOINT with the same calibration images (`--seed` picks them, as in tools/ptq_test.py) and are scored by the
same evaluation code on the same split. Writes DIR/fidelity.json and DIR/fidelity.md: per method and bit width the
official and our top-1 (mean ± std over seeds), their difference and both calibration times.

Official settings (the defaults here):
    repq     32 calibration images.
    isvit    1024 calibration images (its --calib-batchsize), block reconstruction batch 64, `--iter` 1000 at 3/4 bit
             and 200 at 6 bit (its README), warmup 0.2, channel-wise weights (`--w_cw`, as in its README example),
             layer-wise activations. Ours: the `isvit` recipe at its "paper" setting (the same numbers).
    ptq4vit  32 calibration images, HessianQuantCalibrator(batch_size=4).batching_quant_calib() of its PTQ4ViT config
             with test_all.py's cfg_modifier (n_V, n_H, n_a = 1, 1, 1, metric "hessian", bits (w, a)).
`--calib-num N` replaces the image count on both sides. `--official-args KEY=VALUE` changes an official option, for a
CPU smoke test: `iters=N` (isvit: reconstruction steps per block/layer, given to our recipe too), `w_cw=0|1` (isvit).
A key that none of the chosen methods knows is an error. The official I&S-ViT code takes 64-image batches from the
calibration set (the rest of a partial batch is dropped), so it needs at least 64 images.

The official codes were written for timm 0.4–0.9. The glue for current timm lives here only (`glue_for_official`):
the attention and MLP modules of the float model get classes whose forward is the official attention forward (a class
method, so the `copy.deepcopy` of the model that I&S-ViT keeps as its float teacher still runs its own, unquantized
modules), and the official entry function runs unmodified with its data and model builders pointed at ours. Only
what the glue must change is changed:
- all: parameters get requires_grad (as timm.create_model leaves them): I&S-ViT trains them, PTQ4ViT back-propagates.
- ptq4vit: its net wrapper names a Linear by its attribute name; timm 1.0's Swin classifier is `head.fc`, which it
  does not know, so the classifier's Linear is moved to `head.head` (same forward). example/test_all.py imports
  `timm.models.layers.config`, which timm 1.0 moved to `timm.layers.config`: that name is aliased while it runs, and
  its working folder is the checkout (its config loader lists ./configs). Its calibrator registers legacy
  (non-full) backward hooks: torch 2 warns that grad_input may be incomplete, but it reads only grad_output, which
  those hooks still give. Its test_all() prints "accuracy: 0.0": the evaluation it calls is replaced by ours.
- on a CPU (smoke tests only): the official codes hard-code CUDA (`.cuda()`, `.to('cuda')`); while they run on a
  CPU those calls leave tensors where they are. On a GPU nothing is patched.
"""
import argparse
import contextlib
import copy
import importlib
import os
import shlex
import statistics
import sys
import time
import types
from dataclasses import dataclass, field

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from plugin.errors import ToolParser  # noqa: E402


@dataclass(frozen=True)
class OfficialCode:
    """One official code base: how to recognise its checkout, import it and run it."""
    title: str
    run: object                 # (checkout, fp_model, images, w_bits, a_bits, seed, device, options) -> (model, s)
    paths: tuple                # folders (relative to the checkout) put on sys.path, the first one holding `markers`
    markers: tuple              # files that identify the checkout
    modules: tuple              # top-level module names it imports, dropped after each run so codes never mix
    calib_num: int              # its calibration set size
    ours: str                   # our recipe it is compared with
    options: dict = field(default_factory=dict)   # --official-args KEY -> type
    chdir: bool = False         # run with the checkout as working folder


def check_checkout(code, repo_dir):
    """Raise a UserInputError unless `repo_dir` holds the named official code base."""
    from plugin.errors import UserInputError
    if not os.path.isdir(repo_dir):
        raise UserInputError(f"official checkout {repo_dir} is not a folder")
    root = os.path.join(repo_dir, code.paths[0])
    missing = [m for m in code.markers if not os.path.isfile(os.path.join(root, m))]
    if missing:
        where = "/".join(p for p in (code.paths[0], "") if p)
        raise UserInputError(f"{repo_dir} does not look like a {code.title} checkout (no {where}{', '.join(missing)})")


@contextlib.contextmanager
def official_import_path(code, repo_dir):
    """Make the official code importable (and, if it needs it, the working folder) for the duration of one run."""
    check_checkout(code, repo_dir)
    repo_dir = os.path.abspath(repo_dir)
    saved_path, saved_cwd = list(sys.path), os.getcwd()

    def drop_modules():
        for name in list(sys.modules):
            if name.split(".")[0] in code.modules:
                del sys.modules[name]

    drop_modules()
    for p in reversed(code.paths):
        sys.path.insert(0, os.path.join(repo_dir, p))
    if code.chdir:
        os.chdir(repo_dir)
    try:
        yield
    finally:
        os.chdir(saved_cwd)
        sys.path[:] = saved_path  # the official scripts add their own entries ('.', '..') at import
        drop_modules()


@contextlib.contextmanager
def cuda_calls_stay_on(device):
    """On a CPU, make the official code's hard-coded `.cuda()` / `.to('cuda')` leave tensors where they are."""
    if str(device).startswith("cuda"):
        yield
        return
    import torch

    def cpu(d):
        is_cuda = (isinstance(d, str) and d.startswith("cuda")) or (isinstance(d, torch.device) and d.type == "cuda")
        return "cpu" if is_cuda else d

    saved = torch.Tensor.to, torch.Tensor.cuda, torch.nn.Module.cuda
    tensor_to = saved[0]

    def to(self, *args, **kwargs):
        if args:
            args = (cpu(args[0]),) + args[1:]
        if "device" in kwargs:
            kwargs["device"] = cpu(kwargs["device"])
        return tensor_to(self, *args, **kwargs)

    torch.Tensor.to, torch.Tensor.cuda, torch.nn.Module.cuda = to, lambda self, *a, **k: self, lambda self, *a, **k: self
    try:
        yield
    finally:
        torch.Tensor.to, torch.Tensor.cuda, torch.nn.Module.cuda = saved


def _drop_identity(module, attr, where, title):
    """Remove an unused (Identity) submodule; a real one means the official forward would skip a layer."""
    import torch.nn as nn
    from plugin.errors import UserInputError
    sub = getattr(module, attr, None)
    if sub is not None and not isinstance(sub, nn.Identity):
        raise UserInputError(f"the official {title} code has no {attr} in {where}; this model cannot run there")
    module._modules.pop(attr, None)


def glue_for_official(model, official_models, title):
    """Make a current-timm ViT/Swin look like the timm of the official code (in place); `official_models` is the
    official module holding `attention_forward`, `window_attention_forward` and `MatMul` (RepQ-ViT's and I&S-ViT's
    utils/build_model.py, PTQ4ViT's utils/models.py: the same three functions).

    - Attention / WindowAttention: class swapped for one whose forward is the official function (bound method) and
      which holds the official `matmul1`/`matmul2` modules; timm's unused q_norm/k_norm/norm Identity modules are
      dropped, because RepQ-ViT's reparameterisation loop takes every module named '*norm*' for a LayerNorm.
    - Mlp: the Identity `norm` between act and fc2 is dropped for the same reason.
    - Swin PatchMerging: RepQ-ViT's channel-wise quantizer expects (B, N, C) inputs; timm now passes (B, H, W, C).
    - parameters require gradients, as in the timm models the official code builds.
    """
    import torch.nn as nn
    from timm.layers import Attention, Mlp
    from timm.models.swin_transformer import PatchMerging, WindowAttention

    ob = official_models

    class OfficialAttention(Attention):
        def forward(self, x, attn_mask=None, **kwargs):
            if attn_mask is not None:
                raise ValueError(f"attention masks are not supported by the official {title} forward")
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
                _drop_identity(m, attr, name, title)
            m.__class__ = OfficialAttention
        elif isinstance(m, WindowAttention):
            m.__class__ = OfficialWindowAttention
        elif isinstance(m, Mlp) and type(m) is Mlp:
            _drop_identity(m, "norm", name, title)
            m.__class__ = OfficialMlp
        elif isinstance(m, PatchMerging):
            m.__class__ = OfficialPatchMerging
        else:
            continue
        if isinstance(m, (Attention, WindowAttention)):
            m.matmul1, m.matmul2 = ob.MatMul(), ob.MatMul()
    # RepQ-ViT's reparameterisation walks model.blocks (ViT) or model.layers (Swin) for modules named '*norm*'.
    walked = getattr(model, "layers", None) if is_swin(model) else getattr(model, "blocks", None)
    for name, m in walked.named_modules():
        if "norm" in name and not isinstance(m, nn.LayerNorm):
            from plugin.errors import UserInputError
            raise UserInputError(f"{name} ({type(m).__name__}) would be taken for a LayerNorm by the official code")
    model.requires_grad_(True)
    return model.eval()


def is_swin(model):
    from timm.models.swin_transformer import SwinTransformer
    return isinstance(model, SwinTransformer)


def _labelled(images):
    import torch
    return images, torch.zeros(len(images), dtype=torch.long)


def _run_test_quant(method, repo_dir, fp_model, calib_images, device, **args):
    """test_quant.main() of RepQ-ViT or I&S-ViT (the same script layout) on our float model and calibration images,
    its data and model builders and its validate() pointed at ours. `args` completes its argparse namespace. The
    model of the last validate() call is returned (I&S-ViT validates after stage one and at the end), with the
    seconds from main() to that call."""
    import torch
    code = OFFICIAL[method]
    with official_import_path(code, repo_dir), cuda_calls_stay_on(device):
        test_quant = importlib.import_module("test_quant")
        official_bm = importlib.import_module("utils.build_model")
        model = glue_for_official(copy.deepcopy(fp_model), official_bm, code.title)
        captured = {}

        def validate(args, val_loader, q_model, criterion, device):
            if str(device).startswith("cuda"):
                torch.cuda.synchronize()
            captured["model"], captured["t1"] = q_model, time.time()
            return 0.0, 0.0, 0.0

        test_quant.build_dataset = lambda args: ([_labelled(calib_images)], [])
        test_quant.build_model = lambda name: model
        test_quant.validate = validate
        # The model name only picks the ViT or the Swin branch of main() (its timm name goes to build_model).
        test_quant.args = types.SimpleNamespace(
            model="swin_tiny" if is_swin(model) else "deit_small", dataset="", calib_batchsize=len(calib_images),
            val_batchsize=1, num_workers=0, device=device, print_freq=100, **args)
        t0 = time.time()
        with contextlib.redirect_stdout(sys.stderr):
            test_quant.main()
    return captured["model"], captured["t1"] - t0


def run_official_repq(repo_dir, fp_model, calib_images, w_bits, a_bits, seed, device, options):
    """RepQ-ViT's own test_quant.main(). Returns (model, seconds)."""
    return _run_test_quant("repq", repo_dir, fp_model, calib_images, device, seed=seed, w_bits=w_bits, a_bits=a_bits)


def isvit_iters(w_bits, a_bits):
    """I&S-ViT's README: 1000 iterations at W3/A3 and W4/A4, 200 at W6/A6."""
    return 200 if min(w_bits, a_bits) >= 6 else 1000


def run_official_isvit(repo_dir, fp_model, calib_images, w_bits, a_bits, seed, device, options):
    """I&S-ViT's own test_quant.main() (three stages, block reconstruction). Returns (model, seconds)."""
    from plugin.errors import UserInputError
    if len(calib_images) < 64:
        raise UserInputError(f"the official I&S-ViT code reconstructs with 64-image batches; it needs at least 64 "
                             f"calibration images, got {len(calib_images)}")
    return _run_test_quant("isvit", repo_dir, fp_model, calib_images, device, seed=seed, w_bits=w_bits,
                           a_bits=a_bits, w_cw=bool(options.get("w_cw", 1)), a_cw=False,
                           iter=options.get("iters") or isvit_iters(w_bits, a_bits), warmup=0.2)


def _ptq4vit_classifier(model):
    """PTQ4ViT's wrapper knows a classifier Linear only by the attribute name `head`; timm 1.0's Swin (and any model
    with a ClassifierHead) keeps it as `head.fc`. Moved to `head.head`, same forward."""
    from timm.layers import ClassifierHead

    class OfficialClassifierHead(ClassifierHead):
        def forward(self, x, pre_logits=False):
            x = self.drop(self.global_pool(x))
            return self.flatten(x if pre_logits else self.head(x))

    head = getattr(model, "head", None)
    if isinstance(head, ClassifierHead):
        head._modules["head"] = head._modules.pop("fc")
        head.__class__ = OfficialClassifierHead
    return model


@contextlib.contextmanager
def _timm_layers_config_alias():
    """example/test_all.py does `from timm.models.layers import config` (unused there), gone in timm 1.0."""
    import timm.layers.config
    import timm.models.layers as old
    added = not hasattr(old, "config")
    if added:
        old.config = timm.layers.config
    try:
        yield
    finally:
        if added:
            del old.config


def run_official_ptq4vit(repo_dir, fp_model, calib_images, w_bits, a_bits, seed, device, options):
    """PTQ4ViT's own example/test_all.test_all() with its PTQ4ViT config and cfg_modifier, on our float model and
    calibration images (a DataLoader with one batch of all of them, as its calib_loader). Returns (model, seconds)."""
    import torch
    with official_import_path(OFFICIAL["ptq4vit"], repo_dir), cuda_calls_stay_on(device), \
            _timm_layers_config_alias():
        test_all = importlib.import_module("test_all")
        official_models = importlib.import_module("utils.models")
        model = _ptq4vit_classifier(glue_for_official(copy.deepcopy(fp_model), official_models, "PTQ4ViT"))
        model.to(device)
        captured = {}
        calib_set = torch.utils.data.TensorDataset(*_labelled(calib_images.to(device)))

        class LoaderGenerator:
            def __init__(self, *args, **kwargs):
                pass

            def test_loader(self):
                return []

            def calib_loader(self, num=1024, seed=3):
                return torch.utils.data.DataLoader(calib_set, batch_size=len(calib_set), shuffle=False)

        def test_classification(net, test_loader, max_iteration=None, description=None):
            if str(device).startswith("cuda"):
                torch.cuda.synchronize()
            captured["model"], captured["t1"] = net, time.time()
            return 0.0

        test_all.get_net = lambda name: model
        test_all.datasets = types.SimpleNamespace(ViTImageNetLoaderGenerator=LoaderGenerator)
        test_all.test_classification = test_classification
        modifier = test_all.cfg_modifier(linear_ptq_setting=(1, 1, 1), metric="hessian", bit_setting=(w_bits, a_bits))
        torch.manual_seed(seed)
        t0 = time.time()
        with contextlib.redirect_stdout(sys.stderr):
            test_all.test_all("swin" if is_swin(model) else "vit", cfg_modifier=modifier,
                              calib_size=len(calib_images), config_name="PTQ4ViT")
    return captured["model"], captured["t1"] - t0


OFFICIAL = {
    "repq": OfficialCode("RepQ-ViT", run_official_repq, ("classification",),
                         ("test_quant.py", "utils/build_model.py", "quant/quant_model.py"),
                         ("utils", "quant", "test_quant"), calib_num=32, ours="repq"),
    "isvit": OfficialCode("I&S-ViT", run_official_isvit, ("",),
                          ("test_quant.py", "utils/build_model.py", "quant/block_recon.py", "quant/layer_recon.py"),
                          ("utils", "quant", "test_quant"), calib_num=1024, ours="isvit",
                          options={"iters": int, "w_cw": int}),
    "ptq4vit": OfficialCode("PTQ4ViT", run_official_ptq4vit, ("", "example"),
                            ("configs/PTQ4ViT.py", "utils/net_wrap.py", "utils/quant_calib.py", "utils/models.py",
                             "example/test_all.py", "quant_layers/linear.py"),
                            ("utils", "quant_layers", "configs", "test_vit", "test_all"), calib_num=32,
                            ours="ptq4vit", chdir=True),
}
# Our recipe that each official code base is compared with (`--ours METHOD=RECIPE` replaces it).
OURS = {method: code.ours for method, code in OFFICIAL.items()}


def parse_official_args(items, methods):
    """--official-args KEY=VALUE -> {method: {key: value}} for the chosen methods that know KEY."""
    from plugin.errors import UserInputError
    out = {m: {} for m in methods}
    for item in items or []:
        key, sep, text = item.partition("=")
        takers = [m for m in methods if key in OFFICIAL[m].options]
        if not sep or not takers:
            known = sorted({k for m in methods for k in OFFICIAL[m].options})
            raise UserInputError(f"--official-args takes KEY=VALUE with KEY one of {known} for the chosen methods, "
                                 f"got {item!r}")
        for m in takers:
            try:
                value = OFFICIAL[m].options[key](text)
            except ValueError:
                raise UserInputError(f"--official-args {key} must be an integer, got {text!r}")
            if key == "iters" and value < 1:
                raise UserInputError(f"--official-args iters must be at least 1, got {value}")
            out[m][key] = value
    return out


def _mean_std(values):
    """Mean and sample std of the values measured (None: a side not run); (None, None) when there are none."""
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _seconds(t):
    return "-" if t is None else f"{t:.1f}"


def _value(v, std=None):
    if v is None:
        return "-"
    return f"{v:.2f}" if std is None else f"{v:.2f} ± {std:.2f}"


def markdown(rows, fp, model_name):
    lines = [f"# Official code vs ours: {model_name} (full precision top-1 {fp:.2f})", "",
             "| method | W/A | official | ours | ours − official | seeds | calib s (official / ours) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        diff = "-" if r["official"] is None or r["ours"] is None else f"{r['ours'] - r['official']:+.2f}"
        recipe = r.get("ours_recipe", r["method"])
        method = r["method"] if recipe == r["method"] else f"{r['method']} (ours: `{recipe}`)"
        lines.append(f"| {method} | {r['w_bits']}/{r['a_bits']} | {_value(r['official'], r['official_std'])} | "
                     f"{_value(r['ours'], r['ours_std'])} | {diff} | "
                     f"{', '.join(map(str, r['seeds']))} | {_seconds(r['calib_s_official'])} / "
                     f"{_seconds(r['calib_s_ours'])} |")
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    p = ToolParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config")
    p.add_argument("checkpoint")
    p.add_argument("--official", nargs="+", required=True, metavar="METHOD=PATH",
                   help=f"official checkouts to run, METHOD one of {sorted(OFFICIAL)}")
    p.add_argument("--ours", nargs="*", default=None, metavar="METHOD=RECIPE",
                   help="our recipe to compare each official method with (default: the same name)")
    p.add_argument("--bits", type=int, nargs="+", default=[4])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--calib-num", type=int, default=None,
                   help="calibration images, both sides (default: each official code's own: "
                        + ", ".join(f"{m} {c.calib_num}" for m, c in OFFICIAL.items()) + ")")
    p.add_argument("--official-args", nargs="+", default=None, metavar="KEY=VALUE",
                   help="official options for smoke tests: iters=N (isvit, both sides), w_cw=0|1 (isvit)")
    p.add_argument("--side", choices=["both", "official", "ours"], default="both",
                   help="run both codes (default), or one of them: a long run split over two commands, whose tables "
                        "tools/merge_fidelity.py joins")
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
        check_checkout(OFFICIAL[method], path)
        officials[method] = path
    options = parse_official_args(args.official_args, officials)
    if args.calib_num is not None and args.calib_num < 1:
        raise UserInputError(f"--calib-num must be at least 1, got {args.calib_num}")
    ours = dict(OURS)
    for item in args.ours or []:
        method, _, recipe = item.partition("=")
        if method not in OFFICIAL:
            raise UserInputError(f"--ours takes METHOD=RECIPE with METHOD in {sorted(OFFICIAL)}, got {item!r}")
        ours[method] = recipe
    for method in officials:
        get_recipe(ours[method], 4, 4)

    def our_recipe(method, bits):
        recipe = get_recipe(ours[method], bits, bits)
        if options[method].get("iters"):  # the official iteration count given for a smoke test: ours too
            recipe.passes = [dict(p, iters=options[method]["iters"]) for p in recipe.passes]
        return recipe
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
            calib_num = args.calib_num or OFFICIAL[method].calib_num
            for seed in args.seeds:
                torch.manual_seed(seed)
                calib = task.calib_data(fp_model, calib_num, seed)
                images = torch.cat(list(calib.batches))
                score = t_score = None
                if args.side in ("both", "official"):
                    q_model, t_score = OFFICIAL[method].run(repo, fp_model, images, bits, bits, seed, device,
                                                            options[method])
                    score = task.evaluate(q_model, False)[task.primary_metric]
                    del q_model
                runs["official"].append(score)
                runs["t_official"].append(t_score)
                score = t_score = None
                if args.side in ("both", "ours"):
                    model = copy.deepcopy(fp_model)
                    torch.manual_seed(seed)
                    t0 = time.time()
                    quantize(model, our_recipe(method, bits), calib, log=lambda s: None, seed=seed)
                    if device.startswith("cuda"):
                        torch.cuda.synchronize()
                    t_score = time.time() - t0
                    score = task.evaluate(model, False)[task.primary_metric]
                    del model
                runs["ours"].append(score)
                runs["t_ours"].append(t_score)
                log(f"{method} W{bits}A{bits} seed {seed}: official {_value(runs['official'][-1])}, "
                    f"ours ({ours[method]}) {_value(runs['ours'][-1])}")
            off, off_std = _mean_std(runs["official"])
            our, our_std = _mean_std(runs["ours"])
            rows.append({"model": os.path.splitext(os.path.basename(args.config))[0], "method": method,
                         "ours_recipe": ours[method], "w_bits": bits, "a_bits": bits, "fp": fp,
                         "official": off, "official_std": off_std, "official_runs": runs["official"],
                         "ours": our, "ours_std": our_std, "ours_runs": runs["ours"], "seeds": list(args.seeds),
                         "calib_num": len(images), "official_args": options[method],
                         "calib_s_official": _mean_std(runs["t_official"])[0],
                         "calib_s_ours": _mean_std(runs["t_ours"])[0], "device": device,
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
    from plugin.errors import run_cli
    return run_cli(run, args)


if __name__ == "__main__":
    sys.exit(main())
