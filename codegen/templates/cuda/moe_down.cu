// qmoe-kernel: qtype=1 acc=1 threads=128 rows_per_block=4 q8_rows_per_block=4 q8_x_max=8192 stage_elems=768 q8_stage_elems=768 q8_stage_bytes=2048 max_k=64 own_tokens=1 tok_min_blocks=2 tok_tile=8 tok_rows=4 list_cap=2048 counters=65536
// qmoe-limit: K <= MAX_K
// qmoe-limit: H <= COUNTERS * 4 * TOK_ROWS
// qmoe-grid: qmoe_cdiv(H, TOKENS > 1 ? 4 * TOK_ROWS : RPB), TOKENS > 1 ? E + 1 : 1, 1
// qmoe-workspace: TOKENS > 1 ? COUNTERS * 4 + TOKENS * K * H * ACC_BYTES : 0
// y[r] = Σ_k w[k] · (Wd[ids[k]]·h[k])[r]: each block computes ${RPB} output rows; its warps take the (slot k,
// row pair) items and leave each dot product in shared memory; then one thread per row sums over k in order
// 0..K-1 in acc_t. No atomics: the result does not depend on scheduling. K <= ${MAX_K}.
// T tokens (${TOK_ENTRY}): block (tile of ${WARPS}·${TOK_ROWS} rows, e) finds the (token, k) slots that chose expert e (block y = E: the
// slots with an invalid id, NaN) and computes the tile's rows of Wd[e]·h[t][k] for them ${TOK_TILE} at a time
// (the rows staged once per chunk for all), into the workspace: part[t·K + k][r] in acc_t. The last of the E + 1
// blocks of a tile to finish (a self-resetting counter per tile) sums y[t][r] = Σ_k w[t][k]·part in k order,
// as the one-token path does: the bits of T calls.
template <bool TOK>
static __device__ __forceinline__ void qmoe_down_body(const qmoe_args &a) {
${BIND}
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t row_bytes = F / QB_ELEMS * QB_BYTES;
  if constexpr (!TOK) {
    // ${RPB} rows per block (the kernel line's rows_per_block, q8_rows_per_block for q8). Where a row is one chunk
    // (Qwen3-30B: F = 768, a whole row of q4_k or q6_k; for q8 also F <= QX_MAX) the block's warps take the (slot,
    // row pair) items in turn, D at a time: a warp asks for its D items' rows at once (each into its own slice of
    // its buffer, each item a cp.async group of its own) and computes each as soon as its own rows are in. With 4
    // rows per block (Qwen3-30B: 512 blocks, 8 slots x 2 row pairs, so 4 items per warp) every warp asks for all
    // its rows at the start, and the blocks of an SM keep about all of its share of the weights in flight
    // together; q8 rounds h meanwhile, the h of as many slots as fit in one pass (all 8 of Qwen3's), once per
    // block. With 2 rows per block and the experts k = warp, warp + 4, ... asked one at a time (f32) or 8 rows and
    // two trips per warp (q8), down took 13.2 and 17.7 us on the H200 (docs/cuda.md).
    // Otherwise each item stages its rows chunk by chunk (q8: one slot at a time, F in pieces, the first RB/2 warps
    // a row pair each, their sums carried across the pieces). A row's sum per slot is the one-token order either
    // way; then one thread per row sums w_k * dot_k over k = 0..K-1 in order (no atomics: deterministic).
    constexpr int RB = ${RPB}, NP = RB / 2; // rows, row pairs per block
    static_assert(RB % 2 == 0 && NP <= ${WARPS}, "rows per block of the kernel line: row pairs, at most one per warp");
#if QMOE_Q8
    __shared__ int4 q8rec[QX_RUNS];
    constexpr int QREC_BYTES = (int)sizeof(int4) * QX_RUNS;
    const bool x_one_pass = F <= QX_MAX;
    const int kp = (int)(QX_MAX / (F > 0 ? F : 1)); // slots per pass
#else
    constexpr int QREC_BYTES = 0;
    const bool x_one_pass = true;
    const int kp = (int)K;
#endif
    __shared__ acc_t part[${MAX_K}][RB];
    // D items' slices per warp in what shared memory is left (at least one)
    constexpr int D0 = (44 * 1024 - QREC_BYTES - (int)sizeof(acc_t) * ${MAX_K} * RB) / (${WARPS} * 2 * QROW_VECS * 16);
    constexpr int D = D0 < 1 ? 1 : D0 > 4 ? 4 : D0;
    __shared__ uint4 shd[${WARPS}][D * 2 * QROW_VECS];
    const int64_t rb0 = (int64_t)blockIdx.x * RB;
    const acc_t nan = (acc_t)__int_as_float(0x7fc00000);
    // item (k, p)'s two row sums into part (NaN for an invalid expert)
    auto put = [&](int k, int p, const acc_t *acc, bool ok) {
      const acc_t s0 = qmoe_warp_sum(acc[0]), s1 = qmoe_warp_sum(acc[1]);
      if (lane == 0) {
        part[k][2 * p] = ok ? s0 : nan;
        part[k][2 * p + 1] = ok ? s1 : nan;
      }
    };
    if (x_one_pass && F / QB_ELEMS <= CH_BLOCKS) {
      uint4 *wsh = shd[warp];
      int pre[D][2];
      const int nk0 = K < kp ? K : kp;
      auto ask = [&](int k0, int nk, int j0) { // items warp + (j0 + d)·WARPS of the pass at k0
#pragma unroll
        for (int d = 0; d < D; d++) {
          const int i = warp + (j0 + d) * ${WARPS};
          pre[d][0] = pre[d][1] = 0;
          if (i < nk * NP) {
            const int k = k0 + i / NP, p = i % NP;
            const int64_t r0 = rb0 + 2 * p;
            const int e = __ldcg(ids + k); // from L2: it may be read before the wait (below)
            if (r0 < H && e >= 0 && e < E) {
              const uint8_t *base = Wd + (int64_t)e * H * row_bytes;
              const uint8_t *rp[2] = { base + r0 * row_bytes, base + (r0 + 1 < H ? r0 + 1 : r0) * row_bytes };
              qmoe_stage_first<2>(rp, F / QB_ELEMS, wsh + d * 2 * QROW_VECS, lane, pre[d]);
            }
          }
          // item d's group, empty where there is no item: always D groups, so item d waits for its own alone
          qmoe_cp_async_commit();
        }
      };
      // The first items' rows are asked for before the wait for the kernel before where no kernel that may still
      // run writes ids (args.early, set by the backend: in the forward the router wrote them two kernels before,
      // and gate+up, which this one follows, waited for it), so their trip to memory overlaps gate+up's end;
      // otherwise after it. The weights themselves no kernel writes.
      if (!qmoe_early_ids) ${GRID_WAIT}
      ask(0, nk0, 0);
      if (qmoe_early_ids) ${GRID_WAIT}
      for (int k0 = 0; k0 < K; k0 += kp) {
        const int nk = K - k0 < kp ? K - k0 : kp;
#if QMOE_Q8
        if (k0 > 0) __syncthreads(); // the last pass's records are read
        qmoe_q8_block(h + (int64_t)k0 * F, (int)(nk * F), q8rec);
        __syncthreads();
#endif
        for (int j0 = 0; warp + j0 * ${WARPS} < nk * NP; j0 += D) {
          if (k0 > 0 || j0 > 0) ask(k0, nk, j0);
#pragma unroll
          for (int d = 0; d < D; d++) {
            const int i = warp + (j0 + d) * ${WARPS};
            if (i >= nk * NP) break;
            const int k = k0 + i / NP, p = i % NP;
            const int64_t r0 = rb0 + 2 * p;
            if (r0 >= H) continue;
            const int e = ids[k];
            acc_t acc[2] = { 0, 0 };
            // items d + 1 .. D - 1 may still be in flight while this one is computed
            qmoe_cp_async_wait_pending(D - 1 - d);
            __syncwarp();
            if (e >= 0 && e < E) {
              const uint8_t *base = Wd + (int64_t)e * H * row_bytes;
              const uint8_t *rp[2] = { base + r0 * row_bytes, base + (r0 + 1 < H ? r0 + 1 : r0) * row_bytes };
#if QMOE_Q8
              qmoe_row_dots_q8<2>(rp, q8rec + (int64_t)(i / NP) * (F / UNROLL), F / QB_ELEMS, wsh + d * 2 * QROW_VECS,
                                  lane, acc, true, pre[d], true);
#else
              qmoe_row_dots<2>(rp, h + (int64_t)k * F, F / QB_ELEMS, wsh + d * 2 * QROW_VECS, lane, acc, pre[d], true);
#endif
            }
            put(k, p, acc, e >= 0 && e < E);
          }
          __syncwarp(); // the next items overwrite the slices
        }
      }
    } else {
      ${GRID_WAIT}
#if QMOE_Q8
      const int64_t r0 = rb0 + 2 * warp;
      const int nopre[2] = { 0, 0 };
      const bool mine = warp < NP && r0 < H;
      const int64_t rr0 = mine ? r0 : 0, rr1 = mine && r0 + 1 < H ? r0 + 1 : rr0;
      for (int k = 0; k < K; k++) {
        const int e = ids[k];
        const bool ok = e >= 0 && e < E;
        const uint8_t *base = Wd + (int64_t)(ok ? e : 0) * H * row_bytes;
        acc_t acc[2] = { 0, 0 };
        for (int64_t c0 = 0; c0 < F; c0 += QX_MAX) {
          const int n = (int)(F - c0 < QX_MAX ? F - c0 : QX_MAX);
          __syncthreads(); // the last pass's records are read
          if (ok) qmoe_q8_block(h + (int64_t)k * F + c0, n, q8rec); // ok is the same for the whole block
          __syncthreads();
          if (!mine || !ok) continue;
          const uint8_t *rp[2] = { base + rr0 * row_bytes + c0 / QB_ELEMS * QB_BYTES,
                                   base + rr1 * row_bytes + c0 / QB_ELEMS * QB_BYTES };
          qmoe_row_dots_q8<2>(rp, q8rec, n / QB_ELEMS, shd[warp], lane, acc, false, nopre);
        }
        if (mine) put(k, warp, acc, ok);
      }
#else
      for (int i = warp; i < K * NP; i += ${WARPS}) {
        const int k = i / NP, p = i % NP;
        const int64_t r0 = rb0 + 2 * p;
        if (r0 >= H) continue;
        const int e = ids[k];
        const bool ok = e >= 0 && e < E;
        acc_t acc[2] = { 0, 0 };
        if (ok) {
          const uint8_t *base = Wd + (int64_t)e * H * row_bytes;
          const uint8_t *rp[2] = { base + r0 * row_bytes, base + (r0 + 1 < H ? r0 + 1 : r0) * row_bytes };
          qmoe_row_dots<2>(rp, h + (int64_t)k * F, F / QB_ELEMS, shd[warp], lane, acc);
        }
        put(k, p, acc, ok);
      }
#endif
    }
    __syncthreads();
    if (threadIdx.x < RB && rb0 + threadIdx.x < H) {
      acc_t s = 0;
      for (int k = 0; k < K; k++) s = qmoe_fma3((acc_t)w[k], part[k][threadIdx.x], s);
      y[rb0 + threadIdx.x] = (float)s;
    }
  } else {
    ${GRID_WAIT}
    constexpr int R = ${TOK_ROWS}, N = ${TOK_TILE}, TR = ${WARPS} * ${TOK_ROWS}; // TR rows per tile
    __shared__ uint4 sh[${WARPS}][R * STAGE_VECS];
    __shared__ int list[${LIST_CAP}];
    __shared__ int warp_n[${WARPS}];
    __shared__ int last;
    const int64_t tile = blockIdx.x, r0 = tile * TR + R * warp;
    const int e = blockIdx.y < E ? (int)blockIdx.y : -1; // -1: the slots with an invalid id
    const uint8_t *base = Wd + (int64_t)(e < 0 ? 0 : e) * H * row_bytes;
    const uint8_t *rp[R];
#pragma unroll
    for (int r = 0; r < R; r++) rp[r] = base + (r0 + r < H ? r0 + r : 0) * row_bytes;
    /* workspace: unsigned counters[COUNTERS] (every call leaves them 0; attention and router_topk use them too),
     * then acc_t part[T·K][H] */
    unsigned *done = (unsigned *)a.buf[7];
    acc_t *part = (acc_t *)(a.buf[7] + (uint64_t)${COUNTERS} * 4);
    int keep[R]; // the warp's rows, staged by its first tile when they fit one chunk
    keep[0] = -1;
    int64_t scan = 0;
    while (scan < qmoe_tokens * K) {
      int n = 0;
      qmoe_expert_slots<${LIST_CAP}>(ids, qmoe_tokens * K, e, E, &scan, list, &n, warp_n);
      for (int j = 0; j < n && r0 < H; j += N) {
        const int nt = n - j < N ? n - j : N;
        if (e < 0) {
          if (lane < nt) {
            acc_t *p = part + (int64_t)list[j + lane] * H;
            for (int r = 0; r < R; r++)
              if (r0 + r < H) p[r0 + r] = (acc_t)__int_as_float(0x7fc00000);
          }
          continue;
        }
        const float *xt[N];
#pragma unroll
        for (int i = 0; i < N; i++) xt[i] = h + (int64_t)list[j + (i < nt ? i : 0)] * F;
        acc_t acc[R][N];
#pragma unroll
        for (int r = 0; r < R; r++)
#pragma unroll
          for (int i = 0; i < N; i++) acc[r][i] = 0;
        qmoe_row_dots_tok<R, N>(rp, xt, F / QB_ELEMS, sh[warp], lane, acc, keep);
#pragma unroll
        for (int i = 0; i < N; i++) {
          if (i >= nt) break;
#pragma unroll
          for (int r = 0; r < R; r++) {
            const acc_t s = qmoe_warp_sum(acc[r][i]);
            if (lane == 0 && r0 + r < H) part[(int64_t)list[j + i] * H + r0 + r] = s;
          }
        }
      }
      __syncthreads(); // the list is rebuilt
    }
    // the last of the tile's E + 1 blocks sums the tile's rows of every token, k in order
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) last = atomicInc(done + tile, (unsigned)E) == (unsigned)E;
    __syncthreads();
    if (!last) return;
    __threadfence();
    for (int64_t i = threadIdx.x; i < qmoe_tokens * TR; i += blockDim.x) {
      const int64_t t = i / TR, r = tile * TR + i % TR;
      if (r >= H) continue;
      acc_t s = 0;
      for (int64_t k = 0; k < K; k++) s = qmoe_fma3((acc_t)w[t * K + k], __ldcg(part + (t * K + k) * H + r), s);
      y[t * H + r] = (float)s;
    }
  }
}
extern "C" __global__ void __launch_bounds__(${THREADS}, ${MIN_BLOCKS}) ${ENTRY}(const qmoe_args a) {
  qmoe_down_body<false>(a);
}
extern "C" __global__ void __launch_bounds__(${THREADS}, ${TOK_MIN_BLOCKS}) ${TOK_ENTRY}(const qmoe_args a) {
  qmoe_down_body<true>(a);
}
