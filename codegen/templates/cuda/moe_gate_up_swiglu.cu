// qmoe-kernel: qtype=1 acc=1 threads=128 rows_per_block=4
// qmoe-grid: qmoe_cdiv(F, RPB), K
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
