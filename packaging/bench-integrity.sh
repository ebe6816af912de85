#!/usr/bin/env bash
# Benchmark deepseek-integrity against Debian's AIDE and sha256sum, side by
# side in one run on the same files (BENCHMARKS.md, issue: integrity).
#
#   sudo packaging/bench-integrity.sh [WORKDIR]     (or: sudo make bench-integrity)
#
# WORKDIR defaults to /var/tmp/deepseek-bench and needs about 9 GiB free
# (tree B shrinks to 2 GiB when less than 12 GiB is free). The script
#
#   1. installs `aide` (and python3) with apt-get when missing;
#   2. builds the release deepseek-integrity (honours CARGO_TARGET_DIR), or
#      uses the binary named by $INTEGRITY_BIN;
#   3. creates tree A (2000 small files of 1-64 KiB, seeded content, plus four
#      1 GiB shards of /dev/urandom: ~4.06 GiB) and tree B (one 4 GiB file);
#   4. times, on each tree, warm cache (everything read once first, best of
#      REPS_WARM runs) and cold cache (`sync; echo 3 > drop_caches` before
#      every timed command, best of REPS_COLD runs; skipped with a notice
#      when the kernel refuses):
#        sha256sum      find -print0 | xargs -0 sha256sum          (1 process)
#        sha256sum -P2  find -print0 | xargs -0 -P2 -n1 sha256sum  (2 processes)
#        aide w2 / w1   aide --init --workers=2 / =1, SHA-256 only (S = sha256)
#        di sha256      deepseek-integrity --jobs 2 init, digest = "sha256"
#        di auto        deepseek-integrity --jobs 2 init, digest = "auto"
#        di check auto  deepseek-integrity --jobs 2 check against that database
#   5. times one 1 GiB shard alone (warm): sha256sum, aide, deepseek-integrity
#      sha256 and chunked;
#   6. checks that every tool computed the same SHA-256 digests;
#   7. prints the tables and deletes everything it created (also on failure
#      or Ctrl-C), so it can be re-run as is.
#
# Run as root: apt-get and drop_caches need it. Knobs (environment):
# REPS_WARM=3 REPS_COLD=1 JOBS=2 SMALL_FILES=2000 SHARDS=4 SHARD_MIB=1024
# BIG_MIB=4096 INTEGRITY_BIN=path.
set -euo pipefail

WORKDIR=${1:-/var/tmp/deepseek-bench}
REPS_WARM=${REPS_WARM:-3}
REPS_COLD=${REPS_COLD:-1}
JOBS=${JOBS:-2}
SMALL_FILES=${SMALL_FILES:-2000}
SHARDS=${SHARDS:-4}
SHARD_MIB=${SHARD_MIB:-1024}
BIG_MIB=${BIG_MIB:-4096}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

say() { printf '%s\n' "$*" >&2; }
die() {
	say "bench-integrity: $*"
	exit 1
}

# --- tools -------------------------------------------------------------------

missing=()
command -v aide >/dev/null || missing+=(aide)
command -v python3 >/dev/null || missing+=(python3)
if ((${#missing[@]})); then
	say "installing: ${missing[*]}"
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if [[ -n ${INTEGRITY_BIN:-} ]]; then
	BIN=$INTEGRITY_BIN
else
	say "building deepseek-integrity (release)"
	(cd "$REPO" && cargo build --release -q -p deepseek-integrity)
	BIN=${CARGO_TARGET_DIR:-$REPO/target}/release/deepseek-integrity
fi
[[ -x $BIN ]] || die "no binary at $BIN"

# --- work directory (removed on exit) -----------------------------------------

mkdir -p "$WORKDIR"
RUN=$(mktemp -d "$WORKDIR/integrity.XXXXXX")
cleanup() {
	rm -rf "$RUN"
	rmdir "$WORKDIR" 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

avail_mib=$(($(df -Pk "$RUN" | awk 'NR == 2 { print $4 }') / 1024))
need_a=$((SHARDS * SHARD_MIB + 100))
if ((avail_mib < need_a + BIG_MIB + 3072)) && ((BIG_MIB > 2048)); then
	say "only $avail_mib MiB free: tree B is 2 GiB instead of $((BIG_MIB / 1024)) GiB"
	BIG_MIB=2048
fi
((avail_mib >= need_a + BIG_MIB + 512)) ||
	die "need $((need_a + BIG_MIB + 512)) MiB free under $WORKDIR, have $avail_mib"

COLD=1
if ! (sync && echo 3 >/proc/sys/vm/drop_caches) 2>/dev/null; then
	COLD=0
	say "NOTE: writing /proc/sys/vm/drop_caches was refused: warm cache only"
fi
drop_caches() {
	sync
	echo 3 >/proc/sys/vm/drop_caches
}

# --- trees ----------------------------------------------------------------------

say "creating tree A: $SMALL_FILES small files + $SHARDS x $SHARD_MIB MiB shards"
mkdir -p "$RUN/A/small" "$RUN/A/shards" "$RUN/B" "$RUN/one"
python3 - "$RUN/A/small" "$SMALL_FILES" <<'EOF'
import os, random, sys
root, count = sys.argv[1], int(sys.argv[2])
rng = random.Random(20261125)
for i in range(count):
    d = os.path.join(root, "%02d" % (i % 20))
    os.makedirs(d, exist_ok=True)
    size = 1024 + (i * 63 * 1024) // max(count - 1, 1)   # 1 KiB .. 64 KiB, evenly spread
    with open(os.path.join(d, "file-%04d.bin" % i), "wb") as f:
        f.write(rng.randbytes(size))
EOF
for ((i = 0; i < SHARDS; i++)); do
	head -c "${SHARD_MIB}M" /dev/urandom >"$RUN/A/shards/model-$i.safetensors"
done
say "creating tree B: one $BIG_MIB MiB file"
head -c "${BIG_MIB}M" /dev/urandom >"$RUN/B/model.safetensors"
# The single-file case: a second name for shard 0.
ln "$RUN/A/shards/model-0.safetensors" "$RUN/one/model-0.safetensors"
sync

# --- configurations ---------------------------------------------------------------

verifier=$("$BIN" keygen --out "$RUN/signing.key" | sed -n 's/^verifier_key = "\(.*\)"$/\1/p')
[[ -n $verifier ]] || die "keygen printed no verifier_key"

# di_conf TREE DIGEST: a configuration with its own database.
di_conf() {
	local conf=$RUN/di-$1-$2.toml
	cat >"$conf" <<EOF
database = "$RUN/di-$1-$2.db"
signing_key = "$RUN/signing.key"
verifier_key = "$verifier"
[[rule]]
path = "$RUN/$1"
preset = "model"
digest = "$2"
EOF
	echo "$conf"
}

# aide_conf TREE: SHA-256 only; AIDE adds the lstat fields it always records.
aide_conf() {
	local conf=$RUN/aide-$1.conf
	cat >"$conf" <<EOF
database_out=file:$RUN/aide-$1.db
gzip_dbout=no
database_attrs=sha256
report_url=stdout
S = sha256
$RUN/$1 S
EOF
	echo "$conf"
}

for tree in A B one; do
	aide_conf "$tree" >/dev/null
	for digest in sha256 auto chunked; do di_conf "$tree" "$digest" >/dev/null; done
done

# --- the commands ----------------------------------------------------------------------

# prep NAME TREE: untimed setup (databases must not exist for init).
prep() {
	case $1 in
	aide-w*) rm -f "$RUN/aide-$2.db" ;;
	di-sha256) rm -f "$RUN/di-$2-sha256.db" ;;
	di-auto) rm -f "$RUN/di-$2-auto.db" ;;
	di-chunked) rm -f "$RUN/di-$2-chunked.db" ;;
	esac
}

# cmd NAME TREE: the timed command; its output goes to $RUN/out.
cmd() {
	local t=$RUN/$2
	case $1 in
	sha256sum) find "$t" -type f -print0 | xargs -0 sha256sum >"$RUN/sums-$2" ;;
	sha256sum-P2) find "$t" -type f -print0 | xargs -0 -P2 -n1 sha256sum >/dev/null ;;
	aide-w2) aide -c "$RUN/aide-$2.conf" --init --workers=2 ;;
	aide-w1) aide -c "$RUN/aide-$2.conf" --init --workers=1 ;;
	di-sha256) "$BIN" -c "$RUN/di-$2-sha256.toml" --jobs "$JOBS" init ;;
	di-auto) "$BIN" -c "$RUN/di-$2-auto.toml" --jobs "$JOBS" init ;;
	di-chunked) "$BIN" -c "$RUN/di-$2-chunked.toml" --jobs "$JOBS" init ;;
	di-check-auto) "$BIN" -c "$RUN/di-$2-auto.toml" --jobs "$JOBS" check ;;
	*) die "unknown command $1" ;;
	esac
}

describe() {
	case $1 in
	sha256sum) echo "find -print0 | xargs -0 sha256sum" ;;
	sha256sum-P2) echo "find -print0 | xargs -0 -P2 -n1 sha256sum" ;;
	aide-w2) echo "aide --init --workers=2" ;;
	aide-w1) echo "aide --init --workers=1" ;;
	di-sha256) echo "deepseek-integrity --jobs $JOBS init (sha256)" ;;
	di-auto) echo "deepseek-integrity --jobs $JOBS init (auto)" ;;
	di-chunked) echo "deepseek-integrity --jobs $JOBS init (chunked)" ;;
	di-check-auto) echo "deepseek-integrity --jobs $JOBS check (auto)" ;;
	esac
}

declare -A TIMES=()

# measure KEY NAME TREE COLD: one timed run, appended to TIMES[KEY/NAME].
measure() {
	local key=$1 name=$2 tree=$3 cold=$4 t0 t1 rc=0
	prep "$name" "$tree"
	((cold)) && drop_caches
	t0=$EPOCHREALTIME
	cmd "$name" "$tree" >"$RUN/out" 2>&1 || rc=$?
	t1=$EPOCHREALTIME
	if ((rc != 0)); then
		cat "$RUN/out" >&2
		die "$name on tree $tree exited $rc"
	fi
	local s
	s=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')
	TIMES[$key/$name]+="$s "
	say "  $key $name: $s s"
}

warm_up() { find "$RUN/$1" -type f -exec cat {} + >/dev/null; }

bytes_of() { find "$RUN/$1" -type f -printf '%s\n' | awk '{ s += $1 } END { print s }'; }

best() { tr ' ' '\n' <<<"${TIMES[$1]}" | awk 'NF' | sort -g | head -1; }

TREE_CMDS=(sha256sum sha256sum-P2 aide-w2 aide-w1 di-sha256 di-auto di-check-auto)
ONE_CMDS=(sha256sum aide-w2 di-sha256 di-chunked)

# run_set KEY TREE COLD REPS CMD...: REPS rounds, each command once per round
# (interleaved, so that drift hits every command alike).
run_set() {
	local key=$1 tree=$2 cold=$3 reps=$4
	shift 4
	local r name
	((cold)) || warm_up "$tree"
	for ((r = 1; r <= reps; r++)); do
		for name in "$@"; do measure "$key" "$name" "$tree" "$cold"; done
	done
}

say "tree A warm ($REPS_WARM rounds)"
run_set A-warm A 0 "$REPS_WARM" "${TREE_CMDS[@]}"
if ((COLD)); then
	say "tree A cold ($REPS_COLD rounds)"
	run_set A-cold A 1 "$REPS_COLD" "${TREE_CMDS[@]}"
fi
say "tree B warm ($REPS_WARM rounds)"
run_set B-warm B 0 "$REPS_WARM" "${TREE_CMDS[@]}"
if ((COLD)); then
	say "tree B cold ($REPS_COLD rounds)"
	run_set B-cold B 1 "$REPS_COLD" "${TREE_CMDS[@]}"
fi
say "one 1 GiB file warm ($REPS_WARM rounds)"
run_set one-warm one 0 "$REPS_WARM" "${ONE_CMDS[@]}"

# --- the same digests everywhere --------------------------------------------------

# sha256sum's list against deepseek-integrity's sha256 database and AIDE's
# (base64) database, for every tree.
for tree in A B one; do
	python3 - "$RUN/sums-$tree" "$RUN/aide-$tree.db" <("$BIN" -c "$RUN/di-$tree-sha256.toml" show) <<'EOF' ||
import base64, sys
sums = {}
for line in open(sys.argv[1]):
    digest, path = line.rstrip("\n").split("  ", 1)
    sums[path] = digest
aide = {}
for line in open(sys.argv[2]):
    fields = line.split()
    if line.startswith("/") and len(fields) == 5 and fields[4] != "0":
        aide[fields[0]] = base64.b64decode(fields[4]).hex()
di = {}
for line in open(sys.argv[3]):
    fields = line.split()
    if fields[0] == "file":
        di[fields[1]] = fields[2].removeprefix("sha256=")
if not (sums == aide == di) or not sums:
    sys.exit("digests differ: %d sha256sum, %d aide, %d deepseek-integrity" % (len(sums), len(aide), len(di)))
EOF
		die "tree $tree: sha256sum, AIDE and deepseek-integrity disagree"
	say "tree $tree: sha256sum, AIDE and deepseek-integrity sha256 agree on $(wc -l <"$RUN/sums-$tree") files"
done

# --- report -------------------------------------------------------------------------

machine() {
	echo "machine: $(nproc) CPUs, $(lscpu | sed -n 's/^Model name: *//p'), $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo)"
	echo "kernel: $(uname -r); filesystem: $(df -PT "$WORKDIR" | awk 'NR == 2 { print $1, $2 }')"
	echo "aide: $(aide --version 2>&1 | head -1); sha256sum: $(sha256sum --version | head -1)"
	echo "deepseek-integrity: $("$BIN" --version)"
}

# table KEY TREE REF CMD...: best time, throughput, ratios against REF and sha256sum.
table() {
	local key=$1 tree=$2 ref=$3 n=$4
	shift 4
	local bytes ref_s sum_s name b
	bytes=$(bytes_of "$tree")
	ref_s=$(best "$key/$ref")
	sum_s=$(best "$key/sha256sum")
	printf '%s (%s files, %.2f GiB), best of %d\n' "$key" \
		"$(find "$RUN/$tree" -type f | wc -l)" "$(awk -v b="$bytes" 'BEGIN { print b / 2^30 }')" "$n"
	printf '%-50s %8s %8s %9s %11s  %s\n' command "best s" "GiB/s" "vs $ref" "vs sha256sum" runs
	for name in "$@"; do
		b=$(best "$key/$name")
		awk -v n="$(describe "$name")" -v b="$b" -v bytes="$bytes" -v r="$ref_s" -v s="$sum_s" -v runs="${TIMES[$key/$name]}" \
			'BEGIN { printf "%-50s %8.3f %8.2f %8.2fx %10.2fx  %s\n", n, b, bytes / 2^30 / b, r / b, s / b, runs }'
	done
	echo
}

echo
machine
echo
echo "ratios are speed-ups: reference time / this command's time (higher is faster)"
echo
table A-warm A aide-w2 "$REPS_WARM" "${TREE_CMDS[@]}"
((COLD)) && table A-cold A aide-w2 "$REPS_COLD" "${TREE_CMDS[@]}"
table B-warm B aide-w2 "$REPS_WARM" "${TREE_CMDS[@]}"
((COLD)) && table B-cold B aide-w2 "$REPS_COLD" "${TREE_CMDS[@]}"
table one-warm one aide-w2 "$REPS_WARM" "${ONE_CMDS[@]}"
((COLD)) || echo "cold cache: not measured (drop_caches refused)"
echo "AIDE configuration (tree A):"
sed "s|$RUN|WORK|g" "$RUN/aide-A.conf" | sed 's/^/    /'
echo "deepseek-integrity configuration (tree A, auto):"
sed "s|$RUN|WORK|g; s|$verifier|ed25519:...|" "$RUN/di-A-auto.toml" | sed 's/^/    /'
