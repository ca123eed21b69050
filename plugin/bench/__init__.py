"""Speed and memory of the library's paths on timm models, measured in one run (the engine of tools/benchmark.py):
calibration wall time per method, images/s of float, fake-quant and frozen INT8 models (`speed`), ONNX Runtime on the
CPU (`onnx_bench`), ViT-B-sized Linear layers (`linear`), and whole-model deployment throughput against BF16 compiled
and torchao (`e2e`, `profile`). Timing itself is plugin/utils/timing.py (torch only). See docs/performance.md."""
