# hf_fixture.py: writes small Qwen3-MoE Hugging Face checkpoints (config.json, safetensors, tokenizer.json) with
# numpy alone, for the `qmoe convert` tests: a valid one and the pieces the hostile cases break.
import json
import os
import struct

import numpy as np

QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

# Row lengths are multiples of 256 so `qmoe quantize ... q4_k_m` can take the result.
SHAPE = dict(hidden=256, layers=2, experts=4, used=2, heads=4, kv_heads=2, head_dim=64, moe_ff=256, vocab=300)


def bytes_to_unicode():
    """GPT-2's byte -> printable character table (the byte-level alphabet)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def config(s=SHAPE, v5=False, **over):
    c = {"architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "vocab_size": s["vocab"],
         "hidden_size": s["hidden"], "intermediate_size": 4 * s["hidden"], "moe_intermediate_size": s["moe_ff"],
         "num_hidden_layers": s["layers"], "num_attention_heads": s["heads"], "num_key_value_heads": s["kv_heads"],
         "head_dim": s["head_dim"], "num_experts_per_tok": s["used"], "norm_topk_prob": True,
         "max_position_embeddings": 4096, "rms_norm_eps": 1e-6, "tie_word_embeddings": False, "hidden_act": "silu",
         "decoder_sparse_step": 1, "mlp_only_layers": [], "eos_token_id": 258, "bos_token_id": None}
    if v5:
        c.update(num_local_experts=s["experts"], rope_parameters={"rope_theta": 1e6, "rope_type": "default"}, dtype="bfloat16")
    else:
        c.update(num_experts=s["experts"], rope_theta=1e6, torch_dtype="bfloat16")
    c.update(over)
    return c


def tokenizer(merges_as_pairs=False):
    """256 byte tokens, a few merges, then the three specials and one non-special added token."""
    b2u = bytes_to_unicode()
    vocab = {b2u[b]: i for i, b in enumerate(range(256))}
    merges = [("Ġ", "t"), ("h", "e"), ("Ġt", "he")]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    added = []
    for k, (content, special) in enumerate([("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True), ("<think>", False)]):
        added.append({"id": len(vocab) + k, "content": content, "single_word": False, "lstrip": False, "rstrip": False,
                      "normalized": False, "special": special})
    return {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
            "normalizer": {"type": "NFC"},
            "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": QWEN2_REGEX}, "behavior": "Isolated", "invert": False},
                {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}]},
            "post_processor": None, "decoder": {"type": "ByteLevel"},
            "model": {"type": "BPE", "dropout": None, "unk_token": None, "byte_fallback": False, "ignore_merges": False,
                      "vocab": vocab, "merges": [list(m) if merges_as_pairs else f"{m[0]} {m[1]}" for m in merges]}}


def tensors(seed=7, s=SHAPE, tied=False):
    """HF name -> float32 array (values exactly representable in bf16)."""
    rng = np.random.default_rng(seed)
    H, Q, KV, F, E = s["hidden"], s["heads"] * s["head_dim"], s["kv_heads"] * s["head_dim"], s["moe_ff"], s["experts"]

    def r(*shape, scale=1.0):
        return bf16_round((rng.standard_normal(shape) * scale).astype(np.float32))

    t = {"model.embed_tokens.weight": r(s["vocab"], H), "model.norm.weight": r(H, scale=0.1) + 1}
    if not tied:
        t["lm_head.weight"] = r(s["vocab"], H, scale=0.06)
    for l in range(s["layers"]):
        p = f"model.layers.{l}."
        t[p + "input_layernorm.weight"] = r(H, scale=0.1) + 1
        t[p + "post_attention_layernorm.weight"] = r(H, scale=0.1) + 1
        t[p + "self_attn.q_proj.weight"] = r(Q, H, scale=0.06)
        t[p + "self_attn.k_proj.weight"] = r(KV, H, scale=0.06)
        t[p + "self_attn.v_proj.weight"] = r(KV, H, scale=0.06)
        t[p + "self_attn.o_proj.weight"] = r(H, Q, scale=0.06)
        t[p + "self_attn.q_norm.weight"] = r(s["head_dim"], scale=0.1) + 1
        t[p + "self_attn.k_norm.weight"] = r(s["head_dim"], scale=0.1) + 1
        t[p + "mlp.gate.weight"] = r(E, H, scale=0.2)
        for e in range(E):
            t[p + f"mlp.experts.{e}.gate_proj.weight"] = r(F, H, scale=0.06)
            t[p + f"mlp.experts.{e}.up_proj.weight"] = r(F, H, scale=0.06)
            t[p + f"mlp.experts.{e}.down_proj.weight"] = r(H, F, scale=0.06)
    return {k: bf16_round(v) for k, v in t.items()}


def bf16_round(x):
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    u = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) << 16
    return u.astype(np.uint32).view(np.float32)


DTYPES = {"F32": (np.float32, 4), "F16": (np.float16, 2), "BF16": (None, 2), "I32": (np.int32, 4)}


def encode(arr, dtype):
    if dtype == "BF16":
        return (np.ascontiguousarray(arr, dtype=np.float32).view(np.uint32) >> 16).astype("<u2").tobytes()
    return np.ascontiguousarray(arr, dtype=DTYPES[dtype][0]).astype(np.dtype(DTYPES[dtype][0]).newbyteorder("<")).tobytes()


def safetensors_bytes(tensors, dtype="BF16", dtypes=None, header_edit=None):
    """The bytes of a safetensors file; header_edit(header_dict) may corrupt the header before it is written."""
    header, blobs, off = {"__metadata__": {"format": "pt"}}, [], 0
    for name in sorted(tensors):
        dt = (dtypes or {}).get(name, dtype)
        b = encode(tensors[name], dt)
        header[name] = {"dtype": dt, "shape": list(tensors[name].shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    if header_edit:
        header_edit(header)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + b"".join(blobs)


def write_checkpoint(d, cfg=None, tok=None, tensors_=None, dtype="BF16", shards=1, tok_config=True, **kw):
    os.makedirs(d, exist_ok=True)
    cfg = cfg if cfg is not None else config()
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    with open(os.path.join(d, "tokenizer.json"), "w") as f:
        json.dump(tok if tok is not None else tokenizer(), f, ensure_ascii=False)
    if tok_config:
        with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
            json.dump({"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "bos_token": None,
                       "chat_template": "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"}, f)
    t = tensors_ if tensors_ is not None else tensors(tied=cfg.get("tie_word_embeddings", False))
    if shards == 1:
        with open(os.path.join(d, "model.safetensors"), "wb") as f:
            f.write(safetensors_bytes(t, dtype, **kw))
    else:
        names = sorted(t)
        wm = {}
        for k in range(shards):
            part = {n: t[n] for n in names[k::shards]}
            fn = f"model-{k + 1:05d}-of-{shards:05d}.safetensors"
            with open(os.path.join(d, fn), "wb") as f:
                f.write(safetensors_bytes(part, dtype, **kw))
            wm.update({n: fn for n in part})
        with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": 0}, "weight_map": wm}, f, indent=2)
    return t
