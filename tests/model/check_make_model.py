#!/usr/bin/env python3
# check_make_model.py: `qmoe make-model` read back with gguf-py (llama.cpp's reader, an independent
# implementation): the tiny preset's names, shapes, types and qwen3moe metadata; the Q4_K_M recipe's per-layer
# types with 8 layers, also against `qmoe quantize q4_k_m` of the same model in f32; every tensor decodes finite
# with the value scale the usage text promises; a numpy forward of the tiny model (written here from the
# model's equations) keeps the residual RMS near constant, spreads the logits and rarely ties the router's
# top-k; the same seed gives the same bytes whatever the thread count; the qwen3-30b-a3b plan matches the real
# Q4_K_M file (241 F32 + 289 Q4_K + 49 Q6_K, 17.28 GiB); bad arguments are errors. Prints ok / not ok lines.
import os, subprocess, sys, tempfile
import numpy as np
import gguf
from gguf.quants import dequantize

BIN = os.environ.get("QMOE_BIN", "build")
Q = os.path.join(BIN, "qmoe")
TMP = tempfile.mkdtemp(prefix="qmoe-mkmodel-")
failed = False

def report(name, ok, why=""):
    global failed
    print(("ok " if ok else "not ok ") + name + ("" if ok else ": " + str(why)))
    failed |= not ok

def qmoe(*args):
    p = subprocess.run([Q, *args], capture_output=True, text=True)
    out = p.stdout + p.stderr
    if "Sanitizer" in out or "runtime error" in out:
        return 99, out
    return p.returncode, out

def make(name, *args):
    path = os.path.join(TMP, name)
    rc, out = qmoe("make-model", *args, "-o", path)
    if rc != 0:
        report(f"make-model {' '.join(args)}", False, f"exit {rc}: {out[-300:]}")
        sys.exit(1)
    return path

def field(r, key):
    f = r.fields[key]
    if f.types[0] == gguf.GGUFValueType.STRING:
        return bytes(f.parts[f.data[0]]).decode()
    if f.types[0] == gguf.GGUFValueType.ARRAY:
        if f.types[1] == gguf.GGUFValueType.STRING:
            return [bytes(f.parts[i]).decode() for i in f.data]
        return [f.parts[i][0].item() for i in f.data]
    return f.parts[f.data[0]][0].item()

H, L, E, K, F, NH, NKV, D, V = 256, 4, 8, 2, 256, 4, 2, 64, 1024  # the tiny preset (make-model --help)
seed = int(os.environ.get("QMOE_SEED", int.from_bytes(os.urandom(2), "little")))
print(f"# seed {seed} (rerun with QMOE_SEED={seed})")
tiny = make("tiny.gguf", "--preset", "tiny", "--seed", str(seed))
r = gguf.GGUFReader(tiny)
T = {t.name: t for t in r.tensors}

# Metadata: every key llama.cpp's converter writes for qwen3moe, with its type.
want_meta = {
    "general.architecture": ("qwen3moe", gguf.GGUFValueType.STRING),
    "qwen3moe.block_count": (L, gguf.GGUFValueType.UINT32), "qwen3moe.embedding_length": (H, gguf.GGUFValueType.UINT32),
    "qwen3moe.attention.head_count": (NH, gguf.GGUFValueType.UINT32), "qwen3moe.attention.head_count_kv": (NKV, gguf.GGUFValueType.UINT32),
    "qwen3moe.attention.key_length": (D, gguf.GGUFValueType.UINT32), "qwen3moe.attention.value_length": (D, gguf.GGUFValueType.UINT32),
    "qwen3moe.expert_count": (E, gguf.GGUFValueType.UINT32), "qwen3moe.expert_used_count": (K, gguf.GGUFValueType.UINT32),
    "qwen3moe.expert_feed_forward_length": (F, gguf.GGUFValueType.UINT32),
    "qwen3moe.rope.freq_base": (1e6, gguf.GGUFValueType.FLOAT32),
    "qwen3moe.attention.layer_norm_rms_epsilon": (np.float32(1e-6).item(), gguf.GGUFValueType.FLOAT32),
    "general.file_type": (15, gguf.GGUFValueType.UINT32), "tokenizer.ggml.model": ("gpt2", gguf.GGUFValueType.STRING),
    "tokenizer.ggml.pre": ("qwen2", gguf.GGUFValueType.STRING),
}
bad = [k for k, (v, ty) in want_meta.items() if k not in r.fields or r.fields[k].types[0] != ty or field(r, k) != v]
for k in ["qwen3moe.context_length", "qwen3moe.feed_forward_length", "tokenizer.ggml.tokens", "tokenizer.ggml.token_type",
          "tokenizer.ggml.merges", "tokenizer.ggml.eos_token_id", "tokenizer.ggml.padding_token_id", "tokenizer.chat_template"]:
    if k not in r.fields: bad.append(k)
report("tiny: qwen3moe metadata keys, values and types", not bad, bad)
toks = field(r, "tokenizer.ggml.tokens")
specials = {"<|endoftext|>", "<|im_start|>", "<|im_end|>"}
merges = field(r, "tokenizer.ggml.merges")
tokset = set(toks)
report("tiny: tokenizer of n_vocab tokens with ChatML specials, merges of existing tokens",
       len(toks) == V and specials <= tokset and all(a in tokset and b in tokset and a + b in tokset for a, b in (m.split(" ") for m in merges))
       and "<|im_start|>" in field(r, "tokenizer.chat_template"), (len(toks), merges[:3]))

# Names, shapes (ne order) and types: the Q4_K_M recipe with n = 4 layers: Q6_K ffn_down_exps/attn_v in layers
# i with i < n/8, i >= 7n/8 or (i - n/8) % 3 == 2.
def more_bits(i, n): return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2
def expected(n_layers, mat=None):
    Q4, Q6, F32 = gguf.GGMLQuantizationType.Q4_K, gguf.GGMLQuantizationType.Q6_K, gguf.GGMLQuantizationType.F32
    m = lambda big: mat if mat is not None else (Q6 if big else Q4)
    e = {"token_embd.weight": ([H, V], m(False)), "output_norm.weight": ([H], F32), "output.weight": ([H, V], m(True))}
    for i in range(n_layers):
        b = f"blk.{i}."
        e.update({b + "attn_norm.weight": ([H], F32), b + "attn_q.weight": ([H, NH * D], m(False)),
                  b + "attn_k.weight": ([H, NKV * D], m(False)), b + "attn_v.weight": ([H, NKV * D], m(more_bits(i, n_layers))),
                  b + "attn_output.weight": ([NH * D, H], m(False)), b + "attn_q_norm.weight": ([D], F32),
                  b + "attn_k_norm.weight": ([D], F32), b + "ffn_norm.weight": ([H], F32), b + "ffn_gate_inp.weight": ([H, E], F32),
                  b + "ffn_gate_exps.weight": ([H, F, E], m(False)), b + "ffn_up_exps.weight": ([H, F, E], m(False)),
                  b + "ffn_down_exps.weight": ([F, H, E], m(more_bits(i, n_layers)))})
    return e
def check_plan(name, rd, exp):
    got = {t.name: ([int(x) for x in t.shape], t.tensor_type) for t in rd.tensors}
    diff = sorted(set(got) ^ set(exp)) + [k for k in exp if k in got and got[k] != exp[k]]
    report(name, not diff, [(k, got.get(k), exp.get(k)) for k in diff[:4]])
check_plan("tiny: tensor names, shapes and q4_k_m types", r, expected(L))
r8 = gguf.GGUFReader(make("tiny8.gguf", "--preset", "tiny", "--layers", "8"))
check_plan("8 layers: the recipe's per-layer Q6_K layers (0, 3, 6, 7)", r8, expected(8))
q6 = sorted(int(t.name.split(".")[1]) for t in r8.tensors if t.name.endswith("ffn_down_exps.weight") and t.tensor_type == gguf.GGMLQuantizationType.Q6_K)
report("8 layers: Q6_K ffn_down_exps exactly in layers 0, 3, 6, 7", q6 == [0, 3, 6, 7], q6)
f32_8 = make("tiny8-f32.gguf", "--preset", "tiny", "--layers", "8", "--ftype", "f32")
rq = os.path.join(TMP, "tiny8-quant.gguf")
rc, out = qmoe("quantize", f32_8, rq, "q4_k_m")
types_mm = {t.name: t.tensor_type for t in r8.tensors}
types_q = {t.name: t.tensor_type for t in gguf.GGUFReader(rq).tensors} if rc == 0 else {}
report("make-model q4_k_m types equal `qmoe quantize q4_k_m` of the same model", rc == 0 and types_mm == types_q,
       f"exit {rc}: {out[-200:]}" if rc else [k for k in types_mm if types_mm[k] != types_q.get(k)][:4])
for ft, ty in (("q8_0", gguf.GGMLQuantizationType.Q8_0), ("f16", gguf.GGMLQuantizationType.F16), ("f32", gguf.GGMLQuantizationType.F32)):
    rr = gguf.GGUFReader(make(f"tiny-{ft}.gguf", "--preset", "tiny", "--ftype", ft))
    check_plan(f"--ftype {ft}: matrices {ty.name}, router and norms F32", rr, expected(L, ty))

# Every tensor decodes finite, with the value scale the usage text states (sd within 10%, mean near 0).
W = {}
for t in r.tensors:
    W[t.name] = dequantize(t.data, t.tensor_type).astype(np.float64).reshape([int(x) for x in reversed(t.shape)])
report("tiny: every tensor decodes finite", all(np.isfinite(w).all() for w in W.values()),
       [k for k, w in W.items() if not np.isfinite(w).all()])
sd = {"token_embd": 1.0, "attn_q": H ** -0.5, "attn_k": H ** -0.5, "attn_v": H ** -0.5, "attn_output": 0.1 * (NH * D) ** -0.5,
      "ffn_gate_exps": H ** -0.5, "ffn_up_exps": H ** -0.5, "ffn_down_exps": 0.1 / (0.6 * F ** 0.5), "output": 3 * H ** -0.5}
bad = []
for k, w in W.items():
    base = k.split(".")[-2]
    if base in sd:
        s, m = w.std(), w.mean()
        if abs(s / sd[base] - 1) > 0.1 or abs(m) > 0.05 * sd[base]: bad.append((k, s, sd[base], m))
    elif base.endswith("norm"):
        if abs(w.mean() - 1) > 0.05 or not 0.05 < w.std() < 0.15: bad.append((k, w.mean(), w.std()))
report("tiny: value scales as stated (sd within 10%, mean near 0; norms 1 +- 0.1)", not bad, bad[:3])
norms = [np.linalg.norm(W[f"blk.{l}.ffn_gate_inp.weight"], axis=1) for l in range(L)]
report("router rows have distinct norms (max/min > 2)", all(n.max() / n.min() > 2 and len(set(np.round(n, 6))) == E for n in norms),
       [n.max() / n.min() for n in norms])

# A numpy forward from the model's equations (docs: qwen3-moe.md): residual RMS, logits, router margins.
def rmsnorm(x, w): return x / np.sqrt((x * x).mean(-1, keepdims=True) + 1e-6) * w
def rope(x, pos):  # x [heads, D], NEOX pairs (i, i + D/2)
    half = D // 2
    a = pos * 1e6 ** (-np.arange(half) * 2 / D)
    c, s = np.cos(a), np.sin(a)
    return np.concatenate([x[:, :half] * c - x[:, half:] * s, x[:, :half] * s + x[:, half:] * c], axis=1)
def forward(W, n_layers, tokens):
    """The qwen3moe forward of every position; returns residual RMS per layer boundary, per-layer update RMS,
    router k-th/(k+1)-th margins, the experts chosen and the logits."""
    h = W["token_embd.weight"][tokens]  # [S, H]
    S = len(tokens)
    rms = [np.sqrt((h * h).mean())]
    upd = []
    margins, chosen = [], set()
    for l in range(n_layers):
        b = f"blk.{l}."
        h0 = h
        x = rmsnorm(h, W[b + "attn_norm.weight"])
        q = (x @ W[b + "attn_q.weight"].T).reshape(S, NH, D)
        k = (x @ W[b + "attn_k.weight"].T).reshape(S, NKV, D)
        v = (x @ W[b + "attn_v.weight"].T).reshape(S, NKV, D)
        q = np.stack([rope(rmsnorm(q[p], W[b + "attn_q_norm.weight"]), p) for p in range(S)])
        k = np.stack([rope(rmsnorm(k[p], W[b + "attn_k_norm.weight"]), p) for p in range(S)])
        att = np.zeros((S, NH, D))
        for p in range(S):
            for hh in range(NH):
                g = hh // (NH // NKV)
                sc = k[: p + 1, g] @ q[p, hh] / np.sqrt(D)
                pr = np.exp(sc - sc.max()); pr /= pr.sum()
                att[p, hh] = pr @ v[: p + 1, g]
        h = h + att.reshape(S, NH * D) @ W[b + "attn_output.weight"].T
        x = rmsnorm(h, W[b + "ffn_norm.weight"])
        logits = x @ W[b + "ffn_gate_inp.weight"].T  # [S, E]
        out = np.zeros_like(h)
        for p in range(S):
            order = np.argsort(-logits[p], kind="stable")
            margins.append(logits[p, order[K - 1]] - logits[p, order[K]])
            top = order[:K]
            chosen.update(top.tolist())
            pr = np.exp(logits[p] - logits[p].max()); pr /= pr.sum()
            wts = pr[top] / pr[top].sum()
            for e, wt in zip(top, wts):
                gt = W[b + "ffn_gate_exps.weight"][e] @ x[p]
                up = W[b + "ffn_up_exps.weight"][e] @ x[p]
                out[p] += wt * (W[b + "ffn_down_exps.weight"][e] @ (gt / (1 + np.exp(-gt)) * up))
        upd.append(np.sqrt(((h + out - h0) ** 2).mean()))
        h = h + out
        rms.append(np.sqrt((h * h).mean()))
    lg = rmsnorm(h, W["output_norm.weight"]) @ W["output.weight"].T
    return np.array(rms), upd, np.array(margins), chosen, lg

rms, upd, margins, chosen, lg = forward(W, L, np.random.default_rng(seed).integers(0, V, 12))
report("forward: residual RMS stays within 0.8..1.25 of the embedding's", (rms / rms[0]).min() > 0.8 and (rms / rms[0]).max() < 1.25, rms)
report("forward: every layer adds 0.05..0.4 RMS to the residual", all(0.05 < u < 0.4 for u in upd), upd)
# The top-2 gap of 1024 logits with sd ~3 is about exponential with mean ~0.8, so a gap under 1e-3 happens
# at ~0.1% of positions by chance (seen once in CI); two of twelve is ~1e-4 and means the logits collapsed.
gaps = np.array([np.sort(r_)[-1] - np.sort(r_)[-2] for r_ in lg])
report("forward: logits spread (sd 1..10 at every position)", all(1 < s < 10 for s in lg.std(1)), lg.std(1))
report("forward: argmax a near-tie (top-2 gap < 1e-3) at no more than 1 of 12 positions", (gaps < 1e-3).sum() <= 1, gaps)
report("forward: router top-k rarely a near-tie (gap < 1e-3 in < 5% of calls)", (margins < 1e-3).mean() < 0.05, np.sort(margins)[:5])
report("forward: routing uses most experts", len(chosen) >= min(E, 2 * K) and len(chosen) > K, sorted(chosen))

# A deep model (48 layers, the full shape's depth): the residual RMS stays within a factor of 2.
r48 = gguf.GGUFReader(make("tiny48.gguf", "--preset", "tiny", "--layers", "48", "--ftype", "q8_0"))
W48 = {t.name: dequantize(t.data, t.tensor_type).astype(np.float64).reshape([int(x) for x in reversed(t.shape)]) for t in r48.tensors}
rms48, _, m48, _, lg48 = forward(W48, 48, np.random.default_rng(seed + 1).integers(0, V, 4))
report("48 layers: residual RMS within 0.8..2 of the embedding's at every layer, logits spread",
       (rms48 / rms48[0]).min() > 0.8 and (rms48 / rms48[0]).max() < 2 and all(1 < x < 10 for x in lg48.std(1)),
       (rms48[::8] / rms48[0], lg48.std(1)))

# Determinism: same seed -> same bytes whatever the threads; another seed -> other bytes.
a = make("d1.gguf", "--preset", "tiny", "--seed", "7", "--threads", "1")
b = make("d2.gguf", "--preset", "tiny", "--seed", "7", "-j", "3")
c = make("d3.gguf", "--preset", "tiny", "--seed", "8")
ba, bb, bc = (open(x, "rb").read() for x in (a, b, c))
report("same seed: identical bytes with 1 and 3 threads", ba == bb)
lay = lambda p: [(t.name, t.tensor_type, list(t.shape)) for t in gguf.GGUFReader(p).tensors]
report("another seed: different weights, same tensor layout", ba != bc and lay(a) == lay(c))

# The full shape's plan (no bytes written): what a real Qwen3-30B-A3B Q4_K_M file holds.
rc, out = qmoe("make-model", "--preset", "qwen3-30b-a3b", "--dry-run")
report("qwen3-30b-a3b plan: 241 F32, 289 Q4_K, 49 Q6_K tensors, 17.28 GiB",
       rc == 0 and "total: 579 tensors (241 F32, 289 Q4_K, 49 Q6_K)" in out and "(17.28 GiB)" in out, out[-200:])
report("qwen3-30b-a3b plan: expert and attention shapes",
       all(s in out for s in ["blk.47.ffn_down_exps.weight  Q6_K   [768, 2048, 128]", "blk.0.ffn_gate_exps.weight   Q4_K   [2048, 768, 128]",
                              "blk.5.attn_q.weight          Q4_K   [2048, 4096]", "blk.5.attn_k.weight          Q4_K   [2048, 512]",
                              "output.weight                Q6_K   [2048, 151936]", "blk.9.ffn_gate_inp.weight    F32    [2048, 128]"]),
       out[:300])

# Errors.
def expect(name, want, sub, *args):
    rc, out = qmoe("make-model", *args)
    report(name, rc == want and sub in out, f"exit {rc}: {out[-200:]}")
expect("unknown preset", 2, "unknown preset 'huge'", "--preset", "huge", "-o", os.path.join(TMP, "x.gguf"))
expect("unknown ftype", 2, "unknown --ftype 'q3_k'", "--preset", "tiny", "--ftype", "q3_k", "-o", os.path.join(TMP, "x.gguf"))
expect("repeated --seed", 2, "--seed given twice", "--preset", "tiny", "--seed", "1", "--seed", "2", "-o", os.path.join(TMP, "x.gguf"))
expect("missing -o", 2, "missing -o FILE", "--preset", "tiny")
expect("--layers 0", 2, "--layers must be from 1", "--preset", "tiny", "--layers", "0", "-o", os.path.join(TMP, "x.gguf"))
expect("unwritable output", 1, "nodir", "--preset", "tiny", "-o", os.path.join(TMP, "nodir", "x.gguf"))
report("a failed make-model leaves no file", not os.path.exists(os.path.join(TMP, "x.gguf")))
rc, out = qmoe("make-model", "--help")
report("make-model --help", rc == 0 and out.startswith("usage: qmoe make-model"), out[:100])

subprocess.run(["rm", "-rf", TMP])
sys.exit(1 if failed else 0)
