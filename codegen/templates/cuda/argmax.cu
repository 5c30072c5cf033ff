// qmoe-kernel: threads=256 rows_per_block=0 max_blocks=1024
// qmoe-grid: qmoe_min(qmoe_cdiv(n, 4096), MAX_BLOCKS), 1
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
