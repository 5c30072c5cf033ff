// qmoe-kernel: acc=1 threads=64 rows_per_block=1
// qmoe-grid: nh, 1
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
    const acc_t y0 = qmoe_add_rn(qmoe_mul_rn(x0, c), -qmoe_mul_rn(x1, s)), y1 = qmoe_add_rn(qmoe_mul_rn(x0, s), qmoe_mul_rn(x1, c));
    y[base + i] = (float)y0;
    y[base + i + half] = (float)y1;
  }
}
