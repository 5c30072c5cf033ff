-- gen_cuda.lua: writes generated/cuda/<stage>[__<qtype>][__<acc>].cu, one NVRTC-compiled kernel per file, for
-- every variant the stage contracts (contracts/stages/*.yaml, normalized by gen_stages.lua) list: qtype
-- stages × the qtypes they name × accumulators; decoding comes from expr.emit(q, expr.dialects.cuda).
-- Usage: qmoe-lua codegen/gen_cuda.lua [--contracts DIR] (--stage NAME [--qtype NAME] [--acc f32|f64] | --launch) --out FILE
-- (--launch writes generated/c/cuda_launch.c, the launch geometry of every stage: see LAUNCH below)
--
-- Each file starts with the banner and one metadata line the runtime (runtime/cuda.c) reads:
--   // qmoe-cuda: stage=S qtype=Q ggml_type=N acc=A entry=E block_elements=BE block_bytes=BB threads=T rows_per_block=R
-- (qtype=- ggml_type=-1 for stages that do not vary by qtype, acc=- for those that do not vary by accumulator).
-- Kernels take one argument, `const qmoe_args a`: buffer addresses (base + offset) in contract order, int
-- params, float params — bound to the contract's names at the top of each kernel.
local util = require("util")
local expr = require("expr")
local M = {}
local USAGE = "usage: qmoe-lua codegen/gen_cuda.lua [--contracts DIR] (--stage NAME [--qtype NAME] [--acc f32|f64] | --launch) --out FILE"
local SCRIPT = "codegen/gen_cuda.lua"

local WARPS = 4          -- warps per block of the row kernels (one block = 128 threads)
local STAGE_BYTES = 2048 -- bytes of one row staged in shared memory per chunk (rounded to whole blocks)

local function stages_module()
  return dofile("codegen/gen_stages.lua")
end

-- Substitutes ${NAME} in TPL from VARS; an unknown name is an error (a template typo fails the build).
local function fill(tpl, vars)
  return (tpl:gsub("%${([%w_]+)}", function(k)
    local v = vars[k]
    if v == nil then error("gen_cuda.lua: template variable ${" .. k .. "} is not set", 0) end
    return tostring(v)
  end))
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
-- CUDA text shared by every file.

local PRELUDE = [==[
// Fixed-width types (NVRTC compiles without the host's headers; these are the LP64 glibc definitions, so
// nvcc, which includes them, accepts the file too).
typedef unsigned char uint8_t;
typedef signed char int8_t;
typedef unsigned short uint16_t;
typedef short int16_t;
typedef unsigned int uint32_t;
typedef int int32_t;
typedef unsigned long uint64_t;
typedef long int64_t;

// The one kernel argument: buffer addresses (base + offset), int params, float params, in contract order.
struct qmoe_args {
  uint64_t buf[8];
  int64_t p[8];
  double f[4];
};

typedef ${ACC_T} acc_t; // ${ACC_NOTE}

#define QMOE_FULL 0xffffffffu
#define QMOE_I64_MAX 0x7fffffffffffffffL
#define QMOE_NEG_INF (-(acc_t)__int_as_float(0x7f800000))
__device__ __forceinline__ float qmoe_warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(QMOE_FULL, v, o);
  return v;
}
__device__ __forceinline__ double qmoe_warp_sum(double v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(QMOE_FULL, v, o);
  return v;
}
__device__ __forceinline__ float qmoe_exp(float v) { return expf(v); }
__device__ __forceinline__ double qmoe_exp(double v) { return exp(v); }
__device__ __forceinline__ float qmoe_sqrt(float v) { return sqrtf(v); }
__device__ __forceinline__ double qmoe_sqrt(double v) { return sqrt(v); }
// acc + w·x with the product formed in acc_t (exact in double: two f32 factors).
__device__ __forceinline__ float qmoe_fma(float w, float x, float acc) { return fmaf(w, x, acc); }
__device__ __forceinline__ double qmoe_fma(float w, float x, double acc) { return fma((double)w, (double)x, acc); }

// 16-byte global -> shared copies that bypass registers (cp.async, sm_80+), and the wait for this thread's;
// f16 bits -> f32 (exact). tests/cuda-emu supplies host versions of these three (QMOE_HOST_EMU); the copies are
// the only inline PTX in the kernels.
#ifndef QMOE_HOST_EMU
// Exact and branch-free, without inline asm (which would stop the compiler from sharing a block's scale
// reads between elements): the f16 bits moved into an f32's place, scaled by 2^112 (exact for normal and
// subnormal halves: no flush-to-zero here), inf/NaN and the sign patched in by bits.
__device__ __forceinline__ float qmoe_cu_f16(uint32_t h) {
  const uint32_t u = h & 0x7fffu;
  float f = __fmul_rn(__uint_as_float(u << 13), 0x1p112f);
  f = u >= 0x7c00u ? __uint_as_float((u << 13) | 0x7f800000u) : f;
  return __uint_as_float(__float_as_uint(f) | ((h & 0x8000u) << 16));
}
__device__ __forceinline__ void qmoe_cp_async16(uint4 *smem, const uint4 *gmem) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"((uint32_t)__cvta_generic_to_shared(smem)), "l"(gmem)
               : "memory");
}
__device__ __forceinline__ void qmoe_cp_async_wait_all() {
  asm volatile("cp.async.commit_group;\ncp.async.wait_group 0;\n" ::: "memory");
}
#endif

// `c ? a : b` of the decode expressions with both arms evaluated (an arm not taken may index outside its field,
// as q4_k's scales[j - 4] for j < 4 does; its read stays within the 64-byte pads around each staged row, see
// STAGE_PAD): straight-line code, so the decode of a lane's elements shares its common subexpressions.
__device__ __forceinline__ int qmoe_sel(bool c, int a, int b) { return c ? a : b; }
__device__ __forceinline__ float qmoe_sel(bool c, float a, float b) { return c ? a : b; }

// Sum over the block in a fixed order (warp trees, then warps 0..n-1): deterministic. SH holds 32 acc_t.
__device__ __forceinline__ acc_t qmoe_block_sum(acc_t v, acc_t *sh) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
  v = qmoe_warp_sum(v);
  if (lane == 0) sh[warp] = v;
  __syncthreads();
  if (threadIdx.x == 0) {
    acc_t t = 0;
    for (int w = 0; w < nw; w++) t += sh[w];
    sh[0] = t;
  }
  __syncthreads();
  const acc_t r = sh[0];
  __syncthreads();
  return r;
}
]==]

-- Quantized rows: staging into shared memory with 16-byte loads, and the warp's dot products.
local QROWS = [==[
// ---- ${QNAME} rows: ${BE} elements in ${BB} bytes per block ----
#define QB_ELEMS ${BE}
#define QB_BYTES ${BB}
#define CH_BLOCKS ${CH}                             // blocks of one row staged per chunk
#define STAGE_DATA ((CH_BLOCKS * QB_BYTES + 15) / 16 + 1) // 16-byte vectors covering a chunk at any alignment
#define STAGE_PAD 4                                  // 64 bytes before and after each row's chunk, so the
                                                     // arms of a decode's ?: that are not taken read in bounds
#define STAGE_VECS (STAGE_PAD + STAGE_DATA + STAGE_PAD) // one row's slice of the warp's buffer
#define STAGE_U ((STAGE_DATA + 31) / 32)             // vectors per lane
#define UNROLL ${UNROLL}                             // elements per lane per step (32·UNROLL per warp)

// Copies blocks [b0, b0+nb) of R rows into the warp's shared buffer SH (R slices of STAGE_VECS) with coalesced
// 16-byte asynchronous copies (cp.async: global -> shared without registers), all in flight before the one
// wait. The aligned span may start up to 15 bytes before a row chunk and end up to 15 bytes after it;
// buffers are 256-byte aligned with sizes rounded up to 256 bytes (backend_cuda.c), so the span never leaves
// the allocation. OFF[r] is where row r's bytes start in its slice of SH.
template <int R>
static __device__ __forceinline__ void qmoe_stage_rows(const uint8_t *const *rows, int64_t b0, int nb, uint4 *sh,
                                                       int lane, int *off) {
#pragma unroll
  for (int r = 0; r < R; r++) {
    const uint64_t p = (uint64_t)(rows[r] + b0 * QB_BYTES);
    const uint64_t a0 = p & ~(uint64_t)15;
    off[r] = (int)(p - a0);
    const int n16 = (off[r] + nb * QB_BYTES + 15) >> 4;
    const uint4 *src = (const uint4 *)a0;
    uint4 *dst = sh + r * STAGE_VECS + STAGE_PAD;
#pragma unroll
    for (int u = 0; u < STAGE_U; u++) {
      const int j = lane + 32 * u;
      if (j < n16) qmoe_cp_async16(dst + j, src + j);
    }
  }
  qmoe_cp_async_wait_all();
  __syncwarp();
}

// acc[r] += Σ decode(row r)[e] · x[e] over the NE elements of one staged chunk, 256 per step (see the generator
// for which elements a lane takes). G: the last step may be partial (only where NE need not be a multiple of
// 256, i.e. rows that end inside a step).
template <int R, bool G>
static __device__ __forceinline__ void qmoe_dot_chunk(const uint4 *sh, const int *off, const float *xc, int ne,
                                                      int lane, acc_t *acc) {
  for (int e0 = 0; e0 < ne; e0 += 32 * UNROLL) {
    // the lane's x and block, addressed once per step
    const float *xl = xc + e0 + ${XLANE};
    const uint8_t *bl[R];
#pragma unroll
    for (int r = 0; r < R; r++) bl[r] = (const uint8_t *)(sh + r * STAGE_VECS + STAGE_PAD) + off[r] + ${STEPBLK} * QB_BYTES;
#pragma unroll
    for (int t = 0; t < UNROLL; t++) {
      ${E_DECL}
      if (G && ${EXPR} >= ne) continue;
      const float xv = __ldg(xl + ${XT});
#pragma unroll
      for (int r = 0; r < R; r++) acc[r] = qmoe_fma(${DECODE}(bl[r] + ${TBLK} * QB_BYTES, ${IDX}), xv, acc[r]);
    }
  }
}

// acc[r] += Σ_e decode(row r)[e] · x[e] over the NBLOCKS blocks of R rows (per-lane partial sums; the caller
// reduces across the warp). Weights are decoded from shared memory by the contract's decode function.
template <int R>
static __device__ __forceinline__ void qmoe_row_dots(const uint8_t *const *rows, const float *x, int64_t nblocks,
                                                     uint4 *sh, int lane, acc_t *acc) {
  for (int64_t b0 = 0; b0 < nblocks; b0 += CH_BLOCKS) {
    const int nb = (int)(nblocks - b0 < CH_BLOCKS ? nblocks - b0 : CH_BLOCKS);
    int off[R];
    qmoe_stage_rows<R>(rows, b0, nb, sh, lane, off);
    const float *xc = x + b0 * QB_ELEMS;
    const int ne = nb * QB_ELEMS;
    if (${MAY_BE_PARTIAL} && ne % (32 * UNROLL)) qmoe_dot_chunk<R, true>(sh, off, xc, ne, lane, acc);
    else qmoe_dot_chunk<R, false>(sh, off, xc, ne, lane, acc);
    __syncwarp(); // the next chunk overwrites the buffer
  }
}
]==]

-- ---------------------------------------------------------------------------------------------------
-- Kernel bodies, one per stage. Each gets the binding of the contract's names (${BIND}) first.

local KERNELS = {}

KERNELS.matvec = { qtype = true, threads = WARPS * 32, rows_per_block = WARPS * 2, body = [==[
// y = W·x: each warp computes 2 rows (x is loaded once for both), ${WARPS} warps per block.
extern "C" __global__ void __launch_bounds__(${THREADS}, ${MIN_BLOCKS}) ${ENTRY}(const qmoe_args a) {
${BIND}
  __shared__ uint4 sh[${WARPS}][2 * STAGE_VECS];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t r0 = ((int64_t)blockIdx.x * ${WARPS} + warp) * 2;
  if (r0 >= rows) return;
  const int64_t row_bytes = cols / QB_ELEMS * QB_BYTES;
  const int64_t r1 = r0 + 1 < rows ? r0 + 1 : r0;
  const uint8_t *rp[2] = { W + r0 * row_bytes, W + r1 * row_bytes };
  acc_t acc[2] = { 0, 0 };
  qmoe_row_dots<2>(rp, x, cols / QB_ELEMS, sh[warp], lane, acc);
  const acc_t s0 = qmoe_warp_sum(acc[0]), s1 = qmoe_warp_sum(acc[1]);
  if (lane == 0) {
    y[r0] = (float)s0;
    if (r0 + 1 < rows) y[r0 + 1] = (float)s1;
  }
}
]==] }

KERNELS.moe_gate_up_swiglu = { qtype = true, threads = WARPS * 32, rows_per_block = WARPS, body = [==[
// h[k][f] = silu(Wg[ids[k]]·x)[f] · (Wu[ids[k]]·x)[f] for all K chosen experts in one launch: grid.y = K, the
// expert id is read on the device. Each warp computes gate row f and up row f together (x loaded once);
// SwiGLU is evaluated in acc_t. An id outside [0, E) yields NaN in its outputs (never a wrong expert).
extern "C" __global__ void __launch_bounds__(${THREADS}, ${MIN_BLOCKS}) ${ENTRY}(const qmoe_args a) {
${BIND}
  __shared__ uint4 sh[${WARPS}][2 * STAGE_VECS];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t f = (int64_t)blockIdx.x * ${WARPS} + warp, k = blockIdx.y;
  if (f >= F || k >= K) return;
  const int e = ids[k];
  if (e < 0 || e >= E) {
    if (lane == 0) h[k * F + f] = __int_as_float(0x7fc00000);
    return;
  }
  const int64_t row_bytes = H / QB_ELEMS * QB_BYTES;
  const int64_t at = ((int64_t)e * F + f) * row_bytes;
  const uint8_t *rp[2] = { Wg + at, Wu + at };
  acc_t acc[2] = { 0, 0 };
  qmoe_row_dots<2>(rp, x, H / QB_ELEMS, sh[warp], lane, acc);
  const acc_t g = qmoe_warp_sum(acc[0]), u = qmoe_warp_sum(acc[1]);
  if (lane == 0) {
    const acc_t silu = g / ((acc_t)1 + qmoe_exp(-g));
    h[k * F + f] = (float)(silu * u);
  }
}
]==] }

KERNELS.moe_down = { qtype = true, threads = WARPS * 32, rows_per_block = 2, max_k = 64, body = [==[
// y[r] = Σ_k w[k] · (Wd[ids[k]]·h[k])[r]: each block computes 2 output rows; its warps take the experts
// k = warp, warp + ${WARPS}, ... and leave each dot product in shared memory; then one thread per row sums
// over k in order 0..K-1 in acc_t. No atomics: the result does not depend on scheduling. K <= ${MAX_K}.
extern "C" __global__ void __launch_bounds__(${THREADS}, ${MIN_BLOCKS}) ${ENTRY}(const qmoe_args a) {
${BIND}
  __shared__ uint4 sh[${WARPS}][2 * STAGE_VECS];
  __shared__ acc_t part[${MAX_K}][2];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t r0 = (int64_t)blockIdx.x * 2;
  const int64_t r1 = r0 + 1 < H ? r0 + 1 : r0;
  const int64_t row_bytes = F / QB_ELEMS * QB_BYTES;
  for (int k = warp; k < K; k += ${WARPS}) {
    const int e = ids[k];
    if (e < 0 || e >= E) {
      if (lane == 0) part[k][0] = part[k][1] = (acc_t)__int_as_float(0x7fc00000);
      continue;
    }
    const uint8_t *base = Wd + (int64_t)e * H * row_bytes;
    const uint8_t *rp[2] = { base + r0 * row_bytes, base + r1 * row_bytes };
    acc_t acc[2] = { 0, 0 };
    qmoe_row_dots<2>(rp, h + (int64_t)k * F, F / QB_ELEMS, sh[warp], lane, acc);
    const acc_t s0 = qmoe_warp_sum(acc[0]), s1 = qmoe_warp_sum(acc[1]);
    if (lane == 0) {
      part[k][0] = s0;
      part[k][1] = s1;
    }
  }
  __syncthreads();
  if (threadIdx.x < 2 && r0 + threadIdx.x < H) {
    acc_t s = 0;
    for (int k = 0; k < K; k++) s += (acc_t)w[k] * part[k][threadIdx.x];
    y[r0 + threadIdx.x] = (float)s;
  }
}
]==] }

KERNELS.router_topk = { acc = true, threads = 256, rows_per_block = 8, min_blocks = 1, max_e = 4096, max_k = 64, body = [==[
// Router: logits = Wr·x (one warp per expert, 8 per block, many blocks); the first warp of the last block to
// finish (a counter in device memory, self-resetting via atomicInc) runs softmax over E and top-K by logit
// (ties: the lower index), then w = p / Σ p over the chosen, all in acc_t. E <= ${MAX_E}, K <= ${MAX_K}.
__device__ acc_t qmoe_router_logits[${MAX_E}];
__device__ unsigned int qmoe_router_done;

extern "C" __global__ void __launch_bounds__(${THREADS}, ${MIN_BLOCKS}) ${ENTRY}(const qmoe_args a) {
${BIND}
  __shared__ acc_t prob[${MAX_E}];
  __shared__ int sel[${MAX_K}];
  __shared__ unsigned char taken[${MAX_E}];
  __shared__ int last;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t ex = (int64_t)blockIdx.x * 8 + warp;
  if (ex < E) {
    const float *row = Wr + ex * H;
    acc_t s = 0;
    if ((((uint64_t)row | (uint64_t)x) & 15) == 0 && (H & 3) == 0) {
      const float4 *r4 = (const float4 *)row, *x4 = (const float4 *)x;
      for (int64_t i = lane; i < H / 4; i += 32) {
        const float4 wv = __ldg(r4 + i), xv = __ldg(x4 + i);
        s = qmoe_fma(wv.x, xv.x, s);
        s = qmoe_fma(wv.y, xv.y, s);
        s = qmoe_fma(wv.z, xv.z, s);
        s = qmoe_fma(wv.w, xv.w, s);
      }
    } else {
      for (int64_t i = lane; i < H; i += 32) s = qmoe_fma(__ldg(row + i), __ldg(x + i), s);
    }
    s = qmoe_warp_sum(s);
    if (lane == 0) qmoe_router_logits[ex] = s;
  }
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) last = atomicInc(&qmoe_router_done, gridDim.x - 1) == gridDim.x - 1;
  __syncthreads();
  if (!last || warp != 0) return;
  __threadfence();
  // One warp finishes (no block barriers): lane i holds logits i, i + 32, ... Softmax sum over all E, then top-K
  // by logit (ties: the lower index), then w = p / Σ p over the chosen, all in acc_t.
  acc_t mx = QMOE_NEG_INF;
  for (int i = lane; i < E; i += 32) {
    const acc_t l = __ldcg(qmoe_router_logits + i);
    prob[i] = l;
    taken[i] = 0;
    mx = l > mx ? l : mx;
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const acc_t other = __shfl_xor_sync(QMOE_FULL, mx, o);
    mx = other > mx ? other : mx;
  }
  acc_t s = 0;
  for (int i = lane; i < E; i += 32) s += qmoe_exp(prob[i] - mx);
  s = qmoe_warp_sum(s);
  __syncwarp();
  for (int k = 0; k < K; k++) {
    acc_t bv = QMOE_NEG_INF;
    int bi = -1;
    for (int i = lane; i < E; i += 32) {
      const acc_t v = prob[i];
      if (!taken[i] && (bi < 0 || v > bv)) { bv = v; bi = i; }
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) { // every lane ends with the same winner
      const acc_t ov = __shfl_xor_sync(QMOE_FULL, bv, o);
      const int oi = __shfl_xor_sync(QMOE_FULL, bi, o);
      if (oi >= 0 && (bi < 0 || ov > bv || (ov == bv && oi < bi))) { bv = ov; bi = oi; }
    }
    if (lane == 0) {
      sel[k] = bi;
      taken[bi] = 1;
    }
    __syncwarp();
  }
  if (lane == 0) {
    acc_t chosen = 0;
    for (int k = 0; k < K; k++) chosen += qmoe_exp(prob[sel[k]] - mx) / s;
    for (int k = 0; k < K; k++) {
      ids[k] = sel[k];
      w[k] = (float)((qmoe_exp(prob[sel[k]] - mx) / s) / chosen);
    }
  }
}
]==] }

KERNELS.rmsnorm = { acc = true, threads = 256, rows_per_block = 1, body = [==[
// y = x · (1/sqrt(mean(x²) + eps)) · w in one block: sum of squares in acc_t, fixed-order reduction.
extern "C" __global__ void __launch_bounds__(${THREADS}, ${MIN_BLOCKS}) ${ENTRY}(const qmoe_args a) {
${BIND}
  __shared__ acc_t red[32];
  acc_t ss = 0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    const acc_t v = (acc_t)x[i];
    ss += v * v;
  }
  ss = qmoe_block_sum(ss, red);
  const acc_t r = (acc_t)1 / qmoe_sqrt(ss / (acc_t)n + (acc_t)eps);
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) y[i] = (float)((acc_t)x[i] * r * (acc_t)w[i]);
}
]==] }

KERNELS.qk_norm = { acc = true, threads = 128, rows_per_block = 1, body = [==[
// RMSNorm of each of nh heads of D with the shared weight w: one block per head.
extern "C" __global__ void __launch_bounds__(${THREADS}, ${MIN_BLOCKS}) ${ENTRY}(const qmoe_args a) {
${BIND}
  __shared__ acc_t red[32];
  const int64_t base = (int64_t)blockIdx.x * D;
  if (blockIdx.x >= nh) return;
  acc_t ss = 0;
  for (int64_t i = threadIdx.x; i < D; i += blockDim.x) {
    const acc_t v = (acc_t)x[base + i];
    ss += v * v;
  }
  ss = qmoe_block_sum(ss, red);
  const acc_t r = (acc_t)1 / qmoe_sqrt(ss / (acc_t)D + (acc_t)eps);
  for (int64_t i = threadIdx.x; i < D; i += blockDim.x) y[base + i] = (float)((acc_t)x[base + i] * r * (acc_t)w[i]);
}
]==] }

KERNELS.rope_neox = { acc = true, threads = 64, rows_per_block = 1, body = [==[
// NEOX RoPE, one block per head: dims i and i + D/2 rotate by a = pos·theta^(−2i/D). The angle and its cos/sin
// are computed in double in every variant (an f32 angle at large pos is an error, not a precision choice);
// the rotation is done in acc_t. Each thread owns its pairs, so y may be x.
extern "C" __global__ void __launch_bounds__(${THREADS}, ${MIN_BLOCKS}) ${ENTRY}(const qmoe_args a) {
${BIND}
  if (blockIdx.x >= nh) return;
  const int64_t half = D / 2, base = (int64_t)blockIdx.x * D;
  for (int64_t i = threadIdx.x; i < half; i += blockDim.x) {
    const double ang = (double)pos * pow(theta, -(double)(2 * i) / (double)D);
    const acc_t c = (acc_t)cos(ang), s = (acc_t)sin(ang);
    const acc_t x0 = (acc_t)x[base + i], x1 = (acc_t)x[base + i + half];
    const acc_t y0 = x0 * c - x1 * s, y1 = x0 * s + x1 * c;
    y[base + i] = (float)y0;
    y[base + i + half] = (float)y1;
  }
}
]==] }

KERNELS.kv_store = { threads = 256, rows_per_block = 0, body = [==[
// Kc[pos], Vc[pos] (rows of nkv·D) = k, v.
extern "C" __global__ void __launch_bounds__(${THREADS}, ${MIN_BLOCKS}) ${ENTRY}(const qmoe_args a) {
${BIND}
  const int64_t n = nkv * D;
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) {
    Kc[pos * n + i] = k[i];
    Vc[pos * n + i] = v[i];
  }
}
]==] }

KERNELS.attention = { acc = true, threads = 128, rows_per_block = 1, min_blocks = 2, max_d = 256, max_splits = 64,
                      split_positions = 64, body = [==[
// Decode attention with GQA: query head h reads kv head h / (nh / nkv). The positions are cut into S = gridDim.y
// splits (backend: about 64 positions each, S <= ${MAX_SPLITS}); block (h, s) runs an online softmax over its
// split — each warp takes 4 consecutive positions at a time (their K rows loaded together, 4 interleaved warp
// reductions, then their V rows), running max, sum and weighted V in acc_t — and merges its 4 warps in order.
// With S > 1 each block leaves (max, sum, V[D]) in the backend's workspace (args.buf[7]); the last block of a
// head to finish (a self-resetting per-head counter after the partials) merges the S partials in split order,
// so the result does not depend on scheduling. D <= ${MAX_D}.
#define AT_U ${AT_U}
#define AT_PB 4
extern "C" __global__ void __launch_bounds__(${THREADS}, ${MIN_BLOCKS}) ${ENTRY}(const qmoe_args a) {
${BIND}
  __shared__ acc_t sm_m[${WARPS}], sm_l[${WARPS}];
  __shared__ acc_t sm_o[${WARPS}][${MAX_D}];
  __shared__ int last;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t hq = blockIdx.x, S = gridDim.y, sp = blockIdx.y;
  if (hq >= nh) return;
  const int64_t g = hq / (nh / nkv);
  const int64_t per = (n_kv + S - 1) / S, lo = sp * per, hi = lo + per < n_kv ? lo + per : n_kv;
  const acc_t scale = (acc_t)1 / qmoe_sqrt((acc_t)D);
  acc_t qv[AT_U], o[AT_U];
#pragma unroll
  for (int u = 0; u < AT_U; u++) {
    const int d = lane + 32 * u;
    qv[u] = d < D ? (acc_t)q[hq * D + d] : (acc_t)0;
    o[u] = 0;
  }
  acc_t m = QMOE_NEG_INF, l = 0;
  for (int64_t t0 = lo + (int64_t)warp * AT_PB; t0 < hi; t0 += ${WARPS} * AT_PB) {
    acc_t s[AT_PB];
#pragma unroll
    for (int j = 0; j < AT_PB; j++) {
      const int64_t t = t0 + j < hi ? t0 + j : t0; /* a position past the split repeats t0; masked below */
      const float *kr = Kc + (t * nkv + g) * D;
      acc_t dot = 0;
#pragma unroll
      for (int u = 0; u < AT_U; u++) {
        const int d = lane + 32 * u;
        if (d < D) dot += qv[u] * (acc_t)__ldg(kr + d);
      }
      s[j] = dot;
    }
#pragma unroll
    for (int j = 0; j < AT_PB; j++) s[j] = qmoe_warp_sum(s[j]) * scale;
    acc_t mn = m;
#pragma unroll
    for (int j = 0; j < AT_PB; j++)
      if (t0 + j < hi && s[j] > mn) mn = s[j];
    const acc_t corr = qmoe_exp(m - mn);
    acc_t pe[AT_PB];
    l *= corr;
#pragma unroll
    for (int j = 0; j < AT_PB; j++) {
      pe[j] = t0 + j < hi ? qmoe_exp(s[j] - mn) : (acc_t)0;
      l += pe[j];
    }
#pragma unroll
    for (int u = 0; u < AT_U; u++) o[u] *= corr;
#pragma unroll
    for (int j = 0; j < AT_PB; j++) {
      const int64_t t = t0 + j < hi ? t0 + j : t0;
      const float *vr = Vc + (t * nkv + g) * D;
#pragma unroll
      for (int u = 0; u < AT_U; u++) {
        const int d = lane + 32 * u;
        if (d < D) o[u] += pe[j] * (acc_t)__ldg(vr + d);
      }
    }
    m = mn;
  }
  if (lane == 0) { sm_m[warp] = m; sm_l[warp] = l; }
#pragma unroll
  for (int u = 0; u < AT_U; u++) {
    const int d = lane + 32 * u;
    if (d < D) sm_o[warp][d] = o[u];
  }
  __syncthreads();
  acc_t M = sm_m[0];
  for (int w = 1; w < ${WARPS}; w++) M = sm_m[w] > M ? sm_m[w] : M;
  acc_t L = 0, f[${WARPS}];
  for (int w = 0; w < ${WARPS}; w++) {
    f[w] = sm_m[w] == QMOE_NEG_INF ? (acc_t)0 : qmoe_exp(sm_m[w] - M);
    L += sm_l[w] * f[w];
  }
  if (S == 1) {
    for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
      acc_t acc = 0;
      for (int w = 0; w < ${WARPS}; w++) acc += sm_o[w][d] * f[w];
      o_out[hq * D + d] = (float)(acc / L);
    }
    return;
  }
  /* workspace: unsigned counters[nh] (at the start whatever acc_t is, so every variant finds them reset),
   * then from byte (nh·4 rounded up to 256) acc_t part[nh][S][D + 2]: max, sum, V */
  unsigned *done = (unsigned *)a.buf[7];
  acc_t *ws = (acc_t *)(a.buf[7] + (uint64_t)((nh * 4 + 255) / 256 * 256));
  acc_t *mine = ws + (hq * S + sp) * (D + 2);
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
    acc_t acc = 0;
    for (int w = 0; w < ${WARPS}; w++) acc += sm_o[w][d] * f[w];
    mine[2 + d] = acc;
  }
  if (threadIdx.x == 0) { mine[0] = M; mine[1] = L; }
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) last = atomicInc(done + hq, (unsigned)S - 1) == (unsigned)S - 1;
  __syncthreads();
  if (!last) return;
  __threadfence();
  const acc_t *part = ws + hq * S * (D + 2);
  acc_t MM = QMOE_NEG_INF;
  for (int64_t k = 0; k < S; k++) {
    const acc_t mk = __ldcg(part + k * (D + 2));
    MM = mk > MM ? mk : MM;
  }
  acc_t LL = 0;
  for (int64_t k = 0; k < S; k++) {
    const acc_t mk = __ldcg(part + k * (D + 2));
    if (mk != QMOE_NEG_INF) LL += __ldcg(part + k * (D + 2) + 1) * qmoe_exp(mk - MM);
  }
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
    acc_t acc = 0;
    for (int64_t k = 0; k < S; k++) {
      const acc_t mk = __ldcg(part + k * (D + 2));
      if (mk != QMOE_NEG_INF) acc += __ldcg(part + k * (D + 2) + 2 + d) * qmoe_exp(mk - MM);
    }
    o_out[hq * D + d] = (float)(acc / LL);
  }
}
]==] }

KERNELS.add = { threads = 256, rows_per_block = 0, body = [==[
// y = a + b (y may be a).
extern "C" __global__ void __launch_bounds__(${THREADS}, ${MIN_BLOCKS}) ${ENTRY}(const qmoe_args a_) {
${BIND}
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
    y[i] = a[i] + b[i];
}
]==] }

KERNELS.argmax = { threads = 256, rows_per_block = 0, max_blocks = 1024, body = [==[
// Index of the largest x (ties: the lowest index; NaN is never chosen). Blocks scan contiguous slices and
// leave (value, index) in device memory; the last block to finish (self-resetting counter) merges them in
// block order.
__device__ float qmoe_argmax_val[${MAX_BLOCKS}];
__device__ int qmoe_argmax_idx[${MAX_BLOCKS}];
__device__ unsigned int qmoe_argmax_done;

static __device__ __forceinline__ void qmoe_better(float &bv, int64_t &bi, float v, int64_t i) {
  if (v > bv || (v == bv && i < bi)) { bv = v; bi = i; }
}

extern "C" __global__ void __launch_bounds__(${THREADS}, ${MIN_BLOCKS}) ${ENTRY}(const qmoe_args a) {
${BIND}
  __shared__ float sv[32];
  __shared__ int64_t si[32];
  __shared__ int last;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  const int64_t per = (n + gridDim.x - 1) / gridDim.x;
  const int64_t lo = (int64_t)blockIdx.x * per, hi = lo + per < n ? lo + per : n;
  float bv = -__int_as_float(0x7f800000);
  int64_t bi = QMOE_I64_MAX;
  for (int64_t i = lo + threadIdx.x; i < hi; i += blockDim.x) qmoe_better(bv, bi, __ldg(x + i), i);
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) qmoe_better(bv, bi, __shfl_xor_sync(QMOE_FULL, bv, o), __shfl_xor_sync(QMOE_FULL, bi, o));
  if (lane == 0) { sv[warp] = bv; si[warp] = bi; }
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < nw; w++) qmoe_better(bv, bi, sv[w], si[w]);
    qmoe_argmax_val[blockIdx.x] = bv;
    qmoe_argmax_idx[blockIdx.x] = (int)(bi == QMOE_I64_MAX ? -1 : bi);
    __threadfence();
    last = atomicInc(&qmoe_argmax_done, gridDim.x - 1) == gridDim.x - 1;
  }
  __syncthreads();
  if (!last || threadIdx.x != 0) return;
  __threadfence();
  float v = -__int_as_float(0x7f800000);
  int64_t best = QMOE_I64_MAX;
  for (unsigned b = 0; b < gridDim.x; b++) {
    const int i = __ldcg(qmoe_argmax_idx + b);
    if (i >= 0) qmoe_better(v, best, __ldcg(qmoe_argmax_val + b), i);
  }
  idx[0] = best == QMOE_I64_MAX ? 0 : (int)best;
}
]==] }

M.KERNELS = KERNELS

-- ---------------------------------------------------------------------------------------------------
-- Launch geometry: per stage, C expressions over the contract's int params and the variant's constants
-- (RPB: rows_per_block, THREADS, SM_COUNT: the device's multiprocessors, ACC_BYTES, and the kernel's MAX_*),
-- emitted into generated/c/cuda_launch.c so runtime/backend_cuda.c launches any stage by table lookup.
--   limits:    { param, bound }: the call is QMOE_EUNSUPPORTED when param > bound (fixed-size arrays)
--   let:       { name, expr }: local values, in order
--   grid:      { x, y }: blocks
--   workspace: bytes of zeroed device memory passed as args.buf[7] (0 or absent: none)
-- qmoe_cdiv(a, b) and qmoe_min(a, b) are available.
local LAUNCH = {
  matvec = { grid = { "qmoe_cdiv(rows, RPB)", "1" } },
  moe_gate_up_swiglu = { grid = { "qmoe_cdiv(F, RPB)", "K" } },
  moe_down = { limits = { { "K", "MAX_K" } }, grid = { "qmoe_cdiv(H, RPB)", "1" } },
  router_topk = { limits = { { "E", "MAX_E" }, { "K", "MAX_K" } }, grid = { "qmoe_cdiv(E, RPB)", "1" } },
  rmsnorm = { grid = { "1", "1" } },
  qk_norm = { grid = { "nh", "1" } },
  rope_neox = { grid = { "nh", "1" } },
  kv_store = { grid = { "qmoe_cdiv(nkv * D, THREADS)", "1" } },
  -- grid (heads, splits of SPLIT_POS positions); with more than one split, per-head counters (rounded to
  -- 256 bytes) then (max, sum, V[D]) partials in f64 for each (head, split)
  attention = { limits = { { "D", "MAX_D" } },
                let = { { "splits", "qmoe_min(qmoe_cdiv(n_kv, SPLIT_POS), MAX_SPLITS)" } },
                grid = { "nh", "splits" },
                workspace = "splits > 1 ? (nh * 4 + 255) / 256 * 256 + nh * splits * (D + 2) * 8 : 0" },
  add = { grid = { "qmoe_min(qmoe_cdiv(n, THREADS), SM_COUNT * 16)", "1" } }, -- grid-stride loop
  argmax = { grid = { "qmoe_min(qmoe_cdiv(n, 4096), MAX_BLOCKS)", "1" } },
}
M.LAUNCH = LAUNCH

-- generated/c/cuda_launch.c: one launch function per stage and the table indexed by qmoe_stage.
local function emit_launch(recs)
  local consts_of = function(kd)
    return { MAX_K = kd.max_k, MAX_E = kd.max_e, MAX_D = kd.max_d, MAX_BLOCKS = kd.max_blocks,
             MAX_SPLITS = kd.max_splits, SPLIT_POS = kd.split_positions }
  end
  local o = { util.banner("c", SCRIPT, "contracts/stages/*.yaml"),
    "/* cuda_launch.c: the CUDA launch geometry of every stage (codegen/gen_cuda.lua's LAUNCH): grid, limits of",
    " * the kernels' fixed-size arrays and workspace, as functions of the call's params. */",
    "#include <stdint.h>", '#include "backend.h"', '#include "cuda_internal.h"', '#include "qmoe.h"', "",
    "static inline int64_t qmoe_cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }",
    "static inline int64_t qmoe_min(int64_t a, int64_t b) { return a < b ? a : b; }", "" }
  local names = {}
  for _, r in ipairs(recs) do
    local kd, L = KERNELS[r.name], LAUNCH[r.name]
    if not L then error(r.file .. ": stage '" .. r.name .. "' has no CUDA launch geometry in " .. SCRIPT .. "'s LAUNCH", 0) end
    local consts = consts_of(kd)
    local function cexpr(e)
      return (e:gsub("[%a_][%w_]*", function(n)
        if consts[n] ~= nil then return tostring(consts[n]) end
        if n == "RPB" then return "env->rows_per_block" elseif n == "THREADS" then return "env->threads"
        elseif n == "SM_COUNT" then return "env->sm_count" elseif n == "ACC_BYTES" then return "env->acc_bytes" end
        if n:match("^MAX_") or n == "SPLIT_POS" then error(SCRIPT .. ": launch of " .. r.name .. " names " .. n .. ", which its kernel does not set", 0) end
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
      o[#o + 1] = string.format("  if (%s > %s) {", lim[1], cexpr(lim[2]))
      o[#o + 1] = string.format('    qmoe_set_error("cuda backend: stage %s: %s = %%lld exceeds the CUDA kernel\'s limit of %%lld", (long long)%s, (long long)%s);',
                                r.name, lim[1], lim[1], cexpr(lim[2]))
      o[#o + 1] = "    return QMOE_EUNSUPPORTED;"
      o[#o + 1] = "  }"
    end
    for _, lt in ipairs(L.let or {}) do o[#o + 1] = string.format("  const int64_t %s = %s;", lt[1], cexpr(lt[2])) end
    o[#o + 1] = string.format("  l->grid[0] = %s;", cexpr(L.grid[1]))
    o[#o + 1] = string.format("  l->grid[1] = %s;", cexpr(L.grid[2]))
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
    local kd = KERNELS[st.name]
    if not kd then
      errs[#errs + 1] = st.file .. ": stage '" .. st.name .. "' has no CUDA kernel in codegen/gen_cuda.lua"
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
      local qs = st.by_qtype and st.qtypes or { false }
      for _, q in ipairs(qs) do
        local accs = st.by_acc and st.accs or { false }
        for _, acc in ipairs(accs) do
          if not q or not acc or has(q.accumulators, acc) then
            local s = stem(st, q or nil, acc or nil)
            out[#out + 1] = { stage = st, q = q or nil, acc = acc or nil, stem = s,
                              file = "generated/cuda/" .. s .. ".cu", entry = "qmoe_" .. s, kernel = kd }
          end
        end
      end
    end
  end
  if #errs > 0 then error(table.concat(errs, "\n"), 0) end
  return out
end

local LAUNCH_OUT = "generated/c/cuda_launch.c"

function M.plan(ctx)
  local jobs = {}
  local all = {}
  for _, st in ipairs(ctx.stages.list) do all[#all + 1] = st.__file end
  all[#all + 1] = "codegen/gen_stages.lua"
  jobs[#jobs + 1] = { outputs = { LAUNCH_OUT }, inputs = all, args = "--launch --out " .. LAUNCH_OUT, desc = LAUNCH_OUT }
  for _, v in ipairs(M.variants(ctx)) do
    local inputs = { v.stage.file }
    if v.q then inputs[#inputs + 1] = v.q.__file end
    inputs[#inputs + 1] = "codegen/gen_stages.lua"
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
local function binding(st, argname, rename)
  local lines = {}
  for i, b in ipairs(st.bufs) do
    local ty = CTYPE[b.dtype] or error(st.file .. ": buffer '" .. b.name .. "' has dtype " .. tostring(b.dtype), 0)
    local name = rename[b.name] or b.name
    if not name:match("^[%a_][%w_]*$") then error(st.file .. ": buffer name '" .. name .. "' is not a C identifier", 0) end
    local const = b.__kind == "inputs" and "const " or ""
    lines[#lines + 1] = string.format("  %s%s *const %s = (%s%s *)%s.buf[%d];", const, ty, name, const, ty, argname, i - 1)
  end
  for i, p in ipairs(st.ints) do
    lines[#lines + 1] = string.format("  const int64_t %s = %s.p[%d];", rename[p] or p, argname, i - 1)
  end
  for i, p in ipairs(st.floats) do
    lines[#lines + 1] = string.format("  const double %s = %s.f[%d];", rename[p] or p, argname, i - 1)
  end
  local used = {}
  for _, b in ipairs(st.bufs) do used[#used + 1] = "(void)" .. (rename[b.name] or b.name) end
  for _, p in ipairs(st.ints) do used[#used + 1] = "(void)" .. (rename[p] or p) end
  for _, p in ipairs(st.floats) do used[#used + 1] = "(void)" .. (rename[p] or p) end
  lines[#lines + 1] = "  " .. table.concat(used, ", ") .. "; // not every kernel reads every contract name"
  return table.concat(lines, "\n")
end

local function emit_variant(v, sources)
  local kd, st, q = v.kernel, v.stage, v.q
  local acc = v.acc or "f32"
  local vars = {
    ACC_T = acc == "f64" and "double" or "float",
    ACC_NOTE = v.acc and ("accumulator " .. v.acc) or "this stage does not vary by accumulator",
    ENTRY = v.entry, THREADS = kd.threads, WARPS = WARPS, MIN_BLOCKS = kd.min_blocks or 4,
    MAX_K = kd.max_k or 0, MAX_E = kd.max_e or 0, MAX_D = kd.max_d or 0, MAX_BLOCKS = kd.max_blocks or 0,
    MAX_SPLITS = kd.max_splits or 0,
    AT_U = kd.max_d and (kd.max_d // 32) or 0,
  }
  -- The attention output is `o` in the contract; `o` is also the natural loop name, so bind it as o_out.
  -- `add` has a buffer named `a`, which is also the kernel argument's name, so the argument is a_ there.
  local rename, argname = {}, "a"
  if st.name == "attention" then rename.o = "o_out" end
  if st.name == "add" then argname = "a_" end
  vars.BIND = binding(st, argname, rename)
  local meta = string.format("// qmoe-cuda: stage=%s qtype=%s ggml_type=%d acc=%s entry=%s block_elements=%d block_bytes=%d threads=%d rows_per_block=%d",
                             st.name, q and q.name or "-", q and q.ggml_type or -1, v.acc or "-", v.entry,
                             q and q.block_elements or 0, q and q.block_bytes or 0, kd.threads, kd.rows_per_block)
  local parts = { util.banner("cuda", SCRIPT, sources), meta, fill(PRELUDE, vars) }
  if q then
    local be, bb = q.block_elements, q.block_bytes
    local ch = math.max(1, STAGE_BYTES // bb)
    -- whole steps of 256 elements per chunk where blocks are smaller (only a row's last chunk may end mid-step)
    if be < 256 and 256 % be == 0 and ch > 256 // be then ch = ch - ch % (256 // be) end
    -- 8 elements per lane per step (256 per warp): decodes and x loads of a step are independent, so they
    -- overlap. A chunk holds whole blocks, so the step needs a bounds guard only when 256 does not divide
    -- the block (then the chunk's element count may not be a multiple of 256).
    local unroll = 8
    local guard = (be % (32 * unroll)) ~= 0
    vars.QNAME, vars.BE, vars.BB, vars.CH, vars.UNROLL = q.name, be, bb, ch, unroll
    -- Which elements a lane takes in a step of 256 (e0 a multiple of 256), and how the compiler is shown it:
    --  * blocks of 256·k (k-quants): element e0 + lane + 32·t, one block for the whole step, i = lane | 32·t,
    --    so everything that depends on i / 32 (sub-block scales, bit positions) is a constant per unrolled t,
    --    and x loads are coalesced (on the SASS: 14 (q6_k) to 21 (q5_k) instructions per element, against 19
    --    to 24 with 8 consecutive elements per lane);
    --  * smaller blocks dividing 256 (32-element formats): 8 consecutive elements per lane, all in one block,
    --    i = (offset in block) | t, so the block's scale is read and converted once per lane and step;
    --  * one-element blocks (f32, f16, bf16): 8 consecutive elements per lane.
    -- STEPBLK: the lane's block at the start of the step; TBLK: blocks further on for element t.
    if be % 256 == 0 then
      vars.STEPBLK, vars.TBLK = "(e0 / QB_ELEMS)", "0"
      vars.IDX = be == 256 and "(lane | (32 * t))" or "((e0 % QB_ELEMS) | lane | (32 * t))"
      vars.XLANE, vars.XT, vars.EXPR = "lane", "32 * t", "e0 + lane + 32 * t"
    elseif be >= 8 and 256 % be == 0 then
      vars.STEPBLK, vars.TBLK = "((e0 + UNROLL * lane) / QB_ELEMS)", "0"
      -- `| t`, not `+ t` (the same: the rest is a multiple of 8 and t < 8), so that i / 8 and above are seen
      -- not to depend on t
      vars.IDX = "(((e0 + UNROLL * lane) % QB_ELEMS) | t)"
      vars.XLANE, vars.XT, vars.EXPR = "UNROLL * lane", "t", "e0 + UNROLL * lane + t"
    elseif be == 1 then
      vars.STEPBLK, vars.TBLK, vars.IDX = "(e0 + UNROLL * lane)", "t", "0"
      vars.XLANE, vars.XT, vars.EXPR = "UNROLL * lane", "t", "e0 + UNROLL * lane + t"
    else
      vars.STEPBLK, vars.TBLK, vars.IDX = "0", "(e / QB_ELEMS)", "(e % QB_ELEMS)"
      vars.XLANE, vars.XT, vars.EXPR = "UNROLL * lane", "t", "e0 + UNROLL * lane + t"
    end
    vars.E_DECL = (vars.TBLK:find("e") or vars.IDX:find("%f[%w]e%f[^%w]")) and
                  ("const int e = " .. vars.EXPR .. ";") or ("// element " .. vars.EXPR)
    vars.MAY_BE_PARTIAL = guard and "true" or "false"
    vars.DECODE = "qmoe_" .. q.name .. "_decode"
    parts[#parts + 1] = "// ---- decoding, from " .. q.__file .. " via codegen/lib/expr.lua (CUDA dialect, f16 by cvt.f32.f16) ----"
    -- expr's helpers are a fixed set, not all used by every format: no "declared but never referenced" noise.
    parts[#parts + 1] = "#pragma nv_diag_suppress 177"
    parts[#parts + 1] = expr.prelude(DIALECT)
    parts[#parts + 1] = expr.emit(q, DIALECT)
    parts[#parts + 1] = "#pragma nv_diag_default 177"
    parts[#parts + 1] = fill(QROWS, vars)
  end
  parts[#parts + 1] = fill(kd.body, vars)
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
