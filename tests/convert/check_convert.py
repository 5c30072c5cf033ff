#!/usr/bin/env python3
# check_convert.py: `qmoe convert` on small Hugging Face checkpoints written by hf_fixture.py: names, shapes, metadata
# and values read back with gguf-py against the numpy source; f32/f16/bf16, sharded, tied and transformers-5 configs;
# `qmoe quantize q4_k_m` on the result; and a hostile corpus that must fail with a clear message, no crash, no output.
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hf_fixture as hf  # noqa: E402

QMOE = os.path.join(os.environ.get("QMOE_BIN", "build"), "qmoe")
failures = 0


def report(ok, name, why=""):
    global failures
    print(f"ok {name}" if ok else f"not ok {name}: {why}")
    failures += not ok


def convert(d, out, *extra):
    return subprocess.run([QMOE, "convert", d, out, *extra], capture_output=True, text=True)


def gguf_map(path):
    import gguf
    r = gguf.GGUFReader(path)
    tens = {t.name: t for t in r.tensors}
    kv = {f.name: f for f in r.fields.values()}
    return r, tens, kv


def kv_value(f):
    import gguf
    if f.types[0] == gguf.GGUFValueType.ARRAY:
        if f.types[-1] == gguf.GGUFValueType.STRING:
            return [bytes(f.parts[i]).decode("utf-8") for i in f.data]
        return [f.parts[i].tolist()[0] for i in f.data]
    if f.types[0] == gguf.GGUFValueType.STRING:
        return bytes(f.parts[f.data[0]]).decode("utf-8")
    return f.parts[f.data[0]].tolist()[0]


def as_f32(t):
    """A gguf-py tensor's values as float32 in HF layout (outermost first)."""
    import gguf
    a = np.asarray(t.data)
    if t.tensor_type == gguf.GGMLQuantizationType.BF16:
        a = (a.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
    return a.astype(np.float32).reshape(list(reversed([int(x) for x in t.shape])))


def expected_gguf(src, s=hf.SHAPE, tied=False):
    """GGUF name -> (ne innermost first, values as an HF-layout float32 array)."""
    out = {"token_embd.weight": src["model.embed_tokens.weight"], "output_norm.weight": src["model.norm.weight"],
           "output.weight": src["model.embed_tokens.weight" if tied else "lm_head.weight"]}
    m = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm", "attn_q": "self_attn.q_proj",
         "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
         "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm", "ffn_gate_inp": "mlp.gate"}
    for l in range(s["layers"]):
        for g, h in m.items():
            out[f"blk.{l}.{g}.weight"] = src[f"model.layers.{l}.{h}.weight"]
        for g, h in (("gate", "gate_proj"), ("up", "up_proj"), ("down", "down_proj")):
            out[f"blk.{l}.ffn_{g}_exps.weight"] = np.stack(
                [src[f"model.layers.{l}.mlp.experts.{e}.{h}.weight"] for e in range(s["experts"])])
    return out


def check_file(name, path, src, mtype, tied=False):
    import gguf
    try:
        r, tens, kv = gguf_map(path)
    except Exception as e:  # noqa: BLE001
        return report(False, name, f"gguf-py cannot read {path}: {e}")
    exp = expected_gguf(src, tied=tied)
    if set(tens) != set(exp):
        return report(False, name, f"tensor names differ: extra {sorted(set(tens) - set(exp))[:4]} missing {sorted(set(exp) - set(tens))[:4]}")
    want_type = {"f32": gguf.GGMLQuantizationType.F32, "f16": gguf.GGMLQuantizationType.F16,
                 "bf16": gguf.GGMLQuantizationType.BF16}[mtype]
    for n, e in exp.items():
        t = tens[n]
        f32_only = e.ndim == 1 or n.endswith("ffn_gate_inp.weight")
        tt = gguf.GGMLQuantizationType.F32 if f32_only else want_type
        if t.tensor_type != tt:
            return report(False, name, f"{n} is {t.tensor_type.name}, expected {tt.name}")
        if [int(x) for x in t.shape] != list(reversed(e.shape)):
            return report(False, name, f"{n} has ne {list(t.shape)}, expected {list(reversed(e.shape))}")
        want = e.astype(np.float16).astype(np.float32) if tt == gguf.GGMLQuantizationType.F16 else e
        got = as_f32(t)
        if not np.array_equal(got, want):
            i = np.argmax(got != want)
            return report(False, name, f"{n} value {i} is {got.flat[i]}, expected {want.flat[i]}")
    s = hf.SHAPE
    want_kv = {"general.architecture": "qwen3moe", "qwen3moe.block_count": s["layers"],
               "qwen3moe.embedding_length": s["hidden"], "qwen3moe.feed_forward_length": 4 * s["hidden"],
               "qwen3moe.attention.head_count": s["heads"], "qwen3moe.attention.head_count_kv": s["kv_heads"],
               "qwen3moe.attention.key_length": s["head_dim"], "qwen3moe.attention.value_length": s["head_dim"],
               "qwen3moe.expert_count": s["experts"], "qwen3moe.expert_used_count": s["used"],
               "qwen3moe.expert_feed_forward_length": s["moe_ff"], "qwen3moe.context_length": 4096,
               "qwen3moe.rope.freq_base": 1e6, "general.file_type": {"f32": 0, "f16": 1, "bf16": 32}[mtype],
               "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "qwen2", "tokenizer.ggml.eos_token_id": 261,
               "tokenizer.ggml.padding_token_id": 259}
    for k, v in want_kv.items():
        if k not in kv or kv_value(kv[k]) != v:
            return report(False, name, f"metadata {k} = {kv_value(kv[k]) if k in kv else 'missing'}, expected {v!r}")
    eps = kv.get("qwen3moe.attention.layer_norm_rms_epsilon")
    if eps is None or eps.types[0] != gguf.GGUFValueType.FLOAT32 or abs(kv_value(eps) - 1e-6) > 1e-12:
        return report(False, name, "qwen3moe.attention.layer_norm_rms_epsilon is not f32 1e-6")
    toks, types = kv_value(kv["tokenizer.ggml.tokens"]), kv_value(kv["tokenizer.ggml.token_type"])
    b2u = hf.bytes_to_unicode()
    if len(toks) != s["vocab"] or toks[0] != b2u[0] or toks[258] != "Ġthe" or toks[261] != "<|im_end|>" or toks[299] != "[PAD299]":
        return report(False, name, f"tokens wrong: {len(toks)} tokens, {toks[258:264]}, last {toks[-1]}")
    if types[0] != 1 or types[259:263] != [3, 3, 3, 4] or types[299] != 5:
        return report(False, name, f"token types wrong: {types[255:264]} ... {types[-1]}")
    if kv_value(kv["tokenizer.ggml.merges"]) != ["Ġ t", "h e", "Ġt he"]:
        return report(False, name, f"merges wrong: {kv_value(kv['tokenizer.ggml.merges'])}")
    if "<|im_start|>" not in kv_value(kv["tokenizer.chat_template"]):
        return report(False, name, "no chat template")
    report(True, name)


def expect_fail(name, d, want, *extra, out=None):
    out = out or os.path.join(d, "..", os.path.basename(d) + ".gguf")
    odir = os.path.dirname(os.path.abspath(out))
    before = set(os.listdir(odir))
    p = convert(d, out, *extra)
    left = sorted(set(os.listdir(odir)) - before)
    if p.returncode != 1:
        return report(False, name, f"exit {p.returncode} (expected 1): {p.stderr.strip()[-400:]}")
    if want not in p.stderr:
        return report(False, name, f"message lacks {want!r}: {p.stderr.strip()[-400:]}")
    if "Sanitizer" in p.stderr or "runtime error" in p.stderr:
        return report(False, name, f"sanitizer: {p.stderr[-400:]}")
    if left:
        return report(False, name, f"left files behind: {left}")
    report(True, name)


def main():
    if not os.path.exists(QMOE):
        print(f"not ok convert: no {QMOE} (set QMOE_BIN)")
        return 1
    tmp = tempfile.mkdtemp(prefix="qmoe-convert-")
    try:
        run_all(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 1 if failures else 0


def run_all(tmp):
    import gguf  # noqa: F401
    good = os.path.join(tmp, "good")
    src = hf.write_checkpoint(good)
    outs = {}
    for mtype in ("f32", "bf16", "f16"):
        out = os.path.join(tmp, f"good-{mtype}.gguf")
        p = convert(good, out, "--type", mtype)
        if p.returncode != 0:
            report(False, f"convert {mtype}", p.stderr.strip()[-400:])
            continue
        outs[mtype] = out
        check_file(f"convert {mtype}", out, src, mtype)
    # The default type is the config's dtype (bfloat16 here).
    out = os.path.join(tmp, "default.gguf")
    p = convert(good, out)
    report(p.returncode == 0 and "bf16" in outs and open(out, "rb").read() == open(outs["bf16"], "rb").read(),
           "convert default type = config dtype", p.stderr[-300:])

    # Transformers-5 spelling, sharded into 3 files, merges as pairs, f32 source: the same tensors and metadata.
    v5 = os.path.join(tmp, "v5")
    hf.write_checkpoint(v5, cfg=hf.config(v5=True), tok=hf.tokenizer(merges_as_pairs=True), tensors_=src, dtype="F32", shards=3)
    out = os.path.join(tmp, "v5.gguf")
    p = convert(v5, out, "--type", "f32")
    if p.returncode:
        report(False, "convert sharded transformers-5 f32 source", p.stderr[-400:])
    else:
        check_file("convert sharded transformers-5 f32 source", out, src, "f32")
    # F16 source read exactly.
    f16 = os.path.join(tmp, "f16src")
    src16 = {k: v.astype(np.float16).astype(np.float32) for k, v in src.items()}
    hf.write_checkpoint(f16, tensors_=src16, dtype="F16")
    out = os.path.join(tmp, "f16src.gguf")
    p = convert(f16, out, "--type", "f32")
    if p.returncode:
        report(False, "convert f16 source", p.stderr[-400:])
    else:
        check_file("convert f16 source", out, src16, "f32")
    # Tied embeddings: output.weight is the embedding.
    tied = os.path.join(tmp, "tied")
    srct = hf.write_checkpoint(tied, cfg=hf.config(tie_word_embeddings=True))
    out = os.path.join(tmp, "tied.gguf")
    p = convert(tied, out, "--type", "bf16")
    if p.returncode:
        report(False, "convert tied embeddings", p.stderr[-400:])
    else:
        check_file("convert tied embeddings", out, srct, "bf16", tied=True)

    # quantize q4_k_m on the converted file.
    if "f16" in outs:
        q = os.path.join(tmp, "q4km.gguf")
        p = subprocess.run([QMOE, "quantize", outs["f16"], q, "q4_k_m", "-j", "1"], capture_output=True, text=True)
        ok = p.returncode == 0
        why = p.stderr[-400:]
        if ok:
            _, tens, _ = gguf_map(q)
            types = {n: t.tensor_type.name for n, t in tens.items()}
            ok = types["blk.0.ffn_gate_exps.weight"] == "Q4_K" and types["output.weight"] == "Q6_K" and \
                types["blk.0.ffn_down_exps.weight"] == "Q4_K" and types["blk.1.ffn_down_exps.weight"] == "Q6_K" and types["blk.0.ffn_gate_inp.weight"] == "F32"
            why = f"types {types}"
        report(ok, "quantize q4_k_m of a converted file", why)

    # ---- hostile corpus: each must exit 1 with the message, leave no output and not crash -------------------
    def case(name, want, extra=(), **kw):
        d = os.path.join(tmp, "bad-" + name.replace(" ", "-"))
        shutil.rmtree(d, ignore_errors=True)
        mk = kw.pop("mk", None)
        hf.write_checkpoint(d, **kw)
        if mk:
            mk(d)
        expect_fail(f"hostile {name}", d, want, *extra)

    def edit_file(fn, f):
        def g(d):
            p = os.path.join(d, fn)
            text = open(p).read()
            with open(p, "w") as fp:
                fp.write(f(text))
        return g

    def edit_bytes(fn, f):
        def g(d):
            p = os.path.join(d, fn)
            b = f(open(p, "rb").read())
            open(p, "wb").write(b)
        return g

    drop = dict(src)
    del drop["model.layers.1.mlp.experts.3.up_proj.weight"]
    case("missing tensor", "tensor 'model.layers.1.mlp.experts.3.up_proj.weight' is missing", tensors_=drop)
    bad = dict(src)
    bad["model.layers.0.self_attn.k_proj.weight"] = src["model.layers.0.self_attn.k_proj.weight"][:64]
    case("wrong shape", "'model.layers.0.self_attn.k_proj.weight' in the checkpoint has shape [64, 256], expected [128, 256]", tensors_=bad)
    extra = dict(src)
    extra["model.layers.0.mlp.shared_expert.up_proj.weight"] = src["model.layers.0.mlp.experts.0.up_proj.weight"]
    case("unmapped tensor", "'model.layers.0.mlp.shared_expert.up_proj.weight'", tensors_=extra)
    case("int dtype", "has dtype I32: qmoe convert reads BF16, F16 and F32", dtypes={"model.norm.weight": "I32"})

    def set_dtype(h):
        h["model.norm.weight"]["dtype"] = "F7"
    case("unknown dtype", "tensor 'model.norm.weight' has an unknown dtype 'F7'", header_edit=set_dtype)

    def lie_size(h):
        h["model.norm.weight"]["data_offsets"][1] += 2
    case("offsets lie about size", "tensor 'model.norm.weight' data_offsets", header_edit=lie_size)

    def overlap(h):
        a, b = h["model.norm.weight"], h["lm_head.weight"]
        n = a["data_offsets"][1] - a["data_offsets"][0]
        a["data_offsets"] = [b["data_offsets"][0] + 2, b["data_offsets"][0] + 2 + n]
    case("overlapping tensors", "overlap", header_edit=overlap)
    case("truncated file", "run past the end of the data", mk=edit_bytes("model.safetensors", lambda b: b[:-1000]))
    case("header length past end", "header length", mk=edit_bytes("model.safetensors", lambda b: struct.pack("<Q", len(b)) + b[8:]))
    case("tiny file", "too short for a safetensors file", mk=edit_bytes("model.safetensors", lambda b: b[:5]))
    case("header not json", "model.safetensors (header):1:1:", mk=edit_bytes("model.safetensors", lambda b: b[:8] + b"x" + b[9:]))
    case("config syntax error", "config.json:3:4: expected a key string in the object, found ','",
         mk=edit_file("config.json", lambda s: '{\n  "a": 1\n  ,, "b": 2}\n'))
    case("config trailing comma", "config.json:1:10: trailing comma before '}'", mk=edit_file("config.json", lambda s: '{"a": 1, }'))
    case("tokenizer truncated", "unterminated array (no closing ']')", mk=edit_file("tokenizer.json", lambda s: s[:-3]))
    case("tokenizer bad utf8", "invalid UTF-8", mk=edit_bytes("tokenizer.json", lambda b: b.replace(b'"BPE"', b'"BP\xff"')))
    case("duplicate key", "duplicate key \"vocab_size\"", mk=edit_file("config.json", lambda s: s.replace("{", '{"vocab_size": 1,', 1)))
    case("deep nesting", "nested deeper than", mk=edit_file("config.json", lambda s: "[" * 100000 + "]" * 100000))
    case("not qwen3moe", "model_type \"llama\" is not qwen3_moe", cfg=hf.config(model_type="llama", architectures=["LlamaForCausalLM"]))
    c = hf.config()
    del c["rope_theta"]
    case("no rope theta", "missing the RoPE base", cfg=c)
    c = hf.config()
    del c["num_experts"]
    case("no expert count", "missing key \"num_experts\" (or \"num_local_experts\")", cfg=c)
    case("huge expert count", "need at least", cfg=hf.config(num_experts=1 << 30))
    case("vocab_size disagrees with the embedding", "'model.embed_tokens.weight' in the checkpoint has shape [300, 256], expected [2000000000, 256]",
         cfg=hf.config(vocab_size=2000000000))
    case("norm_topk_prob false", "norm_topk_prob must be true", cfg=hf.config(norm_topk_prob=False))
    case("string head count", "\"num_attention_heads\" must be a positive integer", cfg=hf.config(num_attention_heads="8"))
    nan = dict(src)
    nan["model.layers.0.self_attn.q_proj.weight"] = src["model.layers.0.self_attn.q_proj.weight"].copy()
    nan["model.layers.0.self_attn.q_proj.weight"][3, 5] = np.nan
    case("nan weight", "tensor 'model.layers.0.self_attn.q_proj.weight' element 773 is NaN", tensors_=nan)
    big = dict(src)
    big["model.layers.1.self_attn.o_proj.weight"] = src["model.layers.1.self_attn.o_proj.weight"].copy()
    big["model.layers.1.self_attn.o_proj.weight"][0, 7] = 1e5
    case("f16 out of range", "element 7 = 99840 is out of the f16 range", extra=("--type", "f16"), tensors_=big)
    case("shard path escapes", "must name a shard file", shards=2,
         mk=edit_file("model.safetensors.index.json", lambda s: s.replace("model-00001-of-00002", "../x", 1)))

    def wrong_shard(d):
        p = os.path.join(d, "model.safetensors.index.json")
        j = json.load(open(p))
        j["weight_map"]["model.norm.weight"] = "model-00002-of-00002.safetensors" if j["weight_map"]["model.norm.weight"].startswith("model-00001") else "model-00001-of-00002.safetensors"
        json.dump(j, open(p, "w"))
    case("index names the wrong shard", "puts tensor 'model.norm.weight' in", shards=2, mk=wrong_shard)
    case("missing lm_head", "'lm_head.weight' is missing and config.json does not say tie_word_embeddings",
         tensors_={k: v for k, v in src.items() if k != "lm_head.weight"})
    t = hf.tokenizer()
    t["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = r"\s+"
    case("other pre-tokenizer", "pre_tokenizer is not Qwen2's", tok=t)
    t = hf.tokenizer()
    t["added_tokens"][0]["id"] = 400
    case("token id past vocab", "added_tokens[0] needs an integer id below vocab_size 300", tok=t)
    t = hf.tokenizer()
    t["model"]["merges"][1] = "h e x"
    case("bad merge", "model.merges[1] must be", tok=t)

    # The output may not be an input, and the input survives.
    d = os.path.join(tmp, "bad-out-is-input")
    hf.write_checkpoint(d)
    st = os.path.join(d, "model.safetensors")
    before = open(st, "rb").read()
    p = convert(d, st, "--type", "f32")
    report(p.returncode == 1 and "is the input" in p.stderr and open(st, "rb").read() == before, "hostile output is an input",
           f"exit {p.returncode}: {p.stderr[-300:]}")
    # Usage errors.
    for args, want in (((good, "x.gguf", "--type", "q4_k"), "choose f32, f16 or bf16"),
                       ((good, "x.gguf", "--type", "f32", "--type", "f16"), "option --type given twice"),
                       ((good,), "need HF_DIR and OUT.gguf"),
                       ((os.path.join(tmp, "nope"), os.path.join(tmp, "x.gguf")), "not a directory")):
        p = subprocess.run([QMOE, "convert", *args], capture_output=True, text=True)
        report(p.returncode in (1, 2) and want in p.stderr, f"usage {want}", f"exit {p.returncode}: {p.stderr[-300:]}")
    p = subprocess.run([QMOE, "convert", "--help"], capture_output=True, text=True)
    report(p.returncode == 0 and p.stdout.startswith("usage: qmoe convert"), "convert --help")


if __name__ == "__main__":
    sys.exit(main())
