-- gen_tests.lua: writes generated/tests/parity_cases.h (the parity test's thresholds and case table) and a
-- thin generated/tests/test_parity_<backend>.c per backend (cpu, vulkan, cuda, from
-- codegen/templates/c/test_parity.c) that names the backend and includes the one parity test,
-- tests/parity/parity_body.h (plain C): every stage × qtype × accumulator of contracts/stages/*.yaml (qtypes
-- resolved against contracts/quant), run on the backend and on the CPU reference, judged with the thresholds
-- of the model contract's falsifiers (FALSIFY-STAGE-PARITY-<ACC> and FALSIFY-STAGE-MAXREL-<ACC> for each
-- accumulator f32, f64, q8; contracts/models/*.yaml, emitted as constants naming the falsifier id and
-- file:line).
-- Usage: qmoe-lua codegen/gen_tests.lua [--contracts DIR] --out-dir DIR
local util = require("util")
local template = require("template")
local stages_gen = dofile("codegen/gen_stages.lua")
local M = {}
local USAGE = "usage: qmoe-lua codegen/gen_tests.lua [--contracts DIR] --out-dir DIR"
local SCRIPT = "codegen/gen_tests.lua"

-- What differs between the backends' files; everything else is the one template below.
local BACKENDS = {
  { name = "cpu", nodev = "no CPU backend", label = "", is_reference = 1 },
  { name = "vulkan", nodev = "no Vulkan device", label = "", is_reference = 0 },
  { name = "cuda", nodev = "no CUDA device", label = " * qmoe-test: needs CUDA (skips here; run on the device tool with QMOE_TEST_REQUIRE_BACKEND=1)\n",
    is_reference = 0 },
}

-- The falsifiers the template enforces, by id; `metric` is what the check must measure.
local FALSIFIERS = {
  { id = "FALSIFY-STAGE-PARITY-F32", metric = "nmse", acc = "f32", const = "NMSE_MAX_F32" },
  { id = "FALSIFY-STAGE-PARITY-F64", metric = "nmse", acc = "f64", const = "NMSE_MAX_F64" },
  { id = "FALSIFY-STAGE-MAXREL-F32", metric = "max_abs_rel", acc = "f32", const = "MAXREL_MAX_F32" },
  { id = "FALSIFY-STAGE-MAXREL-F64", metric = "max_abs_rel", acc = "f64", const = "MAXREL_MAX_F64" },
  { id = "FALSIFY-STAGE-PARITY-Q8", metric = "nmse", acc = "q8", const = "NMSE_MAX_Q8" },
  { id = "FALSIFY-STAGE-MAXREL-Q8", metric = "max_abs_rel", acc = "q8", const = "MAXREL_MAX_Q8" },
  { id = "FALSIFY-ROUTER-WEIGHTS-SUM", metric = "abs_err", const = "ROUTER_WSUM_MAX" },
  { id = "FALSIFY-FINITE" },
  { id = "FALSIFY-DETERMINISM" },
  { id = "FALSIFY-TOKENS" },
  { id = "FALSIFY-QTYPE-DISPATCH" },
}

-- The model contract holding the falsifiers (the first model contract that defines them).
local function model_contract(ctx)
  for _, m in ipairs(ctx.models.list) do
    for _, f in ipairs(m.falsification_tests or {}) do
      if f.id == "FALSIFY-STAGE-PARITY-F32" then return m end
    end
  end
  return nil
end

function M.plan(ctx)
  local model = model_contract(ctx)
  if not model or #ctx.stages.list == 0 then return {} end -- nothing to test until both contracts exist
  local inputs = { model.__file }
  for _, s in ipairs(ctx.stages.list) do inputs[#inputs + 1] = s.__file end
  for _, q in ipairs(ctx.quant.list) do inputs[#inputs + 1] = q.__file end
  inputs[#inputs + 1] = template.path("c/test_parity.c")
  local outputs = { "generated/tests/parity_cases.h" }
  for _, b in ipairs(BACKENDS) do outputs[#outputs + 1] = "generated/tests/test_parity_" .. b.name .. ".c" end
  return { { outputs = outputs, inputs = inputs, desc = "generated/tests/test_parity_*", args = "--out-dir generated/tests" } }
end

-- The template checks measure <= threshold; a contract asking for another comparison fails generation.
local COMPARATORS = { ["<="] = "<=", le = "<=" }

-- Reads each falsifier's check; raises listing every missing or malformed one.
local function thresholds(model)
  local byid, errs, out = {}, {}, {}
  for _, f in ipairs(model.falsification_tests or {}) do byid[f.id] = f end
  for _, want in ipairs(FALSIFIERS) do
    local f = byid[want.id]
    if not f then
      errs[#errs + 1] = model.__file .. ": falsification_tests has no " .. want.id .. " (the parity tests enforce it)"
    elseif want.metric then
      local c = f.check or {}
      local line = c.threshold ~= nil and yaml.pos(c, "threshold") or yaml.pos(f, "id")
      local at = model.__file .. ":" .. tostring(line)
      if c.metric ~= want.metric then
        errs[#errs + 1] = at .. ": " .. want.id .. " check.metric is '" .. tostring(c.metric) .. "', expected '" .. want.metric .. "'"
      elseif type(c.threshold) ~= "number" then
        errs[#errs + 1] = at .. ": " .. want.id .. " check.threshold must be a number"
      elseif not COMPARATORS[c.comparator] then
        errs[#errs + 1] = at .. ": " .. want.id .. " check.comparator '" .. tostring(c.comparator) .. "' is not <= (the only comparison the template implements)"
      elseif want.acc and c.acc and c.acc ~= want.acc then
        errs[#errs + 1] = at .. ": " .. want.id .. " check.acc is '" .. tostring(c.acc) .. "', expected '" .. want.acc .. "'"
      else
        local stages
        if type(c.stages) == "table" and #c.stages > 0 then
          stages = {}
          for _, s in ipairs(c.stages) do stages[s] = true end
        end
        out[want.id] = { id = want.id, const = want.const, value = c.threshold, cmp = COMPARATORS[c.comparator],
                         metric = c.metric, at = at, runs_on = c.runs_on, stages = stages }
      end
    else
      out[want.id] = { id = want.id, at = model.__file .. ":" .. tostring(yaml.pos(f, "id")), runs_on = (f.check or {}).runs_on }
    end
  end
  if #errs > 0 then error(table.concat(errs, "\n"), 0) end
  return out
end

-- The stages tests/parity/parity_body.h has a hand-written input recipe for; any other stage needs
-- test_params in its contract (the body's generic recipe), or the generator fails loudly.
local KNOWN = { matvec = true, moe_gate_up_swiglu = true, moe_down = true, router_topk = true, rmsnorm = true,
                qk_norm = true, rope_neox = true, kv_store = true, attention = true, add = true, argmax = true,
                qk_norm_rope = true } -- test_params cannot give float params (eps, theta): a recipe there

-- Every case: stage × qtype (stage ∩ quant contract accumulators) × acc.
local function cases(ctx, recs, th)
  local list, errs = {}, {}
  for _, r in ipairs(recs) do
    if not KNOWN[r.name] and #r.test_params == 0 then
      errs[#errs + 1] = r.file .. ": stage '" .. r.name .. "' has no input recipe in tests/parity/parity_body.h; give its contract test_params"
    end
  end
  for _, v in ipairs(require("variants").list(ctx, recs)) do
    local r, acc = v.rec, v.acc or "f32"
    local nm = th["FALSIFY-STAGE-PARITY-" .. acc:upper()]
    local mr = th["FALSIFY-STAGE-MAXREL-" .. acc:upper()]
    for _, t in ipairs({ nm, mr }) do
      if t.stages and not t.stages[r.name] then
        errs[#errs + 1] = t.at .. ": " .. t.id .. " lists check.stages without '" .. r.name .. "', so " ..
                          r.name .. "/" .. acc .. " would go unchecked; add the stage"
      end
    end
    list[#list + 1] = { stage = r.name, qtype = v.q and v.q.ggml_type or -1, qname = v.q and v.q.name or "-",
                        acc = acc, acc_name = v.acc or "-", nmse = nm.const, maxrel = mr.const }
  end
  if #errs > 0 then error(table.concat(errs, "\n"), 0) end
  return list
end

-- Shortest decimal that reads back as V.
local function fmt_num(v)
  for digits = 1, 17 do
    local s = string.format("%." .. digits .. "g", v)
    if tonumber(s) == v then return s end
  end
  return string.format("%.17g", v)
end


-- The thin per-backend file: what differs between backends, then the shared body.
local function emit_backend(backend, sources)
  return template.render("c/test_parity.c", { BANNER = util.banner("c", SCRIPT, sources), BACKEND = backend.name,
                                             NODEV = backend.nodev, LABEL = backend.label,
                                             ISREF = tostring(backend.is_reference) })
end

local function emit_body(ctx, recs, th, model, sources)
  local consts = {}
  for _, want in ipairs(FALSIFIERS) do
    local t = th[want.id]
    if t.const then
      consts[#consts + 1] = string.format("/* %s: %s %s %s (%s; runs on %s) */\n#define %s %s",
        t.id, t.metric, t.cmp, fmt_num(t.value), t.at, tostring(t.runs_on), t.const, fmt_num(t.value))
    else
      consts[#consts + 1] = string.format("/* %s: %s (runs on %s) */", t.id, t.at, tostring(t.runs_on))
    end
  end
  local rows = {}
  for _, c in ipairs(cases(ctx, recs, th)) do
    rows[#rows + 1] = string.format('  { "%s", %d, "%s", QMOE_ACC_%s, "%s", %s, %s },', c.stage, c.qtype, c.qname,
                                    c.acc:upper(), c.acc_name, c.nmse, c.maxrel)
  end
  return table.concat({ util.banner("c", SCRIPT, sources),
    "/* parity_cases.h: the thresholds of the model contract's falsifiers and one case per stage × qtype ×",
    " * accumulator of contracts/stages, for tests/parity/parity_body.h (which defines parity_case). */",
    "", table.concat(consts, "\n"), "", "static const parity_case cases[] = {", table.concat(rows, "\n"), "};" }, "\n") .. "\n"
end

local function main(argv)
  local o = util.parse_args(argv, { contracts = "contracts", out_dir = "" }, USAGE)
  if o.out_dir == "" then error(USAGE, 0) end
  local ctx = require("contracts").load_all(o.contracts)
  local model = model_contract(ctx)
  if not model then error(o.contracts .. "/models: no model contract defines FALSIFY-STAGE-PARITY-F32", 0) end
  local recs = stages_gen.stages(ctx)
  local th = thresholds(model)
  local sources = { model.__file, o.contracts .. "/stages/*.yaml", o.contracts .. "/quant/*.yaml" }
  util.write_if_changed(o.out_dir .. "/parity_cases.h", emit_body(ctx, recs, th, model, sources))
  for _, b in ipairs(BACKENDS) do
    util.write_if_changed(o.out_dir .. "/test_parity_" .. b.name .. ".c", emit_backend(b, sources))
  end
end

if arg and arg[0] and arg[0]:match("gen_tests%.lua$") then main(arg) end
return M
