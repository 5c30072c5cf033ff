// qmoe-kernel: acc=1 threads=256 rows_per_block=1
// qmoe-grid: 1, 1
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
