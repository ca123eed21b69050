"""tools/repq_layers.py: refusal of bad input, the official-fold variant on a tiny ViT (no official code needed), and,
where VITQ_OFFICIAL_REPQ names a RepQ-ViT checkout, a real layer-by-layer run on the embedded tiny ViT."""
import os
import sys

import pytest
import timm
import torch

from repo_paths import REPO  # noqa: E402
sys.path.insert(0, os.path.join(REPO, "tools"))
import repq_layers  # noqa: E402
from plugin.quant import set_quant_enabled  # noqa: E402

CONFIG = os.path.join(REPO, "configs/classification/fmnist_vit_tiny.py")
CKPT = os.path.join(REPO, "plugin/assets/fmnist_vit_tiny.safetensors")
OFFICIAL = os.environ.get("VITQ_OFFICIAL_REPQ")


def test_folder_that_is_not_the_checkout(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        repq_layers.main([CONFIG, CKPT, "--official", str(tmp_path)])
    assert exc.value.code == 2
    assert "RepQ-ViT checkout" in capsys.readouterr().err


def test_official_fold_row_is_the_official_fold_recipe():
    """The third row: the folded post-LN quantizers hold fractional zero points (integer in ours) and round before
    adding them; the float network is unchanged (the fold itself: tests/quant/test_repq_official_fold.py)."""
    torch.manual_seed(0)
    fp = timm.create_model("deit_tiny_patch16_224", img_size=32, patch_size=8, num_classes=10, embed_dim=48,
                           depth=2, num_heads=3).eval()
    calib = [torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(1))]
    ours = repq_layers.quantize_ours(fp, calib, 3, 0, official_fold=False)
    variant = repq_layers.quantize_ours(fp, calib, 3, 0, official_fold=True)
    q_ours, q_var = dict(ours.named_modules()), dict(variant.named_modules())
    folded = [n for n in q_ours if n.endswith(("qkv.input_quantizer", "fc1.input_quantizer"))]
    assert len(folded) == 4
    for name in folded:
        z_ours, z_var = q_ours[name].zero_point, q_var[name].zero_point
        assert torch.equal(z_ours, z_ours.round()) and not torch.equal(z_var, z_var.round())
        x = torch.randn(64, 48) * 3
        s, z = q_var[name].scale, q_var[name].zero_point
        expected = ((torch.round(x / s) + z).clamp(0, 7) - z) * s
        assert torch.equal(q_var[name](x), expected)
    set_quant_enabled(ours, False)
    set_quant_enabled(variant, False)
    with torch.no_grad():  # the float network is unchanged by either fold
        torch.testing.assert_close(variant(calib[0]), ours(calib[0]), atol=1e-4, rtol=1e-4)


@pytest.mark.skipif(not OFFICIAL, reason="VITQ_OFFICIAL_REPQ not set")
def test_layers_on_the_embedded_model(capsys):
    assert repq_layers.main([CONFIG, CKPT, "--official", OFFICIAL, "--bits", "4", "--eval-num", "64"]) == 0
    out = capsys.readouterr().out
    for line in ("official RepQ-ViT", "ours (repq)", "ours, official fold", "blocks.0.attn.qkv.input_quantizer"):
        assert line in out
