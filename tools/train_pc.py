#!/usr/bin/env python
"""Train a point-cloud classifier or part segmenter from a config (made for a GPU), then evaluate it once.

    python tools/train_pc.py CONFIG --out DIR [--data-root PATH] [--epochs N] [--batch-size B] [--lr LR]
        [--amp bf16|none] [--fp16] [--compile] [--max-minutes M] [--resume] [--workers N] [--seed S] [--device cuda]

The recipe follows Point-MAE's fine-tuning: AdamW (no decay on norms, biases and tokens), linear warm-up then cosine,
gradient clipping, random anisotropic scaling, shifting and point-order shuffling; classification uses label
smoothing. Settings come from the config's `train` dict; the flags override them. Writes into DIR:
  model.safetensors        float32 weights (and model_fp16.safetensors with --fp16), loadable by tools/ptq_test.py
  metrics.json             final evaluation on the config's eval split, the command line, settings, history
  train_state.pt           model + optimiser + schedule after the last finished epoch (for --resume)
With --max-minutes the run stops after the last epoch that fits, still evaluates and saves the weights, and marks
metrics.json "complete": false; the same command with --resume finishes the schedule.
Needs torch, numpy, h5py and safetensors only (no mmengine, no open3d).
"""
import argparse
import json
import math
import os
import platform
import shlex
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from plugin.errors import ToolParser  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from plugin.config import load_config  # noqa: E402
from plugin.errors import (UserInputError, check_settings, fraction, nonnegative_float, nonnegative_int,  # noqa: E402
                           positive_float, positive_int, run_cli)
from plugin.pointcloud.data import build_dataset, collate  # noqa: E402
from plugin.pointcloud.engine import evaluate  # noqa: E402
from plugin.pointcloud.models import build_model  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_DEFAULTS = dict(epochs=100, batch_size=32, lr=5e-4, weight_decay=0.05, warmup_epochs=10, label_smoothing=0.0,
                      grad_clip=10.0, aug=dict(scale=(2 / 3, 3 / 2), shift=0.2, permute=True))
# What each of those may be, in the config's `train` dict and on the command line alike.
TRAIN_TYPES = dict(epochs=positive_int, batch_size=positive_int, lr=positive_float, weight_decay=nonnegative_float,
                   warmup_epochs=nonnegative_float, label_smoothing=fraction, grad_clip=positive_float)


def parse_args(argv=None):
    p = ToolParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--data-root", help="override data.root (e.g. .devdata/modelnet10/modelnet10_1024.npz)")
    p.add_argument("--epochs", type=positive_int)
    p.add_argument("--batch-size", type=positive_int)
    p.add_argument("--lr", type=positive_float)
    p.add_argument("--amp", choices=["bf16", "none"], default="bf16", help="autocast on CUDA (default bf16)")
    p.add_argument("--fp16", action="store_true", help="also write model_fp16.safetensors (half the size)")
    p.add_argument("--compile", action="store_true", help="torch.compile the training forward (GPU: fewer launches)")
    p.add_argument("--max-minutes", type=positive_float, help="stop after the last epoch that fits in this time; --resume")
    p.add_argument("--resume", action="store_true", help="continue from DIR/train_state.pt")
    p.add_argument("--workers", type=nonnegative_int, default=4, help="DataLoader workers")
    p.add_argument("--eval-every", type=nonnegative_int, default=0, help="also evaluate every N epochs (logged only)")
    p.add_argument("--seed", type=nonnegative_int, default=0)
    p.add_argument("--device", default=None, help="default: cuda when available")
    return p.parse_args(argv)


def settings(cfg, args):
    train = dict(TRAIN_DEFAULTS)
    train.update(dict(cfg.get("train", {}) or {}))
    for key in ("epochs", "batch_size", "lr"):
        if getattr(args, key) is not None:
            train[key] = getattr(args, key)
    check_settings(train, TRAIN_TYPES, f"{args.config}: train")
    data = dict(cfg["data"])
    if args.data_root:
        data["root"] = args.data_root
    return train, data


def param_groups(model, weight_decay):
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name in ("cls_token", "cls_pos") else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def lr_lambda(total_steps, warmup_steps):
    def fn(step):
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return fn


def augment(points, aug, gen):
    """Random anisotropic scale and shift per shape, and a random point order (moves the FPS start point)."""
    B, N, _ = points.shape
    lo, hi = aug.get("scale", (1.0, 1.0))
    scale = torch.empty(B, 1, 3, device=points.device).uniform_(lo, hi, generator=gen)
    shift = torch.empty(B, 1, 3, device=points.device).uniform_(-aug.get("shift", 0.0), aug.get("shift", 0.0),
                                                                generator=gen)
    points = points * scale + shift
    perm = None
    if aug.get("permute", False):
        perm = torch.rand(B, N, device=points.device, generator=gen).argsort(1)
        points = torch.gather(points, 1, perm.unsqueeze(-1).expand(-1, -1, 3))
    return points, perm


def save_weights(model, path, dtype=torch.float32):
    from safetensors.torch import save_file
    state = {k: (v.to(dtype) if v.is_floating_point() else v).detach().contiguous().cpu()
             for k, v in model.state_dict().items()}
    tmp = path + ".tmp"
    save_file(state, tmp, metadata={"format": "pt"})
    os.replace(tmp, path)


def write_json(path, obj):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)


def train(args):
    cfg = load_config(args.config, use_mmengine=False)
    task = cfg.get("task")
    if task not in ("pointcloud_cls", "pointcloud_partseg"):
        raise UserInputError(f"{args.config}: task must be pointcloud_cls or pointcloud_partseg, not {task!r}")
    tcfg, dcfg = settings(cfg, args)
    try:
        device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    except RuntimeError:
        raise UserInputError(f"--device: not a device name: {args.device!r} (cpu, cuda, cuda:1 …)") from None
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)

    train_set = build_dataset(dcfg, dcfg.get("train_split", "train"), base_dirs=[REPO])
    eval_set = build_dataset(dcfg, dcfg.get("eval_split", "test"), base_dirs=[REPO])
    model = build_model(dict(cfg["model"])).to(device)
    seg = task == "pointcloud_partseg"
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{task}: {type(model).__name__} {n_params / 1e6:.2f}M parameters; {len(train_set)} training shapes "
          f"({dcfg.get('train_split', 'train')}), {len(eval_set)} evaluation shapes; device {device}", flush=True)

    gen = torch.Generator()
    loader = torch.utils.data.DataLoader(
        train_set, batch_size=tcfg["batch_size"], shuffle=True, drop_last=True, collate_fn=collate,
        num_workers=args.workers, generator=gen, pin_memory=device.type == "cuda",
        persistent_workers=args.workers > 0)
    if len(loader) == 0:
        raise UserInputError(f"the training split has {len(train_set)} shapes, fewer than one batch")
    os.makedirs(args.out, exist_ok=True)  # only now: a refused run leaves no folder behind
    opt = torch.optim.AdamW(param_groups(model, tcfg["weight_decay"]), lr=tcfg["lr"], fused=device.type == "cuda")
    total, warm = tcfg["epochs"] * len(loader), tcfg["warmup_epochs"] * len(loader)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(total, warm))
    state_path = os.path.join(args.out, "train_state.pt")
    start_epoch, history, train_time = 0, [], 0.0
    if args.resume:
        if not os.path.exists(state_path):
            raise UserInputError(f"--resume: {state_path} does not exist")
        st = torch.load(state_path, map_location=device, weights_only=True)
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["optimizer"])
        sched.load_state_dict(st["scheduler"])
        start_epoch, train_time = int(st["epoch"]), float(st["train_time"])
        history = json.loads(st["history"])
        print(f"resumed after epoch {start_epoch}", flush=True)

    amp = device.type == "cuda" and args.amp == "bf16"
    net = torch.compile(model) if args.compile else model   # evaluation below uses the plain module
    aug_gen = torch.Generator(device=device)
    t_start, complete = time.time(), True
    for epoch in range(start_epoch, tcfg["epochs"]):
        t0 = time.time()
        gen.manual_seed(args.seed * 100003 + epoch)
        aug_gen.manual_seed(args.seed * 100003 + epoch + 1)
        model.train()
        # Sums stay on the device: no host sync per step, so the CPU can queue the next step's kernels.
        loss_sum, correct, count = torch.zeros((), device=device), torch.zeros((), device=device), 0
        for batch in loader:
            points, perm = augment(batch["points"].to(device, non_blocking=True), tcfg["aug"], aug_gen)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
                if seg:
                    target = batch["seg"].to(device, non_blocking=True)
                    if perm is not None:
                        target = torch.gather(target, 1, perm)
                    logits = net(points, batch["category"].to(device))
                    loss = F.cross_entropy(logits.float().flatten(0, 1), target.flatten(),
                                           label_smoothing=tcfg["label_smoothing"])
                else:
                    target = batch["label"].to(device, non_blocking=True)
                    logits = net(points)
                    loss = F.cross_entropy(logits.float(), target, label_smoothing=tcfg["label_smoothing"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if tcfg["grad_clip"]:
                torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg["grad_clip"])
            opt.step()
            sched.step()
            loss_sum += loss.detach() * target.numel()
            correct += (logits.argmax(-1) == target).sum()
            count += target.numel()
        epoch_time = time.time() - t0
        train_time += epoch_time
        entry = {"epoch": epoch + 1, "loss": loss_sum.item() / count, "train_acc": 100.0 * correct.item() / count,
                 "lr": opt.param_groups[0]["lr"], "time_s": round(epoch_time, 2)}
        if args.eval_every and (epoch + 1) % args.eval_every == 0 and epoch + 1 < tcfg["epochs"]:
            entry["eval"] = evaluate(model, eval_set, 32, device, progress_enabled=False)
        history.append(entry)
        print(json.dumps(entry), flush=True)
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                    "epoch": epoch + 1, "train_time": train_time, "history": json.dumps(history)}, state_path + ".tmp")
        os.replace(state_path + ".tmp", state_path)
        elapsed = (time.time() - t_start) / 60
        if args.max_minutes and epoch + 1 < tcfg["epochs"] and elapsed + 1.5 * epoch_time / 60 > args.max_minutes:
            complete = False
            print(f"INCOMPLETE: stopped after epoch {epoch + 1}/{tcfg['epochs']} ({elapsed:.1f} min); the weights "
                  f"are saved as they are; run the same command with --resume to finish the schedule", flush=True)
            break

    metrics = {"complete": complete, "task": task, "config": args.config,
               "command": " ".join(shlex.quote(a) for a in [os.path.basename(sys.executable)] + sys.argv),
               "model": dict(cfg["model"]), "data": dcfg, "train": tcfg, "seed": args.seed,
               "parameters": n_params, "epochs_done": len(history), "train_time_s": round(train_time, 1),
               "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
               "versions": {"python": platform.python_version(), "torch": torch.__version__},
               "synthetic": bool(dcfg.get("synthetic")), "history": history}
    if history:
        t0 = time.time()
        metrics["eval_split"] = dcfg.get("eval_split", "test")
        metrics["final"] = evaluate(model, eval_set, int(dict(cfg.get("eval", {}) or {}).get("batch_size", 32)),
                                    device, progress_enabled=False)
        metrics["eval_time_s"] = round(time.time() - t0, 1)
        save_weights(model, os.path.join(args.out, "model.safetensors"))
        if args.fp16:
            save_weights(model, os.path.join(args.out, "model_fp16.safetensors"), torch.float16)
        label = (" (SYNTHETIC data)" if metrics["synthetic"] else "") + ("" if complete else " (INCOMPLETE schedule)")
        print(f"final {metrics['eval_split']}{label}: {json.dumps(metrics['final'])}", flush=True)
    write_json(os.path.join(args.out, "metrics.json"), metrics)
    print(f"wrote {args.out}/metrics.json" + (" and model weights" if history else ""), flush=True)
    return metrics


def main(argv=None):
    args = parse_args(argv)
    return run_cli(train, args)


if __name__ == "__main__":
    sys.exit(main())
