// y = a + b (y may be a). p: n.
void main() {
  const uint n = pc.p[0], ao = pc.o[0] >> 2, bo = pc.o[1] >> 2, yo = pc.o[2] >> 2;
  for (uint i = gl_GlobalInvocationID.x; i < n; i += gl_NumWorkGroups.x * ${WG}u) Y[yo + i] = A[ao + i] + Bv[bo + i];
}
