#!/usr/bin/env python3
# make_hostile.py: writes the hostile GGUF corpus tests/gguf/hostile/*.gguf and its EXPECT list (file, then
# the message substring `qmoe inspect` must print). Each file breaks one rule of the format; check_hostile.sh
# runs them. Usage: python3 tests/gguf/make_hostile.py [OUTDIR]   (default tests/gguf/hostile)
# Files named crash-*.gguf are fuzzer finds kept as they were; this script does not touch them.
import os
import struct
import sys

U8, I8, U16, I16, U32, I32, F32, BOOL, STRING, ARRAY, U64, I64, F64 = range(13)
F32_T, Q8_0_T = 0, 8


def u32(v):
    return struct.pack("<I", v)


def u64(v):
    return struct.pack("<Q", v)


def s(text):
    b = text if isinstance(text, bytes) else text.encode()
    return u64(len(b)) + b


def header(n_tensors, n_kv, version=3, magic=b"GGUF"):
    return magic + u32(version) + u64(n_tensors) + u64(n_kv)


def kv(key, vtype, payload):
    return s(key) + u32(vtype) + payload


def tinfo(name, dims, ttype, offset):
    return s(name) + u32(len(dims)) + b"".join(u64(d) for d in dims) + u32(ttype) + u64(offset)


def pad(b, a=32):
    return b + b"\0" * ((a - len(b) % a) % a)


def file_with(kvs=(), tensors=(), data=b"", n_kv=None, n_tensors=None, align=32):
    """A whole file: header, metadata, tensor infos, padding, data."""
    head = header(len(tensors) if n_tensors is None else n_tensors, len(kvs) if n_kv is None else n_kv)
    body = head + b"".join(kvs) + b"".join(tensors)
    return pad(body, align) + data


ARCH = kv("general.architecture", STRING, s("qwen3moe"))
F32_64 = tinfo("w", [64], F32_T, 0)  # one valid 256-byte F32 tensor

CASES = [
    # name, bytes, expected message substring
    ("empty", b"", "file is empty"),
    ("short-magic", b"GG", "too short for the GGUF magic"),
    ("bad-magic", b"GGML" + u32(3) + u64(0) + u64(0), "bad magic 'GGML'"),
    ("truncated-header", b"GGUF" + u32(3) + b"\1\0\0", "truncated: tensor count needs 8 bytes"),
    ("truncated-kv-count", b"GGUF" + u32(3) + u64(0) + b"\0\0", "truncated: metadata count needs 8 bytes"),
    ("version-1", b"GGUF" + u32(1) + u32(0) + u32(0) + b"\0" * 16, "GGUF version 1 is not supported"),
    ("version-4", header(0, 0, version=4), "GGUF version 4 is not supported"),
    ("big-endian", b"GGUF" + struct.pack(">I", 3) + struct.pack(">Q", 0) * 2, "big-endian GGUF is not supported"),
    ("kv-count-huge", header(0, 2**64 - 1) + ARCH, "metadata count 18446744073709551615 cannot fit"),
    ("tensor-count-huge", header(2**63, 0) + F32_64, "tensor count 9223372036854775808 cannot fit"),
    ("key-length-past-eof", header(0, 1) + u64(2**64 - 1) + b"general", "key of length 18446744073709551615 runs past the end"),
    ("key-truncated", header(0, 1) + u64(40) + b"general.arch", "key of length 40 runs past the end"),
    ("string-past-eof", header(0, 1) + s("general.name") + u32(STRING) + u64(1000) + b"abcdefghij",
     "string value of length 1000 runs past the end"),
    ("value-truncated", header(0, 1) + s("general.alignment") + u32(U32) + b"\x20\0", "truncated: u32 needs 4 bytes"),
    ("array-count-huge", header(0, 1) + s("a") + u32(ARRAY) + u32(U32) + u64(2**62) + u32(1),
     "array of 4611686018427387904 u32 elements"),
    ("array-count-overflow", header(0, 1) + s("a") + u32(ARRAY) + u32(U64) + u64(2**61 + 1) + u64(1),
     "array of 2305843009213693953 u64 elements"),
    ("string-array-huge", header(0, 1) + s("tokenizer.ggml.tokens") + u32(ARRAY) + u32(STRING) + u64(2**60) + s("a"),
     "array of 1152921504606846976 strings cannot fit"),
    ("string-array-element-past-eof", header(0, 1) + s("t") + u32(ARRAY) + u32(STRING) + u64(3) + s("ab") + u64(99) + b"xy" + b"." * 16,
     "string element 1 of length 99 runs past the end"),
    ("nested-array-count-huge", header(0, 1) + s("n") + u32(ARRAY) + u32(ARRAY) + u64(2**61) + u32(U8) + u64(0),
     "array of 2305843009213693952 arrays cannot fit"),
    ("nested-depth-bomb", header(0, 1) + s("bomb") + u32(ARRAY) + (u32(ARRAY) + u64(1)) * 10000 + u32(U8) + u64(0),
     "arrays nested more than 8 deep"),
    ("unknown-value-type", header(0, 1) + s("general.x") + u32(13) + u32(0), "value type 13 is unknown"),
    ("unknown-value-type-huge", header(0, 1) + s("general.x") + u32(0xFFFFFFFF) + u32(0), "value type 4294967295 is unknown"),
    ("unknown-array-element-type", header(0, 1) + s("a") + u32(ARRAY) + u32(99) + u64(1) + u32(0),
     "array element type 99 is unknown"),
    ("bool-not-0-or-1", header(0, 1) + s("tokenizer.ggml.add_bos_token") + u32(BOOL) + b"\x02", "bool value 2 is not 0 or 1"),
    ("bool-array-not-0-or-1", header(0, 1) + s("b") + u32(ARRAY) + u32(BOOL) + u64(3) + b"\x00\x01\x07",
     "array element 2: bool value 7 is not 0 or 1"),
    ("empty-key", header(0, 1) + s("") + u32(U8) + b"\0" * 8, "key is empty"),
    ("key-with-nul", header(0, 1) + s(b"general\0name") + u32(U8) + b"\0", "key contains a NUL byte"),
    ("duplicate-key", file_with([ARCH, ARCH]), "key 'general.architecture' appears twice"),
    ("alignment-not-power-of-two", file_with([kv("general.alignment", U32, u32(48))]),
     "general.alignment = 48 is not a power of two"),
    ("alignment-zero", file_with([kv("general.alignment", U32, u32(0))]), "general.alignment = 0 is not a power of two"),
    ("alignment-wrong-type", file_with([kv("general.alignment", U64, u64(32))]), "general.alignment must be a u32, not u64"),
    ("tensor-ndims-zero", file_with([ARCH], [s("w") + u32(0) + u32(F32_T) + u64(0)]), "n_dims = 0 (must be 1 to 4)"),
    ("tensor-ndims-5", file_with([ARCH], [tinfo("w", [1, 1, 1, 1, 1], F32_T, 0)], b"\0" * 32), "n_dims = 5 (must be 1 to 4)"),
    ("tensor-ndims-huge", file_with([ARCH], [s("w") + u32(2**31) + u64(1) + u32(F32_T) + u64(0)]), "n_dims = 2147483648"),
    ("tensor-dim-zero", file_with([ARCH], [tinfo("w", [64, 0], F32_T, 0)]), "dimension 1 is 0"),
    ("tensor-dim-huge", file_with([ARCH], [tinfo("w", [2**64 - 1], F32_T, 0)]), "dimension 0 = 18446744073709551615 is too large"),
    ("element-count-overflow", file_with([ARCH], [tinfo("w", [2**32, 2**32, 2**32], F32_T, 0)]), "overflows 64 bits"),
    ("byte-size-overflow", file_with([ARCH], [tinfo("w", [2**62], F32_T, 0)]), "byte size of 4611686018427387904 F32 elements overflows"),
    ("unknown-type-id", file_with([ARCH], [tinfo("blk.0.attn_q.weight", [64], 99, 0)], b"\0" * 256),
     "tensor #0 'blk.0.attn_q.weight': type id 99 is unknown"),
    ("removed-type-id", file_with([ARCH], [tinfo("w", [64], 4, 0)], b"\0" * 256), "type id 4 is unknown"),
    ("type-id-huge", file_with([ARCH], [tinfo("w", [64], 2**32 - 1, 0)], b"\0" * 256), "type id 4294967295 is unknown"),
    ("row-not-multiple-of-block", file_with([ARCH], [tinfo("w", [33, 2], Q8_0_T, 0)], b"\0" * 128),
     "row length ne[0] = 33 is not a multiple of the Q8_0 block size 32"),
    ("offset-past-eof", file_with([ARCH], [tinfo("w", [64], F32_T, 1 << 20)], b"\0" * 256), "extends past the end of the file"),
    ("offset-wraps-to-header", file_with([ARCH], [tinfo("w", [64], F32_T, 2**64 - 64)], b"\0" * 256),
     "extends past the end of the file"),
    ("misaligned-offset", file_with([ARCH], [tinfo("w", [64], F32_T, 4)], b"\0" * 512),
     "data offset 4 is not a multiple of the alignment 32"),
    ("misaligned-offset-custom-alignment", file_with([kv("general.alignment", U32, u32(64))], [tinfo("w", [64], F32_T, 32)],
                                                     b"\0" * 512, align=64),
     "data offset 32 is not a multiple of the alignment 64"),
    ("data-truncated", file_with([ARCH], [F32_64], b"\0" * 100), "extends past the end of the file"),
    ("data-section-missing", header(1, 1) + ARCH + F32_64, "extends past the end of the file"),
    ("tensors-overlap", file_with([ARCH], [tinfo("a", [64], F32_T, 0), tinfo("b", [64], F32_T, 128)], b"\0" * 512),
     "tensor 'b' data [128, 384) overlaps tensor 'a' data [0, 256)"),
    ("tensors-same-offset", file_with([ARCH], [tinfo("a", [8], F32_T, 0), tinfo("b", [8], F32_T, 0)], b"\0" * 64),
     "overlaps tensor"),
    ("duplicate-tensor-name", file_with([ARCH], [tinfo("w", [8], F32_T, 0), tinfo("w", [8], F32_T, 32)], b"\0" * 64),
     "duplicate tensor name 'w'"),
    ("empty-tensor-name", file_with([ARCH], [tinfo("", [8], F32_T, 0)], b"\0" * 32), "tensor name is empty"),
    ("tensor-name-with-nul", file_with([ARCH], [tinfo(b"a\0b", [8], F32_T, 0)], b"\0" * 32), "tensor name contains a NUL byte"),
    ("tensor-name-past-eof", header(1, 0) + u64(2**40) + b"blk" + b"." * 40, "tensor name of length 1099511627776 runs past the end"),
    ("tensor-info-truncated", header(1, 0) + s("w") + u32(4) + u64(64) * 3, "truncated: dimension needs 8 bytes"),
    ("tensor-type-truncated", header(1, 0) + s("w") + u32(3) + u64(64) * 3 + b"\0\0", "truncated: tensor type needs 4 bytes"),
]


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "tests/gguf/hostile"
    os.makedirs(out, exist_ok=True)
    lines = []
    for name, data, expect in CASES:
        with open(os.path.join(out, name + ".gguf"), "wb") as f:
            f.write(data)
        lines.append(f"{name}.gguf\t{expect}")
    # Fuzzer finds (crash-*.gguf) keep their expectations in EXPECT.fuzz, maintained by hand.
    with open(os.path.join(out, "EXPECT"), "w") as f:
        f.write("# file<TAB>substring of the error `qmoe inspect` must print (written by tests/gguf/make_hostile.py)\n")
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
