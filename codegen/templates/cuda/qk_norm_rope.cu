// qmoe-kernel: acc=1 threads=128 rows_per_block=1
// qmoe-grid: nh, 1
// qk_norm then NEOX RoPE, one block per head, with the two stages' own arithmetic so that the result equals
// qk_norm.cu followed by rope_neox.cu bit for bit: the sum of squares as qk_norm sums it (same thread count,
// same fixed-order block sum), each normalized value rounded to f32 as qk_norm stores it, then rope_neox's
// rotation (angle, cos and sin in double; the rotation in acc_t). The whole head is read for the sum before
// the block sum's barrier; after it each thread reads and writes only its own pairs, so y may be x.
// the rotation of pair i at position pos, in double as rope_neox.cu computes it, rounded to acc_t
static __device__ __forceinline__ void qmoe_rope_cs(int64_t pos, double theta, int64_t i, int64_t D, acc_t *c, acc_t *s) {
  const double ang = (double)pos * pow(theta, -(double)(2 * i) / (double)D);
  *c = (acc_t)cos(ang);
  *s = (acc_t)sin(ang);
}
extern "C" __global__ void __launch_bounds__(${THREADS}, ${MIN_BLOCKS}) ${ENTRY}(const qmoe_args a) {
${BIND}
  __shared__ acc_t red[32];
  const int64_t half = D / 2, base = (int64_t)blockIdx.x * D;
  if (blockIdx.x >= nh) return;
  // The thread's first pair's cos and sin read only params: computed before the wait for the kernel before
  // (in a graph, while it still runs), so the latency of double pow, cos and sin is hidden behind it.
  acc_t c0 = 0, s0 = 0;
  if ((int64_t)threadIdx.x < half) qmoe_rope_cs(pos, theta, threadIdx.x, D, &c0, &s0);
  ${GRID_WAIT}
  acc_t ss = 0;
  for (int64_t i = threadIdx.x; i < D; i += blockDim.x) {
    const acc_t v = (acc_t)x[base + i];
    ss += v * v;
  }
  ss = qmoe_block_sum(ss, red);
  const acc_t r = (acc_t)1 / qmoe_sqrt(ss / (acc_t)D + (acc_t)eps);
  for (int64_t i = threadIdx.x; i < half; i += blockDim.x) {
    const float n0 = (float)((acc_t)x[base + i] * r * (acc_t)w[i]);
    const float n1 = (float)((acc_t)x[base + i + half] * r * (acc_t)w[i + half]);
    acc_t c = c0, s = s0;
    if (i != (int64_t)threadIdx.x) qmoe_rope_cs(pos, theta, i, D, &c, &s);
    const acc_t x0 = (acc_t)n0, x1 = (acc_t)n1;
    const acc_t y0 = qmoe_add_rn(qmoe_mul_rn(x0, c), -qmoe_mul_rn(x1, s)), y1 = qmoe_add_rn(qmoe_mul_rn(x0, s), qmoe_mul_rn(x1, c));
    y[base + i] = (float)y0;
    y[base + i + half] = (float)y1;
  }
}
