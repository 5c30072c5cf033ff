#!/usr/bin/env python3
# make_vectors.py: (re)writes the test_vectors section of contracts/quant/<q>.yaml from an independent
# decoder — llama.cpp's Python package gguf (gguf.quants.dequantize), or plain numpy where gguf-py has none.
# Usage: python3 tests/quant/make_vectors.py [QTYPE...]   (default: every contract listed below)
# Block bytes are random (fixed seed per qtype, so reruns are stable) with finite f16/f32 scales of varied
# magnitude and sign, subnormal scales included. Values are written as the exact decimal of each f32.
import re
import sys

import numpy as np
import gguf
from gguf.quants import dequantize

T = gguf.GGMLQuantizationType
GGUF_SRC = "gguf-py gguf.quants.dequantize (llama.cpp's Python package), tests/quant/make_vectors.py"


def f16_bytes(v):
    return np.array([v], dtype=np.float16).tobytes()


def scale_f16(rng, kind):
    """A finite f16 scale: kind 0 typical, 1 large/negative, 2 subnormal."""
    if kind == 0:
        v = rng.uniform(1e-4, 5e-2)
    elif kind == 1:
        v = -rng.uniform(0.5, 300.0)
    else:
        v = rng.integers(1, 1024) * 2.0 ** -24  # f16 subnormal
    h = np.float16(v)
    assert np.isfinite(h)
    return f16_bytes(h)


def random_float_bits(rng, n, kind):
    """n random finite values of a float format: bits with the all-ones exponent avoided."""
    if kind == "f16":
        b = rng.integers(0, 1 << 16, n, dtype=np.uint32)
        b = np.where((b >> 10) & 0x1F == 0x1F, b & ~np.uint32(0x4000), b)  # clear one exponent bit
        b[0], b[1] = 0x8000, 0x0001  # -0 and the smallest subnormal
        return b.astype("<u2").tobytes()
    if kind == "bf16":
        b = rng.integers(0, 1 << 16, n, dtype=np.uint32)
        b = np.where((b >> 7) & 0xFF == 0xFF, b & ~np.uint32(0x4000), b)
        b[0], b[1] = 0x8000, 0x0001
        return b.astype("<u2").tobytes()
    b = rng.integers(0, 1 << 32, n, dtype=np.uint64)
    b = np.where((b >> 23) & 0xFF == 0xFF, b & ~np.uint64(0x40000000), b)
    b[0], b[1] = 0x80000000, 0x00000001
    return b.astype("<u4").tobytes()


def block(rng, nbytes, scales, k):
    """Random bytes with f16 scales written at the given offsets."""
    b = bytearray(rng.integers(0, 256, nbytes, dtype=np.uint8).tobytes())
    for j, off in enumerate(scales):
        b[off:off + 2] = scale_f16(rng, (k + j) % 3)
    return bytes(b)


def q8_k_block(rng, k):
    b = bytearray(rng.integers(0, 256, 292, dtype=np.uint8).tobytes())
    d = [np.float32(rng.uniform(1e-4, 1e-2)), np.float32(-rng.uniform(1.0, 1e3)), np.float32(3e-42)][k]
    b[0:4] = np.array([d], dtype="<f4").tobytes()
    return bytes(b)


def q8_k_numpy(data):
    """Q8_K has no gguf-py dequantizer: y = d * qs in numpy f32 (one rounding), per ggml's dequantize_row_q8_K."""
    blocks = np.frombuffer(data, dtype=np.uint8).reshape(-1, 292)
    d = blocks[:, 0:4].copy().view("<f4").astype(np.float32)
    qs = blocks[:, 4:260].copy().view(np.int8).astype(np.float32)
    return (d * qs).reshape(-1)


# qtype -> (ggml type, block bytes, generator(rng, k) -> bytes of one vector, decoder, source text)
def per_block(nbytes, scales):
    return lambda rng, k: block(rng, nbytes, scales, k)


FORMATS = {
    "f32": (T.F32, lambda rng, k: random_float_bits(rng, 16, "f32"), None),
    "f16": (T.F16, lambda rng, k: random_float_bits(rng, 16, "f16"), None),
    "bf16": (T.BF16, lambda rng, k: random_float_bits(rng, 16, "bf16"), None),
    "q4_0": (T.Q4_0, per_block(18, [0]), None),
    "q4_1": (T.Q4_1, per_block(20, [0, 2]), None),
    "q5_0": (T.Q5_0, per_block(22, [0]), None),
    "q8_0": (T.Q8_0, per_block(34, [0]), None),
    "q4_k": (T.Q4_K, per_block(144, [0, 2]), None),
    "q5_k": (T.Q5_K, per_block(176, [0, 2]), None),
    "q6_k": (T.Q6_K, per_block(210, [208]), None),
    "q8_k": (T.Q8_K, q8_k_block, q8_k_numpy),
}


def fmt_value(v):
    s = repr(float(v))  # shortest decimal that reads back as this double, which is the f32 exactly
    return s


def vectors_yaml(name):
    qt, gen, decoder = FORMATS[name]
    rng = np.random.default_rng(0x51AB0000 + sum(ord(c) * 131 ** i for i, c in enumerate(name)) % 65536)
    out = ["test_vectors:"]
    for k in range(3):
        data = gen(rng, k)
        if decoder is None:
            vals = dequantize(np.frombuffer(data, dtype=np.uint8), qt).reshape(-1).astype(np.float32)
            src = GGUF_SRC
        else:
            vals = decoder(data)
            src = "numpy f32 y = d*qs (gguf-py has no Q8_K dequantizer), tests/quant/make_vectors.py"
        assert vals.dtype == np.float32 and np.all(np.isfinite(vals)), name
        out.append("  - source: \"%s\"" % src)
        out.append("    bytes: \"%s\"" % data.hex())
        items = [fmt_value(v) for v in vals]
        lines = []
        for i in range(0, len(items), 8):
            lines.append(", ".join(items[i:i + 8]))
        out.append("    values: [" + (",\n      ".join(lines)) + "]")
    return "\n".join(out) + "\n"


def main(argv):
    names = argv or [n for n in FORMATS]
    for name in names:
        path = "contracts/quant/%s.yaml" % name
        try:
            text = open(path).read()
        except FileNotFoundError:
            continue
        m = re.search(r"^test_vectors:.*\Z", text, flags=re.S | re.M)
        head = text[:m.start()] if m else text.rstrip("\n") + "\n"
        open(path, "w").write(head + vectors_yaml(name))
        print("wrote", path)


if __name__ == "__main__":
    main(sys.argv[1:])
