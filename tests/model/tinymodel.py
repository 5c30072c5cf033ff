# tinymodel.py: a tiny random qwen3moe GGUF written with gguf-py (Q4_K, Q6_K, Q8_0 and F32 tensors mixed per
# layer, raw random blocks), and an independent float64 NumPy forward of the Qwen3-MoE equations over the
# weights gguf-py dequantizes. Used by tests/model/check_*.py.
import numpy as np
import gguf

Q = gguf.GGMLQuantizationType
CFG = dict(H=256, nh=4, nkv=2, D=64, E=8, K=2, F=256, V=300, L=3, ctx=128, theta=10000.0, eps=1e-6)

# Per-layer qtypes: every k-quant and Q8_0 appears in attention, gate/up and down; layer 2 has an F32 matrix.
LAYER_TYPES = [
    dict(q=Q.Q4_K, k=Q.Q8_0, v=Q.Q6_K, o=Q.Q4_K, gate=Q.Q4_K, down=Q.Q6_K),
    dict(q=Q.Q8_0, k=Q.Q4_K, v=Q.F32, o=Q.Q6_K, gate=Q.Q8_0, down=Q.Q4_K),
    dict(q=Q.Q6_K, k=Q.Q6_K, v=Q.Q8_0, o=Q.Q8_0, gate=Q.Q6_K, down=Q.Q8_0),
]
EMBD_TYPE, OUTPUT_TYPE = Q.Q8_0, Q.Q6_K


def f16(x):
    return np.asarray(x, dtype=np.float16).view(np.uint8).reshape(*np.shape(x), 2)


def random_rows(rng, qt, rows, cols):
    """Raw GGUF bytes of ROWS rows of COLS elements of type QT, weights of amplitude about 1.5/sqrt(cols)."""
    a = 1.5 / np.sqrt(cols)
    if qt == Q.F32:
        return rng.uniform(-a, a, size=(rows, cols)).astype(np.float32)
    if qt == Q.Q8_0:
        nb = rows * cols // 32
        d = f16(np.full(nb, a / 127))
        qs = rng.integers(-127, 128, size=(nb, 32)).astype(np.int8).view(np.uint8)
        return np.concatenate([d, qs], axis=1).reshape(rows, -1)
    if qt == Q.Q4_K:
        nb = rows * cols // 256
        d = a / 472
        sc = rng.integers(32, 64, size=(nb, 8))
        m = np.clip(np.rint(sc * 7.5 / 8), 0, 63).astype(np.int64)
        s = np.zeros((nb, 12), dtype=np.int64)
        for j in range(4):
            s[:, j] = (sc[:, j] & 63) | ((sc[:, j + 4] >> 4) << 6)
            s[:, j + 4] = (m[:, j] & 63) | ((m[:, j + 4] >> 4) << 6)
            s[:, j + 8] = (sc[:, j + 4] & 15) | ((m[:, j + 4] & 15) << 4)
        qs = rng.integers(0, 256, size=(nb, 128))
        blk = np.concatenate([f16(np.full(nb, d)), f16(np.full(nb, 8 * d)), s.astype(np.uint8),
                              qs.astype(np.uint8)], axis=1)
        return blk.reshape(rows, -1)
    if qt == Q.Q6_K:
        nb = rows * cols // 256
        ql = rng.integers(0, 256, size=(nb, 128)).astype(np.uint8)
        qh = rng.integers(0, 256, size=(nb, 64)).astype(np.uint8)
        scales = (rng.integers(48, 128, size=(nb, 16)) * rng.choice([-1, 1], size=(nb, 16))).astype(np.int8)
        blk = np.concatenate([ql, qh, scales.view(np.uint8), f16(np.full(nb, a / 4064))], axis=1)
        return blk.reshape(rows, -1)
    raise ValueError(qt)


def tensors(seed=7):
    """name -> (array, qtype): the whole model, in file order."""
    c = CFG
    rng = np.random.default_rng(seed)
    H, nh, nkv, D, E, F, V = c["H"], c["nh"], c["nkv"], c["D"], c["E"], c["F"], c["V"]
    t = {}
    t["token_embd.weight"] = (random_rows(rng, EMBD_TYPE, V, H), EMBD_TYPE)
    for l, ty in enumerate(LAYER_TYPES):
        p = f"blk.{l}."
        norm = lambda n: (rng.uniform(0.8, 1.2, size=n).astype(np.float32), Q.F32)
        t[p + "attn_norm.weight"] = norm(H)
        t[p + "attn_q.weight"] = (random_rows(rng, ty["q"], nh * D, H), ty["q"])
        t[p + "attn_k.weight"] = (random_rows(rng, ty["k"], nkv * D, H), ty["k"])
        t[p + "attn_v.weight"] = (random_rows(rng, ty["v"], nkv * D, H), ty["v"])
        t[p + "attn_output.weight"] = (random_rows(rng, ty["o"], H, nh * D), ty["o"])
        t[p + "attn_q_norm.weight"] = norm(D)
        t[p + "attn_k_norm.weight"] = norm(D)
        t[p + "ffn_norm.weight"] = norm(H)
        t[p + "ffn_gate_inp.weight"] = (rng.normal(0, 1.0, size=(E, H)).astype(np.float32) / np.sqrt(H) * 4, Q.F32)
        for n in ("gate", "up"):
            raw = random_rows(rng, ty["gate"], E * F, H)
            t[p + f"ffn_{n}_exps.weight"] = (raw.reshape(E, F, raw.shape[-1]), ty["gate"])
        raw = random_rows(rng, ty["down"], E * H, F)
        t[p + "ffn_down_exps.weight"] = (raw.reshape(E, H, raw.shape[-1]), ty["down"])
    t["output_norm.weight"] = (rng.uniform(0.8, 1.2, size=H).astype(np.float32), Q.F32)
    t["output.weight"] = (random_rows(rng, OUTPUT_TYPE, V, H), OUTPUT_TYPE)
    return t


def metadata():
    c = CFG
    a = "qwen3moe."
    return [
        (a + "block_count", "u32", c["L"]), (a + "context_length", "u32", c["ctx"]),
        (a + "embedding_length", "u32", c["H"]), (a + "feed_forward_length", "u32", 4 * c["H"]),
        (a + "attention.head_count", "u32", c["nh"]), (a + "attention.head_count_kv", "u32", c["nkv"]),
        (a + "attention.key_length", "u32", c["D"]), (a + "attention.value_length", "u32", c["D"]),
        (a + "rope.freq_base", "f32", c["theta"]), (a + "attention.layer_norm_rms_epsilon", "f32", c["eps"]),
        (a + "expert_count", "u32", c["E"]), (a + "expert_used_count", "u32", c["K"]),
        (a + "expert_feed_forward_length", "u32", c["F"]),
    ]


def byte_chars():
    """GPT-2's byte-level mapping: byte -> the printable character a byte-level BPE vocabulary stores."""
    keep = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    out, extra = {}, 0
    for b in range(256):
        if b in keep:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + extra)
            extra += 1
    return out


def tokenizer_meta():
    """A small byte-level BPE vocabulary of exactly V tokens (256 bytes, merges, 3 control tokens), ChatML."""
    bc = byte_chars()
    tokens = [bc[b] for b in range(256)]
    merges = []
    words = ["hello", "world", "the", "model", "expert", "token", "mixture", "router"]
    for w_ in words:
        cur = bc[ord(" ")] + w_
        # left-to-right merges: ' '+'h' -> ' h', ' h'+'e' -> ' he', ...
        acc = cur[0]
        for ch in cur[1:]:
            if acc + ch not in tokens and len(tokens) < CFG["V"] - 3:
                merges.append(acc + " " + ch)
                tokens.append(acc + ch)
            acc = acc + ch
    for i in range(100):  # fill up with merges of digit pairs
        if len(tokens) == CFG["V"] - 3:
            break
        a, b = str(i % 10), str(i // 10)
        if a + b not in tokens:
            merges.append(a + " " + b)
            tokens.append(a + b)
    assert len(tokens) == CFG["V"] - 3
    tokens += ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    types = [1] * (CFG["V"] - 3) + [3, 3, 3]
    tmpl = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
            "'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
    return tokens, types, merges, tmpl


def write(path, arch="qwen3moe", meta=None, tens=None, tokenizer=False):
    """Writes the model (or a variant: META a list of (key, kind, value), TENS a name -> (array, qtype) dict);
    TOKENIZER adds a small byte-level BPE tokenizer (tokenizer.ggml.*, ChatML template)."""
    meta = metadata() if meta is None else meta
    tens = tensors() if tens is None else tens
    w = gguf.GGUFWriter(path, arch)
    for k, kind, v in meta:
        {"u32": w.add_uint32, "i32": w.add_int32, "f32": w.add_float32, "str": w.add_string}[kind](k, v)
    if tokenizer:
        tokens, types, merges, tmpl = tokenizer_meta()
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("qwen2")
        w.add_token_list(tokens)
        w.add_token_types(types)
        w.add_token_merges(merges)
        w.add_eos_token_id(len(tokens) - 1)
        w.add_pad_token_id(len(tokens) - 3)
        w.add_chat_template(tmpl)
    for name, (arr, qt) in tens.items():
        if qt in (Q.F32, Q.F16):
            w.add_tensor(name, arr.astype(np.float16 if qt == Q.F16 else np.float32))
        else:
            w.add_tensor(name, arr, raw_dtype=qt)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


# ---- the float64 reference forward -------------------------------------------------------------------------

def dq(arr, qt):
    if qt == Q.F32:
        return np.asarray(arr, dtype=np.float64)
    return gguf.quants.dequantize(arr, qt).astype(np.float64)


class Reference:
    def __init__(self, tens=None):
        tens = tensors() if tens is None else tens
        self.w = {n: dq(a, qt) for n, (a, qt) in tens.items()}
        self.c = CFG

    def forward(self, tokens):
        """Per position: logits; per layer and position: l_out, top-k ids. Float64 throughout."""
        c, W = self.c, self.w
        H, nh, nkv, D, K = c["H"], c["nh"], c["nkv"], c["D"], c["K"]
        eps, theta = float(np.float32(c["eps"])), float(np.float32(c["theta"]))
        rms = lambda x, w: x / np.sqrt(np.mean(x * x) + eps) * w

        def rope(x, pos):
            half = D // 2
            a = pos * theta ** (-2.0 * np.arange(half) / D)
            x0, x1 = x[:, :half], x[:, half:]
            return np.concatenate([x0 * np.cos(a) - x1 * np.sin(a), x0 * np.sin(a) + x1 * np.cos(a)], axis=1)

        kc = [[] for _ in range(c["L"])]
        vc = [[] for _ in range(c["L"])]
        logits, l_out, topk = [], [[] for _ in range(c["L"])], [[] for _ in range(c["L"])]
        for pos, tok in enumerate(tokens):
            h = W["token_embd.weight"][tok].copy()
            for l in range(c["L"]):
                p = f"blk.{l}."
                x = rms(h, W[p + "attn_norm.weight"])
                q = (W[p + "attn_q.weight"] @ x).reshape(nh, D)
                k = (W[p + "attn_k.weight"] @ x).reshape(nkv, D)
                v = (W[p + "attn_v.weight"] @ x).reshape(nkv, D)
                q = rope(np.stack([rms(r, W[p + "attn_q_norm.weight"]) for r in q]), pos)
                k = rope(np.stack([rms(r, W[p + "attn_k_norm.weight"]) for r in k]), pos)
                kc[l].append(k)
                vc[l].append(v)
                Kc, Vc = np.stack(kc[l]), np.stack(vc[l])  # [t, nkv, D]
                o = np.zeros((nh, D))
                for hh in range(nh):
                    g = hh // (nh // nkv)
                    s = Kc[:, g, :] @ q[hh] / np.sqrt(D)
                    pr = np.exp(s - s.max())
                    pr /= pr.sum()
                    o[hh] = pr @ Vc[:, g, :]
                h = h + W[p + "attn_output.weight"] @ o.reshape(-1)
                x = rms(h, W[p + "ffn_norm.weight"])
                lg = W[p + "ffn_gate_inp.weight"] @ x
                pr = np.exp(lg - lg.max())
                pr /= pr.sum()
                ids = np.argsort(-pr, kind="stable")[:K]
                wts = pr[ids] / pr[ids].sum()
                y = np.zeros(H)
                for e, we in zip(ids, wts):
                    g = W[p + "ffn_gate_exps.weight"][e] @ x
                    u = W[p + "ffn_up_exps.weight"][e] @ x
                    y += we * (W[p + "ffn_down_exps.weight"][e] @ (g / (1 + np.exp(-g)) * u))
                h = h + y
                l_out[l].append(h.copy())
                topk[l].append(ids.copy())
            logits.append(W["output.weight"] @ rms(h, W["output_norm.weight"]))
        return np.array(logits), [np.array(x) for x in l_out], [np.array(x) for x in topk]

    def greedy(self, prompt, n):
        toks = list(prompt)
        out = []
        for _ in range(n):
            lg, _, _ = self.forward(toks)
            nxt = int(np.argmax(lg[-1]))
            out.append(nxt)
            toks.append(nxt)
        return out
