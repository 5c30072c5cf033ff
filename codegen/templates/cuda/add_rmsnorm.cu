// qmoe-kernel: acc=1 threads=256 rows_per_block=1 min_blocks=1 arn_u=16
// qmoe-grid: 1, 1
// y = a + b, then xn = y · (1/sqrt(mean(y²) + eps)) · w in one block: the add stage's sum, then the rmsnorm
// stage's kernel over y (the same threads, the same sum of squares in acc_t and fixed-order reduction), so
// the result equals add followed by rmsnorm bit for bit. y may be a: each thread reads a[i] before it writes
// y[i], and reads back only the y[i] it wrote itself.
extern "C" __global__ void __launch_bounds__(${THREADS}, ${MIN_BLOCKS}) ${ENTRY}(const qmoe_args a_) {
${BIND}
  __shared__ acc_t red[32];
  // Where n fits ARN_U elements per thread, a, b and w are all read in one pass (one trip to memory, not two)
  // and y stays in registers; the sum of squares runs in the same order either way.
  float yv[${ARN_U}], wv[${ARN_U}];
  const bool fits = n <= (int64_t)${ARN_U} * blockDim.x;
  acc_t ss = 0;
  if (fits) {
    // every load first (all in flight at once; y may be a, so a store between them would order them one
    // trip to memory each), then the sums and stores in the same order
    float av[${ARN_U}], bv[${ARN_U}];
#pragma unroll
    for (int u = 0; u < ${ARN_U}; u++) {
      const int64_t i = threadIdx.x + (int64_t)u * blockDim.x;
      av[u] = i < n ? a[i] : 0.0f;
      bv[u] = i < n ? b[i] : 0.0f;
      wv[u] = i < n ? w[i] : 0.0f;
    }
#pragma unroll
    for (int u = 0; u < ${ARN_U}; u++) {
      const int64_t i = threadIdx.x + (int64_t)u * blockDim.x;
      if (i < n) {
        const float s = av[u] + bv[u];
        yv[u] = s;
        y[i] = s;
        const acc_t v = (acc_t)s;
        ss += v * v;
      }
    }
  } else {
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
      const float s = a[i] + b[i];
      y[i] = s;
      const acc_t v = (acc_t)s;
      ss += v * v;
    }
  }
  ss = qmoe_block_sum(ss, red);
  const acc_t r = (acc_t)1 / qmoe_sqrt(ss / (acc_t)n + (acc_t)eps);
  if (fits) {
#pragma unroll
    for (int u = 0; u < ${ARN_U}; u++) {
      const int64_t i = threadIdx.x + (int64_t)u * blockDim.x;
      if (i < n) xn[i] = (float)((acc_t)yv[u] * r * (acc_t)wv[u]);
    }
  } else {
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) xn[i] = (float)((acc_t)y[i] * r * (acc_t)w[i]);
  }
}
