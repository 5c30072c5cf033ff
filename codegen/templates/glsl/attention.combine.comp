// Pass 2: grid nh; merges head h's ns splits: o = sum_s o_s e^(m_s - M) / sum_s l_s e^(m_s - M).
// p: nh, nkv, D, n_kv, ctx; x[0]: ns.
void main() {
  const uint D = pc.p[2], ns = pc.x[0], h = gl_WorkGroupID.x, tid = gl_LocalInvocationIndex;
  const uint base = h * ns * (D + 2u), oo = (pc.o[3] >> 2) + h * D;
  ${T} M = S[base];
  for (uint s = 1u; s < ns; s++) M = max(M, S[base + s * (D + 2u)]);
  ${T} L = ${T}(0);
  for (uint s = 0u; s < ns; s++) L += S[base + s * (D + 2u) + 1u] * ${EXP}(S[base + s * (D + 2u)] - M);
  for (uint d = tid; d < D; d += ${WG}u) {
    ${T} o = ${T}(0);
    for (uint s = 0u; s < ns; s++) o += S[base + s * (D + 2u) + 2u + d] * ${EXP}(S[base + s * (D + 2u)] - M);
    O[oo + d] = float(o / L);
  }
}
