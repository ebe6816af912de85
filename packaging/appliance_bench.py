"""What the benchmark scripts and the GPU check (packaging/gpu-check/)
share: an HTTP client over the daemon's Unix socket, a streamed
/v1/completions timed from the request, and the release auditor and daemon
started (locked down when run as root, every request audited, the model
directories checked against a signed integrity database) to serve converted
models from .models/.
"""

import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = os.path.join(ROOT, ".models")
NOBODY = 65534


class UnixConnection(http.client.HTTPConnection):
    """`timeout`: seconds any one socket operation may take (None: no limit)."""

    def __init__(self, path, timeout=None):
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)


def request(sock, method, path, body=None, timeout=60):
    """(status, body) of one request; `body` is sent as JSON."""
    connection = UnixConnection(sock, timeout)
    try:
        connection.request(method, path, None if body is None else json.dumps(body), {"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def stream(sock, model, prompt, max_tokens, on_first=None, timeout=None, fields=None):
    """(prompt tokens, completion tokens, time to the first text event, time
    to the last one), from sending the request; `on_first` is called at the
    first text event. `fields` are added to the body (EOS is ignored unless
    they hold a `response_format`, which refuses that)."""
    body = {
        "model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
        "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True},
    }
    body.update(fields or {})
    if "response_format" in body:
        del body["ignore_eos"]
    body = json.dumps(body)
    connection = UnixConnection(sock, timeout)
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


def at_once(count, one):
    """Runs `one(i)` for i in range(count) on threads started together;
    (their results, the wall time from the first start to the last end)."""
    results = [None] * count

    def keep(i):
        results[i] = one(i)

    threads = [threading.Thread(target=keep, args=(i,)) for i in range(count)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results, time.perf_counter() - started


def arguments(doc, variant):
    """The options of a SmolLM2 benchmark: --release, --ort (made
    absolute, as the daemon's configuration needs), --variant (a directory
    of .models/, `variant` by default), --rounds and --threads."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--release", default=os.path.join(ROOT, "target", "release"))
    parser.add_argument("--ort", required=True)
    parser.add_argument("--variant", default=variant, help="a directory of .models/")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    args.ort = os.path.abspath(args.ort)
    return args


def run(cmd, **kwargs):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kwargs).stdout


def start_appliance(release, ort, threads, work, variants, sessions=1, extra=""):
    """The auditor and the daemon, ready; returns (socket, processes)."""
    auditor, _ = start_auditor(release, work)
    try:
        return start_daemon(release, ort, threads, work, variants, sessions, auditor, extra)
    except BaseException:
        auditor.kill()
        auditor.wait()
        raise


def start_daemon(release, ort, threads, work, variants, sessions, auditor, extra=""):
    """The daemon, once the auditor is listening; returns (socket, processes).
    `extra` is added to every [[model]] table."""
    pinned = sign(release, work, [os.path.join(MODELS, d) for d in variants.values()])
    sock = os.path.join(work, "deepseekd.sock")
    models = "".join(
        f'[[model]]\nname = "{name}"\nkind = "causal-lm"\npath = "{os.path.join(MODELS, d)}"\nintra_op_threads = {threads}\nsessions = {sessions}\n{extra}\n'
        for name, d in variants.items()
    )
    sandbox = '[sandbox]\nuser = "nobody"\n' if os.getuid() == 0 else "[sandbox]\nenforce = false\n"
    with open(os.path.join(work, "deepseekd.toml"), "w") as f:
        f.write(
            f'[server]\nsocket = "{sock}"\nallowed_uids = [{os.getuid()}]\nallowed_groups = []\n\n{sandbox}\n'
            f'[audit]\nsocket = "{work}/audit/audit.sock"\n\n[integrity]\ndatabase = "{work}/integrity.db"\nverifier_key = {pinned}\n\n'
            f'[runtime]\nlibrary = "{ort}"\n\n{models}'
        )
    log = os.path.join(work, "deepseekd.log")
    with open(log, "w") as f:
        daemon = subprocess.Popen([os.path.join(release, "deepseekd"), "--config", os.path.join(work, "deepseekd.toml")], stderr=f)
    if wait_ready(sock, daemon, 120):
        return sock, [daemon, auditor]
    daemon.kill()
    daemon.wait()
    sys.exit("deepseekd did not get ready:\n" + log_tail(log))


def start_auditor(release, work, seconds=60):
    """deepseek-audit serving WORK/audit/audit.sock, once it listens (its
    log in WORK/deepseek-audit.log). It admits the uid that starts the
    daemon and, as root, nobody, which the daemon switches to and reconnects
    as. Returns (the process, its socket)."""
    audit = os.path.join(work, "audit")
    os.makedirs(os.path.join(audit, "log"))
    os.chmod(work, 0o755)
    verifier = run([os.path.join(release, "deepseek-audit"), "keygen", "--name", "bench", "--out", os.path.join(audit, "audit.key")]).strip()
    uids = [os.getuid()] + ([NOBODY] if os.getuid() == 0 else [])
    with open(os.path.join(audit, "audit.toml"), "w") as f:
        f.write(f'socket = "{audit}/audit.sock"\nlog_dir = "{audit}/log"\nsigning_key = "{audit}/audit.key"\n{verifier}\nallowed_uids = {uids}\nsyslog = false\n')
    log = os.path.join(work, "deepseek-audit.log")
    with open(log, "w") as f:
        auditor = subprocess.Popen([os.path.join(release, "deepseek-audit"), "--config", os.path.join(audit, "audit.toml"), "serve"], stderr=f)
    sock = os.path.join(audit, "audit.sock")
    deadline = time.monotonic() + seconds
    while not os.path.exists(sock):
        if auditor.poll() is not None or time.monotonic() > deadline:
            auditor.kill()
            auditor.wait()
            sys.exit("deepseek-audit did not start:\n" + log_tail(log))
        time.sleep(0.1)
    os.chmod(sock, 0o666)
    return auditor, sock


def sign(release, work, directories):
    """A fresh integrity key and WORK/integrity.db over each model
    directory; returns the verifier key, as deepseekd.toml pins it."""
    key = os.path.join(work, "integrity.key")
    pinned = run([os.path.join(release, "deepseek-integrity"), "keygen", "--out", key]).split("verifier_key = ")[1].strip()
    rules = "".join(f'[[rule]]\npath = "{d}"\nrecursive = false\npreset = "model"\ndigest = "sha256"\n\n' for d in directories)
    with open(os.path.join(work, "integrity.toml"), "w") as f:
        f.write(f'database = "{work}/integrity.db"\nsigning_key = "{key}"\nverifier_key = {pinned}\n\n{rules}')
    run([os.path.join(release, "deepseek-integrity"), "--config", os.path.join(work, "integrity.toml"), "init"])
    return pinned


def wait_ready(sock, daemon, seconds):
    """Whether the daemon answers /v2/health/ready within SECONDS (False at
    once when it exits)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if daemon.poll() is not None:
            return False
        try:
            if request(sock, "GET", "/v2/health/ready", timeout=5)[0] == 200:
                return True
        except (OSError, http.client.HTTPException):
            pass
        time.sleep(0.2)
    return False


def log_tail(path, chars=3000):
    with open(path, errors="replace") as f:
        return f.read()[-chars:]


def status_kib(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


