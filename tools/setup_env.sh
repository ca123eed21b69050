#!/usr/bin/env bash
# Creates ./.venv with the tested stack (see docs/install.md) and installs this package in editable mode.
# Usage: bash tools/setup_env.sh            (idempotent; re-running only checks what is there)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}
if ! python3 -c 'import ctypes.util,sys; sys.exit(0 if ctypes.util.find_library("usb-1.0") else 1)' 2>/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    (apt-get install -y -qq libusb-1.0-0 >/dev/null 2>&1 || (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq libusb-1.0-0 >/dev/null 2>&1)) \
      || echo "warning: could not install libusb-1.0-0; open3d will not import" >&2
  else
    echo "warning: libusb-1.0 missing (open3d needs it): apt-get install libusb-1.0-0" >&2
  fi
fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP="$VENV/bin/python -m pip"
$PIP install -q --disable-pip-version-check "setuptools<81" wheel 2>&1 | grep -v "^WARNING: Location" || true
# torch first, pinned to the release tested on these machines (a CUDA build; it also runs on the CPU).
$PIP install -q --disable-pip-version-check "torch==${TORCH_VERSION:-2.14.1}" "torchvision==${TORCHVISION_VERSION:-0.29.1}" 2>&1 | grep -v "^WARNING: Location" || true
$PIP install -q --disable-pip-version-check -e ".[all,test]" 2>&1 | grep -v "^WARNING: Location" || true
"$VENV/bin/python" -c "import torch, timm, mmengine, safetensors; import plugin; print('vitq environment ready: torch', torch.__version__, 'timm', timm.__version__)"
