// ---- ${QNAME} rows: ${BE} elements in ${BB} bytes per block (codegen/gen_glsl.lua, the quantized mat-vec family) ----
// A subgroup computes the dot products of R rows with x. Per chunk of whole blocks it copies the rows' bytes
// into its own slices of sw[] with 16-byte loads, coalesced over its lanes; only subgroup barriers order them.
// Each lane then decodes runs of 8 consecutive elements (RUNS: of one block, so the run's sub-block scales are
// decoded once: dq_decode_run, expr.lua's GROUP; f32 variants of a decode that is A.V + B over a run use that
// form, AFFINE) against x read as two 16-byte loads, and keeps per-lane partial sums, which the caller adds
// with subgroupAdd. Strides come from gl_SubgroupSize.
const uint BE = ${BE}u, BB = ${BB}u, R = ${QR}u, LB = ${LB}u, SGMIN = ${SGMIN}u;
const uint PADW = 16u;   // 64 bytes before the first slice and after each: the ?: arms that a decode evaluates
                         // but does not take read inside sw[]
const uint SLACKW = 4u;  // a chunk's bytes start (its global byte offset & 15) into its slice

// 16 bytes of row R's matrix at vector index Q (zero past the buffer; buffers are 16-byte multiples).
uvec4 qmoe_ld(uint r, uint q) {
  uvec4 v = uvec4(0u);
  if (r == 0u) {
    if (q < uint(${W0}.length())) v = ${W0}[q];
  } else if (q < uint(${W1}.length())) {
    v = ${W1}[q];
  }
  return v;
}

// x[i .. i+8), all in range: two 16-byte loads where i is a multiple of 4.
void x_run(uint i, out float xr[8]) {
  if ((i & 3u) == 0u) {
    const vec4 a = X4[i >> 2], b = X4[(i >> 2) + 1u];
    xr = float[8](a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w);
  } else {
    for (uint t = 0u; t < 8u; t++) xr[t] = X[i + t];
  }
}

// First word of row R's slice of this subgroup: slices of SLACKW + LB/4 per lane words, PADW apart.
uint qmoe_slice(uint r) {
  return PADW + (gl_SubgroupID * R + r) * (SLACKW + gl_SubgroupSize * (LB / 4u) + PADW);
}

// Copies NB blocks of each row (row r's first at global byte offset P[r]) into the subgroup's slices; AT[r]:
// the byte of sw[] where row r's first block landed. The aligned span is at most (15 + NB*BB + 15) bytes,
// which SLACKW + LB per lane words hold for NB <= gl_SubgroupSize * LB / BB, so a lane copies at most
// U = LB/16 + 1 vectors per row: all its loads are issued before the first store (one memory latency per
// chunk, not one per vector).
const uint U = LB / 16u + 1u;
void qmoe_stage_rows(const uint p[R], uint nb, out uint at[R]) {
  uvec4 v[R][U];
  for (uint r = 0u; r < R; r++) {
    const uint q0 = p[r] >> 4, n16 = ((p[r] & 15u) + nb * BB + 15u) >> 4;
    for (uint u = 0u; u < U; u++) {
      const uint j = gl_SubgroupInvocationID + u * gl_SubgroupSize;
      v[r][u] = j < n16 ? qmoe_ld(r, q0 + j) : uvec4(0u);
    }
  }
  for (uint r = 0u; r < R; r++) {
    const uint s = qmoe_slice(r), n16 = ((p[r] & 15u) + nb * BB + 15u) >> 4;
    at[r] = s * 4u + (p[r] & 15u);
    for (uint u = 0u; u < U; u++) {
      const uint j = gl_SubgroupInvocationID + u * gl_SubgroupSize, o = s + 4u * j;
      if (j < n16) {
        sw[o] = v[r][u].x;
        sw[o + 1u] = v[r][u].y;
        sw[o + 2u] = v[r][u].z;
        sw[o + 3u] = v[r][u].w;
      }
    }
  }
  subgroupMemoryBarrierShared();
  subgroupBarrier();
}

// acc[r] += sum over the staged chunk's NE elements of decode(row r)[e] * x[XI + e]; lane l takes the run
// of elements e0 + 8l .. e0 + 8l + 7 of each step of 8 * gl_SubgroupSize.
void qmoe_dot_chunk(const uint at[R], uint xi, uint ne, inout ${T} acc[R]) {
  const uint step = 8u * gl_SubgroupSize;
#if ${RUNS} // blocks of a multiple of 8 elements: whole runs, each inside one block
  // x one step ahead: the next run's loads are in flight while this run is decoded
  float xr[8];
  uint e = 8u * gl_SubgroupInvocationID;
  if (e < ne) x_run(xi + e, xr);
  for (; e < ne; e += step) {
    float xn[8];
    if (e + step < ne) x_run(xi + e + step, xn);
    const int ig = int(e % BE);
#if ${AFFINE} // f32, where the decode is A.V + B over a run (expr.lua AFFINE): A * sum(V x) + B * sum(x)
#if ${AFFINE_B}
    const float sx = ((xr[0] + xr[1]) + (xr[2] + xr[3])) + ((xr[4] + xr[5]) + (xr[6] + xr[7])); // all R rows
#endif
    for (uint r = 0u; r < R; r++) {
      const uint b = at[r] + (e / BE) * BB;
#if ${PACKED} // V of 4 elements per word read (expr.lua PACKED): the same f32 values as dq_run_v's
      const uint w0 = dq_run_w(b, ig, 0), w1 = dq_run_w(b, ig, 4);
      float sv = qmoe_q_unpack(w0, 0, ${RUN_W_BASE}) * xr[0];
      sv += qmoe_q_unpack(w0, 1, ${RUN_W_BASE}) * xr[1];
      sv += qmoe_q_unpack(w0, 2, ${RUN_W_BASE}) * xr[2];
      sv += qmoe_q_unpack(w0, 3, ${RUN_W_BASE}) * xr[3];
      sv += qmoe_q_unpack(w1, 0, ${RUN_W_BASE}) * xr[4];
      sv += qmoe_q_unpack(w1, 1, ${RUN_W_BASE}) * xr[5];
      sv += qmoe_q_unpack(w1, 2, ${RUN_W_BASE}) * xr[6];
      sv += qmoe_q_unpack(w1, 3, ${RUN_W_BASE}) * xr[7];
#else
      float sv = dq_run_v(b, ig, ig | 0) * xr[0];
      sv += dq_run_v(b, ig, ig | 1) * xr[1];
      sv += dq_run_v(b, ig, ig | 2) * xr[2];
      sv += dq_run_v(b, ig, ig | 3) * xr[3];
      sv += dq_run_v(b, ig, ig | 4) * xr[4];
      sv += dq_run_v(b, ig, ig | 5) * xr[5];
      sv += dq_run_v(b, ig, ig | 6) * xr[6];
      sv += dq_run_v(b, ig, ig | 7) * xr[7];
#endif
#if ${AFFINE_A}
      acc[r] += dq_run_a(b, ig) * sv;
#else
      acc[r] += sv;
#endif
#if ${AFFINE_B}
      acc[r] += dq_run_b(b, ig) * sx;
#endif
    }
#else
    for (uint r = 0u; r < R; r++) {
      const uint b = at[r] + (e / BE) * BB;
      ${T} a = acc[r];
      a += ${T}(dq_decode_run(b, ig, ig | 0)) * ${T}(xr[0]);
      a += ${T}(dq_decode_run(b, ig, ig | 1)) * ${T}(xr[1]);
      a += ${T}(dq_decode_run(b, ig, ig | 2)) * ${T}(xr[2]);
      a += ${T}(dq_decode_run(b, ig, ig | 3)) * ${T}(xr[3]);
      a += ${T}(dq_decode_run(b, ig, ig | 4)) * ${T}(xr[4]);
      a += ${T}(dq_decode_run(b, ig, ig | 5)) * ${T}(xr[5]);
      a += ${T}(dq_decode_run(b, ig, ig | 6)) * ${T}(xr[6]);
      a += ${T}(dq_decode_run(b, ig, ig | 7)) * ${T}(xr[7]);
      acc[r] = a;
    }
#endif
    xr = xn;
  }
#else // one-element blocks: 8 blocks per run, the row's last run may be partial
  for (uint e = 8u * gl_SubgroupInvocationID; e < ne; e += step) {
    if (e + 8u <= ne) {
      float xr[8];
      x_run(xi + e, xr);
      for (uint r = 0u; r < R; r++) {
        const uint b = at[r] + e * BB;
        ${T} a = acc[r];
        a += ${T}(dq_decode(b, 0)) * ${T}(xr[0]);
        a += ${T}(dq_decode(b + BB, 0)) * ${T}(xr[1]);
        a += ${T}(dq_decode(b + 2u * BB, 0)) * ${T}(xr[2]);
        a += ${T}(dq_decode(b + 3u * BB, 0)) * ${T}(xr[3]);
        a += ${T}(dq_decode(b + 4u * BB, 0)) * ${T}(xr[4]);
        a += ${T}(dq_decode(b + 5u * BB, 0)) * ${T}(xr[5]);
        a += ${T}(dq_decode(b + 6u * BB, 0)) * ${T}(xr[6]);
        a += ${T}(dq_decode(b + 7u * BB, 0)) * ${T}(xr[7]);
        acc[r] = a;
      }
    } else {
      for (uint t = 0u; e + t < ne; t++) {
        const float xv = X[xi + e + t];
        for (uint r = 0u; r < R; r++) acc[r] += ${T}(dq_decode(at[r] + (e + t) * BB, 0)) * ${T}(xv);
      }
    }
  }
#endif
}

// acc[r] += decode(row r) . x[XI ..] over NBLOCKS blocks of each row (row r at global byte offset P[r]);
// per-lane partial sums. Every lane of the subgroup calls it with the same rows (subgroup barriers inside).
void qmoe_row_dots(const uint p[R], uint xi, uint nblocks, inout ${T} acc[R]) {
  if (gl_SubgroupSize < SGMIN) { // sw[] is sized for SGMIN or more lanes: a visible NaN, not a wrong read
    for (uint r = 0u; r < R; r++) acc[r] = ${T}(${NAN});
    return;
  }
  uint nbc = gl_SubgroupSize * LB / BB; // blocks per chunk, >= 1 (SGMIN * LB >= BB)
  const uint step = 8u * gl_SubgroupSize;
  if (BE < step && step % BE == 0u && nbc >= step / BE) nbc -= nbc % (step / BE); // whole steps
  for (uint b0 = 0u; b0 < nblocks; b0 += nbc) {
    const uint nb = min(nbc, nblocks - b0);
    uint at[R];
    uint pc_[R];
    for (uint r = 0u; r < R; r++) pc_[r] = p[r] + b0 * BB;
    qmoe_stage_rows(pc_, nb, at);
    qmoe_dot_chunk(at, xi + b0 * BE, nb * BE, acc);
    subgroupBarrier(); // the next chunk overwrites the slices
  }
}
