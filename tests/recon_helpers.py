"""Run a reconstruction pass on a model quantize() already returned (tests only: the library runs passes inside
quantize())."""
from plugin.quant.adapter import find_adapter
from plugin.quant.calibrate import CalibContext, Site
from plugin.quant.passes import pass_config
from plugin.quant.quant_state import require_state


def context_for(model, calib, log=print, seed=0):
    """A CalibContext for a quantized model (quantize() or load_quantized()), to run passes on it; they record into
    the model's QuantState."""
    qstate = require_state(model, "context_for")
    recipe = qstate.recipe
    adapter = find_adapter(model, qstate.adapter)
    plan = qstate.plan
    sites = [Site(name, model.get_submodule(name), p.role, post_ln=p.post_ln) for name, p in plan.quantized()]
    return CalibContext(model, recipe, calib, adapter, sites, log, seed=seed, state=qstate, plan=plan)


def run_pass(ctx, spec):
    """Run one pass given as a config or a recipe entry ({"type": name, **options})."""
    return pass_config(spec).run(ctx)
