#!/usr/bin/env bash
# Checks the systemd units, sysusers.d and tmpfiles.d files as this host's
# systemd reads them, offline (systemd need not be PID 1). The target is
# systemd 257 (Debian 13); systemd 252 (Debian 12) is checked too, with its
# own limits (below). `make system-test` runs this in its Debian 13 root.
#
#   packaging/tests/check-units.sh BIN_DIR     # the units in systemd/, with
#                                              # the binaries from BIN_DIR
#   packaging/tests/check-units.sh --root DIR  # an unpacked package
#
# 1. `systemd-analyze verify` of every unit. It exits 0 on unknown keys and
#    bad values and only warns, so any output at all is a failure; before
#    systemd 257, but for the one value it does not know yet,
#    `PrivateUsers=identity`.
# 2. `systemd-analyze security --offline=true` exposure of each service,
#    against the limits below (docs/guide/operations.md lists what remains).
# 3. sysusers.d and tmpfiles.d applied to a scratch root: the users, groups
#    and every directory's owner and mode.
# Exit 0 when all pass, 1 otherwise; 77 (skipped) without systemd-analyze.
set -euo pipefail
cd "$(dirname "$0")/../.."

UNITS="deepseekd.socket deepseekd.service deepseek-audit.socket deepseek-audit.service
deepseek-integrity-check.service deepseek-integrity-check.timer
deepseek-metrics.service deepseek-metrics.timer"
command -v systemd-analyze >/dev/null || { echo "skipped: systemd-analyze is not installed (apt-get install systemd)"; exit 77; }
version=$(systemd-analyze --version | awk 'NR == 1 { print $2 }')
# Exposure limits, as `--threshold` takes them (score x 10).
if [ "$version" -ge 257 ]; then
    declare -A LIMIT=(
        # PrivateUsers=identity: a user namespace that keeps client uids.
        [deepseekd.service]=3          # the GPU unit: NVIDIA devices allowed
        [deepseekd.service+cpu]=1      # with cpu-only.conf
        [deepseekd.service+private-dev]=1  # with gpu-private-devices.conf
        [deepseek-audit.service]=1
        [deepseek-integrity-check.service]=9  # root with CAP_DAC_READ_SEARCH only
        [deepseek-metrics.service]=9          # root with CAP_DAC_READ_SEARCH only
    )
    expected_warning=
else
    declare -A LIMIT=(
        # PrivateUsers=identity is ignored (0.2 more).
        [deepseekd.service]=5
        [deepseekd.service+cpu]=3
        [deepseekd.service+private-dev]=3
        [deepseek-audit.service]=3
        [deepseek-integrity-check.service]=9
        [deepseek-metrics.service]=9
    )
    expected_warning='deepseek(d|-audit)\.service:[0-9]+: Failed to parse boolean value, ignoring: identity$'
fi
echo "systemd $version"

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }

# A root with systemd's own units (the targets ours refer to) and ours.
make_root() { # DIR [DROP-IN]: with systemd/deepseekd.service.d/DROP-IN
    local root=$1
    mkdir -p "$root/usr/lib/systemd" "$root/usr/bin" "$root/etc"
    cp -a /usr/lib/systemd/system "$root/usr/lib/systemd/"
    cp systemd/*.service systemd/*.socket systemd/*.timer "$root/usr/lib/systemd/system/"
    if [ -n "${2:-}" ]; then
        mkdir -p "$root/usr/lib/systemd/system/deepseekd.service.d"
        cp "systemd/deepseekd.service.d/$2" "$root/usr/lib/systemd/system/deepseekd.service.d/"
    fi
    for bin in deepseekd deepseek-audit deepseek-integrity; do
        cp "$BIN_DIR/$bin" "$root/usr/bin/"
    done
    mkdir -p "$root/usr/lib/sysusers.d" "$root/usr/lib/tmpfiles.d"
    cp systemd/sysusers.d/deepseek.conf "$root/usr/lib/sysusers.d/"
    cp systemd/tmpfiles.d/deepseek.conf "$root/usr/lib/tmpfiles.d/"
}

if [ "${1:-}" = --root ]; then
    [ $# -eq 2 ] || { echo "usage: $0 BIN_DIR | --root DIR" >&2; exit 64; }
    # An unpacked package: add systemd's units so that ours resolve.
    cpu_root=$scratch/cpu
    cp -a "$2" "$cpu_root"
    mkdir -p "$cpu_root/usr/lib/systemd/system"
    cp -an /usr/lib/systemd/system/. "$cpu_root/usr/lib/systemd/system/"
    gpu_root=
    private_root=
else
    [ $# -eq 1 ] || { echo "usage: $0 BIN_DIR | --root DIR" >&2; exit 64; }
    BIN_DIR=$1
    gpu_root=$scratch/gpu
    cpu_root=$scratch/cpu
    private_root=$scratch/private-dev
    make_root "$gpu_root"
    make_root "$cpu_root" cpu-only.conf
    make_root "$private_root" gpu-private-devices.conf
fi

echo "== systemd-analyze verify (any warning fails)"
for root in $gpu_root $cpu_root $private_root; do
    # shellcheck disable=SC2086
    out=$(systemd-analyze verify --root="$root" --man=no $UNITS 2>&1) && rc=0 || rc=$?
    [ -z "$expected_warning" ] || out=$(grep -Ev "$expected_warning" <<<"$out" || true)
    if [ $rc -ne 0 ] || [ -n "$out" ]; then
        fail "systemd-analyze verify ($root):"$'\n'"$out"
    else
        echo "ok: $(basename "$root"): $(echo $UNITS | wc -w) units, no warnings"
    fi
done

echo "== systemd-analyze security --offline=true"
score() { # ROOT UNIT LIMIT-KEY
    local out line
    out=$(systemd-analyze security --offline=true --root="$1" --no-pager \
        --threshold="${LIMIT[$3]}" "$2" 2>&1) && rc=0 || rc=$?
    line=$(grep -o 'Overall exposure level for .*' <<<"$out" | sed 's/ [^ ]*$//')
    if [ $rc -ne 0 ]; then
        fail "$3: $line is over the limit $(awk "BEGIN{print ${LIMIT[$3]}/10}")"
        grep '✗' <<<"$out" || true
    else
        echo "ok: $3: $line (limit $(awk "BEGIN{print ${LIMIT[$3]}/10}"))"
    fi
}
if [ -n "$gpu_root" ]; then
    score "$gpu_root" deepseekd.service deepseekd.service
    score "$private_root" deepseekd.service deepseekd.service+private-dev
fi
score "$cpu_root" deepseekd.service deepseekd.service+cpu
score "$cpu_root" deepseek-audit.service deepseek-audit.service
score "$cpu_root" deepseek-integrity-check.service deepseek-integrity-check.service
score "$cpu_root" deepseek-metrics.service deepseek-metrics.service

echo "== sysusers.d and tmpfiles.d"
before=$failures
root=$scratch/users
mkdir -p "$root/etc"
: >"$root/etc/passwd"; : >"$root/etc/group"; : >"$root/etc/shadow"; : >"$root/etc/gshadow"
echo 'root:x:0:0:root:/root:/bin/sh' >"$root/etc/passwd"
echo 'root:x:0:' >"$root/etc/group"
systemd-sysusers --root="$root" "$cpu_root/usr/lib/sysusers.d/deepseek.conf" >/dev/null
for user in deepseek deepseek-audit; do
    grep -q "^$user:x:[0-9]*:[0-9]*:.*:/usr/sbin/nologin$\|^$user:x:[0-9]*:[0-9]*:.*:/sbin/nologin$" "$root/etc/passwd" \
        || fail "sysusers: no system user $user with a nologin shell: $(grep "^$user:" "$root/etc/passwd" || echo missing)"
done
grep -q '^deepseek-audit:x:[0-9]*:deepseek$' "$root/etc/group" \
    || fail "sysusers: deepseek is not a member of group deepseek-audit: $(grep '^deepseek-audit:' "$root/etc/group")"
systemd-tmpfiles --root="$root" --create "$cpu_root/usr/lib/tmpfiles.d/deepseek.conf"
uid_of() { awk -F: -v u="$1" '$1 == u { print $3 }' "$root/etc/passwd"; }
while read -r path mode owner; do
    want="$mode $(uid_of "$owner")"
    got=$(stat -c '%a %u' "$root$path" 2>/dev/null || echo missing)
    [ "$got" = "$want" ] || fail "tmpfiles: $path is '$got', expected mode $mode owner $owner ('$want')"
done <<'LIST'
/usr/lib/deepseek/root/deepseekd 755 root
/usr/lib/deepseek/root/deepseek-audit 755 root
/etc/deepseek 755 root
/var/lib/deepseek/models 755 root
/var/lib/deepseek-integrity 755 root
/var/lib/deepseek-audit 700 deepseek-audit
/var/cache/deepseek/cuda 700 deepseek
/var/lib/prometheus/node-exporter 755 root
LIST
[ $failures -eq "$before" ] && echo "ok: users, group membership and directories as declared"

if [ $failures -ne 0 ]; then
    echo "check-units: $failures failure(s)"
    exit 1
fi
echo "check-units: all passed"
