-- ninja.lua: a tiny ninja-file writer for configure.lua (variables, rules, build edges, escaping).
local M = {}
M.__index = M

function M.new()
  return setmetatable({ lines = {} }, M)
end

-- Escape a path for use in a build line: '$', ' ' and ':' are special there.
function M.escape_path(p)
  return (p:gsub("%$", "$$"):gsub(" ", "$ "):gsub(":", "$:"))
end

-- Escape a value for a variable binding (only '$' is special).
function M.escape(v)
  return (tostring(v):gsub("%$", "$$"))
end

local function join(list)
  local out = {}
  for _, p in ipairs(list or {}) do out[#out + 1] = M.escape_path(p) end
  return table.concat(out, " ")
end

function M:comment(text)
  for line in (text .. "\n"):gmatch("(.-)\n") do
    self.lines[#self.lines + 1] = "# " .. line
  end
end

function M:newline() self.lines[#self.lines + 1] = "" end

function M:variable(name, value, indent)
  if type(value) == "table" then value = table.concat(value, " ") end
  self.lines[#self.lines + 1] = (indent or "") .. name .. " = " .. tostring(value)
end

-- rule(name, command, {description=, depfile=, deps=, generator=, restat=, pool=})
function M:rule(name, command, opts)
  opts = opts or {}
  self.lines[#self.lines + 1] = "rule " .. name
  self:variable("command", command, "  ")
  for _, k in ipairs({ "description", "depfile", "deps", "pool" }) do
    if opts[k] then self:variable(k, opts[k], "  ") end
  end
  if opts.generator then self:variable("generator", 1, "  ") end
  if opts.restat then self:variable("restat", 1, "  ") end
  self:newline()
end

-- build(outs, rule, ins, {implicit=, order_only=, implicit_outputs=, vars={k=v}})
function M:build(outs, rule, ins, opts)
  opts = opts or {}
  if type(outs) == "string" then outs = { outs } end
  if type(ins) == "string" then ins = { ins } end
  local line = "build " .. join(outs)
  if opts.implicit_outputs and #opts.implicit_outputs > 0 then
    line = line .. " | " .. join(opts.implicit_outputs)
  end
  line = line .. ": " .. rule
  if ins and #ins > 0 then line = line .. " " .. join(ins) end
  if opts.implicit and #opts.implicit > 0 then line = line .. " | " .. join(opts.implicit) end
  if opts.order_only and #opts.order_only > 0 then line = line .. " || " .. join(opts.order_only) end
  self.lines[#self.lines + 1] = line
  if opts.vars then
    local keys = {}
    for k in pairs(opts.vars) do keys[#keys + 1] = k end
    table.sort(keys)
    for _, k in ipairs(keys) do self:variable(k, opts.vars[k], "  ") end
  end
end

function M:default(targets)
  if type(targets) == "string" then targets = { targets } end
  self.lines[#self.lines + 1] = "default " .. join(targets)
end

function M:text() return table.concat(self.lines, "\n") .. "\n" end

return M
