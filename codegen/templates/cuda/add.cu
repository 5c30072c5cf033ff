// qmoe-kernel: threads=256 rows_per_block=0
// qmoe-grid: qmoe_min(qmoe_cdiv(n, THREADS), SM_COUNT * 16), 1
// y = a + b (y may be a).
extern "C" __global__ void __launch_bounds__(${THREADS}, ${MIN_BLOCKS}) ${ENTRY}(const qmoe_args a_) {
${BIND}
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
    y[i] = a[i] + b[i];
}
