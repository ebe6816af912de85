"""What the benchmark scripts share: an HTTP client over the daemon's Unix
socket, a streamed /v1/completions timed from the request, and the release
auditor and daemon started (locked down when run as root, every request
audited, the model directories checked against a signed integrity
database) to serve converted models from .models/.
"""

import http.client
import json
import os
import socket
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = os.path.join(ROOT, ".models")


class UnixConnection(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("localhost")
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.path)


def stream(sock, model, prompt, max_tokens, on_first=None):
    """(prompt tokens, completion tokens, time to the first text event, time
    to the last one), from sending the request; `on_first` is called at the
    first text event."""
    body = json.dumps({
        "model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
        "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True},
    })
    connection = UnixConnection(sock)
    connection.connect()
    started = time.perf_counter()
    connection.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
    response = connection.getresponse()
    if response.status != 200:
        sys.exit(f"{model}: HTTP {response.status}: {response.read()[:1000]!r}")
    first = last = usage = None
    buffer = b""
    while True:
        chunk = response.read1(65536)
        if not chunk:
            break
        buffer += chunk
        while b"\n\n" in buffer:
            event, buffer = buffer.split(b"\n\n", 1)
            data = event[len(b"data: "):]
            if data == b"[DONE]":
                continue
            parsed = json.loads(data)
            if parsed["choices"] and parsed["choices"][0].get("text"):
                last = time.perf_counter() - started
                if first is None:
                    first = last
                    if on_first:
                        on_first()
            if parsed.get("usage"):
                usage = parsed["usage"]
    connection.close()
    if first is None or usage is None or last is None:
        sys.exit(f"{model}: the stream had no text or no usage")
    return usage["prompt_tokens"], usage["completion_tokens"], first, last


def run(cmd, **kwargs):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kwargs).stdout


def start_appliance(release, ort, threads, work, variants, sessions=1, extra=""):
    """The auditor and the daemon, ready; returns (socket, processes)."""
    audit = os.path.join(work, "audit")
    os.makedirs(os.path.join(audit, "log"))
    os.chmod(work, 0o755)
    verifier = run([os.path.join(release, "deepseek-audit"), "keygen", "--name", "bench", "--out", os.path.join(audit, "audit.key")]).strip()
    uids = [os.getuid()] + ([65534] if os.getuid() == 0 else [])
    with open(os.path.join(audit, "audit.toml"), "w") as f:
        f.write(f'socket = "{audit}/audit.sock"\nlog_dir = "{audit}/log"\nsigning_key = "{audit}/audit.key"\n{verifier}\nallowed_uids = {uids}\nsyslog = false\n')
    auditor = subprocess.Popen(
        [os.path.join(release, "deepseek-audit"), "--config", os.path.join(audit, "audit.toml"), "serve"],
        stderr=open(os.path.join(work, "deepseek-audit.log"), "w"),
    )
    try:
        return start_daemon(release, ort, threads, work, variants, sessions, auditor, extra)
    except BaseException:
        auditor.kill()
        auditor.wait()
        raise


def start_daemon(release, ort, threads, work, variants, sessions, auditor, extra=""):
    """The daemon, once the auditor is listening; returns (socket, processes).
    `extra` is added to every [[model]] table."""
    audit = os.path.join(work, "audit")
    key = os.path.join(work, "integrity.key")
    pinned = run([os.path.join(release, "deepseek-integrity"), "keygen", "--out", key]).split("verifier_key = ")[1].strip()
    rules = "".join(f'[[rule]]\npath = "{os.path.join(MODELS, d)}"\nrecursive = false\npreset = "model"\ndigest = "sha256"\n\n' for d in variants.values())
    with open(os.path.join(work, "integrity.toml"), "w") as f:
        f.write(f'database = "{work}/integrity.db"\nsigning_key = "{key}"\nverifier_key = {pinned}\n\n{rules}')
    run([os.path.join(release, "deepseek-integrity"), "--config", os.path.join(work, "integrity.toml"), "init"])
    deadline = time.monotonic() + 60
    while not os.path.exists(os.path.join(audit, "audit.sock")):
        if auditor.poll() is not None or time.monotonic() > deadline:
            with open(os.path.join(work, "deepseek-audit.log")) as log:
                sys.exit("deepseek-audit did not start:\n" + log.read()[-3000:])
        time.sleep(0.1)
    os.chmod(os.path.join(audit, "audit.sock"), 0o666)
    sock = os.path.join(work, "deepseekd.sock")
    models = "".join(
        f'[[model]]\nname = "{name}"\nkind = "causal-lm"\npath = "{os.path.join(MODELS, d)}"\nintra_op_threads = {threads}\nsessions = {sessions}\n{extra}\n'
        for name, d in variants.items()
    )
    sandbox = '[sandbox]\nuser = "nobody"\n' if os.getuid() == 0 else "[sandbox]\nenforce = false\n"
    with open(os.path.join(work, "deepseekd.toml"), "w") as f:
        f.write(
            f'[server]\nsocket = "{sock}"\nallowed_uids = [{os.getuid()}]\nallowed_groups = []\n\n{sandbox}\n'
            f'[audit]\nsocket = "{audit}/audit.sock"\n\n[integrity]\ndatabase = "{work}/integrity.db"\nverifier_key = {pinned}\n\n'
            f'[runtime]\nlibrary = "{ort}"\n\n{models}'
        )
    daemon = subprocess.Popen([os.path.join(release, "deepseekd"), "--config", os.path.join(work, "deepseekd.toml")], stderr=open(os.path.join(work, "deepseekd.log"), "w"))
    for _ in range(600):
        if daemon.poll() is not None:
            break
        connection = UnixConnection(sock)
        try:
            connection.connect()
            connection.request("GET", "/v2/health/ready")
            if connection.getresponse().status == 200:
                return sock, [daemon, auditor]
        except OSError:
            pass
        finally:
            connection.close()
        time.sleep(0.2)
    daemon.kill()
    daemon.wait()
    with open(os.path.join(work, "deepseekd.log")) as log:
        sys.exit("deepseekd did not get ready:\n" + log.read()[-3000:])


def status_kib(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


