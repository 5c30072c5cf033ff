-- run.lua: the test runner behind `ninja test`. Runs every entry of build/tests.list (NAME<TAB>COMMAND),
-- counts the "ok", "not ok" and "skip" lines each prints, shows the output of failing entries, and
-- ends with "N passed, N failed" (", N skipped" when any were skipped).
-- Usage: lua5.4 tests/run.lua build/tests.list [FILTER]   (FILTER: Lua pattern on entry names)
local list_path, filter = arg[1], arg[2]
if not list_path or list_path == "--help" or list_path == "-h" then
  print("usage: lua5.4 tests/run.lua build/tests.list [FILTER]")
  os.exit(list_path and 0 or 2)
end
local f = io.open(list_path)
if not f then
  io.stderr:write("run.lua: cannot read " .. list_path .. " (run ./configure first)\n")
  os.exit(2)
end
local entries = {}
for line in f:lines() do
  local name, cmd = line:match("^([^\t]+)\t(.+)$")
  if name and (not filter or name:match(filter)) then entries[#entries + 1] = { name = name, cmd = cmd } end
end
f:close()

local passed, failed, skipped = 0, 0, 0
local failures = {}
for i, e in ipairs(entries) do
  io.write(string.format("[%d/%d] %s ... ", i, #entries, e.name))
  io.flush()
  local p = io.popen("(" .. e.cmd .. ") 2>&1; echo \"@@exit $?\"")
  local out = p:read("a")
  p:close()
  local code = tonumber(out:match("@@exit (%d+)%s*$")) or 1
  out = out:gsub("@@exit %d+%s*$", "")
  local ok, bad, skip = 0, 0, 0
  for l in out:gmatch("[^\n]+") do
    if l:match("^ok ") then ok = ok + 1
    elseif l:match("^not ok ") then bad = bad + 1
    elseif l:match("^skip ") then skip = skip + 1 end
  end
  if code ~= 0 and bad == 0 then bad = 1 end -- a crash or a non-zero exit without a failing case
  if ok + bad + skip == 0 then bad = 1 end    -- an entry that checked nothing is a failure
  passed, failed, skipped = passed + ok, failed + bad, skipped + skip
  io.write(string.format("%d ok, %d failed, %d skipped%s\n", ok, bad, skip, code ~= 0 and (" (exit " .. code .. ")") or ""))
  if bad > 0 then failures[#failures + 1] = { e = e, out = out } end
  for l in out:gmatch("[^\n]+") do if l:match("^skip ") then io.write("    ", l, "\n") end end
end
for _, fl in ipairs(failures) do
  io.write("\n==== FAILED: ", fl.e.name, "\n$ ", fl.e.cmd, "\n")
  local lines = {}
  for l in fl.out:gmatch("[^\n]*\n?") do lines[#lines + 1] = l end
  io.write(table.concat(lines, "", math.max(1, #lines - 60)))
end
io.write("\n")
print(string.format("%d passed, %d failed%s", passed, failed, skipped > 0 and (", " .. skipped .. " skipped") or ""))
os.exit(failed == 0 and 0 or 1)
