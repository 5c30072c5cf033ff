// y[H] = sum_k w_k * (Wd[ids_k] . h_k) over the K chosen experts in one dispatch (y is overwritten; no
// atomics). A row's work is its K x nitem items (k-major); each invocation adds w_k * (item . h_k) for its
// items, and the row's KS partial sums are added in a fixed order. p: H, F, E, K. An expert id outside
// [0, E) makes the outputs NaN (never a read out of bounds).
void main() {
  const uint H = pc.p[0], F = pc.p[1], E = pc.p[2], K = pc.p[3];
  const uint nblk = F / BE, nitem = (nblk + G - 1u) / G, row_bytes = nblk * BB, total = K * nitem;
  const uint tid = gl_LocalInvocationIndex, rl = tid / KS, ks = tid % KS;
  const uint woff = pc.o[0], hoff = pc.o[1] >> 2, ioff = pc.o[2] >> 2, wkoff = pc.o[3] >> 2, yoff = pc.o[4] >> 2;
  const uint wlen = uint(Wd.length());
  bool bad = false;
  for (uint k = 0u; k < K; k++) { int e = IDS[ioff + k]; bad = bad || e < 0 || uint(e) >= E; }
  for (uint rg = gl_WorkGroupID.x; rg * R < H; rg += gl_NumWorkGroups.x) {
    ${T} acc = ${T}(0);
    for (uint t0 = 0u; t0 < total && !bad; t0 += KS) {
      for (uint idx = tid; idx < WG * U; idx += WG) {
        uint s = idx / U, u = idx - s * U;
        uint r = rg * R + s / KS, j = t0 + s % KS;
        uvec4 w = uvec4(0u);
        if (r < H && j < total) {
          uint k = j / nitem, item = j - k * nitem;
          uint q = ((woff + (uint(IDS[ioff + k]) * H + r) * row_bytes + item * IB) >> 4) + u;
          if (q < wlen) w = Wd[q];
        }
        put_slot(s, u, w);
      }
      for (uint idx = tid; idx < KS * IE; idx += WG) {
        uint kk = idx / IE, el = idx - kk * IE, j = t0 + kk;
        float hv = 0.0;
        if (j < total) {
          uint k = j / nitem, col = (j - k * nitem) * IE + el;
          if (col < F) hv = Hin[hoff + k * F + col];
        }
        xs[kk * XS + el] = hv;
      }
      barrier();
      uint r = rg * R + rl, j = t0 + ks;
      if (r < H && j < total) {
        uint k = j / nitem, item = j - k * nitem;
        uint start = woff + (uint(IDS[ioff + k]) * H + r) * row_bytes + item * IB;
        acc += ${T}(WK[wkoff + k]) * item_dot(tid, start, ks * XS, min(G, nblk - item * G));
      }
      barrier();
    }
    part[tid] = acc;
    barrier();
    if (ks == 0u && rg * R + rl < H) {
      ${T} s = part[tid];
      for (uint kk = 1u; kk < KS; kk++) s += part[tid + kk];
      Y[yoff + rg * R + rl] = bad ? ${NAN} : float(s);
    }
    barrier();
  }
}
