#!/usr/bin/env python3
# check_gguf_py.py: qmoe against gguf-py (llama.cpp's own GGUF reader, an independent implementation) on
# real data: qmoe's decoding of every tensor of tests/data/gemma3-270m-slice.gguf equals
# gguf.quants.dequantize bit for bit; files qmoe writes (the fixture, copies, quantized files) read back in
# gguf-py with the same metadata and tensor bytes; q4_k_m picks llama.cpp's types. Prints ok / not ok.
import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import gguf

BIN = os.environ.get("QMOE_BIN", "build")
QMOE = os.path.join(BIN, "qmoe")
FIXTURE = "tests/data/gemma3-270m-slice.gguf"
TMP = tempfile.mkdtemp(prefix="qmoe-gguf-py-")
failed = 0


def report(ok, name, why=""):
    global failed
    if ok:
        print(f"ok {name}")
    else:
        failed += 1
        print(f"not ok {name}: {why}")
    sys.stdout.flush()


def qmoe(*args, check=True):
    p = subprocess.run([QMOE, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if check and p.returncode != 0:
        raise RuntimeError(f"qmoe {' '.join(args)} exited {p.returncode}: {p.stderr.decode(errors='replace').strip()}")
    return p


def qmoe_json(path):
    out = qmoe("inspect", "--json", path).stdout
    return json.loads(out.decode("utf-8", "surrogateescape"))


def tmp(name):
    return os.path.join(TMP, name)


def field_bytes(field):
    """The exact encoded bytes of a metadata entry (key length, key, type, value), as gguf-py parsed it."""
    return b"".join(bytes(part.tobytes()) for part in field.parts)


def user_fields(reader):
    return [f for f in reader.fields.values() if not f.name.startswith("GGUF.")]


VTYPE = {gguf.GGUFValueType.UINT8: "u8", gguf.GGUFValueType.INT8: "i8", gguf.GGUFValueType.UINT16: "u16",
         gguf.GGUFValueType.INT16: "i16", gguf.GGUFValueType.UINT32: "u32", gguf.GGUFValueType.INT32: "i32",
         gguf.GGUFValueType.FLOAT32: "f32", gguf.GGUFValueType.BOOL: "bool", gguf.GGUFValueType.STRING: "string",
         gguf.GGUFValueType.ARRAY: "array", gguf.GGUFValueType.UINT64: "u64", gguf.GGUFValueType.INT64: "i64",
         gguf.GGUFValueType.FLOAT64: "f64"}


def flatten(v):
    if isinstance(v, list):
        out = []
        for x in v:
            out.extend(flatten(x))
        return out
    return [v]


def same_scalar(a, b, vtype):
    """qmoe's JSON value a against gguf-py's value b, exactly (f32 compared as f32 bits)."""
    if vtype == "f32":
        return np.float32(a).tobytes() == np.float32(b).tobytes()
    if vtype == "f64":
        return np.float64(a).tobytes() == np.float64(b).tobytes()
    if vtype == "bool":
        return bool(a) == bool(b)
    if vtype == "string":
        return a.encode("utf-8", "surrogateescape") == (b.encode("utf-8", "surrogateescape") if isinstance(b, str) else bytes(b))
    return int(a) == int(b)


def compare_views(path, label):
    """qmoe's view of a file (inspect --json, dump --raw) against gguf-py's: header, every key, every tensor."""
    r = gguf.GGUFReader(path)
    j = qmoe_json(path)
    problems = []
    if j["data_offset"] != r.data_offset:
        problems.append(f"data offset {j['data_offset']} vs gguf-py {r.data_offset}")
    if j["alignment"] != r.alignment:
        problems.append(f"alignment {j['alignment']} vs gguf-py {r.alignment}")
    fields = user_fields(r)
    if [m["key"] for m in j["metadata"]] != [f.name for f in fields]:
        problems.append("metadata keys differ (names or order)")
    else:
        for m, f in zip(j["metadata"], fields):
            t = VTYPE[f.types[0]]
            if m["type"] != t:
                problems.append(f"key {f.name}: type {m['type']} vs gguf-py {t}")
                continue
            if t == "array":
                et = VTYPE[f.types[1]]
                if m["elem_type"] != et:
                    problems.append(f"key {f.name}: element type {m['elem_type']} vs gguf-py {et}")
                    continue
                mine, theirs = flatten(m["value"]), flatten(f.contents())
                leaf = VTYPE[f.types[-1]]
                if len(mine) != len(theirs) or not all(same_scalar(a, b, leaf) for a, b in zip(mine, theirs)):
                    problems.append(f"key {f.name}: array values differ")
            elif not same_scalar(m["value"], f.contents(), t):
                problems.append(f"key {f.name}: {m['value']!r} vs gguf-py {f.contents()!r}")
    if [t["name"] for t in j["tensors"]] != [t.name for t in r.tensors]:
        problems.append("tensor names differ (names or order)")
    else:
        for mine, t in zip(j["tensors"], r.tensors):
            if mine["type_id"] != int(t.tensor_type) or mine["shape"] != [int(x) for x in t.shape] or \
               mine["file_offset"] != int(t.data_offset) or mine["bytes"] != int(t.n_bytes):
                problems.append(f"tensor {t.name}: qmoe {mine} vs gguf-py type {t.tensor_type.name} shape "
                                f"{list(map(int, t.shape))} offset {t.data_offset} bytes {t.n_bytes}")
                continue
            raw = tmp("raw.bin")
            qmoe("dump", path, t.name, "--raw", "-o", raw)
            if open(raw, "rb").read() != t.data.tobytes():
                problems.append(f"tensor {t.name}: raw bytes differ")
    report(not problems, f"gguf-py reads {label} as qmoe does", "; ".join(problems[:5]))
    return r


def check_decoding():
    """Every tensor of the fixture: qmoe dump --f32 equals gguf.quants.dequantize, bit for bit."""
    r = gguf.GGUFReader(FIXTURE)
    types = set()
    for t in r.tensors:
        types.add(t.tensor_type.name)
        name = f"decode {t.name} ({t.tensor_type.name}, {t.n_elements} values)"
        out = tmp("dump.f32")
        p = qmoe("dump", FIXTURE, t.name, "--f32", "-o", out, check=False)
        if p.returncode != 0:
            report(False, name, p.stderr.decode(errors="replace").strip())
            continue
        mine = np.fromfile(out, dtype="<f4")
        ref = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32).ravel()
        if mine.shape != ref.shape:
            report(False, name, f"{mine.size} values, gguf-py {ref.size}")
            continue
        diff = np.nonzero(mine.view(np.uint32) != ref.view(np.uint32))[0]
        report(diff.size == 0, name, f"{diff.size} values differ; first at {diff[0] if diff.size else 0}: "
               f"{mine[diff[0]] if diff.size else 0!r} vs gguf-py {ref[diff[0]] if diff.size else 0!r}")
    want = {"F32", "Q4_K", "Q6_K", "Q8_0", "Q5_0"}
    report(want <= types, "fixture holds F32, Q4_K, Q6_K, Q8_0 and Q5_0 tensors", f"it holds {sorted(types)}")


def nmse(a, b):
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    return float(np.sum((a - b) ** 2) / max(np.sum(a ** 2), 1e-300))


def dequant(t):
    return np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32).ravel()


def check_quantized(src_path, out_path, label, want_type, want_ftype, max_nmse):
    """A file qmoe quantized: gguf-py reads it as qmoe does; metadata as in the source but for file type and
    quantization version; each tensor has the type want_type(tensor) gives, copied bytes when the type did not
    change, and values near the source's otherwise."""
    src = gguf.GGUFReader(src_path)
    out = compare_views(out_path, label)
    problems = []
    sf = {f.name: f for f in user_fields(src)}
    of = {f.name: f for f in user_fields(out)}
    for k in sf:
        if k in ("general.file_type", "general.quantization_version"):
            continue
        if k not in of or field_bytes(of[k]) != field_bytes(sf[k]):
            problems.append(f"key {k} not copied exactly")
    if want_ftype is not None and of.get("general.file_type") and int(of["general.file_type"].contents()) != want_ftype:
        problems.append(f"general.file_type {of['general.file_type'].contents()}, want {want_ftype}")
    if "general.quantization_version" not in of or int(of["general.quantization_version"].contents()) != 2:
        problems.append("general.quantization_version is not 2")
    st = {t.name: t for t in src.tensors}
    for t in out.tensors:
        s = st[t.name]
        want = want_type(s)
        if t.tensor_type.name != want:
            problems.append(f"tensor {t.name} is {t.tensor_type.name}, want {want}")
            continue
        if list(map(int, t.shape)) != list(map(int, s.shape)):
            problems.append(f"tensor {t.name} changed shape")
            continue
        if t.tensor_type == s.tensor_type:
            if t.data.tobytes() != s.data.tobytes():
                problems.append(f"tensor {t.name} kept its type but its bytes changed")
            continue
        e = nmse(dequant(s), dequant(t))
        if not e <= max_nmse[want]:
            problems.append(f"tensor {t.name} {s.tensor_type.name}->{want}: NMSE {e:.3g} > {max_nmse[want]}")
    report(not problems, f"{label}: types, metadata and values", "; ".join(problems[:5]))


# Round-trip error bounds for real weights (NMSE = sum (a-b)^2 / sum a^2): far above what a correct
# quantizer gives (Q8_0 ~3e-5, Q6_K ~3e-4, Q5_0 ~4e-3, Q4_K ~5e-3, Q4_0 ~2e-2), far below what a broken one does (~1).
MAX_NMSE = {"F32": 0.0, "F16": 1e-6, "BF16": 1e-4, "Q8_0": 1e-4, "Q6_K": 1e-3, "Q5_K": 5e-3, "Q5_0": 1e-2,
            "Q4_K": 2e-2, "Q4_1": 2e-2, "Q4_0": 3e-2}


def check_files():
    compare_views(FIXTURE, "the fixture (written by qmoe extract)")

    # A file gguf-py writes, with every value type (nested arrays too), copied by qmoe: same bytes per key.
    src = tmp("all-types.gguf")
    w = gguf.GGUFWriter(src, "qwen3moe")
    w.add_uint8("t.u8", 200); w.add_int8("t.i8", -100); w.add_uint16("t.u16", 60000); w.add_int16("t.i16", -30000)
    w.add_uint32("t.u32", 4000000000); w.add_int32("t.i32", -2000000000); w.add_float32("t.f32", -1.5e-7)
    w.add_bool("t.bool", True); w.add_string("t.str", "héllo \"world\"\n"); w.add_uint64("t.u64", 2**64 - 1)
    w.add_int64("t.i64", -2**63); w.add_float64("t.f64", 3.141592653589793)
    w.add_array("t.arr_i32", [1, -2, 3]); w.add_array("t.arr_str", ["a", "", "ccc"])
    w.add_array("t.arr_f32", [0.5, -0.25]); w.add_array("t.nested", [[1, 2, 3], [4, 5]])
    w.add_array("t.nested_str", [["x", "yz"], ["w"]])
    w.add_tensor("m", np.random.default_rng().standard_normal((8, 64)).astype(np.float32))
    w.add_tensor("v", np.arange(32, dtype=np.float32))
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    copy = tmp("all-types-copy.gguf")
    qmoe("extract", src, copy, "--all")
    a, b = gguf.GGUFReader(src), gguf.GGUFReader(copy)
    problems = [f.name for f, g in zip(user_fields(a), user_fields(b)) if f.name != g.name or field_bytes(f) != field_bytes(g)]
    if len(user_fields(a)) != len(user_fields(b)):
        problems.append("key count differs")
    for s, t in zip(a.tensors, b.tensors):
        if s.name != t.name or s.data.tobytes() != t.data.tobytes() or list(s.shape) != list(t.shape):
            problems.append(f"tensor {s.name}")
    report(not problems, "gguf-py file with every value type, copied by qmoe, reads back identical", f"differ: {problems}")
    compare_views(src, "a gguf-py-written file with every value type")

    # Quantize the real fixture to each 32-element-block type (every row length there is a multiple of 32).
    for qt, want, ftype in (("q8_0", "Q8_0", 7), ("Q5_0", "Q5_0", 8), ("q4_0", "Q4_0", 2), ("q41", "Q4_1", 3),
                            ("f16", "F16", 1), ("BF16", "BF16", 32)):
        out = tmp(f"fixture-{qt}.gguf")
        p = qmoe("quantize", FIXTURE, out, qt, check=False)
        if p.returncode != 0:
            report(False, f"qmoe quantize fixture {qt}", p.stderr.decode(errors="replace").strip())
            continue
        check_quantized(FIXTURE, out, f"fixture quantized to {qt}", lambda t, w=want: "F32" if len(t.shape) == 1 else w,
                        ftype, MAX_NMSE)

    # Q4_K cannot hold 640-element rows: refused, naming a tensor, nothing written.
    bad = tmp("refused.gguf")
    p = qmoe("quantize", FIXTURE, bad, "Q4_K", check=False)
    msg = p.stderr.decode(errors="replace")
    report(p.returncode == 1 and "token_embd.weight" in msg and "640" in msg and not os.path.exists(bad),
           "quantize refuses rows Q4_K cannot hold, naming the tensor", f"exit {p.returncode}: {msg.strip()}")

    # The tensors with 256-multiple rows, re-encoded across k-quants (real Q4_K <-> Q6_K).
    sub = tmp("sub.gguf")
    qmoe("extract", FIXTURE, sub, "--tensor", "output_norm.weight", "--tensor", "blk.0.attn_output.weight",
         "--tensor", "blk.2.ffn_down.weight", "--tensor", "blk.0.ffn_down.weight")
    for qt, ft in (("q6k", 18), ("Q4_K", 14), ("q5_k", 16)):
        out = tmp(f"sub-{qt}.gguf")
        p = qmoe("quantize", sub, out, qt, check=False)
        want = qt.upper().replace("K", "_K").replace("__", "_")
        if p.returncode != 0:
            report(False, f"qmoe quantize slice {qt}", p.stderr.decode(errors="replace").strip())
            continue
        check_quantized(sub, out, f"slice quantized to {qt}", lambda t, w=want: "F32" if len(t.shape) == 1 else w, ft, MAX_NMSE)


def use_more_bits(i, n):
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def check_q4_k_m():
    """q4_k_m on a small qwen3moe-shaped model written by gguf-py: each tensor gets llama.cpp's type."""
    rng = np.random.default_rng()
    n = 16
    src = tmp("qwen3moe-f32.gguf")
    w = gguf.GGUFWriter(src, "qwen3moe")
    w.add_block_count(n)
    w.add_tensor("token_embd.weight", rng.standard_normal((8, 256)).astype(np.float32))
    w.add_tensor("output_norm.weight", rng.standard_normal(256).astype(np.float32))
    w.add_tensor("output.weight", rng.standard_normal((8, 256)).astype(np.float32))
    for i in range(n):
        w.add_tensor(f"blk.{i}.attn_norm.weight", rng.standard_normal(256).astype(np.float32))
        for k in ("attn_q", "attn_k", "attn_v", "attn_output"):
            w.add_tensor(f"blk.{i}.{k}.weight", rng.standard_normal((4, 256)).astype(np.float32))
        w.add_tensor(f"blk.{i}.ffn_gate_inp.weight", rng.standard_normal((4, 256)).astype(np.float32))
        for k in ("ffn_gate_exps", "ffn_up_exps", "ffn_down_exps"):
            w.add_tensor(f"blk.{i}.{k}.weight", rng.standard_normal((2, 3, 256)).astype(np.float32))
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()

    def want(t):
        name = t.name
        if len(t.shape) == 1 or ".ffn_gate_inp." in name:
            return "F32"
        if name == "output.weight":
            return "Q6_K"
        if name.startswith("blk.") and (".attn_v." in name or ".ffn_down_exps." in name):
            return "Q6_K" if use_more_bits(int(name.split(".")[1]), n) else "Q4_K"
        return "Q4_K"

    out = tmp("qwen3moe-q4_k_m.gguf")
    p = qmoe("quantize", src, out, "q4_k_m", check=False)
    if p.returncode != 0:
        report(False, "qmoe quantize qwen3moe q4_k_m", p.stderr.decode(errors="replace").strip())
        return
    # Gaussian data quantizes worse than real weights; bounds stay far below a broken quantizer's ~1.
    check_quantized(src, out, "qwen3moe model quantized to q4_k_m", want, 15,
                    {"F32": 0.0, "Q6_K": 3e-3, "Q4_K": 3e-2})
    six = sum(1 for i in range(n) if use_more_bits(i, n))
    report(six == 8, "q4_k_m recipe: half the layers of 16 get Q6_K", f"{six} layers")


def main():
    if not os.path.exists(QMOE):
        print(f"not ok gguf-py checks: {QMOE} is missing (build first)")
        return 1
    for step in (check_decoding, check_files, check_q4_k_m):
        try:
            step()
        except Exception as e:  # a crash of one step is a failure, and the others still run
            report(False, step.__name__, f"{type(e).__name__}: {e}")
    shutil.rmtree(TMP, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
