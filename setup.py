"""vitq: post-training quantization of vision transformers (ViT/DeiT/Swin, MMDetection Swin, point-cloud transformers)."""
from setuptools import find_packages, setup

EXTRAS = {
    # MMDetection 3.x; mmcv-lite has no compiled ops, plugin/detection serves nms/roi_align from torchvision.
    "det": ["mmdet==3.3.0", "mmcv-lite==2.1.0", "pycocotools>=2.0.7", "opencv-python", "scipy", "shapely", "terminaltables"],
    # open3d needs the system library libusb-1.0 (tools/setup_env.sh installs it with apt when it can).
    "pointcloud": ["open3d-cpu==0.20.0"],
    # ONNX QDQ export (plugin.quant.deploy.onnx_export, ptq_test.py --export-onnx) and ONNX Runtime evaluation/benchmarks.
    "onnx": ["onnx>=1.16", "onnxruntime>=1.18"],
}
EXTRAS["test"] = ["pytest>=8", "hypothesis>=6.100"] + EXTRAS["onnx"]  # CI runs the ONNX tests too
EXTRAS["all"] = sorted({p for k in ("det", "pointcloud", "onnx") for p in EXTRAS[k]})

setup(
    name="vitq",
    version="0.1.0",
    description=__doc__,
    packages=find_packages(include=["plugin", "plugin.*"]),
    package_data={"plugin": ["assets/*"]},
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.4",
        "torchvision",
        "timm>=1.0.15",
        "safetensors>=0.4",
        "numpy",
        "pillow",
        "h5py",
        "matplotlib",
        "mmengine==0.10.7",
        # mmengine imports pkg_resources (removed in setuptools 81) to resolve `mmdet::` config scopes.
        "setuptools<81",
    ],
    extras_require=EXTRAS,
)
