"""RepQ-ViT (zkkli/RepQ-ViT, classification/) and I&S-ViT (zysxmu/IaS-ViT): their own test_quant.main() (the same
script layout) on our float model and calibration images, their data and model builders and validate() pointed at
ours.

Official settings: RepQ-ViT 32 calibration images. I&S-ViT 1024 calibration images (its --calib-batchsize), block
reconstruction batch 64, `--iter` 1000 at 3/4 bit and 200 at 6 bit (its README), warmup 0.2, channel-wise weights
(`--w_cw`, as in its README example), layer-wise activations; it takes 64-image batches from the calibration set (the
rest of a partial batch is dropped), so it needs at least 64 images.
"""
import contextlib
import copy
import importlib
import sys
import time
import types

from .harness import OfficialCode, cuda_calls_stay_on, is_swin, labelled, official_import_path
from .timm_glue import glue_for_official


def _run_test_quant(code, repo_dir, fp_model, calib_images, device, **args):
    """test_quant.main() of RepQ-ViT or I&S-ViT (the same script layout) on our float model and calibration images,
    its data and model builders and its validate() pointed at ours. `args` completes its argparse namespace. The
    model of the last validate() call is returned (I&S-ViT validates after stage one and at the end), with the
    seconds from main() to that call."""
    import torch
    with official_import_path(code, repo_dir), cuda_calls_stay_on(device):
        test_quant = importlib.import_module("test_quant")
        official_bm = importlib.import_module("utils.build_model")
        model = glue_for_official(copy.deepcopy(fp_model), official_bm, code.title)
        captured = {}

        def validate(args, val_loader, q_model, criterion, device):
            if str(device).startswith("cuda"):
                torch.cuda.synchronize()
            captured["model"], captured["t1"] = q_model, time.time()
            return 0.0, 0.0, 0.0

        test_quant.build_dataset = lambda args: ([labelled(calib_images)], [])
        test_quant.build_model = lambda name: model
        test_quant.validate = validate
        # The model name only picks the ViT or the Swin branch of main() (its timm name goes to build_model).
        test_quant.args = types.SimpleNamespace(
            model="swin_tiny" if is_swin(model) else "deit_small", dataset="", calib_batchsize=len(calib_images),
            val_batchsize=1, num_workers=0, device=device, print_freq=100, **args)
        t0 = time.time()
        with contextlib.redirect_stdout(sys.stderr):
            test_quant.main()
    return captured["model"], captured["t1"] - t0


def run_official_repq(repo_dir, fp_model, calib_images, w_bits, a_bits, seed, device, options):
    """RepQ-ViT's own test_quant.main(). Returns (model, seconds)."""
    return _run_test_quant(REPQ, repo_dir, fp_model, calib_images, device, seed=seed, w_bits=w_bits, a_bits=a_bits)


def isvit_iters(w_bits, a_bits):
    """I&S-ViT's README: 1000 iterations at W3/A3 and W4/A4, 200 at W6/A6."""
    return 200 if min(w_bits, a_bits) >= 6 else 1000


def run_official_isvit(repo_dir, fp_model, calib_images, w_bits, a_bits, seed, device, options):
    """I&S-ViT's own test_quant.main() (three stages, block reconstruction). Returns (model, seconds)."""
    from plugin.errors import UserInputError
    if len(calib_images) < 64:
        raise UserInputError(f"the official I&S-ViT code reconstructs with 64-image batches; it needs at least 64 "
                             f"calibration images, got {len(calib_images)}")
    return _run_test_quant(ISVIT, repo_dir, fp_model, calib_images, device, seed=seed, w_bits=w_bits,
                           a_bits=a_bits, w_cw=bool(options.get("w_cw", 1)), a_cw=False,
                           iter=options.get("iters") or isvit_iters(w_bits, a_bits), warmup=0.2)



REPQ = OfficialCode("RepQ-ViT", run_official_repq, ("classification",),
                    ("test_quant.py", "utils/build_model.py", "quant/quant_model.py"),
                    ("utils", "quant", "test_quant"), calib_num=32, ours="repq")
ISVIT = OfficialCode("I&S-ViT", run_official_isvit, ("",),
                     ("test_quant.py", "utils/build_model.py", "quant/block_recon.py", "quant/layer_recon.py"),
                     ("utils", "quant", "test_quant"), calib_num=1024, ours="isvit",
                     options={"iters": int, "w_cw": int})
