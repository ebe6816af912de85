#!/usr/bin/env python3
"""Does systemd's ProcSubset=pid (no /proc/cpuinfo) slow ONNX Runtime's CPU
kernels? deepseekd.service sets it; ONNX Runtime then logs that cpuinfo
failed and CPU features "may" go undetected. This times the same MatMul
chain with the full /proc and with a subset=pid /proc, interleaved:

    python3 -m venv /tmp/bench && /tmp/bench/bin/pip install onnxruntime==1.31.1 numpy onnx
    sudo /tmp/bench/bin/python packaging/bench-procsubset.py   # root: it mounts /proc in a new namespace

Results: BENCHMARKS.md ("ProcSubset=pid and ONNX Runtime's CPU kernels").
"""
import subprocess
import sys
import time

ROUNDS = 8


def one_run(label):
    """Median latency (ms) of 40 runs of six 256x1024 @ 1024x1024 MatMuls."""
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, weights, prev = [], [], "x"
    for i in range(6):
        w = (rng.standard_normal((1024, 1024)) * 0.03).astype(np.float32)
        weights.append(numpy_helper.from_array(w, f"w{i}"))
        nodes.append(helper.make_node("MatMul", [prev, f"w{i}"], [f"h{i}"]))
        prev = f"h{i}"
    graph = helper.make_graph(
        nodes,
        "matmuls",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [256, 1024])],
        [helper.make_tensor_value_info(prev, TensorProto.FLOAT, [256, 1024])],
        weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    x = rng.standard_normal((256, 1024)).astype(np.float32)
    for _ in range(5):
        session.run(None, {"x": x})
    times = []
    for _ in range(40):
        start = time.perf_counter()
        session.run(None, {"x": x})
        times.append(time.perf_counter() - start)
    print(f"{label} {1000 * sorted(times)[len(times) // 2]:.2f}", flush=True)


def main():
    if len(sys.argv) == 2:
        one_run(sys.argv[1])
        return
    results = {"full": [], "subset=pid": []}
    subset = "mount -t proc -o subset=pid proc /proc && test ! -e /proc/cpuinfo && exec \"$0\" \"$1\" subset=pid"
    for _ in range(ROUNDS):
        for label, command in (
            ("full", [sys.executable, __file__, "full"]),
            ("subset=pid", ["unshare", "-m", "--propagation", "private", "sh", "-c", subset, sys.executable, __file__]),
        ):
            out = subprocess.run(command, check=True, capture_output=True, text=True).stdout.split()
            results[label].append(float(out[-1]))
    for label, values in results.items():
        values.sort()
        print(f"/proc {label:10}: median of {ROUNDS} runs {values[ROUNDS // 2]:.2f} ms, min {values[0]:.2f} ms")
    full, sub = (sorted(results[k])[ROUNDS // 2] for k in ("full", "subset=pid"))
    print(f"ratio subset=pid / full: {sub / full:.2f}")


if __name__ == "__main__":
    main()
