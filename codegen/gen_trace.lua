-- gen_trace.lua: writes generated/c/trace_points.{h,c} from the trace_points list of
-- contracts/models/qwen3-moe-forward-v1.yaml: one qmoe_trace_point per value `qmoe trace` can record, in
-- forward order, with its element count as a product of model dimensions.
-- Usage: qmoe-lua codegen/gen_trace.lua [--contracts DIR] --out-c FILE --out-h FILE
local util = require("util")
local M = {}
local USAGE = "usage: qmoe-lua codegen/gen_trace.lua [--contracts DIR] --out-c FILE --out-h FILE"
local SCRIPT = "codegen/gen_trace.lua"
local MODEL = "qwen3-moe-forward-v1"
local OUT_C, OUT_H = "generated/c/trace_points.c", "generated/c/trace_points.h"

-- The dims keys an `elements` expression may name, and the qmoe_trace_dim each becomes (the runtime fills
-- the values from the loaded model's config, never from the contract's example dims).
local DIMS = { "hidden", "heads", "kv_heads", "head_dim", "experts", "experts_used", "expert_ff", "vocab" }

local function model_of(ctx)
  local m = ctx.models.by_name[MODEL]
  if not m then
    for _, x in ipairs(ctx.models.list) do if x.__stem == MODEL then m = x end end
  end
  if not m then error(SCRIPT .. ": no contracts/models/" .. MODEL .. ".yaml", 0) end
  return m
end

function M.plan(ctx)
  local m = model_of(ctx)
  return { { outputs = { OUT_C, OUT_H }, inputs = { m.__file }, desc = OUT_C,
             args = "--out-c " .. OUT_C .. " --out-h " .. OUT_H } }
end

local function c_ident(s) return (s:upper():gsub("[^%w]", "_")) end

-- Normalized records; any error raises, naming the file, line and point.
function M.points(ctx)
  local m = model_of(ctx)
  local dim_index = {}
  for i, d in ipairs(DIMS) do dim_index[d] = i - 1 end
  local errs, recs, seen = {}, {}, {}
  if type(m.trace_points) ~= "table" or #m.trace_points == 0 then
    error(m.__file .. ": no trace_points list (the runtime's trace table is generated from it)", 0)
  end
  for i, tp in ipairs(m.trace_points) do
    local line = yaml.pos(tp, "name")
    local at = m.__file .. (line and (":" .. line) or "") .. ": trace point " .. tostring(tp.name)
    if seen[tp.name] then errs[#errs + 1] = at .. ": listed twice" end
    seen[tp.name] = true
    local factors = {}
    for f in tostring(tp.elements):gmatch("[^*]+") do
      f = f:match("^%s*(.-)%s*$")
      if dim_index[f] == nil then
        errs[#errs + 1] = at .. ": elements '" .. tostring(tp.elements) .. "': '" .. f .. "' is not one of " ..
                          table.concat(DIMS, ", ")
      end
      factors[#factors + 1] = dim_index[f] or 0
    end
    if #factors == 0 or #factors > 3 then
      errs[#errs + 1] = at .. ": elements '" .. tostring(tp.elements) .. "' must be 1 to 3 dims keys joined by *"
    end
    recs[#recs + 1] = { name = tp.name, layer = tp.scope == "layer", dtype = tp.dtype, factors = factors,
                        doc = tp.doc, elements = tp.elements }
  end
  if #errs > 0 then error(table.concat(errs, "\n"), 0) end
  return recs, m.__file
end

local function cstr(s) return (string.format("%q", s):gsub("\\\n", "\\n")) end

local function emit_header(recs, src)
  local o = { util.banner("c", SCRIPT, src),
    "/* trace_points.h: the values of the Qwen3-MoE forward that `qmoe trace` records (the model contract's",
    " * trace_points, in forward order) and how many elements each has per position. */",
    "#ifndef QMOE_TRACE_POINTS_H", "#define QMOE_TRACE_POINTS_H", "#include <stdint.h>", "",
    "/* Model dimensions an element count is a product of. */", "typedef enum {" }
  for i, d in ipairs(DIMS) do o[#o + 1] = string.format("  QMOE_TRACE_DIM_%s = %d,", c_ident(d), i - 1) end
  o[#o + 1] = string.format("  QMOE_TRACE_DIM_COUNT = %d", #DIMS)
  o[#o + 1] = "} qmoe_trace_dim;"
  o[#o + 1] = ""
  o[#o + 1] = "/* Trace point ids, forward order. */"
  o[#o + 1] = "typedef enum {"
  for i, r in ipairs(recs) do o[#o + 1] = string.format("  QMOE_TP_%s = %d,", c_ident(r.name), i - 1) end
  o[#o + 1] = string.format("  QMOE_TP_COUNT = %d", #recs)
  o[#o + 1] = "} qmoe_trace_point_id;"
  o[#o + 1] = [[

typedef struct {
  const char *name;     /* tensor name: blk.<L>.<name> when per_layer, else <name> */
  int per_layer;
  int is_i32;           /* int32 values (expert ids), else f32 */
  int n_factors;
  qmoe_trace_dim factors[3];
  const char *elements; /* the contract's expression, for messages */
  const char *doc;
} qmoe_trace_point;

extern const qmoe_trace_point qmoe_trace_points[QMOE_TP_COUNT];
/* Elements per position of point P given DIMS[QMOE_TRACE_DIM_COUNT]. */
int64_t qmoe_trace_point_elements(int p, const int64_t *dims);
/* The point named NAME, or -1. */
int qmoe_trace_point_find(const char *name);

#endif]]
  return table.concat(o, "\n") .. "\n"
end

local function emit_c(recs, src)
  local o = { util.banner("c", SCRIPT, src),
    "/* trace_points.c: the trace point table (see trace_points.h). */",
    "#include <string.h>", '#include "trace_points.h"', "",
    "const qmoe_trace_point qmoe_trace_points[QMOE_TP_COUNT] = {" }
  for _, r in ipairs(recs) do
    local f = {}
    for _, x in ipairs(r.factors) do f[#f + 1] = "QMOE_TRACE_DIM_" .. c_ident(DIMS[x + 1]) end
    while #f < 3 do f[#f + 1] = "0" end
    o[#o + 1] = string.format("  { %s, %d, %d, %d, { %s }, %s, %s },", cstr(r.name), r.layer and 1 or 0,
                              r.dtype == "i32" and 1 or 0, #r.factors, table.concat(f, ", "), cstr(r.elements),
                              cstr(r.doc))
  end
  o[#o + 1] = [=[};

int64_t qmoe_trace_point_elements(int p, const int64_t *dims) {
  if (p < 0 || p >= QMOE_TP_COUNT) return -1;
  int64_t n = 1;
  for (int i = 0; i < qmoe_trace_points[p].n_factors; i++) n *= dims[qmoe_trace_points[p].factors[i]];
  return n;
}

int qmoe_trace_point_find(const char *name) {
  for (int i = 0; i < QMOE_TP_COUNT; i++)
    if (!strcmp(qmoe_trace_points[i].name, name)) return i;
  return -1;
}]=]
  return table.concat(o, "\n") .. "\n"
end

local function main(argv)
  local o = util.parse_args(argv, { contracts = "contracts", out_c = "", out_h = "" }, USAGE)
  if o.out_c == "" or o.out_h == "" then error(USAGE, 0) end
  local ctx = require("contracts").load_all(o.contracts)
  local recs, src = M.points(ctx)
  util.write_if_changed(o.out_h, emit_header(recs, src))
  util.write_if_changed(o.out_c, emit_c(recs, src))
end

if arg and arg[0] and arg[0]:match("gen_trace%.lua$") then main(arg) end
return M
