#!/usr/bin/env bash
# Creates ./.venv with the tested stack (see docs/install.md) and installs this package in editable mode.
# Usage: bash tools/setup_env.sh            (idempotent; re-running only checks what is there)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}
# open3d needs libusb-1.0 to import, and Vulkan (libvulkan1 + mesa) for offscreen rendering (else matplotlib draws).
if ! python3 -c 'import ctypes.util,sys; sys.exit(0 if ctypes.util.find_library("usb-1.0") and ctypes.util.find_library("vulkan") else 1)' 2>/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    pkgs="libusb-1.0-0 libvulkan1 mesa-vulkan-drivers"
    (apt-get install -y -qq $pkgs >/dev/null 2>&1 || (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq $pkgs >/dev/null 2>&1)) \
      || echo "warning: could not install $pkgs; open3d may not import or render" >&2
  else
    echo "warning: libusb-1.0 missing (open3d needs it): apt-get install libusb-1.0-0" >&2
  fi
fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
# pip's warnings about this machine's local package indexes are noise; pip's own failures still stop the script.
pipq() { "$VENV/bin/python" -m pip install -q --disable-pip-version-check "$@" 2>&1 | { grep -v "^WARNING: Location" || true; }; }
pipq "setuptools<81" wheel
# torch first, pinned to the release tested on these machines (a CUDA build; it also runs on the CPU).
pipq "torch==${TORCH_VERSION:-2.14.1}" "torchvision==${TORCHVISION_VERSION:-0.29.1}"
pipq -e ".[all,test]"
"$VENV/bin/python" -c "import torch, timm, mmengine, safetensors; import plugin; print('vitq environment ready: torch', torch.__version__, 'timm', timm.__version__)"
