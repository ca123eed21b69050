"""Train a classification config's timm model from scratch on a small data set, for use as a PTQ reference model.

    python tools/train_cls.py configs/classification/cifar10_vit.py --data-path .devdata/cifar10_jpeg_packed.npz \
        --out work_dirs/cifar10_vit --device cuda --amp

The whole training split is decoded once into a uint8 tensor on the device; augmentation (random crop with zero
padding, horizontal flip, Mixup/CutMix) runs on batches of that tensor, so no data loader is involved. With an input
size (the config's `data.img_size`, or --img-size) each batch is upscaled on the device after the crop (bilinear, as
plugin.classification.data does for the evaluation in tools/ptq_test.py). The recipe (epochs, learning rate,
augmentation) comes from the config's `train` dict; command-line options override it. --max-time stops after the
epoch that crosses a wall-time budget (the weights are still saved and evaluated); --fit-schedule shortens the
epoch count to what fits that budget, so that the cosine schedule still ends at min_lr.
Writes DIR/model.safetensors (the state dict) and DIR/metrics.json (top-1 on the full test split of the weights as
saved, the recipe, the wall time and the command line).

Needs torch, timm, numpy, pillow and safetensors only (no mmengine: plugin.config falls back to its plain loader).
"""
import contextlib
import json
import math
import os
import shlex
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from plugin.errors import ToolParser  # noqa: E402

from plugin.config import load_config  # noqa: E402
from plugin.errors import (UserInputError, check_settings, fraction, nonnegative_float, nonnegative_int,  # noqa: E402
                           positive_float, positive_int, run_cli)
from plugin.classification import data as cls_data  # noqa: E402
from plugin.classification import fashion_mnist  # noqa: E402

# Recipe defaults; a config's `train` dict and then the command line override them.
DEFAULTS = dict(data=None, epochs=100, batch_size=256, lr=1e-3, min_lr=1e-5, weight_decay=0.05, warmup_epochs=5,
                label_smoothing=0.1, crop_padding=4, hflip=False, mixup=0.0, cutmix=0.0, mix_prob=1.0,
                drop_path=0.0, grad_clip=None, eval_every=10)
# What each recipe value may be, on the command line (--epochs …) and in a config's `train` dict alike.
RECIPE_TYPES = dict(epochs=positive_int, batch_size=positive_int, lr=positive_float, min_lr=nonnegative_float,
                    weight_decay=nonnegative_float, warmup_epochs=nonnegative_float, label_smoothing=fraction,
                    crop_padding=nonnegative_int, mixup=nonnegative_float, cutmix=nonnegative_float, mix_prob=fraction,
                    drop_path=fraction, grad_clip=positive_float, eval_every=positive_int)
RECIPE_HELP = dict(lr="peak learning rate of AdamW", mixup="Mixup Beta alpha (0: off)",
                   cutmix="CutMix Beta alpha (0: off)", drop_path="stochastic depth rate while training",
                   eval_every="evaluate on the test split every N epochs")


def parse_args(argv=None):
    p = ToolParser(description=__doc__.split("\n\n")[0])
    p.add_argument("config", help="classification config (configs/classification/*.py)")
    p.add_argument("--out", required=True, help="output folder for model.safetensors and metrics.json")
    p.add_argument("--data", choices=["fashion_mnist", "cifar10"], help="training data (default: the config's)")
    p.add_argument("--data-path", help="Fashion-MNIST folder of idx .gz files, or the packed CIFAR-10 .npz "
                                       "(default: Debian's Fashion-MNIST folder / the config's data path)")
    for option, kind in RECIPE_TYPES.items():
        if option != "data":
            p.add_argument("--" + option.replace("_", "-"), type=kind, help=RECIPE_HELP.get(option))
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    p.add_argument("--seed", type=nonnegative_int, default=0)
    p.add_argument("--amp", action="store_true", help="bf16 autocast (CUDA only)")
    p.add_argument("--compile", action="store_true", help="torch.compile the training forward/backward")
    p.add_argument("--half", action="store_true", help="save the weights as float16 (top-1 is measured on those)")
    p.add_argument("--img-size", type=positive_int, metavar="N",
                   help="train and test at N x N pixels: each batch is upscaled on the device (bilinear); default: the "
                   "config's data.img_size, else the stored size")
    p.add_argument("--max-time", type=positive_float, metavar="SECONDS",
                   help="stop after the epoch during which the training loop passes SECONDS of wall time; the weights "
                   "are saved and evaluated as usual (data loading, the final evaluation and saving come on top)")
    p.add_argument("--fit-schedule", action="store_true",
                   help="with --max-time: after the second epoch (the first includes compiling and warm-up), shorten "
                   "the epoch count to what fits the budget at the measured epoch time, so the cosine schedule "
                   "still decays to min_lr; never lengthens it")
    p.add_argument("--threads", type=positive_int, help="CPU threads for torch")
    p.add_argument("--train-num", type=positive_int,
                   help="train on this many images only, a seeded random subset (smoke tests)")
    p.add_argument("--test-num", type=positive_int,
                   help="test on this many images only, a seeded random subset (smoke tests)")
    args = p.parse_args(argv)
    if args.fit_schedule and not args.max_time:
        p.error("--fit-schedule needs --max-time")
    return args


def recipe_from(cfg, args):
    recipe = dict(DEFAULTS)
    unknown = set(cfg.get("train", {})) - set(DEFAULTS)
    if unknown:
        raise UserInputError(f"unknown keys in the config's train dict: {sorted(unknown)}")
    recipe.update(cfg.get("train", {}))
    for key in DEFAULTS:
        value = getattr(args, key, None)
        if value is not None:
            recipe[key] = value
    if recipe["data"] is None:
        recipe["data"] = {"cifar10_packed": "cifar10"}.get(cfg["data"].get("type"))
    if recipe["data"] is None:
        raise UserInputError("say which training data to use: --data fashion_mnist|cifar10")
    check_settings(recipe, RECIPE_TYPES, f"{args.config}: train")
    return recipe


def load_train_test(recipe, data_cfg, data_path):
    """uint8 NCHW train and test images with int64 labels, plus the normalisation the config evaluates with."""
    if recipe["data"] == "fashion_mnist":
        root = data_path or fashion_mnist.FASHION_MNIST_DIR
        splits = [fashion_mnist.load_fashion_mnist(root, s) for s in ("train", "test")]
        splits = [(x[:, None], y) for x, y in splits]
        default_mean, default_std = fashion_mnist.FASHION_MNIST_MEAN, fashion_mnist.FASHION_MNIST_STD
    else:
        path = data_path or data_cfg.get("path")
        if not path:
            raise UserInputError("give the packed CIFAR-10 file with --data-path")
        splits = []
        for split in ("train", "test"):
            data, offsets, labels, _ = cls_data.load_cifar10_packed(path, split)
            images = np.stack([cls_data.decode_jpeg(data, offsets, i) for i in range(len(labels))])
            splits.append((images.transpose(0, 3, 1, 2), labels))
        default_mean, default_std = cls_data.CIFAR10_MEAN, cls_data.CIFAR10_STD
    mean = tuple(data_cfg.get("mean", default_mean))
    std = tuple(data_cfg.get("std", default_std))
    return splits, mean, std


def random_crop_flip(x, padding, hflip, gen):
    """Random crops of zero-padded uint8 NCHW images (and random horizontal flips), as one gather on the device."""
    n, c, h, w = x.shape
    if padding:
        x = F.pad(x, (padding,) * 4)
        dy = torch.randint(0, 2 * padding + 1, (n, 1), device=x.device, generator=gen)
        dx = torch.randint(0, 2 * padding + 1, (n, 1), device=x.device, generator=gen)
        rows = (dy + torch.arange(h, device=x.device))[:, None, :, None]
        cols = (dx + torch.arange(w, device=x.device))[:, None, None, :]
        batch_idx = torch.arange(n, device=x.device)[:, None, None, None]
        channel_idx = torch.arange(c, device=x.device)[None, :, None, None]
        x = x[batch_idx, channel_idx, rows, cols]
    if hflip:
        flip = torch.rand(n, device=x.device, generator=gen) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
    return x


def mix_batch(x, targets, recipe, rng):
    """Mixup or CutMix (one of them per batch, each with equal odds when both are on) against the reversed batch."""
    alphas = [(name, recipe[name]) for name in ("mixup", "cutmix") if recipe[name] > 0]
    if not alphas or rng.random_sample() >= recipe["mix_prob"]:
        return x, targets
    name, alpha = alphas[rng.randint(len(alphas))]
    lam = float(rng.beta(alpha, alpha))
    if name == "mixup":
        x = x.mul(lam).add_(x.flip(0), alpha=1 - lam)
    else:
        h, w = x.shape[-2:]
        ch, cw = int(h * math.sqrt(1 - lam)), int(w * math.sqrt(1 - lam))
        cy, cx = rng.randint(h), rng.randint(w)
        y0, y1, x0, x1 = max(cy - ch // 2, 0), min(cy + ch // 2, h), max(cx - cw // 2, 0), min(cx + cw // 2, w)
        x = x.clone()
        x[..., y0:y1, x0:x1] = x.flip(0)[..., y0:y1, x0:x1]
        lam = 1 - (y1 - y0) * (x1 - x0) / (h * w)
    return x, targets.mul(lam).add_(targets.flip(0), alpha=1 - lam)


def lr_at(step, total, warmup, recipe):
    if step < warmup:
        return recipe["lr"] * (step + 1) / warmup
    t = (step - warmup) / max(total - warmup, 1)
    return recipe["min_lr"] + 0.5 * (recipe["lr"] - recipe["min_lr"]) * (1 + math.cos(math.pi * t))


@torch.no_grad()
def evaluate(model, images, labels, mean, std, autocast, batch_size=1000, img_size=None):
    model.eval()
    correct = torch.zeros((), dtype=torch.long, device=images.device)
    for i in range(0, len(images), batch_size):
        x = cls_data.resize_images(normalize(images[i:i + batch_size], mean, std), img_size)
        with autocast():
            correct += (model(x).argmax(-1) == labels[i:i + batch_size]).sum()
    model.train()
    return 100.0 * correct.item() / len(images)


def _random_subset(split, num, seed):
    if num is None:
        return split
    if not 1 <= num <= len(split[1]):
        raise UserInputError(f"cannot take {num} images of a split of {len(split[1])}")
    idx = np.sort(np.random.RandomState(seed).choice(len(split[1]), num, replace=False))
    return split[0][idx], split[1][idx]


def normalize(x_uint8, mean, std):
    return (x_uint8.float() / 255 - mean) / std


def check_model_input_size(model, size):
    """A timm model built for a fixed input size (strict patch embedding) must be trained at that size."""
    pe = getattr(model, "patch_embed", None)
    built = getattr(pe, "img_size", None)
    if built is None or not getattr(pe, "strict_img_size", False) or getattr(pe, "dynamic_img_size", False):
        return
    if tuple(built) != tuple(size):
        raise UserInputError(f"the model is built for {built[0]}x{built[1]} inputs but would be trained at "
                             f"{size[0]}x{size[1]}: make model.kwargs.img_size and data.img_size (or --img-size) "
                             f"agree")


def fitted_epochs(epochs, done, elapsed, epoch_s, max_time):
    """The epoch count that ends inside `max_time` at `epoch_s` per further epoch, `done` epochs and `elapsed` seconds
    in; at least `done`, at most `epochs`."""
    fit = done + int(max(max_time - elapsed, 0.0) // max(epoch_s, 1e-9))
    return max(done, min(epochs, fit))


def main(argv=None):
    """The exit code: 0, or 2 with one error line."""
    return run_cli(train, parse_args(argv))


def train(args):
    """Train as `args` (parse_args) say; returns the metrics written to OUT/metrics.json."""
    import safetensors.torch
    import timm

    t_start = time.time()
    cfg = load_config(args.config)
    if cfg.get("task") != "classification":
        raise UserInputError(f"{args.config} is not a classification config (task={cfg.get('task')!r})")
    recipe = recipe_from(cfg, args)
    try:
        device = torch.device(args.device)
    except RuntimeError:
        raise UserInputError(f"--device: not a device name: {args.device!r} (cpu, cuda, cuda:1 …)") from None
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.RandomState(args.seed)
    gen = torch.Generator(device=device).manual_seed(args.seed)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    use_amp = args.amp and device.type == "cuda"

    def autocast():
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp)

    img_size = cls_data.parse_img_size(args.img_size if args.img_size is not None else cfg["data"].get("img_size"),
                                       "--img-size" if args.img_size is not None else "data.img_size")
    (train, test), mean, std = load_train_test(recipe, cfg["data"], args.data_path)
    cls_data.check_upscale(train[0].shape[-2:], img_size, "--img-size" if args.img_size is not None else
                           "data.img_size")
    train, test = _random_subset(train, args.train_num, args.seed), _random_subset(test, args.test_num, args.seed)
    x_train, y_train, x_test, y_test = (torch.from_numpy(np.ascontiguousarray(a)).to(device) for a in (*train, *test))
    mean_t = torch.tensor(mean, device=device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, device=device).view(1, -1, 1, 1)
    num_classes = int(cfg["model"].get("kwargs", {}).get("num_classes", int(y_train.max()) + 1))
    print(f"data {recipe['data']}: train {tuple(x_train.shape)}, test {tuple(x_test.shape)}, "
          f"loaded in {time.time() - t_start:.1f}s"
          + (f"; batches upscaled to {img_size[0]}x{img_size[1]} on {device}" if img_size else ""), flush=True)
    # Evaluation batches: 1000 stored images, or a training batch's worth once upscaled (memory grows with the area).
    eval_batch = 1000 if img_size is None else recipe["batch_size"]

    model_kwargs = dict(cfg["model"].get("kwargs", {}))
    if recipe["drop_path"]:
        model_kwargs["drop_path_rate"] = recipe["drop_path"]
    model = timm.create_model(cfg["model"]["name"], pretrained=False, **model_kwargs).to(device)
    print(f"model {cfg['model']['name']} {model_kwargs}: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M "
          f"parameters", flush=True)
    check_model_input_size(model, tuple(img_size or x_train.shape[-2:]))
    # No weight decay on biases, norms, and what the model itself lists (position embeddings, tokens, bias tables).
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    decay = [p for n, p in model.named_parameters() if p.ndim > 1 and n not in skip]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1 or n in skip]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": recipe["weight_decay"]},
                                   {"params": no_decay, "weight_decay": 0.0}],
                                  lr=recipe["lr"], betas=(0.9, 0.999), fused=device.type == "cuda")
    train_model = torch.compile(model) if args.compile else model

    def train_step(x, targets):
        with autocast():
            logits = train_model(x)
        loss = torch.sum(-targets * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if recipe["grad_clip"]:
            torch.nn.utils.clip_grad_norm_(model.parameters(), recipe["grad_clip"])
        optimizer.step()
        return loss.detach()

    batch, n_train = recipe["batch_size"], len(x_train)
    if batch > n_train:
        raise UserInputError(f"batch size {batch} exceeds the {n_train} training images")
    steps_per_epoch = n_train // batch
    total_steps = steps_per_epoch * recipe["epochs"]
    warmup_steps = int(recipe["warmup_epochs"] * steps_per_epoch)
    smooth = recipe["label_smoothing"]
    history = []
    model.train()
    t_train = time.time()
    step = 0
    epochs = planned_epochs = recipe["epochs"]
    stopped_early = False
    epoch = 0
    while epoch < epochs:
        epoch += 1
        t_epoch = time.time()
        order = torch.randperm(n_train, device=device, generator=gen)
        loss_sum = torch.zeros((), device=device)
        for i in range(steps_per_epoch):
            idx = order[i * batch:(i + 1) * batch]
            x = normalize(random_crop_flip(x_train[idx], recipe["crop_padding"], recipe["hflip"], gen), mean_t, std_t)
            x = cls_data.resize_images(x, img_size)
            targets = F.one_hot(y_train[idx], num_classes).float().mul_(1 - smooth).add_(smooth / num_classes)
            x, targets = mix_batch(x, targets, recipe, rng)
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, total_steps, warmup_steps, recipe)
            loss_sum += train_step(x, targets)
            step += 1
        epoch_s = time.time() - t_epoch
        line = (f"epoch {epoch}/{epochs} loss {loss_sum.item() / steps_per_epoch:.4f} "
                f"lr {optimizer.param_groups[0]['lr']:.2e} time {epoch_s:.1f}s "
                f"total {time.time() - t_train:.0f}s")
        elapsed, note = time.time() - t_train, ""
        if args.max_time and elapsed >= args.max_time and epoch < epochs:
            stopped_early, epochs = True, epoch
            note = f"; --max-time {args.max_time:g}s passed: stopping after this epoch"
        elif args.fit_schedule and epoch == 2 and epochs > 2:
            fit = fitted_epochs(epochs, epoch, elapsed, epoch_s, args.max_time)
            if fit < epochs:
                note = f"; --fit-schedule: {fit} epochs fit {args.max_time:g}s at {epoch_s:.1f}s each"
                epochs, total_steps = fit, steps_per_epoch * fit
        if epoch % recipe["eval_every"] == 0 or epoch == epochs:
            top1 = evaluate(model, x_test, y_test, mean_t, std_t, autocast, eval_batch, img_size)
            history.append({"epoch": epoch, "top1": top1})
            line += f" test top-1 {top1:.2f}"
        print(line + note, flush=True)
    train_time = time.time() - t_train

    # Measure the weights exactly as saved (rounded to float16 with --half), in float32 as the PTQ runner uses them.
    state = {k: v.detach().to("cpu", torch.float16 if args.half and v.is_floating_point() else v.dtype).contiguous()
             for k, v in model.state_dict().items()}
    model.load_state_dict({k: v.to(device) for k, v in state.items()})
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    top1 = evaluate(model, x_test, y_test, mean_t, std_t, contextlib.nullcontext, eval_batch, img_size)
    os.makedirs(args.out, exist_ok=True)
    safetensors.torch.save_file(state, os.path.join(args.out, "model.safetensors"))
    metrics = {
        "top1": round(top1, 2), "split": "test", "num_test": len(x_test), "config": args.config,
        "model": cfg["model"]["name"], "model_kwargs": dict(cfg["model"].get("kwargs", {})),
        "dtype": "float16" if args.half else "float32", "epochs": epoch, "epochs_planned": planned_epochs,
        "img_size": list(img_size) if img_size else None, "max_time_s": args.max_time,
        "fit_schedule": args.fit_schedule, "stopped_by_max_time": stopped_early, "recipe": recipe,
        "seed": args.seed, "amp": use_amp, "compile": args.compile,
        "train_time_s": round(train_time, 1), "wall_time_s": round(time.time() - t_start, 1),
        "device": (torch.cuda.get_device_name(device) if device.type == "cuda"
                   else f"cpu ({torch.get_num_threads()} threads)"),
        "torch": torch.__version__, "timm": timm.__version__, "history": history,
        "command": " ".join(shlex.quote(a) for a in ["python", os.path.relpath(sys.argv[0])] + sys.argv[1:]),
    }
    with open(os.path.join(args.out, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
    print(f"final test top-1 {top1:.2f} ({len(x_test)} images, {metrics['dtype']} weights); "
          f"training {train_time:.0f}s, wall {metrics['wall_time_s']:.0f}s; wrote {args.out}", flush=True)
    return metrics


if __name__ == "__main__":
    sys.exit(main())
