"""The decoder graph that deepseekd serves with `kind = "causal-lm"`, built
from weights in numpy: Hugging Face Optimum's layout with a growing KV cache
(the one fixtures/llm/make_tiny_llm.py builds for tiny-r1, documented in
fixtures/llm/README.md). packaging/convert-gguf.py builds SmolLM2 with it
(Llama: float32, no q/k/v biases, a tied LM head), and
packaging/gpu-check/make_model.py a DeepSeek-R1-Distill-Qwen-shaped model
(Qwen2: float16, q/k/v biases, an untied LM head).

Inputs input_ids, attention_mask, position_ids (int64) and
past_key_values.N.key/value ([batch, kv_heads, past, head_dim]); outputs
logits ([batch, sequence, vocab], every position) and present.N.key/value.
Keys are cached after the rotary embedding, as in transformers.

In a float16 graph the weights, activations, cache and logits are float16;
the norms, the rotary angles and the softmax are computed in float32, as
transformers computes them. A float32 graph has no Cast among them.
"""

import math
import os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8  # as the fixtures: loadable by older runtimes too
DATA_FILE = "model.onnx.data"
ELEMENT_TYPES = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.float16): TensorProto.FLOAT16}


class Graph:
    """Nodes and initializers, named as make_tiny_llm.py names them."""

    def __init__(self, dtype):
        self.nodes, self.inits, self.count = [], [], 0
        self.elem = ELEMENT_TYPES[np.dtype(dtype)]

    def const(self, name, array):
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def op(self, op_type, inputs, out=None, scope="", outputs=1, **attrs):
        self.count += 1
        base = f"{scope}/{op_type}_{self.count}"
        outs = [out] if out else [f"{base}_output_{n}" for n in range(outputs)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=base, **attrs))
        return outs[0] if outputs == 1 else outs

    def to_float32(self, x, scope):
        """x as float32, for the norms and the softmax (no node when it is)."""
        return x if self.elem == TensorProto.FLOAT else self.op("Cast", [x], scope=scope, to=TensorProto.FLOAT)

    def to_graph_type(self, x, scope):
        """A float32 x in the graph's element type (no node when it is float32)."""
        return x if self.elem == TensorProto.FLOAT else self.op("Cast", [x], scope=scope, to=self.elem)

    def rms_norm(self, x, weight, scope):
        x = self.to_float32(x, scope)
        sq = self.op("Pow", [x, "const_two"], scope=scope)
        mean = self.op("ReduceMean", [sq], scope=scope, axes=[-1], keepdims=1)
        rstd = self.op("Reciprocal", [self.op("Sqrt", [self.op("Add", [mean, "const_eps"], scope=scope)], scope=scope)], scope=scope)
        return self.op("Mul", [self.to_graph_type(self.op("Mul", [x, rstd], scope=scope), scope), weight], scope=scope)


def build_graph(a, w, name, doc, producer, dtype=np.float32):
    """The decoder of architecture `a` (layers, hidden, heads, kv_heads,
    head_dim, rope_theta, rms_eps, vocab) on the weights `w`, by transformers'
    parameter name: matrices transposed to [in, out] for MatMul (name +
    ".T"), the embedding [vocab, hidden]. q/k/v biases are added when `w` has
    them (name + ".bias"); the LM head is "lm_head.weight" when `w` has it
    ([vocab, hidden], untied), else the embedding (tied)."""
    g = Graph(dtype)
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
    cos_kv = g.op("Unsqueeze", [g.to_graph_type(g.op("Cos", [emb], scope=sc), sc), "const_axes_2"], out="rope_cos", scope=sc)  # [B,S,1,hd]
    sin_kv = g.op("Unsqueeze", [g.to_graph_type(g.op("Sin", [emb], scope=sc), sc), "const_axes_2"], out="rope_sin", scope=sc)
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
        scores = g.op("Mul", [g.to_float32(g.op("MatMul", [q, kt], scope=sa), sa), "const_scale"], scope=sa)  # [B,kvh,g,S,T]
        scores = g.op("Where", [allowed, scores, "const_min"], scope=sa)
        probs = g.to_graph_type(g.op("Softmax", [scores], scope=sa, axis=-1), sa)
        ctx = g.op("MatMul", [probs, v5], scope=sa)  # [B,kvh,g,S,hd]
        ctx = g.op("Transpose", [ctx], scope=sa, perm=[0, 3, 1, 2, 4])  # [B,S,kvh,g,hd]
        return g.op("Reshape", [ctx, "const_shape_hidden"], scope=sa)

    def projection(x, weight, scope):
        """x @ weight.T, plus its bias when the weights have one."""
        y = g.op("MatMul", [x, weight + ".weight.T"], scope=scope)
        return g.op("Add", [y, weight + ".bias"], scope=scope) if weight + ".bias" in w else y

    # ---- the decoder
    h = g.op("Gather", ["model.embed_tokens.weight", "input_ids"], scope="/model/embed_tokens", axis=0)
    for i in range(a.layers):
        p, sc = f"model.layers.{i}.", f"/model/layers.{i}"
        x = g.rms_norm(h, p + "input_layernorm.weight", sc + "/input_layernorm")
        sa = sc + "/self_attn"
        q = projection(x, p + "self_attn.q_proj", sa + "/q_proj")
        k = projection(x, p + "self_attn.k_proj", sa + "/k_proj")
        v = projection(x, p + "self_attn.v_proj", sa + "/v_proj")
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
    # LM head: Gemm with transB on [vocab, hidden] (the embedding itself when
    # tied, so the file holds one copy and ONNX Runtime makes no transposed one).
    sc = "/lm_head"
    head = "lm_head.weight" if "lm_head.weight" in w else "model.embed_tokens.weight"
    rows = g.op("Reshape", [h, "const_shape_rows"], scope=sc)  # [B*S, hidden]
    scores = g.op("Gemm", [rows, head], scope=sc, transB=1)  # [B*S, vocab]
    shape = g.op("Concat", [g.op("Shape", ["input_ids"], scope=sc), "const_vocab"], scope=sc, axis=0)
    g.op("Reshape", [scores, shape], out="logits", scope=sc)

    i64 = TensorProto.INT64
    inputs = [
        helper.make_tensor_value_info("input_ids", i64, ["batch_size", "sequence_length"]),
        helper.make_tensor_value_info("attention_mask", i64, ["batch_size", "total_sequence_length"]),
        helper.make_tensor_value_info("position_ids", i64, ["batch_size", "sequence_length"]),
    ]
    outputs = [helper.make_tensor_value_info("logits", g.elem, ["batch_size", "sequence_length", a.vocab])]
    for i in range(a.layers):
        for kind in ("key", "value"):
            inputs.append(
                helper.make_tensor_value_info(f"past_key_values.{i}.{kind}", g.elem, ["batch_size", a.kv_heads, "past_sequence_length", hd])
            )
            outputs.append(
                helper.make_tensor_value_info(f"present.{i}.{kind}", g.elem, ["batch_size", a.kv_heads, "total_sequence_length", hd])
            )
    graph = helper.make_graph(g.nodes, name, inputs, outputs, initializer=g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name=producer)
    model.ir_version = IR_VERSION
    model.doc_string = doc
    return model


def save(model, directory):
    """model.onnx with every initializer in one external data file (ONNX's
    protobuf cannot hold more than 2 GB); returns the two paths."""
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
