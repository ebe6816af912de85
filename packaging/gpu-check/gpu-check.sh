#!/usr/bin/env bash
# The GPU check on the GPU machine: the last of the four device calls runs
# it after /tmp/g/assemble.sh (docs/development/gpu-check.md).
#
#   packaging/gpu-check/gpu-check.sh [gpu_check.py's options]
#
# Unpacks the release binaries that `make gpu-check-carry` packed
# (/tmp/g/deepseek-bin.tar.xz) into /tmp/g/bin, takes ONNX Runtime and the
# CUDA libraries' paths from /tmp/g/env.sh, and runs gpu_check.py with
# PyTorch's Python (/opt/torch/.venv there; PYTHON=... for another). The
# results go to $OUT, which the device tool brings back.
set -euo pipefail
carry=/tmp/g
[ -f "$carry/env.sh" ] || { echo "error: $carry/env.sh is missing: run bash $carry/assemble.sh first" >&2; exit 1; }
[ -f "$carry/deepseek-bin.tar.xz" ] || { echo "error: $carry/deepseek-bin.tar.xz is missing: was .gpu/c3 from make gpu-check-carry copied there?" >&2; exit 1; }
# shellcheck source=/dev/null
source "$carry/env.sh"
mkdir -p "$carry/bin"
tar -xJf "$carry/deepseek-bin.tar.xz" -C "$carry/bin"
python=${PYTHON:-/opt/torch/.venv/bin/python}
[ -x "$python" ] || { echo "error: no Python at $python (set PYTHON)" >&2; exit 1; }
exec "$python" "$(dirname "$0")/gpu_check.py" --release "$carry/bin" --ort "$ORT_DYLIB_PATH" --out "${OUT:?set OUT, where the results go}" "$@"
