#!/usr/bin/env python3
"""The GPU check's PyTorch side: the device's copy bandwidth, and
transformers' generate on the weights of a model directory that
make_model.py wrote.

    python packaging/gpu-check/torch_bench.py MODEL_DIR --prompt TEXT --out FILE.json \\
        [--device cuda] [--batches 1,8,32] [--tokens 128] [--rounds 3] [--copy-mib 1024]

  bandwidth  a device-to-device copy of COPY_MIB MiB, ten back to back per
             round; bytes read plus bytes written per second, the best
             round (a decode step reads its weights once: the bound on
             tokens/s at batch 1 is this over the bytes it reads)
  generate   Qwen2ForCausalLM in float16 on the device with the graph's own
             weights (read from model.onnx's initializers), the prompt
             tokenized by the directory's tokenizer.json and repeated BATCH
             times, greedy, KV cache on, exactly TOKENS new tokens (EOS
             ignored through min_new_tokens). A streamer notes when each
             step's tokens come out: decode tokens/s = BATCH x (TOKENS - 1)
             / (last step - first step), as the daemon's streams are
             measured, and the time to the first token; medians of ROUNDS
             after a warm-up.

Writes FILE.json; progress goes to stderr.
"""

import argparse
import json
import os
import statistics
import sys
import time

import onnx
import torch
import transformers
from arguments import bounded, counts
from onnx import numpy_helper
from tokenizers import Tokenizer
from transformers.generation.streamers import BaseStreamer


def log(message):
    print(f"torch_bench: {message}", file=sys.stderr, flush=True)


def synchronize(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def copy_bandwidth(device, mib, rounds):
    src = torch.ones(mib * 2**20, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    synchronize(device)
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(10):
            dst.copy_(src)
        synchronize(device)
        best = min(best, (time.perf_counter() - started) / 10)
    return {"bytes": src.numel(), "bytes_per_s": 2 * src.numel() / best, "best_copy_s": best}


def load_model(model_dir, device):
    """Qwen2ForCausalLM in float16 on DEVICE with the weights of the graph."""
    state = {}
    for tensor in onnx.load(os.path.join(model_dir, "model.onnx")).graph.initializer:
        if not tensor.name.startswith(("model.", "lm_head.")):
            continue  # the graph's constants and its rotary frequencies
        value = torch.from_numpy(numpy_helper.to_array(tensor).copy()).to(device)
        if tensor.name.endswith(".T"):  # MatMul's [in, out]: nn.Linear holds [out, in]
            state[tensor.name[: -len(".T")]] = value.t().contiguous()
        else:
            state[tensor.name] = value
    config = transformers.AutoConfig.from_pretrained(model_dir)
    with torch.device(device):
        model = transformers.Qwen2ForCausalLM(config).to(torch.float16)
    model.load_state_dict(state, strict=True)
    return model.eval()


class StepClock(BaseStreamer):
    """When generate hands out each step's tokens: the prompt first, then
    one put per new token (the host waits for each step anyway, to check
    whether every row has stopped)."""

    def __init__(self):
        self.times = []

    def put(self, value):
        self.times.append(time.perf_counter())

    def end(self):
        pass


def generate_rates(model, prompt_ids, device, batches, tokens, rounds):
    pad = model.config.pad_token_id
    rows = []
    for batch in batches:
        ids = torch.tensor([prompt_ids] * batch, device=device)
        mask = torch.ones_like(ids)

        def timed():
            clock = StepClock()
            synchronize(device)
            started = time.perf_counter()
            with torch.inference_mode():
                out = model.generate(
                    input_ids=ids, attention_mask=mask, max_new_tokens=tokens, min_new_tokens=tokens,
                    do_sample=False, use_cache=True, pad_token_id=pad, streamer=clock,
                )
            if tuple(out.shape) != (batch, len(prompt_ids) + tokens) or len(clock.times) != tokens + 1:
                raise RuntimeError(f"generate returned {tuple(out.shape)} in {len(clock.times)} steps, expected {tokens} new tokens")
            return batch * (tokens - 1) / (clock.times[-1] - clock.times[1]), clock.times[1] - started

        timed()  # warm-up
        measured = [timed() for _ in range(rounds)]
        rows.append({
            "batch": batch,
            "decode_tokens_per_s": statistics.median(m[0] for m in measured),
            "first_token_s": statistics.median(m[1] for m in measured),
        })
        log(f"batch {batch}: {rows[-1]['decode_tokens_per_s']:.1f} decode tokens/s")
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model_dir")
    ap.add_argument("--prompt", required=True)
    ap.add_argument("--out", required=True, help="the JSON file to write")
    ap.add_argument("--device", default="cuda", help="a torch device: cuda, cuda:1, cpu (default cuda)")
    ap.add_argument("--batches", type=counts, default=[1, 8, 32])
    ap.add_argument("--tokens", type=bounded(2, 4096), default=128)
    ap.add_argument("--rounds", type=bounded(1, 20), default=3)
    ap.add_argument("--copy-mib", type=bounded(1, 16384), default=1024)
    args = ap.parse_args()

    result = {"torch": torch.__version__, "transformers": transformers.__version__, "device": args.device}
    if args.device.startswith("cuda"):
        result["device_name"] = torch.cuda.get_device_name(args.device)
    result["bandwidth"] = copy_bandwidth(args.device, args.copy_mib, args.rounds)
    log(f"copy bandwidth {result['bandwidth']['bytes_per_s'] / 1e9:.0f} GB/s (read + write)")
    started = time.monotonic()
    model = load_model(args.model_dir, args.device)
    result["load_s"] = time.monotonic() - started
    result["attn_implementation"] = model.config._attn_implementation
    prompt_ids = Tokenizer.from_file(os.path.join(args.model_dir, "tokenizer.json")).encode(args.prompt).ids
    result["prompt_tokens"] = len(prompt_ids)
    result["tokens"] = args.tokens
    result["generate"] = generate_rates(model, prompt_ids, args.device, args.batches, args.tokens, args.rounds)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
