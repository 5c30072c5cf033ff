#!/usr/bin/env python3
# make_oracle.py: builds the tiny Qwen3-MoE Hugging Face checkpoint in tests/oracle/model and records what
# transformers computes with it in float64 (tests/oracle/records/*.gguf trace files and greedy.json).
# Needs torch, transformers, tokenizers, safetensors, gguf, numpy (not in CI: the outputs are committed).
# usage: python3 tests/oracle/make_oracle.py [--out tests/oracle]
import argparse
import json
import os
import shutil
import sys

import numpy as np

QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHATML = (r"{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
          r"{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")

# Fixed training text: English, code, digits, Unicode and whitespace runs, so the merges cover them all.
CORPUS = [
    "The quick brown fox jumps over the lazy dog. A mixture of experts routes every token to a few experts.",
    "Each expert is a small feed-forward network; the router picks the top four of sixteen for every position.",
    "def forward(x, layer):\n    h = x + attention(norm(x))\n    return h + moe(norm(h))\n",
    "for (int i = 0; i < n; i++) {\n\tsum += a[i] * b[i];\n}\n",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 42 100 2024 3.14159 65536 1e-6 0x7f.",
    "Unicode: café naïve Zürich 東京 中文 日本語 한국어 Ελληνικά русский ✓ → ∑ 😀",
    "Whitespace   runs\t\tand\n\n\nnewlines    matter   to   the   byte-level   tokenizer.",
    "Hello world! How are you today? I'm fine, thanks. We'll see; they've gone, it's done, you're right.",
    "The model reads the prompt, computes attention over the cache, and predicts the next token greedily.",
    "Rotary position embeddings rotate query and key pairs; RMS normalization scales each vector by its root mean square.",
] * 4

PROMPTS = [
    "The quick brown fox",
    "Hello world!",
    "def forward(x):",
    "Numbers: 1 2 3",
    "Unicode: café 東京",
    "Each expert is a small feed-forward network; the router picks the top four of sixteen for every position.",
    "<|im_start|>user\nWhat is a mixture of experts?<|im_end|>\n<|im_start|>assistant\n",
    "   spaces\tand\ttabs\n\n",
]

HIDDEN, LAYERS, EXPERTS, TOPK, HEADS, KV_HEADS, HEAD_DIM, MOE_FF = 256, 4, 16, 4, 8, 2, 64, 32
TRAIN_VOCAB = 600   # BPE vocabulary before the specials
MODEL_VOCAB = 640   # the embedding: ids past the tokenizer's are padding (exercises [PAD<id>] in convert)
N_GREEDY = 32


def train_tokenizer():
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    trainer = trainers.BpeTrainer(vocab_size=TRAIN_VOCAB, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    tok.add_special_tokens(SPECIALS)
    return tok


def draw_weights(model, seed):
    """Weights scaled so activations keep unit-ish size and the router's logits are spread out, then rounded
    to bfloat16 (the checkpoint's dtype) so every float64 result is a function of the stored weights."""
    import torch
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        shape = p.shape
        if name.endswith("norm.weight") or "layernorm" in name:
            w = 1.0 + 0.1 * torch.randn(shape, generator=g, dtype=torch.float64)
        elif "embed_tokens" in name:
            w = torch.randn(shape, generator=g, dtype=torch.float64)
        elif name.endswith("mlp.gate.weight"):
            w = 4.0 * torch.randn(shape, generator=g, dtype=torch.float64) / np.sqrt(shape[-1])
        elif name.endswith("experts.gate_up_proj") or name.endswith("experts.down_proj"):
            w = torch.randn(shape, generator=g, dtype=torch.float64) / np.sqrt(shape[-1])
        else:
            w = torch.randn(shape, generator=g, dtype=torch.float64) / np.sqrt(shape[-1])
        with torch.no_grad():
            p.copy_(w.to(torch.bfloat16).to(p.dtype))


def record(model, ids):
    """Full forward of ids (float64): per-layer outputs, the router's top-k ids and the smallest K/K+1 logit gap,
    and the logits at every position."""
    import torch
    layers = model.model.layers
    outs, topk, gaps = {}, {}, []

    def out_hook(i):
        def h(mod, args, out):
            outs[i] = (out[0] if isinstance(out, tuple) else out).detach()[0].numpy().copy()
        return h

    def moe_hook(i):
        def h(mod, args):
            x = args[0].detach()[0]
            logits = x @ mod.gate.weight.detach().T  # float64 router logits
            sl, si = torch.sort(logits, dim=-1, descending=True)  # softmax keeps the order
            topk[i] = si[:, :TOPK].numpy().astype(np.int32)
            gaps.append(float((sl[:, TOPK - 1] - sl[:, TOPK]).min()))
        return h

    hs = [l.register_forward_hook(out_hook(i)) for i, l in enumerate(layers)]
    hs += [l.mlp.register_forward_pre_hook(moe_hook(i)) for i, l in enumerate(layers)]
    with torch.no_grad():
        logits = model(torch.tensor([ids]), use_cache=False).logits[0].numpy().copy()
    for h in hs:
        h.remove()
    return outs, topk, min(gaps), logits


def greedy(model, ids, n):
    """n greedy tokens by full forwards (no cache), and the smallest top-1/top-2 logit gap relative to max|logit|."""
    import torch
    seq, gap = list(ids), np.inf
    with torch.no_grad():
        for _ in range(n):
            lg = model(torch.tensor([seq]), use_cache=False).logits[0, -1].numpy()
            o = np.sort(lg)[::-1]
            gap = min(gap, (o[0] - o[1]) / np.abs(lg).max())
            seq.append(int(np.argmax(lg)))
    return seq[len(ids):], gap


def write_trace(path, model_name, version, tokens, outs, topk, logits):
    import gguf
    w = gguf.GGUFWriter(path, arch="qmoe-trace")
    # GGUFWriter always writes general.architecture; the trace keys below are what readers use.
    w.add_uint32("qmoe.trace.version", 1)
    w.add_string("qmoe.trace.source", f"huggingface transformers {version} float64")
    w.add_string("qmoe.trace.model", model_name)
    w.add_uint32("qmoe.trace.n_layers", len(outs))
    w.add_array("qmoe.trace.tokens", [int(t) for t in tokens])
    for i in range(len(outs)):
        w.add_tensor(f"blk.{i}.l_out", outs[i].astype(np.float32))           # ne = [hidden, n_pos]
        w.add_tensor(f"blk.{i}.ffn_moe_topk", topk[i].astype(np.int32))      # ne = [K, n_pos]
    w.add_tensor("result_output", logits.astype(np.float32))                 # ne = [vocab, n_pos]
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default=os.path.dirname(os.path.abspath(__file__)))
    ap.add_argument("--seed", type=int, default=1234)
    args = ap.parse_args()
    import gguf  # noqa: F401  (fail early)
    import torch
    import transformers
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)  # tiny matrices: threads only contend
    mdir, rdir = os.path.join(args.out, "model"), os.path.join(args.out, "records")
    for d in (mdir, rdir):
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)

    tok = train_tokenizer()
    assert tok.get_vocab_size() <= MODEL_VOCAB
    tok.save(os.path.join(mdir, "tokenizer.json"))
    with open(os.path.join(mdir, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "Qwen2Tokenizer", "bos_token": None, "eos_token": "<|im_end|>",
                   "pad_token": "<|endoftext|>", "model_max_length": 4096, "chat_template": CHATML}, f, indent=2)
    eos, pad = tok.token_to_id("<|im_end|>"), tok.token_to_id("<|endoftext|>")

    cfg = Qwen3MoeConfig(vocab_size=MODEL_VOCAB, hidden_size=HIDDEN, intermediate_size=4 * HIDDEN,
                         moe_intermediate_size=MOE_FF, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                         num_key_value_heads=KV_HEADS, head_dim=HEAD_DIM, num_experts=EXPERTS,
                         num_experts_per_tok=TOPK, norm_topk_prob=True, max_position_embeddings=4096,
                         rms_norm_eps=1e-6, rope_theta=1e6, tie_word_embeddings=False, eos_token_id=eos,
                         pad_token_id=pad, bos_token_id=None)
    prompts = [tok.encode(p).ids for p in PROMPTS]
    assert max(len(p) for p in prompts) >= 16, [len(p) for p in prompts]

    # Draw, save as bfloat16, reload in float64 with the eager experts; re-draw if a router choice or a greedy
    # choice is nearly tied (then float64-vs-float32 differences could flip it).
    for attempt in range(60):
        seed = args.seed + attempt
        model = Qwen3MoeForCausalLM(cfg)
        draw_weights(model, seed)
        model = model.to(torch.bfloat16)
        model.save_pretrained(mdir, safe_serialization=True)
        m64 = Qwen3MoeForCausalLM.from_pretrained(mdir, dtype=torch.float64, experts_implementation="eager").eval()
        print(f"seed {seed}: saved, recording", flush=True)
        recs = [record(m64, p) for p in prompts]
        gens = [greedy(m64, p, N_GREEDY) for p in prompts]
        rgap, ggap = min(r[2] for r in recs), min(g[1] for g in gens)
        print(f"seed {seed}: min router K/K+1 logit gap {rgap:.3g}, min greedy top-1/top-2 gap {ggap:.3g} x max|logit|",
              flush=True)
        if rgap > 1e-3 and ggap > 1e-4:
            break
    else:
        sys.exit("make_oracle: every seed gave a near tie")
    for junk in ("generation_config.json",):
        if os.path.exists(os.path.join(mdir, junk)):
            os.remove(os.path.join(mdir, junk))

    version = transformers.__version__
    meta = {"source": f"huggingface transformers {version} float64, torch {torch.__version__}", "seed": seed,
            "router_min_gap": rgap, "greedy_min_gap": ggap, "n_greedy": N_GREEDY, "prompts": []}
    for k, (text, ids, rec, gen) in enumerate(zip(PROMPTS, prompts, recs, gens)):
        outs, topk, _, logits = rec
        write_trace(os.path.join(rdir, f"prompt{k}.gguf"), "tests/oracle/model", version, ids, outs, topk, logits)
        meta["prompts"].append({"text": text, "ids": ids, "greedy": gen[0], "trace": f"records/prompt{k}.gguf"})
    with open(os.path.join(args.out, "records", "greedy.json"), "w") as f:
        json.dump(meta, f, indent=1, ensure_ascii=False)
        f.write("\n")
    total = sum(os.path.getsize(os.path.join(d, x)) for d in (mdir, rdir) for x in os.listdir(d))
    print(f"wrote {mdir} and {rdir}: {total / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
