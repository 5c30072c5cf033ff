#!/usr/bin/env python3
# check_quantize_range.py: `qmoe quantize` never writes what the target cannot hold. For every qtype qmoe can
# quantize to (the list its own error message gives) and finite inputs at the edges of the formats' ranges
# (1e7, 70000, 3.4e38, 1e-30, a whole row or one element among normal weights): either it refuses, exit 1,
# naming the file, tensor, row and value, and leaves no output (an old one intact), or what it wrote decodes
# (by gguf-py, an independent decoder; qmoe dump for q8_k, which gguf-py lacks) to finite values that keep
# the planted value within 50%. Where gguf-py can quantize the format itself (f16 by numpy, bf16, q4_0,
# q4_1, q5_0, q8_0), it is the reference: qmoe refuses exactly when gguf-py's round trip is not finite or
# loses the value. The cases of the issue (1e7 to q8_0/q5_0, 3.4e38 to q4_k/q6_k, 70000 to f16) must be
# refused. Prints ok / not ok.
import os
import re
import subprocess
import sys
import tempfile
import warnings

import numpy as np
import gguf

BIN = os.environ.get("QMOE_BIN", "build")
QMOE = os.path.join(BIN, "qmoe")
TMP = tempfile.mkdtemp(prefix="qmoe-range-")
failed = 0
warnings.simplefilter("ignore")  # gguf-py's own overflow warnings are the point here
rng = np.random.default_rng(int.from_bytes(os.urandom(4), "little"))


def report(ok, name, why=""):
    global failed
    if ok:
        print(f"ok {name}")
    else:
        failed += 1
        print(f"not ok {name}: {why}")
    sys.stdout.flush()


def run(*args):
    p = subprocess.run([QMOE, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return p.returncode, p.stderr.decode("utf-8", "replace")


def write_input(path, x):
    w = gguf.GGUFWriter(path, "test")
    w.add_tensor("blk.0.ffn_up.weight", x)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


# The qtypes with a quantizer, from qmoe's own table (its message for an unknown TYPE lists them).
rc, err = run("quantize", "none.gguf", "none-out.gguf", "no_such_type")
m = re.search(r"choose one of: (.*?)q4_k_m", err)
qtypes = m.group(1).split() if m else []
report(rc == 2 and len(qtypes) >= 8, "the quantizable qtypes are listed", err.strip()[:300])

GGUF_PY_QUANT = {"bf16": "BF16", "q4_0": "Q4_0", "q4_1": "Q4_1", "q5_0": "Q5_0", "q8_0": "Q8_0"}
MUST_REFUSE = {(1e7, "q8_0"), (1e7, "q5_0"), (3.4e38, "q4_k"), (3.4e38, "q6_k"), (70000.0, "f16")}
VALUES = [1e7, -1e7, 70000.0, 3.4e38, -3.4e38, 1e-30]
ROWS, COLS = 4, 256


def reference_roundtrip(qt, row):
    """gguf-py's (numpy's for f16) encode + decode of one row, or None when it has no quantizer for qt."""
    if qt == "f16":
        return row.astype(np.float16).astype(np.float32)
    if qt == "f32":
        return row.copy()
    if qt in GGUF_PY_QUANT:
        t = getattr(gguf.GGMLQuantizationType, GGUF_PY_QUANT[qt])
        return gguf.quants.dequantize(gguf.quants.quantize(row.reshape(1, -1), t), t).reshape(-1)
    return None


def holds(x, y):
    return bool(np.isfinite(y)) and abs(float(y) - float(x)) <= 0.5 * abs(float(x))


def decode_output(path, qt):
    """The output tensor decoded by gguf-py (or by qmoe dump for types gguf-py cannot decode)."""
    r = gguf.GGUFReader(path)
    t = r.tensors[0]
    try:
        return gguf.quants.dequantize(t.data, t.tensor_type).reshape(ROWS, COLS).astype(np.float32)
    except (NotImplementedError, KeyError, ValueError):
        raw = os.path.join(TMP, "dec.f32")
        rc, err = run("dump", path, t.name, "--f32", "-o", raw)
        if rc:
            raise RuntimeError(err)
        return np.fromfile(raw, "<f4").reshape(ROWS, COLS)


n = 0
for v in VALUES:
    for layout in ("row", "element"):
        x = rng.standard_normal((ROWS, COLS)).astype(np.float32) * 0.05
        r, e = 2, int(rng.integers(0, COLS))
        if layout == "row":
            x[r, :] = np.float32(v)
        else:
            x[r, e] = np.float32(v)
        inp = os.path.join(TMP, f"in{n}.gguf")
        n += 1
        write_input(inp, x)
        for qt in qtypes:
            name = f"{qt} {v:g} ({layout})"
            out = os.path.join(TMP, f"out-{qt}.gguf")
            with open(out, "wb") as f:
                f.write(b"old output")
            rc, err = run("quantize", inp, out, qt, "-j", "1")
            planted = np.float32(v)
            significant = layout == "row" or abs(float(planted)) >= float(np.abs(x[r]).max()) / 4096
            ref = reference_roundtrip(qt, x[r])
            if ref is not None:
                ref_ok = bool(np.all(np.isfinite(ref))) and (not significant or holds(planted, ref[e]))
            else:
                ref_ok = None
            if rc == 0:
                try:
                    y = decode_output(out, qt)
                except Exception as ex:  # noqa: BLE001 - reported as a failure
                    report(False, name, f"exit 0 but the output does not decode: {ex}")
                    continue
                why = ""
                if not np.all(np.isfinite(y)):
                    why = f"exit 0 but the output holds {y[~np.isfinite(y)][0]}"
                elif significant and not holds(planted, y[r, e]):
                    why = f"exit 0 but {planted:g} was written as {y[r, e]:g}"
                elif (v, qt) in MUST_REFUSE:
                    why = "exit 0 for a case the target cannot represent"
                elif ref_ok is False:
                    why = "exit 0 but the reference round trip loses the value"
                report(not why, name, why)
            else:
                why = ""
                mv = re.search(r"value (\S+)", err)
                if rc != 1:
                    why = f"exit {rc}"
                elif inp not in err or "blk.0.ffn_up.weight" not in err or f"row {r}" not in err or not mv:
                    why = f"the message does not name the file, tensor, row and value: {err.strip()[:300]}"
                elif not np.isclose(float(mv.group(1)), float(planted), rtol=1e-6):
                    why = f"the message names value {mv.group(1)}, not {planted:g}: {err.strip()[:300]}"
                elif open(out, "rb").read() != b"old output":
                    why = "the old output was changed"
                elif any(f.startswith("out-") and ".tmp" in f for f in os.listdir(TMP)):
                    why = "a temp file was left: " + " ".join(os.listdir(TMP))
                elif ref_ok is True:
                    why = f"refused, but the reference round trip holds the value: {err.strip()[:300]}"
                report(not why, name, why)

# Non-finite inputs are refused too (an inf in an f32 source has no encoding in any quantized qtype).
x = rng.standard_normal((ROWS, COLS)).astype(np.float32)
x[1, 7] = np.inf
inp = os.path.join(TMP, "inf.gguf")
write_input(inp, x)
rc, err = run("quantize", inp, os.path.join(TMP, "o-inf.gguf"), "q8_0")
report(rc == 1 and "row 1" in err and ("element 7" in err or "src[7]" in err) and inp in err and
       not os.path.exists(os.path.join(TMP, "o-inf.gguf")), "an inf input is refused", err.strip()[:300])

for f in os.listdir(TMP):
    os.unlink(os.path.join(TMP, f))
os.rmdir(TMP)
sys.exit(1 if failed else 0)
