"""tools/recon_reference.py on the embedded model: the reconstruction reference of a folding recipe with APHQ-ViT's
MLP step is the float model (exit 0); a reference that keeps a replaced module out is reported (exit 1)."""
import os
import sys

from repo_paths import REPO

sys.path.insert(0, os.path.join(REPO, "tools"))
import recon_reference  # noqa: E402

CONFIG = os.path.join(REPO, "configs/classification/fmnist_vit_tiny.py")
CKPT = os.path.join(REPO, "plugin/assets/fmnist_vit_tiny.safetensors")
ARGS = [CONFIG, CKPT, "--method", "aphq", "--bits", "3", "--pre-iters", "2", "--calib-num", "8",
        "--cfg-options", "data.eval_num=64"]


def test_the_reference_of_a_folding_mlp_recipe_is_the_float_model(capsys):
    assert recon_reference.main(ARGS) == 0
    out = capsys.readouterr().out
    assert "(mlp_relu)" in out and ": the float model" in out


def test_a_reference_that_lost_the_original_mlps_is_reported(capsys, monkeypatch):
    from plugin.quant.recon import reference
    init = reference.FloatReference.__init__
    monkeypatch.setattr(reference.FloatReference, "__init__",
                        lambda self, model, snapshot=False, originals=None: init(self, model, snapshot))
    assert recon_reference.main(ARGS) == 1
    assert "NOT the float model" in capsys.readouterr().out
