// ---- ${QNAME} rows: ${BE} elements in ${BB} bytes per block (codegen/gen_glsl.lua, the quantized mat-vec family) ----
// A subgroup computes the dot products of R rows with x. Per chunk of whole blocks it copies the rows' bytes
// into its own slices of sw[] with 16-byte loads, coalesced over its lanes; only subgroup barriers order them.
// Each lane then decodes runs of 8 consecutive elements (RUNS: of one block, so the run's sub-block scales are
// decoded once: dq_decode_run, expr.lua's GROUP; f32 variants of a decode that is A.V + B over a run use that
// form, AFFINE) against x read as two 16-byte loads, and keeps per-lane partial sums, which the caller adds
// with subgroupAdd. Strides come from gl_SubgroupSize.
const uint BE = ${BE}u, BB = ${BB}u, R = ${QR}u; // LB, QMOE_SG and sw[]: above
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
// element, and a lane's run lies in one group (runs start at multiples of RL from it; moe_down's slots are F
// apart, F a multiple of 32).
//
// Records (QX_MAX > 0): the whole workgroup rounds x once, at the top of the kernel (q8_round), into shared
// memory: per element its 8-bit q (q8w, 4 to a word), per group of 32 the bits of 2^e and the Σq of its two
// halves of 16 (q8g). A packed affine decode then sums each run in integers, V·q four at a time with
// OpSUDot (VK_KHR_shader_integer_dot_product; V = byte - DQ_RUN_W_OFF, so Σ V·q = Σ byte·q - OFF·Σq), and
// 2^e·Σ V·q is exactly the f32 rows' Σ V·x' (integers times a power of two, under 2^24): the same bits as the
// per-lane path below, which a vector too long for the records (or not 16-byte aligned) takes.
const uint QX_MAX = ${QX_MAX}u; // elements of x whose records fit beside sw[] in 32 KiB (lavapipe's limit)
uint Q8_X0;    // the per-lane path's vector start (qmoe_row_dots' xi)
uint Q8_BASE;  // the records' first element of X
bool Q8_REC;   // the call's x is in the records
#if ${QX_MAX} > 0
shared uint q8w[QX_MAX / 4u];
shared uvec2 q8g[QX_MAX / 32u];
#endif
#if ${Q8_IDOT}
spirv_instruction(extensions = ["SPV_KHR_integer_dot_product"], capabilities = [6019, 6018], id = 4452)
int qmoe_sudot(uint q_signed, uint w_unsigned, spirv_literal int packed_4x8); // OpSUDot, PackedVectorFormat4x8Bit
#endif

// Rounds X[x0 .. x0+n) into the records, by every invocation of the workgroup (a barrier inside: call it from
// uniform control flow). Lane l of subgroup g takes the run of 8 elements i = g * gl_SubgroupSize + l (+ the
// workgroup size per pass): the 4 runs of a group are 4 neighbouring lanes of one subgroup, which exchange their
// largest |x| and their Σq with subgroupShuffleXor.
void q8_round(uint x0, uint n) {
  Q8_BASE = x0;
  Q8_REC = QX_MAX > 0u && n <= QX_MAX && (x0 & 3u) == 0u && (n & 31u) == 0u;
#if ${QX_MAX} > 0
  if (!Q8_REC) return; // uniform: push parameters only
  const uint nr = n / 8u;
  for (uint r0 = 0u; r0 < nr; r0 += gl_WorkGroupSize.x) { // the same trip count for every lane (shuffles)
    const uint r = r0 + gl_SubgroupID * gl_SubgroupSize + gl_SubgroupInvocationID;
    vec4 a = vec4(0.0), b = vec4(0.0);
    if (r < nr) a = X4[(x0 >> 2) + 2u * r], b = X4[(x0 >> 2) + 2u * r + 1u];
    const uvec4 ua = floatBitsToUint(a) & 0x7fffffffu, ub = floatBitsToUint(b) & 0x7fffffffu;
    uint m = max(max(max(ua.x, ua.y), max(ua.z, ua.w)), max(max(ub.x, ub.y), max(ub.z, ub.w)));
    m = max(m, subgroupShuffleXor(m, 1u)); // NaN and inf compare highest
    m = max(m, subgroupShuffleXor(m, 2u));
    const int e = max(int(m >> 23) - 133 + ((m & 0x7fffffu) > 0x7e0000u ? 1 : 0), -126);
    const float inv = uintBitsToFloat(uint(127 - e) << 23);
    const ivec4 qa = ivec4(roundEven(a * inv)), qb = ivec4(roundEven(b * inv)); // exact products, one rounding
    int s = qa.x + qa.y + qa.z + qa.w + qb.x + qb.y + qb.z + qb.w;
    s += subgroupShuffleXor(s, 1u); // Σq of this half of the group (runs 2j, 2j+1)
    const int s2 = subgroupShuffleXor(s, 2u);
    if (r < nr) {
      const uvec4 ma = uvec4(qa) & 0xffu, mb = uvec4(qb) & 0xffu;
      q8w[2u * r] = ma.x | (ma.y << 8) | (ma.z << 16) | (ma.w << 24);
      q8w[2u * r + 1u] = mb.x | (mb.y << 8) | (mb.z << 16) | (mb.w << 24);
      if ((r & 3u) == 0u)
        q8g[r >> 2] = uvec2(m >= 0x7f800000u ? 0x7fc00000u : uint(127 + e) << 23,
                            (uint(s) & 0xffffu) | (uint(s2) << 16));
    }
  }
  barrier();
#endif
}

// x'[i .. i+RL) from the records (i - Q8_BASE a multiple of RL).
void q8_rec_run(uint i, out float xr[RL]) {
#if ${QX_MAX} > 0
  const uint j = i - Q8_BASE;
  const float s = uintBitsToFloat(q8g[j >> 5].x);
  for (uint t = 0u; t < RL; t++) xr[t] = float(bitfieldExtract(int(q8w[(j + t) >> 2]), int(8u * ((j + t) & 3u)), 8)) * s;
#endif
}

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

// The per-lane path: x[i .. i+RL) -> Q8 of them, each run reading its whole group for the scale. x * 2^-e is
// exact (a power of two, no overflow), so roundEven is the one rounding, and the integer times 2^e is exact.
void q8_run(uint i, inout float xr[RL]) {
  const vec2 s = q8_scales(Q8_X0 + ((i - Q8_X0) & ~31u));
  for (uint t = 0u; t < RL; t++) xr[t] = roundEven(xr[t] * s.x) * s.y;
}
#else
void q8_round(uint x0, uint n) {} // f32 and f64 variants read x as it is
#endif

// x[i .. i+RL), all in range: RL/4 16-byte loads where i is a multiple of 4 (q8 variants: Q8 of them).
void x_runl(uint i, out float xr[RL]) {
#if ${Q8}
  if (Q8_REC) {
    q8_rec_run(i, xr);
    return;
  }
#endif
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
void qmoe_stage_load(const uint p[R], uint nb, out uvec4 v[R][U]) {
  for (uint r = 0u; r < R; r++) {
    const uint q0 = p[r] >> 4, n16 = ((p[r] & 15u) + nb * BB + 15u) >> 4;
    for (uint u = 0u; u < U; u++) {
      const uint j = gl_SubgroupInvocationID + u * gl_SubgroupSize;
      v[r][u] = j < n16 ? qmoe_ld(r, q0 + j) : uvec4(0u);
    }
  }
}
void qmoe_stage_store(const uint p[R], uint nb, const uvec4 v[R][U], out uint at[R]) {
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

// Blocks per chunk, >= 1 (QMOE_SG * LB >= BB), whole steps of the lanes' runs where a step spans several blocks.
uint qmoe_chunk_blocks() {
  uint nbc = gl_SubgroupSize * LB / BB;
  const uint step = (${RUNS} == 1 ? RL : 8u) * gl_SubgroupSize;
  if (BE < step && step % BE == 0u && nbc >= step / BE) nbc -= nbc % (step / BE);
  return nbc;
}

#if ${Q8}
// q8: a subgroup's first chunk of its first rows, loaded into registers by qmoe_prefetch before q8_round, so
// that its trip to memory overlaps the workgroup's reading and rounding of x; qmoe_row_dots stores it when it
// starts on those rows.
uvec4 PRE_V[R][U];
uint PRE_P[R];
bool PRE_ON = false;
void qmoe_prefetch(const uint p[R], uint nblocks) {
  if (gl_SubgroupSize < QMOE_SG) return;
  qmoe_stage_load(p, min(qmoe_chunk_blocks(), nblocks), PRE_V);
  PRE_P = p;
  PRE_ON = true;
}
#else
void qmoe_prefetch(const uint p[R], uint nblocks) {} // f32 and f64: nothing to overlap
#endif

#if ${AFFINE}
// acc += A·sv + B·sx for the run at IG of the block at B (sv = Σ V·x, sx = Σ x over the run): the affine form's
// two steps, in this order, for the f32 rows and the q8 integer sums alike.
void qmoe_affine_add(inout float acc, uint b, int ig, float sv, float sx) {
#if ${AFFINE_A}
  acc += dq_run_a(b, ig) * sv;
#else
  acc += sv;
#endif
#if ${AFFINE_B}
  acc += dq_run_b(b, ig) * sx;
#endif
}
#endif

#if ${Q8_IDOT}
// qmoe_dot_chunk with x in the records, for a packed affine decode over runs of 16: a run's Σ V·x' is
// 2^e·(Σ byte·q - OFF·Σq), four bytes per OpSUDot, then the f32 rows' A·sv + B·sx (the same bits).
void qmoe_dot_chunk_q8(const uint at[R], uint xi, uint ne, inout float acc[R]) {
  const uint step = RL * gl_SubgroupSize;
  for (uint e = RL * gl_SubgroupInvocationID; e < ne; e += step) {
    const int ig = int(e % BE);
    const uint j = xi + e - Q8_BASE; // a multiple of 16
    const uvec2 gs = q8g[j >> 5];
    const float s = uintBitsToFloat(gs.x);
    const int sq = int(gs.y << (16u - (j & 16u))) >> 16; // this half's Σq, sign-extended
    const uint w = j >> 2;
    const uint q0 = q8w[w], q1 = q8w[w + 1u], q2 = q8w[w + 2u], q3 = q8w[w + 3u];
    const float sx = float(sq) * s; // Σ x' over the run (exact; unused without B)
    for (uint r = 0u; r < R; r++) {
      const uint b = at[r] + (e / BE) * BB;
      int iv = qmoe_sudot(q0, dq_run_w(b, ig, 0), 0);
      iv += qmoe_sudot(q1, dq_run_w(b, ig, 4), 0);
      iv += qmoe_sudot(q2, dq_run_w(b, ig, 8), 0);
      iv += qmoe_sudot(q3, dq_run_w(b, ig, 12), 0);
      const float sv = float(iv - DQ_RUN_W_OFF * sq) * s;
      qmoe_affine_add(acc[r], b, ig, sv, sx);
    }
  }
}
#endif

// acc[r] += sum over the staged chunk's NE elements of decode(row r)[e] * x[XI + e]; lane l takes the run
// of elements e0 + RL*l .. e0 + RL*l + RL-1 of each step of RL * gl_SubgroupSize.
void qmoe_dot_chunk(const uint at[R], uint xi, uint ne, inout ${T} acc[R]) {
#if ${Q8_IDOT}
  if (Q8_REC) {
    qmoe_dot_chunk_q8(at, xi, ne, acc);
    return;
  }
#endif
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
    float sx = 0.0; // all R rows (unused, and so not computed, without B)
#if ${AFFINE_B}
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
      qmoe_affine_add(acc[r], b, ig, sv, sx);
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
  if (gl_SubgroupSize < QMOE_SG) { // sw[] is sized for QMOE_SG or more lanes: a visible NaN, not a wrong read
    for (uint r = 0u; r < R; r++) acc[r] = ${T}(${NAN});
    return;
  }
  const uint nbc = qmoe_chunk_blocks();
  for (uint b0 = 0u; b0 < nblocks; b0 += nbc) {
    const uint nb = min(nbc, nblocks - b0);
    uint at[R];
    uint pc_[R];
    for (uint r = 0u; r < R; r++) pc_[r] = p[r] + b0 * BB;
    bool pre = false;
#if ${Q8}
    if (b0 == 0u && PRE_ON) {
      pre = true;
      for (uint r = 0u; r < R; r++) pre = pre && PRE_P[r] == p[r];
      PRE_ON = false;
    }
#endif
    if (pre) {
#if ${Q8}
      qmoe_stage_store(pc_, nb, PRE_V, at);
#endif
    } else {
      uvec4 v[R][U];
      qmoe_stage_load(pc_, nb, v);
      qmoe_stage_store(pc_, nb, v, at);
    }
    qmoe_dot_chunk(at, xi + b0 * BE, nb * BE, acc);
    subgroupBarrier(); // the next chunk overwrites the slices
  }
}
