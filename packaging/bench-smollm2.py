#!/usr/bin/env python3
"""SmolLM2-135M-Instruct: deepseekd against llama.cpp on the same cores.

    python packaging/bench-smollm2.py --release target/release --ort LIB [--rounds 15] [--threads 2]

Starts the release deepseek-audit and deepseekd (locked down when run as
root, every request audited, the model directories checked against a
signed integrity database) serving the converted fp32 and int4 variants,
one slot each on THREADS intra-op threads; loads llama.cpp
(llama-cpp-python) in this process on the Q4_1 GGUF with the same number of
threads. Each round measures every row once, in a fresh random order:

  prefill  a prompt of about 200 tokens, one completion token; tokens/s =
           prompt tokens / time to the first token (the daemon: streamed
           /v1/completions over the socket, from the request to the first
           event with text; llama.cpp: eval() of the prompt)
  decode   200 tokens after a short prompt, greedy, EOS ignored; tokens/s =
           (tokens - 1) / (time from the first text event to the last)

It prints medians and, paired per round, each daemon row over llama.cpp.
With --memory it instead serves the int4 variant alone with 1, then 2
slots of the per-slot engine (`batching = false`), and prints the daemon's
resident memory after one answer, beside the size of the model's files
(packaging/bench-batching.py measures the batching engine).
`make bench-llm` runs it after the tiny-r1 benchmark (BENCHMARKS.md).
"""

import argparse
import os
import random
import statistics
import tempfile
import time

from llama_cpp import Llama

from appliance_bench import MODELS, ROOT, start_appliance, status_kib, stream
GGUF = os.path.join(MODELS, "smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
VARIANTS = {"smollm2": "smollm2-135m", "smollm2-int4": "smollm2-135m-int4"}
DECODE_PROMPT = "The capital of France is"
DECODE_TOKENS = 200
# About 200 tokens of plain English.
PREFILL_PROMPT = " ".join(
    ["The appliance serves models on a locked-down server with no network, and every request is recorded in a signed audit log before its answer leaves."] * 7
)


def llama_prefill(llm, ids):
    llm.reset()
    started = time.perf_counter()
    llm.eval(ids)
    return len(ids) / (time.perf_counter() - started)


def llama_decode(llm, ids, tokens):
    llm.reset()
    llm.eval(ids)
    token = llm.sample(temp=0.0, top_k=1)
    started = time.perf_counter()
    for _ in range(tokens - 1):
        llm.eval([token])
        token = llm.sample(temp=0.0, top_k=1)
    return (tokens - 1) / (time.perf_counter() - started)


def memory(args):
    directory = os.path.join(MODELS, VARIANTS["smollm2-int4"])
    files = sum(os.path.getsize(os.path.join(directory, f)) for f in os.listdir(directory))
    print(f"int4 model directory: {files / 2**20:.1f} MiB")
    for sessions in (1, 2):
        with tempfile.TemporaryDirectory() as work:
            sock, processes = start_appliance(
                args.release, args.ort, args.threads, work, {"smollm2-int4": VARIANTS["smollm2-int4"]}, sessions,
                extra="batching = false\n",
            )
            try:
                stream(sock, "smollm2-int4", DECODE_PROMPT, 32)
                pid = processes[0].pid
                print(
                    f"sessions = {sessions}: deepseekd VmRSS {status_kib(pid, 'VmRSS') / 1024:.1f} MiB, "
                    f"peak VmHWM {status_kib(pid, 'VmHWM') / 1024:.1f} MiB"
                )
            finally:
                for process in processes:
                    process.terminate()
                    process.wait()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--release", default=os.path.join(ROOT, "target", "release"))
    parser.add_argument("--ort", required=True)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--memory", action="store_true")
    args = parser.parse_args()
    args.ort = os.path.abspath(args.ort)
    if args.memory:
        return memory(args)
    llm = Llama(model_path=GGUF, n_ctx=1024, n_threads=args.threads, n_threads_batch=args.threads, n_batch=512, verbose=False)
    prefill_ids = llm.tokenize(PREFILL_PROMPT.encode(), add_bos=False)
    decode_ids = llm.tokenize(DECODE_PROMPT.encode(), add_bos=False)
    with tempfile.TemporaryDirectory() as work:
        sock, processes = start_appliance(args.release, args.ort, args.threads, work, VARIANTS)
        try:
            rows = {}
            measures = []
            for model in VARIANTS:
                measures.append((f"deepseekd {model}", "prefill", lambda m=model: (lambda r: r[0] / r[2])(stream(sock, m, PREFILL_PROMPT, 1))))
                measures.append((f"deepseekd {model}", "decode", lambda m=model: (lambda r: (r[1] - 1) / (r[3] - r[2]))(stream(sock, m, DECODE_PROMPT, DECODE_TOKENS))))
            measures.append(("llama.cpp Q4_1", "prefill", lambda: llama_prefill(llm, prefill_ids)))
            measures.append(("llama.cpp Q4_1", "decode", lambda: llama_decode(llm, decode_ids, DECODE_TOKENS)))
            for _, _, measure in measures:
                measure()  # warm-up
            for _ in range(args.rounds):
                random.shuffle(measures)
                for row, kind, measure in measures:
                    rows.setdefault((row, kind), []).append(measure())
            rss = {}
            with open(f"/proc/{processes[0].pid}/status") as f:
                for line in f:
                    if line.startswith(("VmRSS", "VmHWM")):
                        key, value = line.split(":")
                        rss[key] = value.strip()
            with open(f"/proc/{os.getpid()}/status") as f:
                for line in f:
                    if line.startswith("VmRSS"):
                        rss["bench process, llama.cpp inside"] = line.split(":")[1].strip()
        finally:
            for process in processes:
                process.terminate()
                process.wait()
    print(f"SmolLM2-135M-Instruct, {args.rounds} rounds, {args.threads} threads each, prompt {len(prefill_ids)} tokens (prefill), {DECODE_TOKENS} tokens (decode)")
    print(f"{'row':<26} {'prefill tok/s':>14} {'decode tok/s':>13}")
    for row in dict.fromkeys(r for r, _ in rows):
        print(f"{row:<26} {statistics.median(rows[(row, 'prefill')]):>14.1f} {statistics.median(rows[(row, 'decode')]):>13.1f}")
    for model in VARIANTS:
        for kind in ("prefill", "decode"):
            ratios = [a / b for a, b in zip(rows[(f"deepseekd {model}", kind)], rows[("llama.cpp Q4_1", kind)])]
            print(f"{kind} {model} / llama.cpp: median of paired ratios {statistics.median(ratios):.2f}")
    print("deepseekd memory after the run:", rss)


if __name__ == "__main__":
    main()
