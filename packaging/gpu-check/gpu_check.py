#!/usr/bin/env python3
"""The GPU check: deepseekd locked down with ONNX Runtime's CUDA provider,
a KServe inference on the GPU, and the LLM engine's decode tokens/s at 1, 8
and 32 streams on a DeepSeek-R1-Distill-Qwen-1.5B-shaped float16 model with
random weights, against the copy-bandwidth bound and transformers' generate.
docs/development/gpu-check.md says how a session with a GPU runs it.

    python3 packaging/gpu-check/gpu_check.py --release DIR --ort LIB --out DIR
    # the dry run on the CPU (make gpu-check-dry):
    python3 packaging/gpu-check/gpu_check.py --release DIR --ort LIB --out DIR \\
        --device cpu --shape tiny --streams 1,2,4 --tokens 16

Run as root (the daemon switches to nobody). In order, each step bounded in
time and recorded in OUT/results.json as soon as it is done:

  1. make_model.py writes the model (r1-1.5b: 3.5 GB of float16 in external
     data) into a scratch directory, beside a copy of the demo tensor model.
  2. torch_bench.py, in a child process: the device's copy bandwidth and
     transformers' generate at each stream count as batch size, on the same
     weights (--skip-transformers leaves it out).
  3. deepseek-audit and a signed integrity database over both model
     directories (integrity.enforce stays on: the daemon hashes the 3.5 GB
     and hands ONNX Runtime the external data from memory).
  4. deepseekd with both models on DEVICE, under the first lockdown level
     that starts and passes the checks: "full" (Landlock, seccomp enforce,
     the unit's MemoryDenyWriteExecute=yes as the kernel's PR_SET_MDWE set
     before exec: the CUDA seccomp variant leaves W^X out, the kernel then
     enforces it), then "no-mdwe", "seccomp-log", "unconfined", each one a
     diagnosis of the one before. The checks: /v2/health/hardening shows
     the level's lockdown; /v2/models/demo/infer on the device answers
     y = 2x + 1 and row_sum; /v1/models shows the LLM on the device; one
     streamed completion. Only "full" passes the lockdown check.
  5. Decode tokens/s through the socket at each stream count: that many
     streamed /v1/completions at once (greedy, ignore_eos, exactly TOKENS
     tokens), a warm-up round and then ROUNDS rounds; aggregate = tokens
     after each stream's first / (last text event of any stream - first text
     event of any stream), and the time to the first token.
  6. The daemon is stopped, then the auditor; `deepseek-audit log verify`.

Then a table on stdout (also OUT/summary.txt), with the goals on a GPU:
batch 1 >= 50% of the bound (copy bandwidth / weight bytes a decode step
reads), aggregate at 8 streams >= 5x batch 1. OUT/logs/ holds each
attempt's deepseekd log and the auditor's. Exit status: 0 every check
passed and, on a GPU, both goals met; 2 a goal missed; 1 a check failed.
"""

import argparse
import concurrent.futures
import ctypes
import datetime
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import NamedTuple

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.dirname(HERE))  # packaging/, for appliance_bench
import make_model  # noqa: E402
from appliance_bench import NOBODY, log_tail, request, sign, start_auditor, stream, wait_ready  # noqa: E402
from arguments import bounded, counts  # noqa: E402

PROMPT = "The capital of France is"
LLM = "r1-shape"
DEMO = os.path.join(REPO, "fixtures", "models", "demo.onnx")
KSERVE_REQUEST = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
KSERVE_EXPECTED = {"y": [3.0, 5.0, 7.0, 9.0], "row_sum": [24.0]}
# What runtime.cuda_library_dir and runtime.cudnn_library_dir must hold (docs/guide/config.md).
CUDA_LIBRARIES = ("libcudart.so.13", "libcublasLt.so.13", "libcublas.so.13", "libnvrtc.so.13", "libcurand.so.10", "libcufft.so.12")
CUDNN_LIBRARIES = (
    "libcudnn.so.9", "libcudnn_graph.so.9", "libcudnn_ops.so.9", "libcudnn_heuristic.so.9", "libcudnn_adv.so.9",
    "libcudnn_cnn.so.9", "libcudnn_engines_precompiled.so.9", "libcudnn_engines_runtime_compiled.so.9",
)
LIBRARY_DIRS = ("/usr/local/cuda/lib64", "/usr/lib/x86_64-linux-gnu")
# systemd's MemoryDenyWriteExecute=yes without systemd: the kernel's
# PR_SET_MDWE (65) with PR_MDWE_REFUSE_EXEC_GAIN (1), read back with
# PR_GET_MDWE (66); execve passes it on to the daemon.
MDWE_EXEC = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(65, 1, 0, 0, 0) != 0 or libc.prctl(66, 0, 0, 0, 0) != 1:
    sys.exit("error: PR_SET_MDWE failed: " + os.strerror(ctypes.get_errno()) + " (it needs Linux 6.3 or later)")
os.execv(sys.argv[1], sys.argv[1:])
"""
LOG_BYTES = 200_000  # of each log copied to OUT/logs


class Timed(NamedTuple):
    """One streamed completion: its token counts, when it was sent
    (time.perf_counter()), and its first and last text events, in seconds
    after that."""

    prompt_tokens: int
    completion_tokens: int
    sent: float
    first: float
    last: float


class Level(NamedTuple):
    name: str
    mdwe: bool
    sandbox: str  # the [sandbox] table's keys
    seccomp: str | None  # the mode the hardening report must show; None: unconfined


LEVELS = (
    Level("full", True, 'user = "nobody"\nseccomp = "enforce"\n', "enforce"),
    Level("no-mdwe", False, 'user = "nobody"\nseccomp = "enforce"\n', "enforce"),
    Level("seccomp-log", False, 'user = "nobody"\nseccomp = "log"\n', "log"),
    Level("unconfined", False, "enforce = false\n", None),
)


class Check(Exception):
    """A check that failed, with what was seen."""


class Run:
    """The results so far, written to OUT/results.json after every step."""

    def __init__(self, out, budget):
        self.out = out
        self.deadline = time.monotonic() + budget
        self.results = {"started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "checks": []}

    def left(self):
        return self.deadline - time.monotonic()

    def check(self, name, ok, detail):
        self.results["checks"].append({"check": name, "ok": ok, "detail": detail})
        print(f"{'PASS' if ok else 'FAIL'} {name}: {detail}", flush=True)
        self.save()

    def save(self):
        with open(os.path.join(self.out, "results.json.tmp"), "w") as f:
            json.dump(self.results, f, indent=2)
        os.replace(os.path.join(self.out, "results.json.tmp"), os.path.join(self.out, "results.json"))


def say(message):
    print(f"gpu-check: {message}", flush=True)


# ==================================================================== machine


def landlock_abi():
    """The kernel's Landlock ABI (landlock_create_ruleset with
    LANDLOCK_CREATE_RULESET_VERSION), or the error."""
    libc = ctypes.CDLL(None, use_errno=True)
    abi = libc.syscall(444, None, 0, 1)
    return abi if abi >= 0 else f"none ({os.strerror(ctypes.get_errno())})"


def machine(device):
    info = {
        "kernel": platform.release(),
        "uid": os.getuid(),
        "landlock_abi": landlock_abi(),
        "python": platform.python_version(),
        "ld_library_path": os.environ.get("LD_LIBRARY_PATH", ""),
    }
    if device == "cuda":
        info["nvidia_nodes"] = sorted(n for n in os.listdir("/dev") if n.startswith("nvidia"))
        try:
            info["nvidia_smi"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                capture_output=True, text=True, timeout=30,
            ).stdout.strip()
        except (OSError, subprocess.TimeoutExpired) as e:
            info["nvidia_smi"] = f"not run: {e}"
    return info


def library_dir(names, given, key):
    """GIVEN, or the first directory of LD_LIBRARY_PATH and LIBRARY_DIRS that
    holds every file of NAMES: the daemon loads them from there, and
    Landlock grants it (runtime.KEY)."""
    candidates = [given] if given else [d for d in os.environ.get("LD_LIBRARY_PATH", "").split(":") if d] + list(LIBRARY_DIRS)
    missing = {}
    for directory in candidates:
        lacking = [n for n in names if not os.path.exists(os.path.join(directory, n))]
        if not lacking:
            return os.path.realpath(directory)
        missing[directory] = lacking
    raise SystemExit(
        f"error: no directory holds every library runtime.{key} needs ({', '.join(names)}); "
        + "; ".join(f"{d} lacks {', '.join(m)}" for d, m in missing.items())
        + f". Name one with --{key.replace('_', '-')}."
    )


# ================================================================ the daemon


def daemon_config(args, level, work, audit_sock, pinned, sessions):
    cuda = args.device == "cuda"
    sandbox = level.sandbox + (f'cuda_cache_dir = "{work}/cuda-cache"\n' if cuda else "")
    runtime = f'library = "{args.ort}"\n'
    if cuda:
        runtime += f'cuda_library_dir = "{args.cuda_library_dir}"\ncudnn_library_dir = "{args.cudnn_library_dir}"\n'
    threads = "" if cuda else "intra_op_threads = 1\n"
    return (
        f'# Written by packaging/gpu-check/gpu_check.py, lockdown level "{level.name}".\n'
        f'[server]\nsocket = "{work}/deepseekd.sock"\nallowed_uids = [{os.getuid()}]\nallowed_groups = []\n\n'
        f"[sandbox]\n{sandbox}\n"
        f'[audit]\nsocket = "{audit_sock}"\n\n'
        f'[integrity]\ndatabase = "{work}/integrity.db"\nverifier_key = {pinned}\n\n'
        f"[runtime]\n{runtime}\n"
        f'[[model]]\nname = "demo"\npath = "{work}/demo/demo.onnx"\ndevice = "{args.device}"\n\n'
        f'[[model]]\nname = "{LLM}"\nkind = "causal-lm"\npath = "{work}/llm"\ndevice = "{args.device}"\n'
        f"sessions = {sessions}\ncontext_length = {args.context}\n{threads}"
    )


def start_daemon(args, level, work, audit_sock, pinned, run):
    """deepseekd at LEVEL, ready: returns (process, socket, log), or raises Check."""
    config = os.path.join(work, f"deepseekd-{level.name}.toml")
    with open(config, "w") as f:
        f.write(daemon_config(args, level, work, audit_sock, pinned, max(args.streams)))
    log = os.path.join(work, f"deepseekd-{level.name}.log")
    command = [os.path.join(args.release, "deepseekd"), "--config", config]
    if level.mdwe:
        command = [sys.executable, "-c", MDWE_EXEC] + command
    sock = os.path.join(work, "deepseekd.sock")
    with open(log, "w") as f:
        daemon = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=f)
    if not wait_ready(sock, daemon, min(args.ready_timeout, max(run.left(), 1))):
        running = daemon.poll() is None
        stop(daemon)
        state = "not ready in time" if running else f"exited ({exit_status(daemon.returncode)})"
        raise Check(f"{state}: {last_error(log)}\nits log ends:\n{log_tail(log)}")
    return daemon, sock, log


def exit_status(code):
    return f"killed by {signal.Signals(-code).name}" if code < 0 else f"status {code}"


def last_error(log):
    """The log's last ERROR line or panic, which says why the daemon stopped."""
    with open(log, errors="replace") as f:
        lines = f.read().splitlines()
    for i in range(len(lines) - 1, -1, -1):
        if "panicked at" in lines[i]:
            return " ".join(lines[i : i + 2])
        if " ERROR " in lines[i] or "error:" in lines[i]:
            return lines[i]
    return "nothing logged at ERROR"


def stop(process, seconds=60):
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(seconds)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def answer(sock, method, path, body=None):
    status, raw = request(sock, method, path, body)
    if status != 200:
        raise Check(f"{method} {path}: HTTP {status}: {raw[:1000]!r}")
    return json.loads(raw)


def check_hardening(sock, level, device):
    """The report's lockdown against the level; returns its summary."""
    report = answer(sock, "GET", "/v2/health/hardening")
    lockdown, kernel = report["lockdown"], report["kernel"]
    summary = {
        "enforced": lockdown["enforced"],
        "steps": [s["step"] for s in lockdown["steps"]],
        "landlock": lockdown["landlock"] and {k: lockdown["landlock"][k] for k in ("abi", "status", "scopes")},
        "seccomp": lockdown["seccomp"] and {k: lockdown["seccomp"][k] for k in ("mode", "variant", "allowed_syscalls")},
        "kernel": kernel,
        "mdwe": "PR_SET_MDWE(PR_MDWE_REFUSE_EXEC_GAIN), set before exec" if level.mdwe else "off",
    }
    if level.seccomp is None:
        wrong = [] if not lockdown["enforced"] else ["enforced"]
    else:
        expected = {
            "enforced": True,
            "steps": 9,
            "landlock": (6, "fully enforced"),
            "seccomp": (level.seccomp, device),
            "caps": "0000000000000000",
            "no_new_privs": "1",
            "kernel seccomp": "2",
        }
        seen = {
            "enforced": lockdown["enforced"],
            "steps": len(lockdown["steps"]),
            "landlock": lockdown["landlock"] and (lockdown["landlock"]["abi"], lockdown["landlock"]["status"]),
            "seccomp": lockdown["seccomp"] and (lockdown["seccomp"]["mode"], lockdown["seccomp"]["variant"]),
            "caps": "0000000000000000" if all(kernel[c] == "0000000000000000" for c in ("cap_inh", "cap_prm", "cap_eff", "cap_bnd", "cap_amb")) else "not all empty",
            "no_new_privs": kernel["no_new_privs"],
            "kernel seccomp": kernel["seccomp"],
        }
        wrong = [f"{k}: {seen[k]!r}, expected {v!r}" for k, v in expected.items() if seen[k] != v]
    if wrong:
        raise Check("hardening report: " + "; ".join(wrong))
    return summary


def check_kserve(sock, device):
    metadata = answer(sock, "GET", "/v2/models/demo")["parameters"]
    if metadata["device"] != device or metadata["cpu_fallback"]:
        raise Check(f"demo runs on {metadata['device']} (cpu_fallback {metadata['cpu_fallback']}: {metadata['cpu_fallback_reason']})")
    outputs = {o["name"]: o["data"] for o in answer(sock, "POST", "/v2/models/demo/infer", KSERVE_REQUEST)["outputs"]}
    if outputs != KSERVE_EXPECTED:
        raise Check(f"demo answered {outputs}, expected {KSERVE_EXPECTED}")
    return {"device": metadata["device"], "outputs": outputs}


def check_llm(sock, device):
    models = {m["id"]: m for m in answer(sock, "GET", "/v1/models")["data"]}
    entry = models.get(LLM)
    if entry is None or entry["device"] != device:
        raise Check(f"/v1/models: {entry}, expected {LLM} on {device}")
    return {"model": entry, "smoke_completion": timed_stream(sock, PROMPT, 4, 120)._asdict()}


def attempt(args, level, work, audit_sock, pinned, run):
    """Starts the daemon at LEVEL and checks it; returns (process, socket,
    the checks' results), or raises Check with what failed."""
    say(f'starting deepseekd, lockdown "{level.name}"')
    started = time.monotonic()
    daemon, sock, log = start_daemon(args, level, work, audit_sock, pinned, run)
    try:
        ready_s = time.monotonic() - started
        seen = {"ready_s": round(ready_s, 1)}
        seen["hardening"] = check_hardening(sock, level, args.device)
        seen["kserve"] = check_kserve(sock, args.device)
        seen["llm"] = check_llm(sock, args.device)
        return daemon, sock, seen
    except (Check, OSError, KeyError, ValueError, SystemExit) as e:  # stream() exits on a bad answer
        stop(daemon)
        raise Check(f"{type(e).__name__}: {e}\nits log ends:\n{log_tail(log)}") from e


# ================================================================ measuring


def timed_stream(sock, prompt, tokens, timeout):
    """A streamed completion of exactly TOKENS tokens (ignore_eos), timed."""
    at_first = []
    prompt_tokens, completion_tokens, first, last = stream(
        sock, LLM, prompt, tokens, on_first=lambda: at_first.append(time.perf_counter()), timeout=timeout
    )
    return Timed(prompt_tokens, completion_tokens, at_first[0] - first, first, last)


def one_round(sock, streams, tokens, timeout):
    """STREAMS streamed completions sent at once; their summary."""
    barrier = threading.Barrier(streams)

    def one(_):
        barrier.wait(60)
        return timed_stream(sock, PROMPT, tokens, timeout)

    with concurrent.futures.ThreadPoolExecutor(streams) as pool:
        done = list(pool.map(one, range(streams)))
    short = [d.completion_tokens for d in done if d.completion_tokens != tokens]
    if short:
        raise Check(f"completions of {short} tokens, expected {tokens} (ignore_eos)")
    first = min(d.sent + d.first for d in done)
    last = max(d.sent + d.last for d in done)
    return {
        "aggregate_decode_tokens_per_s": sum(d.completion_tokens - 1 for d in done) / (last - first),
        "per_stream_decode_tokens_per_s": statistics.median((d.completion_tokens - 1) / (d.last - d.first) for d in done),
        "ttft_median_s": statistics.median(d.first for d in done),
        "ttft_max_s": max(d.first for d in done),
        "wall_s": last - min(d.sent for d in done),
        "prompt_tokens": done[0].prompt_tokens,
    }


def measure(args, sock, run):
    rows = run.results.setdefault("llm_streams", [])
    for streams in args.streams:
        row = {"streams": streams, "tokens": args.tokens, "rounds": []}
        rows.append(row)
        say(f"{streams} stream(s): a warm-up round and {args.rounds} measured")
        one_round(sock, streams, args.tokens, args.stream_timeout)
        for _ in range(args.rounds):
            if row["rounds"] and run.left() < row["rounds"][-1]["wall_s"]:
                row["cut_short"] = "the time budget"
                break
            row["rounds"].append(one_round(sock, streams, args.tokens, args.stream_timeout))
        for key in ("aggregate_decode_tokens_per_s", "per_stream_decode_tokens_per_s", "ttft_median_s", "ttft_max_s"):
            row[key] = statistics.median(r[key] for r in row["rounds"])
        run.save()
        if run.left() <= 0:
            raise Check(f"the time budget ran out after {streams} streams")


# ===================================================================== steps


def prepare(args, work, run):
    """The model directory and the demo's; the model's sizes."""
    say(f"writing the {args.shape} model ({args.device})")
    shape = make_model.SHAPES[args.shape]
    if args.layers is not None:
        shape = shape._replace(layers=args.layers)
    summary = make_model.write_model(os.path.join(work, "llm"), shape)
    os.makedirs(os.path.join(work, "demo"))
    shutil.copyfile(DEMO, os.path.join(work, "demo", "demo.onnx"))
    run.results["model"] = {"shape": args.shape, **shape._asdict(), **summary}
    run.save()


def transformers_side(args, work, run):
    if args.skip_transformers:
        run.results["transformers"] = {"skipped": "--skip-transformers"}
        return
    say("torch_bench: copy bandwidth and transformers' generate")
    out = os.path.join(work, "torch_bench.json")
    log = os.path.join(run.out, "logs", "torch_bench.log")
    command = [
        sys.executable, os.path.join(HERE, "torch_bench.py"), os.path.join(work, "llm"), "--prompt", PROMPT, "--out", out,
        "--device", args.device, "--batches", ",".join(map(str, args.streams)), "--tokens", str(args.tokens),
        "--rounds", str(args.rounds), "--copy-mib", str(args.copy_mib),
    ]
    try:
        with open(log, "w") as f:
            subprocess.run(command, check=True, stdout=f, stderr=subprocess.STDOUT, timeout=min(args.torch_timeout, max(run.left(), 1)))
        with open(out) as f:
            run.results["transformers"] = json.load(f)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
        run.results["transformers"] = {"error": f"{e}", "log": log_tail(log)}
    run.check("torch_bench", "error" not in run.results["transformers"], run.results["transformers"].get("error", "bandwidth and generate measured"))


def lockdown_levels(args, work, audit_sock, pinned, run):
    """The daemon at the first level that starts and passes the checks:
    (process, socket), or (None, None)."""
    attempts = run.results["lockdown_attempts"] = []
    for level in LEVELS:
        try:
            daemon, sock, seen = attempt(args, level, work, audit_sock, pinned, run)
        except Check as e:
            attempts.append({"level": level.name, "ok": False, "error": str(e)})
            say(f'lockdown "{level.name}" failed: {str(e).splitlines()[0]}')
            run.save()
            continue
        attempts.append({"level": level.name, "ok": True})
        run.results.update(seen)
        break
    else:
        daemon = sock = None
    full = attempts[0]["ok"]
    ran = "none" if daemon is None else attempts[-1]["level"]
    run.check("lockdown", full, "full: Landlock, seccomp enforce, W^X by PR_SET_MDWE" if full else f"full failed; the first level that ran: {ran}")
    return daemon, sock


def serve_and_measure(args, work, run):
    auditor, audit_sock = start_auditor(args.release, work)
    daemon = None
    try:
        pinned = sign(args.release, work, [os.path.join(work, "llm"), os.path.join(work, "demo")])
        if args.device == "cuda":
            os.makedirs(os.path.join(work, "cuda-cache"))
            if os.getuid() == 0:
                os.chown(os.path.join(work, "cuda-cache"), NOBODY, NOBODY)
        daemon, sock = lockdown_levels(args, work, audit_sock, pinned, run)
        if daemon is not None:
            r = run.results
            run.check("hardening report", True, f"seccomp {r['hardening']['seccomp']}, Landlock {r['hardening']['landlock']}, W^X {r['hardening']['mdwe']}")
            run.check("KServe demo", True, f"{r['kserve']['outputs']} on {r['kserve']['device']}")
            model = r["llm"]["model"]
            batching = "on" if model.get("batching") else f"off ({model.get('batching_off_reason')})"
            run.check("LLM", True, f"{LLM} on {model['device']}, kv_cache {model.get('kv_cache')}, batching {batching}")
            try:
                measure(args, sock, run)
                r["llm"]["after"] = {m["id"]: m for m in answer(sock, "GET", "/v1/models")["data"]}[LLM]
                run.check("LLM streams", True, f"{args.streams} streams measured")
            except (Check, OSError, SystemExit, threading.BrokenBarrierError) as e:  # stream() exits on a bad answer
                state = "running" if daemon.poll() is None else exit_status(daemon.poll())
                run.check("LLM streams", False, f"{type(e).__name__}: {e}; deepseekd {state}")
    finally:
        if daemon is not None:
            stop(daemon)
        stop(auditor)
        for name in os.listdir(work):
            if name.endswith((".log", ".toml")):
                with open(os.path.join(run.out, "logs", name), "w") as f:
                    f.write(log_tail(os.path.join(work, name), LOG_BYTES))
    verify = subprocess.run(
        [os.path.join(args.release, "deepseek-audit"), "--config", os.path.join(work, "audit", "audit.toml"), "log", "verify"],
        capture_output=True, text=True, timeout=120,
    )
    run.check("audit log verify", verify.returncode == 0, (verify.stdout + verify.stderr).strip()[-500:])


# ==================================================================== report


def report(args, run):
    """The table and the goals; returns whether both goals were met (None
    when they are not judged)."""
    r = run.results
    hf = {g["batch"]: g["decode_tokens_per_s"] for g in r.get("transformers", {}).get("generate", [])}
    rows = {row["streams"]: row for row in r.get("llm_streams", []) if row.get("rounds")}
    lines = [
        f"GPU check {r['started']}: device {args.device}{' (' + r['machine']['nvidia_smi'] + ')' if args.device == 'cuda' else ''}, kernel {r['machine']['kernel']}, "
        f"Landlock ABI {r['machine']['landlock_abi']}, lockdown {next((a['level'] for a in r.get('lockdown_attempts', []) if a['ok']), 'none')}",
        f"model: {args.shape}, {r['model']['parameters']:,} parameters, {r['model']['weight_bytes'] / 1e9:.2f} GB float16, "
        f"{r['model']['bytes_per_token'] / 1e9:.2f} GB read per decode step; {args.tokens} new tokens, greedy, prompt {PROMPT!r}",
        "",
        f"{'streams':>7} {'deepseekd tok/s':>15} {'per stream':>10} {'TTFT med':>9} {'TTFT max':>9} {'transformers':>12} {'ratio':>6}",
    ]
    for streams in args.streams:
        row, base = rows.get(streams), hf.get(streams)
        ours = row["aggregate_decode_tokens_per_s"] if row else None
        lines.append(
            f"{streams:>7} {fmt(ours):>15} {fmt(row and row['per_stream_decode_tokens_per_s']):>10} "
            f"{fmt(row and row['ttft_median_s'], 3):>9} {fmt(row and row['ttft_max_s'], 3):>9} {fmt(base):>12} "
            f"{fmt(ours / base if ours and base else None, 2):>6}"
        )
    bandwidth = r.get("transformers", {}).get("bandwidth")
    bound = bandwidth and bandwidth["bytes_per_s"] / r["model"]["bytes_per_token"]
    r["bound"] = bound and {"copy_bytes_per_s": bandwidth["bytes_per_s"], "bytes_per_token": r["model"]["bytes_per_token"], "tokens_per_s": bound}
    lines.append("")
    lines.append(
        f"bandwidth bound at batch 1: {bandwidth['bytes_per_s'] / 1e9:.0f} GB/s copy (read + write) / "
        f"{r['model']['bytes_per_token'] / 1e9:.2f} GB = {bound:.1f} tokens/s" if bound else "bandwidth bound: not measured"
    )
    one, eight = rows.get(1), rows.get(8)
    goals = r["goals"] = [
        {"goal": "batch 1 >= 50% of the bandwidth bound", "value": one and bound and one["aggregate_decode_tokens_per_s"] / bound, "target": 0.5},
        {"goal": "aggregate at 8 streams >= 5x batch 1", "value": one and eight and eight["aggregate_decode_tokens_per_s"] / one["aggregate_decode_tokens_per_s"], "target": 5.0},
    ]
    judged = args.device == "cuda"
    for goal in goals:
        goal["met"] = goal["value"] is not None and goal["value"] >= goal["target"]
        verdict = ("MET" if goal["met"] else "MISSED") if judged else "not judged on the CPU"
        lines.append(f"goal: {goal['goal']}: {fmt(goal['value'], 2)} (target {goal['target']}) {verdict}")
    text = "\n".join(lines)
    print("\n" + text, flush=True)
    with open(os.path.join(run.out, "summary.txt"), "w") as f:
        f.write(text + "\n")
    run.save()
    return all(g["met"] for g in goals) if judged else None


def fmt(value, digits=1):
    return "-" if value is None else f"{value:.{digits}f}"


# ====================================================================== main


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--release", required=True, help="the directory of deepseekd, deepseek-audit and deepseek-integrity")
    ap.add_argument("--ort", default=os.environ.get("ORT_DYLIB_PATH"), help="libonnxruntime.so.1.31.1 (default $ORT_DYLIB_PATH)")
    ap.add_argument("--out", default=os.environ.get("OUT"), help="where results.json, summary.txt and logs/ go (default $OUT)")
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    ap.add_argument("--shape", choices=sorted(make_model.SHAPES), default="r1-1.5b")
    ap.add_argument("--layers", type=bounded(1, 64), help="fewer (or more) layers than the shape has")
    ap.add_argument("--streams", type=counts, default=[1, 8, 32], help="concurrent streams (and transformers' batch sizes); default 1,8,32")
    ap.add_argument("--tokens", type=bounded(2, 4096), default=128, help="new tokens per completion (default 128)")
    ap.add_argument("--rounds", type=bounded(1, 20), default=3, help="measured rounds per stream count (default 3)")
    ap.add_argument("--context", type=bounded(16, 131072), default=1024, help="the LLM's context_length (default 1024)")
    ap.add_argument("--copy-mib", type=bounded(1, 16384), default=1024, help="the bandwidth probe's copy (default 1024)")
    ap.add_argument("--cuda-library-dir", help="runtime.cuda_library_dir (default: found in LD_LIBRARY_PATH)")
    ap.add_argument("--cudnn-library-dir", help="runtime.cudnn_library_dir (default: found in LD_LIBRARY_PATH)")
    ap.add_argument("--skip-transformers", action="store_true", help="no torch_bench.py (no bound, no transformers column)")
    ap.add_argument("--budget", type=bounded(60, 3600), default=480, help="seconds for the whole check; later steps are cut short (default 480)")
    ap.add_argument("--ready-timeout", type=bounded(10, 3600), default=300, help="seconds for deepseekd to get ready (default 300)")
    ap.add_argument("--torch-timeout", type=bounded(10, 3600), default=240, help="seconds for torch_bench.py (default 240)")
    ap.add_argument("--stream-timeout", type=bounded(10, 3600), default=300, help="seconds a completion may go without a byte (default 300)")
    ap.add_argument("--work", help="scratch directory (default: a new one in /tmp, removed at the end)")
    args = ap.parse_args()
    if not args.ort or not os.path.isfile(args.ort):
        ap.error(f"--ort: {args.ort!r} is not a file (source /tmp/g/env.sh sets ORT_DYLIB_PATH on the GPU machine)")
    if not args.out:
        ap.error("--out is needed when $OUT is not set")
    for binary in ("deepseekd", "deepseek-audit", "deepseek-integrity"):
        if not os.access(os.path.join(args.release, binary), os.X_OK):
            ap.error(f"--release: {args.release}/{binary} is not an executable")
    if args.context < len(PROMPT.encode()) + 1 + args.tokens:  # at most a token a byte, and BOS
        ap.error(f"--context {args.context} cannot hold the prompt and {args.tokens} tokens")
    args.ort, args.release = os.path.realpath(args.ort), os.path.realpath(args.release)
    if args.device == "cuda":
        args.cuda_library_dir = library_dir(CUDA_LIBRARIES, args.cuda_library_dir, "cuda_library_dir")
        args.cudnn_library_dir = library_dir(CUDNN_LIBRARIES, args.cudnn_library_dir, "cudnn_library_dir")

    os.umask(0o022)  # the daemon's user reads the model files
    os.makedirs(os.path.join(args.out, "logs"), exist_ok=True)
    run = Run(args.out, args.budget)
    run.results["args"] = dict(vars(args))
    run.results["machine"] = machine(args.device)
    run.save()
    work = args.work or tempfile.mkdtemp(prefix="gpu-check.", dir="/tmp")
    os.makedirs(work, exist_ok=True)
    os.chmod(work, 0o755)
    try:
        prepare(args, work, run)
        transformers_side(args, work, run)
        serve_and_measure(args, work, run)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    goals = report(args, run)
    if not all(c["ok"] for c in run.results["checks"]):
        sys.exit(1)
    if goals is False:
        sys.exit(2)


if __name__ == "__main__":
    main()
