"""The methods, one package each: its quantizers, recipes and passes, registered by name when imported. A method
imports only the core (plugin.quant) and the reconstruction engine (plugin.quant.recon), never another method; what
two methods share lives there (e.g. I&S-ViT's `sos` pass in recon, used by DopQ-ViT with its own channel fold)."""
from . import minmax, ptq4vit, repq, dopq, isvit, aiqvit, aphq, fimaq, relu_fisher  # noqa: F401  (registration)
