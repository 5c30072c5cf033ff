// qmoe-kernel: acc=1 threads=128 rows_per_block=1 min_blocks=2 max_d=256 at_u=8 max_splits=64 split_positions=64
// qmoe-limit: D <= MAX_D
// qmoe-let: splits = qmoe_min(qmoe_cdiv(n_kv, SPLIT_POSITIONS), MAX_SPLITS)
// qmoe-grid: nh, splits
// qmoe-workspace: splits > 1 ? (nh * 4 + 255) / 256 * 256 + nh * splits * (D + 2) * 8 : 0
// Decode attention with GQA: query head h reads kv head h / (nh / nkv). The positions are cut into S = gridDim.y
// splits (backend: about 64 positions each, S <= ${MAX_SPLITS}); block (h, s) runs an online softmax over its
// split — each warp takes 4 consecutive positions at a time (their K rows loaded together, 4 interleaved warp
// reductions, then their V rows), running max, sum and weighted V in acc_t — and merges its 4 warps in order.
// With S > 1 each block leaves (max, sum, V[D]) in the backend's workspace (args.buf[7]); the last block of a
// head to finish (a self-resetting per-head counter after the partials) merges the S partials in split order,
// so the result does not depend on scheduling. D <= ${MAX_D}.
#define AT_U ${AT_U}
#define AT_PB 4
extern "C" __global__ void __launch_bounds__(${THREADS}, ${MIN_BLOCKS}) ${ENTRY}(const qmoe_args a) {
${BIND}
  __shared__ acc_t sm_m[${WARPS}], sm_l[${WARPS}];
  __shared__ acc_t sm_o[${WARPS}][${MAX_D}];
  __shared__ int last;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t hq = blockIdx.x, S = gridDim.y, sp = blockIdx.y;
  if (hq >= nh) return;
  const int64_t g = hq / (nh / nkv);
  const int64_t per = (n_kv + S - 1) / S, lo = sp * per, hi = lo + per < n_kv ? lo + per : n_kv;
  const acc_t scale = (acc_t)1 / qmoe_sqrt((acc_t)D);
  acc_t qv[AT_U], o[AT_U];
#pragma unroll
  for (int u = 0; u < AT_U; u++) {
    const int d = lane + 32 * u;
    qv[u] = d < D ? (acc_t)q[hq * D + d] : (acc_t)0;
    o[u] = 0;
  }
  acc_t m = QMOE_NEG_INF, l = 0;
  for (int64_t t0 = lo + (int64_t)warp * AT_PB; t0 < hi; t0 += ${WARPS} * AT_PB) {
    acc_t s[AT_PB];
#pragma unroll
    for (int j = 0; j < AT_PB; j++) {
      const int64_t t = t0 + j < hi ? t0 + j : t0; /* a position past the split repeats t0; masked below */
      const float *kr = Kc + (t * nkv + g) * D;
      acc_t dot = 0;
#pragma unroll
      for (int u = 0; u < AT_U; u++) {
        const int d = lane + 32 * u;
        if (d < D) dot += qv[u] * (acc_t)__ldg(kr + d);
      }
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
    for (int u = 0; u < AT_U; u++) o[u] *= corr;
#pragma unroll
    for (int j = 0; j < AT_PB; j++) {
      const int64_t t = t0 + j < hi ? t0 + j : t0;
      const float *vr = Vc + (t * nkv + g) * D;
#pragma unroll
      for (int u = 0; u < AT_U; u++) {
        const int d = lane + 32 * u;
        if (d < D) o[u] += pe[j] * (acc_t)__ldg(vr + d);
      }
    }
    m = mn;
  }
  if (lane == 0) { sm_m[warp] = m; sm_l[warp] = l; }
#pragma unroll
  for (int u = 0; u < AT_U; u++) {
    const int d = lane + 32 * u;
    if (d < D) sm_o[warp][d] = o[u];
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
  /* workspace: unsigned counters[nh] (at the start whatever acc_t is, so every variant finds them reset),
   * then from byte (nh·4 rounded up to 256) acc_t part[nh][S][D + 2]: max, sum, V */
  unsigned *done = (unsigned *)a.buf[7];
  acc_t *ws = (acc_t *)(a.buf[7] + (uint64_t)((nh * 4 + 255) / 256 * 256));
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
  const acc_t *part = ws + hq * S * (D + 2);
  acc_t MM = QMOE_NEG_INF;
  for (int64_t k = 0; k < S; k++) {
    const acc_t mk = __ldcg(part + k * (D + 2));
    MM = mk > MM ? mk : MM;
  }
  acc_t LL = 0;
  for (int64_t k = 0; k < S; k++) {
    const acc_t mk = __ldcg(part + k * (D + 2));
    if (mk != QMOE_NEG_INF) LL += __ldcg(part + k * (D + 2) + 1) * qmoe_exp(mk - MM);
  }
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
    acc_t acc = 0;
    for (int64_t k = 0; k < S; k++) {
      const acc_t mk = __ldcg(part + k * (D + 2));
      if (mk != QMOE_NEG_INF) acc += __ldcg(part + k * (D + 2) + 2 + d) * qmoe_exp(mk - MM);
    }
    o_out[hq * D + d] = (float)(acc / LL);
  }
}
