"""Run a reconstruction pass on a model quantize() already returned (tests only: the library runs passes inside
quantize())."""
from plugin.quant.adapter import find_adapter
from plugin.quant.calibrate import CalibContext, Site
from plugin.quant.passes import pass_config
from plugin.quant.quant_state import require_state
from plugin.quant.spec import Role


def context_for(model, calib, log=print, seed=0):
    """A CalibContext for a quantized model (quantize() or load_quantized()), to run passes on it; they record into
    the model's QuantState."""
    qstate = require_state(model, "context_for")
    recipe = qstate.recipe
    adapter = find_adapter(model, qstate.adapter)
    consumers = {c for _, cs in adapter.norm_consumers(model) for c in cs}
    sites = [Site(name, model.get_submodule(name), Role(role), post_ln=name in consumers)
             for name, role in adapter.roles(model).items() if Role(role) not in recipe.float_roles]
    return CalibContext(model, recipe, calib, adapter, sites, log, seed=seed, state=qstate)


def run_pass(ctx, spec):
    """Run one pass given as a config or a recipe entry ({"type": name, **options})."""
    return pass_config(spec).run(ctx)
