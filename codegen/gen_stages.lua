-- gen_stages.lua: writes the stage model from contracts/stages/*.yaml (qtypes resolved against
-- contracts/quant/*.yaml), every file from the one normalized list M.stages():
--   generated/c/stage_ids.h    the qmoe_stage enum (a stage's `order`) and the QMOE_P_/F_/B_ index names
--   generated/c/stage_calls.h  one typed builder qmoe_call_<stage>() per stage (included by backend.h)
--   generated/c/stage_table.{h,c}  qmoe_stage_info per stage: variants, params (with their minimum),
--                              buffers and shapes, and the contract's `requires` rules as a check function
--   generated/c/ref_table.c    the CPU reference's dispatch table: qmoe_ref_<stage>() per stage
-- Usage: qmoe-lua codegen/gen_stages.lua [--contracts DIR] --out-dir DIR
local util = require("util")
local M = {}
local USAGE = "usage: qmoe-lua codegen/gen_stages.lua [--contracts DIR] --out-dir DIR"
local SCRIPT = "codegen/gen_stages.lua"
local OUT_DIR = "generated/c"
local OUTPUTS = { "stage_table.c", "stage_table.h", "stage_ids.h", "stage_calls.h", "ref_table.c" }

function M.plan(ctx)
  local inputs = {}
  for _, s in ipairs(ctx.stages.list) do inputs[#inputs + 1] = s.__file end
  for _, q in ipairs(ctx.quant.list) do inputs[#inputs + 1] = q.__file end
  local outs = {}
  for _, f in ipairs(OUTPUTS) do outs[#outs + 1] = OUT_DIR .. "/" .. f end
  return { { outputs = outs, inputs = inputs, desc = OUT_DIR .. "/stage_*", args = "--out-dir " .. OUT_DIR } }
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

-- A stage's `requires` rule: `check` is a C-like condition over the stage's params (ints are int64, floats
-- double; operators < <= > >= == != && || ! + - * / % and parentheses; int literals, float literals with a
-- `.`), `error` the message when it fails, naming params as {name}. Compiled to a C condition over p[]/f[]
-- and a printf format with its arguments. A divisor must be a positive literal or an int param whose minimum
-- is at least 1, so a rule can never divide by zero (the generic range checks run before the rules).
local CHECK_OPS = { "<=", ">=", "==", "!=", "&&", "||", "<", ">", "!", "+", "-", "*", "/", "%", "(", ")" }
local function compile_rule(r, req, file, errs)
  local at = where(req, "check", file)
  local src = req.check
  if type(src) ~= "string" or type(req.error) ~= "string" then
    errs[#errs + 1] = at .. ": a `requires` entry needs `check` and `error` strings"
    return nil
  end
  local out, pos, prev = {}, 1, nil
  while pos <= #src do
    local ws = src:match("^%s+", pos)
    if ws then pos = pos + #ws
    else
      local tok, kind = src:match("^%d+%.%d*", pos), "float"
      if not tok then tok, kind = src:match("^%d+", pos), "int" end
      if not tok then tok, kind = src:match("^[%a_][%w_]*", pos), "name" end
      if not tok then
        for _, op in ipairs(CHECK_OPS) do
          if src:sub(pos, pos + #op - 1) == op then tok, kind = op, "op" break end
        end
      end
      if not tok then
        errs[#errs + 1] = at .. ": `" .. src .. "`: unexpected '" .. src:sub(pos, pos) .. "'"
        return nil
      end
      local c = tok
      if kind == "name" then
        if r.param_index[tok] then c = "p[" .. r.param_index[tok] .. "]"
        elseif r.fparam_index[tok] then c = "f[" .. r.fparam_index[tok] .. "]"
        else errs[#errs + 1] = at .. ": `" .. src .. "` names '" .. tok .. "', which is not a param of the stage" return nil end
      end
      if prev == "/" or prev == "%" then
        local ok = (kind == "int" and tonumber(tok) > 0) or (kind == "name" and r.param_index[tok] and r.mins[tok] >= 1)
        if not ok then
          errs[#errs + 1] = at .. ": `" .. src .. "`: the divisor after '" .. prev .. "' must be a positive int literal or an int param with min >= 1"
          return nil
        end
      end
      out[#out + 1] = c
      prev = tok
      pos = pos + #tok
    end
  end
  local args = {}
  local fmt = req.error:gsub("%%", "%%%%"):gsub("{([%w_]+)}", function(n)
    if r.param_index[n] then args[#args + 1] = "(long long)p[" .. r.param_index[n] .. "]" return "%lld" end
    if r.fparam_index[n] then args[#args + 1] = "f[" .. r.fparam_index[n] .. "]" return "%g" end
    errs[#errs + 1] = where(req, "error", file) .. ": message names {" .. n .. "}, which is not a param of the stage"
    return "?"
  end)
  return { cond = table.concat(out, " "), fmt = fmt, args = args, check = src }
end

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
    if a ~= "f32" and a ~= "f64" and a ~= "q8" then
      errs[#errs + 1] = where(st, "accumulators") .. ": unknown accumulator '" .. a .. "' (f32, f64 or q8)"
    end
    r.accs[#r.accs + 1] = a
  end
  local param_index, fparam_index = {}, {}
  r.param_index, r.fparam_index, r.mins = param_index, fparam_index, {}
  for _, p in ipairs(st.params or {}) do
    if INT_TYPES[p.type] then
      r.ints[#r.ints + 1] = p.name
      param_index[p.name] = #r.ints - 1
      r.mins[p.name] = p.min or 1
    elseif FLOAT_TYPES[p.type] then
      r.floats[#r.floats + 1] = p.name
      fparam_index[p.name] = #r.floats - 1
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
      b.__index_param = -1
      if b.indexes then
        if b.dtype ~= "i32" or kind ~= "inputs" or not param_index[b.indexes] then
          errs[#errs + 1] = where(b, "indexes", st.__file) .. ": 'indexes' is for i32 inputs and names an int param; '" ..
                            tostring(b.indexes) .. "' is not one"
        else
          b.__index_param = param_index[b.indexes]
        end
      end
    end
  end
  r.exact = st.compare == "exact"
  r.test_params = {}
  for _, tp in ipairs(st.test_params or {}) do
    if not param_index[tp.name] then
      errs[#errs + 1] = where(tp, "name", st.__file) .. ": test param '" .. tostring(tp.name) .. "' is not an int param of the stage"
    elseif tp.min > tp.max or (tp.step or 1) < 1 or tp.min < r.mins[tp.name] then
      errs[#errs + 1] = where(tp, "min", st.__file) .. ": test param '" .. tp.name .. "' needs " .. r.mins[tp.name] ..
                        " <= min <= max and step >= 1"
    else
      r.test_params[#r.test_params + 1] = { param = param_index[tp.name], name = tp.name, min = tp.min, max = tp.max, step = tp.step or 1 }
    end
  end
  -- tokens: a call for T tokens is T one-token calls; these buffers advance by their own size per token,
  -- these int params by 1 (pv validate checks the names; the generators rely on them).
  r.tokens = nil
  if st.tokens then
    r.tokens = { bufs = {}, params = {} }
    local bufnames = {}
    for _, b in ipairs(st.inputs or {}) do bufnames[b.name] = b end
    for _, b in ipairs(st.outputs or {}) do bufnames[b.name] = b end
    for _, n in ipairs(st.tokens.buffers or {}) do
      local b = bufnames[n]
      if not b or b.dtype == "qtype" then
        errs[#errs + 1] = where(st, "tokens", st.__file) .. ": tokens.buffers names '" .. tostring(n) .. "', not an f32/i32 buffer of the stage"
      else r.tokens.bufs[n] = true end
    end
    for _, n in ipairs(st.tokens.params or {}) do
      if not param_index[n] then
        errs[#errs + 1] = where(st, "tokens", st.__file) .. ": tokens.params names '" .. tostring(n) .. "', not an int param of the stage"
      else r.tokens.params[n] = true end
    end
  end
  r.rules = {}
  for _, req in ipairs(st.requires or {}) do r.rules[#r.rules + 1] = compile_rule(r, req, st.__file, errs) end
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

-- The P/F/B index names of one stage ("QMOE_P_MATVEC_ROWS = 0", ...); names that differ only in case clash.
local function index_names(r)
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
  return names
end

local function emit_ids(recs, sources)
  local o = { util.banner("c", SCRIPT, sources),
    "/* stage_ids.h: the stages of contracts/stages/ as C names: the qmoe_stage enum (each contract's `order`)",
    " * and the indices of each stage's params and buffers in qmoe_stage_call (included by backend.h). */",
    "#ifndef QMOE_STAGE_IDS_H", "#define QMOE_STAGE_IDS_H", "", "typedef enum {" }
  for _, r in ipairs(recs) do
    o[#o + 1] = string.format("  QMOE_STAGE_%s = %d, /* %s */", c_ident(r.name), r.order, r.file)
  end
  o[#o + 1] = string.format("  QMOE_STAGE_COUNT = %d", #recs)
  o[#o + 1] = "} qmoe_stage;"
  o[#o + 1] = ""
  o[#o + 1] = "/* Indices into qmoe_stage_call.p[] (P), .f[] (F) and .buf[] (B), named after the contracts. */"
  for _, r in ipairs(recs) do o[#o + 1] = "enum { " .. table.concat(index_names(r), ", ") .. " };" end
  o[#o + 1] = ""
  o[#o + 1] = "#endif"
  return table.concat(o, "\n") .. "\n"
end

-- C keywords and the builder's own argument name, which a contract name may not be.
local RESERVED = { call = true }
for w in ("auto break case char const continue default do double else enum extern float for goto if inline int " ..
          "long register restrict return short signed sizeof static struct switch typedef union unsigned void " ..
          "volatile while int64_t qmoe_buffer qmoe_stage_call"):gmatch("%S+") do RESERVED[w] = true end

local function emit_calls(recs, sources)
  local o = { util.banner("c", SCRIPT, sources),
    "/* stage_calls.h: one typed builder per stage, qmoe_call_<stage>(call, int params, float params, inputs,",
    " * outputs), all in contract order. It fills the whole call: stage, params and buffers, qtype = -1,",
    " * acc = QMOE_ACC_F32, tokens = 1, every offset 0, tensor NULL; set call->qtype, ->acc, ->tokens,",
    " * ->off[QMOE_B_...] and ->tensor afterwards where they apply. Included by backend.h after qmoe_stage_call. */",
    "#ifndef QMOE_STAGE_CALLS_H", "#define QMOE_STAGE_CALLS_H", "" }
  for _, r in ipairs(recs) do
    local id, args, body = c_ident(r.name), { "qmoe_stage_call *call" }, {}
    local used = {}
    local function arg(name)
      if RESERVED[name] then error(r.file .. ": name '" .. name .. "' is reserved in C or by the builder; rename it", 0) end
      if used[name] then error(r.file .. ": '" .. name .. "' names two params or buffers; the builder needs distinct names", 0) end
      used[name] = true
      return name
    end
    for _, n in ipairs(r.ints) do
      args[#args + 1] = "int64_t " .. arg(n)
      body[#body + 1] = string.format("  call->p[QMOE_P_%s_%s] = %s;", id, c_ident(n), n)
    end
    for _, n in ipairs(r.floats) do
      args[#args + 1] = "double " .. arg(n)
      body[#body + 1] = string.format("  call->f[QMOE_F_%s_%s] = %s;", id, c_ident(n), n)
    end
    for _, b in ipairs(r.bufs) do
      args[#args + 1] = "qmoe_buffer *" .. arg(b.name)
      body[#body + 1] = string.format("  call->buf[QMOE_B_%s_%s] = %s;", id, c_ident(b.name), b.name)
    end
    o[#o + 1] = "/* " .. r.name .. " (" .. r.file .. ") */"
    o[#o + 1] = "static inline void qmoe_call_" .. r.name .. "(" .. table.concat(args, ", ") .. ") {"
    o[#o + 1] = string.format("  *call = (qmoe_stage_call){ .stage = QMOE_STAGE_%s, .qtype = -1, .acc = QMOE_ACC_F32, .tokens = 1 };", id)
    for _, l in ipairs(body) do o[#o + 1] = l end
    o[#o + 1] = "}"
    o[#o + 1] = ""
  end
  o[#o + 1] = "#endif"
  return table.concat(o, "\n") .. "\n"
end

local function emit_ref_table(recs, sources)
  local o = { util.banner("c", SCRIPT, sources),
    "/* ref_table.c: the CPU reference's dispatch table: stage -> qmoe_ref_<stage>() (runtime/cpu/ref_stages.c).",
    " * A stage contract without its reference function fails to link, naming the function. */",
    '#include "ref_internal.h"', "" }
  for _, r in ipairs(recs) do o[#o + 1] = "qmoe_ref_stage_fn qmoe_ref_" .. r.name .. ";" end
  o[#o + 1] = ""
  o[#o + 1] = "qmoe_ref_stage_fn *const qmoe_ref_table[QMOE_STAGE_COUNT > 0 ? QMOE_STAGE_COUNT : 1] = {"
  for _, r in ipairs(recs) do o[#o + 1] = string.format("  [QMOE_STAGE_%s] = qmoe_ref_%s,", c_ident(r.name), r.name) end
  o[#o + 1] = "};"
  return table.concat(o, "\n") .. "\n"
end

local function emit_header(recs, sources)
  local o = { util.banner("c", SCRIPT, sources),
    "/* stage_table.h: what the stage contracts say about each stage of backend.h's qmoe_stage: names, the",
    " * qtype and accumulator variants, param and buffer lists and shapes, and the contract's rules. */",
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
    "  int index_param;             /* i32 inputs: each value indexes one of p[index_param] items; else -1 */",
    "  int per_token;               /* the contract's tokens.buffers: token t's slice is at t times the size */",
    "} qmoe_stage_buf;",
    "",
    "/* A shape the generic parity test draws: p[param] in [min, max], a multiple of step. */",
    "typedef struct { int param; int64_t min, max, step; } qmoe_stage_test_param;",
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
    "  const int64_t *param_min;    /* per int param: its least valid value (the contract's `min`, default 1) */",
    "  /* The contract's `requires` rules over params already in range: 0, or QMOE_EINVAL with qmoe_set_error()",
    "   * naming the stage and the values. */",
    "  int (*rules)(const int64_t *p, const double *f);",
    "  int exact;                   /* the contract's compare: exact: f32 outputs equal the reference bit for bit */",
    "  int n_test_params;",
    "  const qmoe_stage_test_param *test_params;",
    "  /* The contract's `tokens`: whether a call may carry T > 1 tokens (T one-token calls, token t's with the",
    "   * per_token buffers advanced by t slices and the params with advances[i] = 1 by t). */",
    "  int tokens;",
    "  const unsigned char *advances; /* per int param: 1 when it grows by 1 per token (NULL: none) */",
    "} qmoe_stage_info;",
    "",
    string.format("enum { QMOE_STAGE_TABLE_COUNT = %d }; /* stage contracts; equals QMOE_STAGE_COUNT */", #recs),
    "",
    "/* The stage with id STAGE (the contract whose `order` is STAGE), NULL if none. */",
    "const qmoe_stage_info *qmoe_stage_info_get(qmoe_stage stage);",
    "/* The stage named NAME (contract name), NULL if none. */",
    "const qmoe_stage_info *qmoe_stage_by_name(const char *name);",
    "/* Whether the stage has a variant for GGML_TYPE (stages that do not vary by qtype: ggml_type == -1). */",
    "int qmoe_stage_has_qtype(const qmoe_stage_info *si, int ggml_type);",
    "/* Whether the stage has an ACC variant for GGML_TYPE: 1 for a stage that does not vary by acc; else the",
    " * contract lists ACC and, for a stage that varies by qtype, so does the qtype's quant contract. */",
    "int qmoe_stage_has_acc(const qmoe_stage_info *si, int ggml_type, int acc);",
    "/* Bytes buffer BUF needs for int params P, from the contract's shape; a qtype buffer uses QT's rows.",
    " * -1 when a dim is negative, a row is not a whole number of blocks, QT is missing or the size overflows. */",
    "int64_t qmoe_stage_buf_bytes(const qmoe_stage_info *si, int buf, const int64_t *p, const qmoe_qtype_info *qt);",
    "",
    "/* Every kernel variant (stage x qtype x accumulator), from codegen/lib/variants.lua: the one list the",
    " * generators, the tests and qmoe-gen share. qtype is a GGUF type id or -1, acc a qmoe_acc or -1. */",
    "typedef struct { const char *stem; qmoe_stage stage; int qtype; int acc; } qmoe_variant;",
    "extern const qmoe_variant qmoe_variants[];",
    "extern const size_t qmoe_variant_count;",
    "",
    "#endif",
  }
  return table.concat(o, "\n") .. "\n"
end

local function emit_c(recs, sources, vars)
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
    if #r.ints > 0 then
      o[#o + 1] = string.format("static const char *const %s_params[] = { %s };", r.name, table.concat(strs(r.ints), ", "))
      local mins = {}
      for _, n in ipairs(r.ints) do mins[#mins + 1] = tostring(r.mins[n]) end
      o[#o + 1] = string.format("static const int64_t %s_param_min[] = { %s };", r.name, table.concat(mins, ", "))
    end
    if #r.test_params > 0 then
      local t = {}
      for _, tp in ipairs(r.test_params) do t[#t + 1] = string.format("{ %d, %d, %d, %d } /* %s */", tp.param, tp.min, tp.max, tp.step, tp.name) end
      o[#o + 1] = string.format("static const qmoe_stage_test_param %s_test_params[] = { %s };", r.name, table.concat(t, ", "))
    end
    if #r.rules > 0 then
      o[#o + 1] = string.format("static int %s_rules(const int64_t *p, const double *f) {", r.name)
      o[#o + 1] = "  (void)p, (void)f;"
      for _, ru in ipairs(r.rules) do
        o[#o + 1] = string.format("  if (!(%s)) { /* %s */", ru.cond, ru.check)
        o[#o + 1] = string.format("    qmoe_set_error(%s%s);", cstr("stage " .. r.name .. ": " .. ru.fmt),
                                  #ru.args > 0 and (", " .. table.concat(ru.args, ", ")) or "")
        o[#o + 1] = "    return QMOE_EINVAL;"
        o[#o + 1] = "  }"
      end
      o[#o + 1] = "  return 0;"
      o[#o + 1] = "}"
    end
    if #r.floats > 0 then o[#o + 1] = string.format("static const char *const %s_fparams[] = { %s };", r.name, table.concat(strs(r.floats), ", ")) end
    r.__adv = nil
    if r.tokens and next(r.tokens.params) then
      local a = {}
      for _, n in ipairs(r.ints) do a[#a + 1] = r.tokens.params[n] and "1" or "0" end
      r.__adv = r.name .. "_advances"
      o[#o + 1] = string.format("static const unsigned char %s[] = { %s };", r.__adv, table.concat(a, ", "))
    end
    local bnames, bufs = {}, {}
    for i, b in ipairs(r.bufs) do
      bnames[#bnames + 1] = cstr(b.name)
      local dims = {}
      for _, d in ipairs(b.__dims) do
        dims[#dims + 1] = d.param and string.format("{ %d, 0 } /* %s */", d.param, d.name) or string.format("{ -1, %d }", d.lit)
      end
      o[#o + 1] = string.format("static const qmoe_stage_dim %s_dims%d[] = { %s };", r.name, i - 1,
                                #dims > 0 and table.concat(dims, ", ") or "{ -1, 1 }")
      bufs[#bufs + 1] = string.format("  { %s, %s, %d, %d, %s_dims%d, %s, %d, %d },", cstr(b.name), DTYPES[b.dtype],
                                      b.__kind == "outputs" and 1 or 0, #b.__dims, r.name, i - 1,
                                      b.may_alias and cstr(b.may_alias) or "NULL", b.__index_param,
                                      (r.tokens and r.tokens.bufs[b.name]) and 1 or 0)
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
    o[#o + 1] = string.format("  { %s, %s, (qmoe_stage)%d, %s, %d, %d, %d, %s, %d, %s, %d, %s, %d, %s, %d, %d, %s_buf_names, %s_bufs, %s, %s, %d, %d, %s, %d, %s },",
      cstr(r.name), cstr(r.trace), r.order, cstr(r.file), r.by_qtype and 1 or 0, r.by_acc and 1 or 0,
      #r.qtypes, #r.qtypes > 0 and (r.name .. "_qtypes") or "NULL",
      #r.accs, #r.accs > 0 and (r.name .. "_accs") or "NULL",
      #r.ints, #r.ints > 0 and (r.name .. "_params") or "NULL",
      #r.floats, #r.floats > 0 and (r.name .. "_fparams") or "NULL",
      r.n_inputs, #r.bufs - r.n_inputs, r.name, r.name, #r.ints > 0 and (r.name .. "_param_min") or "NULL",
      #r.rules > 0 and (r.name .. "_rules") or "NULL", r.exact and 1 or 0, #r.test_params,
      #r.test_params > 0 and (r.name .. "_test_params") or "NULL", r.tokens and 1 or 0, r.__adv or "NULL")
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

int qmoe_stage_has_acc(const qmoe_stage_info *si, int ggml_type, int acc) {
  if (!si->varies_by_acc) return 1;
  int listed = 0;
  for (int i = 0; i < si->n_accs; i++) listed |= (int)si->accs[i] == acc;
  if (!listed || !si->varies_by_qtype) return listed;
  const qmoe_qtype_info *q = qmoe_stage_has_qtype(si, ggml_type) ? qmoe_qtype_by_id(ggml_type) : NULL;
  return q && (q->acc_mask >> acc & 1u);
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
}
]]
  o[#o + 1] = "const qmoe_variant qmoe_variants[] = {"
  for _, v in ipairs(vars) do
    o[#o + 1] = string.format('  { "%s", QMOE_STAGE_%s, %d, %s },', v.stem, c_ident(v.rec.name),
                              v.q and v.q.ggml_type or -1,
                              v.acc and ("QMOE_ACC_" .. v.acc:upper()) or "-1")
  end
  if #vars == 0 then o[#o + 1] = "  { 0 }" end
  o[#o + 1] = "};"
  o[#o + 1] = string.format("const size_t qmoe_variant_count = %d;", #vars)
  return table.concat(o, "\n") .. "\n"
end

local function main(argv)
  local o = util.parse_args(argv, { contracts = "contracts", out_dir = "" }, USAGE)
  if o.out_dir == "" then error(USAGE, 0) end
  local ctx = require("contracts").load_all(o.contracts)
  local recs = M.stages(ctx)
  local sources = {}
  for _, r in ipairs(recs) do sources[#sources + 1] = r.file end
  if #sources == 0 then sources = { o.contracts .. "/stages (none yet)" } end
  local d = o.out_dir .. "/"
  util.write_if_changed(d .. "stage_ids.h", emit_ids(recs, sources))
  util.write_if_changed(d .. "stage_calls.h", emit_calls(recs, sources))
  util.write_if_changed(d .. "stage_table.h", emit_header(recs, sources))
  util.write_if_changed(d .. "stage_table.c", emit_c(recs, sources, require("variants").list(ctx, recs)))
  util.write_if_changed(d .. "ref_table.c", emit_ref_table(recs, sources))
end

if arg and arg[0] and arg[0]:match("gen_stages%.lua$") then main(arg) end
return M
