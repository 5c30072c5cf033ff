-- gen_falsifiers.lua: writes generated/c/falsifiers.{h,c} from the falsification_tests of every model
-- contract (contracts/models/*.yaml): each falsifier's id, metric, comparator and threshold, so programs
-- (`qmoe diff`) judge by the contract's numbers instead of copies of them.
-- Usage: qmoe-lua codegen/gen_falsifiers.lua [--contracts DIR] --out-c FILE --out-h FILE
local util = require("util")
local M = {}
local USAGE = "usage: qmoe-lua codegen/gen_falsifiers.lua [--contracts DIR] --out-c FILE --out-h FILE"
local SCRIPT = "codegen/gen_falsifiers.lua"
local OUT_C, OUT_H = "generated/c/falsifiers.c", "generated/c/falsifiers.h"

function M.plan(ctx)
  local inputs = {}
  for _, m in ipairs(ctx.models.list) do inputs[#inputs + 1] = m.__file end
  if #inputs == 0 then return {} end
  return { { outputs = { OUT_C, OUT_H }, inputs = inputs, desc = OUT_C, args = "--out-c " .. OUT_C .. " --out-h " .. OUT_H } }
end

-- Normalized records in contract order (models sorted by file); any error raises naming file:line.
function M.records(ctx)
  local recs, errs, seen, files = {}, {}, {}, {}
  for _, m in ipairs(ctx.models.list) do
    files[#files + 1] = m.__file
    local impl = {} -- falsifier id -> the implementation stage listing it (the case table tests iterate by)
    for _, st in ipairs(m.implementation_stages or {}) do
      for _, id in ipairs(st.falsifiers or {}) do impl[id] = impl[id] or st.id end
    end
    for _, f in ipairs(m.falsification_tests or {}) do
      local line = yaml.pos(f, "id")
      local at = m.__file .. ":" .. tostring(line)
      local c = f.check or {}
      if seen[f.id] then errs[#errs + 1] = at .. ": falsifier " .. tostring(f.id) .. " is defined twice (also " .. seen[f.id] .. ")" end
      seen[f.id] = at
      if type(c.threshold) ~= "number" then
        errs[#errs + 1] = at .. ": " .. tostring(f.id) .. " check.threshold must be a number"
      end
      recs[#recs + 1] = { id = f.id, metric = tostring(c.metric), comparator = tostring(c.comparator),
                          threshold = c.threshold, runs_on = tostring(c.runs_on or ""), acc = tostring(c.acc or ""),
                          impl = tostring(impl[f.id] or ""), file = m.__file, line = line or 0 }
    end
  end
  if #errs > 0 then error(table.concat(errs, "\n"), 0) end
  return recs, files
end

-- The shortest decimal that reads back as the same double.
local function num(x)
  for _, f in ipairs({ "%.15g", "%.16g", "%.17g" }) do
    local s = string.format(f, x)
    if tonumber(s) == x then return s end
  end
end

local function cstr(s) return (string.format("%q", s):gsub("\\\n", "\\n")) end

local function emit_header(recs, files)
  return util.banner("c", SCRIPT, files) .. [[
/* falsifiers.h: the model contracts' falsification tests as data: the metric, the comparison and the
 * threshold each one's check states. Look one up by id; never copy a threshold into code. */
#ifndef QMOE_FALSIFIERS_H
#define QMOE_FALSIFIERS_H

typedef struct {
  const char *id;         /* "FALSIFY-LAYER-COSINE" */
  const char *metric;     /* check.metric: "cosine", "nmse", ... */
  const char *comparator; /* check.comparator: ">=", "<=", "==" */
  double threshold;       /* check.threshold */
  const char *runs_on;    /* check.runs_on ("ci", "gpu"), "" when absent */
  const char *acc;        /* check.acc ("f32", "f64"), "" when absent */
  const char *impl;       /* the implementation stage listing it ("IMPL-FORWARD"), "" when none does */
  const char *file;       /* the contract and the line of the id, for messages */
  int line;
} qmoe_falsifier;

enum { QMOE_FALSIFIER_COUNT = ]] .. #recs .. [[ };
extern const qmoe_falsifier qmoe_falsifiers[QMOE_FALSIFIER_COUNT];
/* The falsifier with this id, or NULL. */
const qmoe_falsifier *qmoe_falsifier_find(const char *id);

#endif
]]
end

local function emit_c(recs, files)
  local o = { util.banner("c", SCRIPT, files),
    "/* falsifiers.c: the falsifier table (see falsifiers.h). */", "#include <string.h>", '#include "falsifiers.h"', "",
    "const qmoe_falsifier qmoe_falsifiers[QMOE_FALSIFIER_COUNT] = {" }
  for _, r in ipairs(recs) do
    o[#o + 1] = string.format("  { %s, %s, %s, %s, %s, %s, %s, %s, %d },", cstr(r.id), cstr(r.metric), cstr(r.comparator),
                              num(r.threshold), cstr(r.runs_on), cstr(r.acc), cstr(r.impl), cstr(r.file), r.line)
  end
  o[#o + 1] = [[};

const qmoe_falsifier *qmoe_falsifier_find(const char *id) {
  for (int i = 0; i < QMOE_FALSIFIER_COUNT; i++)
    if (!strcmp(qmoe_falsifiers[i].id, id)) return &qmoe_falsifiers[i];
  return NULL;
}]]
  return table.concat(o, "\n") .. "\n"
end

local function main(argv)
  local o = util.parse_args(argv, { contracts = "contracts", out_c = "", out_h = "" }, USAGE)
  if o.out_c == "" or o.out_h == "" then error(USAGE, 0) end
  local ctx = require("contracts").load_all(o.contracts)
  local recs, files = M.records(ctx)
  util.write_if_changed(o.out_h, emit_header(recs, files))
  util.write_if_changed(o.out_c, emit_c(recs, files))
end

if arg and arg[0] and arg[0]:match("gen_falsifiers%.lua$") then main(arg) end
return M
