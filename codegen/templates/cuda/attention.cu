// qmoe-kernel: acc=1 threads=128 rows_per_block=1 min_blocks=2 max_d=256 at_u=2 max_splits=64 split_positions=32 counters=65536
// qmoe-limit: D <= MAX_D
// qmoe-limit: nh <= COUNTERS / TOKENS
// qmoe-let: splits = qmoe_min(qmoe_cdiv(n_kv + TOKENS - 1, SPLIT_POSITIONS), MAX_SPLITS)
// qmoe-grid: nh, splits
// qmoe-workspace: splits > 1 ? COUNTERS * 4 + TOKENS * nh * splits * (D + 2) * 8 : 0
// Decode attention with GQA: query head h reads kv head h / (nh / nkv). The positions are cut into S = gridDim.y
// splits (about ${SPLIT_POSITIONS} positions each, S <= ${MAX_SPLITS}); block (h, s) runs an online softmax over its
// split — each warp takes 4 consecutive positions at a time (their K and V rows loaded together with 16-byte
// loads, all in flight before the first use; 4 interleaved warp reductions), running max, sum and weighted V in
// acc_t — and merges its 4 warps in order.
// A call for T tokens runs token blockIdx.z (the binding moves q, o and n_kv to it); each token takes the splits a
// one-token call of its n_kv would (S below; the grid has the last token's, blocks past S return), so T tokens
// give the bits of T calls.
// With S > 1 each block leaves (max, sum, V[D]) in the backend's workspace (args.buf[7]); the last block of a
// head to finish (a self-resetting per-(token, head) counter after the partials) merges the S partials in split order,
// so the result does not depend on scheduling: one warp finds the partials' max and the softmax sum (lanes over
// splits, a fixed-order tree), then every thread sums its d over the splits. D <= ${MAX_D}.
#define AT_U ${AT_U} // 16-byte vectors per lane per row: lane l holds d = 4l..4l+3 + 128u, u < AT_U
#define AT_PB 4

// the lane's 4·AT_U elements of one D-row (zero past D)
static __device__ __forceinline__ void qmoe_at_row(const float *row, int64_t D, bool vec, int lane, float *v) {
#pragma unroll
  for (int u = 0; u < AT_U; u++) {
    const int64_t d = 4 * lane + 128 * u;
    if (vec && d + 3 < D) {
      const float4 f = *(const float4 *)(row + d);
      v[4 * u] = f.x, v[4 * u + 1] = f.y, v[4 * u + 2] = f.z, v[4 * u + 3] = f.w;
    } else {
#pragma unroll
      for (int c = 0; c < 4; c++) v[4 * u + c] = d + c < D ? row[d + c] : 0.0f;
    }
  }
}
extern "C" __global__ void __launch_bounds__(${THREADS}, ${MIN_BLOCKS}) ${ENTRY}(const qmoe_args a) {
${BIND}
  __shared__ acc_t sm_m[${WARPS}], sm_l[${WARPS}];
  __shared__ acc_t sm_o[${WARPS}][${MAX_D}];
  __shared__ int last;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t hq = blockIdx.x, sp = blockIdx.y;
  const int64_t S0 = (n_kv + ${SPLIT_POSITIONS} - 1) / ${SPLIT_POSITIONS};
  const int64_t S = S0 < ${MAX_SPLITS} ? S0 : ${MAX_SPLITS}; // this token's splits (the launch's formula)
  if (hq >= nh || sp >= S) return;
  const int64_t g = hq / (nh / nkv);
  const int64_t per = (n_kv + S - 1) / S, lo = sp * per, hi = lo + per < n_kv ? lo + per : n_kv;
  const acc_t scale = (acc_t)1 / qmoe_sqrt((acc_t)D);
  // 16-byte loads where every row starts 16-byte aligned (D a multiple of 4; buffers are 256-byte aligned)
  const bool vec = (D & 3) == 0 && ((((uint64_t)Kc | (uint64_t)Vc | (uint64_t)q) & 15) == 0);
  acc_t qv[4 * AT_U], o[4 * AT_U];
  {
    float t[4 * AT_U];
    qmoe_at_row(q + hq * D, D, vec, lane, t);
#pragma unroll
    for (int e = 0; e < 4 * AT_U; e++) qv[e] = (acc_t)t[e], o[e] = 0;
  }
  acc_t m = QMOE_NEG_INF, l = 0;
  for (int64_t t0 = lo + (int64_t)warp * AT_PB; t0 < hi; t0 += ${WARPS} * AT_PB) {
    float kr[AT_PB][4 * AT_U], vr[AT_PB][4 * AT_U];
#pragma unroll
    for (int j = 0; j < AT_PB; j++) {
      const int64_t t = t0 + j < hi ? t0 + j : t0; /* a position past the split repeats t0; masked below */
      qmoe_at_row(Kc + (t * nkv + g) * D, D, vec, lane, kr[j]);
      qmoe_at_row(Vc + (t * nkv + g) * D, D, vec, lane, vr[j]);
    }
    acc_t s[AT_PB];
#pragma unroll
    for (int j = 0; j < AT_PB; j++) {
      acc_t dot = 0;
#pragma unroll
      for (int e = 0; e < 4 * AT_U; e++) dot += qv[e] * (acc_t)kr[j][e];
      s[j] = dot;
    }
#pragma unroll
    for (int j = 0; j < AT_PB; j++) s[j] = qmoe_warp_sum(s[j]) * scale;
    acc_t mn = m;
#pragma unroll
    for (int j = 0; j < AT_PB; j++)
      if (t0 + j < hi && s[j] > mn) mn = s[j];
    const acc_t corr = qmoe_exp(m - mn);
    acc_t pe[AT_PB];
    l *= corr;
#pragma unroll
    for (int j = 0; j < AT_PB; j++) {
      pe[j] = t0 + j < hi ? qmoe_exp(s[j] - mn) : (acc_t)0;
      l += pe[j];
    }
#pragma unroll
    for (int e = 0; e < 4 * AT_U; e++) {
      acc_t v = o[e] * corr;
#pragma unroll
      for (int j = 0; j < AT_PB; j++) v += pe[j] * (acc_t)vr[j][e];
      o[e] = v;
    }
    m = mn;
  }
  if (lane == 0) { sm_m[warp] = m; sm_l[warp] = l; }
#pragma unroll
  for (int e = 0; e < 4 * AT_U; e++) {
    const int d = 4 * lane + 128 * (e / 4) + (e % 4);
    if (d < D) sm_o[warp][d] = o[e];
  }
  __syncthreads();
  acc_t M = sm_m[0];
  for (int w = 1; w < ${WARPS}; w++) M = sm_m[w] > M ? sm_m[w] : M;
  acc_t L = 0, f[${WARPS}];
  for (int w = 0; w < ${WARPS}; w++) {
    f[w] = sm_m[w] == QMOE_NEG_INF ? (acc_t)0 : qmoe_exp(sm_m[w] - M);
    L += sm_l[w] * f[w];
  }
  if (S == 1) {
    for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
      acc_t acc = 0;
      for (int w = 0; w < ${WARPS}; w++) acc += sm_o[w][d] * f[w];
      o_out[hq * D + d] = (float)(acc / L);
    }
    return;
  }
  /* workspace: unsigned counters[COUNTERS] at the start (token t, head h: t·nh + h; every call leaves them 0,
   * whatever the stage or acc_t), then per token a slice of 8·nh·gridDim.y·(D + 2) bytes holding
   * acc_t part[nh][S][D + 2]: max, sum, V */
  unsigned *done = (unsigned *)a.buf[7] + qmoe_tok * nh;
  acc_t *ws = (acc_t *)(a.buf[7] + (uint64_t)${COUNTERS} * 4 + (uint64_t)(qmoe_tok * nh * gridDim.y * (D + 2) * 8));
  acc_t *mine = ws + (hq * S + sp) * (D + 2);
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
    acc_t acc = 0;
    for (int w = 0; w < ${WARPS}; w++) acc += sm_o[w][d] * f[w];
    mine[2 + d] = acc;
  }
  if (threadIdx.x == 0) { mine[0] = M; mine[1] = L; }
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) last = atomicInc(done + hq, (unsigned)S - 1) == (unsigned)S - 1;
  __syncthreads();
  if (!last) return;
  __threadfence();
  // merge: warp 0 finds M = max over the splits and each split's factor exp(m_k − M), and L = Σ_k l_k·factor_k
  // (lanes over splits, then the warp's fixed tree); factors / L go to shared memory; then o[d] = Σ_k V_k[d]·f_k.
  __shared__ acc_t sm_f[${MAX_SPLITS}];
  const acc_t *part = ws + hq * S * (D + 2);
  if (warp == 0) {
    acc_t mk[(${MAX_SPLITS} + 31) / 32], MM = QMOE_NEG_INF;
#pragma unroll
    for (int u = 0; u < (${MAX_SPLITS} + 31) / 32; u++) {
      const int64_t k = lane + 32 * u;
      mk[u] = k < S ? __ldcg(part + k * (D + 2)) : QMOE_NEG_INF;
      MM = mk[u] > MM ? mk[u] : MM;
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      const acc_t other = __shfl_xor_sync(QMOE_FULL, MM, o);
      MM = other > MM ? other : MM;
    }
    acc_t LL = 0, fk[(${MAX_SPLITS} + 31) / 32];
#pragma unroll
    for (int u = 0; u < (${MAX_SPLITS} + 31) / 32; u++) {
      const int64_t k = lane + 32 * u;
      fk[u] = mk[u] == QMOE_NEG_INF ? (acc_t)0 : qmoe_exp(mk[u] - MM);
      if (k < S) LL += __ldcg(part + k * (D + 2) + 1) * fk[u];
    }
    LL = qmoe_warp_sum(LL);
#pragma unroll
    for (int u = 0; u < (${MAX_SPLITS} + 31) / 32; u++) {
      const int64_t k = lane + 32 * u;
      if (k < S) sm_f[k] = fk[u] / LL;
    }
  }
  __syncthreads();
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
    acc_t acc = 0;
#pragma unroll 8
    for (int64_t k = 0; k < S; k++) acc += __ldcg(part + k * (D + 2) + 2 + d) * sm_f[k];
    o_out[hq * D + d] = (float)acc;
  }
}
