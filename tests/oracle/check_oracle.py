#!/usr/bin/env python3
# check_oracle.py: qmoe held to Hugging Face transformers. Converts the committed tiny Qwen3-MoE checkpoint
# (tests/oracle/model, made by make_oracle.py) with `qmoe convert`, runs it with `qmoe run` / `qmoe trace` on every
# backend present, and compares with the float64 records in tests/oracle/records: f64 — last-position logits
# max-abs error <= 1e-4 * max|logit|, identical router top-k sets at every layer and position, identical 32 greedy
# tokens; f32 — per-layer cosine of l_out >= 0.9999. Also checks the GGUF's tokenizer (`qmoe tokenize`) against
# the `tokenizers` package on the prompts. Needs numpy and gguf-py (tokenizers optional).
# qmoe-test: normal-only (fast; check_convert.py covers convert under the sanitizers)
import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
QMOE = os.path.join(os.environ.get("QMOE_BIN", "build"), "qmoe")
LOGIT_TOL, COS_MIN = 1e-4, 0.9999
failures = 0


def report(ok, name, why=""):
    global failures
    print(f"ok {name}" if ok else f"not ok {name}: {why}", flush=True)
    failures += not ok


def sh(*args):
    return subprocess.run([QMOE, *args], capture_output=True, text=True)


def has_command(cmd):
    p = sh(cmd, "--help")
    return p.returncode == 0 and p.stdout.startswith(f"usage: qmoe {cmd}")


def read_gguf(path):
    import gguf
    r = gguf.GGUFReader(path)
    kv = {}
    for f in r.fields.values():
        if f.types and f.types[0] == gguf.GGUFValueType.ARRAY and f.types[-1] != gguf.GGUFValueType.STRING:
            kv[f.name] = [f.parts[i].tolist()[0] for i in f.data]
        elif f.types and f.types[0] == gguf.GGUFValueType.STRING:
            kv[f.name] = bytes(f.parts[f.data[0]]).decode("utf-8", "replace")
        elif f.types and f.types[0] != gguf.GGUFValueType.ARRAY:
            kv[f.name] = f.parts[f.data[0]].tolist()[0]
    return r, kv, {t.name: t for t in r.tensors}


def tensor_f32(t):
    """Values as float32, outermost dimension first (ne reversed): [n_pos, elements]."""
    import gguf
    a = np.asarray(t.data)
    if t.tensor_type == gguf.GGMLQuantizationType.BF16:
        a = (a.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
    elif t.tensor_type == gguf.GGMLQuantizationType.F16:
        a = a.view(np.float16)
    return a.astype(np.float64).reshape(list(reversed([int(x) for x in t.shape])))


def load_trace(path):
    """(kv, {name: array [n_pos, elements]}, positions of result_output)."""
    _, kv, tens = read_gguf(path)
    arr = {n: (np.asarray(t.data).reshape(list(reversed([int(x) for x in t.shape]))) if n.endswith("ffn_moe_topk")
               else tensor_f32(t)) for n, t in tens.items()}
    n_pos = len(kv.get("qmoe.trace.tokens", []))
    pos = kv.get("qmoe.trace.positions", list(range(n_pos)))
    if isinstance(pos, int):
        pos = [pos]
    return kv, arr, pos


def check_convert(tmp):
    """Converts the oracle checkpoint to f32 and bf16; the bf16 file decodes to exactly the f32 file's tensors."""
    out = {}
    for ty in ("f32", "bf16"):
        path = os.path.join(tmp, f"oracle-{ty}.gguf")
        p = sh("convert", os.path.join(HERE, "model"), path, "--type", ty)
        if p.returncode:
            report(False, f"oracle convert {ty}", p.stderr.strip()[-500:])
            return None
        out[ty] = path
    _, kv32, t32 = read_gguf(out["f32"])
    _, kv16, t16 = read_gguf(out["bf16"])
    bad = [n for n in t32 if n not in t16 or not np.array_equal(tensor_f32(t32[n]), tensor_f32(t16[n]))]
    report(not bad and set(t32) == set(t16), "oracle convert f32 and bf16 hold identical values", f"differ: {bad[:4]}")
    return out["f32"]


def numpy_forward(model, ids):
    """A float64 numpy Qwen3-MoE forward over the converted GGUF (the equations of qwen3-moe.md): per-layer outputs,
    router top-k ids and the logits at every position. Checks the converter's layout against transformers without
    qmoe's forward."""
    _, kv, tens = read_gguf(model)
    W = lambda n: tensor_f32(tens[n])  # noqa: E731
    a = "qwen3moe."
    L, nh, nkv, hd, K = (kv[a + "block_count"], kv[a + "attention.head_count"], kv[a + "attention.head_count_kv"],
                         kv[a + "attention.key_length"], kv[a + "expert_used_count"])
    eps, theta = kv[a + "attention.layer_norm_rms_epsilon"], kv[a + "rope.freq_base"]

    def rms(x, w):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w

    T = len(ids)
    inv = theta ** (-np.arange(0, hd, 2) / hd)
    ang = np.arange(T)[:, None] * inv[None, :]
    cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]

    def rope(x):  # NEOX: dimension i pairs with i + hd/2
        x1, x2 = x[..., :hd // 2], x[..., hd // 2:]
        return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)

    x = W("token_embd.weight")[ids]
    outs, topk = [], []
    mask = np.triu(np.full((T, T), -np.inf), 1)
    for l in range(L):
        p = f"blk.{l}."
        h = rms(x, W(p + "attn_norm.weight"))
        q = rope(rms((h @ W(p + "attn_q.weight").T).reshape(T, nh, hd), W(p + "attn_q_norm.weight")))
        k = rope(rms((h @ W(p + "attn_k.weight").T).reshape(T, nkv, hd), W(p + "attn_k_norm.weight")))
        v = (h @ W(p + "attn_v.weight").T).reshape(T, nkv, hd)
        att = np.empty((T, nh, hd))
        for j in range(nh):
            g = j // (nh // nkv)
            sc = q[:, j] @ k[:, g].T / np.sqrt(hd) + mask
            pr = np.exp(sc - sc.max(-1, keepdims=True))
            att[:, j] = (pr / pr.sum(-1, keepdims=True)) @ v[:, g]
        x = x + att.reshape(T, nh * hd) @ W(p + "attn_output.weight").T
        h = rms(x, W(p + "ffn_norm.weight"))
        lg = h @ W(p + "ffn_gate_inp.weight").T
        pr = np.exp(lg - lg.max(-1, keepdims=True))
        pr /= pr.sum(-1, keepdims=True)
        sel = np.argsort(-pr, axis=-1, kind="stable")[:, :K]
        gate, up, down = W(p + "ffn_gate_exps.weight"), W(p + "ffn_up_exps.weight"), W(p + "ffn_down_exps.weight")
        moe = np.zeros_like(x)
        for t in range(T):
            wsel = pr[t, sel[t]] / pr[t, sel[t]].sum()
            for e, we in zip(sel[t], wsel):
                gt = gate[e] @ h[t]
                moe[t] += we * (down[e] @ (gt / (1 + np.exp(-gt)) * (up[e] @ h[t])))
        x = x + moe
        outs.append(x.copy())
        topk.append(sel)
    return outs, topk, rms(x, W("output_norm.weight")) @ W("output.weight").T


def check_numpy_reference(model, meta):
    for k, pr in enumerate(meta["prompts"]):
        _, ref, ref_pos = load_trace(os.path.join(HERE, pr["trace"]))
        outs, topk, logits = numpy_forward(model, pr["ids"])
        last, want = logits[-1], ref["result_output"][ref_pos.index(len(pr["ids"]) - 1)]
        err, scale = np.abs(last - want).max(), np.abs(want).max()
        cos = min(float(a.ravel() @ ref[f"blk.{l}.l_out"].ravel() / np.linalg.norm(a) / np.linalg.norm(ref[f"blk.{l}.l_out"]))
                  for l, a in enumerate(outs))
        same = all(set(a[t].tolist()) == set(ref[f"blk.{l}.ffn_moe_topk"][t].tolist())
                   for l, a in enumerate(topk) for t in range(a.shape[0]))
        report(err <= LOGIT_TOL * scale and cos >= COS_MIN and same, f"oracle numpy forward of the converted file, prompt {k}",
               f"logit error {err:.3g} (max|logit| {scale:.3g}), worst l_out cosine {cos:.7f}, top-k sets equal: {same}")


def check_tokenizer(model, meta):
    try:
        from tokenizers import Tokenizer
    except ImportError:
        print("skip oracle tokenizer: the tokenizers package is not installed (pip install tokenizers)")
        return
    tok = Tokenizer.from_file(os.path.join(HERE, "model", "tokenizer.json"))
    bad = [k for k, p in enumerate(meta["prompts"]) if tok.encode(p["text"]).ids != p["ids"]]
    report(not bad, "oracle recorded prompt ids = tokenizer.json's", f"prompts {bad} differ")
    if not has_command("tokenize"):
        print("skip oracle tokenizer: this qmoe has no 'tokenize' command yet")
        return
    texts = [p["text"] for p in meta["prompts"]] + [
        "x = [1, 22, 333, 4444]  # digits\n\tif (a<b) { return \"é\"; }", "  leading and trailing  ", "日本語のテキスト 😀!!",
        "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n", "\n\n\n   \t \n", "it's we'll I'M"]
    for i, text in enumerate(texts):
        want = tok.encode(text).ids
        p = sh("tokenize", "-m", model, "-p", text, "--json")
        try:
            got = json.loads(p.stdout)
            got = got["ids"] if isinstance(got, dict) else got
        except (ValueError, KeyError, TypeError):
            got = None
        report(p.returncode == 0 and got == want, f"oracle tokenizer text {i}",
               f"exit {p.returncode}, qmoe {got} vs tokenizers {want}: {p.stderr.strip()[-200:]}")


def backends():
    out = ["cpu"]
    for b in ("vulkan", "cuda"):
        if b == "cuda" and not any(os.path.exists(f"/dev/nvidia{i}") for i in range(16)):
            print("skip oracle cuda: no CUDA device")
            continue
        out.append(b)
    return out


def backend_works(model, b, ids):
    p = sh("run", "-m", model, "--backend", b, "--tokens", ",".join(map(str, ids)), "-n", "1", "--json")
    return p.returncode == 0, p.stderr.strip()[-300:]


def check_backend(model, b, meta, tmp):
    for k, pr in enumerate(meta["prompts"]):
        ids, want = pr["ids"], pr["greedy"]
        tag = f"oracle {b} prompt {k} ({len(ids)} tokens)"
        toks = ",".join(map(str, ids))
        # f64: greedy tokens.
        # Hugging Face's greedy loop does not stop at the end-of-sequence token; neither may qmoe's.
        eos = ["--ignore-eos"] if "--ignore-eos" in sh("run", "--help").stdout else []
        p = sh("run", "-m", model, "--backend", b, "--tokens", toks, "-n", str(len(want)), "--acc", "f64", "--json", *eos)
        try:
            got = json.loads(p.stdout)["ids"]
        except (ValueError, KeyError, TypeError):
            got = None
        if p.returncode or got is None:
            report(False, f"{tag} f64 greedy", f"qmoe run exit {p.returncode}: {p.stderr.strip()[-300:]}")
        else:
            got = got[-len(want):] if len(got) > len(want) and got[:len(ids)] == ids else got
            first = next((i for i, (a, c) in enumerate(zip(got, want)) if a != c), None)
            report(got == want, f"{tag} f64 greedy {len(want)} tokens",
                   f"differ from token {first}: qmoe {got} vs transformers {want}")
        _, ref, ref_pos = load_trace(os.path.join(HERE, pr["trace"]))
        n_layers = meta["n_layers"]
        for acc in ("f64", "f32", "q8"):  # q8: the row stages on 8-bit x (docs/q8.md), held to f32's cosine
            tpath = os.path.join(tmp, f"trace-{b}-{k}-{acc}.gguf")
            p = sh("trace", "-m", model, "--backend", b, "--tokens", toks, "--acc", acc, "--stages",
                   "l_out,ffn_moe_topk,result_output", "--layers", "all", "-o", tpath)
            if p.returncode:
                report(False, f"{tag} {acc} trace", f"qmoe trace exit {p.returncode}: {p.stderr.strip()[-300:]}")
                continue
            try:
                _, tr, tr_pos = load_trace(tpath)
            except Exception as e:  # noqa: BLE001
                report(False, f"{tag} {acc} trace", f"cannot read {tpath}: {e}")
                continue
            missing = [n for n in [f"blk.{l}.{s}" for l in range(n_layers) for s in ("l_out", "ffn_moe_topk")] + ["result_output"]
                       if n not in tr]
            if missing:
                report(False, f"{tag} {acc} trace", f"missing tensors {missing[:4]}")
                continue
            if acc == "f64":
                last, want_last = tr["result_output"][tr_pos.index(len(ids) - 1)], ref["result_output"][ref_pos.index(len(ids) - 1)]
                err, scale = np.abs(last - want_last).max(), np.abs(want_last).max()
                report(err <= LOGIT_TOL * scale, f"{tag} f64 last-position logits",
                       f"max-abs error {err:.3g} > {LOGIT_TOL} x max|logit| {scale:.3g}")
                bad = []
                for l in range(n_layers):
                    a, c = tr[f"blk.{l}.ffn_moe_topk"], ref[f"blk.{l}.ffn_moe_topk"]
                    if a.shape != c.shape:
                        bad.append(f"layer {l}: shape {a.shape} vs {c.shape}")
                        continue
                    for t in range(a.shape[0]):
                        if set(a[t].tolist()) != set(c[t].tolist()):
                            bad.append(f"layer {l} position {t}: {sorted(a[t].tolist())} vs {sorted(c[t].tolist())}")
                report(not bad, f"{tag} f64 router top-k sets at every layer and position", "; ".join(bad[:3]))
            else:
                worst = (2.0, -1)
                for l in range(n_layers):
                    a, c = tr[f"blk.{l}.l_out"].ravel(), ref[f"blk.{l}.l_out"].ravel()
                    cos = float(a @ c / (np.linalg.norm(a) * np.linalg.norm(c))) if a.shape == c.shape else -1.0
                    worst = min(worst, (cos, l))
                report(worst[0] >= COS_MIN, f"{tag} {acc} per-layer l_out cosine",
                       f"layer {worst[1]}: cosine {worst[0]:.7f} < {COS_MIN}")


def main():
    if not os.path.exists(QMOE):
        print(f"not ok oracle: no {QMOE} (set QMOE_BIN)")
        return 1
    with open(os.path.join(HERE, "records", "greedy.json")) as f:
        meta = json.load(f)
    with open(os.path.join(HERE, "model", "config.json")) as f:
        meta["n_layers"] = json.load(f)["num_hidden_layers"]
    tmp = tempfile.mkdtemp(prefix="qmoe-oracle-")
    try:
        model = check_convert(tmp)
        if model is None:
            return 1
        check_numpy_reference(model, meta)
        check_tokenizer(model, meta)
        missing = [c for c in ("run", "trace") if not has_command(c)]
        if missing:
            report(False, "oracle forward", f"this qmoe has no {' or '.join(repr(c) for c in missing)} command: "
                   "cannot compare the model with Hugging Face")
            return 1
        for b in backends():
            ok, why = backend_works(model, b, meta["prompts"][0]["ids"])
            if not ok and (b == "cuda" or "no device" in why.lower() or "no vulkan" in why.lower()):
                print(f"skip oracle {b}: no {b} device ({why})")
                continue
            if not ok:
                report(False, f"oracle {b}", f"qmoe run --backend {b} fails: {why}")
                continue
            check_backend(model, b, meta, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
