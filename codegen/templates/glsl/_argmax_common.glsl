shared float sv[${WG}];
shared uint si[${WG}];
bool better(float v, uint i, float bvv, uint bii) { return bii == 0xFFFFFFFFu || v > bvv || (v == bvv && i < bii); }
// Reduces (v, i) over the workgroup into sv[0], si[0]: a tree over halves, ties to the lower index.
void wg_argmax(float v, uint i) {
  const uint tid = gl_LocalInvocationIndex;
  sv[tid] = v;
  si[tid] = i;
  barrier();
  for (uint s = ${HALF}u; s > 0u; s >>= 1) {
    if (tid < s && si[tid + s] != 0xFFFFFFFFu && better(sv[tid + s], si[tid + s], sv[tid], si[tid])) {
      sv[tid] = sv[tid + s];
      si[tid] = si[tid + s];
    }
    barrier();
  }
}
// The CPU reference scans with a strict '>': a NaN at index 0 is never beaten, a NaN elsewhere never wins.
float key(float x, uint i) { return isnan(x) ? (i == 0u ? 1.0 / 0.0 : -1.0 / 0.0) : x; }
