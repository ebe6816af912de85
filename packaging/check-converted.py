#!/usr/bin/env python3
"""Check the model directories packaging/convert-gguf.py writes, with ONNX
Runtime's CPU provider, and record reference data for tests.

    /tmp/venv-convert/bin/python packaging/check-converted.py \\
        [--models .models] [--gguf .models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf] \\
        [--out fixtures/llm/smollm2]

For each variant (smollm2-135m, smollm2-135m-int4) it renders the chat
template from tokenizer_config.json with jinja2 as transformers does,
encodes it with tokenizer.json (add_special_tokens=false: the template
writes every special token), and decodes greedily with the KV cache
(prefill, then one token a step, present.* fed back as past_key_values.*),
stopping at an id of generation_config.json's eos_token_id or after
MAX_NEW tokens. It fails unless:

  - the fp32 graph's logits at the last prompt position agree with an
    independent float64 NumPy forward pass over the GGUF's own tensors,
    with llama.cpp's rotary convention (adjacent pairs on the permuted
    q/k rows), so the un-permutation in the converter is checked too;
  - the KV-cache loop gives the ids a full recompute gives (fp32);
  - the France prompt is 42 tokens (llama.cpp's count) and both variants
    answer it with text containing "Paris".

It writes OUT/expected.json (prompts, ids, greedy continuations, texts,
first-step top-5 logits, for both variants), OUT/tokenizer-ids.json (ids of
strings with Unicode, emoji and whitespace runs) and OUT/SHA256SUMS (the
converted files' digests, for checking that a conversion reproduces).
"""

import argparse
import hashlib
import json
import os
import time

import jinja2
import jinja2.ext
import jinja2.sandbox
import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

VARIANTS = ("smollm2-135m", "smollm2-135m-int4")
MAX_NEW = 64
FIRST = 32

PROMPTS = [
    {
        "name": "capital_of_france",
        "messages": [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}],
    },
    {
        "name": "system_and_list",
        "messages": [
            {"role": "system", "content": "You are a concise assistant. Answer with a short list."},
            {"role": "user", "content": "Name three primary colors."},
        ],
    },
    {
        "name": "multi_turn",
        "messages": [
            {"role": "user", "content": "Hi!"},
            {"role": "assistant", "content": "Hello! How can I help you today?"},
            {"role": "user", "content": "Write a haiku about the sea."},
        ],
    },
    {
        "name": "arithmetic",
        "messages": [{"role": "user", "content": "What is 12 + 30? Reply with the number only."}],
    },
    {
        "name": "non_ascii",
        "messages": [{"role": "user", "content": "Traduis en anglais : « Où est la gare ? » 🚉"}],
    },
]
RAW = [{"name": "raw_completion", "text": "The quick brown fox"}]

TOKENIZER_STRINGS = [
    "Hello, world!",
    "What is the capital of France? Answer in one sentence.",
    "The year 2024 had 366 days; π ≈ 3.14159.",
    "naïve café, façade, Straße, Ærøskøbing",
    "你好，世界！こんにちは。안녕하세요",
    "Здравствуй, мир! Γειά σου κόσμε",
    "emoji: 😀👍🏽 👨‍👩‍👧‍👦 🇫🇷 ✨",
    "a  b   c    d",
    "  leading and trailing spaces  ",
    "tabs\tand\ttabs\t\tdouble",
    "line one\nline two\n\nline four\r\nwindows",
    "    indented = code(x)  # comment\n\treturn {'a': [1, 2, 3]}",
    "I'm sure you'll see they've done it, we'd say.",
    "<|im_start|>user\nHi<|im_end|>\n",
    "<|endoftext|>plain <|im_end|> text",
    "",
    " ",
    "\n\n\n",
]


def render_chat(template, messages, add_generation_prompt=True, **special):
    """As transformers' apply_chat_template renders."""

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.globals["raise_exception"] = raise_exception
    return env.from_string(template).render(messages=messages, add_generation_prompt=add_generation_prompt, **special)


class Model:
    def __init__(self, directory, threads):
        self.dir = directory
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        started = time.monotonic()
        self.sess = ort.InferenceSession(os.path.join(directory, "model.onnx"), opts, providers=["CPUExecutionProvider"])
        self.load_s = time.monotonic() - started
        self.config = json.load(open(os.path.join(directory, "config.json")))
        self.gen = json.load(open(os.path.join(directory, "generation_config.json")))
        self.tok_config = json.load(open(os.path.join(directory, "tokenizer_config.json")))
        self.tok = Tokenizer.from_file(os.path.join(directory, "tokenizer.json"))
        self.layers = self.config["num_hidden_layers"]
        self.kv_heads = self.config["num_key_value_heads"]
        self.head_dim = self.config["head_dim"]
        eos = self.gen["eos_token_id"]
        self.eos = set(eos if isinstance(eos, list) else [eos])
        self.outputs = [o.name for o in self.sess.get_outputs()]

    def empty_past(self, batch=1):
        shape = (batch, self.kv_heads, 0, self.head_dim)
        return {f"past_key_values.{i}.{k}": np.zeros(shape, np.float32) for i in range(self.layers) for k in ("key", "value")}

    def greedy(self, prompt_ids, n=MAX_NEW):
        """Prefill, then one token a step with the cache fed back."""
        ids = list(prompt_ids)
        feeds = {
            "input_ids": np.array([ids], np.int64),
            "attention_mask": np.ones((1, len(ids)), np.int64),
            "position_ids": np.arange(len(ids), dtype=np.int64)[None],
            **self.empty_past(),
        }
        out, logits, finish = [], [], "length"
        started, prefill_s = time.monotonic(), None
        for _ in range(n):
            res = dict(zip(self.outputs, self.sess.run(None, feeds)))
            if prefill_s is None:
                prefill_s = time.monotonic() - started
            last = res["logits"][0, -1]
            tok = int(np.argmax(last))
            logits.append(last.copy())
            out.append(tok)
            ids.append(tok)
            if tok in self.eos:
                finish = "stop"
                break
            feeds = {
                "input_ids": np.array([[tok]], np.int64),
                "attention_mask": np.ones((1, len(ids)), np.int64),
                "position_ids": np.array([[len(ids) - 1]], np.int64),
            }
            for i in range(self.layers):
                for k in ("key", "value"):
                    present = res[f"present.{i}.{k}"]
                    assert present.shape == (1, self.kv_heads, len(ids) - 1, self.head_dim), present.shape
                    feeds[f"past_key_values.{i}.{k}"] = present
        decode_s = time.monotonic() - started - prefill_s
        return out, logits, finish, prefill_s, decode_s

    def recompute(self, prompt_ids, n):
        """The same greedy decode recomputing everything each step."""
        ids, out = list(prompt_ids), []
        for _ in range(n):
            feeds = {
                "input_ids": np.array([ids], np.int64),
                "attention_mask": np.ones((1, len(ids)), np.int64),
                "position_ids": np.arange(len(ids), dtype=np.int64)[None],
                **self.empty_past(),
            }
            tok = int(np.argmax(self.sess.run(["logits"], feeds)[0][0, -1]))
            out.append(tok)
            ids.append(tok)
            if tok in self.eos:
                break
        return out


def reference_logits(gguf_path, ids):
    """float64 forward pass over the GGUF's tensors as stored, with llama.cpp's
    rotary convention (LLAMA_ROPE_TYPE_NORM: adjacent pairs (2i, 2i+1) on
    the rows llama.cpp's converter permuted). Returns the last position's logits."""
    from gguf import GGUFReader
    from gguf.quants import dequantize

    r = GGUFReader(gguf_path)
    f = r.fields
    t = {x.name: x for x in r.tensors}

    def W(name):
        x = t[name]
        return dequantize(x.data, x.tensor_type).astype(np.float64)

    layers = int(f["llama.block_count"].contents())
    heads = int(f["llama.attention.head_count"].contents())
    kvh = int(f["llama.attention.head_count_kv"].contents())
    hidden = int(f["llama.embedding_length"].contents())
    theta = float(f["llama.rope.freq_base"].contents())
    eps = float(f["llama.attention.layer_norm_rms_epsilon"].contents())
    hd = hidden // heads
    s = len(ids)
    emb = W("token_embd.weight")

    def rms(x, w):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w

    pos = np.arange(s, dtype=np.float64)[:, None]
    ang = pos * theta ** (-np.arange(0, hd, 2, dtype=np.float64) / hd)  # [S, hd/2]
    cos, sin = np.cos(ang)[None], np.sin(ang)[None]  # [1,S,hd/2]

    def rope_pairs(x):  # x [H,S,hd], rotate (x[2i], x[2i+1])
        a, b = x[..., 0::2], x[..., 1::2]
        out = np.empty_like(x)
        out[..., 0::2] = a * cos - b * sin
        out[..., 1::2] = a * sin + b * cos
        return out

    causal = np.tril(np.ones((s, s), dtype=bool))
    h = emb[ids]
    for i in range(layers):
        b = f"blk.{i}."
        x = rms(h, W(b + "attn_norm.weight"))
        q = (x @ W(b + "attn_q.weight").T).reshape(s, heads, hd).transpose(1, 0, 2)
        k = (x @ W(b + "attn_k.weight").T).reshape(s, kvh, hd).transpose(1, 0, 2)
        v = (x @ W(b + "attn_v.weight").T).reshape(s, kvh, hd).transpose(1, 0, 2)
        q, k = rope_pairs(q), rope_pairs(k)
        k, v = np.repeat(k, heads // kvh, 0), np.repeat(v, heads // kvh, 0)
        sc = np.where(causal, q @ k.transpose(0, 2, 1) / np.sqrt(hd), -np.inf)
        p = np.exp(sc - sc.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        h = h + (p @ v).transpose(1, 0, 2).reshape(s, hidden) @ W(b + "attn_output.weight").T
        x = rms(h, W(b + "ffn_norm.weight"))
        gate = x @ W(b + "ffn_gate.weight").T
        h = h + ((gate / (1 + np.exp(-gate))) * (x @ W(b + "ffn_up.weight").T)) @ W(b + "ffn_down.weight").T
    return rms(h[-1], W("output_norm.weight")) @ emb.T


def margin(logits):
    top2 = np.sort(logits)[-2:]
    return float(top2[1] - top2[0])


def r6(x):
    return round(float(x), 6)


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def dump_json(path, obj):
    with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default=".models")
    ap.add_argument("--gguf", default=".models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument("--out", default="fixtures/llm/smollm2")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)

    results, first_step, timings, checks = {}, {}, {}, {}
    prompts = None
    for variant in VARIANTS:
        m = Model(os.path.join(args.models, variant), args.threads)
        tc = m.tok_config
        special = {k: tc[k] for k in ("bos_token", "eos_token", "pad_token", "unk_token")}
        if prompts is None:
            prompts = []
            for p in PROMPTS:
                text = render_chat(tc["chat_template"], p["messages"], True, **special)
                ids = m.tok.encode(text, add_special_tokens=False).ids
                assert m.tok.decode(ids, skip_special_tokens=False) == text, "the prompt must round-trip"
                prompts.append({"name": p["name"], "kind": "chat", "messages": p["messages"], "add_generation_prompt": True,
                                "prompt": text, "add_special_tokens": False, "prompt_ids": ids})
            for p in RAW:
                ids = m.tok.encode(p["text"], add_special_tokens=True).ids
                prompts.append({"name": p["name"], "kind": "completion", "prompt": p["text"], "add_special_tokens": True,
                                "prompt_ids": ids})
            assert len(prompts[0]["prompt_ids"]) == 42, f"the France prompt is {len(prompts[0]['prompt_ids'])} tokens, llama.cpp's 42"
        per, tok_s = {}, []
        for p in prompts:
            out, logits, finish, prefill_s, decode_s = m.greedy(p["prompt_ids"])
            tok_s.append((len(out) - 1) / decode_s if len(out) > 1 else 0.0)
            per[p["name"]] = {
                "max_new_tokens": MAX_NEW,
                "stop_token_ids": sorted(m.eos),
                "finish_reason": finish,
                "ids": out,
                f"first_{FIRST}_ids": out[:FIRST],
                "text": m.tok.decode(out, skip_special_tokens=False),
                "text_skip_special_tokens": m.tok.decode(out, skip_special_tokens=True),
                "min_top1_top2_margin": r6(min(margin(x) for x in logits)),
            }
            print(f"{variant} {p['name']}: {len(p['prompt_ids'])} prompt tokens, {len(out)} new ({finish}), "
                  f"prefill {prefill_s * 1000:.0f} ms, min margin {per[p['name']]['min_top1_top2_margin']:.3f}: "
                  f"{per[p['name']]['text_skip_special_tokens']!r}")
            if p["name"] == prompts[0]["name"]:
                last = logits[0]
                top = np.argsort(-last, kind="stable")[:5]
                first_step[variant] = {
                    "prompt": p["name"],
                    "position": len(p["prompt_ids"]) - 1,
                    "top5": [{"id": int(t), "token": m.tok.id_to_token(int(t)), "logit": r6(last[t])} for t in top],
                }
                if variant == VARIANTS[0]:
                    # KV cache vs full recompute, and the graph against the GGUF in float64
                    again = m.recompute(p["prompt_ids"], len(out))
                    assert again == out, (again, out)
                    checks["kv_cache_matches_full_recompute"] = {"prompt": p["name"], "tokens": len(out)}
                    started = time.monotonic()
                    ref = reference_logits(args.gguf, p["prompt_ids"])
                    diff = float(np.abs(ref - last).max())
                    print(f"float64 GGUF reference: max |logit diff| {diff:.2e}, argmax {int(ref.argmax())} vs {int(last.argmax())} "
                          f"({time.monotonic() - started:.1f} s)")
                    assert int(ref.argmax()) == int(last.argmax()) and diff < 1e-2, diff
                    checks["fp32_vs_float64_gguf_reference"] = {"prompt": p["name"], "max_abs_logit_diff": float(f"{diff:.3g}")}
            if p["name"] == "capital_of_france":
                assert "Paris" in per[p["name"]]["text"], per[p["name"]]["text"]
        results[variant] = per
        timings[variant] = {"session_load_s": round(m.load_s, 2), "decode_tokens_per_s_median": round(float(np.median(tok_s)), 1)}

    agree = {}
    for p in prompts:
        a, b = results[VARIANTS[0]][p["name"]]["ids"], results[VARIANTS[1]][p["name"]]["ids"]
        same = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        agree[p["name"]] = same
    checks["int4_matches_fp32_for_first_n_ids"] = agree
    print("int4 agrees with fp32 for the first ids:", agree)

    expected = {
        "description": "Reference outputs of the SmolLM2-135M-Instruct conversions (packaging/convert-gguf.py), recorded by "
        "packaging/check-converted.py with onnxruntime " + ort.__version__ + " (CPUExecutionProvider, "
        f"{args.threads} intra-op thread(s)). Chat prompts: tokenizer_config.json's chat_template rendered by jinja2 "
        "(trim_blocks, lstrip_blocks), encoded with add_special_tokens=false. Greedy = argmax of the last position's "
        "logits each step, KV cache fed back, stopping at an id of generation_config.json's eos_token_id or after "
        "max_new_tokens. Timings are informational (this machine, 2 CPU cores).",
        "onnxruntime_version": ort.__version__,
        "llama_cpp_reference": {"prompt": "capital_of_france", "prompt_tokens": 42, "text": "The capital of France is Paris."},
        "prompts": prompts,
        "greedy": results,
        "first_step_top5": first_step,
        "checks": checks,
        "timings": timings,
    }
    dump_json(os.path.join(args.out, "expected.json"), expected)

    m = Model(os.path.join(args.models, VARIANTS[0]), args.threads)
    strings = []
    for s in TOKENIZER_STRINGS:
        enc = m.tok.encode(s, add_special_tokens=False)
        assert m.tok.decode(enc.ids, skip_special_tokens=False) == s, s
        strings.append({"text": s, "ids": enc.ids, "tokens": enc.tokens})
    dump_json(os.path.join(args.out, "tokenizer-ids.json"), {
        "description": "tokenizer.json of the conversion: ids of these strings encoded with add_special_tokens=false "
        "(special tokens in the text are matched); each decodes back to the string (skip_special_tokens=false).",
        "strings": strings,
    })

    lines = []
    for variant in VARIANTS:
        for name in sorted(os.listdir(os.path.join(args.models, variant))):
            path = os.path.join(args.models, variant, name)
            lines.append(f"{sha256(path)}  {variant}/{name}\n")
    with open(os.path.join(args.out, "SHA256SUMS"), "w") as f:
        f.writelines(lines)
    print("wrote", ", ".join(os.path.join(args.out, n) for n in ("expected.json", "tokenizer-ids.json", "SHA256SUMS")))


if __name__ == "__main__":
    main()
