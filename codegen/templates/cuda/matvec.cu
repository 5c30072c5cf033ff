// qmoe-kernel: qtype=1 acc=1 threads=128 rows_per_block=8
// qmoe-grid: qmoe_cdiv(rows, RPB), 1
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
