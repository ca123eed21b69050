"""The float reference of reconstruction: the model run as the float network (quantizers and compensation branches
off, parameters as they were before any pass trained or edited them)."""
from contextlib import contextmanager

import torch

from ..attach import set_submodule
from ..errors import CalibrationError
from ..quantizers import Quantizer


def _is_switch(m):
    return isinstance(m, Quantizer) or getattr(m, "is_compensation", False)


class FloatReference:
    """Runs the model as the float network: every quantizer and compensation branch off and, with `snapshot=True`,
    every parameter back at its value when the reference was made.

    The snapshot matters once reconstruction trains weights or a reparameterisation edits them: the live parameters
    then no longer describe the float model. Parameters created after the snapshot (a bias a reparameterisation added)
    take their neutral value (bias 0, norm weight 1) while the reference runs. `originals` ({name: module}) are
    modules a pass replaced in the float network (APHQ-ViT's GELU MLPs): they are put back while the reference runs.
    """

    def __init__(self, model, snapshot=False, originals=None):
        self.model = model
        self.originals = dict(originals or {})  # {name: original float module}, swapped in while the reference runs
        self.params = None
        if snapshot:
            clones = {}
            self.params = {}
            for name, p in model.named_parameters(remove_duplicate=False):
                if id(p) not in clones:
                    clones[id(p)] = p.detach().clone()
                self.params[name] = clones[id(p)]

    @contextmanager
    def active(self):
        switches = [m for m in self.model.modules() if _is_switch(m)]
        flags = [m.enabled for m in switches]
        swapped, replaced = [], []
        try:
            for m in switches:
                m.enabled = False
            if self.params is not None:
                self._swap_in(swapped)
            for name, module in self.originals.items():  # after the parameters: originals keep their own
                replaced.append((name, self.model.get_submodule(name)))
                set_submodule(self.model, name, module)
            yield
        finally:
            for name, module in reversed(replaced):
                set_submodule(self.model, name, module)
            for p, data in reversed(swapped):
                p.data = data
            for m, flag in zip(switches, flags):
                m.enabled = flag

    def _swap_in(self, swapped):
        # compensation branches and quantizers are off while the reference runs: their parameters (scales a
        # reconstruction made trainable) keep their values
        skip = [n + "." for n, m in self.model.named_modules() if _is_switch(m)]
        done = set()
        for mod_name, mod in self.model.named_modules(remove_duplicate=False):
            for pname, p in mod._parameters.items():
                full = f"{mod_name}.{pname}" if mod_name else pname
                if p is None or id(p) in done or any(full.startswith(s) for s in skip):
                    continue
                done.add(id(p))
                if full in self.params:
                    value = self.params[full]
                elif pname == "bias":
                    value = torch.zeros_like(p)
                elif pname == "weight" and hasattr(mod, "normalized_shape"):
                    value = torch.ones_like(p)
                else:
                    raise CalibrationError(f"float reference: parameter {full} appeared after the snapshot and has no "
                                           f"neutral value")
                swapped.append((p, p.data))
                p.data = value


def float_reference(ctx):
    """The context's float reference, made (with a parameter snapshot) by the first pass that asks for it, so a later
    pass still compares with the float model after an earlier one trained or merged weights. When a "pre" pass
    replaced modules, quantize() makes it before any quantizer or fold (plugin.quant.calibrate)."""
    ref = getattr(ctx, "float_reference", None)
    if ref is None:
        ref = ctx.float_reference = FloatReference(ctx.model, snapshot=True,
                                                   originals=getattr(ctx, "float_originals", None))
    return ref


__all__ = ["FloatReference", "float_reference"]
