// qmoe-kernel: acc=1 threads=256 rows_per_block=1
// qmoe-grid: 1, 1
// y = a + b, then xn = y · (1/sqrt(mean(y²) + eps)) · w in one block: the add stage's sum, then the rmsnorm
// stage's kernel over y (the same threads, the same sum of squares in acc_t and fixed-order reduction), so
// the result equals add followed by rmsnorm bit for bit. y may be a: each thread reads a[i] before it writes
// y[i], and reads back only the y[i] it wrote itself.
extern "C" __global__ void __launch_bounds__(${THREADS}, ${MIN_BLOCKS}) ${ENTRY}(const qmoe_args a_) {
${BIND}
  __shared__ acc_t red[32];
  acc_t ss = 0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    const float s = a[i] + b[i];
    y[i] = s;
    const acc_t v = (acc_t)s;
    ss += v * v;
  }
  ss = qmoe_block_sum(ss, red);
  const acc_t r = (acc_t)1 / qmoe_sqrt(ss / (acc_t)n + (acc_t)eps);
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) xn[i] = (float)((acc_t)y[i] * r * (acc_t)w[i]);
}
