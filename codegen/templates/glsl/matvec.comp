// y[rows] = W[rows x cols] . x; p: rows, cols. Each subgroup computes a pair of rows (x read once for both);
// the workgroups' subgroups stride over the pairs.
void main() {
  const uint rows = pc.p[0], cols = pc.p[1];
  const uint nblk = cols / BE, row_bytes = nblk * BB;
  const uint woff = pc.o[0], xoff = pc.o[1] >> 2, yoff = pc.o[2] >> 2;
  const uint nsg = gl_NumSubgroups;
  { // q8: the first rows' first chunk asked for, then x into shared records once per workgroup (f32, f64: nothing)
    const uint r0 = (gl_WorkGroupID.x * nsg + gl_SubgroupID) * R;
    if (r0 < rows) qmoe_prefetch(uint[R](woff + r0 * row_bytes, woff + min(r0 + 1u, rows - 1u) * row_bytes), nblk);
    q8_round(xoff, cols);
  }
  for (uint r0 = (gl_WorkGroupID.x * nsg + gl_SubgroupID) * R; r0 < rows; r0 += gl_NumWorkGroups.x * nsg * R) {
    const uint r1 = min(r0 + 1u, rows - 1u);
    ${T} acc[R] = ${T}[R](${T}(0), ${T}(0));
    qmoe_row_dots(uint[R](woff + r0 * row_bytes, woff + r1 * row_bytes), xoff, nblk, acc);
    const ${T} s0 = subgroupAdd(acc[0]), s1 = subgroupAdd(acc[1]);
    if (subgroupElect()) {
      Y[yoff + r0] = float(s0);
      if (r0 + 1u < rows) Y[yoff + r0 + 1u] = float(s1);
    }
  }
}
