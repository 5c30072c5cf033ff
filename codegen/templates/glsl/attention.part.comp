const uint PB = 4u, MAXPOS = ${MAXPOS}u;
shared ${T} sc[MAXPOS];
shared ${TV} po[${WG}];
${T} dot4(vec4 a, vec4 b) { return dot(${TV}(a), ${TV}(b)); }
// Column c of a D-row at element offset base: 4 floats with a 16-byte load (vec), else 1 float (the rest 0).
vec4 ldk(bool vec, uint base, uint c) { return vec ? Kc4[(base >> 2) + c] : vec4(Kc[base + c], 0.0, 0.0, 0.0); }
vec4 ldv(bool vec, uint base, uint c) { return vec ? Vc4[(base >> 2) + c] : vec4(Vc[base + c], 0.0, 0.0, 0.0); }
vec4 ldq(bool vec, uint base, uint c) { return vec ? Q4[(base >> 2) + c] : vec4(Q[base + c], 0.0, 0.0, 0.0); }
// Pass 1: grid (nh, ns). Workgroup (h, sp) takes query head h (GQA: kv head h / (nh/nkv)) over the split's
// positions [sp*per, sp*per + per), per = ceil(n_kv / ns) <= MAXPOS (the backend's ns makes it so):
// scores: each subgroup takes PB positions at a time (their K rows in flight together; lanes over the row's
// 16-byte columns, subgroupAdd); then the split's max m and e_t = exp(s_t - m), l = sum e_t (wg_max, wg_sum);
// then o = sum_t e_t V_t with invocations over (16-byte column, position group), the groups' partials added
// in order. Writes S[(h*ns + sp)*(D+2) ..] = m, l, o[D] (an empty split: -inf, 0, 0). Rows use 16-byte
// loads when D is a multiple of 4 and Q, K, V start 16-byte aligned, else one float per column.
// p: nh, nkv, D, n_kv, ctx; x[0]: ns.
void main() {
  const uint nh = pc.p[0], nkv = pc.p[1], D = pc.p[2], n_kv = pc.p[3], ns = pc.x[0];
  const uint h = gl_WorkGroupID.x, sp = gl_WorkGroupID.y, kvh = h / (nh / nkv), tid = gl_LocalInvocationIndex;
  const uint qo = pc.o[0] >> 2, ko = pc.o[1] >> 2, vo = pc.o[2] >> 2;
  const bool vec = ((qo | ko | vo | D) & 3u) == 0u;
  const uint NC = vec ? D >> 2 : D, W = vec ? 4u : 1u;   // columns of a row, elements per column
  const ${T} scale = ${T}(1) / sqrt(${T}(D));
  const uint per = (n_kv + ns - 1u) / ns, lo = sp * per;
  const uint cnt = lo < n_kv ? min(per, n_kv - lo) : 0u;
  const uint qb = qo + h * D, kb = ko + (lo * nkv + kvh) * D, vb = vo + (lo * nkv + kvh) * D, rs = nkv * D;
  const uint lane = gl_SubgroupInvocationID, SG = gl_SubgroupSize;
  for (uint t0 = gl_SubgroupID * PB; t0 < cnt; t0 += gl_NumSubgroups * PB) {   // uniform in the subgroup
    const uint last = cnt - 1u;
    const uint r0 = kb + t0 * rs, r1 = kb + min(t0 + 1u, last) * rs, r2 = kb + min(t0 + 2u, last) * rs,
               r3 = kb + min(t0 + 3u, last) * rs;
    ${T} s0 = ${T}(0), s1 = ${T}(0), s2 = ${T}(0), s3 = ${T}(0);
    for (uint c = lane; c < NC; c += SG) {
      const vec4 k0 = ldk(vec, r0, c), k1 = ldk(vec, r1, c), k2 = ldk(vec, r2, c), k3 = ldk(vec, r3, c);
      const vec4 q = ldq(vec, qb, c);
      s0 += dot4(q, k0);
      s1 += dot4(q, k1);
      s2 += dot4(q, k2);
      s3 += dot4(q, k3);
    }
    s0 = subgroupAdd(s0);
    s1 = subgroupAdd(s1);
    s2 = subgroupAdd(s2);
    s3 = subgroupAdd(s3);
    if (subgroupElect()) {
      sc[t0] = s0 * scale;
      if (t0 + 1u < cnt) sc[t0 + 1u] = s1 * scale;
      if (t0 + 2u < cnt) sc[t0 + 2u] = s2 * scale;
      if (t0 + 3u < cnt) sc[t0 + 3u] = s3 * scale;
    }
  }
  barrier();
  ${T} m = ${T}(-1.0 / 0.0);
  for (uint t = tid; t < cnt; t += ${WG}u) m = max(m, sc[t]);
  m = wg_max(m);
  ${T} l = ${T}(0);
  for (uint t = tid; t < cnt; t += ${WG}u) {
    const ${T} ev = ${EXP}(sc[t] - m);
    sc[t] = ev;
    l += ev;
  }
  l = wg_sum(l);   // its barriers also publish sc[]
  const uint so = (h * ns + sp) * (D + 2u);
  if (tid == 0u) {
    S[so] = m;
    S[so + 1u] = l;
  }
  // o: R position groups per column (R = 1 when the columns fill the workgroup)
  const uint R = NC >= ${WG}u ? 1u : ${WG}u / NC;
  for (uint it = tid; it < R * NC; it += ${WG}u) {
    const uint c = it % NC, r = it / NC;
    ${TV} a = ${TV}(0);
    for (uint t = r; t < cnt; t += 4u * R) {   // 4 rows in flight; the sum in position order
      const uint t1 = min(t + R, cnt - 1u), t2 = min(t + 2u * R, cnt - 1u), t3 = min(t + 3u * R, cnt - 1u);
      const vec4 v0 = ldv(vec, vb + t * rs, c), v1 = ldv(vec, vb + t1 * rs, c), v2 = ldv(vec, vb + t2 * rs, c),
                 v3 = ldv(vec, vb + t3 * rs, c);
      a += sc[t] * ${TV}(v0);
      if (t + R < cnt) a += sc[t1] * ${TV}(v1);
      if (t + 2u * R < cnt) a += sc[t2] * ${TV}(v2);
      if (t + 3u * R < cnt) a += sc[t3] * ${TV}(v3);
    }
    if (R == 1u) {
      for (uint k = 0u; k < W; k++) S[so + 2u + c * W + k] = a[k];
    } else {
      po[it] = a;
    }
  }
  if (R > 1u) {
    barrier();
    for (uint c = tid; c < NC; c += ${WG}u) {
      ${TV} a = po[c];
      for (uint r = 1u; r < R; r++) a += po[r * NC + c];
      for (uint k = 0u; k < W; k++) S[so + 2u + c * W + k] = a[k];
    }
  }
}
