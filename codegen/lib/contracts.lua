-- contracts.lua: loads contracts/ for the generators. The same C validator that `pv validate` runs is
-- applied first (through the host's `pv` module when linked in), so generators only see valid data.
local util = require("util")
local M = {}

local KINDS = { "quant", "stages", "models", "recipes" }

-- load_all(dir) -> { quant = {list, by_name}, stages = {...}, models = {...}, files = {...} }
function M.load_all(dir)
  local ok_pv, pv = pcall(require, "pv")
  if ok_pv and pv.validate then
    local ok, report = pv.validate(dir)
    if not ok then error("contracts are invalid (run `pv validate " .. dir .. "`):\n" .. report, 0) end
  end
  local ctx = { files = {} }
  for _, kind in ipairs(KINDS) do
    local list, by_name = {}, {}
    for _, name in ipairs(util.list(dir .. "/" .. kind, "%.ya?ml$")) do
      local path = dir .. "/" .. kind .. "/" .. name
      local tree, err = yaml.load(path)
      if not tree then error(err, 0) end
      tree.__file = path
      tree.__stem = name:gsub("%.ya?ml$", "")
      list[#list + 1] = tree
      by_name[tree.name or tree.__stem] = tree
      ctx.files[#ctx.files + 1] = path
    end
    ctx[kind] = { list = list, by_name = by_name }
  end
  return ctx
end

return M
