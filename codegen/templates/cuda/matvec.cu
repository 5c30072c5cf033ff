// qmoe-kernel: qtype=1 acc=1 threads=128 rows_per_block=8 q8_rows_per_block=16 q8_rows=4 one_rpb=4 own_tokens=1 tok_min_blocks=2 tok_tile=8 tok_rows=4 one_row_max=2048
// qmoe-grid: qmoe_cdiv(rows, TOKENS > 1 ? 4 * TOK_ROWS : (rows <= ONE_ROW_MAX ? ONE_RPB : RPB)), 1, qmoe_cdiv(TOKENS, TOK_TILE)
// y = W·x: each warp computes 2 rows (x is loaded once for both), ${WARPS} warps per block; a matrix of at most
// ${ONE_ROW_MAX} rows (attn_output, attn_k, attn_v) gets a warp per row, twice the warps: on the H200 they
// had 1 to 2 warps per scheduler with 2 rows per warp (attn_q, 4096 rows, was slower with 1). A row's sum is the
// same either way (the same lanes, elements and order).
// T tokens (${TOK_ENTRY}; y[t] = W·x[t]): each warp computes ${TOK_ROWS} rows for the ${TOK_TILE} tokens ${TOK_TILE}·z..
// of block z, its rows staged once per chunk and decoded once per run for all of them (qmoe_row_dots_tok: per
// token the operations of the one-token path, so the bits of T calls; each x load serves ${TOK_ROWS} rows).
template <bool TOK>
static __device__ __forceinline__ void qmoe_matvec_body(const qmoe_args &a) {
${BIND}
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t row_bytes = cols / QB_ELEMS * QB_BYTES;
  if constexpr (!TOK) {
#if QMOE_Q8
    // q8: ${Q8_ROWS} rows per warp (each x record serves them all), a warp per row where there are at most
    // ${ONE_ROW_MAX}; x's run records, QX_MAX elements at a time, shared by the block's warps (every warp takes part
    // in the rounding and the barriers, rows or none)
    static_assert(${Q8_ROWS} * ${WARPS} == ${Q8_ROWS_PER_BLOCK} && ${WARPS} == ${ONE_RPB}, "the kernel line's q8 geometry");
    __shared__ int4 q8rec[QX_RUNS];
    __shared__ uint4 sh4[${WARPS}][${Q8_ROWS} * QROW_VECS];
    constexpr int R = ${Q8_ROWS};
    const bool one = rows <= ${ONE_ROW_MAX};
    const int64_t r0 = one ? (int64_t)blockIdx.x * ${WARPS} + warp : ((int64_t)blockIdx.x * ${WARPS} + warp) * R;
    const bool mine = r0 < rows;
    const uint8_t *rp[R];
#pragma unroll
    for (int r = 0; r < R; r++) rp[r] = W + (mine && !one && r0 + r < rows ? r0 + r : (mine ? r0 : 0)) * row_bytes;
    if (mine && lane == 0) qmoe_prefetch_l2(rp[0], (one ? rp[0] : rp[R - 1]) + row_bytes);
    ${GRID_WAIT}
    acc_t acc[R];
#pragma unroll
    for (int r = 0; r < R; r++) acc[r] = 0;
    for (int64_t c0 = 0; c0 < cols; c0 += QX_MAX) {
      const int n = (int)(cols - c0 < QX_MAX ? cols - c0 : QX_MAX);
      if (c0 > 0) __syncthreads(); // the last pass's records are read
      qmoe_q8_block(x + c0, n, q8rec);
      __syncthreads();
      if (!mine) continue;
      const uint8_t *rc[R];
#pragma unroll
      for (int r = 0; r < R; r++) rc[r] = rp[r] + c0 / QB_ELEMS * QB_BYTES;
      if (one) qmoe_row_dots_q8<1>(rc, q8rec, n / QB_ELEMS, sh4[warp], lane, acc);
      else qmoe_row_dots_q8<R>(rc, q8rec, n / QB_ELEMS, sh4[warp], lane, acc);
    }
    if (!mine) return;
    if (one) {
      const acc_t s0 = qmoe_warp_sum(acc[0]);
      if (lane == 0) y[r0] = (float)s0;
      return;
    }
#pragma unroll
    for (int r = 0; r < R; r++) {
      const acc_t sr = qmoe_warp_sum(acc[r]);
      if (lane == 0 && r0 + r < rows) y[r0 + r] = (float)sr;
    }
#else
    __shared__ uint4 sh[${WARPS}][2 * QROW_VECS]; // 2 rows' slices, then their span tables
    if (rows <= ${ONE_ROW_MAX}) {
      const int64_t r0 = (int64_t)blockIdx.x * ${WARPS} + warp;
      if (r0 >= rows) return;
      const uint8_t *rp[1] = { W + r0 * row_bytes };
      if (lane == 0) qmoe_prefetch_l2(rp[0], rp[0] + row_bytes); // as below
      ${GRID_WAIT}
      acc_t acc[1] = { 0 };
      qmoe_row_dots<1>(rp, x, cols / QB_ELEMS, sh[warp], lane, acc);
      const acc_t s0 = qmoe_warp_sum(acc[0]);
      if (lane == 0) y[r0] = (float)s0;
      return;
    }
    const int64_t r0 = ((int64_t)blockIdx.x * ${WARPS} + warp) * 2;
    if (r0 >= rows) return;
    const int64_t r1 = r0 + 1 < rows ? r0 + 1 : r0;
    const uint8_t *rp[2] = { W + r0 * row_bytes, W + r1 * row_bytes };
    // The warp's rows (weights: no kernel writes them) are asked into L2 before the wait for the kernel before,
    // so in a graph their first trip to memory overlaps it.
    if (lane == 0) qmoe_prefetch_l2(rp[0], rp[1] + row_bytes);
    ${GRID_WAIT}
    acc_t acc[2] = { 0, 0 };
    qmoe_row_dots<2>(rp, x, cols / QB_ELEMS, sh[warp], lane, acc);
    const acc_t s0 = qmoe_warp_sum(acc[0]), s1 = qmoe_warp_sum(acc[1]);
    if (lane == 0) {
      y[r0] = (float)s0;
      if (r0 + 1 < rows) y[r0 + 1] = (float)s1;
    }
#endif
  } else {
    constexpr int R = ${TOK_ROWS}, N = ${TOK_TILE};
    __shared__ uint4 sh[${WARPS}][R * STAGE_VECS];
    ${GRID_WAIT}
    const int64_t r0 = ((int64_t)blockIdx.x * ${WARPS} + warp) * R;
    if (r0 >= rows) return;
    const uint8_t *rp[R];
#pragma unroll
    for (int r = 0; r < R; r++) rp[r] = W + (r0 + r < rows ? r0 + r : r0) * row_bytes;
    const int64_t t0 = (int64_t)blockIdx.z * N;
    const int nt = (int)(qmoe_tokens - t0 < N ? qmoe_tokens - t0 : N);
    const float *xt[N];
#pragma unroll
    for (int n = 0; n < N; n++) xt[n] = x + (t0 + (n < nt ? n : 0)) * cols;
    acc_t acc[R][N];
#pragma unroll
    for (int r = 0; r < R; r++)
#pragma unroll
      for (int n = 0; n < N; n++) acc[r][n] = 0;
    int keep[R];
    keep[0] = -1;
    qmoe_row_dots_tok<R, N>(rp, xt, cols / QB_ELEMS, sh[warp], lane, acc, keep);
#pragma unroll
    for (int n = 0; n < N; n++) {
      if (n >= nt) break;
#pragma unroll
      for (int r = 0; r < R; r++) {
        const acc_t s = qmoe_warp_sum(acc[r][n]);
        if (lane == 0 && r0 + r < rows) y[(t0 + n) * rows + r0 + r] = (float)s;
      }
    }
  }
}
extern "C" __global__ void __launch_bounds__(${THREADS}, ${MIN_BLOCKS}) ${ENTRY}(const qmoe_args a) {
  qmoe_matvec_body<false>(a);
}
extern "C" __global__ void __launch_bounds__(${THREADS}, ${TOK_MIN_BLOCKS}) ${TOK_ENTRY}(const qmoe_args a) {
  qmoe_matvec_body<true>(a);
}
