// qmoe-kernel: qtype=1 acc=1 threads=128 rows_per_block=0 max_blocks=1024
// qmoe-grid: qmoe_min(qmoe_cdiv(cols, 32), MAX_BLOCKS), 1
// y = row id of W decoded (${ACC_NOTE}: nothing is accumulated; both variants give the exact f32 decode).
// Blocks stride over the row's quantized blocks; each copies one into shared memory (zero-padded by 64
// bytes: the decode evaluates both arms of a select, whose index may lie past the block), then its threads
// decode its elements. An id outside [0, rows) reads nothing of W and writes NaN to all of y (the contract's
// rule; FALSIFY-FINITE catches it downstream).
extern "C" __global__ void __launch_bounds__(${THREADS}, ${MIN_BLOCKS}) ${ENTRY}(const qmoe_args a) {
${BIND}
  __shared__ uint8_t sb[QB_BYTES + 64];
  const int32_t r = __ldg(id);
  const bool ok = r >= 0 && (int64_t)r < rows;
  const int64_t nblk = cols / QB_ELEMS;
  const uint8_t *const row = W + (ok ? (int64_t)r * nblk * QB_BYTES : 0);
  for (int i = QB_BYTES + threadIdx.x; i < QB_BYTES + 64; i += blockDim.x) sb[i] = 0;
  for (int64_t b = blockIdx.x; b < nblk; b += gridDim.x) {
    __syncthreads(); // the previous block's decodes are done with sb
    if (ok)
      for (int i = threadIdx.x; i < QB_BYTES; i += blockDim.x) sb[i] = __ldg(row + b * QB_BYTES + i);
    __syncthreads();
    for (int i = threadIdx.x; i < QB_ELEMS; i += blockDim.x)
      y[b * QB_ELEMS + i] = ok ? ${DECODE}(sb, i) : __int_as_float(0x7fc00000);
  }
}
