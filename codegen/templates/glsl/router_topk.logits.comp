// Pass 1: logits[e] = Wr[e] . x in ${T}, one workgroup per expert row (strided when the grid is capped): each
// invocation's slice of the row and of x read with 16-byte loads (vec4 views of both buffers) where the row
// and x start 16-byte aligned and H is a multiple of 4, else as floats; then wg_sum (subgroupAdd, then the
// subgroups' partials in order: a fixed order for a given subgroup size). p: H, E, K.
${T} dot4(vec4 a, vec4 b) { return dot(${TV}(a), ${TV}(b)); }
void main() {
  const uint H = pc.p[0], E = pc.p[1], tid = gl_LocalInvocationIndex;
  const uint woff = pc.o[0] >> 2, xoff = pc.o[1] >> 2;
  const bool vec = ((woff | xoff | H) & 3u) == 0u;
  for (uint e = gl_WorkGroupID.x; e < E; e += gl_NumWorkGroups.x) {
    ${T} a = ${T}(0);
    if (vec) {
      const uint w4 = (woff + e * H) >> 2, x4 = xoff >> 2, H4 = H >> 2;
      for (uint i = tid; i < H4; i += ${WG}u) a += dot4(Wr4[w4 + i], X4[x4 + i]);
    } else {
      for (uint i = tid; i < H; i += ${WG}u) a += ${T}(Wr[woff + e * H + i]) * ${T}(X[xoff + i]);
    }
    a = wg_sum(a);
    if (tid == 0u) LG[e] = a;
  }
}
