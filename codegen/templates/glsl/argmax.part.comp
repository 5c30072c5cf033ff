// Pass 1: workgroup g reduces x[g*chunk .. (g+1)*chunk) to S[2g] = value bits, S[2g+1] = index.
// p: n; x[0]: chunk.
void main() {
  const uint n = pc.p[0], chunk = pc.x[0], xo = pc.o[0] >> 2, tid = gl_LocalInvocationIndex;
  const uint g = gl_WorkGroupID.x, lo = g * chunk, hi = min(n, lo + chunk);
  float bvv = 0.0;
  uint bii = 0xFFFFFFFFu;
  for (uint i = lo + tid; i < hi; i += ${WG}u) {
    float k = key(X[xo + i], i);
    if (better(k, i, bvv, bii)) { bvv = k; bii = i; }
  }
  wg_argmax(bvv, bii);
  if (tid == 0u) { S[2u * g] = floatBitsToUint(sv[0]); S[2u * g + 1u] = si[0]; }
}
