shared ${T} fs[${WG}];
// Pass 2: grid nh; merges head h's ns splits: M = max m_s, f_s = e^(m_s - M) (0 for an empty split),
// L = sum l_s f_s (wg_sum), o[d] = sum_s o_s[d] f_s / L with invocations over d and the factors staged WG
// splits at a time, the sum over s in split order. p: nh, nkv, D, n_kv, ctx; x[0]: ns.
void main() {
  const uint D = pc.p[2], ns = pc.x[0], h = gl_WorkGroupID.x, tid = gl_LocalInvocationIndex;
  const uint base = h * ns * (D + 2u), oo = (pc.o[3] >> 2) + h * D;
  const ${T} NEG = ${T}(-1.0 / 0.0);
  ${T} M = NEG;
  for (uint s = tid; s < ns; s += ${WG}u) M = max(M, S[base + s * (D + 2u)]);
  M = wg_max(M);
  ${T} L = ${T}(0);
  for (uint s = tid; s < ns; s += ${WG}u) {
    const ${T} ms = S[base + s * (D + 2u)];
    if (ms != NEG) L += S[base + s * (D + 2u) + 1u] * ${EXP}(ms - M);
  }
  L = wg_sum(L);
  for (uint d0 = 0u; d0 < D; d0 += ${WG}u) {   // the same count in every invocation: barriers stay uniform
    const uint d = d0 + tid;
    ${T} o = ${T}(0);
    for (uint s0 = 0u; s0 < ns; s0 += ${WG}u) {
      barrier();
      if (s0 + tid < ns) {
        const ${T} ms = S[base + (s0 + tid) * (D + 2u)];
        fs[tid] = ms == NEG ? ${T}(0) : ${EXP}(ms - M);
      }
      barrier();
      const uint n = min(${WG}u, ns - s0);
      if (d < D)
        for (uint s = 0u; s < n; s++) o += S[base + (s0 + s) * (D + 2u) + 2u + d] * fs[s];
    }
    if (d < D) O[oo + d] = float(o / L);
  }
}
