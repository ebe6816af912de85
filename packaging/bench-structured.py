#!/usr/bin/env python3
"""Structured output: what holding the answer to a JSON schema costs a
decoded token, SmolLM2 on the CPU.

    python3 packaging/bench-structured.py --ort LIB [--variant smollm2-135m] [--rounds 3] [--threads 2]

One daemon (release build, `sessions = 8`, batching), the same prompt
streamed through /v1/completions, greedy, DECODE_TOKENS tokens each way:
free (EOS ignored) and held to SCHEMA, whose JSON cannot end before
DECODE_TOKENS (so both make exactly as many tokens). For 1 and 8 streams
started together: the decode rate, completion tokens / the time from the
first text event to the last (per stream, then summed over the streams;
the median of the rounds), and the constrained rate over the free one.
The first constrained request of a round pays for compiling the schema
(a few milliseconds), outside the decode time measured.

It prints one table. `make bench-structured` runs it (BENCHMARKS.md).
"""

import statistics
import tempfile

from appliance_bench import arguments, at_once, start_appliance, stream

PROMPT = "List sixty European cities as JSON:"
DECODE_TOKENS = 128
CONCURRENCY = (1, 8)
SESSIONS = 8
# Sixty names: longer than DECODE_TOKENS tokens, so max_tokens ends both.
SCHEMA = {
    "type": "object",
    "properties": {
        "cities": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "name": {"type": "string", "maxLength": 24},
                    "country": {"type": "string", "pattern": "^[A-Z]{2}$"},
                    "capital": {"type": "boolean"},
                },
                "required": ["name", "country", "capital"],
                "additionalProperties": False,
            },
            "minItems": 60,
            "maxItems": 60,
        }
    },
    "required": ["cities"],
    "additionalProperties": False,
}
CONSTRAINED = {"response_format": {"type": "json_schema", "json_schema": {"name": "cities", "schema": SCHEMA}}}


def decode_rate(sock, model, streams, fields):
    """Summed decode tokens/s of `streams` requests started at once."""
    results, _ = at_once(streams, lambda _: stream(sock, model, PROMPT, DECODE_TOKENS, fields=fields))
    for _, tokens, _, _ in results:
        if tokens != DECODE_TOKENS:
            raise SystemExit(f"a stream made {tokens} tokens, not {DECODE_TOKENS}")
    return sum((tokens - 1) / (last - first) for _, tokens, first, last in results)


def main():
    args = arguments(__doc__, "smollm2-135m")
    model = "smollm2"
    rates = {(n, kind): [] for n in CONCURRENCY for kind in ("free", "json_schema")}
    with tempfile.TemporaryDirectory() as work:
        sock, processes = start_appliance(args.release, args.ort, args.threads, work, {model: args.variant}, SESSIONS)
        try:
            stream(sock, model, PROMPT, 8)  # warm-up
            stream(sock, model, PROMPT, DECODE_TOKENS, fields=CONSTRAINED)
            for _ in range(args.rounds):
                for n in CONCURRENCY:
                    # Alternated, so that a slower moment of a shared
                    # machine falls on both.
                    rates[(n, "free")].append(decode_rate(sock, model, n, None))
                    rates[(n, "json_schema")].append(decode_rate(sock, model, n, CONSTRAINED))
        finally:
            for p in processes:
                p.terminate()
                p.wait()
    print(f"{args.variant}, {args.threads} intra-op threads, {DECODE_TOKENS} tokens a stream, median of {args.rounds} rounds")
    print(f"{'streams':>7}  {'free tok/s':>10}  {'json_schema tok/s':>17}  {'ratio':>5}")
    for n in CONCURRENCY:
        free = statistics.median(rates[(n, "free")])
        held = statistics.median(rates[(n, "json_schema")])
        print(f"{n:>7}  {free:>10.1f}  {held:>17.1f}  {held / free:>5.2f}")


if __name__ == "__main__":
    main()
