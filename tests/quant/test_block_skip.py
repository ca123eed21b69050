"""plugin.quant.block_skip: calibration forwards skip the blocks already calibrated, and give the same model."""
import copy

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

from plugin.quant import CalibData, get_recipe, quantize
from timm_toys import build


def _calib(n_batches=3, seed=3):
    g = torch.Generator().manual_seed(seed)
    return CalibData([torch.randn(2, 3, 32, 32, generator=g) for _ in range(n_batches)], lambda m, b: m(b))


def _quantize_both(model, method, logs=None):
    """The model quantized with and without skipping, and how often the first block's norm1 ran in each; the log
    lines of the skipping run go to `logs`."""
    out = {}
    for skip in (True, False):
        m = copy.deepcopy(model)
        calls = [0]
        norm1 = next(mod for name, mod in m.named_modules() if name.endswith("norm1"))  # a LayerNorm, never swapped
        norm1.register_forward_pre_hook(lambda *a: calls.__setitem__(0, calls[0] + 1))
        log = (lambda *a: logs.append(" ".join(map(str, a)))) if (skip and logs is not None) else (lambda *a: None)
        quantize(m, get_recipe(method, 4, 4), _calib(), log=log, skip_finished_blocks=skip)
        assert not any("forward" in mod.__dict__ for mod in m.modules()), "a block kept its patched forward"
        out[skip] = m, calls[0]
    return out


def _assert_same(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        assert torch.equal(a(x), b(x))


@pytest.mark.parametrize("arch,method", [("vit", "repq"), ("swin", "repq"), ("vit", "minmax")])
def test_skipping_gives_the_same_model_with_fewer_block_forwards(arch, method):
    model = build(arch, depth=4) if arch == "vit" else build(arch)
    logs = []
    out = _quantize_both(model, method, logs)
    _assert_same(out[True][0], out[False][0])
    assert not any("recompute" in line for line in logs)
    # block 0 stops running once it is calibrated and its outputs are kept
    assert out[True][1] < out[False][1]


class DenseViT(VisionTransformer):
    """Block 2 reads the sum of blocks 0 and 1: skipping block 0 (handing its input on) would change block 2's
    input, which the check on the first batch must catch."""

    def forward_features(self, x, **kwargs):
        x = self._pos_embed(self.patch_embed(x))
        h0 = self.blocks[0](x)
        h1 = self.blocks[1](h0)
        h = self.blocks[2](h0 + h1)
        for blk in self.blocks[3:]:
            h = blk(h)
        return self.norm(h)


def test_blocks_that_read_more_than_the_previous_block_are_not_skipped():
    torch.manual_seed(0)
    model = DenseViT(img_size=32, patch_size=8, embed_dim=64, depth=4, num_heads=4, num_classes=10).eval()
    logs = []
    out = _quantize_both(model, "repq", logs)
    _assert_same(out[True][0], out[False][0])
    assert any("block 2 reads more than block 1's output" in line for line in logs)
