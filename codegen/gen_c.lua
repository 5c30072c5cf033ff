-- gen_c.lua: writes the C side of the quant formats from contracts/quant/*.yaml:
--   generated/c/quant_<q>.c        decoder (expr.emit, C dialect), dequant_row, dot_f32, dot_f64 of one qtype
--   generated/c/qtypes.c, qtypes.h the qtype table and declarations, from the same sorted list
--   generated/c/qdecode.h          every decoder as static inline functions (quantizers, tests)
--   generated/tests/quant_vectors.h the contracts' test vectors as C data (tests/unit/test_quant_vectors.c)
-- Usage: qmoe-lua codegen/gen_c.lua --qtype NAME --out FILE
--        qmoe-lua codegen/gen_c.lua --table --contracts DIR
local util = require("util")
local expr = require("expr")
local USAGE = [==[usage: qmoe-lua codegen/gen_c.lua --qtype NAME --out FILE [--contracts DIR]
       qmoe-lua codegen/gen_c.lua --table [--contracts DIR]]==]
local M = {}

local TABLE_OUTPUTS = { "generated/c/qtypes.c", "generated/c/qtypes.h", "generated/c/qdecode.h",
                        "generated/tests/quant_vectors.h" }

function M.plan(ctx)
  local jobs, all = {}, {}
  for _, q in ipairs(ctx.quant.list) do
    local out = "generated/c/quant_" .. q.name .. ".c"
    jobs[#jobs + 1] = { outputs = { out }, inputs = { q.__file },
                        args = "--qtype " .. q.name .. " --out " .. out }
    all[#all + 1] = q.__file
  end
  jobs[#jobs + 1] = { outputs = TABLE_OUTPUTS, inputs = all, args = "--table", desc = "generated/c/qtypes.c (+3)" }
  return jobs
end

-- Contracts sorted by ggml type id: the one list every table and declaration comes from.
local function load_quants(dir)
  local list = {}
  for _, name in ipairs(util.list(dir .. "/quant", "%.ya?ml$")) do
    local path = dir .. "/quant/" .. name
    local q, err = yaml.load(path)
    if not q then error(err, 0) end
    q.__file = path
    local errs = expr.check_quant(q)
    if #errs > 0 then
      local lines = {}
      for _, e in ipairs(errs) do lines[#lines + 1] = path .. ": " .. e.path .. (e.col and (":" .. e.col) or "") .. ": " .. e.msg end
      error(table.concat(lines, "\n"), 0)
    end
    list[#list + 1] = q
  end
  table.sort(list, function(a, b) return a.ggml_type < b.ggml_type end)
  -- A contract's ggml_type must be the GGUF spec's type of that block size (a wrong id would misread files).
  local spec = {}
  for _, t in ipairs(require("ggml_types")) do spec[t[1]] = t end
  for _, q in ipairs(list) do
    local t = spec[q.ggml_type]
    if t and (t[3] ~= q.block_elements or t[4] ~= q.block_bytes) then
      error(string.format("%s: ggml_type %d is the GGUF spec's %s, %d elements in %d bytes, not %d in %d", q.__file,
                          q.ggml_type, t[2], t[3], t[4], q.block_elements, q.block_bytes), 0)
    end
  end
  for i = 2, #list do
    if list[i].ggml_type == list[i - 1].ggml_type then
      error(list[i].__file .. ": ggml_type " .. list[i].ggml_type .. " is also used by " .. list[i - 1].__file, 0)
    end
  end
  return list
end

local function acc_list(q)
  local accs = q.accumulators or { "f32", "f64" }
  local set = {}
  for _, a in ipairs(accs) do
    if a ~= "f32" and a ~= "f64" and a ~= "q8" then
      error(q.__file .. ": unknown accumulator '" .. tostring(a) .. "' (f32, f64 or q8)", 0)
    end
    set[a] = true
  end
  return set
end

-- generated/c/quant_<q>.c
local function emit_qtype(q)
  local p = "qmoe_" .. q.name
  local be, bb = q.block_elements, q.block_bytes
  local accs = acc_list(q)
  local out = {
    util.banner("c", "codegen/gen_c.lua", q.__file),
    string.format("/* %s: decoder, row dequantization and dot products (ggml type %d, %d elements in %d bytes). */",
                  q.name, q.ggml_type, be, bb),
    "#include <math.h>",
    "#include \"qmoe.h\"",
    "#include \"qtypes.h\"",
    expr.prelude("c"),
    expr.emit(q, "c", p),
    string.format([[
int %s_dequant_row(const void *src, float *dst, int64_t n) {
  if (n < 0 || n %% %d != 0) {
    qmoe_set_error("%s dequant_row: n = %%lld is not a multiple of the block size %d", (long long)n);
    return QMOE_EINVAL;
  }
  const uint8_t *b = (const uint8_t *)src;
  for (int64_t k = 0; k < n / %d; k++) %s_decode_block(b + k * %d, dst + k * %d);
  return 0;
}
]], p, be, q.name, be, be, p, bb, be),
  }
  -- f32: one sequential accumulator, acc = acc + w*x with the product rounded (no FMA: -ffp-contract=off).
  -- f64: each product (double)w*(double)x is exact; summed sequentially in double.
  local function dot(acc_t, suffix)
    local mul = acc_t == "float" and "y[i] * x[k * %d + i]" or "(double)y[i] * (double)x[k * %d + i]"
    return string.format([[
%s %s_dot_%s(const void *row, const float *x, int64_t n) {
  if (n < 0 || n %% %d != 0) {
    qmoe_set_error("%s dot_%s: n = %%lld is not a multiple of the block size %d", (long long)n);
    return NAN;
  }
  const uint8_t *b = (const uint8_t *)row;
  %s acc = 0;
  float y[%d];
  for (int64_t k = 0; k < n / %d; k++) {
    %s_decode_block(b + k * %d, y);
    for (int i = 0; i < %d; i++) acc = acc + %s;
  }
  return acc;
}
]], acc_t, p, suffix, be, q.name, suffix, be, acc_t, be, be, p, bb, be, string.format(mul, be))
  end
  if accs.f32 then out[#out + 1] = dot("float", "f32") end
  if accs.f64 then out[#out + 1] = dot("double", "f64") end
  return table.concat(out, "\n")
end

local FIELD_ENUM = { u8 = "QMOE_QF_U8", i8 = "QMOE_QF_I8", u16 = "QMOE_QF_U16", i16 = "QMOE_QF_I16",
                     f16 = "QMOE_QF_F16", bf16 = "QMOE_QF_BF16", f32 = "QMOE_QF_F32" }

local function emit_qtypes_h(list, sources)
  local out = {
    util.banner("c", "codegen/gen_c.lua", sources),
    "/* qtypes.h: per-qtype functions and block layouts of the quant contracts (the table is in qtypes.c). */",
    "#ifndef QMOE_QTYPES_H", "#define QMOE_QTYPES_H", "#include <stdint.h>", "#include \"qmoe.h\"", "",
    "/* Field element types of a block layout (contracts/quant fields[].type). */",
    "enum { QMOE_QF_U8, QMOE_QF_I8, QMOE_QF_U16, QMOE_QF_I16, QMOE_QF_F16, QMOE_QF_BF16, QMOE_QF_F32 };",
    "typedef struct { const char *name; int type; int count; int offset; } qmoe_qfield;",
    "typedef struct { int ggml_type; int nfields; const qmoe_qfield *fields; } qmoe_qlayout;",
    "/* The GGUF spec's types that no contract lists (name as GGUF writes it, ggml's block size). */",
    "typedef struct { int id; const char *name; int64_t block_elements, block_bytes; } qmoe_ggml_type_row;",
    "extern const qmoe_ggml_type_row qmoe_ggml_other_types[];",
    "extern const int qmoe_ggml_other_type_count;",
    "/* The block layout of a qtype, NULL if unknown. */",
    "const qmoe_qlayout *qmoe_qlayout_by_id(int ggml_type);", "",
    "/* ggml type ids of the contracts. */",
    "enum {",
  }
  for _, q in ipairs(list) do out[#out + 1] = string.format("  QMOE_GGML_%s = %d,", q.name:upper(), q.ggml_type) end
  out[#out + 1] = "};"
  out[#out + 1] = ""
  for _, q in ipairs(list) do
    local p = "qmoe_" .. q.name
    local accs = acc_list(q)
    out[#out + 1] = string.format("int %s_dequant_row(const void *src, float *dst, int64_t n);", p)
    if accs.f32 then out[#out + 1] = string.format("float %s_dot_f32(const void *row, const float *x, int64_t n);", p) end
    if accs.f64 then out[#out + 1] = string.format("double %s_dot_f64(const void *row, const float *x, int64_t n);", p) end
  end
  out[#out + 1] = ""
  out[#out + 1] = "#endif"
  return table.concat(out, "\n") .. "\n"
end

-- A contract number as a C double literal that reads back as the same double.
local function num_lit(v)
  if math.type(v) == "integer" then return tostring(v) .. ".0" end
  local t = string.format("%.17g", v)
  if not t:find("[%.eEn]") then t = t .. ".0" end
  return t
end

local function emit_qtypes_c(list, sources)
  local out = {
    util.banner("c", "codegen/gen_c.lua", sources),
    "/* qtypes.c: the qtype table (one entry per quant contract, sorted by ggml type) and its lookups. */",
    "#include <ctype.h>", "#include <string.h>", "#include \"qmoe.h\"", "#include \"qtypes.h\"", "",
  }
  for _, q in ipairs(list) do
    out[#out + 1] = string.format("static int quantize_%s(const float *src, void *dst, int64_t n) { return qmoe_quantize_row(%d, src, dst, n); }",
                                  q.name, q.ggml_type)
  end
  out[#out + 1] = ""
  for _, q in ipairs(list) do
    out[#out + 1] = string.format("static const qmoe_qfield fields_%s[] = {", q.name)
    for _, f in ipairs(q.fields) do
      out[#out + 1] = string.format("  { \"%s\", %s, %d, %d },", f.name, FIELD_ENUM[f.type], f.count, f.offset)
    end
    out[#out + 1] = "};"
  end
  out[#out + 1] = ""
  out[#out + 1] = "static const qmoe_qlayout layouts[] = {"
  for _, q in ipairs(list) do
    out[#out + 1] = string.format("  { %d, %d, fields_%s },", q.ggml_type, #q.fields, q.name)
  end
  out[#out + 1] = "};"
  out[#out + 1] = ""
  -- The GGUF spec's other types: those no contract lists.
  local have = {}
  for _, q in ipairs(list) do have[q.ggml_type] = true end
  out[#out + 1] = "/* The GGUF spec's types no quant contract lists (codegen/lib/ggml_types.lua): read past and copied, not decoded. */"
  out[#out + 1] = "const qmoe_ggml_type_row qmoe_ggml_other_types[] = {"
  local nother = 0
  for _, t in ipairs(require("ggml_types")) do
    if not have[t[1]] then
      out[#out + 1] = string.format("  { %d, \"%s\", %d, %d },", t[1], t[2], t[3], t[4])
      nother = nother + 1
    end
  end
  out[#out + 1] = "};"
  out[#out + 1] = string.format("const int qmoe_ggml_other_type_count = %d;", nother)
  out[#out + 1] = ""
  out[#out + 1] = "static const qmoe_qtype_info table[] = {"
  for _, q in ipairs(list) do
    local accs = acc_list(q)
    local mask = {}
    if accs.f32 then mask[#mask + 1] = "QMOE_ACC_BIT_F32" end
    if accs.f64 then mask[#mask + 1] = "QMOE_ACC_BIT_F64" end
    if accs.q8 then mask[#mask + 1] = "QMOE_ACC_BIT_Q8" end -- q8 needs no dot of its own: dot_f32 on Q8(x)
    local p = "qmoe_" .. q.name
    local qz = q.quantizer or {}
    out[#out + 1] = string.format("  { \"%s\", %d, %d, %d, %s, %s_dequant_row, %s, %s, quantize_%s, \"%s\", %s, %s, %d },", q.name,
                                  q.ggml_type, q.block_elements, q.block_bytes, #mask > 0 and table.concat(mask, " | ") or "0", p,
                                  accs.f32 and (p .. "_dot_f32") or "NULL", accs.f64 and (p .. "_dot_f64") or "NULL", q.name,
                                  qz.strategy or "generic", num_lit(qz.rmse_max or -1), num_lit(qz.total_error_max or 0.002),
                                  q.file_type or -1)
  end
  out[#out + 1] = "};"
  out[#out + 1] = [[
#define NTYPES (sizeof table / sizeof table[0])

size_t qmoe_qtype_count(void) { return NTYPES; }

const qmoe_qtype_info *qmoe_qtype_at(size_t i) { return i < NTYPES ? &table[i] : NULL; }

const qmoe_qtype_info *qmoe_qtype_by_id(int ggml_type) {
  for (size_t i = 0; i < NTYPES; i++)
    if (table[i].ggml_type == ggml_type) return &table[i];
  qmoe_set_error("ggml type %d is not a quant format qmoe supports (no contracts/quant/*.yaml has it)", ggml_type);
  return NULL;
}

const qmoe_qlayout *qmoe_qlayout_by_id(int ggml_type) {
  for (size_t i = 0; i < NTYPES; i++)
    if (layouts[i].ggml_type == ggml_type) return &layouts[i];
  return NULL;
}

/* Names compare without case and underscores: "q6k", "q6_k" and "Q6_K" are one name. */
static int same_name(const char *a, const char *b) {
  for (;;) {
    while (*a == '_') a++;
    while (*b == '_') b++;
    if (!*a || !*b) return !*a && !*b;
    if (tolower((unsigned char)*a) != tolower((unsigned char)*b)) return 0;
    a++, b++;
  }
}

const qmoe_qtype_info *qmoe_qtype_by_name(const char *name) {
  if (!name) {
    qmoe_set_error("qmoe_qtype_by_name: name is NULL");
    return NULL;
  }
  for (size_t i = 0; i < NTYPES; i++)
    if (same_name(table[i].name, name)) return &table[i];
  qmoe_set_error("unknown quant format '%s' (known: ]] .. (function()
    local names = {}
    for _, q in ipairs(list) do names[#names + 1] = q.name end
    return table.concat(names, ", ")
  end)() .. [[)", name);
  return NULL;
}

int64_t qmoe_qtype_row_bytes(const qmoe_qtype_info *qt, int64_t n) {
  if (!qt || n < 0 || n % qt->block_elements != 0) return -1;
  return n / qt->block_elements * qt->block_bytes;
}
]]
  return table.concat(out, "\n")
end

local function emit_qdecode_h(list, sources)
  local out = {
    util.banner("c", "codegen/gen_c.lua", sources),
    "/* qdecode.h: every quant contract's decoder as static inline C (float qmoe_<q>_decode(block, i) and",
    " * qmoe_<q>_decode_block(block, y)), for code that needs single elements: quantizers and tests. */",
    "#ifndef QMOE_QDECODE_H", "#define QMOE_QDECODE_H",
    expr.prelude("c"),
  }
  for _, q in ipairs(list) do out[#out + 1] = expr.emit(q, "c", "qmoe_" .. q.name) end
  out[#out + 1] = "#endif"
  return table.concat(out, "\n") .. "\n"
end

local function f32_bits(x) return (string.unpack("<I4", string.pack("<f", x))) end

local function emit_vectors_h(list, sources)
  local out = {
    util.banner("c", "codegen/gen_c.lua", sources),
    "/* quant_vectors.h: the test vectors of the quant contracts (bytes and the f32 bit patterns they decode to). */",
    "#ifndef QMOE_QUANT_VECTORS_H", "#define QMOE_QUANT_VECTORS_H", "#include <stdint.h>",
    "typedef struct { const char *qtype; int ggml_type; int index; int nbytes; const uint8_t *bytes; int nvalues; const uint32_t *bits; } qmoe_quant_vector;",
  }
  local entries = {}
  for _, q in ipairs(list) do
    for ti, tv in ipairs(q.test_vectors or {}) do
      local bytes = assert(expr.unhex(tv.bytes))
      local id = string.format("%s_%d", q.name, ti)
      local bl = {}
      for k = 1, #bytes do bl[#bl + 1] = tostring(bytes:byte(k)) end
      out[#out + 1] = string.format("static const uint8_t qv_bytes_%s[%d] = {", id, #bytes)
      for k = 1, #bl, 24 do out[#out + 1] = "  " .. table.concat(bl, ",", k, math.min(k + 23, #bl)) .. "," end
      out[#out + 1] = "};"
      local vl = {}
      for _, v in ipairs(tv.values) do
        local w = math.type(v) == "integer" and expr.f32(v + 0.0) or expr.f32(v)
        vl[#vl + 1] = string.format("0x%08x", f32_bits(w))
      end
      out[#out + 1] = string.format("static const uint32_t qv_bits_%s[%d] = {", id, #vl)
      for k = 1, #vl, 8 do out[#out + 1] = "  " .. table.concat(vl, ",", k, math.min(k + 7, #vl)) .. "," end
      out[#out + 1] = "};"
      entries[#entries + 1] = string.format("  { \"%s\", %d, %d, %d, qv_bytes_%s, %d, qv_bits_%s },", q.name, q.ggml_type, ti,
                                            #bytes, id, #vl, id)
    end
  end
  out[#out + 1] = "static const qmoe_quant_vector qmoe_quant_vectors[] = {"
  for _, e in ipairs(entries) do out[#out + 1] = e end
  out[#out + 1] = "};"
  out[#out + 1] = string.format("#define QMOE_QUANT_VECTOR_COUNT %d", #entries)
  out[#out + 1] = "#endif"
  return table.concat(out, "\n") .. "\n"
end

local function main(argv)
  local o = util.parse_args(argv, { qtype = "", out = "", table = false, contracts = "contracts" }, USAGE)
  local list = load_quants(o.contracts)
  if o.table then
    local sources = {}
    for _, q in ipairs(list) do sources[#sources + 1] = q.__file end
    table.sort(sources)
    util.write_if_changed(TABLE_OUTPUTS[1], emit_qtypes_c(list, sources))
    util.write_if_changed(TABLE_OUTPUTS[2], emit_qtypes_h(list, sources))
    util.write_if_changed(TABLE_OUTPUTS[3], emit_qdecode_h(list, sources))
    util.write_if_changed(TABLE_OUTPUTS[4], emit_vectors_h(list, sources))
    return
  end
  if o.qtype == "" or o.out == "" then error(USAGE, 0) end
  for _, q in ipairs(list) do
    if q.name == o.qtype then
      util.write_if_changed(o.out, emit_qtype(q))
      return
    end
  end
  error("no contract named '" .. o.qtype .. "' in " .. o.contracts .. "/quant", 0)
end

if arg and arg[0] and arg[0]:match("gen_c%.lua$") then main(arg) end
return M
