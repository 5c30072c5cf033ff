// Kc[pos], Vc[pos] = k, v (rows of nkv x D in caches of ctx positions). p: nkv, D, pos, ctx.
void main() {
  const uint n = pc.p[0] * pc.p[1], at = pc.p[2] * n;
  const uint ko = pc.o[0] >> 2, vo = pc.o[1] >> 2, kc = (pc.o[2] >> 2) + at, vc = (pc.o[3] >> 2) + at;
  for (uint i = gl_GlobalInvocationID.x; i < n; i += gl_NumWorkGroups.x * ${WG}u) {
    Kc[kc + i] = Kin[ko + i];
    Vc[vc + i] = Vin[vo + i];
  }
}
