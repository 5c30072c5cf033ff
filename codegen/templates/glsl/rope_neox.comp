// NEOX RoPE: for i < D/2, a = pos * theta^(-2i/D); the angle and its cos/sin are computed in double in every
// variant (as the CPU reference does: an f32 angle at pos in the thousands is off by ~1e-4 rad), the
// rotation in ${T}. One invocation per (head, i) pair; y may be x (each pair is read, then written, by the
// same invocation). p: nh, D, pos; fd[0]: theta.
void main() {
  const uint nh = pc.p[0], D = pc.p[1], pos = pc.p[2], hd = D / 2u;
  const uint xoff = pc.o[0] >> 2, yoff = pc.o[1] >> 2;
  const double ltheta = qmoe_log(packDouble2x32(pc.fd[0]));
  for (uint idx = gl_GlobalInvocationID.x; idx < nh * hd; idx += gl_NumWorkGroups.x * ${WG}u) {
    uint h = idx / hd, i = idx - h * hd;
    double ex = -double(2u * i) / double(D);
    double a = double(pos) * qmoe_exp(ex * ltheta);
    double sd, cd;
    qmoe_sincos(a, sd, cd);
    ${T} c = ${T}(cd), s = ${T}(sd);
    ${T} x0 = ${T}(X[xoff + h * D + i]), x1 = ${T}(X[xoff + h * D + i + hd]);
    precise ${T} y0 = x0 * c - x1 * s;
    precise ${T} y1 = x0 * s + x1 * c;
    Y[yoff + h * D + i] = float(y0);
    Y[yoff + h * D + i + hd] = float(y1);
  }
}
