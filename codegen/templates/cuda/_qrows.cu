// ---- ${QNAME} rows: ${BE} elements in ${BB} bytes per block ----
#define QB_ELEMS ${BE}
#define QB_BYTES ${BB}
#define CH_BLOCKS ${CH}                             // blocks of one row staged per chunk
#define STAGE_DATA ((CH_BLOCKS * QB_BYTES + 15) / 16 + 1) // 16-byte vectors covering a chunk at any alignment
#define STAGE_PAD 4                                  // 64 bytes before and after each row's chunk, so the
                                                     // arms of a decode's ?: that are not taken read in bounds
#define STAGE_VECS (STAGE_PAD + STAGE_DATA + STAGE_PAD) // one row's slice of the warp's buffer
#define STAGE_U ((STAGE_DATA + 31) / 32)             // vectors per lane
#define UNROLL ${UNROLL}                             // elements per lane per step (32·UNROLL per warp)
// SPAN tables (f32 affine runs, expr.lua SPAN): a run's A and B keep one value over a span of RUN_SPAN elements
// (q4_k: a sub-block of 32, q6_k: 16), so the warp decodes them once per span of a staged chunk, its lanes
// sharing the work, into a table after the row slices (float2 (A, B) per span, row-major): the run then reads
// them with one shared load instead of decoding them itself, once per run of UNROLL elements. The same
// functions on the same bytes: the same bits. QMOE_NO_SPAN_TAB: every run decodes its own (docs/cuda.md).
#if ${AFFINE} && !defined(QMOE_NO_SPAN_TAB) && ${SPAN} > 0
#define QMOE_SPAN_TAB 1
#define RUN_SPAN ${SPAN}
#define TAB_SPANS (QB_ELEMS / RUN_SPAN)              // spans per block
#define TAB_VECS ((CH_BLOCKS * TAB_SPANS * 8 + 15) / 16) // one row's table (16-byte vectors)
#else
#define QMOE_SPAN_TAB 0
#define TAB_VECS 0
#endif
#define QROW_VECS (STAGE_VECS + TAB_VECS)            // one row's share of a one-token warp's buffer
#if ${AFFINE} && ${PACKED} && ${PACKED_A4} && !defined(QMOE_NO_WORD_A4)
#define QMOE_ROWS_WORDS 1 // the one-token runs read V by words, aligned ones where the rows allow (A4 below)
#else
#define QMOE_ROWS_WORDS 0
#endif

// Copies blocks [b0, b0+nb) of R rows into the warp's shared buffer SH (R slices of STAGE_VECS) with coalesced
// 16-byte asynchronous copies (cp.async: global -> shared without registers), all in flight before the one
// wait. The aligned span may start up to 15 bytes before a row chunk and end up to 15 bytes after it;
// buffers are 256-byte aligned with sizes rounded up to 256 bytes (backend_cuda.c), so the span never leaves
// the allocation. OFF[r] is where row r's bytes start in its slice of SH. qmoe_stage_issue: the copies alone.
template <int R>
static __device__ __forceinline__ void qmoe_stage_issue(const uint8_t *const *rows, int64_t b0, int nb, uint4 *sh,
                                                        int lane, int *off) {
#pragma unroll
  for (int r = 0; r < R; r++) {
    const uint64_t p = (uint64_t)(rows[r] + b0 * QB_BYTES);
    const uint64_t a0 = p & ~(uint64_t)15;
    off[r] = (int)(p - a0);
    const int n16 = (off[r] + nb * QB_BYTES + 15) >> 4;
    const uint4 *src = (const uint4 *)a0;
    uint4 *dst = sh + r * STAGE_VECS + STAGE_PAD;
#pragma unroll
    for (int u = 0; u < STAGE_U; u++) {
      const int j = lane + 32 * u;
      if (j < n16) qmoe_cp_async16(dst + j, src + j);
    }
  }
}
template <int R>
static __device__ __forceinline__ void qmoe_stage_rows(const uint8_t *const *rows, int64_t b0, int nb, uint4 *sh,
                                                       int lane, int *off) {
  qmoe_stage_issue<R>(rows, b0, nb, sh, lane, off);
  qmoe_cp_async_wait_all();
  __syncwarp();
}

// acc[r] += Σ decode(row r)[e] · x[e] over the NE elements of one staged chunk, 32·UNROLL per step (see the generator
// for which elements a lane takes). G: the last step may be partial (only where NE need not be a multiple of
// 256, i.e. rows that end inside a step).
#if ${PACKED} && ${AFFINE}
// The run's words of V + off bytes (expr.lua PACKED), 4 elements each, read by <q>_run_w4 where the block starts
// at a multiple of 4 (M = 0), <q>_run_w2 at 2 mod 4 (M = 2), else <q>_run_w (any alignment).
template <int M>
static __device__ __forceinline__ uint32_t qmoe_run_word(const uint8_t *blk, int ig, int t0) {
#if ${PACKED_A4}
  if constexpr (M == 0) return qmoe_${QNAME}_run_w4(blk, ig, t0);
#endif
#if ${PACKED_W2}
  if constexpr (M == 2) return qmoe_${QNAME}_run_w2(blk, ig, t0);
#endif
  return qmoe_${QNAME}_run_w(blk, ig, t0);
}
// The run's UNROLL / 4 words.
template <int M>
static __device__ __forceinline__ void qmoe_run_words(const uint8_t *blk, int ig, uint32_t *w) {
#pragma unroll
  for (int t0 = 0; t0 < UNROLL; t0 += 4) w[t0 / 4] = qmoe_run_word<M>(blk, ig, t0);
}
// Σ V·x over a run (the same f32 values as run_v's).
template <int M>
static __device__ __forceinline__ float qmoe_run_sv(const uint8_t *blk, int ig, const float *xr) {
  float vq[UNROLL];
#pragma unroll
  for (int t0 = 0; t0 < UNROLL; t0 += 4) {
    const uint32_t wq = qmoe_run_word<M>(blk, ig, t0);
#pragma unroll
    for (int k = 0; k < 4; k++) vq[t0 + k] = qmoe_q_unpack(wq, k, ${RUN_W_BASE});
  }
  float sv = 0.0f;
#pragma unroll
  for (int t = 0; t < UNROLL; t++) sv = fmaf(vq[t], xr[t], sv);
  return sv;
}
#endif

// A4: every row's bytes start at a multiple of 4 in the buffer (OFF[r] % 4 == 0, and blocks of a multiple of 4
// bytes), so the run's words are aligned reads (<q>_run_w4, expr.lua PACKED A4): no funnel shift of two words.
template <int R, bool G, bool A4>
static __device__ __forceinline__ void qmoe_dot_chunk(const uint4 *sh, const int *off, const float *xc, int ne,
                                                      int lane, acc_t *acc) {
#if QMOE_SPAN_TAB
  const float2 *tab = (const float2 *)(sh + R * STAGE_VECS);
#endif
  for (int e0 = 0; e0 < ne; e0 += 32 * UNROLL) {
    // the lane's x and block, addressed once per step
    const float *xl = xc + e0 + ${XLANE};
    const uint8_t *bl[R];
#pragma unroll
    for (int r = 0; r < R; r++) bl[r] = (const uint8_t *)(sh + r * STAGE_VECS + STAGE_PAD) + off[r] + ${STEPBLK} * QB_BYTES;
#if ${X_RUN} // 1: lane runs read x by 16-byte loads (gen_cuda.lua)
    // the run's x: two 16-byte loads where x is aligned and the run is whole
    float xr[UNROLL];
    if (UNROLL % 4 == 0 && (((uint64_t)xl) & 15) == 0 && (!G || e0 + UNROLL * lane + UNROLL <= ne)) {
#pragma unroll
      for (int u = 0; u < UNROLL / 4; u++) {
        const float4 xa = ((const float4 *)xl)[u];
        xr[4 * u] = xa.x, xr[4 * u + 1] = xa.y, xr[4 * u + 2] = xa.z, xr[4 * u + 3] = xa.w;
      }
    } else {
#pragma unroll
      for (int t = 0; t < UNROLL; t++) xr[t] = (!G || e0 + UNROLL * lane + t < ne) ? xl[t] : 0.0f;
    }
#endif
#if ${AFFINE} // f32 with lane runs, where the decode is A·V + B over a run (expr.lua AFFINE; gen_cuda.lua)
    // A chunk holds whole blocks and a block whole runs, so a run lies wholly inside the chunk or wholly past it
    // (G: the last step of a chunk); past it, the lane's block is not staged data and its A and B are not read.
    if (!G || e0 + UNROLL * lane < ne) {
      const int ig = ${RUN};
#if ${AFFINE_B}
      float sx = 0.0f; // Σ x over the run, shared by the R rows
#pragma unroll
      for (int t = 0; t < UNROLL; t++) sx += xr[t];
#endif
#pragma unroll
      for (int r = 0; r < R; r++) {
        const uint8_t *blk = bl[r];
        float sv = 0.0f;
#if ${PACKED} // V of 4 elements per word read (expr.lua PACKED): the same f32 values as run_v's
#if ${PACKED_A4}
        if (A4) sv = qmoe_run_sv<0>(blk, ig, xr);
#if ${PACKED_W2} && QMOE_ROWS_WORDS
        else if ((((uint32_t)(uint64_t)blk) & 3) == 0) sv = qmoe_run_sv<0>(blk, ig, xr);
        else if ((((uint32_t)(uint64_t)blk) & 3) == 2) sv = qmoe_run_sv<2>(blk, ig, xr);
#endif
        else sv = qmoe_run_sv<-1>(blk, ig, xr);
#else
        sv = qmoe_run_sv<-1>(blk, ig, xr);
#endif
#else
#pragma unroll
        for (int t = 0; t < UNROLL; t++) {
          sv = fmaf(qmoe_${QNAME}_run_v(blk, ig, ig | t), xr[t], sv);
        }
#endif
#if QMOE_SPAN_TAB
        const float2 ab = tab[(r * CH_BLOCKS + ${STEPBLK}) * TAB_SPANS + ig / RUN_SPAN];
#endif
#if ${AFFINE_A}
#if QMOE_SPAN_TAB
        acc[r] = fmaf(ab.x, sv, acc[r]);
#else
        acc[r] = fmaf(qmoe_${QNAME}_run_a(blk, ig), sv, acc[r]);
#endif
#else
        acc[r] += sv;
#endif
#if ${AFFINE_B}
#if QMOE_SPAN_TAB
        acc[r] = fmaf(ab.y, sx, acc[r]);
#else
        acc[r] = fmaf(qmoe_${QNAME}_run_b(blk, ig), sx, acc[r]);
#endif
#endif
      }
    }
#else
#pragma unroll
    for (int t = 0; t < UNROLL; t++) {
      ${E_DECL}
      if (G && ${EXPR} >= ne) continue;
      // Plain loads (not __ldg, whose inline asm clobbers memory and so keeps the compiler from sharing the
      // decode's shared-memory reads between the unrolled elements).
#if ${X_RUN} // 1: lane runs read x by 16-byte loads (gen_cuda.lua)
      const float xv = xr[t];
#else
      const float xv = xl[${XT}];
#endif
#pragma unroll
      for (int r = 0; r < R; r++) acc[r] = qmoe_fma(${DOT_DECODE}(bl[r] + ${TBLK} * QB_BYTES, ${IDX}), xv, acc[r]);
    }
#endif
  }
}

#if QMOE_SPAN_TAB
// The chunk's (A, B) per span into the table after the R row slices, the lanes taking spans in turn (R rows of
// NB blocks of TAB_SPANS).
template <int R>
static __device__ __forceinline__ void qmoe_span_table(uint4 *sh, const int *off, int nb, int lane) {
  float2 *tab = (float2 *)(sh + R * STAGE_VECS);
#pragma unroll
  for (int r = 0; r < R; r++) {
    const uint8_t *rb = (const uint8_t *)(sh + r * STAGE_VECS + STAGE_PAD) + off[r];
    for (int j = lane; j < nb * TAB_SPANS; j += 32) {
      const uint8_t *blk = rb + (j / TAB_SPANS) * QB_BYTES;
      const int ig = (j % TAB_SPANS) * RUN_SPAN;
      float2 ab;
#if ${AFFINE_A}
      ab.x = qmoe_${QNAME}_run_a(blk, ig);
#else
      ab.x = 1.0f;
#endif
#if ${AFFINE_B}
      ab.y = qmoe_${QNAME}_run_b(blk, ig);
#else
      ab.y = 0.0f;
#endif
      tab[r * CH_BLOCKS * TAB_SPANS + j] = ab;
    }
  }
  __syncwarp();
}
#endif

// The copies of qmoe_stage_rows for the first chunk of R rows of NBLOCKS blocks, without the wait: a kernel issues
// them before it waits for the kernel before it and rounds x (weights: no kernel writes them), so their trip to
// memory overlaps both; PRE then holds the offsets for qmoe_row_dots or qmoe_row_dots_q8.
template <int R>
static __device__ __forceinline__ void qmoe_stage_first(const uint8_t *const *rows, int64_t nblocks, uint4 *sh,
                                                        int lane, int *pre) {
  qmoe_stage_issue<R>(rows, 0, (int)(nblocks < CH_BLOCKS ? nblocks : CH_BLOCKS), sh, lane, pre);
}
// acc[r] += Σ_e decode(row r)[e] · x[e] over the NBLOCKS blocks of R rows (per-lane partial sums; the caller
// reduces across the warp). Weights are decoded from shared memory by the contract's decode function. PRE (not
// null): the first chunk's copies were issued already (qmoe_stage_first, which left its offsets there), and
// WAITED: the caller has waited for them too.
template <int R>
static __device__ __forceinline__ void qmoe_row_dots(const uint8_t *const *rows, const float *x, int64_t nblocks,
                                                     uint4 *sh, int lane, acc_t *acc, const int *pre = nullptr,
                                                     bool waited = false) {
  for (int64_t b0 = 0; b0 < nblocks; b0 += CH_BLOCKS) {
    const int nb = (int)(nblocks - b0 < CH_BLOCKS ? nblocks - b0 : CH_BLOCKS);
    int off[R];
    if (b0 == 0 && pre) {
#pragma unroll
      for (int r = 0; r < R; r++) off[r] = pre[r];
      if (!waited) {
        qmoe_cp_async_wait_all();
        __syncwarp();
      }
    } else {
      qmoe_stage_rows<R>(rows, b0, nb, sh, lane, off);
    }
#if QMOE_SPAN_TAB
    qmoe_span_table<R>(sh, off, nb, lane);
#endif
    const float *xc = x + b0 * QB_ELEMS;
    const int ne = nb * QB_ELEMS;
    bool a4 = QB_BYTES % 4 == 0 && QMOE_ROWS_WORDS;
#pragma unroll
    for (int r = 0; r < R; r++) a4 = a4 && (off[r] & 3) == 0;
    if (${MAY_BE_PARTIAL} && ne % (32 * UNROLL)) {
      if (a4) qmoe_dot_chunk<R, true, true>(sh, off, xc, ne, lane, acc);
      else qmoe_dot_chunk<R, true, false>(sh, off, xc, ne, lane, acc);
    } else {
      if (a4) qmoe_dot_chunk<R, false, true>(sh, off, xc, ne, lane, acc);
      else qmoe_dot_chunk<R, false, false>(sh, off, xc, ne, lane, acc);
    }
    __syncwarp(); // the next chunk overwrites the buffer
  }
}

#if QMOE_Q8
#if !(${AFFINE})
#error "q8 needs the decode's affine form over runs (expr.lua AFFINE); QMOE_NO_AFFINE does not apply to it"
#endif
// ---- q8: x rounded to 8 bits per group of 32 elements (docs/q8.md), integer dot products ----
// Q8 of a group: e = the smallest exponent with max|x| <= 127·2^e (at least -126), from the bits of the
// largest |x|; q = x·2^-e rounded to the nearest integer, ties to even; x' = q·2^e. A group holding an inf or a
// NaN (largest |x| bits >= 0x7f800000) is all NaN. A run of UNROLL = 8 elements is a quarter of a group: the
// 4 runs of a group are lanes 4j..4j+3 of a step. Every lane of the warp calls these (they shuffle).
static_assert(UNROLL == 8, "q8 takes runs of 8");
#define QX_MAX ${Q8_X_MAX}                 // x elements rounded per pass of a block (a multiple of every block size)
#define QX_RUNS (QX_MAX / UNROLL)   // their run records (int4: q words 0..3, 4..7, Σq, bits of 2^e)
static __device__ __forceinline__ int4 qmoe_q8_run(const float *xr, int *qb) {
  uint32_t a = 0; // the largest |x| bits (inf and NaN above every finite value)
#pragma unroll
  for (int t = 0; t < UNROLL; t++) {
    const uint32_t b = (uint32_t)__float_as_int(xr[t]) & 0x7fffffffu;
    a = b > a ? b : a;
  }
#pragma unroll
  for (int o = 1; o <= 2; o <<= 1) {
    const uint32_t b = (uint32_t)__shfl_xor_sync(QMOE_FULL, (int)a, o);
    a = b > a ? b : a;
  }
  int e = (int)(a >> 23) - 133 + ((a & 0x7fffffu) > 0x7e0000u ? 1 : 0);
  e = e < -126 ? -126 : e;
  const float inv = __int_as_float((127 - e) << 23);
  // 1.5·2^23 + q with one rounding (to nearest, ties to even: 1.5·2^23 is even): q in the low byte
#pragma unroll
  for (int t = 0; t < UNROLL; t++) qb[t] = __float_as_int(fmaf(xr[t], inv, 12582912.0f));
  int4 r;
  r.x = (int)__byte_perm(__byte_perm(qb[0], qb[1], 0x0040), __byte_perm(qb[2], qb[3], 0x0040), 0x5410);
  r.y = (int)__byte_perm(__byte_perm(qb[4], qb[5], 0x0040), __byte_perm(qb[6], qb[7], 0x0040), 0x5410);
  r.z = qmoe_dp4a_ss((uint32_t)r.y, 0x01010101u, qmoe_dp4a_ss((uint32_t)r.x, 0x01010101u, 0));
  r.w = a >= 0x7f800000u ? 0x7fc00000 : (127 + e) << 23;
  return r;
}
// x' of a run in place (the many-token path, which sums in floats: exact, the same bits as the integer sums).
static __device__ __forceinline__ void qmoe_q8_xp(float *xr) {
  int qb[UNROLL];
  const int4 r = qmoe_q8_run(xr, qb);
  const float s = __int_as_float(r.w);
#pragma unroll
  for (int t = 0; t < UNROLL; t++) xr[t] = __fmul_rn(__fsub_rn(__int_as_float(qb[t]), 12582912.0f), s);
}
// The run records of X[0..N) (N a multiple of 32) into REC[0..N/8), by every thread of the block (no barrier
// inside: the caller synchronizes before and after).
static __device__ __forceinline__ void qmoe_q8_block(const float *x, int n, int4 *rec) {
  const int nr = n / UNROLL;
  const bool vec = (((uint64_t)x) & 15) == 0;
  for (int r0 = 0; r0 < nr; r0 += blockDim.x) { // the same trip count for every lane: the shuffles see all 32
    const int r = r0 + threadIdx.x;
    float xr[UNROLL];
    if (r < nr && vec) {
      const float4 a = ((const float4 *)x)[2 * r], b = ((const float4 *)x)[2 * r + 1];
      xr[0] = a.x, xr[1] = a.y, xr[2] = a.z, xr[3] = a.w, xr[4] = b.x, xr[5] = b.y, xr[6] = b.z, xr[7] = b.w;
    } else {
#pragma unroll
      for (int t = 0; t < UNROLL; t++) xr[t] = r < nr ? x[UNROLL * r + t] : 0.0f;
    }
    int qb[UNROLL];
    const int4 q = qmoe_q8_run(xr, qb);
    if (r < nr) rec[r] = q;
  }
}
// qmoe_dot_chunk with x as run records RC (the chunk's first run first): Σ V·x' of a run is 2^e·Σ V·q, summed in
// integers (dp4a; V = byte - off) where the decode is packed, else in floats (exact either way), then the f32
// path's A·sv + B·sx: the bits of the f32 rows on x' (and of the many-token path).
template <int R, bool G, bool A4>
static __device__ __forceinline__ void qmoe_dot_chunk_q8(const uint4 *sh, const int *off, const int4 *rc, int ne,
                                                         int lane, acc_t *acc) {
#if QMOE_SPAN_TAB
  const float2 *tab = (const float2 *)(sh + R * STAGE_VECS);
#endif
  for (int e0 = 0; e0 < ne; e0 += 32 * UNROLL) {
    const uint8_t *bl[R];
#pragma unroll
    for (int r = 0; r < R; r++) bl[r] = (const uint8_t *)(sh + r * STAGE_VECS + STAGE_PAD) + off[r] + ${STEPBLK} * QB_BYTES;
    if (!G || e0 + UNROLL * lane < ne) {
      const int ig = ${RUN};
      const int4 xq = rc[e0 / UNROLL + lane];
      const float s = __int_as_float(xq.w);
#if ${AFFINE_B}
      const float sx = __fmul_rn(s, (float)xq.z); // Σ x' over the run (exact)
#endif
#if !${PACKED}
      float xr[UNROLL];
#pragma unroll
      for (int t = 0; t < UNROLL; t++)
        xr[t] = __fmul_rn((float)(int8_t)((uint32_t)(t < 4 ? xq.x : xq.y) >> (8 * (t & 3))), s);
#endif
#pragma unroll
      for (int r = 0; r < R; r++) {
        const uint8_t *blk = bl[r];
        float sv;
#if ${PACKED}
        uint32_t w[2];
#if ${PACKED_A4}
        if (A4) qmoe_run_words<0>(blk, ig, w);
#if ${PACKED_W2} && QMOE_ROWS_WORDS
        else if ((((uint32_t)(uint64_t)blk) & 3) == 0) qmoe_run_words<0>(blk, ig, w);
        else if ((((uint32_t)(uint64_t)blk) & 3) == 2) qmoe_run_words<2>(blk, ig, w);
#endif
        else qmoe_run_words<-1>(blk, ig, w);
#else
        qmoe_run_words<-1>(blk, ig, w);
#endif
        const int iv = qmoe_dp4a_us(w[1], (uint32_t)xq.y, qmoe_dp4a_us(w[0], (uint32_t)xq.x, 0));
        sv = __fmul_rn((float)(iv - QMOE_${QNAME_UPPER}_RUN_W_OFF * xq.z), s);
#else
        sv = 0.0f;
#pragma unroll
        for (int t = 0; t < UNROLL; t++) sv = fmaf(qmoe_${QNAME}_run_v(blk, ig, ig | t), xr[t], sv);
#endif
#if QMOE_SPAN_TAB
        const float2 ab = tab[(r * CH_BLOCKS + ${STEPBLK}) * TAB_SPANS + ig / RUN_SPAN];
#endif
#if ${AFFINE_A}
#if QMOE_SPAN_TAB
        acc[r] = fmaf(ab.x, sv, acc[r]);
#else
        acc[r] = fmaf(qmoe_${QNAME}_run_a(blk, ig), sv, acc[r]);
#endif
#else
        acc[r] += sv;
#endif
#if ${AFFINE_B}
#if QMOE_SPAN_TAB
        acc[r] = fmaf(ab.y, sx, acc[r]);
#else
        acc[r] = fmaf(qmoe_${QNAME}_run_b(blk, ig), sx, acc[r]);
#endif
#endif
      }
    }
  }
}
// qmoe_row_dots over blocks whose x is the run records REC (REC[0]: the first block's first run). USE_PRE: the
// first chunk's copies were issued by qmoe_stage_first, which left its offsets in PRE; WAITED: the caller has
// waited for them too.
template <int R>
static __device__ __forceinline__ void qmoe_row_dots_q8(const uint8_t *const *rows, const int4 *rec, int64_t nblocks,
                                                        uint4 *sh, int lane, acc_t *acc, bool use_pre,
                                                        const int (&pre)[R], bool waited = false) {
  for (int64_t b0 = 0; b0 < nblocks; b0 += CH_BLOCKS) {
    const int nb = (int)(nblocks - b0 < CH_BLOCKS ? nblocks - b0 : CH_BLOCKS);
    int off[R];
    if (b0 == 0 && use_pre) {
#pragma unroll
      for (int r = 0; r < R; r++) off[r] = pre[r];
      if (!waited) {
        qmoe_cp_async_wait_all();
        __syncwarp();
      }
    } else {
      qmoe_stage_rows<R>(rows, b0, nb, sh, lane, off);
    }
#if QMOE_SPAN_TAB
    qmoe_span_table<R>(sh, off, nb, lane);
#endif
    const int4 *rc = rec + b0 * (QB_ELEMS / UNROLL);
    const int ne = nb * QB_ELEMS;
    bool a4 = QB_BYTES % 4 == 0 && QMOE_ROWS_WORDS;
#pragma unroll
    for (int r = 0; r < R; r++) a4 = a4 && (off[r] & 3) == 0;
    if (${MAY_BE_PARTIAL} && ne % (32 * UNROLL)) {
      if (a4) qmoe_dot_chunk_q8<R, true, true>(sh, off, rc, ne, lane, acc);
      else qmoe_dot_chunk_q8<R, true, false>(sh, off, rc, ne, lane, acc);
    } else {
      if (a4) qmoe_dot_chunk_q8<R, false, true>(sh, off, rc, ne, lane, acc);
      else qmoe_dot_chunk_q8<R, false, false>(sh, off, rc, ne, lane, acc);
    }
    __syncwarp(); // the next chunk overwrites the buffer
  }
}
#endif

// ---- many tokens per read of the rows (own_tokens kernels: prefill) ----
// acc[r][n] += Σ decode(row r)[e] · xc[n][e] for the N tokens whose chunk of x starts at XC[n], over one staged
// chunk. All N are computed (no branch on a tile's token count, so the compiler interleaves the N·R sums): a
// partial tile's caller points its extra tokens at a real one and drops their sums. Each (row, token) is computed by the same lane, in
// the same order, with the same operations as qmoe_dot_chunk<R, G, A4> does for one token: a row's decode is shared
// by the tokens, never its sums, so every token's result has the bits of its one-token call (FALSIFY-TOKENS).
template <int R, int N, bool G>
static __device__ __forceinline__ void qmoe_dot_chunk_tok(const uint4 *sh, const int *off, const float *const *xc,
                                                          int ne, int lane, acc_t (*acc)[N]) {
  for (int e0 = 0; e0 < ne; e0 += 32 * UNROLL) {
    const uint8_t *bl[R];
#pragma unroll
    for (int r = 0; r < R; r++) bl[r] = (const uint8_t *)(sh + r * STAGE_VECS + STAGE_PAD) + off[r] + ${STEPBLK} * QB_BYTES;
#if ${AFFINE} && QMOE_Q8 // the same on x' (each token's runs rounded here: the shuffles need every lane)
    const bool in = !G || e0 + UNROLL * lane < ne;
    const int ig = ${RUN};
    float va[R][UNROLL], ra[R], rb[R];
    if (in) {
#pragma unroll
      for (int r = 0; r < R; r++) {
#pragma unroll
        for (int t = 0; t < UNROLL; t++) va[r][t] = qmoe_${QNAME}_run_v(bl[r], ig, ig | t);
#if ${AFFINE_A}
        ra[r] = qmoe_${QNAME}_run_a(bl[r], ig);
#else
        ra[r] = 1.0f;
#endif
#if ${AFFINE_B}
        rb[r] = qmoe_${QNAME}_run_b(bl[r], ig);
#else
        rb[r] = 0.0f;
#endif
      }
    }
#pragma unroll
    for (int n = 0; n < N; n++) {
      const float *xl = xc[n] + e0 + ${XLANE};
      float xr[UNROLL];
      if ((((uint64_t)xl) & 15) == 0 && (!G || e0 + UNROLL * lane + UNROLL <= ne)) {
#pragma unroll
        for (int u = 0; u < UNROLL / 4; u++) {
          const float4 xa = ((const float4 *)xl)[u];
          xr[4 * u] = xa.x, xr[4 * u + 1] = xa.y, xr[4 * u + 2] = xa.z, xr[4 * u + 3] = xa.w;
        }
      } else {
#pragma unroll
        for (int t = 0; t < UNROLL; t++) xr[t] = (!G || e0 + UNROLL * lane + t < ne) ? xl[t] : 0.0f;
      }
      qmoe_q8_xp(xr);
      if (in) {
#if ${AFFINE_B}
        float sx = 0.0f;
#pragma unroll
        for (int t = 0; t < UNROLL; t++) sx += xr[t];
#endif
#pragma unroll
        for (int r = 0; r < R; r++) {
          float sv = 0.0f;
#pragma unroll
          for (int t = 0; t < UNROLL; t++) sv = fmaf(va[r][t], xr[t], sv);
#if ${AFFINE_A}
          acc[r][n] = fmaf(ra[r], sv, acc[r][n]);
#else
          acc[r][n] += sv;
#endif
#if ${AFFINE_B}
          acc[r][n] = fmaf(rb[r], sx, acc[r][n]);
#endif
        }
      }
    }
    (void)ra, (void)rb;
#elif ${AFFINE} // f32 with lane runs: the run's A, B and V decoded once for the N tokens
    if (!G || e0 + UNROLL * lane < ne) {
      const int ig = ${RUN};
      float va[R][UNROLL], ra[R], rb[R];
#pragma unroll
      for (int r = 0; r < R; r++) {
#pragma unroll
        // (one by one: the packed runs cost the many-token entries registers, 1,220 -> 1,084 tokens/s of prefill
        // on the H200, docs/gpu-results.md)
        for (int t = 0; t < UNROLL; t++) va[r][t] = qmoe_${QNAME}_run_v(bl[r], ig, ig | t);
#if ${AFFINE_A}
        ra[r] = qmoe_${QNAME}_run_a(bl[r], ig);
#else
        ra[r] = 1.0f;
#endif
#if ${AFFINE_B}
        rb[r] = qmoe_${QNAME}_run_b(bl[r], ig);
#else
        rb[r] = 0.0f;
#endif
      }
#pragma unroll
      for (int n = 0; n < N; n++) { // all N (a break on the tile's count left the sums latency-bound)
        const float *xl = xc[n] + e0 + ${XLANE};
        float xr[UNROLL];
        if (UNROLL % 4 == 0 && (((uint64_t)xl) & 15) == 0 && (!G || e0 + UNROLL * lane + UNROLL <= ne)) {
#pragma unroll
          for (int u = 0; u < UNROLL / 4; u++) {
            const float4 xa = ((const float4 *)xl)[u];
            xr[4 * u] = xa.x, xr[4 * u + 1] = xa.y, xr[4 * u + 2] = xa.z, xr[4 * u + 3] = xa.w;
          }
        } else {
#pragma unroll
          for (int t = 0; t < UNROLL; t++) xr[t] = (!G || e0 + UNROLL * lane + t < ne) ? xl[t] : 0.0f;
        }
#if ${AFFINE_B}
        float sx = 0.0f;
#pragma unroll
        for (int t = 0; t < UNROLL; t++) sx += xr[t];
#endif
#pragma unroll
        for (int r = 0; r < R; r++) {
          float sv = 0.0f;
#pragma unroll
          for (int t = 0; t < UNROLL; t++) sv = fmaf(va[r][t], xr[t], sv);
#if ${AFFINE_A}
          acc[r][n] = fmaf(ra[r], sv, acc[r][n]);
#else
          acc[r][n] += sv;
#endif
#if ${AFFINE_B}
          acc[r][n] = fmaf(rb[r], sx, acc[r][n]);
#endif
        }
      }
      (void)ra, (void)rb;
    }
#else
#pragma unroll
    for (int t = 0; t < UNROLL; t++) {
      ${E_DECL}
      if (G && ${EXPR} >= ne) continue;
      float dv[R];
#pragma unroll
      for (int r = 0; r < R; r++) dv[r] = ${DOT_DECODE}(bl[r] + ${TBLK} * QB_BYTES, ${IDX});
#pragma unroll
      for (int n = 0; n < N; n++) {
        const float xv = (xc[n] + e0 + ${XLANE})[${XT}];
#pragma unroll
        for (int r = 0; r < R; r++) acc[r][n] = qmoe_fma(dv[r], xv, acc[r][n]);
      }
    }
#endif
  }
}

// acc[r][n] += Σ_e decode(row r)[e] · XT[n][e] over the NBLOCKS blocks of R rows for N tokens: the rows are
// staged once per chunk for all the tokens (per-lane partial sums; the caller reduces across the warp, as for one).
// KEEP (rows of one chunk, the same rows in every call of the warp): the first call stages them and leaves their
// offsets in KEEP (KEEP[0] < 0 before it), later calls reuse the staged rows: a row is staged once for all the
// tiles of tokens.
template <int R, int N>
static __device__ __forceinline__ void qmoe_row_dots_tok(const uint8_t *const *rows, const float *const *xt,
                                                         int64_t nblocks, uint4 *sh, int lane, acc_t (*acc)[N],
                                                         int *keep) {
  const bool one = nblocks <= CH_BLOCKS;
  for (int64_t b0 = 0; b0 < nblocks; b0 += CH_BLOCKS) {
    const int nb = (int)(nblocks - b0 < CH_BLOCKS ? nblocks - b0 : CH_BLOCKS);
    int off[R];
    if (one && keep[0] >= 0) {
#pragma unroll
      for (int r = 0; r < R; r++) off[r] = keep[r];
    } else {
      qmoe_stage_rows<R>(rows, b0, nb, sh, lane, off);
      if (one) {
#pragma unroll
        for (int r = 0; r < R; r++) keep[r] = off[r];
      }
    }
    const float *xc[N];
#pragma unroll
    for (int n = 0; n < N; n++) xc[n] = xt[n] + b0 * QB_ELEMS;
    const int ne = nb * QB_ELEMS;
    if (${MAY_BE_PARTIAL} && ne % (32 * UNROLL)) qmoe_dot_chunk_tok<R, N, true>(sh, off, xc, ne, lane, acc);
    else qmoe_dot_chunk_tok<R, N, false>(sh, off, xc, ne, lane, acc);
    if (!one) __syncwarp(); // the next chunk overwrites the buffer
  }
}

// The (token, k) slots of IDS[T·K] whose expert is E (E < 0: whose id is outside [0, NE), the slots that get NaN),
// in slot order, into LIST[0..*N) of shared memory, scanning slots [*AT, T·K) until the list holds CAP - 4·THREADS
// or more; *AT moves on. Thread i looks at slots 4i..4i+3 of each step (one 16-byte load where IDS is aligned); a
// slot's place in the list is the matches before it: in lower lanes (four ballots), in its own lane, in lower
// warps. Every thread of the block calls it (it synchronizes the block).
template <int CAP>
static __device__ __forceinline__ void qmoe_expert_slots(const int32_t *ids, int64_t tk, int e, int64_t ne,
                                                         int64_t *at, int *list, int *n, int *warp_n) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarp = blockDim.x >> 5;
  const bool vec = (((uint64_t)ids) & 15) == 0;
  while (*at < tk && *n <= CAP - 4 * (int)blockDim.x) {
    const int64_t i0 = *at + 4 * (int64_t)threadIdx.x;
    int id[4];
    if (vec && i0 + 3 < tk) {
      const int4 v = *(const int4 *)(ids + i0);
      id[0] = v.x, id[1] = v.y, id[2] = v.z, id[3] = v.w;
    } else {
#pragma unroll
      for (int j = 0; j < 4; j++) id[j] = i0 + j < tk ? ids[i0 + j] : (e >= 0 ? -1 : 0);
    }
    bool m[4];
    unsigned b[4];
    int below = 0, mine = 0, wtotal = 0;
    const unsigned lt = (1u << lane) - 1u;
#pragma unroll
    for (int j = 0; j < 4; j++) {
      m[j] = i0 + j < tk && (e >= 0 ? id[j] == e : (id[j] < 0 || id[j] >= ne));
      b[j] = __ballot_sync(QMOE_FULL, m[j]);
      below += __popc(b[j] & lt);
      wtotal += __popc(b[j]);
    }
    if (lane == 0) warp_n[warp] = wtotal;
    __syncthreads();
    int before = *n + below;
    for (int w = 0; w < warp; w++) before += warp_n[w];
#pragma unroll
    for (int j = 0; j < 4; j++)
      if (m[j]) list[before + mine++] = (int)(i0 + j);
    int total = 0;
    for (int w = 0; w < nwarp; w++) total += warp_n[w];
    __syncthreads();
    *n += total;
    *at += 4 * (int64_t)blockDim.x;
  }
}
