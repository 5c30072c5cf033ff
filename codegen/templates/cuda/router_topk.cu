// qmoe-kernel: acc=1 threads=32 rows_per_block=1 min_blocks=1 max_e=4096 max_k=64 counters=65536 rt_u=16
// qmoe-limit: E <= MAX_E
// qmoe-limit: K <= MAX_K
// qmoe-limit: TOKENS <= COUNTERS
// qmoe-grid: qmoe_cdiv(E, THREADS / 32), 1
// qmoe-workspace: COUNTERS * 4 + TOKENS * E * 8
// Router: logits = Wr·x, one warp per expert (each lane's slice of the row and of x loaded ${RT_U} 16-byte
// vectors at a time, all in flight before the first use, then the warp's fixed-order tree); the first warp of
// the last block to finish (a counter in device memory, self-resetting via atomicInc) runs softmax over E and
// top-K by logit (ties: the lower index), then w = p / Σ p over the chosen, all in acc_t. E <= ${MAX_E},
// K <= ${MAX_K}.
// The logits and the counter are the token's own (T tokens run at once, token blockIdx.z): workspace counter
// qmoe_tok (every call leaves the counters 0; attention and moe_down use them too), then per token E acc_t.

extern "C" __global__ void __launch_bounds__(${THREADS}, ${MIN_BLOCKS}) ${ENTRY}(const qmoe_args a) {
${BIND}
  __shared__ acc_t prob[${MAX_E}];
  __shared__ int sel[${MAX_K}];
  __shared__ acc_t pk[${MAX_K}];
  __shared__ unsigned char taken[${MAX_E}];
  __shared__ int last;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t ex = (int64_t)blockIdx.x * (${THREADS} / 32) + warp;
  unsigned *const done = (unsigned *)a.buf[7] + qmoe_tok;
  acc_t *const logits = (acc_t *)(a.buf[7] + (uint64_t)${COUNTERS} * 4 + (uint64_t)(qmoe_tok * E * 8));
  // The warp's first step of its row (weights: no kernel writes them) is asked for before the wait for the kernel
  // before, so in a graph its trip to memory overlaps that kernel; x after the wait.
  const float *row = Wr + (ex < E ? ex : 0) * H;
  const bool vec = ex < E && (((uint64_t)row | (uint64_t)x) & 15) == 0 && (H & 3) == 0;
  const float4 *r4 = (const float4 *)row, *x4 = (const float4 *)x;
  const int64_t n4 = H / 4;
  float4 wv[${RT_U}];
  if (vec) {
#pragma unroll
    for (int u = 0; u < ${RT_U}; u++) {
      const int64_t i = lane + 32 * u;
      wv[u] = i < n4 ? r4[i] : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    }
  }
  ${GRID_WAIT}
  if (ex < E) {
    acc_t dot = 0;
    if (vec) {
      for (int64_t i0 = 0; i0 < n4; i0 += 32 * ${RT_U}) {
        float4 xv[${RT_U}];
#pragma unroll
        for (int u = 0; u < ${RT_U}; u++) {
          const int64_t i = i0 + lane + 32 * u;
          if (i0 > 0) wv[u] = i < n4 ? r4[i] : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
          xv[u] = i < n4 ? x4[i] : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        }
#pragma unroll
        for (int u = 0; u < ${RT_U}; u++) {
          dot = qmoe_fma(wv[u].x, xv[u].x, dot);
          dot = qmoe_fma(wv[u].y, xv[u].y, dot);
          dot = qmoe_fma(wv[u].z, xv[u].z, dot);
          dot = qmoe_fma(wv[u].w, xv[u].w, dot);
        }
      }
    } else {
      for (int64_t i = lane; i < H; i += 32) dot = qmoe_fma(row[i], x[i], dot);
    }
    dot = qmoe_warp_sum(dot);
    if (lane == 0) logits[ex] = dot;
  }
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) last = atomicInc(done, gridDim.x - 1) == gridDim.x - 1;
  __syncthreads();
  if (!last) return;
  __threadfence();
  // The whole block brings the logits in (one trip to memory, not one per lane's step), then one warp finishes
  // (no block barriers): lane i holds logits i, i + 32, ... Softmax sum over all E, then top-K by logit (ties:
  // the lower index), then w = p / Σ p over the chosen, all in acc_t.
  for (int i0 = threadIdx.x; i0 < E; i0 += 4 * blockDim.x) { // 4 loads in flight per thread
    acc_t v[4];
#pragma unroll
    for (int u = 0; u < 4; u++) {
      const int i = i0 + u * blockDim.x;
      v[u] = i < E ? __ldcg(logits + i) : (acc_t)0;
    }
#pragma unroll
    for (int u = 0; u < 4; u++) {
      const int i = i0 + u * blockDim.x;
      if (i < E) {
        prob[i] = v[u];
        taken[i] = 0;
      }
    }
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
  acc_t lv;
  int li;
  auto scan = [&]() {
    lv = QMOE_NEG_INF;
    li = -1;
    for (int i = lane; i < E; i += 32)
      if (!taken[i] && (li < 0 || prob[i] > lv)) { lv = prob[i]; li = i; }
  };
  scan();
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
      scan();
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
