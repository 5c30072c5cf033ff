#!/usr/bin/env python3
# check_diff.py: `qmoe diff` on trace files written here with gguf-py (llama.cpp's own GGUF writer): identical
# traces all Match; a perturbed layer is named as the first divergence; NaNs, missing tensors and top-k set
# differences are reported; cosines just above and below the model contract's FALSIFY-LAYER-COSINE threshold
# (read from the YAML here) fall on the right side; bad or mismatched traces are clear errors (exit 2);
# --json parses, --plot is well-formed SVG written atomically. Prints ok / not ok lines.
import json, os, subprocess, sys, tempfile
import xml.etree.ElementTree as ET
import numpy as np
import yaml
import gguf

BIN = os.environ.get("QMOE_BIN", "build")
Q = os.path.join(BIN, "qmoe")
TMP = tempfile.mkdtemp(prefix="qmoe-diff-")
failed = False
rng = np.random.default_rng(int.from_bytes(os.urandom(4), "little"))

def report(name, ok, why=""):
    global failed
    print(("ok " if ok else "not ok ") + name + ("" if ok else ": " + why))
    failed |= not ok

# The contract's threshold, read independently of the generated table.
with open("contracts/models/qwen3-moe-forward-v1.yaml") as f:
    contract = yaml.safe_load(f)
COS_MIN = [x for x in contract["falsification_tests"] if x["id"] == "FALSIFY-LAYER-COSINE"][0]["check"]["threshold"]

LAYERS, TOKENS, H, E, K = 4, 6, 32, 8, 2
POINTS = ["attn_norm", "Qcur", "Kcur", "Vcur", "attn_out", "ffn_inp", "ffn_norm", "moe_router", "ffn_moe_topk",
          "ffn_moe_weights", "ffn_moe_out", "l_out"]

def base_trace():
    """name -> array [positions, elements] (float32, or int32 top-k ids)."""
    t = {"inp_embd": rng.standard_normal((TOKENS, H)).astype(np.float32)}
    for l in range(LAYERS):
        for p in POINTS:
            if p == "ffn_moe_topk":
                t[f"blk.{l}.{p}"] = np.stack([rng.permutation(E)[:K] for _ in range(TOKENS)]).astype(np.int32)
            else:
                t[f"blk.{l}.{p}"] = rng.standard_normal((TOKENS, E if p == "moe_router" else H)).astype(np.float32)
    t["result_norm"] = rng.standard_normal((TOKENS, H)).astype(np.float32)
    t["result_output"] = rng.standard_normal((TOKENS, 100)).astype(np.float32)
    return t

def write(name, tensors, tokens=None, version=1, n_layers=LAYERS, positions=None, extra=None):
    path = os.path.join(TMP, name)
    w = gguf.GGUFWriter(path, "qmoe-trace")
    w.add_uint32("qmoe.trace.version", version)
    w.add_string("qmoe.trace.source", name.split(".")[0])
    w.add_string("qmoe.trace.model", "synthetic")
    w.add_uint32("qmoe.trace.n_layers", n_layers)
    w.add_array("qmoe.trace.tokens", [int(x) for x in (tokens if tokens is not None else range(10, 10 + TOKENS))])
    if positions is not None:
        w.add_array("qmoe.trace.positions", positions)
    for k, v in (extra or {}).items():
        w.add_uint32(k, v)
    for k, v in tensors.items():
        w.add_tensor(k, v)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path

def diff(*args):
    p = subprocess.run([Q, "diff", *args], capture_output=True)
    try:
        out = p.stdout.decode() + p.stderr.decode()
    except UnicodeDecodeError as e:  # qmoe must print valid UTF-8 whatever the file holds
        return 98, f"output is not UTF-8: {e}"
    if "Sanitizer" in out or "runtime error" in out:
        return 99, out
    return p.returncode, out

def with_cosine(a, c):
    """An array whose cosine with a (flattened) is exactly c (in float64, then rounded to f32)."""
    x = a.astype(np.float64).ravel()
    u = rng.standard_normal(x.size)
    u -= x * (u @ x) / (x @ x)
    u *= np.linalg.norm(x) / np.linalg.norm(u)
    return (c * x + np.sqrt(1 - c * c) * u).reshape(a.shape).astype(np.float32)

T = base_trace()
A = write("a.gguf", T)
B = write("b.gguf", dict(T))

rc, out = diff(A, B)
report("identical traces: exit 0", rc == 0, f"exit {rc}: {out[-400:]}")
report("identical traces: every point Match", "every point Match" in out and "Diverge" not in out.split("verdict")[1].replace("0 Diverge", ""), out[-400:])
report("threshold comes from FALSIFY-LAYER-COSINE", f"cosine >= {COS_MIN:g} (FALSIFY-LAYER-COSINE" in out, out[:400])

# Forward order: layer-major, the contract's point order inside a layer, inp_embd first, result_* last.
lines = [l.split() for l in out.splitlines() if l[:5].strip().isdigit() or l[:5].strip() == "-"]
names = [(l[0], l[1]) for l in lines]
want = [("-", "inp_embd")] + [(str(l), p) for l in range(LAYERS) for p in POINTS] + [("-", "result_norm"), ("-", "result_output")]
report("rows in forward order", names == want, f"{names[:6]} ... vs {want[:6]} ...")

# Perturb layer 2's l_out and layer 3's attn_norm: layer 2 is named first.
P = dict(T)
P["blk.2.l_out"] = with_cosine(T["blk.2.l_out"], 0.5)
P["blk.3.attn_norm"] = with_cosine(T["blk.3.attn_norm"], 0.2)
rc, out = diff(A, write("p.gguf", P))
report("perturbed layer: exit 1", rc == 1, f"exit {rc}")
report("perturbed layer: first divergence named", "first divergence: layer 2, point l_out" in out, out[-300:])
row = [l.split() for l in out.splitlines() if l.split()[:2] == ["2", "l_out"]]
report("perturbed layer: its cosine printed (0.5)", bool(row) and abs(float(row[0][2]) - 0.5) < 1e-5, row)

# Cosine just above and just below the contract's threshold.
for c, verdict in ((COS_MIN + 0.002, "Match"), (COS_MIN - 0.002, "Diverge")):
    P = dict(T)
    P["blk.1.ffn_moe_out"] = with_cosine(T["blk.1.ffn_moe_out"], c)
    rc, out = diff(A, write("c.gguf", P))
    row = [l for l in out.splitlines() if l.split()[:2] == ["1", "ffn_moe_out"]]
    report(f"cosine {c:.4f} is {verdict}", bool(row) and row[0].split()[-1] == verdict and rc == (0 if verdict == "Match" else 1),
           f"exit {rc}: {row}")
rc, out = diff(A, write("c.gguf", P), "--cosine-min", str(COS_MIN - 0.01))
report("--cosine-min lowers the bound", rc == 0 and "(--cosine-min)" in out, f"exit {rc}: {out[:300]}")

# Global point before the layers is first in order.
P = dict(T)
P["inp_embd"] = with_cosine(T["inp_embd"], 0.1)
P["blk.0.attn_norm"] = with_cosine(T["blk.0.attn_norm"], 0.1)
rc, out = diff(A, write("g.gguf", P))
report("inp_embd precedes layer 0", "first divergence: layer -, point inp_embd" in out, out[-300:])

# NaNs.
P = dict(T)
x = T["blk.1.Qcur"].copy(); x[2, 5] = np.nan
P["blk.1.Qcur"] = x
rc, out = diff(write("n.gguf", P), B)
report("NaN in A: NanA", rc == 1 and "NanA" in out and "first divergence: layer 1, point Qcur (NanA)" in out, out[-400:])
rc, out = diff(B, write("n.gguf", P))
report("NaN in B: NanB", rc == 1 and "first divergence: layer 1, point Qcur (NanB)" in out, out[-400:])
Q2 = dict(T); y = T["blk.1.Qcur"].copy(); y[0, 0] = np.inf; Q2["blk.1.Qcur"] = y
rc, out = diff(write("n.gguf", P), write("n2.gguf", Q2))
report("non-finite in both: NanBoth", rc == 1 and "NanBoth" in out, out[-400:])

# Missing.
P = dict(T); del P["blk.3.Vcur"]
rc, out = diff(A, write("m.gguf", P))
report("missing tensor: Missing (only in A)", rc == 1 and "Missing (only in A)" in out, out[-400:])
rc, out = diff(write("m.gguf", P), A)
report("missing tensor: Missing (only in B)", rc == 1 and "Missing (only in B)" in out, out[-400:])

# Top-k: a permutation of the same set matches; a different set is reported with the ids.
P = dict(T)
P["blk.1.ffn_moe_topk"] = T["blk.1.ffn_moe_topk"][:, ::-1].copy()
rc, out = diff(A, write("k.gguf", P))
report("top-k: same sets in another order Match", rc == 0, f"exit {rc}: {out[-300:]}")
ids = T["blk.1.ffn_moe_topk"].copy()
old = int(ids[3, 1]); new = [e for e in range(E) if e not in ids[3]][0]
ids[3, 1] = new
P["blk.1.ffn_moe_topk"] = ids
rc, out = diff(A, write("k.gguf", P))
report("top-k: set difference reported", rc == 1 and f"layer 1 position 3: only in A [{old}], only in B [{new}]" in out,
       out[-500:])
report("top-k: first divergence is the router", "first divergence: layer 1, point ffn_moe_topk" in out, out[-200:])

# --json.
rc, out = diff(A, write("k.gguf", P), "--json")
try:
    j = json.loads(out)
    ok = (j["first_divergence"] == {"layer": 1, "point": "ffn_moe_topk", "verdict": "Diverge"} and
          j["topk_differences"] == [{"layer": 1, "position": 3, "only_a": [old], "only_b": [new]}] and
          j["match"]["threshold"] == COS_MIN and j["status"] == 1 and len(j["rows"]) == len(want) and
          j["counts"]["Diverge"] == 1 and j["counts"]["Match"] == len(want) - 1)
    report("--json parses and holds the verdicts", ok and rc == 1, out[:500])
except Exception as e:
    report("--json parses and holds the verdicts", False, f"{e}: {out[:300]}")
P2 = dict(T); x = T["blk.0.Kcur"].copy(); x[0, 0] = np.nan; P2["blk.0.Kcur"] = x
rc, out = diff(A, write("n.gguf", P2), "--json")
try:
    j = json.loads(out)
    report("--json with NaN is valid JSON (null)", j["rows"][1 + 2]["verdict"] == "NanB", out[:300])
except Exception as e:
    report("--json with NaN is valid JSON (null)", False, f"{e}: {out[:300]}")

# --plot.
svg = os.path.join(TMP, "d.svg")
P = dict(T); P["blk.2.l_out"] = with_cosine(T["blk.2.l_out"], 0.3); del P["blk.0.Vcur"]
rc, out = diff(A, write("p.gguf", P), "--plot", svg)
try:
    root = ET.parse(svg).getroot()
    ns = "{http://www.w3.org/2000/svg}"
    titles = [t.text for t in root.iter(ns + "title")]
    ok = root.tag == ns + "svg" and len(titles) == len(want) and any("layer 2 l_out: Diverge" in t for t in titles) and \
        any("layer 0 Vcur: Missing" in t for t in titles)
    report("--plot writes well-formed SVG with a cell per point", ok and rc == 1, f"exit {rc}, {len(titles)} cells")
except Exception as e:
    report("--plot writes well-formed SVG with a cell per point", False, str(e))
report("--plot leaves no temp file", not [f for f in os.listdir(TMP) if "tmp" in f], str(os.listdir(TMP)))
before = open(A, "rb").read()
rc, out = diff(A, B, "--plot", A)
report("--plot onto an input is refused", rc == 2 and "the output is the input file" in out and open(A, "rb").read() == before, f"exit {rc}: {out[-200:]}")

# Errors: exit 2 with a message naming the problem.
def expect_error(name, args, sub):
    rc, out = diff(*args)
    report(name, rc == 2 and sub in out, f"exit {rc}: {out[-300:]}")

expect_error("different tokens", [A, write("t.gguf", T, tokens=[10, 11, 12, 99, 14, 15])], "token 3 is 13 in")
expect_error("different token counts", [A, write("t.gguf", {k: v[:5] for k, v in T.items()}, tokens=range(10, 15))],
             "has 6 tokens")
P = dict(T); P["blk.0.Qcur"] = rng.standard_normal((TOKENS, H + 1)).astype(np.float32)
expect_error("different shapes", [A, write("s.gguf", P)], "tensor 'blk.0.Qcur' is F32 [32, 6]")
expect_error("not a trace file", [A, os.path.join(TMP, "d.svg")], "d.svg")
rc, out = diff(A, write("x.gguf", {}))
report("a trace without tensors: every point Missing", rc == 1 and f"{len(want)} Missing" in out, out[-200:])
w = gguf.GGUFWriter(os.path.join(TMP, "nokeys.gguf"), "llama"); w.add_uint32("llama.block_count", 1)
w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
expect_error("a model file is not a trace", [A, os.path.join(TMP, "nokeys.gguf")], "not a trace file")
expect_error("version 2", [A, write("v.gguf", T, version=2)], "qmoe.trace.version is 2")
P = dict(T); P["blk.9.l_out"] = T["blk.0.l_out"]
expect_error("layer beyond n_layers", [A, write("l.gguf", P)], "tensor 'blk.9.l_out' is for layer 9")
P = dict(T); P["blk.0.l_out"] = T["blk.0.l_out"].astype(np.float16)
expect_error("F16 trace tensor", [A, write("f.gguf", P)], "trace tensors are F32 or I32")
P = dict(T); P["blk.0.l_out"] = T["blk.0.l_out"][:4]
expect_error("wrong position count", [A, write("w.gguf", P)], "a trace tensor is [elements, 6 positions]")
expect_error("positions out of range", [A, write("q.gguf", {k: v[:2] for k, v in T.items()}, positions=[1, 7])],
             "qmoe.trace.positions[1] must be increasing")
expect_error("positions differ", [write("q1.gguf", {k: v[:2] for k, v in T.items()}, positions=[1, 2]),
                                  write("q2.gguf", {k: v[:2] for k, v in T.items()}, positions=[1, 3])], "different positions")
data = open(B, "rb").read()
tr = os.path.join(TMP, "trunc.gguf")
open(tr, "wb").write(data[: len(data) // 2])
expect_error("truncated trace", [A, tr], "trunc.gguf")
# Random corruptions of a valid trace: an error (2) or a comparison (0/1), never a crash or a sanitizer report.
bad = []
for i in range(40):
    d = bytearray(data)
    for _ in range(int(rng.integers(1, 6))):
        d[int(rng.integers(0, len(d) if i % 2 else 1500))] = int(rng.integers(0, 256))  # half in the header
    cp = os.path.join(TMP, "corrupt.gguf")
    open(cp, "wb").write(bytes(d))
    rc, out = diff(A, cp, "--json")
    if rc not in (0, 1, 2): bad.append((rc, out[-200:]))
    elif rc != 2:
        try: json.loads(out)
        except Exception as e: bad.append(("bad JSON", str(e)))
report("40 random corruptions: exit 0, 1 or 2, never a crash", not bad, bad[:2])

rc, out = diff(A, B, "--json", "--json")
report("--json twice is a usage error", rc == 2 and "given twice" in out, out[-200:])
rc, out = diff(A)
report("one file is a usage error", rc == 2 and "need two trace files" in out, out[-200:])

# Run mode: the tiny synthetic model traced in-process on two backends (or two accumulators) and compared.
model = os.path.join(TMP, "tiny.gguf")
subprocess.run([Q, "make-model", "--preset", "tiny", "-o", model], check=True, capture_output=True)
p = subprocess.run([Q, "diff", "-m", model, "--backends", "cpu,cpu", "--acc", "f32,f64", "--tokens", "3,1,4,1,5,9,2,6", "--json"],
                   capture_output=True, text=True)
rc, out = p.returncode, p.stdout
try:
    j = json.loads(out)
    pts = {(r["layer"], r["point"]) for r in j["rows"]}
    report("run mode cpu f32 vs cpu f64: every layer and point Match", rc == 0 and j["counts"]["Match"] == len(j["rows"]) and
           (3, "ffn_moe_topk") in pts and (None, "result_output") in pts and j["a"]["path"] == "cpu f32" and j["b"]["path"] == "cpu f64",
           f"exit {rc}: {j['counts']}")
except Exception as e:
    report("run mode cpu f32 vs cpu f64: every layer and point Match", False, f"{e}: exit {rc}: {out[-300:]}")
rc, out = diff("-m", model, "--backends", "cpu,vulkan", "-p", "Hello <|im_start|>world 123", "--stages", "l_out,ffn_moe_topk,result_output")
if rc == 2 and ("no Vulkan" in out or "Vulkan loader" in out or "no vulkan" in out.lower()):
    print("skip run mode cpu vs vulkan: no Vulkan device (" + out.strip().splitlines()[-1] + ")")
else:
    report("run mode cpu vs vulkan (-p TEXT through the tokenizer): all Match", rc == 0 and "every point Match" in out and
           "A: cpu f32" in out and "B: vulkan f32" in out, f"exit {rc}: {out[-400:]}")
before = open(model, "rb").read()
rc, out = diff("-m", model, "--backends", "cpu,cpu", "--tokens", "1,2", "--plot", model)
report("run mode: --plot onto the model is refused before tracing", rc == 2 and "the output is the input file" in out and "tracing" not in out and open(model, "rb").read() == before, out[-200:])
rc, out = diff("-m", model, "--backends", "cpu", "--tokens", "1")
report("run mode: one backend is a usage error", rc == 2 and "--backends needs two backends" in out, out[-200:])
rc, out = diff("-m", model, "--backends", "cpu,cpu", "--tokens", "1", "--stages", "l_outt")
report("run mode: unknown stage named", rc == 2 and "unknown trace point 'l_outt'" in out, out[-200:])
rc, out = diff("-m", model, "--backends", "cpu,cpu", "--tokens", "1,99999")
report("run mode: token outside the vocabulary", rc == 2 and "outside the vocabulary" in out, out[-200:])
rc, out = diff(A, B, "--tokens", "1")
report("run-mode options with trace files are a usage error", rc == 2 and "belongs to the run mode" in out, out[-200:])
rc, out = diff("-m", A, "--backends", "cpu,cpu", "--tokens", "1")
report("run mode: a trace file is not a model", rc == 2 and "a.gguf" in out, out[-200:])

if os.environ.get("KEEP"): print(TMP)
else: subprocess.run(["rm", "-rf", TMP])
sys.exit(1 if failed else 0)
