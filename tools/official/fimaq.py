"""FIMA-Q (ShiheWang/FIMA-Q, CVPR 2025): `test_quant.py --config configs/<b>bit/best.py --calibrate --optimize
--optim-metric fisher_dplr`, run by the AdaLog-family harness (adalog.py) on our model and images.

Its pipeline: AdaLog's quantizers calibrated on the first 128 images, then every block reconstructed with
AdaRound/QDrop and the Fisher-information loss approximated as diagonal plus low rank (rank k = 5 in its configs),
whose low-rank factors are re-estimated every iters/k iterations on all 1024 images (utils/block_recon.py
new_fisher_ro). `iters` iterations per block (official 20000); below k their step `iters // k` is 0 and the
schedule divides by it, so fewer than k iterations are refused.
"""
from . import adalog

FISHER_RANK = 5  # `k` of its configs/{3,4,6}bit/best.py


def run_official_fimaq(repo_dir, fp_model, images, w_bits, a_bits, seed, device, options):
    """FIMA-Q's own test_quant.main() with --optim-metric fisher_dplr. Returns (model, seconds)."""
    return adalog.run_main(FIMAQ, repo_dir, fp_model, images, w_bits, a_bits, seed, device, options,
                           extra_argv=lambda n, batch: ["--optim-metric", "fisher_dplr", "--optim-size", str(n),
                                                        "--optim-batch-size", str(batch)],
                           reconstructors=[("utils.block_recon", "BlockReconstructor")])


def preflight(repo_dir, fp_model, bits, options, calib_num):
    adalog.check_run(FIMAQ.title, repo_dir, fp_model, bits, options, calib_num, min_iters=FISHER_RANK)


FIMAQ = adalog.official_code("FIMA-Q", run_official_fimaq,
                             ("test_quant.py", "utils/block_recon.py", "utils/calibrator.py", "utils/wrap_net.py",
                              "quantizers/logarithm.py", "quant_layers/linear.py"), "fimaq", preflight)
