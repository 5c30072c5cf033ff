// Pass 2 (one workgroup): the best of the x[1] partial results, as an int32 index. p: n.
void main() {
  const uint ng = pc.x[1], tid = gl_LocalInvocationIndex;
  float bvv = 0.0;
  uint bii = 0xFFFFFFFFu;
  for (uint g = tid; g < ng; g += ${WG}u) {
    float k = uintBitsToFloat(S[2u * g]);
    uint i = S[2u * g + 1u];
    if (i != 0xFFFFFFFFu && better(k, i, bvv, bii)) { bvv = k; bii = i; }
  }
  wg_argmax(bvv, bii);
  if (tid == 0u) IDX[pc.o[1] >> 2] = int(si[0]);
}
