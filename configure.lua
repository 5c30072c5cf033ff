-- configure.lua: probes the toolchain and writes build.ninja; it declares what to build, nothing more.
-- Usage: ./configure [--cc=CC] [--cxx=CXX] [--cuda-path=DIR] [--no-cuda] [--no-san] [--help]
package.path = "./scripts/?.lua;" .. package.path
local Ninja = require("ninja")

local USAGE = [[
usage: ./configure [options]
  --cc=CC            C compiler (default: $CC, else cc)
  --cxx=CXX          C++ driver used to link shaderc (default: $CXX, else c++)
  --cuda-path=DIR    CUDA toolkit (default: $CUDA_PATH, else /usr/local/cuda)
  --no-cuda          do not build the CUDA compile checks even if a toolkit is found
  --no-san           do not build the ASan+UBSan flavour (tests then skip it)
  -h, --help         this text
Writes build.ninja; then run `ninja` to build and `ninja test` to test.]]

local function die(msg)
  io.stderr:write("configure: error: " .. msg .. "\n")
  os.exit(1)
end

local function parse_args(argv)
  local o = { cc = os.getenv("CC") or "cc", cxx = os.getenv("CXX") or "c++",
              cuda = os.getenv("CUDA_PATH") or "/usr/local/cuda", use_cuda = true, san = true }
  for _, a in ipairs(argv) do
    local k, v = a:match("^%-%-([%w-]+)=(.*)$")
    if a == "-h" or a == "--help" then print(USAGE) os.exit(0)
    elseif a == "--no-cuda" then o.use_cuda = false
    elseif a == "--no-san" then o.san = false
    elseif k == "cc" then o.cc = v
    elseif k == "cxx" then o.cxx = v
    elseif k == "cuda-path" then o.cuda = v
    else die("unknown argument '" .. a .. "'\n" .. USAGE) end
  end
  return o
end

local function sh(cmd)
  local p = io.popen(cmd .. " 2>/dev/null")
  local out = p:read("a")
  local ok = p:close()
  return ok, (out:gsub("%s+$", ""))
end

local function exists(path)
  local f = io.open(path, "rb")
  if f then f:close() return true end
  return false
end

local function write_if_changed(path, text)
  local f = io.open(path, "rb")
  if f then
    local old = f:read("a")
    f:close()
    if old == text then return end
  end
  local tmp = path .. ".tmp"
  f = assert(io.open(tmp, "wb"))
  f:write(text)
  f:close()
  assert(os.rename(tmp, path))
end

-- Sorted list of files in DIR whose names match the Lua pattern PAT.
local function glob(dir, pat)
  local ok, out = sh("ls -1 " .. dir)
  local list = {}
  if ok then
    for name in out:gmatch("[^\n]+") do
      if name:match(pat) then list[#list + 1] = dir .. "/" .. name end
    end
  end
  table.sort(list)
  return list
end

local function dirs(dir)
  local ok, out = sh("ls -1 -p " .. dir)
  local list = {}
  if ok then
    for name in out:gmatch("[^\n]+") do
      if name:sub(-1) == "/" then list[#list + 1] = name:sub(1, -2) end
    end
  end
  table.sort(list)
  return list
end

-- Compile (and link) a probe program; returns true when it builds.
local function try_compile(cc, src, flags)
  os.execute("mkdir -p build/probe")
  local f = assert(io.open("build/probe/probe.c", "wb"))
  f:write(src)
  f:close()
  return os.execute(cc .. " -o build/probe/probe build/probe/probe.c " .. (flags or "") ..
                    " >build/probe/log 2>&1") == true
end

local function probe(o)
  local cfg = { summary = {} }
  local function note(what, ok, detail)
    cfg.summary[#cfg.summary + 1] = string.format("  %-28s %s", what, ok and ("yes" .. (detail and (" (" .. detail .. ")") or "")) or ("NO" .. (detail and (" — " .. detail) or "")))
  end
  if not try_compile(o.cc, "int main(void){return 0;}\n", "") then
    die("C compiler '" .. o.cc .. "' cannot build a program; install the Debian package 'gcc' (build-essential)")
  end
  note("C compiler", true, o.cc)
  -- Lua 5.4: headers and the static library (generators and pv embed it).
  local lua_inc = "/usr/include/lua5.4"
  local ok, out = sh("pkg-config --variable=includedir lua5.4")
  if ok and out ~= "" and exists(out .. "/lua5.4/lua.h") then lua_inc = out .. "/lua5.4" end
  local _, libdir = sh(o.cc .. " -print-multiarch")
  libdir = "/usr/lib/" .. (libdir ~= "" and libdir or "x86_64-linux-gnu")
  cfg.lua_cflags = "-I" .. lua_inc
  cfg.lua_libs = exists(libdir .. "/liblua5.4.a") and (libdir .. "/liblua5.4.a") or "-llua5.4"
  if not try_compile(o.cc, '#include <lua.h>\n#include <lauxlib.h>\nint main(void){lua_State*L=luaL_newstate();return L==0;}\n',
                     cfg.lua_cflags .. " " .. cfg.lua_libs .. " -lm -ldl") then
    die("Lua 5.4 development files not found; install the Debian package 'liblua5.4-dev'")
  end
  note("Lua 5.4 (static)", true, cfg.lua_libs)
  -- libyaml
  cfg.yaml_libs = exists(libdir .. "/libyaml.a") and (libdir .. "/libyaml.a") or "-lyaml"
  if not try_compile(o.cc, "#include <yaml.h>\nint main(void){yaml_parser_t p;return !yaml_parser_initialize(&p);}\n", cfg.yaml_libs) then
    die("libyaml not found (pkg-config yaml-0.1); install the Debian package 'libyaml-dev'")
  end
  note("libyaml (static)", true, cfg.yaml_libs)
  -- shaderc (compiles GLSL to SPIR-V for qmoe-gen --target spirv)
  cfg.shaderc_libs = libdir .. "/libshaderc_combined.a"
  if not exists(cfg.shaderc_libs) or not exists("/usr/include/shaderc/shaderc.h") then
    die("shaderc (shaderc_combined) not found; install the Debian package 'libshaderc-dev'")
  end
  note("shaderc (static)", true, cfg.shaderc_libs)
  -- Debian/Ubuntu's shaderc_combined holds shaderc alone: glslang and SPIRV-Tools are their own static libraries.
  local parts = { cfg.shaderc_libs }
  for _, l in ipairs({ "glslang", "SPIRV", "MachineIndependent", "GenericCodeGen", "OSDependent", "OGLCompiler",
                       "glslang-default-resource-limits", "SPIRV-Tools-opt", "SPIRV-Tools" }) do
    if exists(libdir .. "/lib" .. l .. ".a") then parts[#parts + 1] = libdir .. "/lib" .. l .. ".a" end
  end
  cfg.shaderc_libs = "-Wl,--start-group " .. table.concat(parts, " ") .. " -Wl,--end-group -static-libstdc++ -static-libgcc"
  for _, tool in ipairs({ { "glslc", "glslc" }, { "spirv-val", "spirv-tools" } }) do
    local found = sh("command -v " .. tool[1])
    if not found then die(tool[1] .. " not found; install the Debian package '" .. tool[2] .. "'") end
  end
  note("glslc, spirv-val", true)
  -- Vulkan: headers to build; the loader is dlopen()ed at run time.
  if not try_compile(o.cc, "#include <vulkan/vulkan.h>\nint main(void){return VK_SUCCESS;}\n", "") then
    die("Vulkan headers not found; install the Debian package 'libvulkan-dev'")
  end
  local vk_loader = exists(libdir .. "/libvulkan.so.1")
  note("Vulkan headers", true, vk_loader and "loader present" or "loader missing: Vulkan tests will skip")
  -- CUDA: optional. Headers let us build the CUDA runtime; NVRTC lets tests compile every kernel.
  cfg.cuda_inc = o.cuda .. "/include"
  cfg.have_cuda_headers = o.use_cuda and exists(cfg.cuda_inc .. "/cuda.h") and exists(cfg.cuda_inc .. "/nvrtc.h")
  if cfg.have_cuda_headers then
    note("CUDA toolkit headers", true, o.cuda)
  else
    note("CUDA toolkit headers", false, o.use_cuda and ("not in " .. cfg.cuda_inc .. "; the CUDA runtime is built against qmoe's own declarations") or "--no-cuda")
  end
  cfg.sanitizers = o.san and try_compile(o.cc, "int main(void){return 0;}\n", "-fsanitize=address,undefined")
  note("ASan+UBSan flavour", cfg.sanitizers, (not o.san) and "--no-san" or (not cfg.sanitizers and "compiler lacks -fsanitize=address,undefined" or nil))
  return cfg
end

-- Embed the Lua modules into every tool: the tools' own (src/lib/lua/*.lua: the decode expression
-- language, which pv checks with) and the generators' (codegen/lib/*.lua).
local function lua_module_files()
  local mods = {}
  for _, d in ipairs({ "src/lib/lua", "codegen/lib" }) do
    for _, f in ipairs(glob(d, "%.lua$")) do mods[#mods + 1] = f end
  end
  return mods
end
local function write_lua_modules()
  local mods = lua_module_files()
  local out = { "/* build/gen/lua_modules.c: written by configure.lua from src/lib/lua/*.lua and codegen/lib/*.lua — do not edit */",
                "#include <stddef.h>",
                "struct qmoe_lua_module { const char *name; const char *path; const char *src; size_t len; };",
                "const struct qmoe_lua_module qmoe_lua_modules[] = {" }
  for _, path in ipairs(mods) do
    local f = assert(io.open(path, "rb"))
    local src = f:read("a")
    f:close()
    local esc = src:gsub("[^%w %.,;:_%-%+%*/=<>%(%)%[%]{}#!&|^~%%'@`$]", function(c)
      return string.format("\\%03o", c:byte())
    end)
    out[#out + 1] = string.format('  { "%s", "%s", "%s", %d },', path:match("([^/]+)%.lua$"), path, esc, #src)
  end
  out[#out + 1] = "  { NULL, NULL, NULL, 0 } };"
  out[#out + 1] = string.format("const size_t qmoe_lua_module_count = %d;", #mods)
  os.execute("mkdir -p build/gen")
  write_if_changed("build/gen/lua_modules.c", table.concat(out, "\n") .. "\n")
  return mods
end

-- Build the generator host directly, so configure can ask the contracts which files they generate.
local function bootstrap_host(o, cfg)
  local srcs = { "build/gen/lua_modules.c" }
  for _, d in ipairs({ "src/lib", "src/qmoe-lua" }) do
    for _, f in ipairs(glob(d, "%.c$")) do srcs[#srcs + 1] = f end
  end
  local cmd = string.format("%s -std=c11 -O1 -D_GNU_SOURCE -Isrc/lib -Iruntime %s -o build/qmoe-lua %s %s %s -lm -ldl",
                            o.cc, cfg.lua_cflags, table.concat(srcs, " "), cfg.lua_libs, cfg.yaml_libs)
  if os.execute(cmd .. " 2>build/probe/host.log") ~= true then
    local f = io.open("build/probe/host.log")
    die("could not build the generator host build/qmoe-lua:\n" .. (f and f:read("a") or ""))
  end
end

-- Ask codegen/manifest.lua (run by the host, which validates the contracts) what to generate.
local function read_manifest()
  if not exists("codegen/manifest.lua") then return { jobs = {}, inputs = {} } end
  local p = io.popen("build/qmoe-lua codegen/manifest.lua --contracts contracts 2>&1")
  local text = p:read("a")
  if not p:close() then die("codegen/manifest.lua failed:\n" .. text) end
  local chunk, err = load(text, "manifest", "t", {})
  if not chunk then die("codegen/manifest.lua printed something that is not a Lua table: " .. err) end
  return chunk()
end

local function main(argv)
  local o = parse_args(argv)
  os.execute("mkdir -p build/probe")
  local cfg = probe(o)
  local lua_mods = write_lua_modules()
  bootstrap_host(o, cfg)
  local manifest = read_manifest()

  local n = Ninja.new()
  n:comment("build.ninja: written by configure.lua — do not edit; re-run ./configure " .. table.concat(argv, " "))
  n:variable("configure_args", table.concat(argv, " "))
  n:variable("ninja_required_version", "1.10")
  n:variable("builddir", "build")
  n:variable("cc", o.cc)
  n:variable("cxx", o.cxx)
  local base = "-std=c11 -g -D_GNU_SOURCE -Wall -Wextra -Wno-unused-parameter -ffp-contract=off -fno-strict-aliasing"
  local incs = "-Iruntime -Isrc/lib -Igenerated/c -Ibuild/gen " .. cfg.lua_cflags ..
               (cfg.have_cuda_headers and (" -DQMOE_HAVE_CUDA_H -I" .. cfg.cuda_inc) or "")
  n:variable("cflags", base .. " -O2 " .. incs)
  n:variable("cflags_san", base .. " -O1 -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=all " .. incs)
  n:variable("libs", cfg.lua_libs .. " " .. cfg.yaml_libs .. " -lm -ldl -lpthread")
  n:variable("shaderc_libs", cfg.shaderc_libs)
  n:newline()

  n:rule("configure", "./configure $configure_args", { description = "CONFIGURE", generator = true, pool = "console" })
  n:rule("cc", "$cc -MD -MF $out.d $flags -c $in -o $out", { description = "CC $out", depfile = "$out.d", deps = "gcc" })
  n:rule("ar", "rm -f $out && ar crs $out $in", { description = "AR $out" })
  n:rule("link", "$cc $flags -o $out $in $libs", { description = "LINK $out" })
  n:rule("linkxx", "$cxx $flags -o $out $in $libs $shaderc_libs", { description = "LINK $out" })
  n:rule("codegen", "build/qmoe-lua $script $args", { description = "GEN $desc", restat = true })
  n:rule("glslc", "glslc --target-env=vulkan1.2 -O -MD -MF $out.d -Igenerated/glsl -o $out $in && spirv-val --target-env vulkan1.2 $out",
         { description = "GLSLC $out (+spirv-val)", depfile = "$out.d", deps = "gcc" })
  n:rule("embed", "build/qmoe-lua codegen/embed.lua --name $name --out $out $in", { description = "EMBED $out", restat = true })
  n:rule("tests", "lua5.4 tests/run.lua build/tests.list", { description = "TEST", pool = "console" })
  n:newline()

  -- Regeneration: build.ninja depends on configure.lua, the writer, the manifest and what it read.
  -- Directories count too: adding a source file or a contract changes what configure writes.
  local regen_inputs = { "configure.lua", "scripts/ninja.lua", "configure", "runtime", "codegen", "codegen/lib" }
  if exists("src/lib/lua") then regen_inputs[#regen_inputs + 1] = "src/lib/lua" end
  for _, top in ipairs({ "contracts", "src", "tests" }) do
    regen_inputs[#regen_inputs + 1] = top
    for _, d in ipairs(dirs(top)) do regen_inputs[#regen_inputs + 1] = top .. "/" .. d end
  end
  for _, f in ipairs(glob("codegen", "%.lua$")) do regen_inputs[#regen_inputs + 1] = f end
  for _, f in ipairs(lua_mods) do regen_inputs[#regen_inputs + 1] = f end
  for _, f in ipairs(manifest.inputs or {}) do regen_inputs[#regen_inputs + 1] = f end
  n:build("build.ninja", "configure", {}, { implicit = regen_inputs })
  n:newline()

  -- The generator host (ninja keeps it current after the bootstrap build above).
  local host_objs = {}
  for _, d in ipairs({ "build/gen", "src/lib", "src/qmoe-lua" }) do
    for _, f in ipairs(d == "build/gen" and { "build/gen/lua_modules.c" } or glob(d, "%.c$")) do
      local obj = "build/obj/host/" .. f:gsub("%.c$", ".o")
      n:build(obj, "cc", f, { vars = { flags = "$cflags" } })
      host_objs[#host_objs + 1] = obj
    end
  end
  n:build("build/qmoe-lua", "link", host_objs, { vars = { flags = "" } })
  n:newline()

  -- Code generation: one edge per generator invocation named by codegen/manifest.lua.
  local generated = {}
  local codegen_libs = lua_module_files()
  for _, job in ipairs(manifest.jobs or {}) do
    local implicit = { "build/qmoe-lua", job.script }
    for _, f in ipairs(codegen_libs) do implicit[#implicit + 1] = f end
    n:build(job.outputs, "codegen", job.inputs, { implicit = implicit,
            vars = { script = job.script, args = job.args, desc = job.desc or job.outputs[1] } })
    for _, out in ipairs(job.outputs) do generated[#generated + 1] = out end
  end
  n:newline()
  local function is_generated(ext)
    local list = {}
    for _, f in ipairs(generated) do if f:match(ext) then list[#list + 1] = f end end
    table.sort(list)
    return list
  end

  -- SPIR-V: every generated compute shader is compiled and validated; any error fails the build.
  local spvs = {}
  for _, comp in ipairs(is_generated("%.comp$")) do
    local spv = "build/spv/" .. comp:match("([^/]+)%.comp$") .. ".spv"
    n:build(spv, "glslc", comp, { order_only = generated })
    spvs[#spvs + 1] = spv
  end
  n:build("build/gen/embedded_spirv.c", "embed", spvs, { implicit = { "build/qmoe-lua", "codegen/embed.lua" }, vars = { name = "spirv" } })
  local cus = is_generated("%.cu$")
  n:build("build/gen/embedded_cuda.c", "embed", cus, { implicit = { "build/qmoe-lua", "codegen/embed.lua" }, vars = { name = "cuda" } })
  n:newline()

  -- Two flavours of every library, program and unit test: optimised, and ASan+UBSan.
  local flavours = { { name = "", dir = "build", flags = "$cflags", ldflags = "" } }
  if cfg.sanitizers then
    flavours[#flavours + 1] = { name = "san", dir = "build/san", flags = "$cflags_san", ldflags = "-fsanitize=address,undefined" }
  end
  local tests = {}
  local all = { "build/qmoe-lua" }
  local gen_c = is_generated("^generated/c/.*%.c$")
  local gen_tests = is_generated("^generated/tests/.*%.c$")
  for _, fl in ipairs(flavours) do
    local objdir = "build/obj/" .. (fl.name ~= "" and fl.name or "opt") .. "/"
    local function compile(list)
      local objs = {}
      for _, f in ipairs(list) do
        local obj = objdir .. f:gsub("%.c$", ".o")
        n:build(obj, "cc", f, { vars = { flags = fl.flags }, order_only = generated })
        objs[#objs + 1] = obj
      end
      return objs
    end
    local rt_srcs = glob("runtime", "%.c$")
    for _, f in ipairs(gen_c) do rt_srcs[#rt_srcs + 1] = f end
    rt_srcs[#rt_srcs + 1] = "build/gen/embedded_spirv.c"
    rt_srcs[#rt_srcs + 1] = "build/gen/embedded_cuda.c"
    local libqmoe = fl.dir .. "/libqmoe.a"
    n:build(libqmoe, "ar", compile(rt_srcs))
    local libtools = fl.dir .. "/libqmoe-tools.a"
    local tool_srcs = glob("src/lib", "%.c$")
    tool_srcs[#tool_srcs + 1] = "build/gen/lua_modules.c"
    n:build(libtools, "ar", compile(tool_srcs))
    local libs = { libqmoe, libtools }
    for _, prog in ipairs(dirs("src")) do
      if prog ~= "lib" and prog ~= "qmoe-lua" then -- the host is built above, without libqmoe
        local srcs = glob("src/" .. prog, "%.c$")
        local objs = #srcs > 0 and compile(srcs) or nil
        if objs then
          for _, l in ipairs(libs) do objs[#objs + 1] = l end
          local out = fl.dir .. "/" .. prog
          n:build(out, prog == "qmoe-gen" and "linkxx" or "link", objs, { vars = { flags = fl.ldflags } })
          all[#all + 1] = out
        end
      end
    end
    local unit = glob("tests/unit", "^test_.*%.c$")
    for _, f in ipairs(gen_tests) do unit[#unit + 1] = f end
    for _, f in ipairs(unit) do
      local name = f:match("([^/]+)%.c$")
      local objs = compile({ f })
      for _, l in ipairs(libs) do objs[#objs + 1] = l end
      local out = fl.dir .. "/tests/" .. name
      n:build(out, "link", objs, { vars = { flags = fl.ldflags } })
      all[#all + 1] = out
      tests[#tests + 1] = { name = (fl.name ~= "" and fl.name .. "/" or "") .. name, cmd = out }
    end
    -- Script tests (tests/<suite>/check_*.{sh,lua,py}) get the flavour's binary dir in $QMOE_BIN.
    for _, suite in ipairs(dirs("tests")) do
      for _, f in ipairs(glob("tests/" .. suite, "^check_.*%.[lsp][uhy]a?$")) do
        local runner = f:match("%.lua$") and "lua5.4 " or f:match("%.py$") and "python3 " or "sh "
        local first = io.open(f):read("a")
        local normal_only = first:match("qmoe%-test: normal%-only") ~= nil
        if fl.name == "" or not normal_only then
          tests[#tests + 1] = { name = (fl.name ~= "" and fl.name .. "/" or "") .. f:gsub("^tests/", ""):gsub("%.%w+$", ""),
                                cmd = "env QMOE_BIN=" .. fl.dir .. " " .. runner .. f }
        end
      end
    end
  end
  -- The tiny synthetic model, so the README's `qmoe run` works on a fresh machine with no download.
  n:rule("make_model", "build/qmoe make-model --preset $preset -o $out", { description = "MAKE-MODEL $out", restat = true })
  n:build("build/models/tiny.gguf", "make_model", {}, { implicit = { "build/qmoe" }, vars = { preset = "tiny" } })
  all[#all + 1] = "build/models/tiny.gguf"
  n:newline()
  n:build("all", "phony", all)
  n:build("test", "tests", {}, { implicit = all })
  n:default("all")

  local tl = {}
  for _, t in ipairs(tests) do tl[#tl + 1] = t.name .. "\t" .. t.cmd end
  write_if_changed("build/tests.list", table.concat(tl, "\n") .. "\n")
  -- build.ninja is always rewritten (a fresh mtime), so ninja never sees it stale after regeneration.
  local f = assert(io.open("build.ninja", "wb"))
  f:write(n:text())
  f:close()
  print("qmoe configured:")
  print(table.concat(cfg.summary, "\n"))
  print(string.format("  %d generator job(s), %d test(s). Now run: ninja && ninja test", #(manifest.jobs or {}), #tests))
end

main(arg)
