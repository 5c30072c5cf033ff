-- gen_cuda.lua: writes generated/cuda/<stage>[__<qtype>][__<acc>].cu, one NVRTC-compiled kernel per file, for
-- every variant the stage contracts (contracts/stages/*.yaml, normalized by gen_stages.lua) list: qtype
-- stages × the qtypes they name × accumulators; decoding comes from expr.emit(q, expr.dialects.cuda).
-- Usage: qmoe-lua codegen/gen_cuda.lua [--contracts DIR] (--stage NAME [--qtype NAME] [--acc f32|f64|q8] | --launch) --out FILE
-- (--launch writes generated/c/cuda_launch.c, the launch geometry of every stage, from the templates' headers)
--
-- Each file starts with the banner and one metadata line the runtime (runtime/cuda/cuda.c) reads:
--   // qmoe-cuda: stage=S qtype=Q ggml_type=N acc=A entry=E block_elements=BE block_bytes=BB threads=T rows_per_block=R
-- (qtype=- ggml_type=-1 for stages that do not vary by qtype, acc=- for those that do not vary by accumulator).
-- Kernels take one argument, `const qmoe_args a`: buffer addresses (base + offset) in contract order, int
-- params, float params — bound to the contract's names at the top of each kernel.
local util = require("util")
local expr = require("expr")
local template = require("template")
local variants = require("variants")
local M = {}
local USAGE = "usage: qmoe-lua codegen/gen_cuda.lua [--contracts DIR] (--stage NAME [--qtype NAME] [--acc f32|f64|q8] | --launch) --out FILE"
local SCRIPT = "codegen/gen_cuda.lua"

local WARPS = 4          -- warps per block of the row kernels (one block = 128 threads)
local STAGE_BYTES = 2048 -- bytes of one row staged in shared memory per chunk (rounded to whole blocks)

local function stages_module()
  return dofile("codegen/gen_stages.lua")
end

-- The decode dialect: expr's CUDA dialect (its loads, __fmul_rn & co.), except that f16 fields convert with the
-- hardware instruction (cvt.f32.f16: exact, as the contract requires, and branch-free, so the compiler can
-- share one block's scale conversions between the elements a lane decodes) instead of the portable bit
-- manipulation with its branches for subnormals and inf/NaN.
local DIALECT = setmetatable({
  select = function(c, a, b) return "qmoe_sel(" .. c .. ", " .. a .. ", " .. b .. ")" end,
  load = function(ftype, off)
    if ftype == "f16" then return "qmoe_cu_f16(qmoe_q_rd_u16(b + " .. off .. "))" end
    return expr.dialects.cuda.load(ftype, off)
  end,
}, { __index = expr.dialects.cuda })

-- ---------------------------------------------------------------------------------------------------
-- Kernels: the CUDA text is in codegen/templates/cuda/ (filled by codegen/lib/template.lua): _prelude.cu
-- (types and helpers, every file), _qrows.cu (quantized rows staged in shared memory and the warp's dot
-- products, qtype stages) and <stage>.cu, whose kernel gets the binding of the contract's names (${BIND})
-- first. A stage template starts with its header (docs/stages.md):
--   // qmoe-kernel: qtype=1 acc=1 threads=T rows_per_block=R [min_blocks=N] [max_x=N ...]
--       qtype / acc: the kernel varies by them; threads per block; rows (or items) a block handles;
--       __launch_bounds__' min blocks; other keys are constants of the kernel (its fixed-size arrays), which
--       the text reads as ${MAX_X} and the launch as MAX_X
--   // qmoe-limit: PARAM <= BOUND     the call is QMOE_EUNSUPPORTED past it (repeatable)
--   // qmoe-let: NAME = EXPR          a local of the launch (repeatable, in order)
--   // qmoe-grid: X, Y                blocks
--   // qmoe-workspace: EXPR           bytes of zeroed device memory at args.buf[7] (default none)
-- Launch expressions are C over the contract's int params, the kernel's constants, RPB (rows_per_block),
-- THREADS, SM_COUNT (multiprocessors), ACC_BYTES, TOKENS (the call's tokens), qmoe_cdiv(a, b) and
-- qmoe_min(a, b); they are emitted into generated/c/cuda_launch.c, so runtime/cuda/backend_cuda.c launches any
-- stage by table lookup.
-- Tokens (a stage contract's `tokens`): by default the grid's z is the call's tokens and ${BIND} moves the
-- per-token buffers and advancing params to token blockIdx.z, so a one-token kernel serves T tokens as T
-- one-token calls. A kernel line with own_tokens=1 takes all T itself (grid: three expressions; ${BIND}
-- gives qmoe_tokens and leaves buffers and params at token 0): one read of a weight for many tokens. Its
-- template defines two entries, ${ENTRY} (one token) and ${TOK_ENTRY} (T > 1; the runtime picks it), so the
-- registers of the many-token code cost the one-token entry, which decode runs, no occupancy.

-- Splits S at commas outside parentheses.
local function split_top(s)
  local out, depth, cur = {}, 0, {}
  for ch in s:gmatch(".") do
    if ch == "(" then depth = depth + 1 elseif ch == ")" then depth = depth - 1 end
    if ch == "," and depth == 0 then out[#out + 1] = table.concat(cur):match("^%s*(.-)%s*$") cur = {}
    else cur[#cur + 1] = ch end
  end
  out[#out + 1] = table.concat(cur):match("^%s*(.-)%s*$")
  return out
end

-- The kernel of stage NAME, from its template's header: the kernel line's pairs, plus launch = { limits,
-- let, grid, workspace }. nil when the stage has no template.
local kernel_cache = {}
local function kernel_of(name)
  if kernel_cache[name] ~= nil then return kernel_cache[name] or nil end
  local tname = "cuda/" .. name .. ".cu"
  if not template.exists(tname) then kernel_cache[name] = false return nil end
  local where = template.path(tname)
  local meta = template.split(tname)
  if not meta.kernel or #meta.kernel ~= 1 then error(where .. ": needs one '// qmoe-kernel:' header line", 0) end
  local kd = template.pairs_of(meta.kernel[1], where)
  kd.qtype, kd.acc = kd.qtype == 1, kd.acc == 1
  if type(kd.threads) ~= "number" or type(kd.rows_per_block) ~= "number" then
    error(where .. ": the kernel line needs threads=N and rows_per_block=N", 0)
  end
  if kd.qtype and kd.threads ~= WARPS * 32 then
    error(where .. ": a qtype kernel runs " .. WARPS * 32 .. " threads (_qrows.cu's WARPS = " .. WARPS .. ")", 0)
  end
  local L = { limits = {}, let = {}, where = where }
  for _, l in ipairs(meta.limit or {}) do
    local a, b = l:match("^([%w_]+)%s*<=%s*(.+)$")
    if not a then error(where .. ": qmoe-limit '" .. l .. "' is not PARAM <= BOUND", 0) end
    L.limits[#L.limits + 1] = { a, b }
  end
  for _, l in ipairs(meta.let or {}) do
    local a, b = l:match("^([%a_][%w_]*)%s*=%s*(.+)$")
    if not a then error(where .. ": qmoe-let '" .. l .. "' is not NAME = EXPR", 0) end
    L.let[#L.let + 1] = { a, b }
  end
  if not meta.grid or #meta.grid ~= 1 then error(where .. ": needs one '// qmoe-grid: X, Y' header line", 0) end
  L.grid = split_top(meta.grid[1])
  kd.own_tokens = kd.own_tokens == 1
  if kd.own_tokens then
    if #L.grid ~= 3 then error(where .. ": an own_tokens=1 kernel gives its grid as three expressions (x, y, z)", 0) end
  elseif #L.grid ~= 2 then
    error(where .. ": qmoe-grid needs two expressions (x, y); z is the call's tokens (own_tokens=1 kernels give it)", 0)
  end
  L.workspace = meta.workspace and meta.workspace[1] or nil
  kd.launch = L
  kernel_cache[name] = kd
  return kd
end
M.kernel_of = kernel_of


-- generated/c/cuda_launch.c: one launch function per stage and the table indexed by qmoe_stage.
local function emit_launch(recs)
  local consts_of = function(kd)
    local c = {}
    for k, v in pairs(kd) do
      if type(v) == "number" and k ~= "threads" and k ~= "rows_per_block" then c[k:upper()] = v end
      c.OWN_TOKENS = nil
    end
    return c
  end
  local o = { util.banner("c", SCRIPT, "contracts/stages/*.yaml"),
    "/* cuda_launch.c: the CUDA launch geometry of every stage (the headers of codegen/templates/cuda/<stage>.cu): grid, limits of",
    " * the kernels' fixed-size arrays and workspace, as functions of the call's params. */",
    "#include <stdint.h>", '#include "backend.h"', '#include "cuda_internal.h"', '#include "qmoe.h"', "",
    "static inline int64_t qmoe_cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }",
    "static inline int64_t qmoe_min(int64_t a, int64_t b) { return a < b ? a : b; }", "" }
  local names = {}
  for _, r in ipairs(recs) do
    local kd = kernel_of(r.name)
    if not kd then error(r.file .. ": stage '" .. r.name .. "' has no CUDA kernel: add " .. template.path("cuda/" .. r.name .. ".cu"), 0) end
    local L = kd.launch
    local consts = consts_of(kd)
    local function cexpr(e)
      return (e:gsub("[%a_][%w_]*", function(n)
        if consts[n] ~= nil then return tostring(consts[n]) end
        if n == "RPB" then return "env->rows_per_block" elseif n == "THREADS" then return "env->threads"
        elseif n == "SM_COUNT" then return "env->sm_count" elseif n == "ACC_BYTES" then return "env->acc_bytes"
        elseif n == "TOKENS" then return "env->tokens" end
        local is_param = false
        for _, pn in ipairs(r.ints) do is_param = is_param or pn == n end
        if not is_param and n:match("^%u[%u%d_]*$") then error(L.where .. ": the launch names " .. n .. ", which the kernel line does not set", 0) end
        return n
      end))
    end
    o[#o + 1] = string.format("static int launch_%s(const qmoe_cuda_launch_env *env, const int64_t *p, qmoe_cuda_launch *l) {", r.name)
    local used = {}
    for i, n in ipairs(r.ints) do
      o[#o + 1] = string.format("  const int64_t %s = p[%d];", n, i - 1)
      used[#used + 1] = "(void)" .. n
    end
    if #used > 0 then o[#o + 1] = "  " .. table.concat(used, ", ") .. ";" end
    o[#o + 1] = "  (void)env;"
    for _, lim in ipairs(L.limits or {}) do
      local lhs = cexpr(lim[1]) -- a param, or TOKENS (the call's tokens)
      o[#o + 1] = string.format("  if (%s > %s) {", lhs, cexpr(lim[2]))
      o[#o + 1] = string.format('    qmoe_set_error("cuda backend: stage %s: %s = %%lld exceeds the CUDA kernel\'s limit of %%lld", (long long)%s, (long long)%s);',
                                r.name, lim[1] == "TOKENS" and "tokens" or lim[1], lhs, cexpr(lim[2]))
      o[#o + 1] = "    return QMOE_EUNSUPPORTED;"
      o[#o + 1] = "  }"
    end
    for _, lt in ipairs(L.let or {}) do o[#o + 1] = string.format("  const int64_t %s = %s;", lt[1], cexpr(lt[2])) end
    o[#o + 1] = string.format("  l->grid[0] = %s;", cexpr(L.grid[1]))
    o[#o + 1] = string.format("  l->grid[1] = %s;", cexpr(L.grid[2]))
    -- z: a generic kernel of a stage with `tokens` takes token blockIdx.z; own_tokens kernels say their own
    if kd.own_tokens and not r.tokens then error(L.where .. ": own_tokens=1, but " .. r.file .. " has no `tokens`", 0) end
    o[#o + 1] = string.format("  l->grid[2] = %s;", kd.own_tokens and cexpr(L.grid[3]) or (r.tokens and "env->tokens" or "1"))
    o[#o + 1] = string.format("  l->workspace = (size_t)(%s);", L.workspace and cexpr(L.workspace) or "0")
    o[#o + 1] = "  return 0;"
    o[#o + 1] = "}"
    o[#o + 1] = ""
    names[#names + 1] = string.format("  [QMOE_STAGE_%s] = launch_%s,", r.name:upper():gsub("[^%w]", "_"), r.name)
  end
  o[#o + 1] = "const qmoe_cuda_launch_fn qmoe_cuda_launch_table[QMOE_STAGE_COUNT > 0 ? QMOE_STAGE_COUNT : 1] = {"
  for _, l in ipairs(names) do o[#o + 1] = l end
  o[#o + 1] = "};"
  return table.concat(o, "\n") .. "\n"
end

-- ---------------------------------------------------------------------------------------------------
-- Variants

local function stem(st, q, acc)
  local s = st.name
  if q then s = s .. "__" .. q.name end
  if acc then s = s .. "__" .. acc end
  return s
end

local function has(list, x)
  for _, v in ipairs(list or {}) do if v == x then return true end end
  return false
end

-- Every variant of every stage contract: { stage = record, q = quant contract or nil, acc = "f32"/"f64"/nil,
-- stem, file, entry }. A stage contract without a kernel here, or a kernel whose qtype/acc shape disagrees
-- with its contract, is an error.
function M.variants(ctx)
  local recs = stages_module().stages(ctx)
  local errs, out = {}, {}
  for _, st in ipairs(recs) do
    local kd = kernel_of(st.name)
    if not kd then
      errs[#errs + 1] = st.file .. ": stage '" .. st.name .. "' has no CUDA kernel: add " .. template.path("cuda/" .. st.name .. ".cu")
    else
      if (kd.qtype or false) ~= st.by_qtype then
        errs[#errs + 1] = st.file .. ": stage '" .. st.name .. "' varies_by qtype = " .. tostring(st.by_qtype) ..
                          " but its CUDA kernel " .. (kd.qtype and "does" or "does not")
      end
      local by_acc = (kd.acc or kd.qtype) and true or false
      if by_acc ~= st.by_acc then
        errs[#errs + 1] = st.file .. ": stage '" .. st.name .. "' varies_by acc = " .. tostring(st.by_acc) ..
                          " but its CUDA kernel " .. (by_acc and "does" or "does not")
      end
    end
  end
  if #errs > 0 then error(table.concat(errs, "\n"), 0) end
  for _, v in ipairs(variants.list(ctx, recs)) do
    out[#out + 1] = { stage = v.rec, q = v.q, acc = v.acc, stem = v.stem, file = "generated/cuda/" .. v.stem .. ".cu",
                      entry = "qmoe_" .. v.stem, kernel = kernel_of(v.rec.name) }
  end
  return out
end

local LAUNCH_OUT = "generated/c/cuda_launch.c"

function M.plan(ctx)
  local jobs = {}
  local all = {}
  for _, st in ipairs(ctx.stages.list) do all[#all + 1] = st.__file end
  all[#all + 1] = "codegen/gen_stages.lua"
  for _, st in ipairs(ctx.stages.list) do
    if template.exists("cuda/" .. st.name .. ".cu") then all[#all + 1] = template.path("cuda/" .. st.name .. ".cu") end
  end
  jobs[#jobs + 1] = { outputs = { LAUNCH_OUT }, inputs = all, args = "--launch --out " .. LAUNCH_OUT, desc = LAUNCH_OUT }
  for _, v in ipairs(M.variants(ctx)) do
    local inputs = { v.stage.file }
    if v.q then inputs[#inputs + 1] = v.q.__file end
    inputs[#inputs + 1] = "codegen/gen_stages.lua"
    inputs[#inputs + 1] = template.path("cuda/_prelude.cu")
    if v.q then inputs[#inputs + 1] = template.path("cuda/_qrows.cu") end
    inputs[#inputs + 1] = template.path("cuda/" .. v.stage.name .. ".cu")
    local args = "--stage " .. v.stage.name .. (v.q and (" --qtype " .. v.q.name) or "") ..
                 (v.acc and (" --acc " .. v.acc) or "") .. " --out " .. v.file
    jobs[#jobs + 1] = { outputs = { v.file }, inputs = inputs, args = args, desc = v.file }
  end
  return jobs
end

-- ---------------------------------------------------------------------------------------------------
-- Emission

local CTYPE = { f32 = "float", i32 = "int32_t", qtype = "uint8_t" }

-- Binds the contract's buffers and params to local names (the kernel bodies use the contract's names).
-- A name that is not a C identifier, or clashes, fails here with the contract named.
local function binding(st, argname, rename, own_tokens, wait_in_template)
  local lines = {}
  -- Token: generic kernels of a stage with `tokens` take token blockIdx.z (per-token buffers and advancing
  -- params moved to it); own_tokens kernels and stages without tokens take token 0.
  local generic = st.tokens and not own_tokens
  -- Kernel experiment (QMOE_CUDA_DEFINES, docs/cuda.md): QMOE_EMPTY_ALL or QMOE_EMPTY_<STAGE> makes the kernel's
  -- threads exit at once, so a timed decode shows what the launch chain costs without the stage's work.
  lines[#lines + 1] = string.format("#if defined(QMOE_EMPTY_ALL) || defined(QMOE_EMPTY_%s)\n  asm volatile(\"exit;\");\n#endif",
                                    st.name:upper())
  lines[#lines + 1] = string.format("  const int64_t qmoe_tokens = %s.tokens;", argname)
  lines[#lines + 1] = generic and "  const int64_t qmoe_tok = blockIdx.z;" or "  const int64_t qmoe_tok = 0;"
  for i, p in ipairs(st.ints) do
    local adv = generic and st.tokens.params[p] and " + qmoe_tok" or ""
    lines[#lines + 1] = string.format("  const int64_t %s = %s.p[%d]%s;", rename[p] or p, argname, i - 1, adv)
  end
  for i, b in ipairs(st.bufs) do
    local ty = CTYPE[b.dtype] or error(st.file .. ": buffer '" .. b.name .. "' has dtype " .. tostring(b.dtype), 0)
    local name = rename[b.name] or b.name
    if not name:match("^[%a_][%w_]*$") then error(st.file .. ": buffer name '" .. name .. "' is not a C identifier", 0) end
    local const = b.__kind == "inputs" and "const " or ""
    local at = ""
    if generic and st.tokens.bufs[b.name] then
      local dims = {}
      for _, d in ipairs(b.__dims) do dims[#dims + 1] = d.lit and tostring(d.lit) or ("(" .. (rename[d.name] or d.name) .. ")") end
      at = " + qmoe_tok * " .. (#dims > 0 and table.concat(dims, " * ") or "1")
    end
    lines[#lines + 1] = string.format("  %s%s *const %s = (%s%s *)%s.buf[%d]%s;", const, ty, name, const, ty, argname, i - 1, at)
    -- qmoe_early_<name>: no kernel that may run at the same time writes this input (the backend's args.early), so
    -- a template may read it before ${GRID_WAIT}
    if b.__kind == "inputs" then
      lines[#lines + 1] = string.format("  const bool qmoe_early_%s = ((%s.early >> %d) & 1) != 0;", name, argname, i - 1)
    end
  end
  for i, p in ipairs(st.floats) do
    lines[#lines + 1] = string.format("  const double %s = %s.f[%d];", rename[p] or p, argname, i - 1)
  end
  local used = { "(void)qmoe_tokens", "(void)qmoe_tok" }
  for _, b in ipairs(st.bufs) do
    used[#used + 1] = "(void)" .. (rename[b.name] or b.name)
    if b.__kind == "inputs" then used[#used + 1] = "(void)qmoe_early_" .. (rename[b.name] or b.name) end
  end
  for _, p in ipairs(st.ints) do used[#used + 1] = "(void)" .. (rename[p] or p) end
  for _, p in ipairs(st.floats) do used[#used + 1] = "(void)" .. (rename[p] or p) end
  lines[#lines + 1] = "  " .. table.concat(used, ", ") .. "; // not every kernel reads every contract name"
  -- Before any memory access: the previous kernel of a graph with programmatic edges has completed. A template
  -- that says ${GRID_WAIT} waits there instead: what it does before reads only what no kernel writes (weights,
  -- params) and writes nothing.
  if not wait_in_template then lines[#lines + 1] = "  qmoe_grid_wait();" end
  return table.concat(lines, "\n")
end

local function emit_variant(v, sources)
  local kd, st, q = v.kernel, v.stage, v.q
  local acc = v.acc or "f32"
  if acc ~= "f32" and acc ~= "f64" and acc ~= "q8" then
    error(v.stage.file .. ": unknown accumulator '" .. tostring(acc) .. "' (f32, f64 or q8)", 0)
  end
  -- q8 (docs/q8.md): f32 sums of x rounded to 8 bits per 32 elements; its rows may differ (q8_rows_per_block)
  local rpb = acc == "q8" and kd.q8_rows_per_block or kd.rows_per_block
  local vars = {
    ACC_T = acc == "f64" and "double" or "float",
    Q8 = acc == "q8" and 1 or 0,
    Q8_X_MAX = kd.q8_x_max or 4096, -- x elements a q8 block rounds per pass (16 bytes of records per 8)
    ACC_NOTE = v.acc and ("accumulator " .. v.acc) or "this stage does not vary by accumulator",
    ENTRY = v.entry, THREADS = kd.threads, WARPS = WARPS, MIN_BLOCKS = kd.min_blocks or 4,
    RPB = rpb, -- this variant's rows per block (q8: q8_rows_per_block)
  }
  for k, x in pairs(kd) do -- the kernel line's constants (max_k=64 -> ${MAX_K})
    if type(x) == "number" and k ~= "threads" and k ~= "min_blocks" then vars[k:upper()] = x end
  end
  -- The attention output is `o` in the contract; `o` is also the natural loop name, so bind it as o_out.
  -- A stage with a buffer or param named `a` (add, add_rmsnorm) names the kernel argument a_ instead (its
  -- template says `const qmoe_args a_`).
  local rename, argname = {}, "a"
  if st.name == "attention" then rename.o = "o_out" end
  for _, b in ipairs(st.bufs) do if b.name == "a" then argname = "a_" end end
  for _, p in ipairs(st.ints) do if p == "a" then argname = "a_" end end
  for _, p in ipairs(st.floats) do if p == "a" then argname = "a_" end end
  local wait_in_template = template.load("cuda/" .. st.name .. ".cu"):find("${GRID_WAIT}", 1, true) ~= nil
  vars.BIND = binding(st, argname, rename, kd.own_tokens, wait_in_template)
  vars.GRID_WAIT = "qmoe_grid_wait();"
  -- own_tokens kernels have a second entry, ${ENTRY}_tok, for calls of many tokens (its registers do not cost the
  -- one-token entry, which decode runs, any occupancy)
  vars.TOK_ENTRY = v.entry .. "_tok"
  local meta = string.format("// qmoe-cuda: stage=%s qtype=%s ggml_type=%d acc=%s entry=%s block_elements=%d block_bytes=%d threads=%d rows_per_block=%d%s",
                             st.name, q and q.name or "-", q and q.ggml_type or -1, v.acc or "-", v.entry,
                             q and q.block_elements or 0, q and q.block_bytes or 0, kd.threads, rpb,
                             kd.own_tokens and (" tok_entry=" .. vars.TOK_ENTRY) or "")
  -- the prelude defines QMOE_Q8: 1 in a q8 variant (docs/q8.md), the f32 kernel on Q8(x) (x quantized in the templates)
  local parts = { util.banner("cuda", SCRIPT, sources), meta, template.render("cuda/_prelude.cu", vars) }
  if q then
    local be, bb = q.block_elements, q.block_bytes
    -- Lanes take runs of RL = 8 consecutive elements. Runs of 16 decode a run's scales half as often but were
    -- slower on the H200 (2026-12-02, docs/cuda.md: decode 190.7 against 207.5 tokens/s, lm_head 229 against
    -- 171 µs: more registers, fewer warps); RL = 16 generates them again (the decode's GROUP follows RL).
    -- Measured again with the affine and packed decode (2026-12-03, 24a7765: runs of 16 where the decode is
    -- affine and packed over them, 280 PTX instructions per 32 multiply-adds against 194 per 16): still slower,
    -- decode 227.6 against 257.7 tokens/s in the same run, lm_head 166 against 136 µs (docs/cuda.md).
    local RL = 8
    -- whole steps of 32·RL elements per chunk where blocks are smaller (only a row's last chunk may end mid-step)
    local function chunk_blocks(unroll)
      -- (a q8 kernel stages q8_stage_bytes of each where its line says: 4 rows per warp stay in 48 KB of shared
      -- memory with 1,700, and a 2,048-element row of q4_k or q6_k is one chunk: one wait,
      -- and no more than q8_stage_elems elements: a Qwen3 row of 2,048, no shared memory left unused)
      local sb = acc == "q8" and kd.q8_stage_bytes or STAGE_BYTES
      local ch = math.max(1, sb // bb)
      -- (stage_elems, q8_stage_elems: the same cap for the other accumulators, q8's taking precedence)
      local se = acc == "q8" and kd.q8_stage_elems or kd.stage_elems
      if se then ch = math.max(1, math.min(ch, se // be)) end
      local step = 32 * unroll
      if be < step and step % be == 0 and ch > step // be then ch = ch - ch % (step // be) end
      return ch
    end
    vars.QNAME, vars.QNAME_UPPER, vars.BE, vars.BB = q.name, q.name:upper(), be, bb
    -- Which elements a lane takes in a step of 32·UNROLL (e0 a multiple of it), and how the compiler is shown it.
    --  * runs (the default): UNROLL = RL consecutive elements per lane, starting at RUN (a multiple of RL): in
    --    a k-quant's sub-block (16 or 32 elements) or a small block, so the decode's per-run parts (scales) are
    --    computed once per run (GROUP in expr.lua; `| t`, not `+ t`, is the same since RUN is a multiple of RL
    --    and t < RL), and x is read with 16-byte loads where aligned (without them the lanes' x reads
    --    are 32 bytes apart and lm_head fell to 990 GB/s on the H200). On the PTX of matvec q4_k: 20
    --    conversions and 508 instructions per step of 16 element-rows, against 48 and 688 strided;
    --  * strided (k-quants, blocks of 256·k; QMOE_CUDA_DEFINES=QMOE_LANE_STRIDED, docs/cuda.md): element e0 +
    --    lane + 32·t, one block for the whole step, i = lane | 32·t: every element in its own sub-block, x
    --    loads coalesced. H200, 2026-12-02 (docs/gpu-results.md), the same build: decode 170 tokens/s
    --    strided against 189 with runs of 8; gate+up Q4_K 24.7 against 19.4 µs; lm_head 173 against 178 µs;
    --  * one-element blocks (f32, f16, bf16): 8 consecutive elements per lane.
    -- STEPBLK: the lane's block at the start of the step; TBLK: blocks further on for element t.
    local function runs(m, unroll)
      local step = 32 * unroll
      local run = be % step == 0 and ((be == step and "" or "(e0 % QB_ELEMS) | ") .. "(UNROLL * lane)")
                  or "((e0 + UNROLL * lane) % QB_ELEMS)"
      if be % step == 0 and be ~= step then run = "(" .. run .. ")" end
      m.STEPBLK, m.TBLK, m.RUN = be % step == 0 and "(e0 / QB_ELEMS)" or "((e0 + UNROLL * lane) / QB_ELEMS)", "0", run
      m.XLANE, m.EXPR = "UNROLL * lane", "e0 + UNROLL * lane + t"
      m.DOT_DECODE, m.IDX = "qmoe_" .. q.name .. "_decode_run", run .. ", (" .. run .. " | t)"
      m.X_RUN, m.XT = 1, "t" -- x by 16-byte loads per run (_qrows.cu)
      m.UNROLL = unroll
      return m
    end
    local maps = {}
    if be % 256 == 0 and acc ~= "q8" then -- (q8 rounds x by runs of 8: runs only)
      maps.strided = { STEPBLK = "(e0 / QB_ELEMS)", TBLK = "0", XLANE = "lane", EXPR = "e0 + lane + 32 * t",
                       IDX = be == 256 and "(lane | (32 * t))" or "((e0 % QB_ELEMS) | lane | (32 * t))",
                       DOT_DECODE = "qmoe_" .. q.name .. "_decode", X_RUN = 0, XT = "32 * t", UNROLL = 8 }
    end
    if be >= 8 and (be % 256 == 0 or 256 % be == 0) then
      maps.runs = runs({}, RL)
    elseif be == 1 then
      maps.plain = { STEPBLK = "(e0 + UNROLL * lane)", TBLK = "t", IDX = "0", XLANE = "UNROLL * lane",
                     EXPR = "e0 + UNROLL * lane + t", DOT_DECODE = "qmoe_" .. q.name .. "_decode", X_RUN = 0, XT = "t", UNROLL = 8 }
    else
      maps.plain = { STEPBLK = "0", TBLK = "(e / QB_ELEMS)", IDX = "(e % QB_ELEMS)", XLANE = "UNROLL * lane",
                     EXPR = "e0 + UNROLL * lane + t", DOT_DECODE = "qmoe_" .. q.name .. "_decode", X_RUN = 0, XT = "t", UNROLL = 8 }
    end
    for _, m in pairs(maps) do
      m.CH = chunk_blocks(m.UNROLL)
      -- a chunk holds whole blocks, so a step needs a bounds guard only when the step does not divide the block
      m.MAY_BE_PARTIAL = (be % (32 * m.UNROLL)) ~= 0 and "true" or "false"
    end
    for _, m in pairs(maps) do
      m.E_DECL = (m.TBLK:find("e") or m.IDX:find("%f[%w]e%f[^%w]")) and ("const int e = " .. m.EXPR .. ";") or
                 ("// element " .. m.EXPR)
    end
    -- The decode with runs (expr.lua GROUP) wherever a map uses them.
    -- f32 accumulators with runs also get the decode's affine form over a run (expr.lua AFFINE): a run's dot
    -- product is A·Σ V·x + B·Σ x. QMOE_CUDA_DEFINES=QMOE_NO_AFFINE keeps the per-element decode (docs/cuda.md).
    local D = setmetatable({ group = maps.runs and RL or nil, affine = maps.runs ~= nil and (acc == "f32" or acc == "q8") },
                           { __index = DIALECT })
    local dec, info = expr.emit(q, D)
    local af = info and info.affine
    if acc == "q8" and not (maps.runs and af) then
      error(string.format("%s: %s has no q8 variant here: q8 needs the decode's affine form over runs of 8 (expr.lua AFFINE); remove q8 from its accumulators", q.__file, q.name), 0)
    end
    for _, m in pairs(maps) do
      m.AFFINE = (m == maps.runs and af) and "!defined(QMOE_NO_AFFINE)" or "0"
      m.AFFINE_A, m.AFFINE_B = (af and af.a) and 1 or 0, (af and af.b) and 1 or 0
      -- A and B once per span of a chunk where a span holds 4 runs or more (expr.lua SPAN; _qrows.cu): q4_k, q5_k,
      -- q4_0, q4_1, q8_0 (32), q8_k (256). Not q6_k or q2_k (16: two runs): on the H200 (2026-12-03) their
      -- stages were a little slower with it (lm_head 140.2 against 139.4 µs, attn_v 4.81 against 4.48)
      m.SPAN = (m == maps.runs and af and af.span and af.span >= 4 * (m.UNROLL or 0)) and af.span or 0
      -- V of 4 elements per word (expr.lua PACKED) where the decode has that form; QMOE_NO_PACKED: one by one
      m.PACKED = (af and af.packed and (m.UNROLL or 0) % 4 == 0) and "!defined(QMOE_NO_PACKED)" or "0"
      m.PACKED_A4 = (af and af.packed_a4) and 1 or 0 -- <q>_run_w4: aligned word reads (blocks at multiples of 4)
      -- <q>_run_w2 too (blocks of 4k + 2 bytes, q6_k): a step's block starts at 0 or 2 mod 4, the same for the
      -- whole warp where a step lies in one block, so each row's words are read by the matching function
      m.PACKED_W2 = (af and af.packed_m2 and m == maps.runs and be % (32 * m.UNROLL) == 0) and 1 or 0
      m.RUN_W_BASE = (af and af.packed) and ("(12582912.0f + QMOE_" .. q.name:upper() .. "_RUN_W_OFF)") or "0.0f"
      m.RUN = m.RUN or "0"
    end
    vars.DECODE = "qmoe_" .. q.name .. "_decode"
    local function qrows(m)
      local v = setmetatable({}, { __index = vars })
      for k, x in pairs(m) do v[k] = x end
      return template.render("cuda/_qrows.cu", v)
    end
    if maps.strided then
      vars.QROWS = "#ifdef QMOE_LANE_STRIDED // strided lanes (QMOE_CUDA_DEFINES=QMOE_LANE_STRIDED): see codegen/gen_cuda.lua\n" ..
                   qrows(maps.strided) .. "\n#else // runs of " .. maps.runs.UNROLL .. "\n" .. qrows(maps.runs) .. "\n#endif"
    else
      vars.QROWS = qrows(maps.runs or maps.plain)
    end
    parts[#parts + 1] = "// ---- decoding, from " .. q.__file .. " via src/lib/lua/expr.lua (CUDA dialect, f16 by cvt.f32.f16) ----"
    -- expr's helpers are a fixed set, not all used by every format: no "declared but never referenced" noise.
    parts[#parts + 1] = "#pragma nv_diag_suppress 177"
    parts[#parts + 1] = expr.prelude(D)
    parts[#parts + 1] = dec
    parts[#parts + 1] = "#pragma nv_diag_default 177"
    parts[#parts + 1] = vars.QROWS
  end
  parts[#parts + 1] = template.render_body("cuda/" .. st.name .. ".cu", vars)
  return table.concat(parts, "\n")
end

local function main(argv)
  local o = util.parse_args(argv, { contracts = "contracts", stage = "", qtype = "", acc = "", out = "", launch = false }, USAGE)
  if (o.stage == "") == (not o.launch) or o.out == "" then error(USAGE, 0) end
  local ctx = require("contracts").load_all(o.contracts)
  if o.launch then
    util.write_if_changed(o.out, emit_launch(stages_module().stages(ctx)))
    return
  end
  for _, v in ipairs(M.variants(ctx)) do
    if v.stage.name == o.stage and (v.q and v.q.name or "") == o.qtype and (v.acc or "") == o.acc then
      local sources = { v.stage.file }
      if v.q then sources[#sources + 1] = v.q.__file end
      util.write_if_changed(o.out, emit_variant(v, sources))
      return
    end
  end
  error(string.format("gen_cuda.lua: no variant stage=%s qtype=%s acc=%s in the contracts", o.stage,
                      o.qtype ~= "" and o.qtype or "-", o.acc ~= "" and o.acc or "-"), 0)
end

M.emit_variant = emit_variant
if arg and arg[0] and arg[0]:match("gen_cuda%.lua$") then main(arg) end
return M
