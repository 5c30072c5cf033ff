// h[k][f] = silu(Wg[ids_k] . x)[f] * (Wu[ids_k] . x)[f] for the K chosen experts in one dispatch: grid.y = k
// (the expert id is read here); each subgroup computes gate row f and up row f together (x read once), the
// workgroups' subgroups stride over f; SwiGLU in ${T}. p: H, F, E, K.
// An expert id outside [0, E) makes that expert's outputs NaN (never a read out of bounds).
void main() {
  const uint H = pc.p[0], F = pc.p[1], E = pc.p[2], k = gl_WorkGroupID.y;
  const uint nblk = H / BE, row_bytes = nblk * BB;
  const uint goff = pc.o[0], uoff = pc.o[1], xoff = pc.o[2] >> 2, hoff = (pc.o[4] >> 2) + k * F;
  const int eid = IDS[(pc.o[3] >> 2) + k];
  const bool bad = eid < 0 || uint(eid) >= E; // uniform over the workgroup
  const uint nsg = gl_NumSubgroups;
  { // q8: the first rows' first chunk asked for, then x into shared records once per workgroup (f32, f64: nothing)
    const uint f = gl_WorkGroupID.x * nsg + gl_SubgroupID, at = (uint(eid) * F + f) * row_bytes;
    if (!bad && f < F) qmoe_prefetch(uint[R](goff + at, uoff + at), nblk);
    q8_round(xoff, H);
  }
  for (uint f = gl_WorkGroupID.x * nsg + gl_SubgroupID; f < F; f += gl_NumWorkGroups.x * nsg) {
    if (bad) {
      if (subgroupElect()) Hout[hoff + f] = ${NAN};
      continue;
    }
    const uint at = (uint(eid) * F + f) * row_bytes;
    ${T} acc[R] = ${T}[R](${T}(0), ${T}(0));
    qmoe_row_dots(uint[R](goff + at, uoff + at), xoff, nblk, acc);
    const ${T} g = subgroupAdd(acc[0]), u = subgroupAdd(acc[1]);
    if (subgroupElect()) {
      const ${T} silu = g / (${T}(1) + ${EXP}(-g));
      Hout[hoff + f] = float(silu * u);
    }
  }
}
