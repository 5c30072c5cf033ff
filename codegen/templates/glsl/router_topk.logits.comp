// Pass 1: logits[e] = Wr[e] . x in ${T}, one workgroup per expert row (strided). p: H, E, K.
void main() {
  const uint H = pc.p[0], E = pc.p[1], tid = gl_LocalInvocationIndex;
  const uint woff = pc.o[0] >> 2, xoff = pc.o[1] >> 2;
  for (uint e = gl_WorkGroupID.x; e < E; e += gl_NumWorkGroups.x) {
    ${T} a = ${T}(0);
    for (uint i = tid; i < H; i += ${WG}u) a += ${T}(Wr[woff + e * H + i]) * ${T}(X[xoff + i]);
    a = wg_sum(a);
    if (tid == 0u) LG[e] = a;
  }
}
