// qmoe-shader: wg=256
// qmoe-groups: 1, 1, 1
// qmoe-include: _reducers.glsl
// y = a + b, then xn = y * (1/sqrt(mean(y^2) + eps)) * w in one workgroup: the add stage's sum, then the
// rmsnorm stage's shader over y (the same workgroup size, the same sum of squares and wg_sum), so the result
// equals add followed by rmsnorm bit for bit. y may be a: each invocation reads a[i] before it writes y[i],
// and reads back only the y[i] it wrote itself.
void main() {
  const uint tid = gl_LocalInvocationIndex;
  const uint ao = a_off >> 2, bo = b_off >> 2, wo = w_off >> 2, yo = y_off >> 2, xo = xn_off >> 2;
  ${T} ss = ${T}(0);
  // Where n fits 16 elements per invocation, every a and b is read before any y is written (y may be a, so a
  // store between them would order the reads one trip to memory each); the sums run in the same order.
  if (n <= 16u * ${WG}u) {
    float av[16], bv[16];
    for (uint u = 0u; u < 16u; u++) {
      const uint i = tid + u * ${WG}u;
      av[u] = i < n ? a[ao + i] : 0.0;
      bv[u] = i < n ? b[bo + i] : 0.0;
    }
    for (uint u = 0u; u < 16u; u++) {
      const uint i = tid + u * ${WG}u;
      if (i < n) {
        const float s = av[u] + bv[u];
        y[yo + i] = s;
        ${T} xv = ${T}(s); ss += xv * xv;
      }
    }
  } else {
    for (uint i = tid; i < n; i += ${WG}u) {
      const float s = a[ao + i] + b[bo + i];
      y[yo + i] = s;
      ${T} xv = ${T}(s); ss += xv * xv;
    }
  }
  ss = wg_sum(ss);
  ${T} r = ${T}(1) / sqrt(ss / ${T}(n) + eps);
  for (uint i = tid; i < n; i += ${WG}u) {
    precise ${T} v = ${T}(y[yo + i]) * r * ${T}(w[wo + i]);
    xn[xo + i] = float(v);
  }
}
