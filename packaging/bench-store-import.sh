#!/bin/bash
# The model store's import against the manual path it replaces, on one
# machine in one run (BENCHMARKS.md, "Importing a model bundle"):
#   manual: bundle verify --extract into the store, then deepseek-integrity update
#   store:  deepseek-audit model import (verify, place, re-record the store's
#           paths only, check against the manifest, record, sign)
# and a second release sharing the weights file: time and disk used.
#
#   packaging/bench-store-import.sh [SIZE_MIB]     (default 1024; as root)
#
# Uses target/release's binaries (cargo build --release first) and a
# scratch directory under ${BENCH_DIR:-/tmp/bench-store}.
set -euo pipefail
size=${1:-1024}
bin=$(cd "$(dirname "$0")/.." && pwd)/target/release
dir=${BENCH_DIR:-/tmp/bench-store}
rm -rf "$dir" && mkdir -p "$dir"/{store,manual,etc,audit,r1,r2}
cd "$dir"
"$bin/deepseek-integrity" keygen --out integrity.key | grep verifier_key >verifier
for root in store manual; do
    printf 'database = "%s"\nsigning_key = "%s"\n%s\n[[rule]]\npath = "%s"\n[[rule]]\npath = "%s"\npreset = "model"\n' \
        "$dir/$root.db" "$dir/integrity.key" "$(cat verifier)" "$dir/etc" "$dir/$root" >"$root.toml"
    "$bin/deepseek-integrity" --config "$root.toml" init >/dev/null
done
"$bin/deepseek-audit" keygen --name bench --out audit/key >audit/verifier
printf 'socket = "%s"\nlog_dir = "%s"\nsigning_key = "%s"\n%s\nallowed_uids = [0]\nsyslog = false\n' \
    "$dir/audit/sock" "$dir/audit/log" "$dir/audit/key" "$(cat audit/verifier)" >audit.toml
"$bin/deepseek-audit" --config audit.toml serve 2>audit/stderr &
auditor=$!
trap 'kill $auditor' EXIT
while [ ! -S audit/sock ]; do sleep 0.1; done
"$bin/deepseek-integrity" bundle keygen --name bench --out release.key >/dev/null
head -c $((size << 20)) /dev/urandom >r1/weights.bin
cp r1/weights.bin r2/weights.bin
echo one >r1/model.onnx && echo two >r2/model.onnx
for r in 1 2; do
    "$bin/deepseek-integrity" bundle create --name m --version $r --kind model --key release.key \
        --out m-$r.bundle r$r >/dev/null
done
sync
t() { # COMMAND...: its wall time; a failure stops the run, with its error
    /usr/bin/time -f "%e s" -o "$dir/time" "$@" >/dev/null || { echo "failed: $*" >&2; exit 1; }
    cat "$dir/time"
}
model=("$bin/deepseek-audit" --config audit.toml model --integrity-config store.toml --store "$dir/store" --key release.pub)
for r in 1 2; do
    extract=$(t "$bin/deepseek-integrity" bundle verify m-$r.bundle --key release.pub --extract manual/m-$r)
    update=$(t "$bin/deepseek-integrity" --config manual.toml update)
    import=$(t "${model[@]}" import m-$r.bundle --activate)
    echo "release $r: manual: verify --extract $extract + update $update; store: model import --activate $import"
done
echo "disk: manual $(du -sm manual | cut -f1) MiB, store $(du -sm store | cut -f1) MiB (two releases of ${size} MiB each)"
"$bin/deepseek-integrity" --config store.toml check >/dev/null && echo "store: deepseek-integrity check clean"
