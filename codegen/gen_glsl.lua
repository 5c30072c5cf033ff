-- gen_glsl.lua: writes the Vulkan compute shaders generated/glsl/<variant>[.<pass>].comp — one variant per
-- stage × qtype × accumulator of contracts/stages/*.yaml (qtypes resolved against contracts/quant/*.yaml, whose
-- decoding comes from expr.emit with the GLSL dialect) — and generated/c/vk_variants.c, the table the Vulkan
-- backend (runtime/backend_vulkan.c) dispatches from: variant, passes, workgroup size, shared memory, geometry.
-- Usage: qmoe-lua codegen/gen_glsl.lua [--contracts DIR] --shader NAME --out FILE
--        qmoe-lua codegen/gen_glsl.lua [--contracts DIR] --table --out FILE
-- Variant names: <stage>__<qtype>__<acc>, <stage>__<acc> or <stage>; a stage of several dispatches has one
-- shader per pass, named <variant>.<pass>. Kernel shapes are described in docs/vulkan.md.
local util = require("util")
local expr = require("expr")
local M = {}
local USAGE = "usage: qmoe-lua codegen/gen_glsl.lua [--contracts DIR] (--shader NAME | --table) --out FILE"
local SCRIPT = "codegen/gen_glsl.lua"
local TABLE_OUT = "generated/c/vk_variants.c"
local SHARED_BUDGET = 24576 -- bytes of shared memory a quantized mat-vec workgroup aims to stay under

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
  local stages = {}
  for _, st in ipairs(ctx.stages.list) do stages[#stages + 1] = st end
  table.sort(stages, function(a, b) return (a.order or 0) < (b.order or 0) end)
  for _, st in ipairs(stages) do
    local by_q, by_acc = has(st.varies_by, "qtype"), has(st.varies_by, "acc")
    local qs = by_q and qtypes_of(ctx, st) or { false }
    local accs = by_acc and (st.accumulators or {}) or { false }
    for _, q in ipairs(qs) do
      for _, acc in ipairs(accs) do
        if not q or not q.accumulators or not acc or has(q.accumulators, acc) then
          local parts = { st.name }
          if q then parts[#parts + 1] = q.name end
          if acc then parts[#parts + 1] = acc end
          out[#out + 1] = { name = table.concat(parts, "__"), what = table.concat(parts, "/"), stage = st,
                            q = q or nil, acc = acc or nil }
        end
      end
    end
  end
  return out
end

---------------------------------------------------------------------------------------------------------------
-- Shared GLSL pieces
---------------------------------------------------------------------------------------------------------------

-- Push constants, the same 128 bytes for every shader (runtime/backend_vulkan.c fills them):
-- p: the stage's integer params in contract order; o: byte offset of each binding's data from the bound
-- (aligned) offset; ff/fd: float params as f32 and as f64 bits; x: per-dispatch extras of the stage.
local PUSH = [[
layout(push_constant) uniform PC {
  uint p[8];
  uint o[8];
  float ff[4];
  uvec2 fd[4];
  uint x[4];
} pc;
]]

-- tpl(text, vars): replaces every $NAME (upper-case letters, digits, _) with tostring(vars.NAME); a name
-- without a value is an error, so a template cannot silently keep a hole.
local function tpl(text, vars)
  return (text:gsub("%$([%u%d_]+)", function(k)
    local val = vars[k]
    if val == nil then error("gen_glsl: template variable $" .. k .. " has no value", 0) end
    return tostring(val)
  end))
end

-- double has no exp/log/sin/cos in GLSL: these are ours (Cody-Waite reduction + Taylor series, within a few
-- ulp of double). Every literal carries `lf`: a GLSL literal without it is single precision.
local F64_EXP = [[
// exp(x) in double: x = k*ln2 + r, |r| <= ln2/2 (ln2 in two parts, fdlibm's constants), Taylor to r^14.
double qmoe_exp(double x) {
  if (x != x) return x;
  if (x > 709.78lf) return 1.0lf / 0.0lf;
  if (x < -745.2lf) return 0.0lf;
  double kd = floor(x * 1.4426950408889634lf + 0.5lf);
  double r = (x - kd * 6.93147180369123816490e-01lf) - kd * 1.90821492927058770002e-10lf;
  double p = 1.0lf / 87178291200.0lf;
  p = p * r + 1.0lf / 6227020800.0lf;
  p = p * r + 1.0lf / 479001600.0lf;
  p = p * r + 1.0lf / 39916800.0lf;
  p = p * r + 1.0lf / 3628800.0lf;
  p = p * r + 1.0lf / 362880.0lf;
  p = p * r + 1.0lf / 40320.0lf;
  p = p * r + 1.0lf / 5040.0lf;
  p = p * r + 1.0lf / 720.0lf;
  p = p * r + 1.0lf / 120.0lf;
  p = p * r + 1.0lf / 24.0lf;
  p = p * r + 1.0lf / 6.0lf;
  p = p * r + 0.5lf;
  p = p * r + 1.0lf;
  p = p * r + 1.0lf;
  int k = int(kd);
  // in two steps, so that 2^k alone never overflows while the result is finite
  return ldexp(ldexp(p, k / 2), k - k / 2);
}
]]

local F64_TRIG = [[
// log(x) in double for x > 0: x = m*2^e, m in [sqrt(1/2), sqrt(2)); log m = 2*atanh(s), s = (m-1)/(m+1).
double qmoe_log(double x) {
  int e;
  double m = frexp(x, e);
  if (m < 0.70710678118654752lf) { m *= 2.0lf; e -= 1; }
  double s = (m - 1.0lf) / (m + 1.0lf), s2 = s * s;
  double p = 1.0lf / 25.0lf;
  p = p * s2 + 1.0lf / 23.0lf;
  p = p * s2 + 1.0lf / 21.0lf;
  p = p * s2 + 1.0lf / 19.0lf;
  p = p * s2 + 1.0lf / 17.0lf;
  p = p * s2 + 1.0lf / 15.0lf;
  p = p * s2 + 1.0lf / 13.0lf;
  p = p * s2 + 1.0lf / 11.0lf;
  p = p * s2 + 1.0lf / 9.0lf;
  p = p * s2 + 1.0lf / 7.0lf;
  p = p * s2 + 1.0lf / 5.0lf;
  p = p * s2 + 1.0lf / 3.0lf;
  p = p * s2 + 1.0lf;
  double ed = double(e);
  return ed * 6.93147180369123816490e-01lf + (2.0lf * s * p + ed * 1.90821492927058770002e-10lf);
}

// sin and cos of a in double for |a| < 2^20*pi/2: a = k*pi/2 + r (pi/2 in three parts, fdlibm's), Taylor.
void qmoe_sincos(double a, out double sn, out double cs) {
  double kd = floor(a * 6.36619772367581382433e-01lf + 0.5lf);
  double r = ((a - kd * 1.57079632673412561417e+00lf) - kd * 6.07710050630396597660e-11lf)
             - kd * 2.02226624879595063154e-21lf;
  double r2 = r * r;
  double ps = -1.0lf / 121645100408832000.0lf;   // sin r = r - r^3/3! + ... - r^19/19!
  ps = ps * r2 + 1.0lf / 355687428096000.0lf;
  ps = ps * r2 - 1.0lf / 1307674368000.0lf;
  ps = ps * r2 + 1.0lf / 6227020800.0lf;
  ps = ps * r2 - 1.0lf / 39916800.0lf;
  ps = ps * r2 + 1.0lf / 362880.0lf;
  ps = ps * r2 - 1.0lf / 5040.0lf;
  ps = ps * r2 + 1.0lf / 120.0lf;
  ps = ps * r2 - 1.0lf / 6.0lf;
  double s = r + r * r2 * ps;
  double pcos = 1.0lf / 6402373705728000.0lf;   // cos r = 1 - r^2/2! + ... + r^18/18!
  pcos = pcos * r2 - 1.0lf / 20922789888000.0lf;
  pcos = pcos * r2 + 1.0lf / 87178291200.0lf;
  pcos = pcos * r2 - 1.0lf / 479001600.0lf;
  pcos = pcos * r2 + 1.0lf / 3628800.0lf;
  pcos = pcos * r2 - 1.0lf / 40320.0lf;
  pcos = pcos * r2 + 1.0lf / 720.0lf;
  pcos = pcos * r2 - 1.0lf / 24.0lf;
  pcos = pcos * r2 + 0.5lf;
  double c = 1.0lf - r2 * pcos;
  int q = int(kd - 4.0lf * floor(kd * 0.25lf));   // quadrant 0..3
  if (q == 0) { sn = s; cs = c; }
  else if (q == 1) { sn = c; cs = -s; }
  else if (q == 2) { sn = -s; cs = -c; }
  else { sn = -c; cs = s; }
}
]]

local function acc_type(acc) return acc == "f64" and "double" or "float" end
local function acc_bytes(acc) return acc == "f64" and 8 or 4 end

-- Workgroup reductions over the WG invocations: subgroupAdd/Max, then the per-subgroup partials added in
-- order. Every invocation must call them (uniform control flow).
local function reducers(T, WG)
  return tpl([[
shared $T red[$WG];
$T wg_sum($T v) {
  v = subgroupAdd(v);
  if (subgroupElect()) red[gl_SubgroupID] = v;
  barrier();
  $T s = red[0];
  for (uint i = 1u; i < gl_NumSubgroups; i++) s += red[i];
  barrier();
  return s;
}
$T wg_max($T v) {
  v = subgroupMax(v);
  if (subgroupElect()) red[gl_SubgroupID] = v;
  barrier();
  $T s = red[0];
  for (uint i = 1u; i < gl_NumSubgroups; i++) s = max(s, red[i]);
  barrier();
  return s;
}
]], { T = T, WG = WG })
end

-- Contract text in GLSL comments, in ASCII: the common symbols spelled out, anything else as '?'.
local ASCII = { ["·"] = "*", ["×"] = "x", ["—"] = "-", ["–"] = "-", ["²"] = "^2", ["≤"] = "<=", ["≥"] = ">=",
                ["Σ"] = "sum", ["−"] = "-", ["→"] = "->", ["⊙"] = "*" }
local function ascii(s)
  return (s:gsub("[\192-\255][\128-\191]*", function(ch) return ASCII[ch] or "?" end))
end

local function header(v, pass, WG)
  local desc = v.stage.description and ascii(v.stage.description):gsub("%s+", " "):gsub(" $", "") or v.stage.name
  return table.concat({ util.banner("glsl", SCRIPT, v.sources),
                        fmt("// %s%s: %s", v.what, pass and (" pass " .. pass) or "", desc),
                        "#version 450",
                        "#extension GL_KHR_shader_subgroup_basic : require",
                        "#extension GL_KHR_shader_subgroup_arithmetic : require",
                        fmt("layout(local_size_x = %d) in;", WG), PUSH }, "\n")
end

local function buf(binding, qual, T, name)
  return fmt("layout(std430, binding = %d) %sbuffer B%s { %s %s[]; };", binding, qual, name, T, name)
end

local NAN = "uintBitsToFloat(0x7FC00000u)"

---------------------------------------------------------------------------------------------------------------
-- Quantized mat-vec family: matvec, moe_gate_up_swiglu, moe_down.
--
-- A workgroup owns R output rows; each row is split over KS invocations (WG = R*KS). Work is cut into items
-- of G consecutive blocks (up to 256 elements and 256 bytes). Per tile, the workgroup copies WG items per
-- weight matrix (one per invocation) from global memory with coalesced uvec4 loads into shared "slots", and
-- the matching activations into a padded shared tile; then each invocation decodes its item from shared
-- memory with the contract's decode function (expr.emit; `i` is a constant in unrolled code, so the
-- driver folds the index arithmetic) and accumulates. A row's KS partial sums are added in a fixed order
-- (deterministic, no atomics).
---------------------------------------------------------------------------------------------------------------

local function qgeom(q, nm, acc)
  local BE, BB = q.block_elements, q.block_bytes
  local G = 1
  while G * 2 * BE <= 256 and G * 2 * BB <= 256 do G = G * 2 end
  local g = { BE = BE, BB = BB, G = G, IE = G * BE, IB = G * BB, KS = 8, NM = nm }
  g.U = (g.IB + 15 + 15) // 16          -- uvec4 loads per item (it may start anywhere in a 16-byte line)
  g.SW = g.U * 4 + 1                    -- words per slot (odd, so neighbouring slots start in other banks)
  local function shared(wg) return nm * wg * g.SW * 4 + g.KS * (g.IE + 4) * 4 + nm * wg * acc_bytes(acc) end
  local WG = 64
  while shared(WG) > SHARED_BUDGET and WG > g.KS do WG = WG // 2 end
  g.WG, g.R, g.shared = WG, WG // g.KS, shared(WG)
  return g
end

-- `T item_dot(uint slot, uint start, uint xk, uint nb)`: sum of decode(item) * xs over the nb valid blocks
-- (1..G) of the item in shared slot SLOT, whose global byte offset is START.
-- The body is unrolled over chunks of up to UNROLL elements in which the element index `i` (small blocks)
-- or its offset from a multiple of the chunk (large blocks) is a literal, so the compiler folds the
-- contract's index arithmetic; the loops around the chunks stay loops, which keeps the SPIR-V small.
local UNROLL = 32
local function item_dot(g, T)
  local L = { fmt("%s item_dot(uint slot, uint start, uint xk, uint nb) {", T),
              "  const uint base = slot * SW * 4u + (start & 15u);",
              fmt("  %s a = %s(0);", T, T) }
  local BE, BB = g.BE, g.BB
  if BE <= UNROLL then
    local UB = (UNROLL % BE == 0) and math.min(UNROLL // BE, g.G) or 1 -- blocks per unrolled chunk
    L[#L + 1] = fmt("  for (uint b0 = 0u; b0 < nb; b0 += %du) {", UB)
    for k = 0, UB - 1 do
      local ind = "    "
      if k > 0 then
        L[#L + 1] = fmt("    if (b0 + %du < nb) {", k)
        ind = "      "
      end
      for i = 0, BE - 1 do
        L[#L + 1] = fmt("%sa += %s(dq_decode(base + (b0 + %du) * %du, %d)) * %s(xs[xk + (b0 + %du) * %du + %du]);",
                        ind, T, k, BB, i, T, k, BE, i)
      end
      if k > 0 then L[#L + 1] = "    }" end
    end
    L[#L + 1] = "  }"
  else
    local C = UNROLL
    while BE % C ~= 0 do C = C - 1 end -- the largest divisor of BE not above UNROLL
    -- i = j*C + c with c < C a literal: for C a power of two the driver sees i/C = j, i%C = c.
    L[#L + 1] = "  for (uint b = 0u; b < nb; b++) {"
    L[#L + 1] = fmt("    for (uint j = 0u; j < %du; j++) {", BE // C)
    for c = 0, C - 1 do
      L[#L + 1] = fmt("      a += %s(dq_decode(base + b * %du, int(j * %du + %du))) * %s(xs[xk + b * %du + j * %du + %du]);",
                      T, BB, C, c, T, BE, C, c)
    end
    L[#L + 1] = "    }"
    L[#L + 1] = "  }"
  end
  L[#L + 1] = "  return a;"
  L[#L + 1] = "}"
  return table.concat(L, "\n")
end

local function qvars(v, g)
  return { T = acc_type(v.acc), BE = g.BE, BB = g.BB, G = g.G, IE = g.IE, IB = g.IB, U = g.U, SW = g.SW, KS = g.KS,
           R = g.R, WG = g.WG, NM = g.NM, NAN = NAN, EXP = v.acc == "f64" and "qmoe_exp" or "exp" }
end

local function qcommon(v, g)
  local D = expr.glsl_dialect("sw")
  return table.concat({ tpl([[
const uint BE = $BEu, BB = $BBu, G = $Gu, IE = $IEu, IB = $IBu, U = $Uu, SW = $SWu;
const uint KS = $KSu, R = $Ru, WG = $WGu, NM = $NMu, XS = IE + 4u;
shared uint sw[NM * WG * SW];   // weight slots: an item's bytes, starting (its byte offset & 15) into the slot
shared float xs[KS * XS];       // activations of the tile's KS items; rows 16-byte aligned, 4 banks apart
shared $T part[NM * WG];        // per-invocation partial sums, reduced per row in a fixed order

void put_slot(uint s, uint u, uvec4 v) {
  uint at = s * SW + u * 4u;
  sw[at] = v.x; sw[at + 1u] = v.y; sw[at + 2u] = v.z; sw[at + 3u] = v.w;
}
]], qvars(v, g)), fmt("// Decoding of %s, from %s by expr.emit (GLSL dialect over shared sw[]).", v.q.name, v.q.__file),
                        expr.prelude(D), expr.emit(v.q, D, "dq"), item_dot(g, acc_type(v.acc)) }, "\n")
end

local MATVEC = [[
// y[rows] = W[rows x cols] . x; p: rows, cols. Workgroups stride over groups of R rows.
void main() {
  const uint rows = pc.p[0], cols = pc.p[1];
  const uint nblk = cols / BE, nitem = (nblk + G - 1u) / G, row_bytes = nblk * BB;
  const uint tid = gl_LocalInvocationIndex, rl = tid / KS, ks = tid % KS;
  const uint woff = pc.o[0], xoff = pc.o[1] >> 2, yoff = pc.o[2] >> 2;
  const uint wlen = uint(W.length());
  for (uint rg = gl_WorkGroupID.x; rg * R < rows; rg += gl_NumWorkGroups.x) {
    $T acc = $T(0);
    for (uint t0 = 0u; t0 < nitem; t0 += KS) {
      for (uint idx = tid; idx < WG * U; idx += WG) {
        uint s = idx / U, u = idx - s * U;
        uint row = rg * R + s / KS, item = t0 + s % KS;
        uvec4 w = uvec4(0u);
        if (row < rows && item < nitem) {
          uint q = ((woff + row * row_bytes + item * IB) >> 4) + u;
          if (q < wlen) w = W[q];
        }
        put_slot(s, u, w);
      }
      for (uint idx = tid; idx < KS * IE; idx += WG) {
        uint k = idx / IE, e = idx - k * IE, col = (t0 + k) * IE + e;
        xs[k * XS + e] = col < cols ? X[xoff + col] : 0.0;
      }
      barrier();
      uint row = rg * R + rl, item = t0 + ks;
      if (row < rows && item < nitem) {
        uint start = woff + row * row_bytes + item * IB;
        acc += item_dot(tid, start, ks * XS, min(G, nblk - item * G));
      }
      barrier();
    }
    part[tid] = acc;
    barrier();
    if (ks == 0u && rg * R + rl < rows) {
      $T s = part[tid];
      for (uint k = 1u; k < KS; k++) s += part[tid + k];
      Y[yoff + rg * R + rl] = float(s);
    }
    barrier();
  }
}
]]

local function emit_matvec(v)
  local g = qgeom(v.q, 1, v.acc)
  local src = { header(v, nil, g.WG), buf(0, "restrict readonly ", "uvec4", "W"), buf(1, "readonly ", "float", "X"),
                buf(2, "", "float", "Y"), qcommon(v, g), tpl(MATVEC, qvars(v, g)) }
  return table.concat(src, "\n"), { { shader = v.name, wg = g.WG, shared = g.shared } }, { rows = g.R }
end

local GATE_UP = [[
// h[k][f] = silu(Wg[ids_k] . x)[f] * (Wu[ids_k] . x)[f] for the K chosen experts in one dispatch: grid.y = k
// (the expert id is read here), grid.x strides over groups of R rows f; SwiGLU in $T. p: H, F, E, K.
// An expert id outside [0, E) makes that expert's outputs NaN (never a read out of bounds).
void main() {
  const uint H = pc.p[0], F = pc.p[1], E = pc.p[2], k = gl_WorkGroupID.y;
  const uint nblk = H / BE, nitem = (nblk + G - 1u) / G, row_bytes = nblk * BB;
  const uint tid = gl_LocalInvocationIndex, rl = tid / KS, ks = tid % KS;
  const uint goff = pc.o[0], uoff = pc.o[1], xoff = pc.o[2] >> 2, hoff = (pc.o[4] >> 2) + k * F;
  const uint glen = uint(Wg.length()), ulen = uint(Wu.length());
  const int eid = IDS[(pc.o[3] >> 2) + k];
  const bool bad = eid < 0 || uint(eid) >= E;   // uniform over the workgroup
  const uint e = bad ? 0u : uint(eid);
  for (uint rg = gl_WorkGroupID.x; rg * R < F; rg += gl_NumWorkGroups.x) {
    $T ag = $T(0), au = $T(0);
    for (uint t0 = 0u; t0 < nitem && !bad; t0 += KS) {
      for (uint idx = tid; idx < NM * WG * U; idx += WG) {
        uint s = idx / U, u = idx - s * U, m = s / WG, sl = s - m * WG;
        uint f = rg * R + sl / KS, item = t0 + sl % KS;
        uvec4 w = uvec4(0u);
        if (f < F && item < nitem) {
          uint rel = (e * F + f) * row_bytes + item * IB;
          if (m == 0u) { uint q = ((goff + rel) >> 4) + u; if (q < glen) w = Wg[q]; }
          else { uint q = ((uoff + rel) >> 4) + u; if (q < ulen) w = Wu[q]; }
        }
        put_slot(s, u, w);
      }
      for (uint idx = tid; idx < KS * IE; idx += WG) {
        uint kk = idx / IE, el = idx - kk * IE, col = (t0 + kk) * IE + el;
        xs[kk * XS + el] = col < H ? X[xoff + col] : 0.0;
      }
      barrier();
      uint f = rg * R + rl, item = t0 + ks;
      if (f < F && item < nitem) {
        uint rel = (e * F + f) * row_bytes + item * IB;
        uint nb = min(G, nblk - item * G);
        ag += item_dot(tid, goff + rel, ks * XS, nb);
        au += item_dot(WG + tid, uoff + rel, ks * XS, nb);
      }
      barrier();
    }
    part[tid] = ag;
    part[WG + tid] = au;
    barrier();
    if (ks == 0u && rg * R + rl < F) {
      $T gs = part[tid], us = part[WG + tid];
      for (uint kk = 1u; kk < KS; kk++) { gs += part[tid + kk]; us += part[WG + tid + kk]; }
      $T silu = gs / ($T(1) + $EXP(-gs));
      Hout[hoff + rg * R + rl] = bad ? $NAN : float(silu * us);
    }
    barrier();
  }
}
]]

local function emit_gate_up(v)
  local g = qgeom(v.q, 2, v.acc)
  local src = { header(v, nil, g.WG), buf(0, "restrict readonly ", "uvec4", "Wg"), buf(1, "restrict readonly ", "uvec4", "Wu"),
                buf(2, "readonly ", "float", "X"), buf(3, "readonly ", "int", "IDS"), buf(4, "", "float", "Hout"),
                v.acc == "f64" and F64_EXP or "", qcommon(v, g), tpl(GATE_UP, qvars(v, g)) }
  return table.concat(src, "\n"), { { shader = v.name, wg = g.WG, shared = g.shared } }, { rows = g.R }
end

local DOWN = [[
// y[H] = sum_k w_k * (Wd[ids_k] . h_k) over the K chosen experts in one dispatch (y is overwritten; no
// atomics). A row's work is its K x nitem items (k-major); each invocation adds w_k * (item . h_k) for its
// items, and the row's KS partial sums are added in a fixed order. p: H, F, E, K. An expert id outside
// [0, E) makes the outputs NaN (never a read out of bounds).
void main() {
  const uint H = pc.p[0], F = pc.p[1], E = pc.p[2], K = pc.p[3];
  const uint nblk = F / BE, nitem = (nblk + G - 1u) / G, row_bytes = nblk * BB, total = K * nitem;
  const uint tid = gl_LocalInvocationIndex, rl = tid / KS, ks = tid % KS;
  const uint woff = pc.o[0], hoff = pc.o[1] >> 2, ioff = pc.o[2] >> 2, wkoff = pc.o[3] >> 2, yoff = pc.o[4] >> 2;
  const uint wlen = uint(Wd.length());
  bool bad = false;
  for (uint k = 0u; k < K; k++) { int e = IDS[ioff + k]; bad = bad || e < 0 || uint(e) >= E; }
  for (uint rg = gl_WorkGroupID.x; rg * R < H; rg += gl_NumWorkGroups.x) {
    $T acc = $T(0);
    for (uint t0 = 0u; t0 < total && !bad; t0 += KS) {
      for (uint idx = tid; idx < WG * U; idx += WG) {
        uint s = idx / U, u = idx - s * U;
        uint r = rg * R + s / KS, j = t0 + s % KS;
        uvec4 w = uvec4(0u);
        if (r < H && j < total) {
          uint k = j / nitem, item = j - k * nitem;
          uint q = ((woff + (uint(IDS[ioff + k]) * H + r) * row_bytes + item * IB) >> 4) + u;
          if (q < wlen) w = Wd[q];
        }
        put_slot(s, u, w);
      }
      for (uint idx = tid; idx < KS * IE; idx += WG) {
        uint kk = idx / IE, el = idx - kk * IE, j = t0 + kk;
        float hv = 0.0;
        if (j < total) {
          uint k = j / nitem, col = (j - k * nitem) * IE + el;
          if (col < F) hv = Hin[hoff + k * F + col];
        }
        xs[kk * XS + el] = hv;
      }
      barrier();
      uint r = rg * R + rl, j = t0 + ks;
      if (r < H && j < total) {
        uint k = j / nitem, item = j - k * nitem;
        uint start = woff + (uint(IDS[ioff + k]) * H + r) * row_bytes + item * IB;
        acc += $T(WK[wkoff + k]) * item_dot(tid, start, ks * XS, min(G, nblk - item * G));
      }
      barrier();
    }
    part[tid] = acc;
    barrier();
    if (ks == 0u && rg * R + rl < H) {
      $T s = part[tid];
      for (uint kk = 1u; kk < KS; kk++) s += part[tid + kk];
      Y[yoff + rg * R + rl] = bad ? $NAN : float(s);
    }
    barrier();
  }
}
]]

local function emit_down(v)
  local g = qgeom(v.q, 1, v.acc)
  local src = { header(v, nil, g.WG), buf(0, "restrict readonly ", "uvec4", "Wd"), buf(1, "readonly ", "float", "Hin"),
                buf(2, "readonly ", "int", "IDS"), buf(3, "readonly ", "float", "WK"), buf(4, "", "float", "Y"),
                qcommon(v, g), tpl(DOWN, qvars(v, g)) }
  return table.concat(src, "\n"), { { shader = v.name, wg = g.WG, shared = g.shared } }, { rows = g.R }
end

---------------------------------------------------------------------------------------------------------------
-- The stages without quantized weights.
---------------------------------------------------------------------------------------------------------------

local function svars(v, WG)
  return { T = acc_type(v.acc), WG = WG, EXP = v.acc == "f64" and "qmoe_exp" or "exp", NAN = NAN }
end

local ROUTER_LOGITS = [[
// Pass 1: logits[e] = Wr[e] . x in $T, one workgroup per expert row (strided). p: H, E, K.
void main() {
  const uint H = pc.p[0], E = pc.p[1], tid = gl_LocalInvocationIndex;
  const uint woff = pc.o[0] >> 2, xoff = pc.o[1] >> 2;
  for (uint e = gl_WorkGroupID.x; e < E; e += gl_NumWorkGroups.x) {
    $T a = $T(0);
    for (uint i = tid; i < H; i += $WGu) a += $T(Wr[woff + e * H + i]) * $T(X[xoff + i]);
    a = wg_sum(a);
    if (tid == 0u) LG[e] = a;
  }
}
]]

local ROUTER_SELECT = [[
shared $T bv[$WG];
shared uint bi[$WG];
// Pass 2 (one workgroup): softmax over all E logits, top K by logit (ties: the lower index), w = p / (sum of
// the chosen p). The k-th pick is the best (logit desc, index asc) of those after the (k-1)-th in that order,
// so no flags are needed. p: H, E, K.
void main() {
  const uint E = pc.p[1], K = pc.p[2], tid = gl_LocalInvocationIndex;
  const uint ioff = pc.o[2] >> 2, woff = pc.o[3] >> 2;
  $T mx = LG[0];
  for (uint e = tid; e < E; e += $WGu) mx = max(mx, LG[e]);
  mx = wg_max(mx);
  $T sum = $T(0);
  for (uint e = tid; e < E; e += $WGu) sum += $EXP(LG[e] - mx);
  sum = wg_sum(sum);
  $T pv = $T(0);
  uint pi = 0xFFFFFFFFu;
  for (uint k = 0u; k < K; k++) {
    $T best = $T(0);
    uint besti = 0xFFFFFFFFu;
    for (uint e = tid; e < E; e += $WGu) {
      $T l = LG[e];
      bool after = pi == 0xFFFFFFFFu || l < pv || (l == pv && e > pi);
      if (after && (besti == 0xFFFFFFFFu || l > best)) { best = l; besti = e; }
    }
    bv[tid] = best;
    bi[tid] = besti;
    barrier();
    if (tid == 0u) {
      for (uint t = 1u; t < $WGu; t++) {
        if (bi[t] != 0xFFFFFFFFu && (bi[0] == 0xFFFFFFFFu || bv[t] > bv[0] || (bv[t] == bv[0] && bi[t] < bi[0]))) {
          bv[0] = bv[t];
          bi[0] = bi[t];
        }
      }
      IDS[ioff + k] = int(bi[0]);
    }
    barrier();
    pv = bv[0];
    pi = bi[0];
    barrier();
  }
  if (tid == 0u) {
    $T chosen = $T(0);
    for (uint k = 0u; k < K; k++) chosen += $EXP(LG[uint(IDS[ioff + k])] - mx) / sum;
    for (uint k = 0u; k < K; k++) WOUT[woff + k] = float(($EXP(LG[uint(IDS[ioff + k])] - mx) / sum) / chosen);
  }
}
]]

local function emit_router(v, pass)
  local T, WG, ab = acc_type(v.acc), 64, acc_bytes(v.acc)
  local passes = { { shader = v.name .. ".logits", wg = WG, shared = WG * ab },
                   { shader = v.name .. ".select", wg = WG, shared = 2 * WG * ab + WG * 4 } }
  if pass == "logits" then
    return table.concat({ header(v, "logits", WG), buf(0, "restrict readonly ", "float", "Wr"),
                          buf(1, "readonly ", "float", "X"), buf(4, "", T, "LG"), reducers(T, WG),
                          tpl(ROUTER_LOGITS, svars(v, WG)) }, "\n"), passes, {}
  end
  return table.concat({ header(v, "select", WG), buf(2, "", "int", "IDS"), buf(3, "", "float", "WOUT"),
                        buf(4, "readonly ", T, "LG"), v.acc == "f64" and F64_EXP or "", reducers(T, WG),
                        tpl(ROUTER_SELECT, svars(v, WG)) }, "\n"), passes, {}
end

local NORM = [[
// $WHAT
void main() {
  const uint n = $N, tid = gl_LocalInvocationIndex, base = $BASE;
  const uint xoff = (pc.o[0] >> 2) + base, woff = pc.o[1] >> 2, yoff = (pc.o[2] >> 2) + base;
  $T ss = $T(0);
  for (uint i = tid; i < n; i += $WGu) { $T xv = $T(X[xoff + i]); ss += xv * xv; }
  ss = wg_sum(ss);
  $T r = $T(1) / sqrt(ss / $T(n) + $EPS);
  // y may be x: each invocation reads x[i] again before it writes y[i], after all sums are done.
  for (uint i = tid; i < n; i += $WGu) {
    precise $T y = $T(X[xoff + i]) * r * $T(Wn[woff + i]);
    Y[yoff + i] = float(y);
  }
}
]]

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
                buf(2, "", "float", "Y"), reducers(T, WG), tpl(NORM, vars) }
  return table.concat(src, "\n"), { { shader = v.name, wg = WG, shared = WG * acc_bytes(v.acc) } }, {}
end

local ROPE = [[
// NEOX RoPE: for i < D/2, a = pos * theta^(-2i/D); the angle and its cos/sin are computed in double in every
// variant (as the CPU reference does: an f32 angle at pos in the thousands is off by ~1e-4 rad), the
// rotation in $T. One invocation per (head, i) pair; y may be x (each pair is read, then written, by the
// same invocation). p: nh, D, pos; fd[0]: theta.
void main() {
  const uint nh = pc.p[0], D = pc.p[1], pos = pc.p[2], hd = D / 2u;
  const uint xoff = pc.o[0] >> 2, yoff = pc.o[1] >> 2;
  const double ltheta = qmoe_log(packDouble2x32(pc.fd[0]));
  for (uint idx = gl_GlobalInvocationID.x; idx < nh * hd; idx += gl_NumWorkGroups.x * $WGu) {
    uint h = idx / hd, i = idx - h * hd;
    double ex = -double(2u * i) / double(D);
    double a = double(pos) * qmoe_exp(ex * ltheta);
    double sd, cd;
    qmoe_sincos(a, sd, cd);
    $T c = $T(cd), s = $T(sd);
    $T x0 = $T(X[xoff + h * D + i]), x1 = $T(X[xoff + h * D + i + hd]);
    precise $T y0 = x0 * c - x1 * s;
    precise $T y1 = x0 * s + x1 * c;
    Y[yoff + h * D + i] = float(y0);
    Y[yoff + h * D + i + hd] = float(y1);
  }
}
]]

local function emit_rope(v)
  local WG = 256
  local src = { header(v, nil, WG), buf(0, "readonly ", "float", "X"), buf(1, "", "float", "Y"), F64_EXP, F64_TRIG,
                tpl(ROPE, svars(v, WG)) }
  return table.concat(src, "\n"), { { shader = v.name, wg = WG, shared = 0 } }, {}
end

local KV_STORE = [[
// Kc[pos], Vc[pos] = k, v (rows of nkv x D in caches of ctx positions). p: nkv, D, pos, ctx.
void main() {
  const uint n = pc.p[0] * pc.p[1], at = pc.p[2] * n;
  const uint ko = pc.o[0] >> 2, vo = pc.o[1] >> 2, kc = (pc.o[2] >> 2) + at, vc = (pc.o[3] >> 2) + at;
  for (uint i = gl_GlobalInvocationID.x; i < n; i += gl_NumWorkGroups.x * $WGu) {
    Kc[kc + i] = Kin[ko + i];
    Vc[vc + i] = Vin[vo + i];
  }
}
]]

local function emit_kv_store(v)
  local WG = 256
  local src = { header(v, nil, WG), buf(0, "readonly ", "float", "Kin"), buf(1, "readonly ", "float", "Vin"),
                buf(2, "", "float", "Kc"), buf(3, "", "float", "Vc"), tpl(KV_STORE, svars(v, WG)) }
  return table.concat(src, "\n"), { { shader = v.name, wg = WG, shared = 0 } }, {}
end

local ADD = [[
// y = a + b (y may be a). p: n.
void main() {
  const uint n = pc.p[0], ao = pc.o[0] >> 2, bo = pc.o[1] >> 2, yo = pc.o[2] >> 2;
  for (uint i = gl_GlobalInvocationID.x; i < n; i += gl_NumWorkGroups.x * $WGu) Y[yo + i] = A[ao + i] + Bv[bo + i];
}
]]

local function emit_add(v)
  local WG = 256
  local src = { header(v, nil, WG), buf(0, "readonly ", "float", "A"), buf(1, "readonly ", "float", "Bv"),
                buf(2, "", "float", "Y"), tpl(ADD, svars(v, WG)) }
  return table.concat(src, "\n"), { { shader = v.name, wg = WG, shared = 0 } }, {}
end

local ARGMAX_COMMON = [[
shared float sv[$WG];
shared uint si[$WG];
bool better(float v, uint i, float bvv, uint bii) { return bii == 0xFFFFFFFFu || v > bvv || (v == bvv && i < bii); }
// Reduces (v, i) over the workgroup into sv[0], si[0]: a tree over halves, ties to the lower index.
void wg_argmax(float v, uint i) {
  const uint tid = gl_LocalInvocationIndex;
  sv[tid] = v;
  si[tid] = i;
  barrier();
  for (uint s = $HALFu; s > 0u; s >>= 1) {
    if (tid < s && si[tid + s] != 0xFFFFFFFFu && better(sv[tid + s], si[tid + s], sv[tid], si[tid])) {
      sv[tid] = sv[tid + s];
      si[tid] = si[tid + s];
    }
    barrier();
  }
}
// The CPU reference scans with a strict '>': a NaN at index 0 is never beaten, a NaN elsewhere never wins.
float key(float x, uint i) { return isnan(x) ? (i == 0u ? 1.0 / 0.0 : -1.0 / 0.0) : x; }
]]

local ARGMAX_PART = [[
// Pass 1: workgroup g reduces x[g*chunk .. (g+1)*chunk) to S[2g] = value bits, S[2g+1] = index.
// p: n; x[0]: chunk.
void main() {
  const uint n = pc.p[0], chunk = pc.x[0], xo = pc.o[0] >> 2, tid = gl_LocalInvocationIndex;
  const uint g = gl_WorkGroupID.x, lo = g * chunk, hi = min(n, lo + chunk);
  float bvv = 0.0;
  uint bii = 0xFFFFFFFFu;
  for (uint i = lo + tid; i < hi; i += $WGu) {
    float k = key(X[xo + i], i);
    if (better(k, i, bvv, bii)) { bvv = k; bii = i; }
  }
  wg_argmax(bvv, bii);
  if (tid == 0u) { S[2u * g] = floatBitsToUint(sv[0]); S[2u * g + 1u] = si[0]; }
}
]]

local ARGMAX_FINAL = [[
// Pass 2 (one workgroup): the best of the x[1] partial results, as an int32 index. p: n.
void main() {
  const uint ng = pc.x[1], tid = gl_LocalInvocationIndex;
  float bvv = 0.0;
  uint bii = 0xFFFFFFFFu;
  for (uint g = tid; g < ng; g += $WGu) {
    float k = uintBitsToFloat(S[2u * g]);
    uint i = S[2u * g + 1u];
    if (i != 0xFFFFFFFFu && better(k, i, bvv, bii)) { bvv = k; bii = i; }
  }
  wg_argmax(bvv, bii);
  if (tid == 0u) IDX[pc.o[1] >> 2] = int(si[0]);
}
]]

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
                          tpl(ARGMAX_COMMON, vars), tpl(ARGMAX_PART, vars) }, "\n"), passes, {}
  end
  return table.concat({ header(v, "final", WG), buf(1, "", "int", "IDX"), buf(2, "readonly ", "uint", "S"),
                        tpl(ARGMAX_COMMON, vars), tpl(ARGMAX_FINAL, vars) }, "\n"), passes, {}
end

local ATTN_PART = [[
const uint GB = $GBu, CH = $WGu;
shared $T e[GB * CH];
// Pass 1: grid (nkv * ceil(G/GB), ns), G = nh/nkv query heads per kv head. A workgroup takes up to GB query
// heads of one kv head and one split of CH cache positions (sp*CH ..), so each K and V row is read from
// memory once for all of them. Writes S[(h*ns + sp)*(D+2) ..] = m (max score), l (sum of e^(score-m)),
// o[D] (sum of e^(score-m) * V). p: nh, nkv, D, n_kv, ctx; x[0]: ns.
void main() {
  const uint nh = pc.p[0], nkv = pc.p[1], D = pc.p[2], n_kv = pc.p[3], ns = pc.x[0];
  const uint G = nh / nkv, nhb = (G + GB - 1u) / GB;
  const uint kvh = gl_WorkGroupID.x / nhb, hb = gl_WorkGroupID.x - kvh * nhb, sp = gl_WorkGroupID.y;
  const uint tid = gl_LocalInvocationIndex, h0 = kvh * G + hb * GB, nu = min(GB, G - hb * GB);
  const uint qo = pc.o[0] >> 2, ko = pc.o[1] >> 2, vo = pc.o[2] >> 2;
  const $T scale = $T(1) / sqrt($T(D));
  const uint cnt = min(CH, n_kv - sp * CH);
  const uint kr = ko + ((sp * CH + tid) * nkv + kvh) * D;
  for (uint u = 0u; u < nu; u++) {   // the same count in every invocation: the reductions stay uniform
    $T sc = $T(0);
    if (tid < cnt) {
      const uint qr = qo + (h0 + u) * D;
      for (uint d = 0u; d < D; d++) sc += $T(Q[qr + d]) * $T(Kc[kr + d]);
      sc *= scale;
    }
    $T m = wg_max(tid < cnt ? sc : $T(-1.0 / 0.0));
    $T ev = tid < cnt ? $EXP(sc - m) : $T(0);
    e[u * CH + tid] = ev;
    $T l = wg_sum(ev);   // its barriers also publish e[]
    if (tid == 0u) {
      const uint so = ((h0 + u) * ns + sp) * (D + 2u);
      S[so] = m;
      S[so + 1u] = l;
    }
  }
  for (uint d = tid; d < D; d += CH) {
    $T o[GB];
$OINIT
    for (uint t = 0u; t < cnt; t++) {
      const $T vv = $T(Vc[vo + ((sp * CH + t) * nkv + kvh) * D + d]);
$OACC
    }
$OSTORE
  }
}
]]

local ATTN_COMBINE = [[
// Pass 2: grid nh; merges head h's ns splits: o = sum_s o_s e^(m_s - M) / sum_s l_s e^(m_s - M).
// p: nh, nkv, D, n_kv, ctx; x[0]: ns.
void main() {
  const uint D = pc.p[2], ns = pc.x[0], h = gl_WorkGroupID.x, tid = gl_LocalInvocationIndex;
  const uint base = h * ns * (D + 2u), oo = (pc.o[3] >> 2) + h * D;
  $T M = S[base];
  for (uint s = 1u; s < ns; s++) M = max(M, S[base + s * (D + 2u)]);
  $T L = $T(0);
  for (uint s = 0u; s < ns; s++) L += S[base + s * (D + 2u) + 1u] * $EXP(S[base + s * (D + 2u)] - M);
  for (uint d = tid; d < D; d += $WGu) {
    $T o = $T(0);
    for (uint s = 0u; s < ns; s++) o += S[base + s * (D + 2u) + 2u + d] * $EXP(S[base + s * (D + 2u)] - M);
    O[oo + d] = float(o / L);
  }
}
]]

-- Decode attention split over the cache (flash-decoding): pass "part" per (head, split), pass "combine" per
-- head. GQA: head h reads kv head h / (nh / nkv).
local function emit_attention(v, pass)
  local T, WG, ab, GB = acc_type(v.acc), 64, acc_bytes(v.acc), 8
  local f64 = v.acc == "f64" and F64_EXP or ""
  local passes = { { shader = v.name .. ".part", wg = WG, shared = (GB + 1) * WG * ab },
                   { shader = v.name .. ".combine", wg = WG, shared = 0 } }
  local geo = { rows = GB } -- query heads per workgroup of the part pass
  if pass == "part" then
    local vars = svars(v, WG)
    vars.GB = GB
    local init, accl, store = {}, {}, {}
    for u = 0, GB - 1 do
      init[#init + 1] = fmt("    o[%d] = %s(0);", u, T)
      accl[#accl + 1] = fmt("      o[%d] += e[%du * CH + t] * vv;", u, u)
      store[#store + 1] = fmt("    if (%du < nu) S[((h0 + %du) * ns + sp) * (D + 2u) + 2u + d] = o[%d];", u, u, u)
    end
    vars.OINIT, vars.OACC, vars.OSTORE = table.concat(init, "\n"), table.concat(accl, "\n"), table.concat(store, "\n")
    return table.concat({ header(v, "part", WG), buf(0, "readonly ", "float", "Q"), buf(1, "readonly ", "float", "Kc"),
                          buf(2, "readonly ", "float", "Vc"), buf(4, "", T, "S"), f64, reducers(T, WG),
                          tpl(ATTN_PART, vars) }, "\n"), passes, geo
  end
  return table.concat({ header(v, "combine", WG), buf(3, "", "float", "O"), buf(4, "readonly ", T, "S"), f64,
                        tpl(ATTN_COMBINE, svars(v, WG)) }, "\n"), passes, geo
end

-- Stage name -> { passes = {names} or nil, emit(v, pass) -> text, pass list, geometry }.
-- Each stage: its emitter, its passes, and its dispatch geometry as C expressions (emitted into
-- generated/c/vk_variants.c, so runtime/backend_vulkan.c dispatches any stage by table lookup). Names: the
-- contract's int params; ROWS (the variant's rows per workgroup), WG (pass 1's workgroup size), ACC_BYTES;
-- MAXG0..2: the device's maxComputeWorkGroupCount (lowered by QMOE_VK_MAX_GROUPS), DEVG0..2: the device's;
-- qmoe_cdiv(a, b), qmoe_min(a, b), qmoe_cap0(x): x clamped to [1, MAXG0] (kernels that stride over work).
--   limits: { param-expression, bound }: QMOE_EUNSUPPORTED when it exceeds the bound
--   let: { name, expr }; groups: per pass { x, y, z }; scratch: bytes of the shared scratch buffer, bound
--   after the call's buffers (absent: none); x: push-constant extras x[0..3]
local STAGES = {
  matvec = { emit = emit_matvec, groups = { { "qmoe_cap0(qmoe_cdiv(rows, ROWS))", "1", "1" } } },
  moe_gate_up_swiglu = { emit = emit_gate_up, limits = { { "K", "DEVG1" } },
                         groups = { { "qmoe_cap0(qmoe_cdiv(F, ROWS))", "K", "1" } } },
  moe_down = { emit = emit_down, groups = { { "qmoe_cap0(qmoe_cdiv(H, ROWS))", "1", "1" } } },
  -- logits into scratch, then one workgroup selects
  router_topk = { passes = { "logits", "select" }, emit = emit_router, scratch = "E * ACC_BYTES",
                  groups = { { "qmoe_cap0(E)", "1", "1" }, { "1", "1", "1" } } },
  rmsnorm = { emit = function(v) return emit_norm(v, false) end, groups = { { "1", "1", "1" } } },
  qk_norm = { emit = function(v) return emit_norm(v, true) end, limits = { { "nh", "DEVG0" } }, -- a workgroup per head
              groups = { { "nh", "1", "1" } } },
  rope_neox = { emit = emit_rope, groups = { { "qmoe_cap0(qmoe_cdiv(nh * (D / 2), WG))", "1", "1" } } },
  kv_store = { emit = emit_kv_store, groups = { { "qmoe_cap0(qmoe_cdiv(nkv * D, WG))", "1", "1" } } },
  -- (kv head x block of ROWS query heads, split of WG positions) into scratch, then one combine per head
  attention = { passes = { "part", "combine" }, emit = emit_attention,
                let = { { "ns", "qmoe_cdiv(n_kv, WG)" } }, limits = { { "nh", "DEVG0" }, { "ns", "DEVG1" } },
                scratch = "nh * ns * (D + 2) * ACC_BYTES", x = { "ns" },
                groups = { { "nkv * qmoe_cdiv(nh / nkv, ROWS)", "ns", "1" }, { "nh", "1", "1" } } },
  add = { emit = emit_add, groups = { { "qmoe_cap0(qmoe_cdiv(n, WG))", "1", "1" } } },
  -- chunks of 16 workgroups' worth (more when that needs too many workgroups) reduced to (value, index)
  -- pairs, then one workgroup
  argmax = { passes = { "part", "final" }, emit = emit_argmax,
             let = { { "chunk", "qmoe_cdiv(n, WG * 16) > MAXG0 ? qmoe_cdiv(qmoe_cdiv(n, MAXG0), WG) * WG : WG * 16" },
                     { "ng", "qmoe_cdiv(n, chunk)" } },
             scratch = "ng * 8", x = { "chunk", "ng" }, groups = { { "ng", "1", "1" }, { "1", "1", "1" } } },
}

local function stage_impl(v)
  local s = STAGES[v.stage.name]
  if not s then
    error(v.stage.__file .. ": stage '" .. v.stage.name .. "' has no GLSL kernel in " .. SCRIPT .. "; add one", 0)
  end
  if v.q and s.emit ~= emit_matvec and s.emit ~= emit_gate_up and s.emit ~= emit_down then
    error(v.stage.__file .. ": stage '" .. v.stage.name .. "' varies by qtype, but " .. SCRIPT ..
          " has no quantized kernel for it; add one", 0)
  end
  if v.acc and v.acc ~= "f32" and v.acc ~= "f64" then
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
  L[#L + 1] = ""
  local recs = dofile("codegen/gen_stages.lua").stages(ctx)
  local tab = {}
  for _, r in ipairs(recs) do
    local s = STAGES[r.name] or error(r.file .. ": stage '" .. r.name .. "' has no GLSL kernel in " .. SCRIPT .. "; add one", 0)
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
  for _, v in ipairs(vs) do
    with_sources(v)
    for _, f in ipairs(shader_files(v)) do
      local out = "generated/glsl/" .. f.name .. ".comp"
      jobs[#jobs + 1] = { outputs = { out }, inputs = v.sources, desc = out,
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
