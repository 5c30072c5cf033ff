// qmoe-kernel: qtype=1 acc=1 threads=128 rows_per_block=4 q8_rows_per_block=8 q8_rows=4 q8_stage_bytes=1700 q8_stage_elems=2048 tok_f_per_block=8 own_tokens=1 tok_min_blocks=2 tok_tile=8 list_cap=2048
// qmoe-grid: qmoe_cdiv(F, TOKENS > 1 ? TOK_F_PER_BLOCK : RPB), TOKENS > 1 ? E + 1 : K, 1
// h[k][f] = silu(Wg[ids[k]]·x)[f] · (Wu[ids[k]]·x)[f] for all K chosen experts in one launch: grid.y = K, the
// expert id is read on the device. Each warp computes gate row f and up row f together (x loaded once);
// SwiGLU is evaluated in acc_t. An id outside [0, E) yields NaN in its outputs (never a wrong expert).
// T tokens (${TOK_ENTRY}): the tokens are grouped by expert on the device. Block (f-tile, e) finds the (token, k)
// slots that chose expert e (block y = E: the slots with an invalid id, which get NaN) and computes its rows for
// them ${TOK_TILE} at a time (each warp the gate and up rows of two f), the rows staged once per chunk for all of
// them; per slot the operations of the one-token path, so the bits of T calls. Each expert's rows are read once
// per ${TOK_TILE} of its tokens.
template <bool TOK>
static __device__ __forceinline__ void qmoe_gate_up_body(const qmoe_args &a) {
${BIND}
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t row_bytes = H / QB_ELEMS * QB_BYTES;
  if constexpr (!TOK) {
    const int64_t k = blockIdx.y;
#if QMOE_Q8
    // q8: two f per warp (rows gate f, up f, gate f + 1, up f + 1: each x record serves 4 rows), ${Q8_ROWS_PER_BLOCK}
    // f per block; x's run records, QX_MAX elements at a time, shared by the block's warps (every warp takes part in
    // the rounding and the barriers)
    static_assert(2 * ${WARPS} == ${Q8_ROWS_PER_BLOCK} && ${Q8_ROWS} == 4, "the kernel line's q8 geometry");
    __shared__ uint4 sh4[${WARPS}][4 * QROW_VECS];
    __shared__ int4 q8rec[QX_RUNS];
    const int64_t f0 = (int64_t)blockIdx.x * ${Q8_ROWS_PER_BLOCK} + 2 * warp, f1 = f0 + 1 < F ? f0 + 1 : f0;
    const int e = k < K ? ids[k] : -1;
    const bool mine = f0 < F && k < K && e >= 0 && e < E;
    const int64_t at0 = mine ? ((int64_t)e * F + f0) * row_bytes : 0, at1 = mine ? ((int64_t)e * F + f1) * row_bytes : 0;
    // the first chunk is asked for before x is rounded (weights: no kernel writes them)
    int pre[4] = { 0, 0, 0, 0 };
    if (mine) {
      const uint8_t *rp[4] = { Wg + at0, Wu + at0, Wg + at1, Wu + at1 };
      qmoe_stage_first<4>(rp, H / QB_ELEMS < QX_MAX / QB_ELEMS ? H / QB_ELEMS : QX_MAX / QB_ELEMS, sh4[warp], lane, pre);
    }
    acc_t acc[4] = { 0, 0, 0, 0 };
    for (int64_t c0 = 0; c0 < H; c0 += QX_MAX) {
      const int n = (int)(H - c0 < QX_MAX ? H - c0 : QX_MAX);
      if (c0 > 0) __syncthreads(); // the last pass's records are read
      qmoe_q8_block(x + c0, n, q8rec);
      __syncthreads();
      if (!mine) continue;
      const int64_t cb = c0 / QB_ELEMS * QB_BYTES;
      const uint8_t *rp[4] = { Wg + at0 + cb, Wu + at0 + cb, Wg + at1 + cb, Wu + at1 + cb };
      qmoe_row_dots_q8<4>(rp, q8rec, n / QB_ELEMS, sh4[warp], lane, acc, c0 == 0, pre);
    }
    if (f0 >= F || k >= K) return;
#pragma unroll
    for (int p = 0; p < 2; p++) {
      const acc_t g = qmoe_warp_sum(acc[2 * p]), u = qmoe_warp_sum(acc[2 * p + 1]);
      if (lane == 0 && f0 + p < F) {
        const acc_t silu = g / ((acc_t)1 + qmoe_exp(-g));
        h[k * F + f0 + p] = mine ? (float)(silu * u) : __int_as_float(0x7fc00000);
      }
    }
#else
    __shared__ uint4 sh[${WARPS}][2 * QROW_VECS]; // 2 rows' slices, then their span tables
    const int64_t f = (int64_t)blockIdx.x * ${WARPS} + warp;
    if (f >= F || k >= K) return;
    const int e = ids[k];
    if (e < 0 || e >= E) {
      if (lane == 0) h[k * F + f] = __int_as_float(0x7fc00000);
      return;
    }
    const int64_t at = ((int64_t)e * F + f) * row_bytes;
    const uint8_t *rp[2] = { Wg + at, Wu + at };
    acc_t acc[2] = { 0, 0 };
    qmoe_row_dots<2>(rp, x, H / QB_ELEMS, sh[warp], lane, acc);
    const acc_t g = qmoe_warp_sum(acc[0]), u = qmoe_warp_sum(acc[1]);
    if (lane == 0) {
      const acc_t silu = g / ((acc_t)1 + qmoe_exp(-g));
      h[k * F + f] = (float)(silu * u);
    }
#endif
  } else {
    // two f per warp: rows gate f, up f, gate f + 1, up f + 1
    static_assert(2 * ${WARPS} == ${TOK_F_PER_BLOCK}, "tok_f_per_block of the kernel line");
    constexpr int N = ${TOK_TILE};
    __shared__ uint4 sh[${WARPS}][4 * STAGE_VECS];
    __shared__ int list[${LIST_CAP}];
    __shared__ int warp_n[${WARPS}];
    const int64_t f = ((int64_t)blockIdx.x * ${WARPS} + warp) * 2;
    const int64_t f1 = f + 1 < F ? f + 1 : f;
    const int e = blockIdx.y < E ? (int)blockIdx.y : -1; // -1: the slots with an invalid id
    const int64_t at = ((int64_t)(e < 0 ? 0 : e) * F + (f < F ? f : 0)) * row_bytes;
    const int64_t at1 = ((int64_t)(e < 0 ? 0 : e) * F + (f < F ? f1 : 0)) * row_bytes;
    const uint8_t *rp[4] = { Wg + at, Wu + at, Wg + at1, Wu + at1 };
    int keep[4]; // the warp's rows, staged by its first tile when they fit one chunk
    keep[0] = -1;
    int64_t scan = 0;
    while (scan < qmoe_tokens * K) {
      int n = 0;
      qmoe_expert_slots<${LIST_CAP}>(ids, qmoe_tokens * K, e, E, &scan, list, &n, warp_n);
      for (int j = 0; j < n && f < F; j += N) {
        const int nt = n - j < N ? n - j : N;
        if (e < 0) {
          if (lane < nt) {
            float *hp = h + (int64_t)list[j + lane] * F;
            hp[f] = hp[f1] = __int_as_float(0x7fc00000);
          }
          continue;
        }
        const float *xt[N];
#pragma unroll
        for (int i = 0; i < N; i++) xt[i] = x + (int64_t)(list[j + (i < nt ? i : 0)] / K) * H;
        acc_t acc[4][N];
#pragma unroll
        for (int r = 0; r < 4; r++)
#pragma unroll
          for (int i = 0; i < N; i++) acc[r][i] = 0;
        qmoe_row_dots_tok<4, N>(rp, xt, H / QB_ELEMS, sh[warp], lane, acc, keep);
#pragma unroll
        for (int i = 0; i < N; i++) {
          if (i >= nt) break;
#pragma unroll
          for (int p = 0; p < 2; p++) {
            const acc_t g = qmoe_warp_sum(acc[2 * p][i]), u = qmoe_warp_sum(acc[2 * p + 1][i]);
            if (lane == 0 && f + p < F) {
              const acc_t silu = g / ((acc_t)1 + qmoe_exp(-g));
              h[(int64_t)list[j + i] * F + f + p] = (float)(silu * u);
            }
          }
        }
      }
      __syncthreads(); // the list is rebuilt
    }
  }
}
extern "C" __global__ void __launch_bounds__(${THREADS}, ${MIN_BLOCKS}) ${ENTRY}(const qmoe_args a) {
  qmoe_gate_up_body<false>(a);
}
extern "C" __global__ void __launch_bounds__(${THREADS}, ${TOK_MIN_BLOCKS}) ${TOK_ENTRY}(const qmoe_args a) {
  qmoe_gate_up_body<true>(a);
}
