// qmoe-kernel: acc=1 threads=128 rows_per_block=1
// qmoe-grid: nh, 1
// RMSNorm of each of nh heads of D with the shared weight w: one block per head.
extern "C" __global__ void __launch_bounds__(${THREADS}, ${MIN_BLOCKS}) ${ENTRY}(const qmoe_args a) {
${BIND}
  __shared__ acc_t red[32];
  const int64_t base = (int64_t)blockIdx.x * D;
  if (blockIdx.x >= nh) return;
  acc_t ss = 0;
  for (int64_t i = threadIdx.x; i < D; i += blockDim.x) {
    const acc_t v = (acc_t)x[base + i];
    ss += v * v;
  }
  ss = qmoe_block_sum(ss, red);
  const acc_t r = (acc_t)1 / qmoe_sqrt(ss / (acc_t)D + (acc_t)eps);
  for (int64_t i = threadIdx.x; i < D; i += blockDim.x) y[base + i] = (float)((acc_t)x[base + i] * r * (acc_t)w[i]);
}
