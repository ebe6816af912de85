"""Greedy logprobs of a causal LM, computed with Python onnxruntime alone.

Usage: logprobs_reference.py MODEL_ONNX STEPS TOP PROMPT_ID...

Runs the prompt through the graph, then STEPS greedy steps (the most likely
token, ties to the lowest id), recomputing the whole sequence each step
with an empty KV cache, so that nothing of the daemon's decode loop is
shared. At each step it takes the log-softmax of the last position's raw
logits in float64 and prints, as one JSON array, per step:
{"id": chosen id, "logprob": its logprob, "top": [[id, logprob], ...]}, the
TOP most likely ids by logprob descending, then id ascending.

Run by tests/tests/logprobs.rs with the Python of .venv (`make test`
installs onnxruntime==1.31.1, the version the daemon pins, and numpy).
"""

import json
import sys

import numpy as np
import onnxruntime


def empty_past(spec):
    """A zero-length past for one `past_key_values.*` input: batch 1, and
    0 for the past length (the other named dimension)."""
    shape = [1] + [0 if isinstance(d, str) else d for d in spec.shape[1:]]
    dtype = np.float16 if spec.type == "tensor(float16)" else np.float32
    return np.zeros(shape, dtype=dtype)


def main(model, steps, top, prompt):
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    session = onnxruntime.InferenceSession(
        model, options, providers=["CPUExecutionProvider"]
    )
    inputs = session.get_inputs()
    ids = list(prompt)
    out = []
    for _ in range(steps):
        n = len(ids)
        feed = {}
        for spec in inputs:
            if spec.name == "input_ids":
                feed[spec.name] = np.array([ids], dtype=np.int64)
            elif spec.name == "attention_mask":
                feed[spec.name] = np.ones((1, n), dtype=np.int64)
            elif spec.name == "position_ids":
                feed[spec.name] = np.arange(n, dtype=np.int64)[None, :]
            elif spec.name.startswith("past_key_values."):
                feed[spec.name] = empty_past(spec)
            else:
                raise SystemExit(f"unexpected graph input {spec.name}")
        (logits,) = session.run(["logits"], feed)
        row = logits[0, -1].astype(np.float64)
        peak = row.max()
        logprobs = row - (peak + np.log(np.exp(row - peak).sum()))
        order = np.lexsort((np.arange(row.size), -logprobs))
        chosen = int(order[0])
        out.append(
            {
                "id": chosen,
                "logprob": float(logprobs[chosen]),
                "top": [[int(i), float(logprobs[i])] for i in order[:top]],
            }
        )
        ids.append(chosen)
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), [int(a) for a in sys.argv[4:]])
