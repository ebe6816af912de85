# The model store under systemd, as an operator runs it (docs/guide/models.md):
# a release key pinned, two signed releases of a model imported, activated,
# rolled back and removed, with a request before and after each step
# answered by the right version, every step in the audit log, and the gap
# in service of a restart measured while requests keep coming.
#
# Not run on its own: system-test.sh appends it to the script its booted
# container runs, after the steps that use check, evidence and infer, with
# /root/store/ holding demo.onnx (y = 2x + 1) and demo-v2.onnx (y = 3x + 1).

v1='[3.0,5.0,7.0,9.0]' v2='[4.0,7.0,10.0,13.0]'
infer_store() { # VERSION-PATH: the answer of model "scorer" ("" or "/versions/V")
    runuser -u alice -- curl -sS --max-time 60 --unix-socket /run/deepseek/deepseekd.sock \
        "http://localhost/v2/models/scorer$1/infer" -d "$request"
}
served() { # ANSWER VERSION: scorer answers ANSWER and its metadata lists VERSION
    infer_store "" | grep -qF "$1" &&
        runuser -u alice -- curl -sS --unix-socket /run/deepseek/deepseekd.sock \
            http://localhost/v2/models/scorer | grep -qF "\"versions\":[\"$2\"]"
}
audited() { # EVENT VERSION: the newest EVENT entry names VERSION, the signer and the operator
    exported "$1" | tail -1 | grep -F "\"version\":\"$2\"" | grep -F '"signer":"site-release+' |
        grep -qF '"operator_uid":"0"'
}

# The staging machine's part, done here for brevity: a release key and two
# releases of the model, each a signed bundle.
deepseek-integrity bundle keygen --name site-release --out /root/store/site-release.key >/dev/null
mkdir -p /root/store/r1 /root/store/r2
cp /root/store/demo.onnx /root/store/r1/model.onnx
cp /root/store/demo-v2.onnx /root/store/r2/model.onnx
for r in 1 2; do
    deepseek-integrity bundle create --name scorer --version "$r.0.0" --kind model \
        --key /root/store/site-release.key --out "/root/store/scorer-$r.bundle" "/root/store/r$r" >/dev/null
done
# On the appliance: pin the release key, and accept that into the database.
install -d -m 0755 /etc/deepseek/release-keys
install -m 0644 /root/store/site-release.pub /etc/deepseek/release-keys/site-release.pub
deepseek-integrity update >/dev/null

check "store: 1.0.0 imported and activated (recorded, integrity clean)" sh -ec '
    deepseek-audit model import /root/store/scorer-1.bundle --activate
    deepseek-integrity check >/dev/null'
cp /etc/deepseek/deepseekd.toml /root/store/deepseekd.toml.package
cat >>/etc/deepseek/deepseekd.toml <<'TOML'

[[model]]
name = "scorer"
store = "/var/lib/deepseek/models"
TOML
deepseek-integrity update >/dev/null
systemctl restart deepseekd.service
check "store: deepseekd serves 1.0.0 from the store" served "$v1" 1.0.0
check "store: the KServe versioned route answers 1.0.0, refuses 2.0.0" sh -c \
    "$(declare -f infer_store); request='$request'; infer_store /versions/1.0.0 | grep -qF '$v1' && infer_store /versions/2.0.0 | grep -q 'error'"
check "store: import 1.0.0 is audited with its bundle digest and signer" audited model_import 1.0.0

check "store: 2.0.0 imported, identical files stored once" sh -ec '
    deepseek-audit model import /root/store/scorer-2.bundle
    deepseek-integrity check >/dev/null'
check "store: after the import, 1.0.0 still serves" served "$v1" 1.0.0

# The gap in service: requests back to back while activate --restart runs.
: >/root/store/gap.log
(
    end=$(( $(date +%s) + 20 ))
    while [ "$(date +%s)" -lt "$end" ]; do
        start=$(date +%s%N)
        code=$(runuser -u alice -- curl -s -o /dev/null -w '%{http_code}' --max-time 60 \
            --unix-socket /run/deepseek/deepseekd.sock http://localhost/v2/models/demo/infer -d "$request")
        echo "$code $(( ($(date +%s%N) - start) / 1000000 ))" >>/root/store/gap.log
    done
) &
loader=$!
sleep 3
check "store: activate 2.0.0 --restart" deepseek-audit model activate scorer 2.0.0 --restart
wait "$loader"
check "store: 2.0.0 serves after the activation" served "$v2" 2.0.0
check "store: the activation is audited" audited model_activate 2.0.0
check "store: no request failed across the restart (socket activation queues them)" sh -c \
    "test -s /root/store/gap.log && ! grep -v '^200 ' /root/store/gap.log"
echo "MEASURED store restart gap: $(wc -l </root/store/gap.log) requests in 20 s around activate --restart," \
    "slowest $(sort -k2 -n /root/store/gap.log | tail -1 | cut -d' ' -f2) ms," \
    "median $(sort -k2 -n /root/store/gap.log | awk '{a[NR]=$2} END {print a[int((NR+1)/2)]}') ms," \
    "non-200: $(grep -vc '^200 ' /root/store/gap.log)"

check "store: rollback --restart" deepseek-audit model rollback scorer --restart
check "store: 1.0.0 serves after the rollback" served "$v1" 1.0.0
check "store: the rollback is audited" audited model_rollback 1.0.0
check "store: 2.0.0 removed; 1.0.0 still serves" sh -ec "
    deepseek-audit model remove scorer 2.0.0
    test ! -e /var/lib/deepseek/models/scorer/2.0.0
    $(declare -f infer_store served); request='$request'; served '$v1' 1.0.0"
check "store: the removal is audited" audited model_remove 2.0.0
loaded_versions() { # the versions of scorer's model_load records, in order
    exported model_load | grep -F '"model":"scorer"' | grep -o '"version":"[^"]*"' | cut -d'"' -f4 | tr '\n' ' '
}
check "store: its model_load records name the versions served: 1.0.0, 2.0.0, 1.0.0" \
    test "$(loaded_versions)" = "1.0.0 2.0.0 1.0.0 "
check "store: deepseek-audit verify: INTEG-MODEL-STORE passes" sh -c \
    'deepseek-audit verify --format json | tr -d "\n" | grep -o "\"id\": *\"INTEG-MODEL-STORE\"[^{]*" | tr -d " " | grep -qF "\"result\":\"pass\""'
check "store: a link moved by hand is refused at start (65), and named" sh -ec '
    ln -sfn 2.0.0-missing /var/lib/deepseek/models/scorer/active
    systemctl reset-failed deepseekd.service
    systemctl restart deepseekd.service || true
    sleep 4
    test "$(systemctl show -P ExecMainStatus deepseekd.service)" = 65
    journalctl -u deepseekd.service --no-pager -o cat | grep ERROR | grep -q "scorer/active"'
evidence "deepseek-audit model list" deepseek-audit model list
# Back to the package's state for the steps that follow.
ln -sfn 1.0.0 /var/lib/deepseek/models/scorer/active
cat /root/store/deepseekd.toml.package >/etc/deepseek/deepseekd.toml
deepseek-integrity update >/dev/null
systemctl reset-failed deepseekd.service
systemctl restart deepseekd.service
