// qmoe-kernel: threads=256 rows_per_block=0 max_blocks=1024
// qmoe-grid: qmoe_min(qmoe_cdiv(n, 1024), MAX_BLOCKS), 1
// Index of the largest x (ties: the lowest index; NaN is never chosen). Blocks scan contiguous slices and
// leave (value, index) in device memory; the last block to finish (self-resetting counter) merges them in
// block order.
__device__ float qmoe_argmax_val[${MAX_BLOCKS}];
__device__ int qmoe_argmax_idx[${MAX_BLOCKS}];
__device__ unsigned int qmoe_argmax_done;

static __device__ __forceinline__ void qmoe_better(float &bv, int64_t &bi, float v, int64_t i) {
  if (v > bv || (v == bv && i < bi)) { bv = v; bi = i; }
}

// the block's best (bv, bi) in thread 0 (warp trees, then the warps)
static __device__ __forceinline__ void qmoe_argmax_block(float &bv, int64_t &bi, float *sv, int64_t *si) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) qmoe_better(bv, bi, __shfl_xor_sync(QMOE_FULL, bv, o), __shfl_xor_sync(QMOE_FULL, bi, o));
  if (lane == 0) { sv[warp] = bv; si[warp] = bi; }
  __syncthreads();
  if (threadIdx.x == 0)
    for (int w = 1; w < nw; w++) qmoe_better(bv, bi, sv[w], si[w]);
  __syncthreads();
}

extern "C" __global__ void __launch_bounds__(${THREADS}, ${MIN_BLOCKS}) ${ENTRY}(const qmoe_args a) {
${BIND}
  __shared__ float sv[32];
  __shared__ int64_t si[32];
  __shared__ int last;
  const int64_t per = (n + gridDim.x - 1) / gridDim.x;
  const int64_t lo = (int64_t)blockIdx.x * per, hi = lo + per < n ? lo + per : n;
  float bv = -__int_as_float(0x7f800000);
  int64_t bi = QMOE_I64_MAX;
#pragma unroll 4
  for (int64_t i = lo + threadIdx.x; i < hi; i += blockDim.x) qmoe_better(bv, bi, __ldg(x + i), i);
  qmoe_argmax_block(bv, bi, sv, si);
  if (threadIdx.x == 0) {
    qmoe_argmax_val[blockIdx.x] = bv;
    qmoe_argmax_idx[blockIdx.x] = (int)(bi == QMOE_I64_MAX ? -1 : bi);
    __threadfence();
    last = atomicInc(&qmoe_argmax_done, gridDim.x - 1) == gridDim.x - 1;
  }
  __syncthreads();
  if (!last) return;
  __threadfence();
  // the whole block reads the partials at once (the order of merging does not matter: the better of two is a
  // total order, and NaN is never chosen)
  bv = -__int_as_float(0x7f800000);
  bi = QMOE_I64_MAX;
  for (unsigned b = threadIdx.x; b < gridDim.x; b += blockDim.x) {
    const int i = __ldcg(qmoe_argmax_idx + b);
    const float v = __ldcg(qmoe_argmax_val + b);
    if (i >= 0) qmoe_better(bv, bi, v, i);
  }
  qmoe_argmax_block(bv, bi, sv, si);
  if (threadIdx.x == 0) idx[0] = bi == QMOE_I64_MAX ? 0 : (int)bi;
}
