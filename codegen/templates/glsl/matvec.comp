// y[rows] = W[rows x cols] . x; p: rows, cols. Workgroups stride over groups of R rows.
void main() {
  const uint rows = pc.p[0], cols = pc.p[1];
  const uint nblk = cols / BE, nitem = (nblk + G - 1u) / G, row_bytes = nblk * BB;
  const uint tid = gl_LocalInvocationIndex, rl = tid / KS, ks = tid % KS;
  const uint woff = pc.o[0], xoff = pc.o[1] >> 2, yoff = pc.o[2] >> 2;
  const uint wlen = uint(W.length());
  for (uint rg = gl_WorkGroupID.x; rg * R < rows; rg += gl_NumWorkGroups.x) {
    ${T} acc = ${T}(0);
    for (uint t0 = 0u; t0 < nitem; t0 += KS) {
      for (uint idx = tid; idx < WG * U; idx += WG) {
        uint s = idx / U, u = idx - s * U;
        uint row = rg * R + s / KS, item = t0 + s % KS;
        uvec4 w = uvec4(0u);
        if (row < rows && item < nitem) {
          uint q = ((woff + row * row_bytes + item * IB) >> 4) + u;
          if (q < wlen) w = W[q];
        }
        put_slot(s, u, w);
      }
      for (uint idx = tid; idx < KS * IE; idx += WG) {
        uint k = idx / IE, e = idx - k * IE, col = (t0 + k) * IE + e;
        xs[k * XS + e] = col < cols ? X[xoff + col] : 0.0;
      }
      barrier();
      uint row = rg * R + rl, item = t0 + ks;
      if (row < rows && item < nitem) {
        uint start = woff + row * row_bytes + item * IB;
        acc += item_dot(tid, start, ks * XS, min(G, nblk - item * G));
      }
      barrier();
    }
    part[tid] = acc;
    barrier();
    if (ks == 0u && rg * R + rl < rows) {
      ${T} s = part[tid];
      for (uint k = 1u; k < KS; k++) s += part[tid + k];
      Y[yoff + rg * R + rl] = float(s);
    }
    barrier();
  }
}
