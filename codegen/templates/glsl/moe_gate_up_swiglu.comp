// h[k][f] = silu(Wg[ids_k] . x)[f] * (Wu[ids_k] . x)[f] for the K chosen experts in one dispatch: grid.y = k
// (the expert id is read here), grid.x strides over groups of R rows f; SwiGLU in ${T}. p: H, F, E, K.
// An expert id outside [0, E) makes that expert's outputs NaN (never a read out of bounds).
void main() {
  const uint H = pc.p[0], F = pc.p[1], E = pc.p[2], k = gl_WorkGroupID.y;
  const uint nblk = H / BE, nitem = (nblk + G - 1u) / G, row_bytes = nblk * BB;
  const uint tid = gl_LocalInvocationIndex, rl = tid / KS, ks = tid % KS;
  const uint goff = pc.o[0], uoff = pc.o[1], xoff = pc.o[2] >> 2, hoff = (pc.o[4] >> 2) + k * F;
  const uint glen = uint(Wg.length()), ulen = uint(Wu.length());
  const int eid = IDS[(pc.o[3] >> 2) + k];
  const bool bad = eid < 0 || uint(eid) >= E;   // uniform over the workgroup
  const uint e = bad ? 0u : uint(eid);
  for (uint rg = gl_WorkGroupID.x; rg * R < F; rg += gl_NumWorkGroups.x) {
    ${T} ag = ${T}(0), au = ${T}(0);
    for (uint t0 = 0u; t0 < nitem && !bad; t0 += KS) {
      for (uint idx = tid; idx < NM * WG * U; idx += WG) {
        uint s = idx / U, u = idx - s * U, m = s / WG, sl = s - m * WG;
        uint f = rg * R + sl / KS, item = t0 + sl % KS;
        uvec4 w = uvec4(0u);
        if (f < F && item < nitem) {
          uint rel = (e * F + f) * row_bytes + item * IB;
          if (m == 0u) { uint q = ((goff + rel) >> 4) + u; if (q < glen) w = Wg[q]; }
          else { uint q = ((uoff + rel) >> 4) + u; if (q < ulen) w = Wu[q]; }
        }
        put_slot(s, u, w);
      }
      for (uint idx = tid; idx < KS * IE; idx += WG) {
        uint kk = idx / IE, el = idx - kk * IE, col = (t0 + kk) * IE + el;
        xs[kk * XS + el] = col < H ? X[xoff + col] : 0.0;
      }
      barrier();
      uint f = rg * R + rl, item = t0 + ks;
      if (f < F && item < nitem) {
        uint rel = (e * F + f) * row_bytes + item * IB;
        uint nb = min(G, nblk - item * G);
        ag += item_dot(tid, goff + rel, ks * XS, nb);
        au += item_dot(WG + tid, uoff + rel, ks * XS, nb);
      }
      barrier();
    }
    part[tid] = ag;
    part[WG + tid] = au;
    barrier();
    if (ks == 0u && rg * R + rl < F) {
      ${T} gs = part[tid], us = part[WG + tid];
      for (uint kk = 1u; kk < KS; kk++) { gs += part[tid + kk]; us += part[WG + tid + kk]; }
      ${T} silu = gs / (${T}(1) + ${EXP}(-gs));
      Hout[hoff + rg * R + rl] = bad ? ${NAN} : float(silu * us);
    }
    barrier();
  }
}
