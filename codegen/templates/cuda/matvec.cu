// qmoe-kernel: qtype=1 acc=1 threads=128 rows_per_block=8 q8_rows_per_block=16 q8_rows=4 q8_stage_bytes=1700 q8_stage_elems=2048 one_rpb=4 mid_row_max=8192 own_tokens=1 tok_min_blocks=2 tok_tile=8 tok_rows=4 one_row_max=2048
// qmoe-grid: qmoe_cdiv(rows, TOKENS > 1 ? 4 * TOK_ROWS : (rows <= ONE_ROW_MAX ? ONE_RPB : rows <= MID_ROW_MAX ? 2 * ONE_RPB : RPB)), 1, qmoe_cdiv(TOKENS, TOK_TILE)
// y = W·x: each warp computes 2 rows (x is loaded once for both), ${WARPS} warps per block; a matrix of at most
// ${ONE_ROW_MAX} rows (attn_output, attn_k, attn_v) gets a warp per row, twice the warps: on the H200 they
// had 1 to 2 warps per scheduler with 2 rows per warp (attn_q, 4096 rows, was slower with 1). A row's sum is the
// same either way (the same lanes, elements and order).
// T tokens (${TOK_ENTRY}; y[t] = W·x[t]): each warp computes ${TOK_ROWS} rows for the ${TOK_TILE} tokens ${TOK_TILE}·z..
// of block z, its rows staged once per chunk and decoded once per run for all of them (qmoe_row_dots_tok: per
// token the operations of the one-token path, so the bits of T calls; each x load serves ${TOK_ROWS} rows).
#if QMOE_Q8
// One warp's R rows R0.. of W·x (q8): their first chunk is asked for, the kernel before waited for, x rounded into
// the block's run records (QX_MAX elements at a time; every warp takes part in the rounding and the barriers, rows or
// none), then the rows' sums.
template <int R>
static __device__ __forceinline__ void qmoe_matvec_q8(const uint8_t *W, const float *x, float *y, int64_t rows,
                                                      int64_t cols, int64_t r0, uint4 *sh, int4 *q8rec, int lane) {
  const int64_t row_bytes = cols / QB_ELEMS * QB_BYTES;
  const bool mine = r0 < rows;
  const uint8_t *rp[R];
#pragma unroll
  for (int r = 0; r < R; r++) rp[r] = W + (mine ? (r0 + r < rows ? r0 + r : r0) : 0) * row_bytes;
  int pre[R];
#pragma unroll
  for (int r = 0; r < R; r++) pre[r] = 0;
  if (mine) qmoe_stage_first<R>(rp, cols / QB_ELEMS < QX_MAX / QB_ELEMS ? cols / QB_ELEMS : QX_MAX / QB_ELEMS, sh, lane, pre);
  qmoe_grid_wait();
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
    qmoe_row_dots_q8<R>(rc, q8rec, n / QB_ELEMS, sh, lane, acc, c0 == 0, pre);
  }
  if (!mine) return;
#pragma unroll
  for (int r = 0; r < R; r++) {
    const acc_t sr = qmoe_warp_sum(acc[r]);
    if (lane == 0 && r0 + r < rows) y[r0 + r] = (float)sr;
  }
}
#endif
template <bool TOK>
static __device__ __forceinline__ void qmoe_matvec_body(const qmoe_args &a) {
${BIND}
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t row_bytes = cols / QB_ELEMS * QB_BYTES;
  if constexpr (!TOK) {
#if QMOE_Q8
    // q8: a warp per row where there are at most ${ONE_ROW_MAX}, 2 rows per warp up to ${MID_ROW_MAX}, else
    // ${Q8_ROWS} (each x record serves them all; more rows per block round x less often, fewer blocks fill the GPU less)
    static_assert(${Q8_ROWS} * ${WARPS} == ${Q8_ROWS_PER_BLOCK} && ${WARPS} == ${ONE_RPB}, "the kernel line's q8 geometry");
    __shared__ uint4 sh4[${WARPS}][${Q8_ROWS} * QROW_VECS];
    __shared__ int4 q8rec[QX_RUNS];
    const int64_t wb = (int64_t)blockIdx.x * ${WARPS} + warp;
    (void)row_bytes;
    if (rows <= ${ONE_ROW_MAX}) qmoe_matvec_q8<1>(W, x, y, rows, cols, wb, sh4[warp], q8rec, lane);
    else if (rows <= ${MID_ROW_MAX}) qmoe_matvec_q8<2>(W, x, y, rows, cols, wb * 2, sh4[warp], q8rec, lane);
    else qmoe_matvec_q8<${Q8_ROWS}>(W, x, y, rows, cols, wb * ${Q8_ROWS}, sh4[warp], q8rec, lane);
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
