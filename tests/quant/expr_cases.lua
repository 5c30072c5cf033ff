-- expr_cases.lua: tests of src/lib/lua/expr.lua — parser (precedence, columns, errors), type and bounds
-- checks with their paths, the f32 interpreter, and the emitters. Run by check_expr.sh under build/qmoe-lua.
local expr = require("expr")
local failed = 0
local function ok(cond, name, why)
  if cond then print("ok " .. name) else failed = failed + 1 print("not ok " .. name .. ": " .. tostring(why)) end
end

local function f32(x) return (string.unpack("<f", string.pack("<f", x))) end
local function bits(x) return (string.unpack("<I4", string.pack("<f", x))) end

-- A one-element quant whose value is SRC; decode_block evaluates it (i = 0).
local function const_q(src, extra_lets)
  return { name = "t", ggml_type = 999, block_elements = 1, block_bytes = 4,
           fields = { { name = "x", type = "f32", count = 1, offset = 0 } },
           decode = { let = extra_lets or {}, value = src } }
end
local ZERO4 = string.pack("<f", 0)
local function eval(src)
  local q = const_q("float(" .. src .. ")")
  local errs = expr.check_quant(q)
  if #errs > 0 then return nil, errs[1].path .. ": " .. errs[1].msg end
  return expr.decode_block(q, ZERO4, 0)[1]
end
local function evalf(src)
  local q = const_q(src)
  local errs = expr.check_quant(q)
  if #errs > 0 then return nil, errs[1].msg end
  return expr.decode_block(q, ZERO4, 0)[1]
end

-- Precedence and integer semantics (C's).
local int_cases = {
  { "1 + 2 * 3", 7 }, { "(1 + 2) * 3", 9 }, { "1 << 2 + 1", 8 }, { "6 & 3 == 3", 0 }, { "(6 & 3) == 2", 1 },
  { "1 | 2 ^ 3 & 4", 3 }, { "-2 * 3", -6 }, { "~0", -1 }, { "!0", 1 }, { "!5", 0 }, { "7 / 2", 3 }, { "-7 / 2", -3 },
  { "-7 % 2", -1 }, { "7 % -2", 1 }, { "1 ? 2 : 3", 2 }, { "0 ? 1 : 0 ? 2 : 3", 3 }, { "0x10 + 0XfF", 271 },
  { "1 < 2 == 1", 1 }, { "3 > 2 > 1", 0 }, { "2 <= 2 && 3 >= 4 || 1", 1 }, { "0 && 1 / 0", 0 }, { "1 || 1 / 0", 1 },
  { "-16 >> 2", -4 }, { "int(2.9)", 2 }, { "int(-2.9)", -2 }, { "10 - 3 - 2", 5 }, { "64 / 4 / 2", 8 },
  { "1 != 2", 1 }, { "2147483647", 2147483647 }, { "5 - -3", 8 }, { "16777217", 16777217 },
}
for _, c in ipairs(int_cases) do
  local v, err = eval(c[1])
  ok(v == f32(c[2] + 0.0), "int: " .. c[1] .. " = " .. c[2], v == nil and err or ("got " .. tostring(v)))
end

-- f32 arithmetic: one rounding per operation, left to right, no reassociation.
local float_cases = {
  { "16777216.0 + 1.0", 16777216.0 }, { "(1.0 + 16777216.0) - 16777216.0", 0.0 },
  { "1.0 + (16777216.0 - 16777216.0)", 1.0 }, { "1.0 / 3.0", f32(f32(1.0) / f32(3.0)) },
  { "0.1 + 0.2", f32(f32(0.1) + f32(0.2)) }, { "0.1 * 3", f32(f32(0.1) * 3) }, { "float(7) / 2", 3.5 },
  { "1.5e3 * 2.0", 3000.0 }, { "3 > 2 ? 1.5 : 2", 1.5 }, { "0 ? 1.5 : 2", 2.0 }, { "-(0.0)", -0.0 },
  { "16777217.0", 16777216.0 }, { "0.1", f32(0.1) }, { ".5 + 1", 1.5 },
}
for _, c in ipairs(float_cases) do
  local v, err = evalf(c[1])
  ok(v ~= nil and bits(v) == bits(c[2]), "f32: " .. c[1], v == nil and err or string.format("got %.9g want %.9g", v, c[2]))
end
-- The interpreter rounds products to f32 before adding (no FMA): (a*b)+c differs from the fused result.
do
  local a, b, c = 1 + 2 ^ -12, 1 + 2 ^ -12, -(1 + 2 ^ -11)
  local v = evalf(string.format("%.17g * %.17g + %.17g", a, b, c):gsub("(%d)e", "%1.0e"))
  ok(v == 0.0, "f32: product rounded before the add (no contraction)", v)
end

-- Parse errors: message and 1-based column.
local parse_cases = {
  { "1 +", 4, "expected a number" }, { "1 $ 2", 3, "unexpected character" }, { "(1 + 2", 7, "expected ')'" },
  { "qs[1][2]", 6, "one index" }, { "1 2", 3, "after a complete expression" }, { "1e3", 1, "needs a '.'" },
  { "2147483648", 1, "does not fit" }, { "a ? b", 6, "expected ':'" }, { "3[1]", 2, "only a field name" },
  { "0x", 1, "malformed" }, { "1.2.3", 1, "malformed" },
}
for _, c in ipairs(parse_cases) do
  local ast, msg, col = expr.parse(c[1])
  ok(ast == nil and col == c[2] and msg:find(c[3], 1, true), "parse error: " .. c[1],
     string.format("got %s col %s", tostring(msg), tostring(col)))
end
ok(expr.parse("j < 4 ? scales[j] & 63 : (scales[j + 4] & 15) | ((scales[j - 4] >> 6) << 4)") ~= nil, "parse: q4_k scale rule")

-- Contract checks: each mutation of a valid contract gives one error at the stated path (and column).
local q4k = assert(yaml.load("contracts/quant/q4_k.yaml"))
local function copy(t)
  if type(t) ~= "table" then return t end
  local r = {}
  for k, v in pairs(t) do r[k] = copy(v) end
  return r
end
local errs = expr.check_quant(q4k)
ok(#errs == 0, "check: q4_k is valid", errs[1] and (errs[1].path .. ": " .. errs[1].msg))
local function let_index(q, name)
  for k, l in ipairs(q.decode.let) do if l.name == name then return k end end
end
local function mutate(name, f, path, col, msg_part)
  local q = copy(q4k)
  f(q)
  local es = expr.check_quant(q)
  local e = es[1]
  ok(e and e.path == path and (col == nil or e.col == col) and e.msg:find(msg_part, 1, true), "check: " .. name,
     e and string.format("%s col %s: %s (%d errors)", e.path, tostring(e.col), e.msg, #es) or "no error reported")
end
local kq = let_index(q4k, "q")
mutate("let parse error", function(q) q.decode.let[kq].expr = "(qs[i % 32] >> 4" end, "decode.let[" .. kq .. "].expr", 17, "expected ')'")
mutate("unknown name", function(q) q.decode.let[kq].expr = "qs[i % 32] >> zz" end, "decode.let[" .. kq .. "].expr", 15, "unknown name 'zz'")
mutate("later let is not visible", function(q) q.decode.let[1].expr = "q + 1" end, "decode.let[1].expr", 1, "unknown name 'q'")
mutate("let shadows a field", function(q) q.decode.let[1].name = "d" end, "decode.let[1].name", nil, "shadows a field")
mutate("let shadows i", function(q) q.decode.let[1].name = "i" end, "decode.let[1].name", nil, "element index")
mutate("let shadows a let", function(q) q.decode.let[2].name = "j" end, "decode.let[2].name", nil, "earlier let")
mutate("value is int", function(q) q.decode.value = "sc * q" end, "decode.value", nil, "must be float")
mutate("array field not indexed", function(q) q.decode.value = "d * qs" end, "decode.value", 5, "index it")
mutate("scalar field indexed", function(q) q.decode.value = "d[0] * q" end, "decode.value", 1, "scalar")
mutate("data-dependent index", function(q) q.decode.let[kq].expr = "qs[scales[0]]" end, "decode.let[" .. kq .. "].expr", 4, "depends on block data")
mutate("index via a data let", function(q) q.decode.let[kq].expr = "qs[sc]" end, "decode.let[" .. kq .. "].expr", 4, "depends on block data")
mutate("index out of range, first i", function(q) q.decode.let[kq].expr = "qs[i] & 15" end, "decode.let[" .. kq .. "].expr", 4, "index 128 of 'qs' is out of range 0..127 at i = 128")
mutate("negative index", function(q) q.decode.let[kq].expr = "qs[i - 1] & 15" end, "decode.let[" .. kq .. "].expr", 4, "index -1 of 'qs' is out of range 0..127 at i = 0")
mutate("float index", function(q) q.decode.let[kq].expr = "qs[1.0]" end, "decode.let[" .. kq .. "].expr", 4, "must be int")
mutate("int-only operator on float", function(q) q.decode.value = "d % 2" end, "decode.value", 3, "takes ints")
mutate("float condition", function(q) q.decode.value = "d ? 1.0 : 2.0" end, "decode.value", 1, "condition")
mutate("unknown function", function(q) q.decode.value = "abs(d)" end, "decode.value", 1, "unknown function 'abs'")
mutate("division by zero in an index", function(q) q.decode.let[kq].expr = "qs[i / (i - i)]" end, "decode.let[" .. kq .. "].expr", nil, "division by zero")
mutate("unknown field type", function(q) q.fields[1].type = "f8" end, "fields[1].type", nil, "unknown field type 'f8'")
mutate("field past block end", function(q) q.fields[4].count = 129 end, "fields[4]", nil, "extends past block_bytes")
mutate("test vector value differs", function(q) q.test_vectors[1].values[17] = q.test_vectors[1].values[17] * 2 + 1 end,
       "test_vectors[1].values[17]", nil, "decodes to")
mutate("test vector -0 vs +0", function(q)
  for k, v in ipairs(q.test_vectors[2].values) do if v == 0 then q.test_vectors[2].values[k] = (1 / v < 0) and 0.0 or -0.0 return end end
  q.test_vectors[2].values[1] = -0.0 -- no zero in this vector: any nonzero value mismatches as well
end, "test_vectors[2].values[" .. (function()
  for k, v in ipairs(q4k.test_vectors[2].values) do if v == 0 then return k end end
  return 1
end)() .. "]", nil, "decodes to")
mutate("test vector short bytes", function(q) q.test_vectors[3].bytes = q.test_vectors[3].bytes:sub(1, -3) end,
       "test_vectors[3].bytes", nil, "not a whole number")
mutate("test vector bad hex", function(q) q.test_vectors[3].bytes = "zz" .. q.test_vectors[3].bytes:sub(3) end,
       "test_vectors[3].bytes", nil, "non-hex")
mutate("test vector value count", function(q) table.remove(q.test_vectors[1].values) end, "test_vectors[1].values", nil, "255 values")
mutate("int overflow", function(q) q.decode.let[kq].expr = "(qs[0] + 1) << 30" end, "decode.let[" .. kq .. "].expr", 13, "int overflow")
-- Both arms of ?: are checked (GPU kernels evaluate both): the arm not taken must stay in bounds too.
mutate("arm not taken out of range", function(q) q.decode.let[kq].expr = "i < 128 ? qs[i] & 15 : qs[i - 128] & 15" end,
       "decode.let[" .. kq .. "].expr", nil, "index -128 of 'qs' is out of range 0..127 (in the arm of '?:' not taken here")
mutate("arm not taken divides by zero", function(q) q.decode.let[kq].expr = "i >= 0 ? qs[i % 128] & 15 : 1 / (i - i)" end,
       "decode.let[" .. kq .. "].expr", nil, "division by zero (in the arm of '?:' not taken")

-- Table literals: {c0, c1, ...}[index], constants only, index proven in range over all block data.
do
  local TBL = "{-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113}"
  local function iq(value, let)
    return { name = "tq", ggml_type = 998, block_elements = 32, block_bytes = 18,
             fields = { { name = "d", type = "f16", count = 1, offset = 0 }, { name = "qs", type = "u8", count = 16, offset = 2 } },
             decode = { let = { { name = "q", expr = let or "(qs[i % 16] >> (4 * (i / 16))) & 15" } }, value = value } }
  end
  local good = iq("d * " .. TBL .. "[q]")
  local es = expr.check_quant(good)
  ok(#es == 0, "table: a data-dependent index proven in 0..15", es[1] and es[1].msg)
  local bytes = string.pack("<I2", 0x3C00) .. string.rep("\x10", 16) -- d = 1, low nibbles 0, high nibbles 1
  local y = expr.decode_block(good, bytes, 0)
  ok(y[1] == -127.0 and y[17] == -104.0, "table: interpreter looks up the level", tostring(y[1]) .. " " .. tostring(y[17]))
  local e = expr.check_quant(iq("d * " .. TBL .. "[q + 1]"))[1]
  ok(e and e.msg:find("index of the 16-entry table may be outside 0..15: it can range over 1..16", 1, true), "table: range 1..16 refused",
     e and e.msg)
  e = expr.check_quant(iq("d * " .. TBL .. "[qs[i % 16]]"))[1]
  ok(e and e.msg:find("can range over 0..255", 1, true), "table: a raw byte index refused", e and e.msg)
  e = expr.check_quant(iq("d * {1.5, 2}[i % 3]"))[1]
  ok(e and e.msg:find("index 2 of a 2-entry table", 1, true) and e.msg:find("at i = 2", 1, true), "table: constant index out of range", e and e.msg)
  ok(#expr.check_quant(iq("d * {0.5, 2}[(q >> 3) & 1]")) == 0, "table: float table, index via shift and mask")
  local _, msg = expr.parse("{1, x}[0]")
  ok(msg and msg:find("number constants", 1, true), "table: items must be constants", msg)
  _, msg = expr.parse("{1, 2}")
  ok(msg and msg:find("must be indexed", 1, true), "table: must be indexed", msg)
  e = expr.check_quant(iq("d * {1, 2}[0.5]"))[1]
  ok(e and e.msg:find("must be int", 1, true), "table: float index refused", e and e.msg)
  local c, cu, gl = expr.emit(good, "c"), expr.emit(good, "cuda"), expr.emit(good, "glsl")
  ok(c:find("static const int qmoe_tq_tab1[16] = { -127, -104,", 1, true) and c:find("qmoe_tq_tab1[v_q]", 1, true), "table: emit c", c)
  ok(cu:find("static __device__ const int qmoe_tq_tab1[16]", 1, true), "table: emit cuda", cu)
  ok(gl:find("const int qmoe_tq_tab1[16] = int[16](-127, -104,", 1, true), "table: emit glsl", gl)
  local two = iq("d * (" .. TBL .. "[q] + " .. TBL .. "[15 - q] + {0.5, 1.0}[q & 1])")
  local c2 = expr.emit(two, "c")
  ok(#expr.check_quant(two) == 0 and c2:find("qmoe_tq_tab2[2]", 1, true) and not c2:find("qmoe_tq_tab3", 1, true),
     "table: equal tables share one array", c2)
end

-- Every contract in the tree is valid and its vectors decode (through check_quant).
local util = require("util")
for _, name in ipairs(util.list("contracts/quant", "%.ya?ml$")) do
  local q = assert(yaml.load("contracts/quant/" .. name))
  local es = expr.check_quant(q)
  ok(#es == 0 and #(q.test_vectors or {}) >= 2, "check: contracts/quant/" .. name .. " valid with >= 2 vectors",
     es[1] and (es[1].path .. ": " .. es[1].msg) or "fewer than 2 test vectors")
end

-- decode_block reads the requested block of a multi-block buffer.
do
  local q = assert(yaml.load("contracts/quant/q8_0.yaml"))
  local b1, b2 = expr.unhex(q.test_vectors[1].bytes), expr.unhex(q.test_vectors[2].bytes)
  local y = expr.decode_block(q, b1 .. b2, 1)
  local same = #y == 32
  for k = 1, 32 do same = same and bits(y[k]) == bits(q.test_vectors[2].values[k]) end
  ok(same, "decode_block: second block of a buffer")
  ok(not pcall(expr.decode_block, q, b1, 1), "decode_block: a block past the end is an error")
end

-- RANGES: int -> float by bits only where the range is proven within ±2^22; the bits trick is exact there.
do
  local function emitted(lets, value)
    local q = { name = "t", ggml_type = 999, block_elements = 1, block_bytes = 4,
                fields = { { name = "u", type = "u16", count = 2, offset = 0 } }, decode = { let = lets, value = value } }
    return expr.emit(q, "cuda")
  end
  local small = emitted({ { name = "a", expr = "u[0] - 40000" } }, "float(a) * 2.0")  -- -40000..25535
  local big = emitted({ { name = "a", expr = "u[0] * 128" } }, "float(a) * 2.0")      -- up to 8388480
  local wide = emitted({ { name = "a", expr = "u[0] << u[1]" } }, "float(a)")          -- unknown shift: any int
  ok(small:find("qmoe_q_i2f(v_a)", 1, true), "RANGES: a proven small int converts by bits", small)
  ok(big:find("(float)v_a", 1, true) and not big:find("qmoe_q_i2f(v_a)", 1, true), "RANGES: past 2^22 converts by cast", big)
  ok(wide:find("(float)v_a", 1, true), "RANGES: an unproven range converts by cast", wide)
  -- The trick itself, in Lua: bits 0x4B400000 + v as f32, minus 1.5·2^23, is v at both ends of the range.
  local function trick(v) return f32((string.unpack("<f", string.pack("<I4", 0x4B400000 + v))) - 12582912.0) end
  ok(trick(-(1 << 22)) == -(1 << 22) and trick((1 << 22) - 1) == (1 << 22) - 1 and trick(0) == 0 and trick(-1) == -1,
     "RANGES: the bits conversion is exact at -2^22, -1, 0, 2^22 - 1")
end

-- GROUP: with the dialect's group G, the parts of the decode constant over each run of G elements are emitted
-- over the run's start ig (decode_run), the rest over i; decode(b, i) wraps it.
do
  local D = setmetatable({ group = 8 }, { __index = expr.dialects.cuda })
  local cu = expr.emit(q4k, D)
  ok(cu:find("qmoe_q4_k_decode_run(const uint8_t *b, int ig, int i)", 1, true) and
     cu:find("const int v_j = (ig / 32);", 1, true) and cu:find("(i %% 32)") and
     cu:find("return qmoe_q4_k_decode_run(b, i & ~7, i); }", 1, true), "GROUP: q4_k's sub-block over ig, its quant over i", cu)
  local q8 = assert(yaml.load("contracts/quant/q8_0.yaml"))
  local c8 = expr.emit(q8, D)
  ok(not c8:find("(ig", 1, true), "GROUP: q8_0 has nothing per run but its scale (no i in it)", c8)
end

-- PACKED: with runs and the affine form, V of four elements per word where V is byte fields (the emulator's
-- parity tests check the values; here: which formats get it and the offset each word carries).
do
  local D = setmetatable({ group = 8, affine = true }, { __index = expr.dialects.cuda })
  local want = { q4_k = 0, q6_k = 32, q8_0 = 128, q2_k = 0, q5_0 = false, iq4_nl = false }
  for name, off in pairs(want) do
    local q = assert(yaml.load("contracts/quant/" .. name .. ".yaml"))
    local cu, info = expr.emit(q, D)
    local has = cu:find("_run_w(const uint8_t *b, int ig, int t0)", 1, true) ~= nil
    if off then
      ok(has and info.affine.packed and cu:find(string.format("#define QMOE_%s_RUN_W_OFF %d\n", name:upper(), off), 1, true),
         "PACKED: " .. name .. " has run_w with offset " .. off, cu)
    else
      ok(not has and not (info.affine and info.affine.packed), "PACKED: " .. name .. " has no run_w", cu)
    end
  end
  local plain = expr.emit(q4k, setmetatable({ group = 8, affine = true, packed = false }, { __index = expr.dialects.cuda }))
  ok(not plain:find("_run_w(", 1, true), "PACKED: only dialects that ask for it", plain)
end

-- Emitters: dialect-specific float operations, every let and the decode functions.
do
  local c = expr.emit(q4k, "c")
  local cu = expr.emit(q4k, "cuda")
  local gl = expr.emit(q4k, "glsl")
  ok(c:find("static inline float qmoe_q4_k_decode(const uint8_t *b, int i)", 1, true) and c:find("qmoe_q4_k_decode_block", 1, true),
     "emit c: decode and decode_block")
  ok(cu:find("__fsub_rn(__fmul_rn(__fmul_rn(f_d, qmoe_q_i2f(v_sc)), qmoe_q_i2f(v_q)), __fmul_rn(f_dmin, qmoe_q_i2f(v_m)))", 1, true)
     and cu:find("__device__", 1, true), "emit cuda: rounded intrinsics in source order, small ints by bits", cu)
  ok(gl:find("precise float r = ", 1, true) and gl:find("float qmoe_q4_k_decode(uint base, int i)", 1, true)
     and not gl:find("decode_block", 1, true) and gl:find("(v_j < 4) ?", 1, true), "emit glsl: precise, bool conditions", gl)
  for _, l in ipairs(q4k.decode.let) do
    ok(c:find("v_" .. l.name .. " = ", 1, true), "emit c: let " .. l.name)
  end
  ok(expr.prelude("cuda"):find("__uint_as_float", 1, true) and not expr.prelude("cuda"):find("memcpy", 1, true),
     "emit cuda: prelude without memcpy")
  local custom = expr.glsl_dialect("weights")
  ok(custom.prelude:find("weights[o >> 2]", 1, true), "emit glsl: buffer name from glsl_dialect()")
  ok(not pcall(expr.emit, const_q("1"), "c"), "emit: an invalid contract raises")
end

print(string.format("# expr_cases: %d failed", failed))
os.exit(failed == 0 and 0 or 1)
