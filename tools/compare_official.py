#!/usr/bin/env python
"""Run an official PTQ code base and ours side by side: same float model, same calibration images, same test split.

    python tools/compare_official.py CONFIG CHECKPOINT --official METHOD=PATH [METHOD=PATH ...] \\
        --bits 3 4 6 --seeds 0 1 2 [--calib-num N] [--official-args KEY=VALUE ...] [--device cuda] [--out DIR]

METHOD is one of
    repq     zkkli/RepQ-ViT              (classification/test_quant.py main())           vs our `repq`
    isvit    I&S-ViT (IaS-ViT)            (test_quant.py main(): 3-stage block recon)      vs our `isvit`
    ptq4vit  hahnyuan/PTQ4ViT             (example/test_all.py test_all(): Hessian search) vs our `ptq4vit`
    aphq     GoatWu/APHQ-ViT              (test_quant.py main() --reconstruct-mlp)          vs our `aphq`
    fimaq    ShiheWang/FIMA-Q             (test_quant.py main() --optim-metric fisher_dplr) vs our `fimaq`
and PATH a local checkout of that repository, fetched by whoever runs this: it is read at run time and never part of
this project. For every (method, bits, seed) both sides quantize a fresh copy of the float model from
CONFIG/CHECKPOINT with the same calibration images (`--seed` picks them, as in tools/ptq_test.py) and are scored by the
same evaluation code on the same split. Writes DIR/fidelity.json and DIR/fidelity.md: per method and bit width the
official and our top-1 (mean ± std over seeds), their difference and both calibration times.

Official settings (the defaults here; how each code is run and shimmed is in tools/official/<peer>.py):
    repq     32 calibration images.
    isvit    1024 calibration images, block reconstruction batch 64, `--iter` 1000 at 3/4 bit and 200 at 6 bit, warmup
             0.2, channel-wise weights, layer-wise activations. Ours: the `isvit` recipe at its "paper" setting.
    ptq4vit  32 calibration images, its PTQ4ViT config with test_all.py's cfg_modifier.
    aphq     1024 images drawn (optimisation set), the first 128 calibrate, batch 32, 20000 iterations per block
    fimaq    (MLP and block reconstruction); configs/<b>bit/best.py of the checkout. ViTs only (Swin is refused).
`--calib-num N` replaces the image count on both sides. `--official-args KEY=VALUE` changes an official option (the
GPU budget, or a CPU smoke test): `iters=N` (isvit, aphq, fimaq: iterations per block; given to our recipe's passes
too), `batch=N` (aphq, fimaq: their batches of 32; our passes' batch_size too), `calib=N` (aphq, fimaq: calibration
subset, official 128; our recipe's stat_fraction too), `w_cw=0|1` (isvit). A key that none of the chosen methods
knows is an error. The effective official counts of aphq and fimaq go into each row of fidelity.json
(`official_settings`).
"""
import argparse
import copy
import os
import shlex
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from plugin.errors import ToolParser  # noqa: E402

from official import OFFICIAL, OURS, OURS_KNOBS, isvit_iters  # noqa: E402,F401  (isvit_iters: tests)
from official.harness import check_checkout  # noqa: E402
from official.tables import markdown, mean_std, value, write_tables  # noqa: E402,F401  (markdown: merge_fidelity)

MINIMUM = {"iters": 1, "calib": 1, "batch": 1}  # integer options with a lower bound


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
                v = OFFICIAL[m].options[key](text)
            except ValueError:
                raise UserInputError(f"--official-args {key} must be an integer, got {text!r}")
            if key in MINIMUM and v < MINIMUM[key]:
                raise UserInputError(f"--official-args {key} must be at least {MINIMUM[key]}, got {v}")
            out[m][key] = v
    return out


def our_passes(passes, options):
    """Our recipe's passes with the official options that have the same knob (OURS_KNOBS) set where a pass has it."""
    for key, knob in OURS_KNOBS.items():
        if options.get(key):
            passes = [dict(p, **{knob: options[key]}) if knob in p else p for p in passes]
    return passes


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
                   help="official options: iters=N (isvit, aphq, fimaq; both sides), batch=N, calib=N (aphq, fimaq), "
                        "w_cw=0|1 (isvit)")
    p.add_argument("--side", choices=["both", "official", "ours"], default="both",
                   help="run both codes (default), or one of them: a long run split over two commands, whose tables "
                        "tools/merge_fidelity.py joins")
    p.add_argument("--device", default=None)
    p.add_argument("--out", default="work_dirs/fidelity")
    p.add_argument("--cfg-options", nargs="+", default=None, metavar="KEY=VALUE")
    return p.parse_args(argv)


def peak_gib(peak):
    """A peak_memory count in GiB (3 decimals), None off CUDA."""
    return None if peak["bytes"] is None else round(peak["bytes"] / 2 ** 30, 3)


def run(args):
    import torch

    import plugin  # noqa: F401
    from plugin.config import load_config
    from plugin.errors import UserInputError
    from plugin.quant import get_recipe, quantize
    from plugin.tasks.base import get_task
    from plugin.config import apply_cfg_options
    from plugin.utils.timing import peak_memory

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
    for method in officials if args.side != "official" else ():
        get_recipe(ours[method], 4, 4)

    def our_recipe(method, bits, calib_num):
        recipe = get_recipe(ours[method], bits, bits)
        recipe.passes = our_passes(recipe.passes, options[method])  # official counts given (GPU budget): ours too
        if OFFICIAL[method].tune_ours:
            OFFICIAL[method].tune_ours(recipe, options[method], calib_num)
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
    for method, repo in officials.items():
        if OFFICIAL[method].preflight and args.side != "ours":
            OFFICIAL[method].preflight(repo, fp_model, args.bits, options[method],
                                       args.calib_num or OFFICIAL[method].calib_num)
    fp = task.evaluate(fp_model, False)[task.primary_metric]
    log(f"full precision {task.primary_metric}: {fp:.2f}")
    rows = []
    for method, repo in officials.items():
        for bits in args.bits:
            runs = {"official": [], "ours": [], "t_official": [], "t_ours": [], "m_official": [], "m_ours": []}
            calib_num = args.calib_num or OFFICIAL[method].calib_num
            for seed in args.seeds:
                torch.manual_seed(seed)
                calib = task.calib_data(fp_model, calib_num, seed)
                images = torch.cat(list(calib.batches))
                score = t_score = None
                if args.side in ("both", "official"):
                    with peak_memory(device) as peak:
                        q_model, t_score = OFFICIAL[method].run(repo, fp_model, images, bits, bits, seed, device,
                                                                options[method])
                    runs["m_official"].append(peak_gib(peak))
                    score = task.evaluate(q_model, False)[task.primary_metric]
                    del q_model
                runs["official"].append(score)
                runs["t_official"].append(t_score)
                score = t_score = None
                if args.side in ("both", "ours"):
                    with peak_memory(device) as peak:
                        model = copy.deepcopy(fp_model)
                        torch.manual_seed(seed)
                        t0 = time.time()
                        quantize(model, our_recipe(method, bits, len(images)), calib, log=log, seed=seed)
                    t_score = time.time() - t0  # after the synchronisation that ends the peak count
                    runs["m_ours"].append(peak_gib(peak))
                    score = task.evaluate(model, False)[task.primary_metric]
                    del model
                runs["ours"].append(score)
                runs["t_ours"].append(t_score)
                log(f"{method} W{bits}A{bits} seed {seed}: official {value(runs['official'][-1])}, "
                    f"ours ({ours[method]}) {value(runs['ours'][-1])}")
            off, off_std = mean_std(runs["official"])
            our, our_std = mean_std(runs["ours"])
            rows.append({"model": os.path.splitext(os.path.basename(args.config))[0], "method": method,
                         "ours_recipe": ours[method], "w_bits": bits, "a_bits": bits, "fp": fp,
                         "official": off, "official_std": off_std, "official_runs": runs["official"],
                         "ours": our, "ours_std": our_std, "ours_runs": runs["ours"], "seeds": list(args.seeds),
                         "calib_num": len(images), "official_args": options[method],
                         "calib_s_official": mean_std(runs["t_official"])[0],
                         "calib_s_ours": mean_std(runs["t_ours"])[0], "device": device,
                         **{f"calib_peak_gib_{side}": max(runs[f"m_{side}"]) for side in ("official", "ours")
                            if runs[f"m_{side}"][:1] not in ([], [None])},  # CUDA only
                         "command": args.command})
            if OFFICIAL[method].settings:  # the counts the official side ran with (reduced where the GPU budget forces)
                rows[-1]["official_settings"] = OFFICIAL[method].settings(options[method], len(images), bits, bits)
            write_tables(args.out, rows, fp)  # after every row: a run cut short keeps what it finished
    print(markdown(rows, fp, rows[0]["model"]))
    return rows


def main(argv=None):
    args = parse_args(argv)
    args.command = "python " + shlex.join(["tools/compare_official.py"] + list(sys.argv[1:] if argv is None else argv))
    from plugin.errors import run_cli
    return run_cli(run, args)


if __name__ == "__main__":
    sys.exit(main())
