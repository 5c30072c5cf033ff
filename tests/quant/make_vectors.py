#!/usr/bin/env python3
# make_vectors.py: (re)writes the test_vectors section of contracts/quant/<q>.yaml from an independent
# decoder — llama.cpp's Python package gguf (gguf.quants.dequantize), or plain numpy where gguf-py has none.
# Usage: python3 tests/quant/make_vectors.py [QTYPE...]   (default: every contracts/quant/*.yaml; run from the
# repo root). The formats and their layouts come from the contracts themselves.
# Block bytes are random (fixed seed per qtype, so reruns are stable) with finite f16/f32 scales of varied
# magnitude and sign, subnormal scales included. Values are written as the exact decimal of each f32.
import glob
import re
import sys

import numpy as np
import yaml
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


def scale_f32(rng, kind):
    """A finite f32 scale: kind 0 typical, 1 large/negative, 2 subnormal (two draws every call, as before)."""
    return np.array([[np.float32(rng.uniform(1e-4, 1e-2)), np.float32(-rng.uniform(1.0, 1e3)),
                      np.float32(3e-42)][kind]], dtype="<f4").tobytes()


def q8_k_numpy(data):
    """Q8_K has no gguf-py dequantizer: y = d * qs in numpy f32 (one rounding), per ggml's dequantize_row_q8_K."""
    blocks = np.frombuffer(data, dtype=np.uint8).reshape(-1, 292)
    d = blocks[:, 0:4].copy().view("<f4").astype(np.float32)
    qs = blocks[:, 4:260].copy().view(np.int8).astype(np.float32)
    return (d * qs).reshape(-1)


# Independent decoders for formats gguf-py cannot dequantize (by contract name).
NUMPY_DECODERS = {"q8_k": (q8_k_numpy, "numpy f32 y = d*qs (gguf-py has no Q8_K dequantizer), tests/quant/make_vectors.py")}


def load_formats():
    """qtype -> (ggml type, generator(rng, k) -> bytes of one vector), from contracts/quant/*.yaml: a
    one-element format gets random bits of its float type; any other random bytes with each scalar float
    field set to a finite scale of varied magnitude and sign (subnormal included)."""
    formats = {}
    for path in sorted(glob.glob("contracts/quant/*.yaml")):
        q = yaml.safe_load(open(path))
        floats = [f for f in q["fields"] if f["type"] in ("f16", "bf16", "f32") and f["count"] == 1]
        if q["block_elements"] == 1:
            kind = q["fields"][0]["type"]
            gen = (lambda kind: lambda rng, k: random_float_bits(rng, 16, kind))(kind)
        else:
            def gen(rng, k, q=q, floats=floats):
                b = bytearray(rng.integers(0, 256, q["block_bytes"], dtype=np.uint8).tobytes())
                for j, f in enumerate(floats):
                    off = f["offset"]
                    if f["type"] == "f32":
                        b[off:off + 4] = scale_f32(rng, (k + j) % 3)
                    elif f["type"] == "f16":
                        b[off:off + 2] = scale_f16(rng, (k + j) % 3)
                    else:
                        raise SystemExit("%s: no scale generator for a bf16 field" % path)
                return bytes(b)
        formats[q["name"]] = (q["ggml_type"], gen)
    return formats


def fmt_value(v):
    s = repr(float(v))  # shortest decimal that reads back as this double, which is the f32 exactly
    return s


def vectors_yaml(name, formats):
    qt, gen = formats[name]
    decoder, decoder_src = NUMPY_DECODERS.get(name, (None, None))
    rng = np.random.default_rng(0x51AB0000 + sum(ord(c) * 131 ** i for i, c in enumerate(name)) % 65536)
    out = ["test_vectors:"]
    for k in range(3):
        data = gen(rng, k)
        if decoder is None:
            vals = dequantize(np.frombuffer(data, dtype=np.uint8), T(qt)).reshape(-1).astype(np.float32)
            src = GGUF_SRC
        else:
            vals = decoder(data)
            src = decoder_src
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
    formats = load_formats()
    names = argv or sorted(formats)
    for name in names:
        path = "contracts/quant/%s.yaml" % name
        if name not in formats:
            raise SystemExit("make_vectors.py: no contract %s" % path)
        text = open(path).read()
        m = re.search(r"^test_vectors:.*\Z", text, flags=re.S | re.M)
        head = text[:m.start()] if m else text.rstrip("\n") + "\n"
        open(path, "w").write(head + vectors_yaml(name, formats))
        print("wrote", path)


if __name__ == "__main__":
    main(sys.argv[1:])
