-- gen_stages.lua: writes generated/c/stage_table.{h,c} from contracts/stages/*.yaml (qtypes resolved
-- against contracts/quant/*.yaml): one qmoe_stage_info per stage, indexed by the stage's `order`, which
-- must match runtime/backend.h's qmoe_stage enum (tests/unit/test_stage_table.c checks that it does).
-- Usage: qmoe-lua codegen/gen_stages.lua [--contracts DIR] --out-c FILE --out-h FILE
local util = require("util")
local M = {}
local USAGE = "usage: qmoe-lua codegen/gen_stages.lua [--contracts DIR] --out-c FILE --out-h FILE"
local SCRIPT = "codegen/gen_stages.lua"
local OUT_C, OUT_H = "generated/c/stage_table.c", "generated/c/stage_table.h"

function M.plan(ctx)
  local inputs = {}
  for _, s in ipairs(ctx.stages.list) do inputs[#inputs + 1] = s.__file end
  for _, q in ipairs(ctx.quant.list) do inputs[#inputs + 1] = q.__file end
  return { { outputs = { OUT_C, OUT_H }, inputs = inputs, desc = OUT_C,
             args = "--out-c " .. OUT_C .. " --out-h " .. OUT_H } }
end

-- "file:line" of TBL's value under KEY (of its `name` when KEY is nil); FILE defaults to TBL.__file.
local function where(tbl, key, file)
  local line = yaml.pos(tbl, key or "name")
  return (file or tbl.__file or "?") .. (line and (":" .. line) or "")
end

local INT_TYPES = { int = true, i32 = true, i64 = true, u32 = true, u64 = true }
local FLOAT_TYPES = { f32 = true, f64 = true, float = true, double = true }
local DTYPES = { f32 = "QMOE_DTYPE_F32", i32 = "QMOE_DTYPE_I32", qtype = "QMOE_DTYPE_QTYPE" }

local function c_ident(s) return (s:upper():gsub("[^%w]", "_")) end

-- The qtypes a stage lists (`all` or names, matched by name or alias), as sorted quant contracts.
local function resolve_qtypes(ctx, st, errs)
  local byname = {}
  for _, q in ipairs(ctx.quant.list) do
    byname[q.name] = q
    for _, a in ipairs(q.aliases or {}) do byname[a] = q end
  end
  local list = {}
  if st.qtypes == "all" then
    for _, q in ipairs(ctx.quant.list) do list[#list + 1] = q end
  elseif type(st.qtypes) == "table" then
    for _, n in ipairs(st.qtypes) do
      local q = byname[n]
      if q then list[#list + 1] = q
      else errs[#errs + 1] = where(st, "qtypes") .. ": qtype '" .. tostring(n) .. "' has no contracts/quant/*.yaml" end
    end
  end
  table.sort(list, function(a, b) return a.ggml_type < b.ggml_type end)
  return list
end

-- Normalizes one stage contract into the record the emitters use; errors are collected in ERRS.
local function stage_record(ctx, st, errs)
  local r = { name = st.name, trace = st.trace or st.name, file = st.__file, order = st.order,
              ints = {}, floats = {}, bufs = {}, n_inputs = #(st.inputs or {}) }
  local vb = {}
  for _, v in ipairs(st.varies_by or {}) do vb[v] = true end
  r.by_qtype, r.by_acc = vb.qtype or false, vb.acc or false
  r.qtypes = r.by_qtype and resolve_qtypes(ctx, st, errs) or {}
  if r.by_qtype and #r.qtypes == 0 then errs[#errs + 1] = where(st, "qtypes") .. ": stage varies by qtype but lists none" end
  r.accs = {}
  for _, a in ipairs(st.accumulators or (r.by_acc and {} or {})) do
    if a ~= "f32" and a ~= "f64" then errs[#errs + 1] = where(st, "accumulators") .. ": unknown accumulator '" .. a .. "'" end
    r.accs[#r.accs + 1] = a
  end
  local param_index = {}
  for _, p in ipairs(st.params or {}) do
    if INT_TYPES[p.type] then
      r.ints[#r.ints + 1] = p.name
      param_index[p.name] = #r.ints - 1
    elseif FLOAT_TYPES[p.type] then
      r.floats[#r.floats + 1] = p.name
    else
      errs[#errs + 1] = where(p, "type", st.__file) .. ": param '" .. tostring(p.name) .. "' has type '" .. tostring(p.type) ..
                        "'; expected an int type (int, i32, i64) or a float type (f32, f64)"
    end
  end
  for _, kl in ipairs({ { "inputs", st.inputs or {} }, { "outputs", st.outputs or {} } }) do
    local kind = kl[1]
    for _, b in ipairs(kl[2]) do
      if not DTYPES[b.dtype] then
        errs[#errs + 1] = where(b, "dtype", st.__file) .. ": buffer '" .. tostring(b.name) .. "' has dtype '" .. tostring(b.dtype) .. "'; expected f32, i32 or qtype"
      end
      local dims = {}
      for _, d in ipairs(b.shape or {}) do
        if math.type(d) == "integer" then dims[#dims + 1] = { lit = d }
        elseif param_index[d] then dims[#dims + 1] = { param = param_index[d], name = d }
        else errs[#errs + 1] = where(b, "shape", st.__file) .. ": shape of '" .. tostring(b.name) .. "' names '" .. tostring(d) .. "', which is not an int param of the stage" end
      end
      b.__dims, b.__kind = dims, kind
    end
  end
  for _, b in ipairs(st.inputs or {}) do r.bufs[#r.bufs + 1] = b end
  for _, b in ipairs(st.outputs or {}) do r.bufs[#r.bufs + 1] = b end
  if #r.ints > 8 then errs[#errs + 1] = where(st, "params") .. ": more than QMOE_STAGE_MAX_PARAMS = 8 int params" end
  if #r.floats > 4 then errs[#errs + 1] = where(st, "params") .. ": more than QMOE_STAGE_MAX_FPARAMS = 4 float params" end
  if #r.bufs > 8 then errs[#errs + 1] = where(st, "inputs") .. ": more than QMOE_STAGE_MAX_BUFS = 8 buffers" end
  return r
end

-- All stages in `order` (0..n-1, each once), or raises listing every problem.
function M.stages(ctx)
  local errs, recs, seen = {}, {}, {}
  for _, st in ipairs(ctx.stages.list) do
    local r = stage_record(ctx, st, errs)
    if math.type(r.order) ~= "integer" then
      errs[#errs + 1] = where(st) .. ": stage '" .. tostring(st.name) .. "' has no integer `order` (its index in backend.h's qmoe_stage)"
    elseif seen[r.order] then
      errs[#errs + 1] = where(st, "order") .. ": order " .. r.order .. " is also used by " .. seen[r.order]
    else
      seen[r.order] = st.__file
    end
    recs[#recs + 1] = r
  end
  table.sort(recs, function(a, b) return (a.order or 1e9) < (b.order or 1e9) end)
  for i, r in ipairs(recs) do
    if r.order ~= i - 1 and math.type(r.order) == "integer" then
      errs[#errs + 1] = r.file .. ": order " .. r.order .. " leaves a gap: orders must be 0.." .. (#recs - 1)
      break
    end
  end
  if #errs > 0 then error(table.concat(errs, "\n"), 0) end
  return recs
end

local function cstr(s) return string.format("%q", s):gsub("\\\n", "\\n") end

local function emit_header(recs, sources)
  local o = { util.banner("c", SCRIPT, sources),
    "/* stage_table.h: what the stage contracts say about each stage of backend.h's qmoe_stage: names, the",
    " * qtype and accumulator variants, param and buffer lists and shapes. */",
    "#ifndef QMOE_STAGE_TABLE_H", "#define QMOE_STAGE_TABLE_H", "#include <stdint.h>", '#include "backend.h"',
    '#include "qmoe.h"', "",
    "typedef enum { QMOE_DTYPE_F32 = 0, QMOE_DTYPE_I32 = 1, QMOE_DTYPE_QTYPE = 2 } qmoe_dtype;",
    "",
    "/* One dimension of a buffer shape: the int param p[param] when param >= 0, else the literal value. */",
    "typedef struct { int param; int64_t value; } qmoe_stage_dim;",
    "",
    "typedef struct {",
    "  const char *name;            /* buffer name in the contract (\"W\", \"x\", ...) */",
    "  qmoe_dtype dtype;            /* f32, i32, or the call's qtype (raw GGUF rows) */",
    "  int is_output;",
    "  int n_dims;",
    "  const qmoe_stage_dim *dims; /* outermost first; a qtype buffer's last dim is its row length */",
    "  const char *may_alias;       /* input this output may share memory with, or NULL */",
    "} qmoe_stage_buf;",
    "",
    "typedef struct {",
    "  const char *name;            /* contract name (\"matvec\") */",
    "  const char *trace;           /* trace/profile name */",
    "  qmoe_stage id;               /* the contract's `order` */",
    "  const char *file;            /* contracts/stages/<name>.yaml */",
    "  int varies_by_qtype, varies_by_acc;",
    "  int n_qtypes;",
    "  const int *qtypes;           /* GGUF type ids of the qtype variants, ascending */",
    "  int n_accs;",
    "  const qmoe_acc *accs;        /* accumulators the contract lists */",
    "  int n_params;",
    "  const char *const *params;   /* int params: qmoe_stage_call.p[] order */",
    "  int n_fparams;",
    "  const char *const *fparams;  /* float params: qmoe_stage_call.f[] order */",
    "  int n_inputs, n_outputs;",
    "  const char *const *buf_names; /* inputs then outputs: qmoe_stage_call.buf[] order */",
    "  const qmoe_stage_buf *bufs;",
    "} qmoe_stage_info;",
    "",
    string.format("enum { QMOE_STAGE_TABLE_COUNT = %d }; /* stage contracts; equals QMOE_STAGE_COUNT when in sync */", #recs),
    "",
    "/* The stage with id STAGE (the contract whose `order` is STAGE), NULL if none. */",
    "const qmoe_stage_info *qmoe_stage_info_get(qmoe_stage stage);",
    "/* The stage named NAME (contract name), NULL if none. */",
    "const qmoe_stage_info *qmoe_stage_by_name(const char *name);",
    "/* Whether the stage has a variant for GGML_TYPE (stages that do not vary by qtype: ggml_type == -1). */",
    "int qmoe_stage_has_qtype(const qmoe_stage_info *si, int ggml_type);",
    "/* Bytes buffer BUF needs for int params P, from the contract's shape; a qtype buffer uses QT's rows.",
    " * -1 when a dim is negative, a row is not a whole number of blocks, QT is missing or the size overflows. */",
    "int64_t qmoe_stage_buf_bytes(const qmoe_stage_info *si, int buf, const int64_t *p, const qmoe_qtype_info *qt);",
    "",
    "/* Indices into qmoe_stage_call.p[] (P), .f[] (F) and .buf[] (B), named after the contracts. */",
  }
  for _, r in ipairs(recs) do
    local names = {}
    for i, n in ipairs(r.ints) do names[#names + 1] = string.format("QMOE_P_%s_%s = %d", c_ident(r.name), c_ident(n), i - 1) end
    for i, n in ipairs(r.floats) do names[#names + 1] = string.format("QMOE_F_%s_%s = %d", c_ident(r.name), c_ident(n), i - 1) end
    for i, b in ipairs(r.bufs) do names[#names + 1] = string.format("QMOE_B_%s_%s = %d", c_ident(r.name), c_ident(b.name), i - 1) end
    local seen = {}
    for _, n in ipairs(names) do
      local id = n:match("^(%S+)")
      if seen[id] then error(r.file .. ": two params or buffers map to the C name " .. id .. " (names differ only in case)", 0) end
      seen[id] = true
    end
    o[#o + 1] = "enum { " .. table.concat(names, ", ") .. " };"
  end
  o[#o + 1] = ""
  o[#o + 1] = "#endif"
  return table.concat(o, "\n") .. "\n"
end

local function emit_c(recs, sources)
  local o = { util.banner("c", SCRIPT, sources),
    "/* stage_table.c: the stage contracts as data (see stage_table.h). */",
    "#include <string.h>", '#include "stage_table.h"', "" }
  for _, r in ipairs(recs) do
    local id = c_ident(r.name)
    local function strs(list)
      local t = {}
      for _, s in ipairs(list) do t[#t + 1] = cstr(s) end
      return t
    end
    if #r.qtypes > 0 then
      local ids = {}
      for _, q in ipairs(r.qtypes) do ids[#ids + 1] = string.format("%d /* %s */", q.ggml_type, q.name) end
      o[#o + 1] = string.format("static const int %s_qtypes[] = { %s };", r.name, table.concat(ids, ", "))
    end
    if #r.accs > 0 then
      local a = {}
      for _, x in ipairs(r.accs) do a[#a + 1] = "QMOE_ACC_" .. x:upper() end
      o[#o + 1] = string.format("static const qmoe_acc %s_accs[] = { %s };", r.name, table.concat(a, ", "))
    end
    if #r.ints > 0 then o[#o + 1] = string.format("static const char *const %s_params[] = { %s };", r.name, table.concat(strs(r.ints), ", ")) end
    if #r.floats > 0 then o[#o + 1] = string.format("static const char *const %s_fparams[] = { %s };", r.name, table.concat(strs(r.floats), ", ")) end
    local bnames, bufs = {}, {}
    for i, b in ipairs(r.bufs) do
      bnames[#bnames + 1] = cstr(b.name)
      local dims = {}
      for _, d in ipairs(b.__dims) do
        dims[#dims + 1] = d.param and string.format("{ %d, 0 } /* %s */", d.param, d.name) or string.format("{ -1, %d }", d.lit)
      end
      o[#o + 1] = string.format("static const qmoe_stage_dim %s_dims%d[] = { %s };", r.name, i - 1,
                                #dims > 0 and table.concat(dims, ", ") or "{ -1, 1 }")
      bufs[#bufs + 1] = string.format("  { %s, %s, %d, %d, %s_dims%d, %s },", cstr(b.name), DTYPES[b.dtype],
                                      b.__kind == "outputs" and 1 or 0, #b.__dims, r.name, i - 1,
                                      b.may_alias and cstr(b.may_alias) or "NULL")
    end
    o[#o + 1] = string.format("static const char *const %s_buf_names[] = { %s };", r.name, table.concat(bnames, ", "))
    o[#o + 1] = string.format("static const qmoe_stage_buf %s_bufs[] = {", r.name)
    for _, l in ipairs(bufs) do o[#o + 1] = l end
    o[#o + 1] = "};"
    o[#o + 1] = ""
    r.__id = id
  end
  -- With no stage contracts yet the table has one zeroed slot that the lookups never return.
  o[#o + 1] = "static const qmoe_stage_info stages[QMOE_STAGE_TABLE_COUNT > 0 ? QMOE_STAGE_TABLE_COUNT : 1] = {"
  for _, r in ipairs(recs) do
    o[#o + 1] = string.format("  { %s, %s, (qmoe_stage)%d, %s, %d, %d, %d, %s, %d, %s, %d, %s, %d, %s, %d, %d, %s_buf_names, %s_bufs },",
      cstr(r.name), cstr(r.trace), r.order, cstr(r.file), r.by_qtype and 1 or 0, r.by_acc and 1 or 0,
      #r.qtypes, #r.qtypes > 0 and (r.name .. "_qtypes") or "NULL",
      #r.accs, #r.accs > 0 and (r.name .. "_accs") or "NULL",
      #r.ints, #r.ints > 0 and (r.name .. "_params") or "NULL",
      #r.floats, #r.floats > 0 and (r.name .. "_fparams") or "NULL",
      r.n_inputs, #r.bufs - r.n_inputs, r.name, r.name)
  end
  if #recs == 0 then o[#o + 1] = "  { 0 }" end
  o[#o + 1] = "};"
  o[#o + 1] = [[

static const size_t n_stages = QMOE_STAGE_TABLE_COUNT;

const qmoe_stage_info *qmoe_stage_info_get(qmoe_stage stage) {
  if ((size_t)stage >= n_stages) return NULL;
  return &stages[stage];
}

const qmoe_stage_info *qmoe_stage_by_name(const char *name) {
  for (size_t i = 0; name && i < n_stages; i++)
    if (strcmp(stages[i].name, name) == 0) return &stages[i];
  return NULL;
}

int qmoe_stage_has_qtype(const qmoe_stage_info *si, int ggml_type) {
  if (!si->varies_by_qtype) return ggml_type == -1;
  for (int i = 0; i < si->n_qtypes; i++)
    if (si->qtypes[i] == ggml_type) return 1;
  return 0;
}

int64_t qmoe_stage_buf_bytes(const qmoe_stage_info *si, int buf, const int64_t *p, const qmoe_qtype_info *qt) {
  if (buf < 0 || buf >= si->n_inputs + si->n_outputs) return -1;
  const qmoe_stage_buf *b = &si->bufs[buf];
  int64_t elems = 1;
  for (int i = 0; i < b->n_dims; i++) {
    int64_t d = b->dims[i].param >= 0 ? p[b->dims[i].param] : b->dims[i].value;
    if (d < 0) return -1;
    if (b->dtype == QMOE_DTYPE_QTYPE && i == b->n_dims - 1) {
      if (!qt || d % qt->block_elements) return -1;
      if (__builtin_mul_overflow(elems, d / qt->block_elements, &elems) ||
          __builtin_mul_overflow(elems, (int64_t)qt->block_bytes, &elems)) return -1;
      return elems;
    }
    if (__builtin_mul_overflow(elems, d, &elems)) return -1;
  }
  if (b->dtype == QMOE_DTYPE_QTYPE) return -1; /* a qtype buffer with no dims */
  if (__builtin_mul_overflow(elems, (int64_t)4, &elems)) return -1;
  return elems;
}]]
  return table.concat(o, "\n") .. "\n"
end

local function main(argv)
  local o = util.parse_args(argv, { contracts = "contracts", out_c = "", out_h = "" }, USAGE)
  if o.out_c == "" or o.out_h == "" then error(USAGE, 0) end
  local ctx = require("contracts").load_all(o.contracts)
  local recs = M.stages(ctx)
  local sources = {}
  for _, r in ipairs(recs) do sources[#sources + 1] = r.file end
  if #sources == 0 then sources = { o.contracts .. "/stages (none yet)" } end
  util.write_if_changed(o.out_h, emit_header(recs, sources))
  util.write_if_changed(o.out_c, emit_c(recs, sources))
end

if arg and arg[0] and arg[0]:match("gen_stages%.lua$") then main(arg) end
return M
