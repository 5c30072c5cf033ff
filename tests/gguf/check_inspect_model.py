#!/usr/bin/env python3
# check_inspect_model.py: `qmoe inspect --json` is valid JSON for any file it opens (keys, tensor names and
# strings that are not UTF-8, NaN and infinite floats), checked by `python3 -m json.tool` and a strict parser;
# the writer (extract, quantize) refuses names that are not UTF-8 unless --verbatim-names, which copies them
# byte for byte; a model file whose counts are missing, zero, negative, huge, of the wrong type or
# inconsistent is reported by inspect (a warning naming the file and key; exit 1 with --model), a good one
# is not. Errors about
# tensor contents name the file. Prints ok / not ok. Run from the repo root with QMOE_BIN set.
import json
import os
import struct
import subprocess
import sys
import tempfile

import numpy as np
import gguf

BIN = os.environ.get("QMOE_BIN", "build")
QMOE = os.path.join(BIN, "qmoe")
TMP = tempfile.mkdtemp(prefix="qmoe-inspect-")
failed = 0


def report(ok, name, why=""):
    global failed
    if ok:
        print(f"ok {name}")
    else:
        failed += 1
        print(f"not ok {name}: {why}")
    sys.stdout.flush()


def run(*args):
    p = subprocess.run([QMOE, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return p.returncode, p.stdout, p.stderr.decode("utf-8", "replace")


def tmp(name):
    return os.path.join(TMP, name)


# ---- a GGUF file written byte by byte, so names can be any bytes ---------------------------------------
def gstr(b):
    return struct.pack("<Q", len(b)) + b


def raw_gguf(path, kvs, tensors):
    """kvs: [(key bytes, type id, payload bytes)]; tensors: [(name bytes, f32 array)], F32, alignment 32."""
    head = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kvs))
    for k, t, payload in kvs:
        head += gstr(k) + struct.pack("<I", t) + payload
    data, off = b"", 0
    for name, arr in tensors:
        head += gstr(name) + struct.pack("<I", arr.ndim) + b"".join(struct.pack("<Q", d) for d in arr.shape[::-1])
        head += struct.pack("<IQ", 0, off)
        blob = arr.astype("<f4").tobytes()
        blob += b"\0" * ((32 - len(blob) % 32) % 32)
        data += blob
        off += len(blob)
    head += b"\0" * ((32 - len(head) % 32) % 32)
    with open(path, "wb") as f:
        f.write(head + data)


def strict_json(data):
    """Parses bytes as strict JSON: UTF-8 only, no NaN/Infinity literals, no lone surrogates."""
    def no_constants(c):
        raise ValueError(f"non-JSON constant {c}")
    text = data.decode("utf-8")  # strict: invalid UTF-8 raises
    return json.loads(text, parse_constant=no_constants)


rng = np.random.default_rng(int.from_bytes(os.urandom(4), "little"))
bad_key, bad_name = b"general.ke\xffy\xc3", b"blk.0.w\x80\xe2\x82eight"
path = tmp("badutf8.gguf")
raw_gguf(path, [
    (b"general.architecture", 8, gstr(b"test")),
    (bad_key, 8, gstr(b"value \xfe\xff and \xe2\x82\xac")),
    (b"nan", 6, struct.pack("<f", float("nan"))),
    (b"inf", 12, struct.pack("<d", float("-inf"))),
    (b"arr", 9, struct.pack("<IQ", 6, 2) + struct.pack("<ff", float("inf"), 1.5)),
    (b"test.block_count", 4, struct.pack("<I", 1)),
    (b"test.context_length", 4, struct.pack("<I", 64)),
    (b"test.embedding_length", 4, struct.pack("<I", 32)),
    (b"test.attention.head_count", 4, struct.pack("<I", 2)),
], [(bad_name, rng.standard_normal((2, 32)).astype(np.float32)), (b"ok.weight", rng.standard_normal(32).astype(np.float32))])
rc, out, err = run("inspect", "--json", path)
try:
    d = strict_json(out)
    keys = {m["key"]: m for m in d["metadata"]}
    names = [t["name"] for t in d["tensors"]]
    good = (rc == 0 and "general.ke\ufffdy\ufffd" in keys and keys["general.ke\ufffdy\ufffd"]["key_hex"] == bad_key.hex()
            and keys["general.ke\ufffdy\ufffd"]["value"] == "value \ufffd\ufffd and \u20ac"
            and keys["nan"]["value"] == "NaN" and keys["inf"]["value"] == "-Infinity"
            and keys["arr"]["value"] == ["Infinity", 1.5]
            and d["tensors"][0]["name_hex"] == bad_name.hex() and "name_hex" not in d["tensors"][1]
            and names[1] == "ok.weight" and d["problems"] == [])
    report(good, "inspect --json: invalid UTF-8 and non-finite floats give strict JSON",
           f"exit {rc}: {json.dumps(d)[:600]}")
except (ValueError, KeyError, IndexError) as e:
    report(False, "inspect --json: invalid UTF-8 and non-finite floats give strict JSON", f"{e}: {out[:300]!r}")
p = subprocess.run([sys.executable, "-m", "json.tool"], input=out, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
report(p.returncode == 0, "inspect --json passes python3 -m json.tool", p.stderr.decode(errors="replace")[:300])

# The writer refuses names that are not UTF-8; --verbatim-names copies them byte for byte.
for cmd in (["extract", path, tmp("x.gguf"), "--all"], ["quantize", path, tmp("x.gguf"), "f16", "-j", "1"]):
    rc, out, err = run(*cmd)
    report(rc == 1 and "not valid UTF-8" in err and "--verbatim-names" in err and path in err and
           not os.path.exists(tmp("x.gguf")), f"{cmd[0]} refuses a name that is not UTF-8", f"exit {rc}: {err[:300]}")
    rc, out, err = run(*cmd, "--verbatim-names")
    ok = rc == 0
    if ok:  # gguf-py cannot read such names; the bytes are searched in the file itself
        data = open(tmp("x.gguf"), "rb").read()
        ok = gstr(bad_key) + struct.pack("<I", 8) in data and gstr(bad_name) + struct.pack("<I", 2) in data
    report(ok, f"{cmd[0]} --verbatim-names copies the bytes", f"exit {rc}: {err[:300]}")
    if os.path.exists(tmp("x.gguf")):
        os.unlink(tmp("x.gguf"))

# ---- model counts -------------------------------------------------------------------------------------
V = gguf.GGUFValueType
GOOD = {
    "block_count": (2, V.UINT32), "context_length": (4096, V.UINT32), "embedding_length": (64, V.UINT32),
    "feed_forward_length": (128, V.UINT32), "attention.head_count": (4, V.UINT32),
    "attention.head_count_kv": (2, V.UINT32), "attention.key_length": (16, V.UINT32),
    "attention.value_length": (16, V.UINT32), "expert_count": (8, V.UINT32), "expert_used_count": (2, V.UINT32),
    "expert_feed_forward_length": (32, V.UINT32), "rope.freq_base": (1e6, V.FLOAT32),
    "attention.layer_norm_rms_epsilon": (1e-6, V.FLOAT32),
}


def model(name, change=None, drop=None, layers=2):
    path = tmp(name + ".gguf")
    w = gguf.GGUFWriter(path, "qwen3moe")
    for k, (v, t) in GOOD.items():
        if k == drop:
            continue
        if change and k == change[0]:
            v, t = change[1], change[2]
        w.add_key_value("qwen3moe." + k, v, t)
    for i in range(layers):
        w.add_tensor(f"blk.{i}.attn_norm.weight", rng.standard_normal(64).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


path = model("good")
rc, out, err = run("inspect", "--model", path)
report(rc == 0 and not err, "inspect --model: a model with good counts has no problems", f"exit {rc}: {err[:300]}")
rc, out, err = run("inspect", "--model", "tests/data/gemma3-270m-slice.gguf")
report(rc == 0 and not err, "inspect --model: the gemma3 fixture has no problems", f"exit {rc}: {err[:300]}")
CASES = [
    ("block_count missing", None, "block_count", "'qwen3moe.block_count' is missing"),
    ("block_count zero", ("block_count", 0, V.UINT32), None, "'qwen3moe.block_count' is 0"),
    ("block_count negative", ("block_count", -3, V.INT32), None, "'qwen3moe.block_count' is -3: negative"),
    ("block_count huge", ("block_count", 1 << 40, V.UINT64), None, "'qwen3moe.block_count' is 1099511627776: more than"),
    ("block_count a string", ("block_count", "48", V.STRING), None, "'qwen3moe.block_count' is string, not an integer"),
    ("block_count a float", ("block_count", 48.0, V.FLOAT32), None, "'qwen3moe.block_count' is f32, not an integer"),
    ("block_count an array", ("block_count", [2, 2], V.ARRAY), None, "'qwen3moe.block_count' is array, not an integer"),
    ("block_count below the layers", ("block_count", 1, V.UINT32), None, "tensor 'blk.1.attn_norm.weight' is in layer 1"),
    ("head_count zero", ("attention.head_count", 0, V.UINT32), None, "'qwen3moe.attention.head_count' is 0"),
    ("head_count_kv missing", None, "attention.head_count_kv", "'qwen3moe.attention.head_count_kv' is missing"),
    ("head_count_kv not dividing", ("attention.head_count_kv", 3, V.UINT32), None, "does not divide head_count = 4"),
    ("key_length odd", ("attention.key_length", 15, V.UINT32), None, "key_length' = 15 is odd"),
    ("expert_count missing", None, "expert_count", "'qwen3moe.expert_count' is missing"),
    ("expert_count negative", ("expert_count", -8, V.INT64), None, "'qwen3moe.expert_count' is -8: negative"),
    ("expert_used_count above expert_count", ("expert_used_count", 9, V.UINT32), None, "is more than expert_count = 8"),
    ("embedding_length huge", ("embedding_length", 1 << 31, V.UINT32), None, "embedding_length' is 2147483648: more than"),
    ("context_length a bool", ("context_length", True, V.BOOL), None, "'qwen3moe.context_length' is bool, not an integer"),
    ("context_length missing", None, "context_length", "'qwen3moe.context_length' is missing"),
    ("rope.freq_base missing", None, "rope.freq_base", "'qwen3moe.rope.freq_base' is missing"),
    ("rms eps zero", ("attention.layer_norm_rms_epsilon", 0.0, V.FLOAT32), None, "must be a finite number above 0"),
]
for i, (name, change, drop, want) in enumerate(CASES):
    if change and change[2] == V.ARRAY:
        path = tmp(f"case{i}.gguf")
        w = gguf.GGUFWriter(path, "qwen3moe")
        for k, (v, t) in GOOD.items():
            if k == change[0]:
                w.add_array("qwen3moe." + k, change[1])
            else:
                w.add_key_value("qwen3moe." + k, v, t)
        w.add_tensor("blk.0.attn_norm.weight", rng.standard_normal(64).astype(np.float32))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    else:
        path = model(f"case{i}", change, drop)
    rc, out, err = run("inspect", path)
    rcm, outm, errm = run("inspect", "--model", path)
    rcj, outj, errj = run("inspect", "--json", path)
    try:
        problems = strict_json(outj)["problems"]
    except ValueError:
        problems = []
    report(rc == 0 and "warning" in err and want in err and path in err and rcm == 1 and want in errm and
           "error" in errm and rcj == 0 and any(want in p for p in problems),
           f"inspect reports {name}", f"exit {rc}/{rcm}: {err[:300]} / json problems {problems}")

# Errors about tensor contents name the file.
rc, out, err = run("dump", tmp("good.gguf"), "blk.0.attn_norm.weight", "--rows", "5..9", "--f32", "-o", tmp("d"))
report(rc == 1 and tmp("good.gguf") in err, "dump: a bad row range names the file", err[:300])
rc, out, err = run("extract", tmp("good.gguf"), tmp("e.gguf"), "--tensor", "blk.0.attn_norm.weight:3..1")
report(rc == 1 and tmp("good.gguf") in err, "extract: a bad row range names the file", err[:300])

for f in os.listdir(TMP):
    os.unlink(os.path.join(TMP, f))
os.rmdir(TMP)
sys.exit(1 if failed else 0)
