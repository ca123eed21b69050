"""Deployment of a calibrated model: `freeze` (stored int8 weights and integer matmuls, CPU or GPU), the GPU
deployment model (`gpu`: int8 / FP8 GEMMs in a BF16 model, its modules in `gpu_modules`), the Triton int8 kernels
(`triton_int8`) and the ONNX QDQ export and its runtime (`onnx_export`, `onnx_runtime`).

`deploy`, `deploy_report`, `format_recipe` and the deployment modules are importable from here; they load on first
use, so `import plugin` does not register the `vitq::int8_gemm` custom op or import triton."""
from .freeze import (Int8Linear, freeze, frozen_summary, get_int8_backend, int8_matmul,  # noqa: F401
                     set_int8_backend, why_not_freezable)

_GPU = ("MODES", "deploy", "deploy_report", "format_recipe")
_GPU_MODULES = ("FP8_MAX", "TILES", "DeployFP8Linear", "DeployInt8Linear", "PatchGemm")


def __getattr__(name):
    if name in _GPU:
        from . import gpu
        return getattr(gpu, name)
    if name in _GPU_MODULES:
        from . import gpu_modules
        return getattr(gpu_modules, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
