// qmoe-shader: wg=128
// qmoe-limit: nh <= DEVG0
// qmoe-groups: nh, 1, 1
// qmoe-include: _reducers.glsl, _f64_exp.glsl, _f64_trig.glsl
// qk_norm then NEOX RoPE for head h = workgroup x, with the two stages' own arithmetic so that the result equals
// the qk_norm shader (gen_glsl.lua's emit_norm over rmsnorm.comp) followed by rope_neox.comp bit for bit: the
// sum of squares in ${T} over the same workgroup size with the same wg_sum, each normalized value rounded to
// f32 as qk_norm stores it, then rope_neox's rotation (angle, cos and sin in double from theta as f64; the
// rotation in ${T}). The whole head is read for the sum before wg_sum's barrier; after it each invocation
// reads and writes only its own pairs, so y may be x.
void main() {
  const uint h = gl_WorkGroupID.x, tid = gl_LocalInvocationIndex, hd = D / 2u;
  const uint xoff = (x_off >> 2) + h * D, woff = w_off >> 2, yoff = (y_off >> 2) + h * D;
  ${T} ss = ${T}(0);
  for (uint i = tid; i < D; i += ${WG}u) { ${T} xv = ${T}(x[xoff + i]); ss += xv * xv; }
  ss = wg_sum(ss);
  ${T} r = ${T}(1) / sqrt(ss / ${T}(D) + eps);
  const double ltheta = qmoe_log(theta_f64);
  for (uint i = tid; i < hd; i += ${WG}u) {
    precise ${T} n0 = ${T}(x[xoff + i]) * r * ${T}(w[woff + i]);
    precise ${T} n1 = ${T}(x[xoff + i + hd]) * r * ${T}(w[woff + i + hd]);
    double ex = -double(2u * i) / double(D);
    double a = double(pos) * qmoe_exp(ex * ltheta);
    double sd, cd;
    qmoe_sincos(a, sd, cd);
    ${T} c = ${T}(cd), s = ${T}(sd);
    ${T} x0 = ${T}(float(n0)), x1 = ${T}(float(n1));
    precise ${T} y0 = x0 * c - x1 * s;
    precise ${T} y1 = x0 * s + x1 * c;
    y[yoff + i] = float(y0);
    y[yoff + i + hd] = float(y1);
  }
}
