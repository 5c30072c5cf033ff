-- template.lua: the one template syntax of the generators. Kernel and test text lives in files under
-- codegen/templates/<target>/ (cuda .cu, glsl .comp, c .c/.h); a generator fills them with ${NAME}, where
-- NAME is upper-case letters, digits and _. A name without a value is an error naming the file, so a
-- template cannot keep a hole; a value that is not a string or number is an error too.
local M = {}

M.DIR = "codegen/templates"

local cache = {}

-- The path of template NAME ("cuda/matvec.cu").
function M.path(name) return M.DIR .. "/" .. name end

-- Whether template NAME exists.
function M.exists(name)
  if cache[name] then return true end
  local f = io.open(M.path(name), "rb")
  if f then f:close() return true end
  return false
end

-- The text of template NAME; a missing file is an error naming it.
function M.load(name)
  local t = cache[name]
  if t then return t end
  local f, err = io.open(M.path(name), "rb")
  if not f then error("template " .. M.path(name) .. " is missing (" .. tostring(err) .. ")", 0) end
  t = f:read("a")
  f:close()
  cache[name] = t
  return t
end

-- TEXT with every ${NAME} replaced by VARS[NAME]; WHERE names the template in errors.
function M.fill(text, vars, where)
  return (text:gsub("%${([%u%d_]+)}", function(k)
    local v = vars[k]
    if v == nil then error((where or "template") .. ": ${" .. k .. "} has no value", 0) end
    if type(v) ~= "string" and type(v) ~= "number" then
      error((where or "template") .. ": ${" .. k .. "} is a " .. type(v) .. ", not text", 0)
    end
    return tostring(v)
  end))
end

-- A template's header: its leading lines "// qmoe-KEY: VALUE" (what a generator needs to know about the kernel
-- besides its text: sizes, launch geometry). Returns { KEY = { VALUE, ... } } (in order) and the text after
-- the header, which is what gets filled.
function M.split(name)
  local text = M.load(name)
  local meta, pos = {}, 1
  while true do
    local key, val, nxt = text:match("^// qmoe%-([%w_]+):[ \t]*([^\n]*)\n()", pos)
    if not key then break end
    meta[key] = meta[key] or {}
    meta[key][#meta[key] + 1] = val
    pos = nxt
  end
  return meta, text:sub(pos)
end

-- "a=1 b=x" -> { a = 1, b = "x" } (numbers converted); WHERE names the template in errors.
function M.pairs_of(s, where)
  local t = {}
  for k, v in (s or ""):gmatch("([%w_]+)=(%S+)") do t[k] = tonumber(v) or v end
  if s and s:gsub("[%w_]+=%S+", ""):match("%S") then error(where .. ": expected key=value pairs in '" .. s .. "'", 0) end
  return t
end

-- Template NAME (its header removed) filled from VARS.
function M.render_body(name, vars)
  local _, body = M.split(name)
  return M.fill(body, vars, M.path(name))
end

-- Template NAME filled from VARS.
function M.render(name, vars) return M.fill(M.load(name), vars, M.path(name)) end

return M
