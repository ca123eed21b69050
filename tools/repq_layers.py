"""The official RepQ-ViT code and our `repq` side by side, layer by layer, on one calibration batch (docs/fidelity.md).

    python tools/repq_layers.py CONFIG CHECKPOINT --official PATH/RepQ-ViT --bits 3 [--seed 0] [--eval-num 512] \
        [--device cpu] [--cfg-options KEY=VALUE ...]

Both sides quantize the float model of CONFIG/CHECKPOINT with the same calibration images (`--seed` picks them, as in
tools/compare_official.py). Printed: for the official code, our `repq`, and our `repq` with the official post-LayerNorm
fold swapped in (below), the top-1 on EVAL_NUM evenly spaced test images, the agreement with the float model and each
block's output error ‖y_q − y‖² / ‖y‖² against the float model; then every quantizer's scale and zero point of ours
beside the official one (mean over channels, largest relative difference).

The official fold (read from its test_quant.py, written anew here): the layer-wise zero point of a folded post-LN
quantizer is the unrounded mean of the channel zero points, added after rounding, so the grid of each channel is shifted
by that fraction of a step and clipped at the channel's range ends; ours rounds it (plugin/quant/reparam.py). The third
row is our recipe `repq_official_fold`, which does the fold as that code does: it shows whether it is what separates
the two sides.
"""
import argparse
import copy
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

OURS_TO_OFFICIAL = (("matmul_qk", "matmul1"), ("matmul_av", "matmul2"), ("a_quantizer", "quantizer_A"),
                    ("b_quantizer", "quantizer_B"))


def block_outputs(model, x, batch=128):
    """(per-block outputs, logits) of `model` on `x` (no grad)."""
    import torch
    outs = {}
    hooks = [b.register_forward_hook(lambda m, a, o, i=i: outs.setdefault(i, []).append(o.detach()))
             for i, b in enumerate(model.blocks)]
    try:
        with torch.no_grad():
            logits = torch.cat([model(x[j:j + batch]) for j in range(0, len(x), batch)])
    finally:
        for h in hooks:
            h.remove()
    return {i: torch.cat(v) for i, v in outs.items()}, logits


def summary(name, fp, q, labels):
    """One line: top-1, agreement with the float model, per-block relative error. Returns the errors."""
    (fb, fl), (qb, ql) = fp, q
    errs = [((qb[i] - fb[i]).pow(2).sum() / fb[i].pow(2).sum()).item() for i in sorted(fb)]
    top1 = (ql.argmax(1) == labels).float().mean().item() * 100
    agree = (ql.argmax(1) == fl.argmax(1)).float().mean().item() * 100
    print(f"{name:24s} top1 {top1:6.2f}  agree {agree:6.2f}  block error " + " ".join(f"{e:.3f}" for e in errs))
    return errs


def quantize_ours(fp_model, calib, bits, seed, official_fold):
    """A copy of `fp_model` quantized with our `repq`, or with `official_fold` the recipe `repq_official_fold`: the
    same with RepQ-ViT's own fold (plugin.quant.reparam, reparam_fold "official": calibrated channel-wise with unfolded
    weights, folded afterwards with the unrounded mean zero point added after rounding)."""
    from plugin.quant import get_recipe, quantize
    recipe = get_recipe("repq_official_fold" if official_fold else "repq", bits, bits)
    return quantize(copy.deepcopy(fp_model), recipe, calib, seed=seed, log=lambda s: None)


def official_params(model):
    """{official quantizer name: (delta, zero point or None)} of the official quantized model."""
    out = {}
    for name, m in model.named_modules():
        delta = getattr(m, "delta", None)
        if delta is not None and hasattr(m, "n_levels"):
            out[name] = (delta.detach().flatten(), getattr(m, "zero_point", None))
    return out


def compare_params(model, official):
    for name, q in model.named_modules():
        if "quantizer" not in name.rsplit(".", 1)[-1] or not hasattr(q, "scale"):
            continue
        off_name = name
        for a, b in OURS_TO_OFFICIAL:
            off_name = off_name.replace(a, b)
        if off_name not in official:
            print(f"{name:44s} (no official quantizer)")
            continue
        delta, zero = official[off_name]
        s = q.scale.detach().flatten()
        rel = ((s - delta) / delta).abs().max().item() if s.numel() == delta.numel() else float("nan")
        z = "" if zero is None else (f"  z ours {q.zero_point.float().mean().item():.3f} "
                                     f"official {zero.float().mean().item():.3f}")
        print(f"{name:44s} n={s.numel():5d}  s ours {s.mean().item():.5g} official {delta.mean().item():.5g} "
              f"max rel {rel:.3g}{z}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config")
    p.add_argument("checkpoint")
    p.add_argument("--official", required=True, help="a local RepQ-ViT checkout")
    p.add_argument("--bits", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--calib-num", type=int, default=32)
    p.add_argument("--eval-num", type=int, default=512)
    p.add_argument("--device", default="cpu")
    p.add_argument("--cfg-options", nargs="+", default=[])
    args = p.parse_args(argv)
    import torch
    import plugin  # noqa: F401
    from plugin.config import apply_cfg_options, load_config
    from plugin.errors import UserInputError
    from plugin.tasks.base import get_task
    from official.harness import check_checkout
    from official.repq_isvit import REPQ
    try:
        check_checkout(REPQ, args.official)
        if not 2 <= args.bits <= 8:
            raise UserInputError(f"--bits must be from 2 to 8, got {args.bits}")
        cfg = apply_cfg_options(load_config(args.config), args.cfg_options)
        task = get_task(cfg.get("task"))(cfg, args.checkpoint, device=args.device)
        fp_model = task.build_model()
        _, eval_set = task.datasets(fp_model)
        if not 1 <= args.eval_num <= len(eval_set):
            raise UserInputError(f"--eval-num must be from 1 to {len(eval_set)}, got {args.eval_num}")
    except UserInputError as exc:
        p.error(str(exc))
    torch.manual_seed(args.seed)
    calib = task.calib_data(fp_model, args.calib_num, args.seed)
    images = torch.cat(list(calib.batches))
    idx = torch.linspace(0, len(eval_set) - 1, args.eval_num).long().tolist()
    x = torch.stack([eval_set[i][0] for i in idx]).to(args.device)
    labels = torch.tensor([int(eval_set[i][1]) for i in idx], device=args.device)
    fp = block_outputs(fp_model, x)
    official, _ = REPQ.run(args.official, fp_model, images, args.bits, args.bits, args.seed, args.device, {})
    summary("official RepQ-ViT", fp, block_outputs(official, x), labels)
    ours = quantize_ours(fp_model, calib, args.bits, args.seed, official_fold=False)
    summary("ours (repq)", fp, block_outputs(ours, x), labels)
    summary("ours, official fold", fp, block_outputs(quantize_ours(fp_model, calib, args.bits, args.seed, True), x),
            labels)
    compare_params(ours, official_params(official))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    sys.exit(main())
