#!/usr/bin/env bash
# The package as an operator meets it, under a real systemd:
#
#   packaging/tests/system-test.sh [--suite trixie|bookworm] target/debian/deepseek_VERSION_amd64.deb
#
# 1. debootstrap a throwaway Debian root (minbase, systemd, curl) into
#    target/system-test/SUITE/root: Debian 13 (trixie, systemd 257, the
#    target) by default, or Debian 12 (bookworm, systemd 252); the
#    downloaded packages are kept in target/system-test/SUITE/cache, so
#    later runs are quicker. In Debian 13's root, check-units.sh checks the
#    units as its systemd reads them;
# 2. in a chroot: dpkg -i the package, then deepseekd check-config,
#    deepseek-integrity check and init, deepseek-audit verify --list; a
#    reinstall keeps an edited conffile, the keys and the database;
# 3. boot systemd in that root with systemd-nspawn (PID 1, private network;
#    nspawn's own seccomp filter refuses the Landlock calls unless allowed)
#    and drive it as an operator would: start deepseekd.socket, infer as a
#    member of group deepseek, be refused as a user outside it, read the
#    notify status, SIGKILL the daemon and see systemd restart it, run the
#    integrity check unit and deepseek-audit verify, verify the audit log,
#    change a model byte and see the daemon refuse to start (65), purge the
#    package; import, activate, roll back and remove two signed releases
#    of a model in the model store (store-cycle.sh), timing the restart's
#    gap in service; see the user namespace of PrivateUsers=identity keep client
#    uids (systemd 257), a uid above 65535 refused, and measure what
#    PrivateUsers=yes would do to the uids the audit log records; with
#    --bundle, verify the software bundle (make bundle) offline against its
#    pinned release key and reinstall from it, with no network;
# 4. print the evidence and the result. Exit 0 when every check passed,
#    1 otherwise. Skips (exit 0, saying why) without root, debootstrap or
#    systemd-nspawn. MIRROR=URL picks the Debian mirror (default:
#    debootstrap's own); SYSTEM_TEST_DIR another work directory.
set -euo pipefail

usage="usage: $0 [--suite trixie|bookworm] [--bundle SOFTWARE.bundle --release-key RELEASE.pub] PACKAGE.deb"
suite=trixie bundle= release_key=
while [ $# -gt 1 ]; do
    case $1 in
        --suite) suite=${2:?$usage} ;;
        --bundle) bundle=${2:?$usage} ;;
        --release-key) release_key=${2:?$usage} ;;
        *) break ;;
    esac
    shift 2
done
case $suite in trixie | bookworm) ;; *) echo "system-test: unknown suite $suite (trixie or bookworm)" >&2; exit 64 ;; esac
[ -z "$bundle" ] || [ -f "$release_key" ] || { echo "system-test: --bundle needs --release-key FILE" >&2; exit 64; }
deb=${1:?$usage}
skip() { echo "system-test: skipped: $*"; exit 0; }
[ "$(id -u)" -eq 0 ] || skip "needs root (debootstrap, chroot and systemd-nspawn)"
command -v debootstrap >/dev/null || skip "debootstrap is not installed (apt-get install debootstrap)"
command -v systemd-nspawn >/dev/null || skip "systemd-nspawn is not installed (apt-get install systemd-container)"
[ -f "$deb" ] || { echo "system-test: no package at $deb (make deb)" >&2; exit 1; }

work=$(realpath -m "${SYSTEM_TEST_DIR:-target/system-test}")/$suite
root=$work/root
mkdir -p "$work/cache"
rm -rf "$root"
echo "== debootstrap into $root"
start=$(date +%s)
# shellcheck disable=SC2086
debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus,curl,procps \
    --cache-dir="$work/cache" "$suite" "$root" ${MIRROR:-} >"$work/debootstrap.log" 2>&1 \
    || { tail -20 "$work/debootstrap.log"; echo "system-test: debootstrap failed" >&2; exit 1; }
echo "debootstrap ($suite, $(chroot "$root" systemctl --version | head -1)): $(( $(date +%s) - start )) s"

passed=0 failed=0
check() { # NAME COMMAND...: pass on exit 0 (also the container's check)
    local name=$1; shift
    local out rc=0
    out=$("$@" 2>&1) || rc=$?
    if [ $rc -eq 0 ]; then
        passed=$((passed + 1)); echo "PASS $name"
    else
        failed=$((failed + 1)); echo "FAIL $name (exit $rc)"; echo "$out" | sed 's/^/    /'
    fi
}

echo "== install in a chroot (no systemd running)"
cp "$deb" "$root/tmp/deepseek.deb"
# The software bundle and its release key, for the offline reinstall.
rm -f "$root/root/deepseek.bundle" "$root/root/release.pub"
if [ -n "$bundle" ]; then
    cp "$bundle" "$root/root/deepseek.bundle"
    cp "$release_key" "$root/root/release.pub"
fi
# Two releases of a model, for the model store's cycle (store-cycle.sh).
rm -rf "$root/root/store" && mkdir -p "$root/root/store"
cp "$(dirname "$0")/../../fixtures/models/demo.onnx" "$(dirname "$0")/../../fixtures/models/demo-v2.onnx" "$root/root/store/"
# The CUDA package's opt-in drop-in, tried on the GPU unit in the container.
cp "$(dirname "$0")/../../systemd/deepseekd.service.d/gpu-private-devices.conf" "$root/root/"
# As in any installer's chroot: systemd-tmpfiles needs /proc.
mount -t proc proc "$root/proc"
trap 'umount "$root/proc" 2>/dev/null || true' EXIT
check "dpkg -i" chroot "$root" dpkg -i /tmp/deepseek.deb
ort=$(dirname "$0")/../../.ort/cpu/libonnxruntime.so.1.31.1
if [ -f "$ort" ]; then
    check "the installed ONNX Runtime is the pinned wheel's, byte for byte" \
        cmp "$ort" "$root/usr/lib/deepseek/onnxruntime/libonnxruntime.so.1.31.1"
fi
check "deepseekd check-config" chroot "$root" deepseekd check-config --config /etc/deepseek/deepseekd.toml
check "deepseek-integrity check (the postinst's database)" chroot "$root" deepseek-integrity check
check "deepseek-integrity init (a second database)" chroot "$root" sh -ec '
    sed "s|^database = .*|database = \"/tmp/second.db\"|" /etc/deepseek/integrity.toml >/tmp/integrity.toml
    deepseek-integrity --config /tmp/integrity.toml init
    deepseek-integrity --config /tmp/integrity.toml check'
check "deepseek-integrity init refuses to replace a database" chroot "$root" sh -c '! deepseek-integrity init'
check "deepseek-audit verify --list" chroot "$root" deepseek-audit verify --list
check "keys: 0600, owned by their users" chroot "$root" sh -ec '
    test "$(stat -c "%a %U" /etc/deepseek/audit.key)" = "600 deepseek-audit"
    test "$(stat -c "%a %U" /etc/deepseek/integrity.key)" = "600 root"
    test "$(stat -c "%a %U" /var/lib/deepseek-audit)" = "700 deepseek-audit"
    cmp /etc/deepseek/audit.pub /var/lib/deepseek-audit/audit.pub'
check "configuration files are conffiles" chroot "$root" sh -ec '
    for f in deepseekd.toml audit.toml integrity.toml compliance.toml; do
        grep -q "^/etc/deepseek/$f$" /var/lib/dpkg/info/deepseek.conffiles
    done'
check "units enabled at boot" chroot "$root" sh -ec '
    test -L /etc/systemd/system/sockets.target.wants/deepseekd.socket
    test -L /etc/systemd/system/sockets.target.wants/deepseek-audit.socket
    test -L /etc/systemd/system/timers.target.wants/deepseek-integrity-check.timer
    test -L /etc/systemd/system/timers.target.wants/deepseek-metrics.timer'

check "reinstall (an upgrade's path) keeps the operator's edits, keys and database; check flags it until update" chroot "$root" sh -ec '
    echo "# edited by the operator" >>/etc/deepseek/deepseekd.toml
    before=$(sha256sum /etc/deepseek/*.key /etc/deepseek/*.pub /var/lib/deepseek-integrity/integrity.db)
    DEBIAN_FRONTEND=noninteractive dpkg -i --force-confold /tmp/deepseek.deb >/tmp/reinstall.log 2>&1
    grep -q "upgraded from 0" /tmp/reinstall.log
    tail -1 /etc/deepseek/deepseekd.toml | grep -q "edited by the operator"
    test "$(sha256sum /etc/deepseek/*.key /etc/deepseek/*.pub /var/lib/deepseek-integrity/integrity.db)" = "$before"
    sed -i "/# edited by the operator/d" /etc/deepseek/deepseekd.toml
    # dpkg replaced the files (new inodes and times): the check says so
    # until the operator has reviewed and accepted, as after any upgrade.
    ! deepseek-integrity check >/dev/null
    deepseek-integrity update >/dev/null
    deepseek-integrity check >/dev/null'
if [ "$suite" = trixie ]; then
    # The units as Debian 13's systemd reads them, with the package's binaries.
    units=$root/tmp/check-units
    mkdir -p "$units/packaging/tests" "$units/bin"
    cp -a "$(dirname "$0")/../../systemd" "$units/"
    cp "$(dirname "$0")/check-units.sh" "$units/packaging/tests/"
    cp "$root"/usr/bin/deepseekd "$root"/usr/bin/deepseek-audit "$root"/usr/bin/deepseek-integrity "$units/bin/"
    check "check-units.sh under Debian 13's systemd (exposure 0.3 GPU, 0.1 CPU)" \
        chroot "$root" bash /tmp/check-units/packaging/tests/check-units.sh /tmp/check-units/bin
    chroot "$root" bash /tmp/check-units/packaging/tests/check-units.sh /tmp/check-units/bin | grep -E '^(systemd|ok: deepseekd)'
    rm -rf "$units"
fi
umount "$root/proc"

echo "== boot systemd in the root (systemd-nspawn, private network)"
# The script the container runs: this script's check(), then the steps.
{
    echo '#!/bin/bash'
    declare -f check
    cat <<'INNER'
# Runs inside the booted container as a oneshot unit; writes its findings
# to /system-test.log and powers the container off.
exec >/system-test.log 2>&1
passed=0 failed=0
evidence() { echo "---- $1"; shift; "$@" 2>&1 | sed 's/^/    /'; }
request='{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]}]}'
infer() { # USER
    runuser -u "$1" -- curl -sS --max-time 60 --unix-socket /run/deepseek/deepseekd.sock \
        http://localhost/v2/models/demo/infer -d "$request"
}
main_pid() { systemctl show -P MainPID deepseekd.service; }
requests_by() { # UID: how many request records name UID
    deepseek-audit log show | grep -cE "request +uid=$1 pid="
}
unmapped_refusals() { # how many denied_peer records say unmapped_id
    exported denied_peer | grep -cF '"reason":"unmapped_id"'
}
one_more_unmapped_refusal() { # BEFORE: the daemon records refusals in the background
    for _ in $(seq 150); do
        [ "$(unmapped_refusals)" -gt "$1" ] && return 0
        sleep 0.2
    done
    return 1
}
answered_and_recorded() { # USER UID: USER gets the answer, and one more request record names UID
    local before
    before=$(requests_by "$2")
    infer "$1" | grep -qF '[3.0,5.0,7.0,9.0]' && [ "$(requests_by "$2")" -eq $((before + 1)) ]
}
exported() { # EVENT: its entries from log export, a line each, without whitespace
    deepseek-audit log export | tr -d ' \n' | grep -o "{\"seq\":[^{]*\"event\":\"$1\"[^{]*\(\"peer\":{[^}]*}[^{]*\)\?\"details\":{[^}]*}"
}

useradd --create-home --groups deepseek alice
useradd --create-home mallory
# A member whose uid is above 65535, as directory services hand out.
useradd --create-home --uid 70000 --groups deepseek carol 2>/dev/null
systemd_version=$(systemctl --version | awk 'NR == 1 { print $2 }')
# systemd 252 ignores PrivateUsers=identity, so the unit scores 0.2 above
# the package's thresholds.max_exposure: Debian 12's documented setting.
verify=(deepseek-audit verify)
if [ "$systemd_version" -lt 257 ]; then
    sed 's/^max_exposure = .*/max_exposure = 0.3/' /etc/deepseek/compliance.toml >/root/compliance-debian12.toml
    verify+=(--profile /root/compliance-debian12.toml)
fi

check "systemctl start deepseekd.socket" systemctl start deepseekd.socket
check "the socket is 0660 deepseek:deepseek" sh -c \
    'test "$(stat -c "%a %U %G" /run/deepseek/deepseekd.sock)" = "660 deepseek deepseek"'
check "alice (group deepseek) gets an answer" sh -c "$(declare -f infer); request='$request'; infer alice | grep -F '\"data\":[3.0,5.0,7.0,9.0]'"
check "mallory (not in group deepseek) cannot connect" sh -c "$(declare -f infer); request='$request'; ! infer mallory"
chat='{"model":"tiny-r1","messages":[{"role":"user","content":"What is the capital of France?"}],"temperature":0,"max_tokens":24}'
check "alice chats with the demo causal LM (OpenAI API): the recorded greedy reasoning" sh -c \
    "runuser -u alice -- curl -sS --max-time 60 --unix-socket /run/deepseek/deepseekd.sock http://localhost/v1/chat/completions -d '$chat' | grep -F '\"reasoning_content\":\"R o<｜Assistant｜>|tiG worterQes_ow h]ow8 ThewQG worTheepgh\"'"
evidence "the chat answer" runuser -u alice -- curl -sS --max-time 60 --unix-socket /run/deepseek/deepseekd.sock \
    http://localhost/v1/chat/completions -d "$chat"
evidence "mallory's attempt" infer mallory
check "alice asks with deepseek chat, the installed terminal client (one question, exit 0)" \
    runuser -u alice -- deepseek chat -m tiny-r1 --max-tokens 8 "What is the capital of France?"
check "mallory's deepseek chat is refused with exit 77 (permission denied)" sh -c \
    'runuser -u mallory -- deepseek chat -m tiny-r1 --max-tokens 8 hi; test $? -eq 77'
evidence "mallory's deepseek chat" runuser -u mallory -- deepseek chat -m tiny-r1 --max-tokens 8 hi
structured='{"model":"tiny-r1","prompt":"Data:","max_tokens":200,"seed":1,"temperature":1,"response_format":{"type":"json_schema","json_schema":{"name":"x","schema":{"type":"object","properties":{"n":{"type":"integer","minimum":0,"maximum":9}},"required":["n"],"additionalProperties":false}}}}'
runuser -u alice -- curl -sS --max-time 60 --unix-socket /run/deepseek/deepseekd.sock \
    http://localhost/v1/completions -d "$structured" >/root/structured.json || true
check "alice gets an answer held to a JSON schema (response_format): {\"n\": DIGIT}, finish_reason stop" sh -c \
    'grep -qE "\"text\":\"[{]\\\\\"n\\\\\": [0-9][}]\"" /root/structured.json && grep -qF "\"finish_reason\":\"stop\"" /root/structured.json'
evidence "the structured answer" cat /root/structured.json
check "the service is active and ready (Type=notify)" sh -c \
    'test "$(systemctl show -P ActiveState deepseekd.service)" = active'
check "systemctl status shows the daemon's STATUS=" sh -c \
    'systemctl status deepseekd.service --no-pager | grep -E "Status: \".+\""'
evidence "systemctl status deepseekd" systemctl status deepseekd.service --no-pager -n 0
check "the daemon runs as deepseek with no capabilities, no_new_privs, seccomp" sh -c '
    s=/proc/$(systemctl show -P MainPID deepseekd.service)/status
    grep -q "^Uid:.*\b$(id -u deepseek)\b" $s && grep -q "^CapEff:.*0000000000000000" $s &&
    grep -q "^CapBnd:.*0000000000000000" $s && grep -q "^NoNewPrivs:.*1" $s && grep -q "^Seccomp:.*2" $s'

# PrivateUsers=identity: systemd 257 puts each service in a user namespace
# that maps ids 0-65535 to themselves; systemd 252 ignores the value.
pid=$(main_pid)
own_namespace() { # PID: 0 when PID is in its own, identity-mapped user namespace
    test "$(readlink "/proc/$1/ns/user")" != "$(readlink /proc/1/ns/user)" &&
    test "$(tr -s ' ' <"/proc/$1/uid_map")" = " 0 0 65536" &&
    test "$(tr -s ' ' <"/proc/$1/gid_map")" = " 0 0 65536"
}
evidence "the daemon's uid_map (systemd $systemd_version)" cat "/proc/$pid/uid_map"
if [ "$systemd_version" -ge 257 ]; then
    check "PrivateUsers=identity: the daemon and the auditor each run in a user namespace mapping ids 0-65535 to themselves" sh -c \
        "$(declare -f own_namespace); own_namespace $pid && own_namespace \$(systemctl show -P MainPID deepseek-audit.service)"
    check "in that namespace the lockdown completed: the start record says Landlock and seccomp are enforced" sh -c \
        "$(declare -f exported); exported start | tail -1 | grep -F '\"landlock_status\":\"fullyenforced\"' | grep -qF '\"seccomp_mode\":\"enforce\"'"
    check "alice is admitted and recorded with her own uid, through the namespace" \
        answered_and_recorded alice "$(id -u alice)"
    before=$(unmapped_refusals)
    check "carol (uid 70000, group deepseek) reads as the overflow id there: refused (403), and told why" sh -c \
        "$(declare -f infer); request='$request'; infer carol | grep -F 'is the overflow id of the daemon' | grep -qF 'PrivateUsers=identity'"
    check "her refusal is recorded: denied_peer, reason unmapped_id" one_more_unmapped_refusal "$before"
    evidence "carol's refusal" sh -c "$(declare -f infer); request='$request'; infer carol"
else
    check "systemd $systemd_version ignores PrivateUsers=identity: the daemon shares the host's user namespace" \
        test "$(readlink "/proc/$pid/ns/user")" = "$(readlink /proc/1/ns/user)"
    check "carol (uid 70000, group deepseek) is admitted and recorded as uid 70000" \
        answered_and_recorded carol 70000
fi

# The unit's sandbox, seen from inside the daemon's namespaces.
check "PrivateNetwork: the daemon sees only lo" sh -c \
    "test \"\$(nsenter -t $pid -n ls /sys/class/net)\" = lo"
evidence "the daemon's own root (RootDirectory=): /etc and /var/lib" sh -c \
    "nsenter -t $pid -m -r ls /etc | tr '\\n' ' '; echo; nsenter -t $pid -m -r ls /var/lib | tr '\\n' ' '; echo"
check "RootDirectory: no /etc/shadow, no /var/log, no other /var/lib for the daemon" sh -c \
    "! nsenter -t $pid -m -r test -e /etc/shadow && ! nsenter -t $pid -m -r test -e /var/log && test \"\$(nsenter -t $pid -m -r ls /var/lib | tr '\\n' ' ')\" = 'deepseek deepseek-integrity '"
check "ProtectHome: /home is empty for the daemon" sh -c "test -z \"\$(nsenter -t $pid -m ls -A /home)\""
check "ProtectSystem=strict: /usr and /etc are read-only" sh -c \
    "! nsenter -t $pid -m -S \$(id -u deepseek) -G \$(id -g deepseek) touch /etc/x 2>/dev/null && ! nsenter -t $pid -m touch /usr/x 2>/dev/null"
pseudo='char|core|fd|full|hugepages|log|mqueue|null|ptmx|pts|random|shm|stderr|stdin|stdout|tty|urandom|zero'
check "PrivateDevices: only pseudo-devices" sh -c \
    "test -z \"\$(nsenter -t $pid -m -r ls /dev | grep -vxE '$pseudo')\""
check "PrivateTmp: the daemon's /tmp is its own" sh -c \
    "touch /tmp/host-file && ! nsenter -t $pid -m test -e /tmp/host-file"
evidence "the daemon's devices cgroup (DevicePolicy=closed; cgroup v1 here)" sh -c \
    "cat /sys/fs/cgroup/devices/system.slice/deepseekd.service/devices.list 2>&1 || echo 'no devices controller for the unit'"
evidence "IP firewall (IPAddressDeny=any)" sh -c \
    "systemctl show -P IPAddressDeny deepseekd.service; ls /sys/fs/cgroup/unified/system.slice/deepseekd.service 2>&1 | head -3"

old=$(main_pid)
check "SIGKILL the daemon" systemctl kill --signal=SIGKILL deepseekd.service
for _ in $(seq 100); do
    pid=$(main_pid)
    if [ "$pid" != 0 ] && [ "$pid" != "$old" ] && [ "$(systemctl show -P ActiveState deepseekd.service)" = active ]; then break; fi
    sleep 0.2
done
check "systemd restarted it (new MainPID, NRestarts 1)" sh -c \
    "test \"\$(systemctl show -P MainPID deepseekd.service)\" != $old && test \"\$(systemctl show -P NRestarts deepseekd.service)\" = 1"
check "the restarted daemon answers" sh -c "$(declare -f infer); request='$request'; infer alice | grep -F '[3.0,5.0,7.0,9.0]'"

# Fail closed, then heal: the auditor is killed. The daemon refuses to
# answer unaudited (503) and stops its watchdog pings. systemd restarts the
# auditor after its RestartSec=, and the daemon with it (Requires=), which
# then has a new connection.
daemon_pid=$(main_pid)
auditor_pid=$(systemctl show -P MainPID deepseek-audit.service)
check "SIGKILL the auditor" systemctl kill --signal=SIGKILL deepseek-audit.service
# Within the auditor's RestartSec=: the daemon's connection is gone.
status=$(runuser -u alice -- curl -s -o /dev/null -w '%{http_code}' --max-time 30 \
    --unix-socket /run/deepseek/deepseekd.sock http://localhost/v2/models/demo/infer -d "$request")
echo "MEASURED a request right after the auditor's loss: HTTP $status"
check "without its auditor the daemon answers 503, no result" test "$status" = 503
for _ in $(seq 100); do
    p=$(systemctl show -P MainPID deepseek-audit.service)
    if [ "$p" != 0 ] && [ "$p" != "$auditor_pid" ]; then break; fi
    sleep 0.2
done
check "systemd restarted the auditor" sh -c "test \"\$(systemctl show -P MainPID deepseek-audit.service)\" != $auditor_pid"
for _ in $(seq 300); do
    p=$(main_pid)
    if [ "$p" != 0 ] && [ "$p" != "$daemon_pid" ] && [ "$(systemctl show -P ActiveState deepseekd.service)" = active ]; then break; fi
    sleep 0.2
done
check "systemd restarted the daemon, and it answers again" sh -c \
    "test \"\$(systemctl show -P MainPID deepseekd.service)\" != $daemon_pid && $(declare -f infer); request='$request'; infer alice | grep -F '[3.0,5.0,7.0,9.0]'"
evidence "the daemon's journal around the auditor's loss" sh -c \
    "journalctl -u deepseekd.service -u deepseek-audit.service --no-pager -o short-precise | grep -iE 'auditor|unhealthy|watchdog|Stopping|Starting|Started|Main process' | tail -12"

check "the daily integrity check unit passes and is recorded" systemctl start deepseek-integrity-check.service
evidence "journalctl -u deepseek-integrity-check" journalctl -u deepseek-integrity-check.service --no-pager -o cat
check "the metrics unit collects the daemon's and the auditor's metrics" systemctl start deepseek-metrics.service
check "the textfiles for node_exporter hold both sources, each up" sh -ec '
    d=/var/lib/prometheus/node-exporter
    grep -qx "deepseek_scrape_up{source=\"deepseekd\"} 1" $d/deepseek-audit.prom
    grep -qx "deepseek_scrape_up{source=\"deepseek-audit\"} 1" $d/deepseek-audit.prom
    grep -q "^deepseekd_requests_total{model=\"demo\",protocol=\"kserve\",status=\"200\"} [1-9]" $d/deepseekd.prom
    grep -q "^deepseek_audit_log_entries [1-9]" $d/deepseek-audit.prom
    test "$(stat -c %a $d/deepseekd.prom $d/deepseek-audit.prom | sort -u)" = 644'
evidence "the metrics textfiles (first lines)" sh -c 'head -20 /var/lib/prometheus/node-exporter/deepseek*.prom'
check "deepseek-audit verify (exit 0)" "${verify[@]}"
evidence "deepseek-audit verify" "${verify[@]}"
check "deepseek-audit log verify" deepseek-audit log verify
last_request_uid() { deepseek-audit log show | grep -o 'request *uid=[0-9]*' | tail -1 | grep -o '[0-9]*$'; }
check "the log records alice's uid" test "$(last_request_uid)" = "$(id -u alice)"
check "the log records the integrity check" sh -c 'deepseek-audit log show | grep -q integrity_check'
evidence "deepseek-audit log show" deepseek-audit log show

# Retention under systemd: small segments, a rotation, then log archive
# moves the sealed ones out while the service runs. The small segments come
# from a copy of audit.toml given through a drop-in, so that the package's
# files (in the integrity database) stay untouched.
sed 's/^segment_max_bytes = .*/segment_max_bytes = 4096/' /etc/deepseek/audit.toml >/etc/deepseek/audit-small.toml
mkdir -p /run/systemd/system/deepseek-audit.service.d
printf '[Service]\nExecStart=\nExecStart=/usr/bin/deepseek-audit --config /etc/deepseek/audit-small.toml serve\n' \
    >/run/systemd/system/deepseek-audit.service.d/small-segments.conf
systemctl daemon-reload
systemctl restart deepseek-audit.service
# Requests until a segment is sealed (503s while the daemon reconnects to
# the restarted auditor are not recorded, so count seals, not requests).
for _ in $(seq 600); do
    ls /var/lib/deepseek-audit/segments/ 2>/dev/null | grep -q '\.seal$' && break
    infer alice >/dev/null 2>&1 || true
    sleep 0.1
done
check "the audit log rotated into sealed segments" sh -c 'ls /var/lib/deepseek-audit/segments/ | grep -q "\.seal$"'
check "log archive moves the sealed segments out" deepseek-audit log archive --to /root/archive --keep-days 0
check "the live log verifies alone, naming where the segments went" sh -c \
    'deepseek-audit log verify | grep -q "not here, archived to /root/archive"'
check "the live log and the archive verify as one history" deepseek-audit log verify --archive /root/archive
check "the archive verifies alone, with only the verifier key" \
    deepseek-audit -c /nonexistent.toml log verify --archive /root/archive --archive-only --key "$(cat /etc/deepseek/audit.pub)"
evidence "deepseek-audit log verify --archive /root/archive" deepseek-audit log verify --archive /root/archive
rm /run/systemd/system/deepseek-audit.service.d/small-segments.conf /etc/deepseek/audit-small.toml
systemctl daemon-reload
systemctl restart deepseek-audit.service
# The daemon's start record went with the archive; it restates it daily
# (audit.restate_interval_secs, tested in tests/tests/audit.rs): here a
# restart records it now.
systemctl restart deepseekd.service
check "deepseek-audit verify passes with archived segments" "${verify[@]}"

# PrivateUsers=yes, measured: what uid does the audit log then record?
mkdir -p /run/systemd/system/deepseekd.service.d
printf '[Service]\nPrivateUsers=yes\n' >/run/systemd/system/deepseekd.service.d/private-users.conf
systemctl daemon-reload
systemctl restart deepseekd.service
before=$(unmapped_refusals)
status=$(runuser -u alice -- curl -s -o /dev/null -w '%{http_code}' --max-time 30 \
    --unix-socket /run/deepseek/deepseekd.sock http://localhost/v2/models/demo/infer -d "$request")
echo "MEASURED PrivateUsers=yes: alice (uid $(id -u alice)) reads as the overflow id: HTTP $status"
check "with PrivateUsers=yes alice reads as uid 65534 and is refused, not recorded as someone else (why the unit says identity)" \
    test "$status" = 403
check "that refusal is recorded: denied_peer, reason unmapped_id" one_more_unmapped_refusal "$before"
rm /run/systemd/system/deepseekd.service.d/private-users.conf

# The GPU unit as deepseek-cuda ships it (an empty drop-in of the same name
# masks the CPU package's cpu-only.conf), with the opt-in
# gpu-private-devices.conf. Stand-in NVIDIA nodes (major 195): there is no
# driver here, so opening them fails and CUDA itself is not exercised.
mknod -m 0666 /dev/nvidiactl c 195 255
mknod -m 0666 /dev/nvidia0 c 195 0
: >/run/systemd/system/deepseekd.service.d/cpu-only.conf
cp /root/gpu-private-devices.conf /run/systemd/system/deepseekd.service.d/
systemctl daemon-reload
systemctl reset-failed deepseekd.service
systemctl restart deepseekd.service
pid=$(main_pid)
check "the GPU unit with gpu-private-devices.conf serves" sh -c "$(declare -f infer); request='$request'; infer alice | grep -F '[3.0,5.0,7.0,9.0]'"
check "its private /dev holds the pseudo-devices and the NVIDIA nodes, nothing else" sh -c \
    "nsenter -t $pid -m -r test -c /dev/nvidia0 && nsenter -t $pid -m -r test -c /dev/nvidiactl &&
     test -z \"\$(nsenter -t $pid -m -r ls /dev | grep -vxE '$pseudo|nvidia0|nvidiactl')\""
evidence "the GPU unit's /dev with gpu-private-devices.conf" sh -c "nsenter -t $pid -m -r ls /dev | tr '\\n' ' '; echo"
exposure=$(systemd-analyze security --no-pager deepseekd.service | grep -o 'Overall exposure level for deepseekd.service: [0-9.]*' | grep -o '[0-9.]*$')
echo "MEASURED the GPU unit with gpu-private-devices.conf, live: exposure $exposure (systemd $systemd_version)"
if [ "$systemd_version" -ge 257 ]; then
    check "its live exposure is 0.1" test "$exposure" = 0.1
fi
rm /run/systemd/system/deepseekd.service.d/cpu-only.conf /run/systemd/system/deepseekd.service.d/gpu-private-devices.conf
rm /dev/nvidiactl /dev/nvidia0
systemctl daemon-reload

evidence "directives systemd could not apply here (journal)" sh -c \
    'journalctl --no-pager -o cat -u deepseekd.service -u deepseek-audit.service -u deepseek-integrity-check.service | grep -iE "not supported|unsupported|ignoring|failed to" || echo none'
evidence "systemd-analyze security deepseekd.service" sh -c \
    'systemd-analyze security --no-pager deepseekd.service | grep -E "✗|Overall"'

INNER
    cat "$(dirname "$0")/store-cycle.sh"
    cat <<'INNER'
# Refuse to run unsafely, and say why: a model that no longer matches the
# signed database stops the daemon (65), is not restarted, and is recorded.
printf 'x' >>/usr/share/deepseek/models/demo/demo.onnx
# The metrics timer's scrape would start the daemon again through its
# socket (a new start, not a restart), and be read here as one.
systemctl stop deepseek-metrics.timer
# The restarts above count against the unit's start limit (5 in 10 s).
systemctl reset-failed deepseekd.service
systemctl restart deepseekd.service
failed_with_65() {
    test "$(systemctl show -P ExecMainStatus deepseekd.service)" = 65 &&
        test "$(systemctl show -P ActiveState deepseekd.service)" = failed
}
refused_and_not_restarted() { # failed with 65, and still so after RestartSec=2s
    for _ in $(seq 120); do failed_with_65 && break; sleep 0.5; done
    failed_with_65 && sleep 3 && failed_with_65
}
check "a changed model: deepseekd exits 65 and is not restarted" refused_and_not_restarted
check "the journal names the file" sh -c \
    'journalctl -u deepseekd.service --no-pager -o cat | grep ERROR | grep -q "demo.onnx"'
check "the refusal is in the audit log" sh -c 'deepseek-audit log show | grep -q model_refused'
evidence "journalctl -u deepseekd (the refusal)" sh -c \
    'journalctl -u deepseekd.service --no-pager -o cat | grep -E "ERROR|Main process|Failed" | tail -4'

check "systemctl stop leaves nothing running" sh -c \
    'systemctl stop deepseekd.socket deepseekd.service deepseek-audit.socket deepseek-audit.service && ! pgrep -x deepseekd && ! pgrep -x deepseek-audit'
check "every checkpoint also reached syslog (LOG_AUTHPRIV), from the auditor's own root" sh -c \
    'journalctl --no-pager -o cat -t deepseek-audit | grep -q "^checkpoint deepseek-audit/"'
# The supply chain's door: the software bundle, carried in, verified
# against the pinned release key with no network, and installed from.
if [ -f /root/deepseek.bundle ]; then
    systemctl start deepseekd.socket deepseek-audit.socket
    install -d -m 0755 /etc/deepseek/release-keys
    install -m 0644 /root/release.pub /etc/deepseek/release-keys/deepseek-dev.pub
    cp /root/deepseek.bundle /root/tampered.bundle
    # One byte of the package's content, far past the headers.
    printf 'X' | dd of=/root/tampered.bundle bs=1 seek=$(( $(stat -c %s /root/tampered.bundle) / 2 )) conv=notrunc 2>/dev/null
    check "a software bundle with one changed byte is refused (27), nothing extracted" sh -c \
        'deepseek-integrity bundle verify /root/tampered.bundle --extract /root/tampered; test $? = 27 && test ! -e /root/tampered'
    check "the software bundle verifies offline against the pinned release key" \
        deepseek-integrity bundle verify /root/deepseek.bundle --extract /root/release
    evidence "bundle verify" deepseek-integrity bundle verify /root/deepseek.bundle
    check "it carries the package with SHA256SUMS, and the SBOM names the ONNX Runtime wheel" sh -ec '
        cd /root/release && sha256sum -c SHA256SUMS
        grep -q "\"purl\": \"pkg:pypi/onnxruntime@1.31.1\"" sbom.cdx.json'
    check "dpkg -i from the bundle, with no network; the daemon answers after a restart" sh -c \
        "dpkg -i /root/release/deepseek_*.deb >/dev/null && systemctl restart deepseekd.service && $(declare -f infer); request='$request'; infer alice | grep -qF '[3.0,5.0,7.0,9.0]'"
fi
check "apt-get purge keeps the audit log and its verifier key" sh -ec '
    DEBIAN_FRONTEND=noninteractive dpkg --purge deepseek >/dev/null
    test ! -e /etc/deepseek/audit.key && test ! -e /var/lib/deepseek-integrity/integrity.db
    test -s /var/lib/deepseek-audit/entries.log || ls /var/lib/deepseek-audit | grep -q .
    test -s /var/lib/deepseek-audit/audit.pub
    test ! -e /usr/lib/deepseek'
echo "INNER: $passed passed, $failed failed"
INNER
} >"$root/usr/local/sbin/system-test-inner"
chmod 0755 "$root/usr/local/sbin/system-test-inner"
cat >"$root/etc/systemd/system/system-test.service" <<'UNIT'
[Unit]
Description=deepseek package system test
After=multi-user.target
[Service]
Type=oneshot
ExecStart=/usr/local/sbin/system-test-inner
ExecStopPost=/bin/systemctl poweroff --no-block
UNIT
ln -sf /etc/systemd/system/system-test.service "$root/etc/systemd/system/multi-user.target.wants/system-test.service"
rm -f "$root/system-test.log"

start=$(date +%s)
timeout 600 systemd-nspawn --boot --directory="$root" --register=no --keep-unit \
    --console=pipe --private-network --machine=deepseek-test \
    --system-call-filter='landlock_create_ruleset landlock_add_rule landlock_restrict_self'  >"$work/boot.log" 2>&1 || true
echo "boot, test and poweroff: $(( $(date +%s) - start )) s (console: $work/boot.log)"
if [ ! -s "$root/system-test.log" ]; then
    tail -30 "$work/boot.log"
    echo "system-test: the container wrote no results" >&2
    exit 1
fi
cat "$root/system-test.log"
# The log the purge kept, checked off the appliance with the kept verifier
# key and the package's own deepseek-audit.
rm -rf "$work/pkg" && dpkg-deb -x "$deb" "$work/pkg"
printf 'log_dir = "%s"\nverifier_key_file = "%s"\n' "$root/var/lib/deepseek-audit" \
    "$root/var/lib/deepseek-audit/audit.pub" >"$work/audit-kept.toml"
check "after the purge, the kept log verifies with the kept verifier key" \
    "$work/pkg/usr/bin/deepseek-audit" -c "$work/audit-kept.toml" log verify
inner=$(grep -o 'INNER: [0-9]* passed, [0-9]* failed' "$root/system-test.log" || echo "INNER: 0 passed, 1 failed")
passed=$((passed + $(awk '{print $2}' <<<"$inner")))
failed=$((failed + $(awk '{print $4}' <<<"$inner")))
echo "system-test: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
