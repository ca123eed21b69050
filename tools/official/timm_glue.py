"""Glue that lets the RepQ-ViT, I&S-ViT and PTQ4ViT codes (written for timm 0.4–0.9) run on current timm.

The attention and MLP modules of the float model get classes whose forward is the official attention forward (a class
method, so the `copy.deepcopy` of the model that I&S-ViT keeps as its float teacher still runs its own, unquantized
modules), and the official entry function runs unmodified with its data and model builders pointed at ours. Only
what the glue must change is changed; all three codes keep the same three functions (`attention_forward`,
`window_attention_forward`, `MatMul`) in one module of theirs.
"""
from .harness import is_swin


def _drop_identity(module, attr, where, title):
    """Remove an unused (Identity) submodule; a real one means the official forward would skip a layer."""
    import torch.nn as nn
    from plugin.errors import UserInputError
    sub = getattr(module, attr, None)
    if sub is not None and not isinstance(sub, nn.Identity):
        raise UserInputError(f"the official {title} code has no {attr} in {where}; this model cannot run there")
    module._modules.pop(attr, None)


def glue_for_official(model, official_models, title):
    """Make a current-timm ViT/Swin look like the timm of the official code (in place); `official_models` is the
    official module holding `attention_forward`, `window_attention_forward` and `MatMul` (RepQ-ViT's and I&S-ViT's
    utils/build_model.py, PTQ4ViT's utils/models.py: the same three functions).

    - Attention / WindowAttention: class swapped for one whose forward is the official function (bound method) and
      which holds the official `matmul1`/`matmul2` modules; timm's unused q_norm/k_norm/norm Identity modules are
      dropped, because RepQ-ViT's reparameterisation loop takes every module named '*norm*' for a LayerNorm.
    - Mlp: the Identity `norm` between act and fc2 is dropped for the same reason.
    - Swin PatchMerging: RepQ-ViT's channel-wise quantizer expects (B, N, C) inputs; timm now passes (B, H, W, C).
    - parameters require gradients, as in the timm models the official code builds.
    """
    import torch.nn as nn
    from timm.layers import Attention, Mlp
    from timm.models.swin_transformer import PatchMerging, WindowAttention

    ob = official_models

    class OfficialAttention(Attention):
        def forward(self, x, attn_mask=None, **kwargs):
            if attn_mask is not None:
                raise ValueError(f"attention masks are not supported by the official {title} forward")
            return ob.attention_forward(self, x)

    class OfficialWindowAttention(WindowAttention):
        def forward(self, x, mask=None):
            return ob.window_attention_forward(self, x, mask)

    class OfficialMlp(Mlp):
        def forward(self, x):
            x = self.drop1(self.act(self.fc1(x)))
            return self.drop2(self.fc2(x))

    class OfficialPatchMerging(PatchMerging):
        def forward(self, x):
            B, H, W, C = x.shape
            x = x.reshape(B, H // 2, 2, W // 2, 2, C).permute(0, 1, 3, 4, 2, 5).flatten(3)
            x = self.reduction(self.norm(x.reshape(B, (H // 2) * (W // 2), 4 * C)))
            return x.reshape(B, H // 2, W // 2, -1)

    for name, m in list(model.named_modules()):
        if isinstance(m, Attention):
            for attr in ("q_norm", "k_norm", "norm"):
                _drop_identity(m, attr, name, title)
            m.__class__ = OfficialAttention
        elif isinstance(m, WindowAttention):
            m.__class__ = OfficialWindowAttention
        elif isinstance(m, Mlp) and type(m) is Mlp:
            _drop_identity(m, "norm", name, title)
            m.__class__ = OfficialMlp
        elif isinstance(m, PatchMerging):
            m.__class__ = OfficialPatchMerging
        else:
            continue
        if isinstance(m, (Attention, WindowAttention)):
            m.matmul1, m.matmul2 = ob.MatMul(), ob.MatMul()
    # RepQ-ViT's reparameterisation walks model.blocks (ViT) or model.layers (Swin) for modules named '*norm*'.
    walked = getattr(model, "layers", None) if is_swin(model) else getattr(model, "blocks", None)
    for name, m in walked.named_modules():
        if "norm" in name and not isinstance(m, nn.LayerNorm):
            from plugin.errors import UserInputError
            raise UserInputError(f"{name} ({type(m).__name__}) would be taken for a LayerNorm by the official code")
    model.requires_grad_(True)
    return model.eval()

