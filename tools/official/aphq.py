"""APHQ-ViT (GoatWu/APHQ-ViT, CVPR 2025): `test_quant.py --config configs/<b>bit/best.py --reconstruct-mlp
--calibrate --optimize`, run by the AdaLog-family harness (adalog.py) on our model and images.

Its pipeline: the MLPs' GELU becomes ReLU and the MLPs are re-fitted to the float outputs (utils/mlp_recon.py,
MLPReconstructor), its quantizers are calibrated on the first 128 images (utils/calibrator.py), then every block is
reconstructed with AdaRound/QDrop and the average-perturbation Hessian loss on all 1024 images (utils/block_recon.py).
Both reconstructions run `iters` iterations per block (official 20000).
"""
from . import adalog


def run_official_aphq(repo_dir, fp_model, images, w_bits, a_bits, seed, device, options):
    """APHQ-ViT's own test_quant.main() with --reconstruct-mlp. Returns (model, seconds)."""
    return adalog.run_main(APHQ, repo_dir, fp_model, images, w_bits, a_bits, seed, device, options,
                           extra_argv=lambda n, batch: ["--reconstruct-mlp"],
                           reconstructors=[("utils.mlp_recon", "MLPReconstructor"),
                                           ("utils.block_recon", "BlockReconstructor")])


def preflight(repo_dir, fp_model, bits, options, calib_num):
    adalog.check_run(APHQ.title, repo_dir, fp_model, bits, options, calib_num)


APHQ = adalog.official_code("APHQ-ViT", run_official_aphq,
                            ("test_quant.py", "utils/mlp_recon.py", "utils/block_recon.py", "utils/calibrator.py",
                             "utils/wrap_net.py", "quant_layers/linear.py"), "aphq", preflight)
