// y[H] = sum_k w_k * (Wd[ids_k] . h_k) over the K chosen experts in one dispatch (y is overwritten; no
// atomics). A workgroup computes 2 rows: its subgroups take the experts k of a chunk of up to MAXK (one each,
// round robin), leave their two dot products in shared memory, and invocation r then adds w_k * dot over k in
// order 0..K-1 in ${T}. p: H, F, E, K; h (binding 1) is read as X. An expert id outside [0, E) makes the
// outputs NaN (never a read out of bounds).
const uint MAXK = ${MAXK}u;
shared ${T} part[MAXK * R];
void main() {
  const uint H = pc.p[0], F = pc.p[1], E = pc.p[2], K = pc.p[3];
  const uint nblk = F / BE, row_bytes = nblk * BB;
  const uint woff = pc.o[0], hoff = pc.o[1] >> 2, ioff = pc.o[2] >> 2, wkoff = pc.o[3] >> 2, yoff = pc.o[4] >> 2;
  const uint tid = gl_LocalInvocationIndex, nsg = gl_NumSubgroups;
  bool bad = false;
  for (uint k = 0u; k < K; k++) { int e = IDS[ioff + k]; bad = bad || e < 0 || uint(e) >= E; }
  { // q8: the first item's rows' first chunk asked for, then every slot's h into shared records once per workgroup
    const uint r0 = gl_WorkGroupID.x * R, k = gl_SubgroupID; // (f32, f64: nothing)
    if (!bad && r0 < H && k < min(MAXK, K)) {
      const uint base = woff + uint(IDS[ioff + k]) * H * row_bytes;
      qmoe_prefetch(uint[R](base + r0 * row_bytes, base + min(r0 + 1u, H - 1u) * row_bytes), nblk);
    }
    q8_round(hoff, K * F);
  }
  for (uint r0 = gl_WorkGroupID.x * R; r0 < H; r0 += gl_NumWorkGroups.x * R) {
    const uint r1 = min(r0 + 1u, H - 1u);
    ${T} s = ${T}(0); // invocation tid < R: row r0 + tid
    for (uint k0 = 0u; k0 < K && !bad; k0 += MAXK) { // uniform over the workgroup
      const uint nk = min(MAXK, K - k0);
      for (uint kk = gl_SubgroupID; kk < nk; kk += nsg) {
        const uint k = k0 + kk, base = woff + uint(IDS[ioff + k]) * H * row_bytes;
        ${T} acc[R] = ${T}[R](${T}(0), ${T}(0));
        qmoe_row_dots(uint[R](base + r0 * row_bytes, base + r1 * row_bytes), hoff + k * F, nblk, acc);
        const ${T} s0 = subgroupAdd(acc[0]), s1 = subgroupAdd(acc[1]);
        if (subgroupElect()) {
          part[kk * R] = s0;
          part[kk * R + 1u] = s1;
        }
      }
      barrier();
      if (tid < R) {
        for (uint kk = 0u; kk < nk; kk++) s += ${T}(WK[wkoff + k0 + kk]) * part[kk * R + tid];
      }
      barrier();
    }
    if (tid < R && r0 + tid < H) Y[yoff + r0 + tid] = bad ? ${NAN} : float(s);
  }
}
