-- gen_recipes.lua: writes generated/c/recipes.{h,c} from contracts/recipes/*.yaml: each recipe's rules as a
-- C table, each `when` condition (decode expression language over i = layer, n = layers) as a C function
-- emitted by expr.lua. runtime/recipe.c matches tensors against the table (qmoe_recipe_qtype).
-- Usage: qmoe-lua codegen/gen_recipes.lua [--contracts DIR] --out-c FILE --out-h FILE
local util = require("util")
local expr = require("expr")
local M = {}
local USAGE = "usage: qmoe-lua codegen/gen_recipes.lua [--contracts DIR] --out-c FILE --out-h FILE"
local SCRIPT = "codegen/gen_recipes.lua"
local OUT_C, OUT_H = "generated/c/recipes.c", "generated/c/recipes.h"

function M.plan(ctx)
  local inputs = {}
  for _, r in ipairs(ctx.recipes.list) do inputs[#inputs + 1] = r.__file end
  for _, q in ipairs(ctx.quant.list) do inputs[#inputs + 1] = q.__file end
  return { { outputs = { OUT_C, OUT_H }, inputs = inputs, desc = OUT_C,
             args = "--out-c " .. OUT_C .. " --out-h " .. OUT_H } }
end

local function c_str(s) return '"' .. s:gsub('[\\"]', "\\%0") .. '"' end

local function emit_header(sources)
  return table.concat({
    util.banner("c", SCRIPT, sources),
    "/* recipes.h: the quantization recipes of contracts/recipes as data (matched by runtime/recipe.c). */",
    "#ifndef QMOE_RECIPES_H", "#define QMOE_RECIPES_H", "#include <stddef.h>", "",
    "typedef struct {",
    "  const char *const *tensors; /* name patterns; '*' matches any run of characters */",
    "  int ntensors;",
    "  int dims;                   /* 0: any */",
    "  int (*when)(int i, int n);  /* NULL: always; else only layer tensors blk.<i>.* of n layers */",
    "  const char *qtype;          /* quant contract name */",
    "} qmoe_recipe_rule;",
    "struct qmoe_recipe {",
    "  const char *name, *description;",
    "  int file_type;",
    "  int nrules;",
    "  const qmoe_recipe_rule *rules;",
    "};",
    "extern const struct qmoe_recipe qmoe_recipes[];",
    "extern const size_t qmoe_recipes_count;",
    "#endif", "",
  }, "\n")
end

local function emit_c(list, quants, sources)
  local o = { util.banner("c", SCRIPT, sources),
              "/* recipes.c: the recipe table; each `when` condition is the contract's expression, emitted by expr.lua. */",
              "#include <stddef.h>", "#include \"recipes.h\"", "" }
  local entries = {}
  for ri, r in ipairs(list) do
    local rules = {}
    for k, rule in ipairs(r.rules) do
      if not quants[rule.qtype] then error(r.__file .. ": rules[" .. k .. "]: no quant contract '" .. tostring(rule.qtype) .. "'", 0) end
      local pats = {}
      for _, t in ipairs(rule.tensors) do pats[#pats + 1] = c_str(t) end
      local id = string.format("r%d_%d", ri, k)
      o[#o + 1] = string.format("static const char *const %s_tensors[] = { %s };", id, table.concat(pats, ", "))
      local when = "NULL"
      if rule.when then
        local ast, msg, col = expr.compile_rule(rule.when)
        if not ast then error(string.format("%s: rules[%d].when:%s %s", r.__file, k, tostring(col), msg), 0) end
        o[#o + 1] = string.format("/* %s */", rule.when:gsub("%*/", "* /"))
        o[#o + 1] = string.format("static int %s_when(int i, int n) { return %s; }", id,
                                  expr.emit_rule(ast, "c", { i = "i", n = "n" }))
        when = id .. "_when"
      end
      rules[#rules + 1] = string.format("  { %s_tensors, %d, %d, %s, %s },", id, #pats, rule.dims or 0, when, c_str(quants[rule.qtype]))
    end
    o[#o + 1] = string.format("static const qmoe_recipe_rule r%d_rules[] = {", ri)
    for _, l in ipairs(rules) do o[#o + 1] = l end
    o[#o + 1] = "};"
    entries[#entries + 1] = string.format("  { %s, %s, %d, %d, r%d_rules },", c_str(r.name), c_str((r.description:gsub("%s+$", ""))),
                                          r.file_type, #r.rules, ri)
  end
  o[#o + 1] = ""
  o[#o + 1] = "const struct qmoe_recipe qmoe_recipes[] = {"
  for _, e in ipairs(entries) do o[#o + 1] = e end
  if #entries == 0 then o[#o + 1] = "  { NULL, NULL, 0, 0, NULL }," end
  o[#o + 1] = "};"
  o[#o + 1] = string.format("const size_t qmoe_recipes_count = %d;", #entries)
  return table.concat(o, "\n") .. "\n"
end

local function main(argv)
  local o = util.parse_args(argv, { contracts = "contracts", out_c = "", out_h = "" }, USAGE)
  if o.out_c == "" or o.out_h == "" then error(USAGE, 0) end
  local ctx = require("contracts").load_all(o.contracts)
  local list = {}
  for _, r in ipairs(ctx.recipes.list) do list[#list + 1] = r end
  table.sort(list, function(a, b) return a.name < b.name end)
  local quants = {}
  for _, q in ipairs(ctx.quant.list) do
    quants[q.name] = q.name
    for _, a in ipairs(q.aliases or {}) do quants[a] = q.name end
  end
  local sources = {}
  for _, r in ipairs(list) do sources[#sources + 1] = r.__file end
  if #sources == 0 then sources = { o.contracts .. "/recipes (none yet)" } end
  util.write_if_changed(o.out_h, emit_header(sources))
  util.write_if_changed(o.out_c, emit_c(list, quants, sources))
end

if arg and arg[0] and arg[0]:match("gen_recipes%.lua$") then main(arg) end
return M
