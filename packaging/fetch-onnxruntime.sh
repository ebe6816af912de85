#!/usr/bin/env bash
# Fetch ONNX Runtime 1.31.1 from its PyPI wheel, verify the wheel against a
# pinned SHA-256, and extract the shared libraries the daemon loads into one
# directory.
#
#   packaging/fetch-onnxruntime.sh cpu DIR   # onnxruntime==1.31.1
#   packaging/fetch-onnxruntime.sh gpu DIR   # onnxruntime-gpu==1.31.1 (CUDA 13)
#
# DIR receives libonnxruntime.so.1.31.1, libonnxruntime_providers_shared.so
# and, for gpu, libonnxruntime_providers_cuda.so. Nothing is executed from
# the wheel. An existing, complete DIR is left alone, so re-running is cheap.
# Set PIP (default: python3 -m pip) to use another pip.
set -euo pipefail

VERSION=1.31.1
# The manylinux_2_28 x86-64 wheels for CPython 3.11. The shared libraries
# inside do not depend on the Python version; pinning one tag pins one file.
CPU_WHEEL=onnxruntime-${VERSION}-cp311-cp311-manylinux_2_28_x86_64.whl
CPU_SHA256=5752bd508126ae7c49894d3b9d2e83f0c3d487319246d04c444b393308d7ad7f
GPU_WHEEL=onnxruntime_gpu-${VERSION}-cp311-cp311-manylinux_2_28_x86_64.whl
GPU_SHA256=e26c475fe361b2015f45b4b824bd13f0bb20204e59b62814e6f0acd5f3d491a6

usage() {
    sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 64
}

[ $# -eq 2 ] || usage
flavour=$1
dest=$2
case $flavour in
    cpu) package=onnxruntime wheel=$CPU_WHEEL sha256=$CPU_SHA256 libs="libonnxruntime.so.$VERSION libonnxruntime_providers_shared.so" ;;
    gpu) package=onnxruntime-gpu wheel=$GPU_WHEEL sha256=$GPU_SHA256 libs="libonnxruntime.so.$VERSION libonnxruntime_providers_shared.so libonnxruntime_providers_cuda.so" ;;
    *) usage ;;
esac

complete=yes
for lib in $libs; do [ -f "$dest/$lib" ] || complete=no; done
if [ $complete = yes ] && [ -f "$dest/.wheel-sha256" ] && [ "$(cat "$dest/.wheel-sha256")" = "$sha256" ]; then
    echo "ONNX Runtime $VERSION ($flavour) already in $dest"
    exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
read -r -a pip <<<"${PIP:-python3 -m pip}"
echo "downloading $wheel with pip"
"${pip[@]}" download --quiet --no-deps --only-binary=:all: \
    --python-version 3.11 --implementation cp --abi cp311 \
    --platform manylinux_2_28_x86_64 \
    -d "$work" "$package==$VERSION"
[ -f "$work/$wheel" ] || { echo "error: pip did not produce $wheel; got: $(ls "$work")" >&2; exit 1; }
actual=$(sha256sum "$work/$wheel" | cut -d' ' -f1)
if [ "$actual" != "$sha256" ]; then
    echo "error: $wheel has SHA-256 $actual, expected $sha256; refusing to use it" >&2
    exit 1
fi
echo "verified $wheel (sha256 $sha256)"

mkdir -p "$dest"
python3 - "$work/$wheel" "$dest" $libs <<'PY'
import os, sys, zipfile
wheel, dest, libs = sys.argv[1], sys.argv[2], sys.argv[3:]
with zipfile.ZipFile(wheel) as z:
    for lib in libs:
        member = "onnxruntime/capi/" + lib
        tmp = os.path.join(dest, "." + lib + ".tmp")
        with z.open(member) as src, open(tmp, "wb") as out:
            while chunk := src.read(1 << 20):
                out.write(chunk)
        os.chmod(tmp, 0o644)
        os.replace(tmp, os.path.join(dest, lib))
        print("extracted", os.path.join(dest, lib))
PY
echo "$sha256" >"$dest/.wheel-sha256"
