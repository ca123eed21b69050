"""Calibration forwards that skip the blocks already calibrated.

Calibration sets the quantizers group by group in execution order, each from statistics gathered while everything
upstream is already quantized (plugin.quant.calibrate). Done naively, every group runs the calibration batches from
the model's input up to the group, so a model of L blocks costs O(L^2) block forwards; with RepQ-ViT's site-by-site
order (about six groups per block) and 1,024 images, ViT-L's calibration took minutes for that reason alone.

`BlockSkip` makes it O(L): once block k is calibrated, its output for every calibration batch is computed once and
kept; in later calibration forwards block k returns that output and the blocks before it return their input
unchanged (no compute), while the modules between blocks (patch embedding, patch merging) still run. The result is
the same model: the kept output is what block k computes from the quantized upstream, which no later group changes.

It is used only where that is sound, and the ordinary forward runs otherwise:
- every block runs exactly once per forward and returns a tensor of its input's shape (checked on the first batch),
  so a block that is skipped can hand its input on;
- after each block, the next block's inputs on the first batch are computed with and without skipping; if they differ
  (a block that reads more than the previous block's output, e.g. dense connections), skipping stops there;
- only for groups that sit inside or between blocks and stop the forward after their last module: groups after the
  last block (a head, a detector's neck and RoI heads) may read earlier blocks' outputs (multi-scale features), so they
  run the whole model.
"""
import torch


class StopForward(Exception):
    """Raised from a hook to end a calibration forward early; `CalibContext.run_calib` swallows it per batch."""


class BlockSkip:
    """Patches the forward of every block of `ctx`'s model (until `remove()`); `enabled(True)` makes the next
    calibration forwards skip the finished blocks, `block_done(k)` moves the kept outputs on to block k."""

    def __init__(self, ctx):
        self.ctx = ctx
        self.blocks = [ctx.model.get_submodule(n) for n in ctx.adapter.blocks(ctx.model)]
        self.on = False
        self.kept = -1          # index of the block whose outputs are kept; blocks before it hand their input on
        self.outputs = {}       # batch index -> that block's output
        self.saved = []         # (block, what its instance __dict__ held under "forward", or None)
        self.usable = len(self.blocks) > 1 and self._blocks_chainable()
        if len(self.blocks) > 1 and not self.usable:
            ctx.log("[calibrate] every calibration forward recomputes all blocks: a block runs more than once per "
                    "forward or changes its input's shape")
        if self.usable:
            for j, block in enumerate(self.blocks):
                self._patch(j, block)

    def _blocks_chainable(self):
        """True when, on the first calibration batch, every block runs once and returns a tensor shaped like its
        first input."""
        calls, ok, handles = {}, [True], []
        for j, block in enumerate(self.blocks):
            def hook(mod, args, out, j=j):
                calls[j] = calls.get(j, 0) + 1
                first = args[0] if args else None
                if not (torch.is_tensor(out) and torch.is_tensor(first) and out.shape == first.shape):
                    ok[0] = False
            handles.append(block.register_forward_hook(hook))
        try:
            self.ctx.run_calib(first=1)
        finally:
            for h in handles:
                h.remove()
        return ok[0] and all(calls.get(j) == 1 for j in range(len(self.blocks)))

    def _patch(self, j, block):
        self.saved.append((block, block.__dict__.get("forward")))
        original = block.forward

        def forward(*args, **kwargs):
            if self.on and j == self.kept:
                out = self.outputs[self.ctx.batch_index]
                return out.to(args[0].device, non_blocking=True)  # a no-op unless it waited on the CPU
            if self.on and j < self.kept:
                return args[0]
            return original(*args, **kwargs)
        block.forward = forward

    def _capture(self, j, skipping, first=None, inputs=False):
        """{batch index: block j's output (or, with `inputs`, the tensors it is called with)}, each forward stopped
        right there, with or without skipping, on the `first` N calibration batches (default: all)."""
        seen, kept_bytes, budget = {}, 0, None

        def record(mod, args, kwargs, out=None):
            nonlocal kept_bytes, budget
            if inputs:
                seen[self.ctx.batch_index] = [a.detach() for a in (*args, *kwargs.values()) if torch.is_tensor(a)]
                raise StopForward
            out = out.detach()
            if out.device.type == "cuda":  # kept outputs beyond a quarter of the free GPU memory wait on the CPU
                budget = torch.cuda.mem_get_info(out.device)[0] // 4 if budget is None else budget
                kept_bytes += out.numel() * out.element_size()
                if kept_bytes > budget:
                    out = out.cpu()
            seen[self.ctx.batch_index] = out
            raise StopForward
        block = self.blocks[j]
        handle = (block.register_forward_pre_hook(record, with_kwargs=True) if inputs
                  else block.register_forward_hook(record, with_kwargs=True))
        try:
            self.on = skipping
            self.ctx.run_calib(first=first)
        finally:
            self.on = False
            handle.remove()
        return seen

    def block_done(self, k):
        """Block k is calibrated: keep its output for every calibration batch (one forward that stops after it).
        Then check on the first batch that block k+1 gets the same inputs with skipping as without; if not (a model
        whose blocks read more than the previous block's output), skipping stops for the rest of the calibration."""
        if not self.usable or k >= len(self.blocks) - 1:
            return
        outputs = self._capture(k, skipping=self.kept >= 0)
        if len(outputs) != len(self.ctx.calib.batches):
            self._give_up(f"a calibration batch never reaches block {k}")
            return
        self.kept, self.outputs = k, outputs
        with_skip = self._capture(k + 1, skipping=True, first=1, inputs=True).get(0)
        without = self._capture(k + 1, skipping=False, first=1, inputs=True).get(0)
        if (with_skip is None or without is None or len(with_skip) != len(without)
                or not all(a.shape == b.shape and torch.allclose(a, b, rtol=1e-4, atol=1e-6)
                           for a, b in zip(with_skip, without))):
            self._give_up(f"block {k + 1} reads more than block {k}'s output")

    def _give_up(self, why):
        self.ctx.log(f"[calibrate] calibration forwards recompute all blocks from here on: {why}")
        self.usable, self.kept, self.outputs = False, -1, {}

    def enabled(self, on):
        self.on = bool(on) and self.usable and self.kept >= 0

    def remove(self):
        """Give every block its own forward back and drop the kept outputs."""
        for block, own in self.saved:
            if own is None:
                block.__dict__.pop("forward", None)
            else:
                block.forward = own
        self.saved, self.outputs, self.on, self.kept = [], {}, False, -1
