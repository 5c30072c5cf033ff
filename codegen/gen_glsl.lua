-- gen_glsl.lua: writes the Vulkan compute shaders generated/glsl/<variant>[.<pass>].comp — one variant per
-- stage × qtype × accumulator of contracts/stages/*.yaml (qtypes resolved against contracts/quant/*.yaml, whose
-- decoding comes from expr.emit with the GLSL dialect) — and generated/c/vk_variants.c, the table the Vulkan
-- backend (runtime/vulkan/backend_vulkan.c) dispatches from: variant, passes, workgroup size, shared memory, geometry.
-- Usage: qmoe-lua codegen/gen_glsl.lua [--contracts DIR] --shader NAME --out FILE
--        qmoe-lua codegen/gen_glsl.lua [--contracts DIR] --table --out FILE
-- Variant names: <stage>__<qtype>__<acc>, <stage>__<acc> or <stage>; a stage of several dispatches has one
-- shader per pass, named <variant>.<pass>. Kernel shapes are described in docs/vulkan.md.
local util = require("util")
local template = require("template")
local expr = require("expr")
local M = {}
local USAGE = "usage: qmoe-lua codegen/gen_glsl.lua [--contracts DIR] (--shader NAME | --table) --out FILE"
local SCRIPT = "codegen/gen_glsl.lua"
local TABLE_OUT = "generated/c/vk_variants.c"

local fmt = string.format

---------------------------------------------------------------------------------------------------------------
-- Variants: the one list the shaders, the table and the plan come from.
---------------------------------------------------------------------------------------------------------------

local function qtypes_of(ctx, st)
  local byname = {}
  for _, q in ipairs(ctx.quant.list) do
    byname[q.name] = q
    for _, a in ipairs(q.aliases or {}) do byname[a] = q end
  end
  local list = {}
  if st.qtypes == "all" then
    for _, q in ipairs(ctx.quant.list) do list[#list + 1] = q end
  else
    for _, n in ipairs(st.qtypes or {}) do
      list[#list + 1] = byname[n] or error(st.__file .. ": qtype '" .. tostring(n) .. "' has no contracts/quant/*.yaml", 0)
    end
  end
  table.sort(list, function(a, b) return a.ggml_type < b.ggml_type end)
  return list
end

local function has(list, x)
  for _, v in ipairs(list or {}) do if v == x then return true end end
  return false
end

-- Every variant: { name, stage (contract), q (quant contract or nil), acc ("f32"/"f64"/nil), file }.
local function variants(ctx)
  local out = {}
  for _, v in ipairs(require("variants").list(ctx, dofile("codegen/gen_stages.lua").stages(ctx))) do
    out[#out + 1] = { name = v.stem, what = v.what, stage = v.stage, rec = v.rec, q = v.q, acc = v.acc }
  end
  return out
end

---------------------------------------------------------------------------------------------------------------
-- Shared GLSL pieces
---------------------------------------------------------------------------------------------------------------

-- Params (templates/glsl/_push.glsl), the same block for every shader, read as `pc.p[i]` etc.: `pc` names this
-- dispatch's 144-byte slot of the runtime's params table (binding 8; the slot's index is the one push constant),
-- so a recorded command buffer can be replayed with new params (runtime/vulkan/vk.c). backend_vulkan.c fills
-- p: the stage's integer params in contract order; o: byte offset of each binding's data from the bound
-- offset; ff/fd: float params as f32 and as f64 bits; x: per-dispatch extras of the stage; vk.c fills grid:
-- the dispatch's workgroup counts (the VkDispatchIndirectCommand a replay dispatches with).


-- double has no exp/log/sin/cos in GLSL: these are ours (Cody-Waite reduction + Taylor series, within a few
-- ulp of double). Every literal carries `lf`: a GLSL literal without it is single precision.


local function acc_type(acc) return acc == "f64" and "double" or "float" end
local function acc_bytes(acc) return acc == "f64" and 8 or 4 end

-- Workgroup reductions over the WG invocations: subgroupAdd/Max, then the per-subgroup partials added in
-- order. Every invocation must call them (uniform control flow).
local function reducers(T, WG)
  return template.render("glsl/_reducers.glsl", { T = T, WG = WG })
end

-- Contract text in GLSL comments, in ASCII: the common symbols spelled out, anything else as '?'.
local ASCII = { ["·"] = "*", ["×"] = "x", ["—"] = "-", ["–"] = "-", ["²"] = "^2", ["≤"] = "<=", ["≥"] = ">=",
                ["Σ"] = "sum", ["−"] = "-", ["→"] = "->", ["⊙"] = "*" }
local function ascii(s)
  return (s:gsub("[\192-\255][\128-\191]*", function(ch) return ASCII[ch] or "?" end))
end

local function header(v, pass, WG)
  local desc = v.stage.description and ascii(v.stage.description):gsub("%s+", " "):gsub(" $", "") or v.stage.name
  local lines = { util.banner("glsl", SCRIPT, v.sources), fmt("// %s%s: %s", v.what, pass and (" pass " .. pass) or "", desc),
                  "#version 450", "#extension GL_KHR_shader_subgroup_basic : require",
                  "#extension GL_KHR_shader_subgroup_arithmetic : require" }
  if v.acc == "q8" then -- the q8 records (_qrows.glsl): subgroupShuffleXor, and OpSUDot through spirv_instruction
    lines[#lines + 1] = "#extension GL_KHR_shader_subgroup_shuffle : require"
    lines[#lines + 1] = "#extension GL_EXT_spirv_intrinsics : require"
  end
  lines[#lines + 1] = fmt("layout(local_size_x = %d) in;", WG)
  lines[#lines + 1] = template.load("glsl/_push.glsl")
  return table.concat(lines, "\n")
end

local function buf(binding, qual, T, name)
  return fmt("layout(std430, binding = %d) %sbuffer B%s { %s %s[]; };", binding, qual, name, T, name)
end

local NAN = "uintBitsToFloat(0x7FC00000u)"

---------------------------------------------------------------------------------------------------------------
-- Quantized mat-vec family: matvec, moe_gate_up_swiglu, moe_down (templates/glsl/_qrows.glsl and <stage>.comp).
--
-- The CUDA kernels' design (codegen/templates/cuda/_qrows.cu): a subgroup owns R = 2 rows (a mat-vec row
-- pair; gate+up's gate and up rows of one expert; moe_down's two rows of one expert k). Per chunk of whole
-- blocks it copies the two rows' bytes into its own slices of shared memory with 16-byte loads (coalesced
-- over its lanes) and subgroup barriers only — no workgroup barrier inside the dot loop; each lane then
-- decodes runs of 8 consecutive elements of one block with the contract's decode (expr.emit, GLSL dialect
-- over shared sw[], group = 8: a run's sub-block scales are decoded once, expr.lua's GROUP rule) against x
-- read as two 16-byte loads, and the lanes' partial sums are added with subgroupAdd (a fixed order for a
-- given subgroup size: deterministic, no atomics). Strides come from gl_SubgroupSize at run time (4 to 128);
-- the workgroup is QWG invocations, which the workgroup counts below assume are 32-wide subgroups (NVIDIA's)
-- and the kernels stride over row pairs, so any size computes every row.
---------------------------------------------------------------------------------------------------------------

local QWG = 128   -- invocations per workgroup of the family (64 measured no faster on the H200, 2026-12-03)
local QR = 2      -- rows per subgroup
local SGMIN = 4   -- smallest subgroup the shared arrays are sized for (lavapipe's is 4 or 8); below it the
                  -- outputs are NaN, never a read out of bounds
local MAXK = 32   -- moe_down: experts whose partial sums a workgroup keeps at once (K is done in such chunks)

-- Bytes per lane per row of a staged chunk, at least. 32 (1 KiB per row for 32 lanes), not 64: NVIDIA's driver
-- runs the row kernels faster with less shared memory per workgroup (2026-12-03, H200, docs/vulkan.md: 8.7
-- KiB against 21.5 took decode from 114 to 138 tokens/s; 17 KiB, the pads for 4-lane subgroups dropped, changed
-- nothing).
local LB0 = 32
-- q8 records: at most this many elements of x per stage (1.25 bytes each). Less shared memory is faster on
-- NVIDIA (2026-12-03: caps of 4,096 / 4,096 / 6,144 against 8,192 for all took q8 decode from 122 to 130
-- tokens/s; lm_head 310 -> 241 us, gate+up 31.8 -> 25.6). Qwen3-30B-A3B needs 2,048 (x), 4,096 (attn_output's x)
-- and 6,144 (moe_down: K*F = 8*768); a longer x takes the per-lane path (_qrows.glsl).
local QX_CAP = { matvec = 4096, moe_gate_up_swiglu = 4096, moe_down = 6144 }
local SHARED_MAX = 32768 -- bytes of shared memory a workgroup may use: lavapipe's limit (NVIDIA's is 48 KiB)

local function qgeom(q, acc, extra, stage)
  local BE, BB = q.block_elements, q.block_bytes
  if BE ~= 1 and BE % 8 ~= 0 then
    error(q.__file .. ": block_elements = " .. BE .. ": the GLSL mat-vec kernels need 1 or a multiple of 8 (lane runs of 8)", 0)
  end
  -- LB bytes per lane per row in a slice: the smallest multiple of 16, at least LB0, with which the subgroup's
  -- slice holds one block. The shaders compute it and size sw[] for the device's subgroup size (specialization
  -- constant QMOE_SG, set by vk.c; SGMIN unspecialized); these numbers are the largest, SGMIN's, for the
  -- variant table's shared bytes (checked against the device's limit) and the q8 records' room.
  local LB = LB0
  while SGMIN * LB < BB do LB = LB + 16 end
  -- slices (subgroup, row): PADW pad words, then per slice 4 slack words (a chunk starts at its byte offset
  -- mod 16) + data + PADW pad words; at most QWG / SGMIN subgroups
  local PADW, SLACKW = 16, 4
  local words = PADW + QR * (QWG * LB // 4 + (QWG // SGMIN) * (SLACKW + PADW))
  -- q8: the records of x (_qrows.glsl q8_round) take 1.25 bytes per element (q8w: 1, q8g: 8 per 32) of what is
  -- left beside sw[] and EXTRA (the kernel's other shared arrays), in whole groups of 256 elements; 0: none fit,
  -- every call takes the per-lane path
  local qx = 0
  if acc == "q8" then qx = math.min(QX_CAP[stage], math.max(0, (SHARED_MAX - words * 4 - (extra or 0)) * 4 // 5 // 256 * 256)) end
  return { BE = BE, BB = BB, LB = LB, WG = QWG, SW_WORDS = words, RUNS = BE % 8 == 0 and 1 or 0, QX_MAX = qx,
           shared = words * 4 + qx * 5 // 4 }
end

local function qcommon(v, g, w0, w1)
  if v.acc == "q8" and g.RUNS ~= 1 then -- _qrows.glsl quantizes x per lane run (docs/q8.md)
    error(v.q.__file .. ": a q8 variant needs blocks of a multiple of 8 elements (q8 is for integer block formats)", 0)
  end
  -- Lane runs of RL elements (<prefix>_decode_run(b, ig, i)). f32 accumulators with runs also get the decode's
  -- affine form over a run where it has one (expr.lua AFFINE): a run's dot product is A * sum(V x) + B * sum(x)
  -- (f64 keeps the exact per-element decode), and where V is built of byte reads (expr.lua PACKED), V of 4
  -- elements from one word: dq_run_w(b, ig, t0). Runs of 16 where the decode is affine and packed over them
  -- (the run's scales decoded once per 16 elements, as in the CUDA row kernels), else 8.
  local function emit(G)
    local D = expr.glsl_dialect("sw")
    if g.RUNS == 1 then D.group = G end
    D.affine = g.RUNS == 1 and (v.acc == "f32" or v.acc == "q8") -- q8: the f32 rows on Q8(x)
    D.packed = D.affine
    local dq, info = expr.emit(v.q, D, "dq")
    return D, dq, info
  end
  local RL = 8
  local D, dq, info
  if g.RUNS == 1 and (v.acc == "f32" or v.acc == "q8") and g.BE % 16 == 0 then
    D, dq, info = emit(16)
    if info and info.affine and info.affine.packed then RL = 16 end
  end
  if RL == 8 then D, dq, info = emit(8) end
  local af = info and info.affine
  local packed = af and af.packed
  -- q8 with records: integer dot products where the decode is affine and packed over runs of 16
  local idot = v.acc == "q8" and g.QX_MAX > 0 and af and packed and RL == 16
  -- Not here (measured on the H200, 2026-12-03, docs/vulkan.md "Tried"): the CUDA row kernels' span tables for
  -- A and B and their aligned word reads (docs/cuda.md). With NVIDIA's Vulkan compiler both made these shaders
  -- slower (decode 116.3 -> 92.2 tokens/s with both, 100.9 with the tables alone, 112.6 with the aligned reads
  -- alone). Nor fewer registers (2026-12-03, bench/runs/2026-12-03-h200-111dbe8-vkregs.sh): staging a row at a
  -- time and reading x per step took gate+up from 103 to 75 registers per invocation and made nothing faster
  -- (decode 120.2 -> 116.5 tokens/s; gate+up 33.5 -> 34.6 µs).
  local vars = { T = acc_type(v.acc), QNAME = v.q.name, BE = g.BE, BB = g.BB, LB = g.LB, SGMIN = SGMIN, QR = QR,
                 SW_WORDS = g.SW_WORDS, RUNS = g.RUNS, W0 = w0, W1 = w1, NAN = NAN, AFFINE = af and 1 or 0,
                 AFFINE_A = (af and af.a) and 1 or 0, AFFINE_B = (af and af.b) and 1 or 0,
                 PACKED = packed and 1 or 0, RL = RL, Q8 = v.acc == "q8" and 1 or 0, QX_MAX = g.QX_MAX,
                 Q8_IDOT = idot and 1 or 0,
                 RUN_W_BASE = packed and ("(12582912.0 + float(DQ_RUN_W_OFF))") or "0.0" }
  return table.concat({ fmt("// Decoding of %s, from %s by expr.emit (GLSL dialect over shared sw[]%s%s%s).", v.q.name, v.q.__file,
                            g.RUNS == 1 and (", runs of " .. RL) or "", af and ", affine per run" or "", packed and ", packed" or ""),
                        "// The subgroup size sw[] is sized for: the device's (runtime/vulkan/vk.c sets it when it creates the",
                        "// pipeline; a smaller subgroup gets NaN rows, never a read out of bounds), " .. SGMIN .. " unspecialized.",
                        "layout(constant_id = 0) const uint QMOE_SG = " .. SGMIN .. "u;",
                        fmt("const uint LB_MIN = ((%du + QMOE_SG - 1u) / QMOE_SG + 15u) / 16u * 16u; // a block per slice", g.BB),
                        fmt("const uint LB = LB_MIN > %du ? LB_MIN : %du; // bytes per lane per row of a chunk", LB0, LB0),
                        fmt("shared uint sw[%du + %du * (%du * LB / 4u + (%du / QMOE_SG) * %du)]; // %d words for %d lanes",
                            16, QR, QWG, QWG, 20, g.SW_WORDS, SGMIN),
                        expr.prelude(D), dq, template.render("glsl/_qrows.glsl", vars) }, "\n")
end

local function qvars(v, g)
  return { T = acc_type(v.acc), NAN = NAN, EXP = v.acc == "f64" and "qmoe_exp" or "exp", MAXK = MAXK }
end

local function xbufs(binding)
  return buf(binding, "readonly ", "float", "X") .. "\n" .. buf(binding, "readonly ", "vec4", "X4")
end

local function emit_matvec(v)
  local g = qgeom(v.q, v.acc, 0, "matvec")
  local src = { header(v, nil, g.WG), buf(0, "restrict readonly ", "uvec4", "W"), xbufs(1),
                buf(2, "", "float", "Y"), qcommon(v, g, "W", "W"), template.render("glsl/matvec.comp", qvars(v, g)) }
  return table.concat(src, "\n"), { { shader = v.name, wg = g.WG, shared = g.shared } }, { rows = QR * (QWG // 32) }
end


local function emit_gate_up(v)
  local g = qgeom(v.q, v.acc, 0, "moe_gate_up_swiglu")
  local src = { header(v, nil, g.WG), buf(0, "restrict readonly ", "uvec4", "Wg"), buf(1, "restrict readonly ", "uvec4", "Wu"),
                xbufs(2), buf(3, "readonly ", "int", "IDS"), buf(4, "", "float", "Hout"),
                v.acc == "f64" and template.load("glsl/_f64_exp.glsl") or "", qcommon(v, g, "Wg", "Wu"),
                template.render("glsl/moe_gate_up_swiglu.comp", qvars(v, g)) }
  return table.concat(src, "\n"), { { shader = v.name, wg = g.WG, shared = g.shared } }, { rows = QWG // 32 }
end


local function emit_down(v)
  local g = qgeom(v.q, v.acc, MAXK * QR * acc_bytes(v.acc), "moe_down")
  local src = { header(v, nil, g.WG), buf(0, "restrict readonly ", "uvec4", "Wd"), xbufs(1),
                buf(2, "readonly ", "int", "IDS"), buf(3, "readonly ", "float", "WK"), buf(4, "", "float", "Y"),
                qcommon(v, g, "Wd", "Wd"), template.render("glsl/moe_down.comp", qvars(v, g)) }
  return table.concat(src, "\n"), { { shader = v.name, wg = g.WG, shared = g.shared + MAXK * QR * acc_bytes(v.acc) } },
         { rows = QR }
end

---------------------------------------------------------------------------------------------------------------
-- The stages without quantized weights.
---------------------------------------------------------------------------------------------------------------

local function svars(v, WG)
  return { T = acc_type(v.acc), WG = WG, EXP = v.acc == "f64" and "qmoe_exp" or "exp", NAN = NAN }
end



-- Two passes in one dispatch (router_topk, attention): every workgroup runs FIRST; the last workgroup of its group
-- to finish (a counter in the backend's counters buffer, at binding CNT_BINDING and index COUNTER: the call leaves
-- it 0 again) then runs SECOND, which reads what all of them wrote. One dispatch and one barrier fewer per call:
-- on NVIDIA's driver each dispatch and each barrier between dependent dispatches costs about 2 us of a decode
-- step (docs/vulkan.md). The buffers both passes share are declared coherent by the caller; the first pass's
-- writes are made visible by memoryBarrierBuffer before the counter's atomicAdd, and read after it.
local function last_group(first, second, cnt_binding, counter, ngroups)
  return table.concat({
    fmt("layout(std430, binding = %d) coherent buffer BCnt { uint CNT[]; };", cnt_binding),
    "#undef main", "#define main qmoe_first", first, "#undef main", "#define main qmoe_second", second,
    "#undef main", "#define main qmoe_main",
    "shared uint qmoe_last;",
    "void main() {",
    "  qmoe_first();",
    "  memoryBarrierBuffer();",
    "  barrier();",
    fmt("  const uint c = (pc.o[%d] >> 2) + %s;", cnt_binding, counter),
    fmt("  if (gl_LocalInvocationIndex == 0u) qmoe_last = atomicAdd(CNT[c], 1u) == %s - 1u ? 1u : 0u;", ngroups),
    "  barrier();",
    "  if (qmoe_last == 0u) return; // uniform: shared",
    "  memoryBarrierBuffer();",
    "  if (gl_LocalInvocationIndex == 0u) atomicExchange(CNT[c], 0u); // for the next call",
    "  qmoe_second();",
    "}" }, "\n")
end

-- router_topk, one dispatch: "logits" (a workgroup per expert row, 16-byte loads), then in the last workgroup to
-- finish "select" (softmax, top K by parallel ranking, weights). Bindings: Wr, x, ids, w, scratch (logits),
-- counters.
local function emit_router(v)
  local T, WG, ab = acc_type(v.acc), 128, acc_bytes(v.acc)
  local vars = svars(v, WG)
  vars.TV = v.acc == "f64" and "dvec4" or "vec4"
  return table.concat({ header(v, nil, WG), buf(0, "readonly ", "float", "Wr"), buf(0, "readonly ", "vec4", "Wr4"),
                        xbufs(1), buf(2, "", "int", "IDS"), buf(3, "", "float", "WOUT"), buf(4, "coherent ", T, "LG"),
                        v.acc == "f64" and template.load("glsl/_f64_exp.glsl") or "", reducers(T, WG),
                        last_group(template.render("glsl/router_topk.logits.comp", vars),
                                   template.render("glsl/router_topk.select.comp", vars), 5, "0u", "gl_NumWorkGroups.x") },
                      "\n"), { { shader = v.name, wg = WG, shared = 3 * WG * ab + 4 } }, {}
end


-- RMSNorm of one vector (rmsnorm: one workgroup; qk_norm: head h = workgroup x).
local function emit_norm(v, per_head)
  local T, WG = acc_type(v.acc), per_head and 128 or 256
  local vars = svars(v, WG)
  vars.WHAT = per_head and "y[h] = x[h] . (1/sqrt(mean(x[h]^2) + eps)) . w for head h = workgroup x. p: nh, D; f: eps"
              or "y = x . (1/sqrt(mean(x^2) + eps)) . w in one workgroup. p: n; f: eps"
  vars.N = per_head and "pc.p[1]" or "pc.p[0]"
  vars.BASE = per_head and "gl_WorkGroupID.x * pc.p[1]" or "0u"
  vars.EPS = v.acc == "f64" and "packDouble2x32(pc.fd[0])" or "pc.ff[0]"
  local src = { header(v, nil, WG), buf(0, "readonly ", "float", "X"), buf(1, "readonly ", "float", "Wn"),
                buf(2, "", "float", "Y"), reducers(T, WG), template.render("glsl/rmsnorm.comp", vars) }
  return table.concat(src, "\n"), { { shader = v.name, wg = WG, shared = WG * acc_bytes(v.acc) } }, {}
end


local function emit_rope(v)
  local WG = 256
  local src = { header(v, nil, WG), buf(0, "readonly ", "float", "X"), buf(1, "", "float", "Y"), template.load("glsl/_f64_exp.glsl"), template.load("glsl/_f64_trig.glsl"),
                template.render("glsl/rope_neox.comp", svars(v, WG)) }
  return table.concat(src, "\n"), { { shader = v.name, wg = WG, shared = 0 } }, {}
end


local function emit_kv_store(v)
  local WG = 256
  local src = { header(v, nil, WG), buf(0, "readonly ", "float", "Kin"), buf(1, "readonly ", "float", "Vin"),
                buf(2, "", "float", "Kc"), buf(3, "", "float", "Vc"), template.render("glsl/kv_store.comp", svars(v, WG)) }
  return table.concat(src, "\n"), { { shader = v.name, wg = WG, shared = 0 } }, {}
end


local function emit_add(v)
  local WG = 256
  local src = { header(v, nil, WG), buf(0, "readonly ", "float", "A"), buf(1, "readonly ", "float", "Bv"),
                buf(2, "", "float", "Y"), template.render("glsl/add.comp", svars(v, WG)) }
  return table.concat(src, "\n"), { { shader = v.name, wg = WG, shared = 0 } }, {}
end




-- argmax: pass "part" reduces chunks of x to (value, index) pairs in scratch, pass "final" (one workgroup)
-- reduces those. Ties: the lowest index.
local function emit_argmax(v, pass)
  local WG = 256
  local vars = svars(v, WG)
  vars.HALF = WG // 2
  local passes = { { shader = v.name .. ".part", wg = WG, shared = WG * 8 },
                   { shader = v.name .. ".final", wg = WG, shared = WG * 8 } }
  if pass == "part" then
    return table.concat({ header(v, "part", WG), buf(0, "readonly ", "float", "X"), buf(2, "", "uint", "S"),
                          template.render("glsl/_argmax_common.glsl", vars), template.render("glsl/argmax.part.comp", vars) }, "\n"), passes, {}
  end
  return table.concat({ header(v, "final", WG), buf(1, "", "int", "IDX"), buf(2, "readonly ", "uint", "S"),
                        template.render("glsl/_argmax_common.glsl", vars), template.render("glsl/argmax.final.comp", vars) }, "\n"), passes, {}
end



-- Decode attention split over the cache (flash-decoding): pass "part" per (query head, split), pass "combine"
-- per head. GQA: head h reads kv head h / (nh / nkv). Splits: at least ATT_WGS workgroups in all where the
-- cache allows (splits of at least ATT_MINPOS positions), at most ATT_MAXPOS positions per split (the part's
-- shared score array).
local ATT_WGS, ATT_MINPOS, ATT_MAXPOS = 256, 16, 256
local function emit_attention(v)
  local T, WG, ab = acc_type(v.acc), 128, acc_bytes(v.acc)
  local f64 = v.acc == "f64" and template.load("glsl/_f64_exp.glsl") or ""
  local vars = svars(v, WG)
  vars.TV, vars.MAXPOS = v.acc == "f64" and "dvec4" or "vec4", ATT_MAXPOS
  -- one dispatch: "part" per (query head, split), then in the last split of each head to finish "combine"
  return table.concat({ header(v, nil, WG), buf(0, "readonly ", "float", "Q"), buf(0, "readonly ", "vec4", "Q4"),
                        buf(1, "readonly ", "float", "Kc"), buf(1, "readonly ", "vec4", "Kc4"),
                        buf(2, "readonly ", "float", "Vc"), buf(2, "readonly ", "vec4", "Vc4"), buf(3, "", "float", "O"),
                        buf(4, "coherent ", T, "S"), f64, reducers(T, WG),
                        last_group(template.render("glsl/attention.part.comp", vars),
                                   template.render("glsl/attention.combine.comp", vars), 5, "gl_WorkGroupID.x",
                                   "gl_NumWorkGroups.y") }, "\n"),
         { { shader = v.name, wg = WG, shared = (WG + ATT_MAXPOS + 4 * WG) * ab + 2 * WG * ab + 4 } }, {}
end

-- Stage name -> { passes = {names} or nil, emit(v, pass) -> text, pass list, geometry }.
-- Each stage: its emitter, its passes, and its dispatch geometry as C expressions (emitted into
-- generated/c/vk_variants.c, so runtime/vulkan/backend_vulkan.c dispatches any stage by table lookup). Names: the
-- contract's int params; ROWS (the variant's rows per workgroup), WG (pass 1's workgroup size), ACC_BYTES;
-- MAXG0..2: the device's maxComputeWorkGroupCount (lowered by QMOE_VK_MAX_GROUPS), DEVG0..2: the device's;
-- qmoe_cdiv(a, b), qmoe_min(a, b), qmoe_max(a, b), qmoe_cap0(x): x clamped to [1, MAXG0] (kernels that stride over work).
--   limits: { param-expression, bound }: QMOE_EUNSUPPORTED when it exceeds the bound
--   let: { name, expr }; groups: per pass { x, y, z }; scratch: bytes of the shared scratch buffer, bound
--   after the call's buffers (absent: none); x: push-constant extras x[0..3]
local STAGES = {
  matvec = { emit = emit_matvec, groups = { { "qmoe_cap0(qmoe_cdiv(rows, ROWS))", "1", "1" } } },
  moe_gate_up_swiglu = { emit = emit_gate_up, limits = { { "K", "DEVG1" } },
                         groups = { { "qmoe_cap0(qmoe_cdiv(F, ROWS))", "K", "1" } } },
  moe_down = { emit = emit_down, groups = { { "qmoe_cap0(qmoe_cdiv(H, ROWS))", "1", "1" } } },
  -- logits into scratch, then the last workgroup to finish selects (last_group)
  router_topk = { emit = emit_router, scratch = "E * ACC_BYTES", counters = "1",
                  groups = { { "qmoe_cap0(E)", "1", "1" } } },
  rmsnorm = { emit = function(v) return emit_norm(v, false) end, groups = { { "1", "1", "1" } } },
  qk_norm = { emit = function(v) return emit_norm(v, true) end, limits = { { "nh", "DEVG0" } }, -- a workgroup per head
              groups = { { "nh", "1", "1" } } },
  rope_neox = { emit = emit_rope, groups = { { "qmoe_cap0(qmoe_cdiv(nh * (D / 2), WG))", "1", "1" } } },
  kv_store = { emit = emit_kv_store, groups = { { "qmoe_cap0(qmoe_cdiv(nkv * D, WG))", "1", "1" } } },
  -- (query head, split of at most ATT_MAXPOS positions) into scratch, then the combine of each head by its last
  -- split to finish
  attention = { emit = emit_attention,
                let = { { "ns", fmt("qmoe_min(qmoe_cdiv(n_kv, %d), qmoe_max(qmoe_cdiv(%d, nh), qmoe_cdiv(n_kv, %d)))",
                                    ATT_MINPOS, ATT_WGS, ATT_MAXPOS) } },
                limits = { { "nh", "DEVG0" }, { "ns", "DEVG1" } },
                scratch = "nh * ns * (D + 2) * ACC_BYTES", x = { "ns" }, counters = "nh",
                groups = { { "nh", "ns", "1" } } },
  add = { emit = emit_add, groups = { { "qmoe_cap0(qmoe_cdiv(n, WG))", "1", "1" } } },
  -- chunks of 16 workgroups' worth (more when that needs too many workgroups) reduced to (value, index)
  -- pairs, then one workgroup
  argmax = { passes = { "part", "final" }, emit = emit_argmax,
             let = { { "chunk", "qmoe_cdiv(n, WG * 16) > MAXG0 ? qmoe_cdiv(qmoe_cdiv(n, MAXG0), WG) * WG : WG * 16" },
                     { "ng", "qmoe_cdiv(n, chunk)" } },
             scratch = "ng * 8", x = { "chunk", "ng" }, groups = { { "ng", "1", "1" }, { "1", "1", "1" } } },
}

-- A stage with no entry above is generic: one pass, its shader codegen/templates/glsl/<stage>.comp, whose
-- header gives what the table above gives the others:
--   // qmoe-shader: wg=N [rows=N]      workgroup size; rows per workgroup (0 default)
--   // qmoe-limit: EXPR <= BOUND       (repeatable)   // qmoe-let: NAME = EXPR   (repeatable)
--   // qmoe-groups: X, Y, Z            workgroups     // qmoe-scratch: EXPR     // qmoe-x: EXPR, ...
--   // qmoe-include: NAME, ...         fragments of this directory put before the bindings, filled with the
--                                      shader's ${T} and ${WG} (_reducers.glsl: wg_sum, wg_max over WG, whose
--                                      shared array counts in the variant's shared bytes; _f64_exp.glsl,
--                                      _f64_trig.glsl: qmoe_exp, qmoe_log, qmoe_sincos in double)
-- The shader gets the contract's buffers by their names (binding = contract order; a qtype buffer is uint
-- words, f32 float, i32 int), each buffer's byte offset as <name>_off, the int params by name, float params by
-- name in the accumulator type and as <name>_f64 in double in every variant, the decode of a qtype stage as
-- `float dq_decode(uint byte_offset, int i)` over its quantized buffer, and ${T} (accumulator type), ${WG},
-- ${BE}, ${BB}, ${NAN}.
local function split_top(str)
  local out, depth, cur = {}, 0, {}
  for ch in str:gmatch(".") do
    if ch == "(" then depth = depth + 1 elseif ch == ")" then depth = depth - 1 end
    if ch == "," and depth == 0 then out[#out + 1] = table.concat(cur):match("^%s*(.-)%s*$") cur = {}
    else cur[#cur + 1] = ch end
  end
  out[#out + 1] = table.concat(cur):match("^%s*(.-)%s*$")
  return out
end

local GLSL_TYPE = { qtype = "uint", f32 = "float", i32 = "int" }

local function generic_stage(name)
  local tname = "glsl/" .. name .. ".comp"
  if not template.exists(tname) then return nil end
  local where = template.path(tname)
  local meta = template.split(tname)
  local sh = template.pairs_of(meta.shader and meta.shader[1], where)
  if type(sh.wg) ~= "number" then error(where .. ": needs '// qmoe-shader: wg=N'", 0) end
  local st = { wg = sh.wg, rows = sh.rows or 0, limits = {}, let = {}, where = where }
  for _, l in ipairs(meta.limit or {}) do
    local a, b = l:match("^(.-)%s*<=%s*(.+)$")
    if not a then error(where .. ": qmoe-limit '" .. l .. "' is not EXPR <= BOUND", 0) end
    st.limits[#st.limits + 1] = { a, b }
  end
  for _, l in ipairs(meta.let or {}) do
    local a, b = l:match("^([%a_][%w_]*)%s*=%s*(.+)$")
    if not a then error(where .. ": qmoe-let '" .. l .. "' is not NAME = EXPR", 0) end
    st.let[#st.let + 1] = { a, b }
  end
  if not meta.groups or #meta.groups ~= 1 then error(where .. ": needs one '// qmoe-groups: X, Y, Z' line", 0) end
  local g = split_top(meta.groups[1])
  if #g ~= 3 then error(where .. ": qmoe-groups needs three expressions", 0) end
  st.groups = { g }
  st.scratch = meta.scratch and meta.scratch[1] or nil
  st.x = meta.x and split_top(meta.x[1]) or nil
  st.include = {}
  for _, l in ipairs(meta.include or {}) do
    for _, f in ipairs(split_top(l)) do
      if not f:match("^_[%w_]+%.glsl$") or not template.exists("glsl/" .. f) then
        error(where .. ": qmoe-include '" .. f .. "' is not a fragment codegen/templates/glsl/_*.glsl", 0)
      end
      st.include[#st.include + 1] = f
    end
  end
  st.generic = true
  st.emit = function(v)
    local r = v.rec
    local src = { header(v, nil, st.wg) }
    local vars = { T = acc_type(v.acc), WG = st.wg, NAN = NAN }
    local shared = 0
    -- fragments first, so the param macros below cannot rename anything in them
    for _, f in ipairs(st.include) do
      src[#src + 1] = template.render("glsl/" .. f, vars)
      if f == "_reducers.glsl" then shared = shared + st.wg * acc_bytes(v.acc) end -- shared T red[WG]
    end
    local qbuf
    for i, b in ipairs(r.bufs) do
      if not b.name:match("^[%a][%w_]*$") then error(r.file .. ": buffer name '" .. b.name .. "' is not a GLSL identifier", 0) end
      src[#src + 1] = buf(i - 1, b.__kind == "inputs" and "readonly " or "", GLSL_TYPE[b.dtype], b.name)
      src[#src + 1] = fmt("#define %s_off pc.o[%d]", b.name, i - 1)
      if b.dtype == "qtype" then qbuf = qbuf or b.name end
    end
    for i, n in ipairs(r.ints) do src[#src + 1] = fmt("#define %s pc.p[%d]", n, i - 1) end
    for i, n in ipairs(r.floats) do
      src[#src + 1] = v.acc == "f64" and fmt("#define %s packDouble2x32(pc.fd[%d])", n, i - 1)
                      or fmt("#define %s pc.ff[%d]", n, i - 1)
      src[#src + 1] = fmt("#define %s_f64 packDouble2x32(pc.fd[%d])", n, i - 1)
    end
    if v.q then
      local D = expr.glsl_dialect(qbuf)
      vars.BE, vars.BB = v.q.block_elements, v.q.block_bytes
      src[#src + 1] = fmt("// Decoding of %s, from %s by expr.emit (GLSL dialect over %s[]).", v.q.name, v.q.__file, qbuf)
      src[#src + 1] = expr.prelude(D)
      src[#src + 1] = expr.emit(v.q, D, "dq")
    end
    src[#src + 1] = template.render_body(tname, vars)
    return table.concat(src, "\n"), { { shader = v.name, wg = st.wg, shared = shared } }, { rows = st.rows }
  end
  return st
end

-- The implementation of stage NAME: its entry above, else the generic one from its template; nil if neither.
local function stage_of(name)
  local s = STAGES[name]
  if not s then
    s = generic_stage(name)
    STAGES[name] = s
  end
  return s
end

local function stage_impl(v)
  local s = stage_of(v.stage.name)
  if not s then
    error(v.stage.__file .. ": stage '" .. v.stage.name .. "' has no GLSL kernel: add " ..
          template.path("glsl/" .. v.stage.name .. ".comp"), 0)
  end
  if v.q and not s.generic and s.emit ~= emit_matvec and s.emit ~= emit_gate_up and s.emit ~= emit_down then
    error(v.stage.__file .. ": stage '" .. v.stage.name .. "' varies by qtype, but " .. SCRIPT ..
          " has no quantized kernel for it; add one", 0)
  end
  if v.acc == "q8" and s.emit ~= emit_matvec and s.emit ~= emit_gate_up and s.emit ~= emit_down then
    error(v.stage.__file .. ": stage '" .. v.stage.name .. "' lists q8, but only the quantized row kernels " ..
          "(matvec, moe_gate_up_swiglu, moe_down) have a q8 form (docs/q8.md)", 0)
  end
  if v.acc and v.acc ~= "f32" and v.acc ~= "f64" and v.acc ~= "q8" then
    error(v.stage.__file .. ": unknown accumulator '" .. tostring(v.acc) .. "'", 0)
  end
  return s
end

-- Shader files of variant V: { {name, pass} ... }.
local function shader_files(v)
  local s = stage_impl(v)
  if not s.passes then return { { name = v.name } } end
  local list = {}
  for _, p in ipairs(s.passes) do list[#list + 1] = { name = v.name .. "." .. p, pass = p } end
  return list
end

local function with_sources(v)
  v.sources = { v.stage.__file }
  if v.q then v.sources[#v.sources + 1] = v.q.__file end
  return v
end

---------------------------------------------------------------------------------------------------------------
-- generated/c/vk_variants.c
---------------------------------------------------------------------------------------------------------------

local function stage_enum(name) return "QMOE_STAGE_" .. name:upper():gsub("[^%w]", "_") end

local function emit_table(ctx, vs)
  local sources = {}
  for _, f in ipairs(ctx.files) do
    if f:match("/stages/") or f:match("/quant/") then sources[#sources + 1] = f end
  end
  local L = { util.banner("c", SCRIPT, "contracts/stages/*.yaml, contracts/quant/*.yaml"),
              "/* The Vulkan variants: one row per stage x qtype x accumulator, naming the embedded shader of each",
              " * pass (generated/glsl/<shader>.comp), its workgroup size and shared memory, and the geometry the",
              " * backend needs to size its dispatches. */",
              "#include <stdint.h>", "#include \"qmoe.h\"", "#include \"vk_internal.h\"", "",
              "const qmoe_vk_variant qmoe_vk_variants[] = {" }
  for _, v in ipairs(vs) do
    local s = stage_impl(v)
    local _, passes, geo
    if s.passes then
      _, passes, geo = s.emit(v, s.passes[1])
    else
      _, passes, geo = s.emit(v)
    end
    local ps = {}
    for _, p in ipairs(passes) do ps[#ps + 1] = fmt('{"%s", %d, %d}', p.shader, p.wg, p.shared) end
    L[#L + 1] = fmt('    {"%s", "%s", %s, %d, %s, %d, {%s}, %d},', v.name, v.what, stage_enum(v.stage.name),
                    v.q and v.q.ggml_type or -1, v.acc and ("QMOE_ACC_" .. v.acc:upper()) or "-1", #passes,
                    table.concat(ps, ", "), geo and geo.rows or 0)
  end
  L[#L + 1] = "};"
  L[#L + 1] = fmt("const size_t qmoe_vk_variant_count = %d;", #vs)
  L[#L + 1] = ""
  L[#L + 1] = "/* Dispatch geometry of every stage (" .. SCRIPT .. "'s STAGES). */"
  L[#L + 1] = "static inline int64_t qmoe_cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }"
  L[#L + 1] = "static inline int64_t qmoe_min(int64_t a, int64_t b) { return a < b ? a : b; }"
  L[#L + 1] = "static inline int64_t qmoe_max(int64_t a, int64_t b) { return a > b ? a : b; }"
  L[#L + 1] = ""
  local recs = dofile("codegen/gen_stages.lua").stages(ctx)
  local tab = {}
  for _, r in ipairs(recs) do
    local s = stage_of(r.name) or error(r.file .. ": stage '" .. r.name .. "' has no GLSL kernel: add " ..
                                          template.path("glsl/" .. r.name .. ".comp"), 0)
    local function cexpr(e)
      return (e:gsub("[%a_][%w_]*", function(n)
        local m = ({ ROWS = "e->rows", WG = "e->wg", ACC_BYTES = "e->acc_bytes", MAXG0 = "e->maxg[0]", MAXG1 = "e->maxg[1]",
                     MAXG2 = "e->maxg[2]", DEVG0 = "e->devg[0]", DEVG1 = "e->devg[1]", DEVG2 = "e->devg[2]" })[n]
        return m or n
      end))
    end
    L[#L + 1] = fmt("static int launch_%s(const qmoe_vk_launch_env *e, const int64_t *p, qmoe_vk_launch *l) {", r.name)
    local used = {}
    for i, n in ipairs(r.ints) do
      L[#L + 1] = fmt("  const int64_t %s = p[%d];", n, i - 1)
      used[#used + 1] = "(void)" .. n
    end
    L[#L + 1] = "  " .. table.concat(used, ", ") .. ";"
    L[#L + 1] = "#define qmoe_cap0(x) ((x) < 1 ? 1 : (x) > e->maxg[0] ? e->maxg[0] : (x))"
    for _, lt in ipairs(s.let or {}) do L[#L + 1] = fmt("  const int64_t %s = %s;", lt[1], cexpr(lt[2])) end
    for _, lim in ipairs(s.limits or {}) do
      L[#L + 1] = fmt("  if (%s > %s) {", cexpr(lim[1]), cexpr(lim[2]))
      L[#L + 1] = fmt('    qmoe_set_error("vulkan: stage %s: %s = %%lld exceeds the device\'s limit of %%lld workgroups (%s)", (long long)(%s), (long long)(%s));',
                      r.name, lim[1], lim[2]:gsub("DEVG", "maxComputeWorkGroupCount "), cexpr(lim[1]), cexpr(lim[2]))
      L[#L + 1] = "    return QMOE_EUNSUPPORTED;"
      L[#L + 1] = "  }"
    end
    L[#L + 1] = fmt("  l->npass = %d;", #s.groups)
    for pi, g in ipairs(s.groups) do
      for d = 1, 3 do L[#L + 1] = fmt("  l->groups[%d][%d] = %s;", pi - 1, d - 1, cexpr(g[d])) end
    end
    L[#L + 1] = fmt("  l->scratch = %s;", s.scratch and fmt("(size_t)(%s)", cexpr(s.scratch)) or "0")
    L[#L + 1] = fmt("  l->counters = %s;", s.counters and cexpr(s.counters) or "0")
    for xi, x in ipairs(s.x or {}) do L[#L + 1] = fmt("  l->x[%d] = %s;", xi - 1, cexpr(x)) end
    L[#L + 1] = "#undef qmoe_cap0"
    L[#L + 1] = "  return 0;"
    L[#L + 1] = "}"
    L[#L + 1] = ""
    tab[#tab + 1] = fmt("  [%s] = launch_%s,", stage_enum(r.name), r.name)
  end
  L[#L + 1] = "const qmoe_vk_launch_fn qmoe_vk_launch_table[QMOE_STAGE_COUNT > 0 ? QMOE_STAGE_COUNT : 1] = {"
  for _, t in ipairs(tab) do L[#L + 1] = t end
  L[#L + 1] = "};"
  return table.concat(L, "\n") .. "\n"
end

---------------------------------------------------------------------------------------------------------------
-- plan / main
---------------------------------------------------------------------------------------------------------------

function M.plan(ctx)
  local jobs = {}
  local vs = variants(ctx)
  if #vs == 0 then return jobs end
  local all_inputs = {}
  -- every shader depends on every GLSL template (they share fragments: codegen/templates/glsl/_*.glsl)
  local templates = {}
  for _, f in ipairs(util.list(template.path("glsl"))) do templates[#templates + 1] = template.path("glsl/" .. f) end
  for _, v in ipairs(vs) do
    with_sources(v)
    for _, f in ipairs(shader_files(v)) do
      local out = "generated/glsl/" .. f.name .. ".comp"
      local inputs = {}
      for _, x in ipairs(v.sources) do inputs[#inputs + 1] = x end
      for _, x in ipairs(templates) do inputs[#inputs + 1] = x end
      jobs[#jobs + 1] = { outputs = { out }, inputs = inputs, desc = out,
                          args = "--shader " .. f.name .. " --out " .. out }
    end
  end
  for _, f in ipairs(ctx.files) do
    if f:match("/stages/") or f:match("/quant/") then all_inputs[#all_inputs + 1] = f end
  end
  all_inputs[#all_inputs + 1] = "codegen/gen_stages.lua"
  jobs[#jobs + 1] = { outputs = { TABLE_OUT }, inputs = all_inputs, desc = TABLE_OUT, args = "--table --out " .. TABLE_OUT }
  return jobs
end

local function main(argv)
  local o = util.parse_args(argv, { contracts = "contracts", shader = "", table = false, out = "" }, USAGE)
  if o.out == "" or (o.shader == "") == (not o.table) then io.stderr:write(USAGE, "\n") os.exit(2) end
  local ctx = require("contracts").load_all(o.contracts)
  local vs = variants(ctx)
  for _, v in ipairs(vs) do with_sources(v) end
  if o.table then
    util.write_if_changed(o.out, emit_table(ctx, vs))
    return
  end
  for _, v in ipairs(vs) do
    for _, f in ipairs(shader_files(v)) do
      if f.name == o.shader then
        local text = STAGES[v.stage.name].emit(v, f.pass)
        util.write_if_changed(o.out, text)
        return
      end
    end
  end
  error("no variant has a shader named '" .. o.shader .. "' (see contracts/stages/*.yaml)", 0)
end

if arg and arg[0] and arg[0]:match("gen_glsl%.lua$") then main(arg) end
return M
