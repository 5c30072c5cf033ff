#!/usr/bin/env python3
# check_tokenizer.py: qmoe's byte-level BPE tokenizer against Hugging Face `tokenizers` (an independent
# implementation). Trains a small byte-level BPE with Qwen2's pre-tokenizer (Split on Qwen2's regex, then
# ByteLevel without its own regex), writes it into a GGUF the way llama.cpp's converter does (gguf-py), and
# requires `qmoe tokenize` to give the same ids as `tokenizers` on a corpus of code, Unicode, whitespace,
# digits, contractions and special tokens, plus fresh random strings; `qmoe detokenize` must give the
# exact bytes back. Prints ok / not ok / skip per case.
import json
import os
import random
import subprocess
import sys
import tempfile
import unicodedata

BIN = os.environ.get("QMOE_BIN", "build")
QMOE = os.path.join(BIN, "qmoe")
TMP = tempfile.mkdtemp(prefix="qmoe-tokenizer-")
failed = 0

# Qwen2's split regex, as its tokenizer.json spells it.
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
               r"|\s+(?!\S)|\s+")
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
USER_DEFINED = ["<tool_call>"]


def report(ok, name, why=""):
    global failed
    if ok:
        print(f"ok {name}")
    else:
        failed += 1
        print(f"not ok {name}: {why}")
    sys.stdout.flush()


try:
    import gguf
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
except ImportError as e:
    report(False, "tokenizer/import", f"{e} (scripts/install-deps.sh installs gguf and tokenizers)")
    sys.exit(1)

# ---- the training corpus: prose, code and several scripts, generated deterministically -----------------
WORDS = ("the of and to in is was for that with as on be at by this had not are but from or have an they which "
         "one you were her all she there would their we him been has when who will more no if out so said what "
         "up its about into than them can only other new some could time these two may then do first any my now "
         "such like our over man me even most made after also did many before must through back years where much "
         "your way well down should because each just those people how too little state good very make world "
         "still own see men work long get here between both life being under never day same another know while "
         "last might us great old year off come since against go came right used take three "
         "don't it's I'm you're we've they'll he'd can't won't isn't SHE'S WE'VE "
         "def return import class self None True False print range len int str float list dict for while if "
         "else elif try except raise lambda yield async await const let var function struct enum typedef "
         "static void char uint32_t size_t malloc free include define "
         "数据 模型 中文 测试 我们 你好 世界 日本語 のテスト です 한국어 테스트 입니다 Привет мир данные "
         "Ελληνικά γλώσσα שלום עולם مرحبا بالعالم नमस्ते दुनिया café naïve résumé Zürich façade").split()


def training_corpus():
    rng = random.Random(1234)
    lines = []
    for _ in range(4000):
        n = rng.randint(3, 14)
        words = [rng.choice(WORDS) for _ in range(n)]
        s = " ".join(words)
        r = rng.random()
        if r < 0.2:
            s += f" {rng.randint(0, 99999)}"
        elif r < 0.3:
            s = f"    {words[0]}({', '.join(words[1:3])}) {{\n\treturn {rng.randint(0, 255)};\n}}"
        elif r < 0.4:
            s = s.capitalize() + rng.choice([".", "!", "?", "...", ":", ";"]) + "\r\n"
        lines.append(s)
    return lines


def train():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=3000, min_frequency=2, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(training_corpus(), trainer)
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in SPECIALS])
    tok.add_tokens([AddedToken(s, special=False, normalized=False) for s in USER_DEFINED])
    return tok


def write_gguf(tok, path):
    """The tokenizer.ggml.* keys as llama.cpp's convert_hf_to_gguf.py writes them for a gpt2/qwen2 vocab."""
    model = json.loads(tok.to_str())["model"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    vocab = tok.get_vocab(with_added_tokens=True)
    n = max(vocab.values()) + 1
    assert len(vocab) == n, "ids are not dense"
    tokens = [None] * n
    for s, i in vocab.items():
        tokens[i] = s
    added = tok.get_added_tokens_decoder()
    types = [gguf.TokenType.NORMAL] * n
    for i, a in added.items():
        types[i] = gguf.TokenType.CONTROL if a.special else gguf.TokenType.USER_DEFINED
    w = gguf.GGUFWriter(path, "qwen3moe")
    w.add_block_count(1)
    w.add_context_length(4096)
    w.add_embedding_length(64)
    w.add_head_count(4)
    w.add_head_count_kv(2)
    w.add_expert_count(4)
    w.add_expert_used_count(2)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_eos_token_id(vocab["<|im_end|>"])
    w.add_pad_token_id(vocab["<|endoftext|>"])
    w.add_chat_template("{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
                        "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return len(merges)


# ---- the test corpus -------------------------------------------------------------------------------------
CORPUS = [
    "Hello, world!",
    "hello world",
    "  leading spaces and trailing spaces   ",
    "don't won't it's I'M YOU'RE we'VE they'll she'd 'S 'sam 'll'd ' s",
    "the long s: 'ſ and 'ſtop, Kelvin 'K",
    "digits 0123456789 and 3.14159, 1,000,000 and -42e10",
    "mixed12ab34cd 5th 1st 2nd x86_64 utf8 ٣٤٥ ४२ ⅫⅩ ½ ²³ 𝟙𝟚",
    "def f(x):\n    return x ** 2  # square\n",
    "int main(void) {\n\tprintf(\"%d\\n\", 42);\n\treturn 0;\n}\n",
    "for (size_t i = 0; i < n; i++) { a[i] += b[i] * c; } // loop",
    "if x != y && z >= 0 || !w: pass\t\t# tabs\there",
    "line one\nline two\r\nline three\rline four\n\n\n",
    "\n",
    "\r\n",
    "   \n   \n  x",
    "a\n\n\n\nb",
    " \t \n \t x \t y",
    "trailing newline then spaces\n   ",
    "spaces before newline   \nnext",
    "中文测试：你好，世界！这是一个分词器的测试。",
    "日本語のテキストとカタカナ、ひらがな。",
    "한국어 텍스트입니다. 감사합니다!",
    "Привет, мир! Это тест токенизатора.",
    "Ελληνικά: Καλημέρα κόσμε",
    "שלום עולם, זה מבחן",
    "مرحبا بالعالم! هذا اختبار",
    "नमस्ते दुनिया, यह परीक्षण है",
    "emoji: 😀😃😄 👍🏽 👨‍👩‍👧‍👦 🇫🇷 ❤️ ✨",
    "combining: e\u0301 a\u0308 n\u0303 o\u0302\u0323 Z\u0335\u0321a\u0337lgo",
    "café naïve résumé Zürich façade coöperate",
    "zero\u200bwidth\u200cjoiner\u200dtest and nbsp\u00a0here, ideographic\u3000space",
    "line\u2028separator and paragraph\u2029separator, NEL\u0085here",
    "control \x01\x02\x1b[0m chars \x7f and \x1c\x1d\x1e\x1f separators",
    "punctuation!!! ??? ... --- ___ *** ### @@@ $$$ %%% ^^^ &&& ((( ))) [[[ ]]] {{{ }}}",
    " !\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n",
    "text<|endoftext|>more text<|endoftext|><|endoftext|>",
    "<|im_start|><|im_end|> <|im_start|> spaced <|im_end|>",
    "partial specials: <|im_start| <|im_end <| |> <|im_startx|>",
    "a user token <tool_call>{\"name\": \"f\"}</tool_call> inside",
    "<tool_call><tool_call>x",
    "URL: https://example.com/path?q=1&r=2#frag and email a.b@c.io",
    "JSON: {\"key\": [1, 2.5, true, null], \"nested\": {\"a\": \"b\"}}",
    "$ ls -la | grep '.c' > out.txt 2>&1",
    "CamelCaseIdentifier snake_case_name SCREAMING_CASE kebab-case",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "thethethethethethethethethethethethethethethethethethe",
    "x" * 3 + " " * 17 + "y",
    "\t\t\tindented with tabs",
    "mixed   \t  whitespace\t\n\t\n",
    "𝕳𝖊𝖑𝖑𝖔 𝓦𝓸𝓻𝓵𝓭 ℌ𝔢𝔩𝔩𝔬",
    "math: ∀x∈ℝ, ∃y: x² + y² ≤ 1 → ∑ᵢ aᵢ ≈ ∫ f(x) dx",
    "’curly quotes’ “double” ‘s and ’s, don’t",
    "¿Qué tal? ¡Muy bien! ñandú",
    "Tiếng Việt có dấu: Xin chào thế giới",
    "ไทย ภาษาไทย ทดสอบ",
    "",
    " ",
    "   ",
    "a",
    "1",
    "'",
    "'s",
]


def random_strings(rng, count):
    """Fresh random text mixing the classes the split distinguishes."""
    pools = [
        "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ", "0123456789", " ", "  \t", "\n", "\r\n", "\r",
        "'sStTrReEvVmMlLdD", ".,;:!?-_()[]{}<>/\\|@#$%^&*+=~`\"", "éüñçøåßœ", "中文字漢字かなカナ한글",
        "😀👍🏽✨❤️", "\u0301\u0308\u0323", "٣४Ⅻ½²𝟙", "\u00a0\u2003\u3000\u0085\u2028", "\x00\x01\x1c\x7f",
        "αβγδАБВГשלוםعربي", "<|im_start|>", "<|im_end|>", "<tool_call>",
    ]
    out = []
    for _ in range(count):
        n = rng.randint(1, 40)
        out.append("".join(rng.choice(rng.choice(pools)) for _ in range(n)))
    return out


def sampled_code_points(rng, count):
    """Assigned code points from all planes (classes of letters, numbers, spaces and the rest), in strings
    that put each next to letters, digits and spaces."""
    cps = []
    while len(cps) < count:
        cp = rng.choice([rng.randrange(0x80, 0x3000), rng.randrange(0x3000, 0x10000), rng.randrange(0x10000, 0x30000)])
        if 0xD800 <= cp <= 0xDFFF or unicodedata.category(chr(cp)) in ("Cn", "Cs", "Co"):
            continue
        cps.append(cp)
    out = []
    for i in range(0, len(cps), 8):
        out.append("".join(f"a{chr(c)}1{chr(c)}{chr(c)} {chr(c)}b" for c in cps[i:i + 8]))
    return out


def qmoe(args, check=True):
    p = subprocess.run([QMOE, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if check and p.returncode != 0:
        raise RuntimeError(f"qmoe {' '.join(args)} exited {p.returncode}: {p.stderr.decode(errors='replace').strip()}")
    return p


def qmoe_encode(model, data, special=True):
    path = os.path.join(TMP, "text.bin")
    with open(path, "wb") as f:
        f.write(data)
    args = ["tokenize", "-m", model, "-f", path, "--json"] + ([] if special else ["--no-special"])
    return json.loads(qmoe(args).stdout)["ids"]


def qmoe_decode(model, ids):
    return qmoe(["detokenize", "-m", model, "--tokens", ",".join(map(str, ids)) or " "]).stdout


def check_lines(tok, model, lines, name):
    bad = []
    for special in (True, False):
        tok.encode_special_tokens = not special
        for line in lines:
            data = line.encode("utf-8")
            want = tok.encode(line, add_special_tokens=False).ids
            got = qmoe_encode(model, data, special)
            if got != want:
                bad.append(f"{line!r} (special={special}): qmoe {got[:24]} != tokenizers {want[:24]}")
                continue
            back = qmoe_decode(model, got)
            if back != data:
                bad.append(f"{line!r}: decode gave {back!r}")
            elif tok.decode(want, skip_special_tokens=False).encode("utf-8") != data:
                bad.append(f"{line!r}: tokenizers' own decode differs (test setup)")
    tok.encode_special_tokens = False
    report(not bad, name, f"{len(bad)} of {2 * len(lines)} differ; first: {bad[0]}" if bad else "")


def main():
    seed = int(os.environ.get("QMOE_TEST_SEED") or random.SystemRandom().randrange(1, 2**63))
    print(f"# seed {seed} (replay with QMOE_TEST_SEED={seed})")
    rng = random.Random(seed)
    tok = train()
    model = os.path.join(TMP, "tok.gguf")
    n_merges = write_gguf(tok, model)
    n_vocab = tok.get_vocab_size(with_added_tokens=True)
    report(1000 <= n_vocab <= 4000 and n_merges > 500, "tokenizer/trained",
           f"vocabulary {n_vocab}, {n_merges} merges: expected 1000..4000 tokens")

    check_lines(tok, model, CORPUS, "tokenizer/corpus")
    check_lines(tok, model, random_strings(rng, 120), "tokenizer/random-strings")
    check_lines(tok, model, sampled_code_points(rng, 400), "tokenizer/unicode-classes")

    # The whole corpus as one text (pieces across lines, long input) and the training text itself.
    whole = "\n".join(CORPUS) + "\r\n".join(training_corpus()[:300])
    want = tok.encode(whole, add_special_tokens=False).ids
    got = qmoe_encode(model, whole.encode("utf-8"))
    first = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
    report(got == want, "tokenizer/long-text", f"{len(got)} vs {len(want)} ids; first difference at id {first}")

    # Bytes that are not UTF-8 (tokenizers cannot take them): each is a piece of its own and round-trips.
    raw = b"ok \xff\xfe bytes \xc3( \xe2\x82 \xed\xa0\x80 \xf4\x90\x80\x80 end\xe2"
    ids = qmoe_encode(model, raw)
    report(qmoe_decode(model, ids) == raw, "tokenizer/invalid-utf8-round-trip", f"{raw!r} -> {ids}")

    # Plain output and --pieces agree with --json; detokenize --no-special drops control tokens.
    p = qmoe(["tokenize", "-m", model, "-p", "<|im_start|>hi there<|im_end|>"]).stdout.decode().strip()
    want = tok.encode("<|im_start|>hi there<|im_end|>", add_special_tokens=False).ids
    pieces = qmoe(["tokenize", "-m", model, "-p", "<|im_start|>hi there<|im_end|>", "--pieces"]).stdout.decode()
    nospec = qmoe(["detokenize", "-m", model, "--tokens", p, "--no-special"]).stdout
    report(p == ",".join(map(str, want)) and [int(l.split("\t")[0]) for l in pieces.splitlines()] == want
           and pieces.splitlines()[0].split("\t")[1] == "<|im_start|>" and nospec == b"hi there",
           "tokenizer/cli-forms", f"plain {p!r}, pieces {pieces!r}, no-special {nospec!r}")

    # Errors: a file without a tokenizer, an id outside the vocabulary, a repeated option, bad ids.
    empty = os.path.join(TMP, "empty.gguf")
    w = gguf.GGUFWriter(empty, "qwen3moe")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    cases = [
        (["tokenize", "-m", empty, "-p", "x"], 1, "tokenizer.ggml.model"),
        (["detokenize", "-m", model, "--tokens", f"1,{n_vocab}"], 1, "outside the vocabulary"),
        (["detokenize", "-m", model, "--tokens", "1,x2"], 1, "expected a token id"),
        (["tokenize", "-m", model, "-p", "a", "-p", "b"], 2, "given twice"),
        (["tokenize", "-m", model], 2, "-p TEXT"),
        (["tokenize", "-m", model, "-f", os.path.join(TMP, "missing.txt")], 1, "cannot read"),
    ]
    bad = []
    for args, rc, text in cases:
        r = qmoe(args, check=False)
        err = r.stderr.decode(errors="replace")
        if r.returncode != rc or text not in err:
            bad.append(f"{' '.join(args[:1] + args[3:])}: exit {r.returncode}, {err.strip()!r}")
    report(not bad, "tokenizer/cli-errors", "; ".join(bad))

    # The committed Unicode tables are what the generator writes (checkable with the same Unicode version).
    header = open("runtime/tokenizer_unicode.h").read()
    if f'"{unicodedata.unidata_version}"' in header:
        gen = subprocess.run([sys.executable, "scripts/gen_unicode_tables.py"], stdout=subprocess.PIPE, check=True)
        report(gen.stdout.decode() == header, "tokenizer/unicode-tables-current",
               "runtime/tokenizer_unicode.h differs from scripts/gen_unicode_tables.py's output")
    else:
        print(f"skip tokenizer/unicode-tables-current: this Python has Unicode {unicodedata.unidata_version}, "
              "the tables another version")


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # a crash of the script is a failure, not a silent pass
        report(False, "tokenizer/script", f"{type(e).__name__}: {e}")
    sys.exit(1 if failed else 0)
