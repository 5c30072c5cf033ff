// qmoe-kernel: qtype=1 acc=1 threads=128 rows_per_block=8
// qmoe-let: pairs = qmoe_cdiv(rows, 2)
// qmoe-let: pairs_per_block = pairs < SM_COUNT * 16 ? 1 : THREADS / 32
// qmoe-grid: qmoe_cdiv(pairs, pairs_per_block), 1
// y = W·x: each warp computes 2 rows (x is loaded once for both), ${WARPS} warps per block. With few rows (fewer
// row pairs than 16 warps per multiprocessor: attention's projections at batch 1) a block takes one pair and its
// warps split the row's blocks in ${WARPS} contiguous parts, summed in part order: four times the warps in flight.
// The kernel knows which launch it got from the grid (a grid of at least one block per pair).
extern "C" __global__ void __launch_bounds__(${THREADS}, QMOE_ROW_MIN_BLOCKS) ${ENTRY}(const qmoe_args a) {
${BIND}
  __shared__ uint4 sh[${WARPS}][QMOE_ROW_BUFS * 2 * STAGE_VECS];
  __shared__ acc_t part_sum[${WARPS}][2];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t pairs = (rows + 1) / 2;
  const int ks = (int64_t)gridDim.x >= pairs ? ${WARPS} : 1; // warps per row pair
  const int64_t r0 = (ks > 1 ? (int64_t)blockIdx.x : (int64_t)blockIdx.x * ${WARPS} + warp) * 2;
  const int part = ks > 1 ? warp : 0;
  const bool live = r0 < rows; // uniform over the block when ks > 1
  acc_t s0 = 0, s1 = 0;
  if (live) {
    const int64_t nbk = cols / QB_ELEMS, lo = nbk * part / ks, hi = nbk * (part + 1) / ks;
    const int64_t row_bytes = nbk * QB_BYTES;
    const int64_t r1 = r0 + 1 < rows ? r0 + 1 : r0;
    const uint8_t *rp[2] = { W + r0 * row_bytes + lo * QB_BYTES, W + r1 * row_bytes + lo * QB_BYTES };
    acc_t acc[2] = { 0, 0 };
    qmoe_row_dots<2>(rp, x + lo * QB_ELEMS, hi - lo, sh[warp], lane, acc);
    s0 = qmoe_warp_sum(acc[0]), s1 = qmoe_warp_sum(acc[1]);
  }
  if (ks > 1) {
    if (lane == 0) part_sum[warp][0] = s0, part_sum[warp][1] = s1;
    __syncthreads();
    if (threadIdx.x == 0 && live) {
      acc_t t0 = 0, t1 = 0;
      for (int w = 0; w < ${WARPS}; w++) t0 += part_sum[w][0], t1 += part_sum[w][1];
      y[r0] = (float)t0;
      if (r0 + 1 < rows) y[r0 + 1] = (float)t1;
    }
  } else if (live && lane == 0) {
    y[r0] = (float)s0;
    if (r0 + 1 < rows) y[r0 + 1] = (float)s1;
  }
}
