#!/usr/bin/env python3
"""Check the converted SmolLM2 against an independent implementation:
llama.cpp (llama-cpp-python, pinned in packaging/llamacpp-requirements.txt)
on the GGUF the conversion started from. `make check-llamacpp` runs it.

    python packaging/check-llamacpp.py [--models .models] [--threads 2]

It compares with llama.cpp twice: on the Q4_1 GGUF the conversion started
from, and on the same weights dequantized to float32
(.models/smollm2/SmolLM2-135M-Instruct.f32.gguf, packaging/gguf-f32.py),
where llama.cpp does not round the activations to 8 bits as its Q4_1
products do. For each of the five chat prompts of
fixtures/llm/smollm2/expected.json:

  - llama.cpp tokenizes the rendered prompt (special tokens parsed) to the
    recorded prompt ids, and the strings of tokenizer-ids.json to their
    recorded ids (the ids the daemon's tokenizer is tested against);
  - llama.cpp's greedy continuation of 32 tokens is fed, teacher-forced,
    to each converted variant (ONNX Runtime, one pass): the share of the
    32 positions where the variant's top-1 token is llama.cpp's;
  - the first 8 greedy tokens of each variant (recorded in expected.json,
    which the daemon's tests hold it to) against llama.cpp's first 8.

It prints the figures for fp32 and int4 and exits 1 unless fp32 answers the
README's question (capital_of_france) with llama.cpp's tokens on both GGUFs,
agrees at
95 % of the positions or more with both, and has the first 8 tokens
identical for at least 4 of the 5 prompts with the float32 GGUF (issue
14's bar; on Q4_1 the count is printed: llama.cpp's 8-bit activations flip
near-ties there). int4 is reported, not judged: it rounds weights that were
already 4-bit a second time.
"""

import argparse
import json
import os
import sys

import numpy as np
import onnxruntime as ort
from llama_cpp import Llama

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
FIXTURE = os.path.join(ROOT, "fixtures", "llm", "smollm2")
GGUFS = (
    ("Q4_1", "smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
    ("f32", "smollm2/SmolLM2-135M-Instruct.f32.gguf"),
)
VARIANTS = ("smollm2-135m", "smollm2-135m-int4")
CONTINUATION = 32
FIRST = 8


def teacher_forced_top1(session, layers, kv_heads, head_dim, ids, start):
    """The argmax at each position from `start` on, one pass, no cache."""
    empty = np.zeros((1, kv_heads, 0, head_dim), np.float32)
    feeds = {
        "input_ids": np.array([ids], np.int64),
        "attention_mask": np.ones((1, len(ids)), np.int64),
        "position_ids": np.arange(len(ids), dtype=np.int64)[None],
    }
    for i in range(layers):
        feeds[f"past_key_values.{i}.key"] = empty
        feeds[f"past_key_values.{i}.value"] = empty
    logits = session.run(["logits"], feeds)[0][0]
    # The logits at position p predict token p + 1.
    return [int(np.argmax(logits[p])) for p in range(start - 1, len(ids) - 1)]


def compare(path, threads, models, expected, strings, judge_first):
    """The figures against llama.cpp on the GGUF at `path`; the failures."""
    llm = Llama(
        model_path=path,
        n_ctx=1024,
        n_threads=threads,
        n_batch=512,
        logits_all=False,
        # The KV cache in float32, as the converted model keeps it (llama.cpp's
        # default is float16).
        type_k=0,
        type_v=0,
        verbose=False,
    )
    failures = []

    mismatched = [
        s["text"]
        for s in strings
        if llm.tokenize(s["text"].encode(), add_bos=False, special=True) != s["ids"]
    ]
    print(f"  tokenizer: {len(strings) - len(mismatched)}/{len(strings)} strings give llama.cpp's ids")
    if mismatched:
        failures.append(f"llama.cpp tokenizes {mismatched!r} otherwise")

    prompts = [p for p in expected["prompts"] if p["kind"] == "chat"]
    continuations = {}
    for p in prompts:
        ids = llm.tokenize(p["prompt"].encode(), add_bos=False, special=True)
        if ids != p["prompt_ids"]:
            failures.append(f"{p['name']}: llama.cpp tokenizes the rendered prompt otherwise")
        out = []
        for token in llm.generate(ids, temp=0.0, top_k=1, reset=True):
            if len(out) == CONTINUATION:
                break
            out.append(int(token))
        continuations[p["name"]] = (p["prompt_ids"], out)

    for variant in VARIANTS:
        directory = os.path.join(models, variant)
        config = json.load(open(os.path.join(directory, "config.json")))
        eos = json.load(open(os.path.join(directory, "generation_config.json")))["eos_token_id"]
        eos = set(eos if isinstance(eos, list) else [eos])
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        session = ort.InferenceSession(
            os.path.join(directory, "model.onnx"), options, providers=["CPUExecutionProvider"]
        )
        agree = positions = first_same = 0
        rows = []
        for p in prompts:
            prompt_ids, reference = continuations[p["name"]]
            top1 = teacher_forced_top1(
                session,
                config["num_hidden_layers"],
                config["num_key_value_heads"],
                config["head_dim"],
                prompt_ids + reference,
                len(prompt_ids),
            )
            same = sum(a == b for a, b in zip(top1, reference))
            agree += same
            positions += len(reference)
            greedy = expected["greedy"][variant][p["name"]]["ids"][:FIRST]
            # A shorter answer counts when it ends at EOS where llama.cpp's does.
            first = greedy == reference[: len(greedy)] and (len(greedy) == FIRST or greedy[-1] in eos)
            first_same += first
            if variant == VARIANTS[0] and p["name"] == "capital_of_france" and not first:
                failures.append("fp32 does not answer the README's question as llama.cpp does")
            rows.append(f"    {p['name']:<18} top-1 {same:>2}/{len(reference)}  first {FIRST} greedy {'same' if first else 'differ'}")
        share = agree / positions
        print(f"  {variant}: teacher-forced top-1 agreement {agree}/{positions} = {share:.1%}; first {FIRST} greedy tokens identical for {first_same}/{len(prompts)} prompts")
        print("\n".join(rows))
        if variant == VARIANTS[0]:
            if share < 0.95:
                failures.append(f"fp32 agrees at {share:.1%} of positions, under 95 %")
            if judge_first and first_same < 4:
                failures.append(f"fp32's first {FIRST} tokens match for {first_same} prompts, under 4")
    return failures


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=os.path.join(ROOT, ".models"))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    expected = json.load(open(os.path.join(FIXTURE, "expected.json")))
    strings = json.load(open(os.path.join(FIXTURE, "tokenizer-ids.json")))["strings"]
    failures = []
    for label, gguf in GGUFS:
        print(f"llama.cpp on the {label} GGUF:")
        failures += [
            f"{label}: {failure}"
            for failure in compare(
                os.path.join(args.models, gguf), args.threads, args.models, expected, strings, label == "f32"
            )
        ]
    for failure in failures:
        print(f"FAIL: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
