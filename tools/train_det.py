#!/usr/bin/env python
"""Train an MMDetection detector from a config (the float model that tools/ptq_test.py then quantizes).

    python tools/train_det.py CONFIG --work-dir DIR [--amp] [--verbose] [--cfg-options KEY=VALUE ...]
    torchrun --nproc_per_node 2 tools/train_det.py CONFIG --work-dir DIR --launcher pytorch --auto-scale-lr
    (the same on a machine without CUDA runs CPU processes over gloo: a check of the multi-GPU path)

mmengine's Runner does the training (as mmdet's tools/train.py); at the end the final weights are also written as
WORK_DIR/model_final.safetensors and as a plain state dict, WORK_DIR/model_final.pth, that
`torch.load(weights_only=True)` reads; tools/ptq_test.py takes either (mmengine's own training checkpoints,
epoch_N.pth, hold pickled objects and need --unsafe-load there).

Our choices: the work dir is where the user says (--work-dir, or a work_dir in the config), never a ./work_dirs
folder made in the current directory; the console shows one progress line per epoch and the validation results,
mmengine's full log (environment, config, every logged iteration, pycocotools' tables) goes to the log file in the
work dir, and to the console too with --verbose.
"""
import argparse
import contextlib
import io
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from plugin.errors import ToolParser, UserInputError, nonnegative_int, positive_float, tool_main  # noqa: E402


def parse_args(argv=None):
    from mmengine.config import DictAction
    p = ToolParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config")
    p.add_argument("--work-dir", "--out", dest="work_dir",
                   help="where logs, checkpoints and model_final.* go (required unless the config sets work_dir)")
    p.add_argument("--amp", action="store_true", help="mixed precision (AmpOptimWrapper, fp16)")
    p.add_argument("--auto-scale-lr", action="store_true", help="scale the lr by total batch / auto_scale_lr.base")
    p.add_argument("--resume", nargs="?", const="auto", help="resume from CKPT, or from the latest in work dir")
    p.add_argument("--seed", type=nonnegative_int, default=0)
    p.add_argument("--max-time", type=positive_float, default=None, metavar="SECONDS",
                   help="stop after the last epoch that ends inside this wall-time budget (the epoch count and lr "
                   "schedule stay the config's: set them so training fits; this is a guard, not a schedule)")
    p.add_argument("--fit-schedule", action="store_true",
                   help="with --max-time: after the first two epochs, shorten the run to the epochs that fit the "
                   "budget at the measured epoch time, with the epoch-based lr steps scaled to the new length (so a "
                   "short run still decays)")
    p.add_argument("--cfg-options", nargs="+", action=DictAction, help="override config entries (mmengine syntax)")
    p.add_argument("--verbose", action="store_true", help="mmengine's full log and pycocotools' tables on the console")
    p.add_argument("--launcher", choices=["none", "pytorch"], default="none")
    p.add_argument("--local_rank", "--local-rank", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.fit_schedule and not args.max_time:
        p.error("--fit-schedule needs --max-time")
    os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    return args


def build_cfg(args):
    from plugin.config import load_config
    cfg = load_config(args.config, use_mmengine=True)  # a missing or broken config: one line, not mmengine's trace
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    cfg.launcher = args.launcher
    if args.work_dir:
        cfg.work_dir = args.work_dir
    elif cfg.get("work_dir", None) is None:
        raise UserInputError("say where to write: --work-dir DIR (the config sets no work_dir)")
    if not args.verbose:  # the environment and config dump; the log file gets INFO again in quiet_console
        cfg.log_level = "WARNING"
    if args.amp:
        cfg.optim_wrapper.type = "AmpOptimWrapper"
        cfg.optim_wrapper.loss_scale = "dynamic"
    if args.auto_scale_lr:
        cfg.auto_scale_lr.enable = True
    if args.resume == "auto":
        cfg.resume, cfg.load_from = True, None
    elif args.resume:
        cfg.resume, cfg.load_from = True, args.resume
    cfg.randomness = dict(seed=args.seed)
    return cfg


def init_cpu_dist(cfg):
    """`--launcher pytorch` on a machine without CUDA (torchrun with CPU processes, e.g. to check a multi-GPU config
    before spending GPU time): mmengine's launcher would call torch.cuda.set_device, so the process group is started
    here over gloo (mmengine then skips its own) and DDP wraps the CPU module (device_ids=None)."""
    import torch
    import torch.distributed as dist
    if cfg.launcher != "pytorch" or torch.cuda.is_available() or dist.is_initialized():
        return
    dist.init_process_group(backend="gloo")
    wrapper = dict(cfg.get("model_wrapper_cfg", None) or {})
    wrapper.setdefault("type", "MMDistributedDataParallel")
    wrapper.setdefault("find_unused_parameters", cfg.get("find_unused_parameters", False))
    wrapper["device_ids"] = None
    cfg.model_wrapper_cfg = wrapper


def export_weights(runner, path):
    """The trained weights as {'state_dict', 'meta'} of tensors and plain values only (weights_only-loadable) at
    `path`, and the same tensors as a .safetensors file beside it (no pickle at all; `meta` as JSON in its header)."""
    import mmdet
    import torch
    from mmengine.model import is_model_wrapper
    model = runner.model.module if is_model_wrapper(runner.model) else runner.model
    metainfo = getattr(runner.train_dataloader.dataset, "metainfo", {}) or {}
    meta = {"mmdet_version": mmdet.__version__, "epoch": runner.epoch, "iter": runner.iter,
            "dataset_meta": {k: [list(x) if isinstance(x, tuple) else x for x in v] if isinstance(v, (list, tuple))
                             else v for k, v in metainfo.items() if k in ("classes", "palette")}}
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "meta": meta}, path)
    from safetensors.torch import save_file
    # clone: safetensors refuses tensors that share storage
    save_file({k: v.contiguous().clone() for k, v in state.items()}, os.path.splitext(path)[0] + ".safetensors",
              metadata={"meta": json.dumps(meta)})
    return path


def fit_schedule(runner, epochs):
    """Shorten the training loop to `epochs` and scale every epoch-based scheduler (milestones, end) to the new length,
    so that the lr steps keep their place in the run (e.g. at 3/4 and 11/12 of it)."""
    from collections import Counter
    loop, old = runner.train_loop, runner.max_epochs
    loop._max_epochs, loop._max_iters = epochs, epochs * len(loop.dataloader)
    schedulers = runner.param_schedulers
    for sched in (sum(schedulers.values(), []) if isinstance(schedulers, dict) else schedulers or []):
        if not sched.by_epoch:
            continue
        if hasattr(sched, "milestones"):
            sched.milestones = Counter({max(round(m * epochs / old), 1): n for m, n in sched.milestones.items()})
        if sched.end == old:
            sched.end = epochs


def time_budget_hook(seconds, fit=False):
    """A hook that ends training after the epoch past which the next one would overrun `seconds` of wall time; with
    `fit`, after the second epoch it shortens the whole schedule to the epochs that fit (fit_schedule)."""
    import time
    from mmengine.hooks import Hook

    class TimeBudgetHook(Hook):
        priority = "VERY_LOW"

        def before_train(self, runner):
            self.start = self.last = time.monotonic()

        def after_train_epoch(self, runner):
            from mmengine.dist import broadcast_object_list
            now = time.monotonic()
            epoch_s, self.last = now - self.last, now
            done = runner.epoch + 1  # mmengine counts the epoch up after this hook
            if fit and done == 2:  # the first epoch also holds start-up costs: time the second
                fitted = [min(runner.max_epochs, done + int((seconds - (now - self.start)) / (epoch_s * 1.05)))]
                broadcast_object_list(fitted, src=0)
                if fitted[0] < runner.max_epochs:
                    runner.logger.warning(f"--fit-schedule: {epoch_s:.1f}s per epoch, {fitted[0]} of "
                                          f"{runner.max_epochs} epochs fit {seconds:g}s; lr steps scaled to match")
                    fit_schedule(runner, max(fitted[0], done))
            # Rank 0 decides for every process: ranks that stopped at different epochs would hang in DDP.
            decision = [now - self.start + epoch_s > seconds and done < runner.max_epochs]
            broadcast_object_list(decision, src=0)
            if decision[0]:
                runner.logger.warning(f"--max-time {seconds:g}s: stopping after epoch {done} of "
                                      f"{runner.max_epochs} ({now - self.start:.0f}s spent, {epoch_s:.0f}s per epoch)")
                runner.train_loop.stop_training = True

    return TimeBudgetHook()


def quiet_console(logger):
    """mmengine's logger: warnings on the console, everything from now on in the log file."""
    import logging
    for handler in logger.handlers:
        handler.setLevel(logging.INFO if isinstance(handler, logging.FileHandler) else logging.WARNING)


def progress_hook(out):
    """A hook that writes one line per training epoch (mean losses, lr, elapsed time and ETA) and one per
    validation (box and mask mAP) to `out`, on the main process only."""
    import time
    from collections import defaultdict
    from mmengine.dist import is_main_process
    from mmengine.hooks import Hook

    class ProgressHook(Hook):
        priority = "LOW"

        def before_train(self, runner):
            self.start = time.monotonic()

        def before_train_epoch(self, runner):
            self.sums, self.count = defaultdict(float), 0

        def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
            for key, value in (outputs or {}).items():
                if key.startswith("loss"):
                    self.sums[key] += float(value.detach()) if hasattr(value, "detach") else float(value)
            self.count += 1

        def after_train_epoch(self, runner):
            if not is_main_process():
                return
            done, total = runner.epoch + 1, runner.max_epochs  # mmengine counts the epoch up after this hook
            elapsed = time.monotonic() - self.start
            losses = "  ".join(f"{k} {v / max(self.count, 1):.3f}" for k, v in self.sums.items())
            lr = runner.optim_wrapper.get_lr()["lr"][0]
            print(f"epoch {done}/{total}  {losses}  lr {lr:.2e}  {elapsed:.0f}s elapsed, "
                  f"ETA {elapsed / done * (total - done):.0f}s", file=out, flush=True)

        def after_val_epoch(self, runner, metrics=None):
            if is_main_process() and metrics:
                shown = "  ".join(f"{k.split('/')[-1]} {100 * v:.1f}" for k, v in metrics.items()
                                  if k.endswith(("bbox_mAP", "bbox_mAP_50", "segm_mAP", "segm_mAP_50")))
                print(f"validation after epoch {runner.epoch}: {shown}  (percent)", file=out, flush=True)

    return ProgressHook()


@tool_main
def main(argv=None):
    args = parse_args(argv)
    import plugin.detection  # noqa: F401  (mmcv-lite ops and QuantSwin, before the runner imports mmdet's models)
    from mmengine.dist import is_main_process
    from mmengine.runner import Runner
    cfg = build_cfg(args)
    init_cpu_dist(cfg)
    runner = Runner.from_cfg(cfg)
    if args.max_time:
        runner.register_hook(time_budget_hook(args.max_time, fit=args.fit_schedule))
    if args.verbose:
        runner.train()
    else:
        quiet_console(runner.logger)
        runner.register_hook(progress_hook(sys.stdout))
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools' prints; the hook writes to the real stdout
            runner.train()
    if is_main_process():
        path = export_weights(runner, os.path.join(runner.work_dir, "model_final.pth"))
        print(f"final weights: {os.path.splitext(path)[0]}.safetensors (and {os.path.basename(path)}, "
              "weights_only-loadable)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
