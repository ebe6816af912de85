#!/usr/bin/env python3
"""A causal LM of DeepSeek-R1-Distill-Qwen-1.5B's shape with random weights,
in the model directory layout deepseekd serves with `kind = "causal-lm"`.

    python packaging/gpu-check/make_model.py OUT [--shape r1-1.5b] [--layers N]

writes into OUT:

  model.onnx, model.onnx.data  packaging/decoder_graph.py's graph (Optimum's
                               layout, growing KV cache), float16: Qwen2 with
                               q/k/v biases and an untied LM head; weights in
                               one external data file (3.5 GB at r1-1.5b,
                               over protobuf's 2 GB)
  config.json                  transformers' Qwen2 configuration of the shape
  generation_config.json       greedy by default
  tokenizer.json               tiny-r1's byte-level BPE (fixtures/llm/tiny-r1,
                               384 tokens with DeepSeek-R1's special tokens)
  tokenizer_config.json        tiny-r1's, with its R1-style chat template,
                               model_max_length raised to the shape's context

The weights are random (normal, std 0.02 as transformers initialises Qwen2;
norms 1) from a fixed seed, so the same command writes the same bytes. The
logits stay 151936 wide; the daemon samples only ids the tokenizer has, so
random text decodes. Shapes: r1-1.5b (hidden 1536, MLP 8960, 28 layers,
12 query and 2 KV heads of 128, vocab 151936, RoPE theta 10000, RMS eps
1e-6) and tiny (hidden 64, MLP 128, 2 layers, 4 and 2 heads of 16, same
vocab), for a dry run on the CPU.
"""

import argparse
import json
import os
import shutil
import sys
import time
from typing import NamedTuple

import numpy as np
from arguments import bounded

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # packaging/, for decoder_graph
from decoder_graph import build_graph, save  # noqa: E402

TOKENIZER = os.path.join(os.path.dirname(os.path.dirname(HERE)), "fixtures", "llm", "tiny-r1")
SEED = 1504  # any fixed seed: the weights only have to be the same every run
STD = 0.02  # transformers' initializer_range for Qwen2


class Shape(NamedTuple):
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    context: int
    rope_theta: float = 10000.0
    rms_eps: float = 1e-6


SHAPES = {
    "r1-1.5b": Shape(layers=28, hidden=1536, intermediate=8960, heads=12, kv_heads=2, head_dim=128, vocab=151936, context=131072),
    "tiny": Shape(layers=2, hidden=64, intermediate=128, heads=4, kv_heads=2, head_dim=16, vocab=151936, context=131072),
}


def random_weights(shape, dtype):
    """By transformers' parameter name, as decoder_graph.build_graph takes
    them: matrices [in, out] under name + ".T", drawn in that layout."""
    rng = np.random.default_rng(SEED)

    def normal(*dims):
        return (rng.standard_normal(dims, dtype=np.float32) * STD).astype(dtype)

    q, kv = shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
    w = {"model.embed_tokens.weight": normal(shape.vocab, shape.hidden)}
    for i in range(shape.layers):
        p = f"model.layers.{i}."
        w[p + "input_layernorm.weight"] = np.ones(shape.hidden, dtype)
        for name, width in (("q_proj", q), ("k_proj", kv), ("v_proj", kv)):
            w[p + f"self_attn.{name}.weight.T"] = normal(shape.hidden, width)
            w[p + f"self_attn.{name}.bias"] = normal(width)
        w[p + "self_attn.o_proj.weight.T"] = normal(q, shape.hidden)
        w[p + "post_attention_layernorm.weight"] = np.ones(shape.hidden, dtype)
        w[p + "mlp.gate_proj.weight.T"] = normal(shape.hidden, shape.intermediate)
        w[p + "mlp.up_proj.weight.T"] = normal(shape.hidden, shape.intermediate)
        w[p + "mlp.down_proj.weight.T"] = normal(shape.intermediate, shape.hidden)
    w["model.norm.weight"] = np.ones(shape.hidden, dtype)
    w["lm_head.weight"] = normal(shape.vocab, shape.hidden)
    return w


def bytes_per_token(w):
    """The weight bytes one decode step must read: every weight but the
    embedding, of which it gathers one row per token."""
    embedding = w["model.embed_tokens.weight"]
    return sum(v.nbytes for v in w.values()) - embedding.nbytes + embedding[0].nbytes


def dump_json(path, obj):
    with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps(obj, indent=2, ensure_ascii=False) + "\n")
    return path


def write_metadata(shape, directory):
    with open(os.path.join(TOKENIZER, "tokenizer_config.json"), encoding="utf-8") as f:
        tokenizer_config = json.load(f)
    with open(os.path.join(TOKENIZER, "config.json"), encoding="utf-8") as f:
        ids = {k: v for k, v in json.load(f).items() if k in ("bos_token_id", "eos_token_id", "pad_token_id")}
    tokenizer_config["model_max_length"] = shape.context
    shutil.copyfile(os.path.join(TOKENIZER, "tokenizer.json"), os.path.join(directory, "tokenizer.json"))
    dump_json(os.path.join(directory, "tokenizer_config.json"), tokenizer_config)
    dump_json(
        os.path.join(directory, "config.json"),
        {
            "architectures": ["Qwen2ForCausalLM"],
            "model_type": "qwen2",
            "vocab_size": shape.vocab,
            "hidden_size": shape.hidden,
            "intermediate_size": shape.intermediate,
            "num_hidden_layers": shape.layers,
            "num_attention_heads": shape.heads,
            "num_key_value_heads": shape.kv_heads,
            "head_dim": shape.head_dim,
            "hidden_act": "silu",
            "max_position_embeddings": shape.context,
            "rope_theta": shape.rope_theta,
            "rms_norm_eps": shape.rms_eps,
            "attention_dropout": 0.0,
            "tie_word_embeddings": False,
            "use_cache": True,
            "use_sliding_window": False,
            "sliding_window": None,
            "max_window_layers": shape.layers,
            "initializer_range": STD,
            **ids,
            "torch_dtype": "float16",
        },
    )
    dump_json(
        os.path.join(directory, "generation_config.json"),
        {"bos_token_id": ids["bos_token_id"], "eos_token_id": [ids["eos_token_id"]], "pad_token_id": ids["pad_token_id"], "do_sample": False},
    )


def write_model(directory, shape):
    """The model directory; returns its size in parameters and bytes."""
    started = time.monotonic()
    w = random_weights(shape, np.float16)
    doc = (
        f"Random weights (seed {SEED}) in DeepSeek-R1-Distill-Qwen-1.5B's architecture, by packaging/gpu-check/make_model.py: "
        f"Qwen2, {shape.layers} layers, hidden {shape.hidden}, {shape.heads} query heads, {shape.kv_heads} KV heads, "
        f"head_dim {shape.head_dim}, vocab {shape.vocab}, q/k/v biases, untied LM head, float16"
    )
    model = build_graph(shape, w, "r1_shape_random", doc, "deepseek-gpu-check", dtype=np.float16)
    os.makedirs(directory, exist_ok=True)
    save(model, directory)
    write_metadata(shape, directory)
    return {
        "parameters": sum(v.size for v in w.values()),
        "weight_bytes": sum(v.nbytes for v in w.values()),
        "bytes_per_token": bytes_per_token(w),
        "seconds": round(time.monotonic() - started, 1),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", help="the model directory to write")
    ap.add_argument("--shape", choices=sorted(SHAPES), default="r1-1.5b")
    ap.add_argument("--layers", type=bounded(1, 64), help="fewer (or more) layers than the shape has")
    args = ap.parse_args()
    shape = SHAPES[args.shape]
    if args.layers is not None:
        shape = shape._replace(layers=args.layers)
    print(json.dumps(write_model(args.out, shape)))


if __name__ == "__main__":
    main()
