// qmoe-kernel: threads=256 rows_per_block=0
// qmoe-grid: qmoe_cdiv(nkv * D, THREADS), 1
// Kc[pos], Vc[pos] (rows of nkv·D) = k, v.
extern "C" __global__ void __launch_bounds__(${THREADS}, ${MIN_BLOCKS}) ${ENTRY}(const qmoe_args a) {
${BIND}
  const int64_t n = nkv * D;
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) {
    Kc[pos * n + i] = k[i];
    Vc[pos * n + i] = v[i];
  }
}
