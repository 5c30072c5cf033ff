// qmoe-kernel: acc=1 threads=128 rows_per_block=1 min_blocks=2 max_d=256 at_u=2 at_pb=4 at_hw=2 max_splits=128 split_positions=16
// qmoe-limit: D <= MAX_D
// qmoe-let: splits = qmoe_min(qmoe_cdiv(n_kv, SPLIT_POSITIONS), MAX_SPLITS)
// qmoe-grid: nkv, splits
// qmoe-workspace: splits > 1 ? (nh * 4 + 255) / 256 * 256 + nh * splits * (D + 2) * 8 : 0
// Decode attention with GQA, one block per (kv head g, split s) of about 16 positions (S = gridDim.y <=
// ${MAX_SPLITS} splits): the block's warps share the group's query heads h = g·GQ + j (GQ = nh / nkv), each warp
// ${AT_HW} heads at a time, and every warp reads the split's K and V rows, so a row leaves DRAM once for all GQ
// heads (the other warps of the block find it in L1). A warp takes ${AT_PB} positions per step: their K and V
// rows are loaded together (16-byte loads, all in flight before the first use), then for each of its heads the
// scores, the online-softmax update (running max, sum and weighted V in acc_t) in position order.
// With S > 1 each warp leaves (max, sum, V[D]) per head in the backend's workspace (args.buf[7]); the last block
// of the group to finish (a self-resetting per-group counter) merges the S partials of each head in split
// order, so the result does not depend on scheduling. D <= ${MAX_D}.
#define AT_U ${AT_U}   // 16-byte vectors per lane per row: lane l holds d = 4l..4l+3 + 128u, u < AT_U
#define AT_PB ${AT_PB} // positions per warp step
#define AT_HW (sizeof(acc_t) == 8 ? 1 : ${AT_HW}) // heads per warp pass (f64: one, to stay in registers)

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
  __shared__ int last;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t g = blockIdx.x, S = gridDim.y, sp = blockIdx.y;
  if (g >= nkv) return;
  const int64_t GQ = nh / nkv;
  const int64_t per = (n_kv + S - 1) / S, lo = sp * per, hi = lo + per < n_kv ? lo + per : n_kv;
  const acc_t scale = (acc_t)1 / qmoe_sqrt((acc_t)D);
  // 16-byte loads where every row starts 16-byte aligned (D a multiple of 4; buffers are 256-byte aligned)
  const bool vec = (D & 3) == 0 && ((((uint64_t)Kc | (uint64_t)Vc | (uint64_t)q) & 15) == 0);
  unsigned *done = (unsigned *)a.buf[7];
  /* workspace: unsigned counters (one per kv group; nh reserved, at the start whatever acc_t is, so every
   * variant finds them reset), then from byte (nh·4 rounded up to 256) acc_t part[nh][S][D + 2]: max, sum, V */
  acc_t *ws = (acc_t *)(a.buf[7] + (uint64_t)((nh * 4 + 255) / 256 * 256));
  for (int64_t h0 = (int64_t)warp * AT_HW; h0 < GQ; h0 += ${WARPS} * AT_HW) {
    acc_t qv[AT_HW][4 * AT_U], o[AT_HW][4 * AT_U], m[AT_HW], l[AT_HW];
#pragma unroll
    for (int j = 0; j < AT_HW; j++) {
      float t[4 * AT_U];
      const int64_t hq = g * GQ + (h0 + j < GQ ? h0 + j : h0);
      qmoe_at_row(q + hq * D, D, vec, lane, t);
#pragma unroll
      for (int e = 0; e < 4 * AT_U; e++) qv[j][e] = (acc_t)t[e], o[j][e] = 0;
      m[j] = QMOE_NEG_INF, l[j] = 0;
    }
    for (int64_t t0 = lo; t0 < hi; t0 += AT_PB) {
      float kr[AT_PB][4 * AT_U], vr[AT_PB][4 * AT_U];
#pragma unroll
      for (int p = 0; p < AT_PB; p++) {
        const int64_t t = t0 + p < hi ? t0 + p : t0; /* a position past the split repeats t0; masked below */
        qmoe_at_row(Kc + (t * nkv + g) * D, D, vec, lane, kr[p]);
        qmoe_at_row(Vc + (t * nkv + g) * D, D, vec, lane, vr[p]);
      }
#pragma unroll
      for (int j = 0; j < AT_HW; j++) {
        acc_t s[AT_PB];
#pragma unroll
        for (int p = 0; p < AT_PB; p++) {
          acc_t dot = 0;
#pragma unroll
          for (int e = 0; e < 4 * AT_U; e++) dot += qv[j][e] * (acc_t)kr[p][e];
          s[p] = dot;
        }
#pragma unroll
        for (int p = 0; p < AT_PB; p++) s[p] = qmoe_warp_sum(s[p]) * scale;
        acc_t mn = m[j];
#pragma unroll
        for (int p = 0; p < AT_PB; p++)
          if (t0 + p < hi && s[p] > mn) mn = s[p];
        const acc_t corr = qmoe_exp(m[j] - mn);
        acc_t pe[AT_PB];
        l[j] *= corr;
#pragma unroll
        for (int p = 0; p < AT_PB; p++) {
          pe[p] = t0 + p < hi ? qmoe_exp(s[p] - mn) : (acc_t)0;
          l[j] += pe[p];
        }
#pragma unroll
        for (int e = 0; e < 4 * AT_U; e++) {
          acc_t v = o[j][e] * corr;
#pragma unroll
          for (int p = 0; p < AT_PB; p++) v += pe[p] * (acc_t)vr[p][e];
          o[j][e] = v;
        }
        m[j] = mn;
      }
    }
#pragma unroll
    for (int j = 0; j < AT_HW; j++) {
      if (h0 + j >= GQ) break;
      const int64_t hq = g * GQ + h0 + j;
      acc_t *mine = ws + (hq * S + sp) * (D + 2);
#pragma unroll
      for (int u = 0; u < AT_U; u++)
#pragma unroll
        for (int c = 0; c < 4; c++) {
          const int64_t d = 4 * lane + 128 * u + c;
          if (d < D) {
            if (S == 1) o_out[hq * D + d] = (float)(o[j][4 * u + c] / l[j]);
            else mine[2 + d] = o[j][4 * u + c];
          }
        }
      if (S > 1 && lane == 0) { mine[0] = m[j]; mine[1] = l[j]; }
    }
  }
  if (S == 1) return;
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) last = atomicInc(done + g, (unsigned)S - 1) == (unsigned)S - 1;
  __syncthreads();
  if (!last) return;
  __threadfence();
  // The group's merge: per head (one lane each), M = max over splits and L = Σ_k l_k·exp(m_k − M) in split
  // order; each split's max is then replaced by its factor exp(m_k − M) / L, and o[d] = Σ_k V_k[d]·factor_k in
  // split order, one thread per (head, d).
  for (int64_t j = threadIdx.x; j < GQ; j += blockDim.x) {
    acc_t *part = ws + (g * GQ + j) * S * (D + 2);
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
    for (int64_t k = 0; k < S; k++) {
      const acc_t mk = __ldcg(part + k * (D + 2));
      part[k * (D + 2)] = mk == QMOE_NEG_INF ? (acc_t)0 : qmoe_exp(mk - MM) / LL;
    }
  }
  __syncthreads();
  for (int64_t x = threadIdx.x; x < GQ * D; x += blockDim.x) {
    const int64_t j = x / D, d = x - j * D;
    const acc_t *part = ws + (g * GQ + j) * S * (D + 2);
    acc_t acc = 0;
    for (int64_t k = 0; k < S; k++) acc += __ldcg(part + k * (D + 2) + 2 + d) * __ldcg(part + k * (D + 2));
    o_out[(g * GQ + j) * D + d] = (float)acc;
  }
}
