// ${WHAT}
void main() {
  const uint n = ${N}, tid = gl_LocalInvocationIndex, base = ${BASE};
  const uint xoff = (pc.o[0] >> 2) + base, woff = pc.o[1] >> 2, yoff = (pc.o[2] >> 2) + base;
  ${T} ss = ${T}(0);
  for (uint i = tid; i < n; i += ${WG}u) { ${T} xv = ${T}(X[xoff + i]); ss += xv * xv; }
  ss = wg_sum(ss);
  ${T} r = ${T}(1) / sqrt(ss / ${T}(n) + ${EPS});
  // y may be x: each invocation reads x[i] again before it writes y[i], after all sums are done.
  for (uint i = tid; i < n; i += ${WG}u) {
    precise ${T} y = ${T}(X[xoff + i]) * r * ${T}(Wn[woff + i]);
    Y[yoff + i] = float(y);
  }
}
