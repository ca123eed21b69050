"""PTQ4ViT (hahnyuan/PTQ4ViT): its own example/test_all.test_all() with its PTQ4ViT config and test_all.py's
cfg_modifier (n_V, n_H, n_a = 1, 1, 1, metric "hessian", bits (w, a)) on our float model and 32 calibration images,
HessianQuantCalibrator(batch_size=4).batching_quant_calib().

Glue beyond timm_glue: its net wrapper names a Linear by its attribute name; timm 1.0's Swin classifier is `head.fc`,
which it does not know, so the classifier's Linear is moved to `head.head` (same forward). example/test_all.py
imports `timm.models.layers.config`, which timm 1.0 moved to `timm.layers.config`: that name is aliased while it runs,
and its working folder is the checkout (its config loader lists ./configs). Its calibrator registers legacy
(non-full) backward hooks: torch 2 warns that grad_input may be incomplete, but it reads only grad_output, which
those hooks still give. Its test_all() prints "accuracy: 0.0": the evaluation it calls is replaced by ours.
"""
import contextlib
import copy
import importlib
import sys
import time
import types

from .harness import OfficialCode, cuda_calls_stay_on, is_swin, labelled, official_import_path
from .timm_glue import glue_for_official


def _ptq4vit_classifier(model):
    """PTQ4ViT's wrapper knows a classifier Linear only by the attribute name `head`; timm 1.0's Swin (and any model
    with a ClassifierHead) keeps it as `head.fc`. Moved to `head.head`, same forward."""
    from timm.layers import ClassifierHead

    class OfficialClassifierHead(ClassifierHead):
        def forward(self, x, pre_logits=False):
            x = self.drop(self.global_pool(x))
            return self.flatten(x if pre_logits else self.head(x))

    head = getattr(model, "head", None)
    if isinstance(head, ClassifierHead):
        head._modules["head"] = head._modules.pop("fc")
        head.__class__ = OfficialClassifierHead
    return model


@contextlib.contextmanager
def _timm_layers_config_alias():
    """example/test_all.py does `from timm.models.layers import config` (unused there), gone in timm 1.0."""
    import timm.layers.config
    import timm.models.layers as old
    added = not hasattr(old, "config")
    if added:
        old.config = timm.layers.config
    try:
        yield
    finally:
        if added:
            del old.config


def run_official_ptq4vit(repo_dir, fp_model, calib_images, w_bits, a_bits, seed, device, options):
    """PTQ4ViT's own example/test_all.test_all() with its PTQ4ViT config and cfg_modifier, on our float model and
    calibration images (a DataLoader with one batch of all of them, as its calib_loader). Returns (model, seconds)."""
    import torch
    with official_import_path(PTQ4VIT, repo_dir), cuda_calls_stay_on(device), \
            _timm_layers_config_alias():
        test_all = importlib.import_module("test_all")
        official_models = importlib.import_module("utils.models")
        model = _ptq4vit_classifier(glue_for_official(copy.deepcopy(fp_model), official_models, "PTQ4ViT"))
        model.to(device)
        captured = {}
        calib_set = torch.utils.data.TensorDataset(*labelled(calib_images.to(device)))

        class LoaderGenerator:
            def __init__(self, *args, **kwargs):
                pass

            def test_loader(self):
                return []

            def calib_loader(self, num=1024, seed=3):
                return torch.utils.data.DataLoader(calib_set, batch_size=len(calib_set), shuffle=False)

        def test_classification(net, test_loader, max_iteration=None, description=None):
            if str(device).startswith("cuda"):
                torch.cuda.synchronize()
            captured["model"], captured["t1"] = net, time.time()
            return 0.0

        test_all.get_net = lambda name: model
        test_all.datasets = types.SimpleNamespace(ViTImageNetLoaderGenerator=LoaderGenerator)
        test_all.test_classification = test_classification
        modifier = test_all.cfg_modifier(linear_ptq_setting=(1, 1, 1), metric="hessian", bit_setting=(w_bits, a_bits))
        torch.manual_seed(seed)
        t0 = time.time()
        with contextlib.redirect_stdout(sys.stderr):
            test_all.test_all("swin" if is_swin(model) else "vit", cfg_modifier=modifier,
                              calib_size=len(calib_images), config_name="PTQ4ViT")
    return captured["model"], captured["t1"] - t0



PTQ4VIT = OfficialCode("PTQ4ViT", run_official_ptq4vit, ("", "example"),
                       ("configs/PTQ4ViT.py", "utils/net_wrap.py", "utils/quant_calib.py", "utils/models.py",
                        "example/test_all.py", "quant_layers/linear.py"),
                       ("utils", "quant_layers", "configs", "test_vit", "test_all"), calib_num=32,
                       ours="ptq4vit", chdir=True)
