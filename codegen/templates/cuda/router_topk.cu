// qmoe-kernel: acc=1 threads=256 rows_per_block=1 min_blocks=1 max_e=4096 max_k=64
// qmoe-limit: E <= MAX_E
// qmoe-limit: K <= MAX_K
// qmoe-grid: E, 1
// Router: logits = Wr·x, one block per expert (each thread's slice of the row loaded at once with 16-byte
// loads, then a fixed-order block sum); the last block to finish (a counter in device memory, self-resetting
// via atomicInc) runs softmax over E and top-K by logit (ties: the lower index; ranks computed in parallel),
// then w = p / Σ p over the chosen, all in acc_t. E <= ${MAX_E}, K <= ${MAX_K}.
__device__ acc_t qmoe_router_logits[${MAX_E}];
__device__ unsigned int qmoe_router_done;

extern "C" __global__ void __launch_bounds__(${THREADS}, ${MIN_BLOCKS}) ${ENTRY}(const qmoe_args a) {
${BIND}
  __shared__ acc_t prob[${MAX_E}];
  __shared__ int sel[${MAX_K}];
  __shared__ acc_t red[32];
  __shared__ int last;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t ex = blockIdx.x;
  {
    const float *row = Wr + ex * H;
    acc_t s = 0;
    if ((((uint64_t)row | (uint64_t)x) & 15) == 0 && (H & 3) == 0) {
      const float4 *r4 = (const float4 *)row, *x4 = (const float4 *)x;
#pragma unroll 4
      for (int64_t i = threadIdx.x; i < H / 4; i += blockDim.x) {
        const float4 wv = r4[i], xv = x4[i];
        s = qmoe_fma(wv.x, xv.x, s);
        s = qmoe_fma(wv.y, xv.y, s);
        s = qmoe_fma(wv.z, xv.z, s);
        s = qmoe_fma(wv.w, xv.w, s);
      }
    } else {
      for (int64_t i = threadIdx.x; i < H; i += blockDim.x) s = qmoe_fma(row[i], x[i], s);
    }
    s = qmoe_block_sum(s, red);
    if (threadIdx.x == 0 && ex < E) qmoe_router_logits[ex] = s;
  }
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) last = atomicInc(&qmoe_router_done, gridDim.x - 1) == gridDim.x - 1;
  __syncthreads();
  if (!last) return;
  __threadfence();
  // The last block finishes, all its threads: the logits into shared memory; the max and the softmax sum over E
  // (per-thread partials, then the fixed-order block tree); top-K by rank — the rank of logit i is the number of
  // logits that beat it (larger, or equal at a lower index; a NaN is beaten by every number and ranks by index
  // among NaNs), so the ranks are a permutation and thread i writes sel[rank] = i when rank < K; then
  // w = p / Σ p over the chosen (summed in k order), all in acc_t.
  acc_t mx = QMOE_NEG_INF;
  for (int i = threadIdx.x; i < E; i += blockDim.x) {
    const acc_t l = __ldcg(qmoe_router_logits + i);
    prob[i] = l;
    mx = l > mx ? l : mx;
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const acc_t other = __shfl_xor_sync(QMOE_FULL, mx, o);
    mx = other > mx ? other : mx;
  }
  __syncthreads();
  if (lane == 0) red[warp] = mx;
  __syncthreads();
  mx = red[0];
  for (int k = 1; k < (int)(blockDim.x >> 5); k++) mx = red[k] > mx ? red[k] : mx;
  __syncthreads();
  acc_t s = 0;
  for (int i = threadIdx.x; i < E; i += blockDim.x) s += qmoe_exp(prob[i] - mx);
  s = qmoe_block_sum(s, red);
  for (int i = threadIdx.x; i < E; i += blockDim.x) {
    const acc_t v = prob[i];
    const bool vn = v != v;
    int rank = 0;
    for (int j = 0; j < E; j++) {
      const acc_t u = prob[j];
      const bool un = u != u;
      rank += vn ? (!un || j < i) : (!un && (u > v || (u == v && j < i)));
    }
    if (rank < K) sel[rank] = i;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    acc_t chosen = 0;
    for (int k = 0; k < K; k++) chosen += qmoe_exp(prob[sel[k]] - mx) / s;
    for (int k = 0; k < K; k++) {
      ids[k] = sel[k];
      w[k] = (float)((qmoe_exp(prob[sel[k]] - mx) / s) / chosen);
    }
  }
}
