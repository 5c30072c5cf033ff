# check_model.py: the Qwen3-MoE model end to end on a tiny random qwen3moe GGUF (tests/model/tinymodel.py):
# the CPU forward against an independent float64 NumPy forward, Vulkan against CPU, determinism, the trace
# file format (read back with gguf-py), `run --json`, `bench --json`, the command-line errors.
import json, os, shutil, subprocess, sys, tempfile
import numpy as np
import gguf

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tinymodel as tm

QMOE = os.path.join(os.environ.get("QMOE_BIN", "build"), "qmoe")
PROMPT = [1, 2, 3, 4, 5, 250]
N_GEN = 8
failed = 0


def report(name, ok, why=""):
    global failed
    print(("ok " if ok else "not ok ") + name + ("" if ok else ": " + why), flush=True)
    failed += not ok


def qmoe(*args):
    p = subprocess.run([QMOE, *map(str, args)], capture_output=True, text=True, errors="replace")
    return p.returncode, p.stdout, p.stderr


def trace(model, out, backend="cpu", acc="f32", stages="all", tokens=PROMPT):
    rc, so, se = qmoe("trace", "-m", model, "--backend", backend, "--acc", acc, "--stages", stages,
                      "--tokens", ",".join(map(str, tokens)), "-o", out)
    if rc:
        raise RuntimeError(f"qmoe trace ({backend} {acc}) failed: {se}")
    r = gguf.GGUFReader(out)
    return r, {t.name: np.array(t.data) for t in r.tensors}


def run_json(model, backend="cpu", acc="f32", n=N_GEN, extra=()):
    rc, so, se = qmoe("run", "-m", model, "--backend", backend, "--acc", acc, "--tokens", ",".join(map(str, PROMPT)),
                      "-n", n, "--ignore-eos", "--json", *extra)
    if rc:
        raise RuntimeError(f"qmoe run ({backend} {acc}) failed: {se}")
    return json.loads(so)


def cosine(a, b):
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def main():
    tmp = tempfile.mkdtemp(prefix="qmoe-model-")
    try:
        return checks(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def checks(tmp):
    model = os.path.join(tmp, "tiny.gguf")
    tens = tm.tensors()
    tm.write(model, tens=tens)
    ref = tm.Reference(tens)
    logits, l_out, topk = ref.forward(PROMPT)
    c = tm.CFG

    # (f) the trace file: metadata, names, shapes, types, readable by gguf-py.
    r, t = trace(model, os.path.join(tmp, "cpu64.gguf"), acc="f64")
    f = r.fields
    meta_ok = (int(f["qmoe.trace.version"].parts[-1][0]) == 1 and
               bytes(f["qmoe.trace.source"].parts[-1]).decode() == "qmoe cpu f64" and
               bytes(f["qmoe.trace.model"].parts[-1]).decode() == "tiny.gguf" and
               int(f["qmoe.trace.n_layers"].parts[-1][0]) == c["L"] and
               [int(f["qmoe.trace.tokens"].parts[i][0]) for i in f["qmoe.trace.tokens"].data] == PROMPT)
    report("trace/metadata", meta_ok, str({k: f[k].parts[-1] for k in f if k.startswith("qmoe.")}))
    want = {"inp_embd": c["H"], "result_norm": c["H"], "result_output": c["V"]}
    per_layer = {"attn_norm": c["H"], "Qcur": c["nh"] * c["D"], "Kcur": c["nkv"] * c["D"],
                 "Vcur": c["nkv"] * c["D"], "attn_out": c["nh"] * c["D"], "attn_proj": c["H"], "ffn_inp": c["H"],
                 "ffn_norm": c["H"], "moe_router": c["E"], "ffn_moe_topk": c["K"], "ffn_moe_weights": c["K"],
                 "ffn_moe_swiglu": c["K"] * c["F"], "ffn_moe_out": c["H"], "l_out": c["H"]}
    for l in range(c["L"]):
        for k, n in per_layer.items():
            want[f"blk.{l}.{k}"] = n
    bad = []
    for rt in r.tensors:
        n = want.get(rt.name)
        typ = gguf.GGMLQuantizationType.I32 if rt.name.endswith("ffn_moe_topk") else gguf.GGMLQuantizationType.F32
        if n is None or list(rt.shape) != [n, len(PROMPT)] or rt.tensor_type != typ:
            bad.append(f"{rt.name} {list(rt.shape)} {rt.tensor_type.name}")
    missing = sorted(set(want) - {rt.name for rt in r.tensors})
    report("trace/names_shapes_types", not bad and not missing, f"unexpected {bad}, missing {missing}")

    # (a) CPU f64 against the NumPy float64 forward.
    lg = t["result_output"]
    err = np.abs(lg - logits).max() / np.abs(logits).max()
    report("cpu_f64/logits_vs_numpy", err <= 1e-4, f"max-abs error {err:.3g} x max|logit|")
    worst = min(cosine(t[f"blk.{l}.l_out"], l_out[l]) for l in range(c["L"]))
    report("cpu_f64/l_out_vs_numpy", worst >= 0.999999, f"worst layer cosine {worst:.9f}")
    same_topk = all(np.array_equal(t[f"blk.{l}.ffn_moe_topk"], topk[l]) for l in range(c["L"]))
    report("cpu_f64/topk_vs_numpy", same_topk, "router top-k differs from NumPy's")
    wsum = max(abs(float(t[f"blk.{l}.ffn_moe_weights"][p].sum()) - 1) for l in range(c["L"]) for p in range(len(PROMPT)))
    report("cpu_f64/router_weights_sum_1", wsum <= 1e-6, f"|sum - 1| = {wsum:.3g}")
    greedy = ref.greedy(PROMPT, N_GEN)
    got = run_json(model, acc="f64")["ids"]
    report("cpu_f64/greedy_vs_numpy", got == greedy, f"qmoe {got} numpy {greedy}")
    _, t32 = trace(model, os.path.join(tmp, "cpu32.gguf"), stages="l_out,result_output")
    worst = min(cosine(t32[f"blk.{l}.l_out"], l_out[l]) for l in range(c["L"]))
    report("cpu_f32/l_out_vs_numpy", worst >= 0.9999, f"worst layer cosine {worst:.7f}")
    err = np.abs(t32["result_output"] - logits).max() / np.abs(logits).max()
    report("cpu_f32/logits_vs_numpy", err <= 1e-3, f"max-abs error {err:.3g} x max|logit|")
    finite = all(np.all(np.isfinite(v)) for v in t.values())
    report("cpu/all_trace_points_finite", finite, "a traced value is not finite")

    # (c) determinism on the CPU.
    _, t32b = trace(model, os.path.join(tmp, "cpu32b.gguf"), stages="l_out,result_output")
    report("cpu/determinism_bitwise", all(t32[k].tobytes() == t32b[k].tobytes() for k in t32), "two runs differ")

    # A prompt longer than one upload chunk of embeddings (64 positions).
    long_prompt = [(7 * i + 3) % c["V"] for i in range(70)]
    rc, so, se = qmoe("run", "-m", model, "--acc", "f64", "--tokens", ",".join(map(str, long_prompt)), "-n", "2",
                      "--ignore-eos", "--json")
    want_ids = ref.greedy(long_prompt, 2)
    report("cpu_f64/long_prompt_vs_numpy", rc == 0 and json.loads(so)["ids"] == want_ids, f"{so} {se} numpy {want_ids}")

    # A file made by `qmoe quantize ... q4_k_m` (the real quantizer and the recipe's per-layer types) from
    # the same weights in F32, against NumPy on what gguf-py decodes from it.
    f32 = {n: (tm.dq(a, qt).astype(np.float32), gguf.GGMLQuantizationType.F32) for n, (a, qt) in tens.items()}
    src, q4km = os.path.join(tmp, "f32.gguf"), os.path.join(tmp, "q4km.gguf")
    tm.write(src, tens=f32)
    rc, so, se = qmoe("quantize", src, q4km, "q4_k_m")
    if rc:
        report("q4_k_m/quantize", False, se)
    else:
        rq = gguf.GGUFReader(q4km)
        qt_types = {t.tensor_type.name for t in rq.tensors}
        qtens = {t.name: (np.array(t.data), t.tensor_type) for t in rq.tensors}
        rc, so, se = qmoe("run", "-m", q4km, "--acc", "f64", "--tokens", ",".join(map(str, PROMPT)), "-n", "6",
                          "--ignore-eos", "--json")
        want_ids = tm.Reference(qtens).greedy(PROMPT, 6)
        ok = rc == 0 and json.loads(so)["ids"] == want_ids and {"Q4_K", "Q6_K", "F32"} <= qt_types
        report("q4_k_m/greedy_vs_numpy", ok, f"{so} {se} numpy {want_ids} types {sorted(qt_types)}")

    # (e) run --json round trip and sampling.
    j = run_json(model)
    ok = (j["prompt_ids"] == PROMPT and len(j["ids"]) == N_GEN and j["text"] == "" and
          j["prefill_tokens_per_s"] > 0 and j["decode_tokens_per_s"] > 0)
    report("run/json_round_trip", ok, json.dumps(j))
    s1 = run_json(model, extra=("--temp", "0.8", "--top-k", "20", "--top-p", "0.9", "--seed", "5"))["ids"]
    s2 = run_json(model, extra=("--temp", "0.8", "--top-k", "20", "--top-p", "0.9", "--seed", "5"))["ids"]
    report("run/seeded_sampling_repeats", s1 == s2 and len(s1) == N_GEN, f"{s1} vs {s2}")
    rc, so, se = qmoe("run", "-m", model, "--tokens", "1,2", "-n", "3", "--ignore-eos")
    report("run/streams_ids_and_rates", rc == 0 and len(so.split()) == 3 and "tokens/s" in se, so + se)

    # (b) Vulkan (lavapipe here) against the CPU.
    rc, so, se = qmoe("run", "-m", model, "--backend", "vulkan", "--tokens", "1", "-n", "1")
    if rc and ("no Vulkan" in se or "Vulkan loader" in se or "no vulkan" in se.lower()):
        print("skip vulkan: no Vulkan device (" + se.strip().splitlines()[-1] + ")")
    else:
        _, v32 = trace(model, os.path.join(tmp, "vk32.gguf"), backend="vulkan", stages="l_out,result_output")
        worst = min(cosine(v32[f"blk.{l}.l_out"], t32[f"blk.{l}.l_out"]) for l in range(c["L"]))
        report("vulkan_f32/l_out_cosine_vs_cpu", worst >= 0.9999, f"worst layer cosine {worst:.7f}")
        gv, gc = run_json(model, backend="vulkan")["ids"], run_json(model)["ids"]
        report("vulkan_f32/greedy_vs_cpu", gv == gc, f"vulkan {gv} cpu {gc}")
        _, v64 = trace(model, os.path.join(tmp, "vk64.gguf"), backend="vulkan", acc="f64",
                       stages="ffn_moe_topk,result_output")
        same = all(np.array_equal(v64[f"blk.{l}.ffn_moe_topk"], t[f"blk.{l}.ffn_moe_topk"]) for l in range(c["L"]))
        report("vulkan_f64/topk_vs_cpu", same, "router top-k differs")
        err = np.abs(v64["result_output"] - lg).max() / np.abs(lg).max()
        report("vulkan_f64/logits_vs_cpu", err <= 1e-6, f"max-abs {err:.3g} x max|logit|")
        rc, so, se = qmoe("bench", "-m", model, "--backend", "vulkan", "-p", "2", "-n", "2", "--repeats", "1",
                          "--copy-mib", "1", "--json")
        try:
            b = json.loads(so)
            ok = b["timer"] == "Vulkan timestamps" and b["decode_tokens_per_s"] > 0 and b["copy_gb_per_s"] > 0
        except Exception as e:
            ok, so = False, f"{so} {se} {e}"
        report("vulkan/bench_device_timer", ok, so)
        _, v32b = trace(model, os.path.join(tmp, "vk32b.gguf"), backend="vulkan", stages="l_out,result_output")
        report("vulkan/determinism_bitwise", all(v32[k].tobytes() == v32b[k].tobytes() for k in v32), "two runs differ")

    # CUDA: real devices only (tests/gpu.sh); here the backend must say plainly that there is none.
    rc, so, se = qmoe("run", "-m", model, "--backend", "cuda", "--tokens", "1", "-n", "1")
    if rc:
        print("skip cuda: no CUDA device (" + (se.strip().splitlines() or ["?"])[-1] + ")")
    else:
        gcu = run_json(model, backend="cuda")["ids"]
        report("cuda_f32/greedy_vs_cpu", gcu == run_json(model)["ids"], f"cuda {gcu}")

    # bench --json
    rc, so, se = qmoe("bench", "-m", model, "-p", "4", "-n", "4", "--repeats", "1", "--copy-mib", "4", "--json")
    try:
        b = json.loads(so)
        ok = rc == 0 and b["decode_tokens_per_s"] > 0 and b["prefill_tokens_per_s"] > 0 and \
            b["copy_gb_per_s"] > 0 and 0 < b["weight_bytes_per_token"] < os.path.getsize(model)
    except Exception as e:
        ok, so = False, f"{so} {se} {e}"
    report("bench/json", ok and b["timer"] == "host monotonic clock around synchronized work", so)

    # bench --stages: every kind of call of a decode position, each counted as the forward makes it.
    rc, so, se = qmoe("bench", "-m", model, "-p", "3", "-n", "2", "--repeats", "1", "--copy-mib", "4", "--json",
                      "--stages")
    try:
        b = json.loads(so)
        st = {k["label"]: k for k in b["stages"]}
        L = int(gguf.GGUFReader(model).fields["qwen3moe.block_count"].parts[-1][0])
        # rmsnorm once (layer 0's attn_norm); every other norm is fused into the add before it (add_rmsnorm); no
        # kv_store: k and v are written into the cache rows by qk_norm_rope and matvec.
        want = {"embed_rows token_embd": 1, "rmsnorm": 1, "matvec attn_q": L, "matvec attn_k": L,
                "matvec attn_v": L, "qk_norm_rope": 2 * L, "attention": L,
                "matvec attn_output": L, "add_rmsnorm": 2 * L, "router_topk": L, "moe_gate_up_swiglu ffn_gate_exps": L,
                "moe_down ffn_down_exps": L, "matvec output": 1, "argmax": 1}
        counts = {k: v["calls_per_token"] for k, v in st.items()}
        ok = rc == 0 and counts == want and all(v["us_per_call"] > 0 for v in st.values()) and \
            st["matvec output"]["weight_bytes_per_call"] > st["matvec attn_q"]["weight_bytes_per_call"] > 0 and \
            abs(b["stage_us_per_token"] - sum(v["us_per_call"] * v["calls_per_token"] for v in st.values())) < \
            1e-3 * b["stage_us_per_token"] and b["stage_position"] == 4
    except Exception as e:
        ok, so = False, f"{so} {se} {e}"
    report("bench/stages", ok, so)
    # bench --depth: the prompt starts at position D after D zeroed cache rows; the decode positions say so.
    rc, so, se = qmoe("bench", "-m", model, "-p", "2", "-n", "3", "--repeats", "1", "--copy-mib", "4", "--json",
                      "--depth", "100")
    try:
        b = json.loads(so)
        ok = rc == 0 and b["depth"] == 100 and b["decode_positions"] == [102, 104] and b["decode_tokens_per_s"] > 0
    except Exception as e:
        ok, so = False, f"{so} {se} {e}"
    report("bench/depth", ok, so)
    rc, so, se = qmoe("bench", "-m", model, "-p", "2", "-n", "3", "--repeats", "1", "--copy-mib", "4", "--ctx", "64",
                      "--depth", "60")
    report("bench/depth_past_ctx", rc != 0 and "need 65 positions" in se and "holds 64" in se, se)
    rc, so, se = qmoe("bench", "-m", model, "-p", "3", "-n", "2", "--repeats", "1", "--copy-mib", "4", "--stages")
    report("bench/stages_text", rc == 0 and "sum of stages:" in so and "moe_down ffn_down_exps" in so, so + se)

    # Text in and out through the tokenizer stored in the file. The JSON text replaces each byte that is not
    # part of valid UTF-8 with U+FFFD.
    def per_byte_replace(b):
        out, i = [], 0
        while i < len(b):
            for k in (1, 2, 3, 4):
                try:
                    ch = b[i:i + k].decode("utf-8")
                    if len(ch) == 1:
                        out.append(ch)
                        i += k
                        break
                except UnicodeDecodeError:
                    pass
            else:
                out.append("�")
                i += 1
        return "".join(out)

    tok_model = os.path.join(tmp, "tok.gguf")
    tm.write(tok_model, tens=tens, tokenizer=True)
    rc, so, se = qmoe("tokenize", "-m", tok_model, "-p", "hello world, the model", "--json")
    want_prompt = json.loads(so)["ids"] if rc == 0 else None
    rc, so, se = qmoe("run", "-m", tok_model, "-p", "hello world, the model", "-n", "6", "--ignore-eos", "--json")
    try:
        j = json.loads(so)
        raw = subprocess.run([QMOE, "detokenize", "-m", tok_model, "--no-special", "--tokens",
                              ",".join(map(str, j["ids"]))], capture_output=True).stdout
        ok = rc == 0 and j["prompt_ids"] == want_prompt and len(j["ids"]) == 6 and j["text"] == per_byte_replace(raw)
    except Exception as e:
        ok, so = False, f"{so} {se} {e}"
    report("run/text_prompt_and_text_out", ok, f"{so} {se} want prompt {want_prompt}")
    rc, so, se = qmoe("run", "-m", tok_model, "-p", "hello", "--chat", "-n", "2", "--ignore-eos", "--json")
    try:
        j = json.loads(so)
        ok = rc == 0 and j["prompt_ids"][0] == c["V"] - 2 and j["prompt_ids"][-1] != c["V"] - 2
    except Exception as e:
        ok, so = False, f"{so} {se} {e}"
    report("run/chat_template", ok, f"{so} {se}")
    rc, so, se = qmoe("run", "-m", tok_model, "-p", "the expert", "-n", "4", "--ignore-eos")
    report("run/streams_text", rc == 0 and so.endswith("\n") and "tokens/s" in se, so + se)
    rc, so, se = qmoe("trace", "-m", tok_model, "-p", "hello", "--stages", "l_out", "-o", os.path.join(tmp, "tt.gguf"))
    report("trace/text_prompt", rc == 0, se)
    rc, so, se = qmoe("run", "-m", model, "-p", "hello")
    report("run/text_needs_tokenizer", rc == 1 and "no tokenizer" in se, se)

    # command-line errors
    rc, so, se = qmoe("run", "-m", model, "--tokens", "1", "--tokens", "2")
    report("cli/repeated_option", rc == 2 and "twice" in se, se)
    rc, so, se = qmoe("trace", "-m", model, "--tokens", "1", "--stages", "l_out,bogus", "-o", os.path.join(tmp, "x.gguf"))
    report("cli/unknown_stage_lists_valid", rc == 1 and "bogus" in se and "ffn_moe_topk" in se, se)
    before = open(model, "rb").read()
    rc, so, se = qmoe("trace", "-m", model, "--tokens", "1", "-o", model)
    report("cli/trace_never_overwrites_model", rc != 0 and open(model, "rb").read() == before, se)
    rc, so, se = qmoe("run", "-m", model, "--tokens", "1,2,3", "-n", "10", "--ctx", "8")
    report("cli/context_too_long", rc == 1 and "KV cache" in se, se)
    rc, so, se = qmoe("run", "-m", model, "--tokens", "1", "--ctx", "129")
    report("cli/ctx_beyond_model", rc == 1 and "context_length" in se, se)
    rc, so, se = qmoe("run", "-m", model, "--tokens", "300")
    report("cli/token_outside_vocab", rc == 1 and "vocabulary" in se, se)
    for cmd in ("run", "trace", "bench"):
        rc, so, se = qmoe(cmd, "--help")
        report(f"cli/{cmd}_help", rc == 0 and so.startswith("usage: qmoe " + cmd), so)

    # (d) loader errors, each naming the key or tensor (and the file).
    def variant(name, meta=None, tens_=None, arch="qwen3moe"):
        p = os.path.join(tmp, name + ".gguf")
        tm.write(p, arch=arch, meta=meta, tens=tens_)
        return p

    def drop_meta(key):
        return [m for m in tm.metadata() if m[0] != key]

    def set_meta(key, kind, v):
        return [(k, kind, v) if k == key else (k, kk, vv) for k, kk, vv in tm.metadata()]

    def without(name):
        return {k: v for k, v in tens.items() if k != name}

    misshapen = dict(tens)
    a, qt = tens["blk.0.ffn_down_exps.weight"]
    misshapen["blk.0.ffn_down_exps.weight"] = (a[:-1], qt)
    mistyped = dict(tens)
    mistyped["blk.1.ffn_gate_inp.weight"] = (tens["blk.1.ffn_gate_inp.weight"][0], gguf.GGMLQuantizationType.F16)
    dense = dict(tens)
    dense["blk.2.ffn_gate.weight"] = (np.zeros((c["F"], c["H"]), np.float32), gguf.GGMLQuantizationType.F32)
    cases = [
        ("missing_expert", variant("missing_expert", tens_=without("blk.1.ffn_up_exps.weight")),
         ["blk.1.ffn_up_exps.weight", "missing"]),
        ("misshapen_expert", variant("misshapen", tens_=misshapen), ["blk.0.ffn_down_exps.weight", "[256, 256, 7]", "[256, 256, 8]"]),
        ("mistyped_router", variant("mistyped", tens_=mistyped), ["blk.1.ffn_gate_inp.weight", "F16", "F32"]),
        ("dense_ffn_in_moe_layer", variant("dense", tens_=dense), ["blk.2.ffn_gate.weight", "MoE"]),
        ("missing_rope_base", variant("no_rope", meta=drop_meta("qwen3moe.rope.freq_base")), ["qwen3moe.rope.freq_base", "missing"]),
        ("missing_expert_count", variant("no_experts", meta=drop_meta("qwen3moe.expert_count")), ["qwen3moe.expert_count"]),
        ("zero_head_count", variant("zero_heads", meta=set_meta("qwen3moe.attention.head_count", "u32", 0)),
         ["qwen3moe.attention.head_count", "0"]),
        ("negative_block_count", variant("neg_blocks", meta=set_meta("qwen3moe.block_count", "i32", -3)),
         ["qwen3moe.block_count"]),
        ("string_eps", variant("str_eps", meta=set_meta("qwen3moe.attention.layer_norm_rms_epsilon", "str", "1e-6")),
         ["qwen3moe.attention.layer_norm_rms_epsilon"]),
        ("other_architecture", variant("llama", arch="llama"), ["general.architecture", "llama"]),
    ]
    trunc = os.path.join(tmp, "truncated.gguf")
    with open(model, "rb") as fi, open(trunc, "wb") as fo:
        fo.write(fi.read()[: os.path.getsize(model) - 1000])
    cases.append(("truncated_file", trunc, ["truncated"]))
    for name, path, needles in cases:
        rc, so, se = qmoe("run", "-m", path, "--tokens", "1", "-n", "1")
        ok = rc == 1 and os.path.basename(path) in se and all(n in se for n in needles) and not so
        report("load_error/" + name, ok, f"rc {rc}: {se.strip()}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
