// ---- ${QNAME} rows: ${BE} elements in ${BB} bytes per block (codegen/gen_glsl.lua, the quantized mat-vec family) ----
// A subgroup computes the dot products of R rows with x. Per chunk of whole blocks it copies the rows' bytes
// into its own slices of sw[] with 16-byte loads, coalesced over its lanes; only subgroup barriers order them.
// Each lane then decodes runs of 8 consecutive elements (RUNS: of one block, so the run's sub-block scales are
// decoded once: dq_decode_run, expr.lua's GROUP; f32 variants of a decode that is A.V + B over a run use that
// form, AFFINE) against x read as two 16-byte loads, and keeps per-lane partial sums, which the caller adds
// with subgroupAdd. Strides come from gl_SubgroupSize.
const uint BE = ${BE}u, BB = ${BB}u, R = ${QR}u, LB = ${LB}u, SGMIN = ${SGMIN}u;
const uint RL = ${RL}u;  // elements of a lane's run (RUNS): 16 where the f32 decode is affine and packed over 16
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

#if ${Q8}
// q8 variant (docs/q8.md): the f32 rows on Q8(x). Groups of 32 start at multiples of 32 from the vector's first
// element, Q8_X0 (qmoe_row_dots' xi; moe_down's slots are F apart, F a multiple of 32), and a lane's run lies in
// one group (runs start at multiples of RL from Q8_X0). Each run reads its whole group for the scale: x is
// small next to the weights, and speed on Vulkan is not what q8 is for.
uint Q8_X0;

// (2^-e, 2^e) of the group of 32 that starts at element G0 of X; (NaN, NaN) when it holds an inf or NaN.
vec2 q8_scales(uint g0) {
  uint a = 0u; // the largest |x| bit pattern: NaN and inf compare highest
  if ((g0 & 3u) == 0u) {
    for (uint u = 0u; u < 8u; u++) {
      const uvec4 v = floatBitsToUint(X4[(g0 >> 2) + u]) & 0x7fffffffu;
      a = max(a, max(max(v.x, v.y), max(v.z, v.w)));
    }
  } else { // a vector that does not start 16-byte aligned: element by element
    for (uint u = 0u; u < 32u; u++) a = max(a, floatBitsToUint(X[g0 + u]) & 0x7fffffffu);
  }
  if (a >= 0x7f800000u) return vec2(${NAN});
  const int e = max(int(a >> 23) - 133 + ((a & 0x7fffffu) > 0x7e0000u ? 1 : 0), -126);
  return vec2(uintBitsToFloat(uint(127 - e) << 23), uintBitsToFloat(uint(127 + e) << 23));
}

// x[i .. i+RL) -> Q8 of them: x * 2^-e is exact (a power of two, no overflow), so roundEven is the one rounding,
// and the integer times 2^e is exact again.
void q8_run(uint i, inout float xr[RL]) {
  const vec2 s = q8_scales(Q8_X0 + ((i - Q8_X0) & ~31u));
  for (uint t = 0u; t < RL; t++) xr[t] = roundEven(xr[t] * s.x) * s.y;
}
#endif

// x[i .. i+RL), all in range: RL/4 16-byte loads where i is a multiple of 4 (q8 variants: Q8 of them).
void x_runl(uint i, out float xr[RL]) {
  if ((i & 3u) == 0u) {
    for (uint u = 0u; u < RL / 4u; u++) {
      const vec4 a = X4[(i >> 2) + u];
      xr[4u * u] = a.x, xr[4u * u + 1u] = a.y, xr[4u * u + 2u] = a.z, xr[4u * u + 3u] = a.w;
    }
  } else {
    for (uint t = 0u; t < RL; t++) xr[t] = X[i + t];
  }
#if ${Q8}
  q8_run(i, xr);
#endif
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
// of elements e0 + RL*l .. e0 + RL*l + RL-1 of each step of RL * gl_SubgroupSize.
void qmoe_dot_chunk(const uint at[R], uint xi, uint ne, inout ${T} acc[R]) {
#if ${RUNS} // blocks of a multiple of RL elements: whole runs, each inside one block
  const uint step = RL * gl_SubgroupSize;
  // x one step ahead: the next run's loads are in flight while this run is decoded
  float xr[RL];
  uint e = RL * gl_SubgroupInvocationID;
  if (e < ne) x_runl(xi + e, xr);
  for (; e < ne; e += step) {
    float xn[RL];
    if (e + step < ne) x_runl(xi + e + step, xn);
    const int ig = int(e % BE);
#if ${AFFINE} // f32, where the decode is A.V + B over a run (expr.lua AFFINE): A * sum(V x) + B * sum(x)
#if ${AFFINE_B}
    float sx = 0.0; // all R rows
    for (uint t = 0u; t < RL; t++) sx += xr[t];
#endif
    for (uint r = 0u; r < R; r++) {
      const uint b = at[r] + (e / BE) * BB;
      float sv = 0.0;
#if ${PACKED} // V of 4 elements per word read (expr.lua PACKED): the same f32 values as dq_run_v's
      for (int t0 = 0; t0 < int(RL); t0 += 4) {
        const uint w = dq_run_w(b, ig, t0);
        for (int k = 0; k < 4; k++) sv += qmoe_q_unpack(w, k, ${RUN_W_BASE}) * xr[t0 + k];
      }
#else
      for (int t = 0; t < int(RL); t++) sv += dq_run_v(b, ig, ig | t) * xr[t];
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
      for (int t = 0; t < int(RL); t++) a += ${T}(dq_decode_run(b, ig, ig | t)) * ${T}(xr[t]);
      acc[r] = a;
    }
#endif
    xr = xn;
  }
#else // one-element blocks: 8 blocks per run, the row's last run may be partial
  const uint step = 8u * gl_SubgroupSize;
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
#if ${Q8}
  Q8_X0 = xi;
#endif
  if (gl_SubgroupSize < SGMIN) { // sw[] is sized for SGMIN or more lanes: a visible NaN, not a wrong read
    for (uint r = 0u; r < R; r++) acc[r] = ${T}(${NAN});
    return;
  }
  uint nbc = gl_SubgroupSize * LB / BB; // blocks per chunk, >= 1 (SGMIN * LB >= BB)
  const uint step = (${RUNS} == 1 ? RL : 8u) * gl_SubgroupSize;
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
