-- manifest.lua: asks every generator (codegen/gen_*.lua) which files it writes from which contracts,
-- and prints the answer as a Lua table for configure.lua, which turns each job into a ninja edge.
-- Usage: qmoe-lua codegen/manifest.lua --contracts DIR
local util = require("util")
local USAGE = "usage: qmoe-lua codegen/manifest.lua --contracts DIR"

local function serialize(v, indent)
  indent = indent or ""
  if type(v) == "table" then
    local parts = {}
    if #v > 0 or next(v) == nil then
      for _, x in ipairs(v) do parts[#parts + 1] = indent .. "  " .. serialize(x, indent .. "  ") end
    else
      for _, k in ipairs(util.sorted_keys(v)) do
        parts[#parts + 1] = indent .. "  " .. k .. " = " .. serialize(v[k], indent .. "  ")
      end
    end
    return "{\n" .. table.concat(parts, ",\n") .. "\n" .. indent .. "}"
  end
  return string.format("%q", v)
end

local function main(argv)
  local o = util.parse_args(argv, { contracts = "contracts" }, USAGE)
  local contracts = require("contracts")
  local ctx = contracts.load_all(o.contracts) -- validates; raises with pv-style messages on error
  local jobs, inputs, seen = {}, {}, {}
  for _, name in ipairs(util.list("codegen", "^gen_.*%.lua$")) do
    local gen = dofile("codegen/" .. name)
    for _, job in ipairs(gen.plan(ctx)) do
      job.script = "codegen/" .. name
      jobs[#jobs + 1] = job
    end
  end
  for _, f in ipairs(ctx.files) do
    if not seen[f] then seen[f] = true inputs[#inputs + 1] = f end
  end
  io.write("return ", serialize({ jobs = jobs, inputs = inputs }), "\n")
end

main(arg)
