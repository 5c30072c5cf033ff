-- check_layers.lua: the tree reads in the order data flows. Every C #include "..." and Lua require(...)
-- edge must point to the same layer or a lower one, and the include/require graph has no cycle.
-- Usage: lua5.4 tests/ci/check_layers.lua [ROOT]     (prints ok/not ok lines; exit 1 on any violation)
-- qmoe-test: normal-only
--
-- Layers, lowest first (docs/DEVELOPING.md draws them):
--   1 tools     src/lib/ (YAML tree, diagnostics, Lua host, validator) and its Lua modules (src/lib/lua/)
--   2 codegen   codegen/ (generators, their modules and the kernel templates)
--   3 libqmoe   generated/ and runtime/ (generated code is compiled into the library it serves)
--   4 programs  src/<program>/ other than src/lib
-- contracts/ is data (layer 0) and includes nothing; tests/ and scripts/ may use any layer.

local root = arg[1] or "."
local function sh(cmd)
  local p = assert(io.popen(cmd))
  local t = p:read("a")
  p:close()
  return t
end
local function read(path)
  local f = io.open(root .. "/" .. path, "rb")
  if not f then return nil end
  local t = f:read("a")
  f:close()
  return t
end

local function layer_of(path)
  if path:match("^contracts/") then return 0, "contracts" end
  if path:match("^src/lib/") then return 1, "tools" end
  if path:match("^codegen/") then return 2, "codegen" end
  if path:match("^generated/") or path:match("^runtime/") then return 3, "libqmoe" end
  if path:match("^src/[^/]+/") then return 4, "programs" end
  return nil
end

-- Files under version control or about to be (untracked, not ignored).
local files = {}
for f in sh("cd '" .. root .. "' && git ls-files -co --exclude-standard"):gmatch("[^\n]+") do
  if read(f) then files[#files + 1] = f end
end
table.sort(files)
local exists = {}
for _, f in ipairs(files) do exists[f] = true end

-- Include search path: the file's own directory, then the build's -I list (configure.lua), then any
-- directory under runtime/ (runtime is split by concern and each part is on the path).
local inc_dirs = { "runtime", "src/lib", "generated/c" }
for _, f in ipairs(files) do
  local d = f:match("^(runtime/.+)/[^/]+$")
  if d then
    local seen = false
    for _, x in ipairs(inc_dirs) do if x == d then seen = true end end
    if not seen then inc_dirs[#inc_dirs + 1] = d end
  end
end
table.sort(inc_dirs)

local function resolve_include(from, name)
  local dir = from:match("^(.*)/[^/]+$") or "."
  local cand = dir .. "/" .. name
  cand = cand:gsub("/%./", "/")
  while cand:match("[^/]+/%.%./") do cand = cand:gsub("[^/]+/%.%./", "", 1) end
  if exists[cand] then return cand end
  for _, d in ipairs(inc_dirs) do
    if exists[d .. "/" .. name] then return d .. "/" .. name end
  end
  return nil -- system header, or written into build/ at configure time
end

-- Lua modules embedded into every tool: codegen/lib/*.lua and src/lib/lua/*.lua, by base name.
local lua_mod = {}
for _, f in ipairs(files) do
  local name = f:match("^codegen/lib/([%w_]+)%.lua$") or f:match("^src/lib/lua/([%w_]+)%.lua$")
  if name then lua_mod[name] = f end
end
-- C modules that register a Lua module by name (luaL_requiref / package.preload): require("pv").
local c_lua_mod = { pv = "src/lib/pv.h" }

local edges = {} -- from -> list of {to, line, what}
local function add(from, to, line, what)
  edges[from] = edges[from] or {}
  table.insert(edges[from], { to = to, line = line, what = what })
end

for _, f in ipairs(files) do
  if f:match("%.[ch]$") or f:match("%.cu$") or f:match("%.comp$") or f:match("%.glsl$") or f:match("%.cuh$") then
    local n = 0
    for line in (read(f) .. "\n"):gmatch("([^\n]*)\n") do
      n = n + 1
      local name = line:match('^%s*#%s*include%s+"([^"]+)"')
      if name then
        local to = resolve_include(f, name)
        if to then add(f, to, n, '#include "' .. name .. '"') end
      end
    end
  elseif f:match("%.lua$") then
    local n = 0
    for line in (read(f) .. "\n"):gmatch("([^\n]*)\n") do
      n = n + 1
      if not line:match("^%s*%-%-") then
        for name in line:gmatch('require%s*%(?%s*["\']([%w_%.]+)["\']') do
          local to = lua_mod[name] or c_lua_mod[name]
          if to then add(f, to, n, 'require("' .. name .. '")') end
        end
      end
    end
  end
end

local bad, ok = 0, 0
local function report(good, name, why)
  if good then
    ok = ok + 1
    print("ok " .. name)
  else
    bad = bad + 1
    print("not ok " .. name .. ": " .. why)
  end
end

-- 1. No edge to a higher layer.
local upward = {}
for _, f in ipairs(files) do
  local lf, nf = layer_of(f)
  for _, e in ipairs(edges[f] or {}) do
    local lt, nt = layer_of(e.to)
    if lf and lt and lt > lf then
      upward[#upward + 1] = string.format("%s:%d: %s reaches up from %s (layer %d) to %s (%s, layer %d)",
                                          f, e.line, e.what, nf, lf, e.to, nt, lt)
    end
  end
end
report(#upward == 0, "layers/no-upward-edge", #upward .. " upward edge(s):\n    " .. table.concat(upward, "\n    "))

-- 2. No cycle in the graph of headers and Lua modules. A .c file is a leaf (nothing includes it); a
-- module's .c files and its header are one node, so pv_run.c -> pv.h <- pv_lua.c is not a cycle, but
-- luaenv.c -> pv.h while pv_lua.c -> luaenv.h is (module luaenv needs pv and pv needs luaenv).
local function node_of(f)
  local base = f:gsub("%.[ch]$", ""):gsub("%.lua$", "")
  -- pv_check.c, pv_lua.c, ... belong to the module of pv.h when it sits beside them.
  local dir, stem = base:match("^(.*)/([^/]+)$")
  if dir and f:match("%.c$") then
    local prefix = stem:match("^([%a%d]+)_")
    if prefix and exists[dir .. "/" .. prefix .. ".h"] and not exists[dir .. "/" .. stem .. ".h"] then
      return dir .. "/" .. prefix
    end
  end
  return base
end
local g, nodes = {}, {}
for from, list in pairs(edges) do
  local a = node_of(from)
  for _, e in ipairs(list) do
    local b = node_of(e.to)
    if a ~= b then
      g[a] = g[a] or {}
      if not g[a][b] then g[a][b] = e.what .. " at " .. from .. ":" .. e.line end
      nodes[a], nodes[b] = true, true
    end
  end
end
local names = {}
for k in pairs(nodes) do names[#names + 1] = k end
table.sort(names)
local color, stack, cycles = {}, {}, {}
local function dfs(u)
  color[u] = 1
  stack[#stack + 1] = u
  local outs = {}
  for v in pairs(g[u] or {}) do outs[#outs + 1] = v end
  table.sort(outs)
  for _, v in ipairs(outs) do
    if color[v] == 1 then
      local desc = {}
      for i = 1, #stack do
        if stack[i] == v then
          for j = i, #stack do
            local nxt = stack[j + 1] or v
            desc[#desc + 1] = stack[j] .. " -> " .. nxt .. " [" .. g[stack[j]][nxt] .. "]"
          end
          break
        end
      end
      cycles[#cycles + 1] = table.concat(desc, "; ")
    elseif not color[v] then
      dfs(v)
    end
  end
  stack[#stack] = nil
  color[u] = 2
end
for _, u in ipairs(names) do if not color[u] then dfs(u) end end
report(#cycles == 0, "layers/no-cycle", #cycles .. " cycle(s):\n    " .. table.concat(cycles, "\n    "))

os.exit(bad == 0 and 0 or 1)
