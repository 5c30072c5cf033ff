// qmoe-kernel: acc=1 threads=256 rows_per_block=1 min_blocks=1 max_e=4096 max_k=64 counters=65536
// qmoe-limit: E <= MAX_E
// qmoe-limit: K <= MAX_K
// qmoe-limit: TOKENS <= COUNTERS
// qmoe-grid: E, 1
// qmoe-workspace: COUNTERS * 4 + TOKENS * E * 8
// Router: logits = Wr·x, one block per expert (each thread's slice of the row loaded at once with 16-byte
// loads, then a fixed-order block sum); the first warp of the last block to finish (a counter in device memory,
// self-resetting via atomicInc) runs softmax over E and top-K by logit (ties: the lower index), then
// w = p / Σ p over the chosen, all in acc_t. E <= ${MAX_E}, K <= ${MAX_K}.
// The logits and the counter are the token's own (T tokens run at once, token blockIdx.z): workspace counter
// qmoe_tok (every call leaves the counters 0; attention and moe_down use them too), then per token E acc_t.

extern "C" __global__ void __launch_bounds__(${THREADS}, ${MIN_BLOCKS}) ${ENTRY}(const qmoe_args a) {
${BIND}
  __shared__ acc_t prob[${MAX_E}];
  __shared__ int sel[${MAX_K}];
  __shared__ acc_t pk[${MAX_K}];
  __shared__ unsigned char taken[${MAX_E}];
  __shared__ acc_t red[32];
  __shared__ int last;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t ex = blockIdx.x; // the grid is E blocks
  unsigned *const done = (unsigned *)a.buf[7] + qmoe_tok;
  acc_t *const logits = (acc_t *)(a.buf[7] + (uint64_t)${COUNTERS} * 4 + (uint64_t)(qmoe_tok * E * 8));
  const float *row = Wr + ex * H;
  acc_t dot = 0;
  if ((((uint64_t)row | (uint64_t)x) & 15) == 0 && (H & 3) == 0) {
    const float4 *r4 = (const float4 *)row, *x4 = (const float4 *)x;
#pragma unroll 4
    for (int64_t i = threadIdx.x; i < H / 4; i += blockDim.x) {
      const float4 wv = r4[i], xv = x4[i];
      dot = qmoe_fma(wv.x, xv.x, dot);
      dot = qmoe_fma(wv.y, xv.y, dot);
      dot = qmoe_fma(wv.z, xv.z, dot);
      dot = qmoe_fma(wv.w, xv.w, dot);
    }
  } else {
    for (int64_t i = threadIdx.x; i < H; i += blockDim.x) dot = qmoe_fma(row[i], x[i], dot);
  }
  dot = qmoe_block_sum(dot, red);
  if (threadIdx.x == 0) logits[ex] = dot;
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) last = atomicInc(done, gridDim.x - 1) == gridDim.x - 1;
  __syncthreads();
  if (!last) return;
  __threadfence();
  // The whole block brings the logits in (one trip to memory, not one per lane's step), then one warp finishes
  // (no block barriers): lane i holds logits i, i + 32, ... Softmax sum over all E, then top-K by logit (ties:
  // the lower index), then w = p / Σ p over the chosen, all in acc_t.
  for (int i = threadIdx.x; i < E; i += blockDim.x) {
    prob[i] = __ldcg(logits + i);
    taken[i] = 0;
  }
  __syncthreads();
  if (warp != 0) return;
  acc_t mx = QMOE_NEG_INF;
  for (int i = lane; i < E; i += 32) mx = prob[i] > mx ? prob[i] : mx;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const acc_t other = __shfl_xor_sync(QMOE_FULL, mx, o);
    mx = other > mx ? other : mx;
  }
  acc_t s = 0;
  for (int i = lane; i < E; i += 32) s += qmoe_exp(prob[i] - mx);
  s = qmoe_warp_sum(s);
  // Each lane keeps its best untaken entry (the first untaken, replaced by a larger one: ties the lower index);
  // only the lane that owned a round's winner scans again. The same choices as scanning every lane every round.
  acc_t lv = QMOE_NEG_INF;
  int li = -1;
  for (int i = lane; i < E; i += 32)
    if (li < 0 || prob[i] > lv) { lv = prob[i]; li = i; }
  for (int k = 0; k < K; k++) {
    acc_t bv = lv;
    int bi = li;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      const acc_t ov = __shfl_xor_sync(QMOE_FULL, bv, o);
      const int oi = __shfl_xor_sync(QMOE_FULL, bi, o);
      if (oi >= 0 && (bi < 0 || ov > bv || (ov == bv && oi < bi))) { bv = ov; bi = oi; }
    }
    bi = __shfl_sync(QMOE_FULL, bi, 0); // lane 0's winner (with NaN logits the lanes' trees need not agree)
    if (lane == 0) sel[k] = bi;
    if (bi >= 0 && (bi & 31) == lane) {
      taken[bi] = 1;
      lv = QMOE_NEG_INF;
      li = -1;
      for (int i = lane; i < E; i += 32)
        if (!taken[i] && (li < 0 || prob[i] > lv)) { lv = prob[i]; li = i; }
    }
  }
  __syncwarp();
  // each chosen p = exp(l - mx) / s by its own lane; their sum in k order; then each w = p / Σ
  for (int k = lane; k < K; k += 32) pk[k] = qmoe_exp(prob[sel[k]] - mx) / s;
  __syncwarp();
  acc_t chosen = 0;
  for (int k = 0; k < K; k++) chosen += pk[k];
  for (int k = lane; k < K; k += 32) {
    ids[k] = sel[k];
    w[k] = (float)(pk[k] / chosen);
  }
}
