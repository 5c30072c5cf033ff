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
  int64_t tokens; // the call's tokens (>= 1): generic kernels take token blockIdx.z, own_tokens kernels all
  uint64_t early; // bit i: no kernel that may run at the same time writes buffer i (read it before the grid wait)
};

typedef ${ACC_T} acc_t; // ${ACC_NOTE}
#define QMOE_Q8 ${Q8} // 1: the q8 variant (x rounded to 8 bits per 32 elements first, docs/q8.md)

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
// a·b + c with one rounding, in acc_t (explicit, so two kernels summing the same terms agree bit for bit).
__device__ __forceinline__ float qmoe_fma3(float a, float b, float c) { return fmaf(a, b, c); }
__device__ __forceinline__ double qmoe_fma3(double a, double b, double c) { return fma(a, b, c); }
// a·b and a + b rounded each, never contracted into an FMA: where two kernels must agree bit for bit (rope_neox and
// the fused qk_norm_rope), the compiler's contraction choices may not differ between them.
__device__ __forceinline__ float qmoe_mul_rn(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ double qmoe_mul_rn(double a, double b) { return __dmul_rn(a, b); }
__device__ __forceinline__ float qmoe_add_rn(float a, float b) { return __fadd_rn(a, b); }
__device__ __forceinline__ double qmoe_add_rn(double a, double b) { return __dadd_rn(a, b); }

// f16 bits -> f32 (exact), the wait of a programmatic launch, and 16-byte global -> shared copies that bypass
// registers (cp.async, sm_80+) with the wait for this thread's: the kernels' only inline PTX. tests/cuda-emu
// supplies host versions of these (QMOE_HOST_EMU).
#ifndef QMOE_HOST_EMU
// Exact (every f16, subnormals included, is an f32): one cvt. The asm is not volatile and touches no memory, so
// the compiler still shares a block's scale reads and conversions between the elements of a run.
// QMOE_F16_BITS: the same by bits, without inline asm (the f16 bits moved into an f32's place, scaled by
// 2^112, inf/NaN and the sign patched in), for comparison.
__device__ __forceinline__ float qmoe_cu_f16(uint32_t h) {
#ifndef QMOE_F16_BITS
  float f;
  asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"((unsigned short)h));
  return f;
#else
  const uint32_t u = h & 0x7fffu;
  float f = __fmul_rn(__uint_as_float(u << 13), 0x1p112f);
  f = u >= 0x7c00u ? __uint_as_float((u << 13) | 0x7f800000u) : f;
  return __uint_as_float(__float_as_uint(f) | ((h & 0x8000u) << 16));
#endif
}
// Where a graph launches this kernel programmatically (QMOE_CUDA_PDL, sm_90+), wait here until the kernel before
// it has completed and its writes are visible, then let the next kernel launch (once every block of this one has
// passed here): its blocks start, and do what they may before their own wait, while this one runs. Otherwise
// (a plain launch or edge) both return at once.
__device__ __forceinline__ void qmoe_grid_wait() {
#if __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}
// Asks for the bytes [BEGIN, END) to be brought into L2 (sm_90+; a hint, nothing waits). The span is rounded out
// to 16 bytes, as the bulk prefetch needs: buffers are 256-byte aligned and sized (backend_cuda.c), so it stays
// inside the allocation.
__device__ __forceinline__ void qmoe_prefetch_l2(const uint8_t *begin, const uint8_t *end) {
#if __CUDA_ARCH__ >= 900
  const uint64_t p0 = (uint64_t)begin & ~(uint64_t)15, p1 = ((uint64_t)end + 15) & ~(uint64_t)15;
  asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;\n" ::"l"(p0), "r"((uint32_t)(p1 - p0)) : "memory");
#endif
}
__device__ __forceinline__ void qmoe_cp_async16(uint4 *smem, const uint4 *gmem) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"((uint32_t)__cvta_generic_to_shared(smem)), "l"(gmem)
               : "memory");
}
__device__ __forceinline__ void qmoe_cp_async_wait_all() {
  asm volatile("cp.async.commit_group;\ncp.async.wait_group 0;\n" ::: "memory");
}
// The copies issued since the last commit become one group; qmoe_cp_async_wait_pending(N) waits until at most the
// N groups committed last are still in flight (N from 0 to 3; a constant where the caller's loop is unrolled).
__device__ __forceinline__ void qmoe_cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
__device__ __forceinline__ void qmoe_cp_async_wait_pending(int n) {
  if (n <= 0) asm volatile("cp.async.wait_group 0;\n" ::: "memory");
  else if (n == 1) asm volatile("cp.async.wait_group 1;\n" ::: "memory");
  else if (n == 2) asm volatile("cp.async.wait_group 2;\n" ::: "memory");
  else asm volatile("cp.async.wait_group 3;\n" ::: "memory");
}
// c + Σ of the 4 byte products of A (unsigned bytes) and B (signed bytes): one dp4a (sm_61+).
__device__ __forceinline__ int qmoe_dp4a_us(uint32_t a, uint32_t b, int c) {
  int d;
  asm("dp4a.u32.s32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
  return d;
}
// c + Σ of the 4 byte products of A and B (both signed bytes).
__device__ __forceinline__ int qmoe_dp4a_ss(uint32_t a, uint32_t b, int c) {
  int d;
  asm("dp4a.s32.s32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
  return d;
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
