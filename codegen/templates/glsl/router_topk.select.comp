shared ${T} lgs[${WG}];
// Pass 2 (one workgroup): softmax over all E logits, top K by logit (ties: the lower index), w = p / (sum of
// the chosen p). Ranked in parallel: expert e's rank is the number of logits above it plus the equal ones at
// lower indices (the logits staged through shared memory WG at a time), and the experts of rank < K are the
// picks, in rank order (a NaN logit ranks below every number, NaNs by index: the ranks stay a permutation, so
// every pick is written). The sum of the chosen p is a wg_sum (a fixed order for a given subgroup size); with
// E <= WG each invocation keeps its expert's rank for the second pass, else it ranks again. p: H, E, K.
void main() {
  const uint E = pc.p[1], K = pc.p[2], tid = gl_LocalInvocationIndex;
  const uint ioff = pc.o[2] >> 2, woff = pc.o[3] >> 2;
  ${T} mx = ${T}(-1.0 / 0.0);
  for (uint e = tid; e < E; e += ${WG}u) mx = max(mx, LG[e]);
  mx = wg_max(mx);
  ${T} sum = ${T}(0);
  for (uint e = tid; e < E; e += ${WG}u) sum += ${EXP}(LG[e] - mx);
  sum = wg_sum(sum);
  ${T} chosen = ${T}(0), mine = ${T}(0);
  uint rank = 0xFFFFFFFFu;
  for (uint pass_ = 0u; pass_ < 2u; pass_++) {
    ${T} part = ${T}(0);
    for (uint c0 = 0u; c0 < E; c0 += ${WG}u) {   // the same count in every invocation: barriers stay uniform
      const uint e = c0 + tid;
      if (pass_ == 0u || E > ${WG}u) {
        mine = e < E ? LG[e] : ${T}(0);
        rank = 0u;
        const bool mn = isnan(mine); // a NaN is beaten by every number and ranks by index among NaNs
        for (uint j0 = 0u; j0 < E; j0 += ${WG}u) {
          barrier();
          if (j0 + tid < E) lgs[tid] = LG[j0 + tid];
          barrier();
          const uint n = min(${WG}u, E - j0);
          for (uint j = 0u; j < n; j++) {
            const ${T} l = lgs[j];
            rank += (mn ? (!isnan(l) || j0 + j < e) : (l > mine || (l == mine && j0 + j < e))) ? 1u : 0u;
          }
        }
      }
      if (e < E && rank < K) {
        const ${T} p = ${EXP}(mine - mx) / sum;
        if (pass_ == 0u) {
          part += p;
        } else {
          IDS[ioff + rank] = int(e);
          WOUT[woff + rank] = float(p / chosen);
        }
      }
    }
    if (pass_ == 0u) chosen = wg_sum(part);
  }
}
