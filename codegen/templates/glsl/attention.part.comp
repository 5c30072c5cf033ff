const uint GB = ${GB}u, CH = ${WG}u;
shared ${T} e[GB * CH];
// Pass 1: grid (nkv * ceil(G/GB), ns), G = nh/nkv query heads per kv head. A workgroup takes up to GB query
// heads of one kv head and one split of CH cache positions (sp*CH ..), so each K and V row is read from
// memory once for all of them. Writes S[(h*ns + sp)*(D+2) ..] = m (max score), l (sum of e^(score-m)),
// o[D] (sum of e^(score-m) * V). p: nh, nkv, D, n_kv, ctx; x[0]: ns.
void main() {
  const uint nh = pc.p[0], nkv = pc.p[1], D = pc.p[2], n_kv = pc.p[3], ns = pc.x[0];
  const uint G = nh / nkv, nhb = (G + GB - 1u) / GB;
  const uint kvh = gl_WorkGroupID.x / nhb, hb = gl_WorkGroupID.x - kvh * nhb, sp = gl_WorkGroupID.y;
  const uint tid = gl_LocalInvocationIndex, h0 = kvh * G + hb * GB, nu = min(GB, G - hb * GB);
  const uint qo = pc.o[0] >> 2, ko = pc.o[1] >> 2, vo = pc.o[2] >> 2;
  const ${T} scale = ${T}(1) / sqrt(${T}(D));
  const uint cnt = min(CH, n_kv - sp * CH);
  const uint kr = ko + ((sp * CH + tid) * nkv + kvh) * D;
  for (uint u = 0u; u < nu; u++) {   // the same count in every invocation: the reductions stay uniform
    ${T} sc = ${T}(0);
    if (tid < cnt) {
      const uint qr = qo + (h0 + u) * D;
      for (uint d = 0u; d < D; d++) sc += ${T}(Q[qr + d]) * ${T}(Kc[kr + d]);
      sc *= scale;
    }
    ${T} m = wg_max(tid < cnt ? sc : ${T}(-1.0 / 0.0));
    ${T} ev = tid < cnt ? ${EXP}(sc - m) : ${T}(0);
    e[u * CH + tid] = ev;
    ${T} l = wg_sum(ev);   // its barriers also publish e[]
    if (tid == 0u) {
      const uint so = ((h0 + u) * ns + sp) * (D + 2u);
      S[so] = m;
      S[so + 1u] = l;
    }
  }
  for (uint d = tid; d < D; d += CH) {
    ${T} o[GB];
${OINIT}
    for (uint t = 0u; t < cnt; t++) {
      const ${T} vv = ${T}(Vc[vo + ((sp * CH + t) * nkv + kvh) * D + d]);
${OACC}
    }
${OSTORE}
  }
}
