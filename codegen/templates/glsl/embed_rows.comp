// qmoe-shader: wg=64
// qmoe-groups: qmoe_cap0(qmoe_cdiv(cols, WG)), 1, 1
// y = row id of W decoded: the exact f32 value of each element (nothing is accumulated, in either variant).
// Invocations stride over the row's elements. An id outside [0, rows) reads nothing of W and writes NaN to
// all of y (the contract's rule; FALSIFY-FINITE catches it downstream).
void main() {
  const int r = id[id_off >> 2];
  const bool ok = r >= 0 && uint(r) < rows;
  const uint row_bytes = (cols / ${BE}u) * ${BB}u;
  const uint base = W_off + (ok ? uint(r) * row_bytes : 0u);
  for (uint e = gl_GlobalInvocationID.x; e < cols; e += gl_NumWorkGroups.x * ${WG}u)
    y[(y_off >> 2) + e] = ok ? dq_decode(base + (e / ${BE}u) * ${BB}u, int(e % ${BE}u)) : ${NAN};
}
