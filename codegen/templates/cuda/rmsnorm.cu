// qmoe-kernel: acc=1 threads=256 rows_per_block=1 min_blocks=1 rn_u=16
// qmoe-grid: 1, 1
// y = x · (1/sqrt(mean(x²) + eps)) · w in one block: sum of squares in acc_t, fixed-order reduction.
extern "C" __global__ void __launch_bounds__(${THREADS}, ${MIN_BLOCKS}) ${ENTRY}(const qmoe_args a) {
${BIND}
  __shared__ acc_t red[32];
  // Where n fits RN_U elements per thread, x and w are loaded once, all in flight at once, and kept in
  // registers; the sum of squares runs in the same order either way.
  const bool fits = n <= (int64_t)${RN_U} * blockDim.x;
  float xv[${RN_U}], wv[${RN_U}];
  acc_t ss = 0;
  if (fits) {
#pragma unroll
    for (int u = 0; u < ${RN_U}; u++) {
      const int64_t i = threadIdx.x + (int64_t)u * blockDim.x;
      xv[u] = i < n ? x[i] : 0.0f;
      wv[u] = i < n ? w[i] : 0.0f;
    }
#pragma unroll
    for (int u = 0; u < ${RN_U}; u++) {
      const acc_t v = (acc_t)xv[u];
      if (threadIdx.x + (int64_t)u * blockDim.x < n) ss += v * v;
    }
  } else {
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
      const acc_t v = (acc_t)x[i];
      ss += v * v;
    }
  }
  ss = qmoe_block_sum(ss, red);
  const acc_t r = (acc_t)1 / qmoe_sqrt(ss / (acc_t)n + (acc_t)eps);
  if (fits) {
#pragma unroll
    for (int u = 0; u < ${RN_U}; u++) {
      const int64_t i = threadIdx.x + (int64_t)u * blockDim.x;
      if (i < n) y[i] = (float)((acc_t)xv[u] * r * (acc_t)wv[u]);
    }
  } else {
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) y[i] = (float)((acc_t)x[i] * r * (acc_t)w[i]);
  }
}
