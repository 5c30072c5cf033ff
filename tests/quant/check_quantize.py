# check_quantize.py: qmoe's reference quantizers against llama.cpp's, as ported bit-exactly to numpy in
# gguf-py (gguf.quants.quantize), on fresh N(0,1) rows: byte-identical output where qmoe follows ggml's rule,
# round-trip RMSE within 1.1x of gguf-py's, and k-quant outputs decoded by gguf-py's own dequantizer.
# Runs "$QMOE_BIN/tests/test_quant --quantize QTYPE" (stdin f32 -> stdout blocks).
import glob
import os
import subprocess
import sys

import numpy as np

try:
    import gguf
    from gguf.quants import dequantize, quantize
except ImportError as e:  # the check cannot run without its reference
    print("not ok gguf_py_import: %s (pip install gguf numpy)" % e)
    sys.exit(1)

T = gguf.GGMLQuantizationType
BIN = os.environ.get("QMOE_BIN", "build")
DRIVER = os.path.join(BIN, "tests", "test_quant")
ROWS, N = 8, 4096
failed = 0


def report(ok, name, detail=""):
    global failed
    if ok:
        print("ok %s%s" % (name, (" # " + detail) if detail else ""))
    else:
        failed += 1
        print("not ok %s: %s" % (name, detail))


def qmoe_quantize(qtype, x):
    r = subprocess.run([DRIVER, "--quantize", qtype], input=x.astype("<f4").tobytes(), capture_output=True)
    if r.returncode != 0:
        raise RuntimeError("%s --quantize %s failed (%d): %s" % (DRIVER, qtype, r.returncode, r.stderr.decode()))
    return np.frombuffer(r.stdout, dtype=np.uint8)


def qmoe_types():
    """qtypes the driver knows: every contract's (the driver fails on unknown names)."""
    have = []
    for name in sorted(os.path.basename(p)[:-5] for p in glob.glob("contracts/quant/*.yaml")):
        r = subprocess.run([DRIVER, "--quantize", name], input=b"", capture_output=True)
        if r.returncode == 0:
            have.append(name)
    return have


def rel_rmse(x, y):
    x = x.astype(np.float64)
    return float(np.sqrt(np.mean((y.astype(np.float64) - x) ** 2)) / np.sqrt(np.mean(x ** 2)))


def main():
    if not os.path.exists(DRIVER):
        report(False, "driver", "%s not built (run ninja)" % DRIVER)
        return
    seed = int(os.environ.get("QMOE_TEST_SEED", "0")) or int.from_bytes(os.urandom(8), "little")
    print("# seed %d (replay with QMOE_TEST_SEED=%d)" % (seed, seed))
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((ROWS, N)).astype(np.float32)
    have = qmoe_types()
    ref = {}  # gguf-py round-trip RMSE per legacy format, for the k-quant comparisons
    for name in ["f16", "bf16", "q4_0", "q4_1", "q5_0", "q5_1", "q8_0"]:
        qt = getattr(T, name.upper())
        theirs = np.ascontiguousarray(quantize(x, qt)).view(np.uint8).reshape(ROWS, -1)
        ref[name] = rel_rmse(x, dequantize(theirs, qt).reshape(x.shape))
        if name not in have:
            continue
        ours = qmoe_quantize(name, x.reshape(-1)).reshape(theirs.shape)
        diff = np.nonzero(np.any(ours != theirs, axis=-1))[0] if ours.shape == theirs.shape else [-1]
        report(len(diff) == 0, "quantize_bytes_match_ggml_%s" % name,
               "" if len(diff) == 0 else "%d of %d rows differ from gguf-py's bytes (first: row %d)" % (len(diff), ROWS, diff[0]))
        e = rel_rmse(x, dequantize(ours, qt).reshape(x.shape))
        report(e <= 1.1 * ref[name], "quantize_rmse_%s" % name,
               "qmoe %.5f vs gguf-py %.5f (limit 1.1x)" % (e, ref[name]))
    # k-quants: gguf-py has no quantizer, but its dequantizer decodes qmoe's blocks independently.
    # At equal bits per weight the k-quant must be at least as accurate as the legacy format of gguf-py
    # (q4_k vs q4_0 at 4.5 bpw, q5_k vs q5_0 at 5.5 bpw); q6_k (6.56 bpw) at least twice as accurate as q5_0.
    for name, base, factor in [("q4_k", "q4_0", 1.0), ("q5_k", "q5_0", 1.0), ("q6_k", "q5_0", 0.5)]:
        if name not in have:
            continue
        qt = getattr(T, name.upper())
        ours = qmoe_quantize(name, x.reshape(-1))
        y = dequantize(ours.reshape(ROWS, -1), qt).reshape(x.shape)
        e = rel_rmse(x, y)
        report(e <= factor * ref[base], "quantize_rmse_%s" % name,
               "qmoe %.5f (decoded by gguf-py) vs %.2f x gguf-py %s %.5f" % (e, factor, base, ref[base]))

    # Every contract format: qmoe's blocks decoded by gguf-py (independently of qmoe's decoder) stay within
    # the contract's quantizer.rmse_max (the bound test_quant checks with qmoe's own decoder).
    import yaml
    for name in have:
        q = yaml.safe_load(open("contracts/quant/%s.yaml" % name))
        bound = (q.get("quantizer") or {}).get("rmse_max")
        if bound is None:
            report(False, "quantize_contract_bound_%s" % name, "contract states no quantizer.rmse_max")
            continue
        qt = T(q["ggml_type"])
        ours = qmoe_quantize(name, x.reshape(-1))
        try:
            y = dequantize(ours.reshape(ROWS, -1), qt)
        except NotImplementedError:
            print("skip quantize_contract_bound_%s: gguf-py cannot decode %s (test_quant checks the bound with qmoe's "
                  "decoder, test_quant_vectors the decoder against independent vectors)" % (name, qt.name))
            continue
        e = rel_rmse(x, y.reshape(x.shape))
        report(e <= bound, "quantize_contract_bound_%s" % name,
               "qmoe %.5f (decoded by gguf-py) vs the contract's rmse_max %g" % (e, bound))


try:
    main()
except Exception as e:  # an error is a failure with its reason, never a silent pass
    report(False, "check_quantize", repr(e))
sys.exit(1 if failed else 0)
