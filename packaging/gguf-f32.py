#!/usr/bin/env python3
"""Write a GGUF's weights dequantized to float32, metadata unchanged, so
that llama.cpp computes the same model at full precision.

    python packaging/gguf-f32.py SRC.gguf DST.gguf

`make check-llamacpp` compares the converted model with llama.cpp on both
the original Q4_1 GGUF and this one: on Q4_1, llama.cpp also rounds the
activations to 8 bits in its matrix products (Q8_1), which moves logits by
tenths at times and so flips near-ties; on this one it does not.
"""

import sys

import numpy as np
import gguf
from gguf.quants import dequantize


def text(field, index):
    return bytes(field.parts[index]).decode("utf-8")


def main(src, dst):
    reader = gguf.GGUFReader(src)
    arch = reader.fields["general.architecture"]
    writer = gguf.GGUFWriter(dst, arch=text(arch, arch.data[0]))
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        kind = field.types[0]
        if kind == gguf.GGUFValueType.ARRAY:
            if field.types[1] == gguf.GGUFValueType.STRING:
                writer.add_array(name, [text(field, i) for i in field.data])
            else:
                writer.add_array(name, [field.parts[i][0].item() for i in field.data])
        elif kind == gguf.GGUFValueType.STRING:
            writer.add_string(name, text(field, field.data[0]))
        else:
            writer.add_key_value(name, field.parts[field.data[0]][0].item(), kind)
    for tensor in reader.tensors:
        weights = dequantize(tensor.data, tensor.tensor_type).astype(np.float32)
        shape = [int(n) for n in reversed(tensor.shape)]
        writer.add_tensor(tensor.name, weights.reshape(shape), raw_dtype=gguf.GGMLQuantizationType.F32)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
