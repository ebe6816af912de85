#!/usr/bin/env python3
"""Continuous batching against the per-slot engine, SmolLM2 on the CPU.

    python3 packaging/bench-batching.py --ort LIB [--variant smollm2-135m-int4] [--rounds 3] [--threads 2]

Serves the converted model twice, one daemon after the other, with the same
`sessions = 16` and intra-op threads: once with `batching = false` (the
per-slot engine: a session, a copy of the weights and a cache per slot, one
request each) and once with batching (one session; every running request
decoded in one step). Through the socket, streamed /v1/completions,
greedy, EOS ignored. For each engine:

  aggregate  1, 4, 8 and 16 streams started together, DECODE_TOKENS each;
             tokens/s = all completion tokens / the wall time from the
             first request to the last token (median of the rounds)
  ttft       a 1-token request's time to its first token, alone, and while
             7 others stream (started and streaming before it is sent);
             median of 5 each
  memory     the daemon's VmRSS, sampled every 10 ms while 1 stream runs
             and while 8 run (the highest sample of each); VmHWM, the
             peak of its whole life, includes loading the model

It prints one table with both engines side by side and their ratios.
`make bench-llm` runs it (BENCHMARKS.md).
"""

import json
import statistics
import tempfile
import threading
import time

from appliance_bench import UnixConnection, arguments, at_once, start_appliance, status_kib, stream

DECODE_PROMPT = "The capital of France is"
DECODE_TOKENS = 128
LONG_TOKENS = 2000
TTFT_PROMPT = " ".join(["Every request is recorded in a signed audit log before its answer leaves."] * 3)
CONCURRENCY = (1, 4, 8, 16)
SESSIONS = 16
ENGINES = {"per-slot": "batching = false\n", "batched": ""}


def together(sock, model, streams, tokens):
    """Aggregate tokens/s of `streams` requests started at once."""
    results, wall = at_once(streams, lambda _: stream(sock, model, DECODE_PROMPT, tokens))
    return sum(r[1] for r in results) / wall


def background(sock, model, streaming, stop):
    """A long stream that says when its text flows, and leaves (closing
    the connection, which cancels it) once `stop` is set."""
    body = json.dumps({
        "model": model, "prompt": DECODE_PROMPT, "max_tokens": LONG_TOKENS, "temperature": 0,
        "ignore_eos": True, "stream": True,
    })
    connection = UnixConnection(sock)
    connection.connect()
    connection.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
    response = connection.getresponse()
    flowing = False
    while not stop.is_set():
        chunk = response.read1(65536)
        if not chunk:
            break
        if not flowing and b'"text":"' in chunk.replace(b'"text":""', b""):
            flowing = True
            streaming.wait()
    connection.close()


def ttft_beside(sock, model, others):
    """Time to the first token of a 1-token request while `others` stream."""
    streaming = threading.Barrier(others + 1)
    stop = threading.Event()
    threads = [threading.Thread(target=background, args=(sock, model, streaming, stop)) for _ in range(others)]
    for t in threads:
        t.start()
    if others:
        streaming.wait()
    first = stream(sock, model, TTFT_PROMPT, 1)[2]
    stop.set()
    for t in threads:
        t.join()
    return first


def peak_rss(pid, work):
    """Runs `work` while sampling the daemon's VmRSS; the highest sample, MiB."""
    samples = []
    done = threading.Event()

    def sample():
        while not done.is_set():
            samples.append(status_kib(pid, "VmRSS"))
            time.sleep(0.01)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        work()
    finally:
        done.set()
        sampler.join()
    return max(samples) / 1024


def measure(args, engine, extra):
    model = "smollm2"
    figures = {}
    with tempfile.TemporaryDirectory() as work:
        sock, processes = start_appliance(args.release, args.ort, args.threads, work, {model: args.variant}, SESSIONS, extra)
        pid = processes[0].pid
        try:
            stream(sock, model, DECODE_PROMPT, 8)  # warm-up
            figures["rss_1"] = peak_rss(pid, lambda: together(sock, model, 1, DECODE_TOKENS))
            figures["rss_8"] = peak_rss(pid, lambda: together(sock, model, 8, DECODE_TOKENS))
            figures["hwm"] = status_kib(pid, "VmHWM") / 1024
            for streams in CONCURRENCY:
                figures[f"agg_{streams}"] = statistics.median(
                    together(sock, model, streams, DECODE_TOKENS) for _ in range(args.rounds)
                )
            figures["ttft_alone"] = statistics.median(ttft_beside(sock, model, 0) for _ in range(5))
            figures["ttft_beside_7"] = statistics.median(ttft_beside(sock, model, 7) for _ in range(5))
        finally:
            for process in processes:
                process.terminate()
                process.wait()
    print(f"{engine}: done", flush=True)
    return figures


def main():
    args = arguments(__doc__, "smollm2-135m-int4")
    results = {engine: measure(args, engine, extra) for engine, extra in ENGINES.items()}
    old, new = results["per-slot"], results["batched"]
    print(f"{args.variant}, sessions = {SESSIONS}, {args.threads} intra-op threads, {DECODE_TOKENS} tokens a stream, {args.rounds} rounds")
    print(f"{'':<34} {'per-slot':>10} {'batched':>10} {'batched/per-slot':>17}")
    rows = [(f"aggregate tok/s, {n} streams", f"agg_{n}") for n in CONCURRENCY]
    rows += [("TTFT alone, ms", "ttft_alone"), ("TTFT beside 7 streams, ms", "ttft_beside_7")]
    rows += [("VmRSS during 1 stream, MiB", "rss_1"), ("VmRSS during 8 streams, MiB", "rss_8")]
    rows += [("VmHWM (loading included), MiB", "hwm")]
    for label, key in rows:
        scale = 1000 if key.startswith("ttft") else 1
        print(f"{label:<34} {old[key] * scale:>10.1f} {new[key] * scale:>10.1f} {new[key] / old[key]:>17.2f}")
    for engine, f in results.items():
        print(
            f"{engine}: TTFT beside 7 / alone {f['ttft_beside_7'] / f['ttft_alone']:.2f}; "
            f"RSS during 8 streams / during 1 {f['rss_8'] / f['rss_1']:.2f}"
        )


if __name__ == "__main__":
    main()
