shared ${T} bv[${WG}];
shared uint bi[${WG}];
// Pass 2 (one workgroup): softmax over all E logits, top K by logit (ties: the lower index), w = p / (sum of
// the chosen p). The k-th pick is the best (logit desc, index asc) of those after the (k-1)-th in that order,
// so no flags are needed. p: H, E, K.
void main() {
  const uint E = pc.p[1], K = pc.p[2], tid = gl_LocalInvocationIndex;
  const uint ioff = pc.o[2] >> 2, woff = pc.o[3] >> 2;
  ${T} mx = LG[0];
  for (uint e = tid; e < E; e += ${WG}u) mx = max(mx, LG[e]);
  mx = wg_max(mx);
  ${T} sum = ${T}(0);
  for (uint e = tid; e < E; e += ${WG}u) sum += ${EXP}(LG[e] - mx);
  sum = wg_sum(sum);
  ${T} pv = ${T}(0);
  uint pi = 0xFFFFFFFFu;
  for (uint k = 0u; k < K; k++) {
    ${T} best = ${T}(0);
    uint besti = 0xFFFFFFFFu;
    for (uint e = tid; e < E; e += ${WG}u) {
      ${T} l = LG[e];
      bool after = pi == 0xFFFFFFFFu || l < pv || (l == pv && e > pi);
      if (after && (besti == 0xFFFFFFFFu || l > best)) { best = l; besti = e; }
    }
    bv[tid] = best;
    bi[tid] = besti;
    barrier();
    if (tid == 0u) {
      for (uint t = 1u; t < ${WG}u; t++) {
        if (bi[t] != 0xFFFFFFFFu && (bi[0] == 0xFFFFFFFFu || bv[t] > bv[0] || (bv[t] == bv[0] && bi[t] < bi[0]))) {
          bv[0] = bv[t];
          bi[0] = bi[t];
        }
      }
      IDS[ioff + k] = int(bi[0]);
    }
    barrier();
    pv = bv[0];
    pi = bi[0];
    barrier();
  }
  if (tid == 0u) {
    ${T} chosen = ${T}(0);
    for (uint k = 0u; k < K; k++) chosen += ${EXP}(LG[uint(IDS[ioff + k])] - mx) / sum;
    for (uint k = 0u; k < K; k++) WOUT[woff + k] = float((${EXP}(LG[uint(IDS[ioff + k])] - mx) / sum) / chosen);
  }
}
