// log(x) in double for x > 0: x = m*2^e, m in [sqrt(1/2), sqrt(2)); log m = 2*atanh(s), s = (m-1)/(m+1).
double qmoe_log(double x) {
  int e;
  double m = frexp(x, e);
  if (m < 0.70710678118654752lf) { m *= 2.0lf; e -= 1; }
  double s = (m - 1.0lf) / (m + 1.0lf), s2 = s * s;
  double p = 1.0lf / 25.0lf;
  p = p * s2 + 1.0lf / 23.0lf;
  p = p * s2 + 1.0lf / 21.0lf;
  p = p * s2 + 1.0lf / 19.0lf;
  p = p * s2 + 1.0lf / 17.0lf;
  p = p * s2 + 1.0lf / 15.0lf;
  p = p * s2 + 1.0lf / 13.0lf;
  p = p * s2 + 1.0lf / 11.0lf;
  p = p * s2 + 1.0lf / 9.0lf;
  p = p * s2 + 1.0lf / 7.0lf;
  p = p * s2 + 1.0lf / 5.0lf;
  p = p * s2 + 1.0lf / 3.0lf;
  p = p * s2 + 1.0lf;
  double ed = double(e);
  return ed * 6.93147180369123816490e-01lf + (2.0lf * s * p + ed * 1.90821492927058770002e-10lf);
}

// sin and cos of a in double for |a| < 2^20*pi/2: a = k*pi/2 + r (pi/2 in three parts, fdlibm's), Taylor.
void qmoe_sincos(double a, out double sn, out double cs) {
  double kd = floor(a * 6.36619772367581382433e-01lf + 0.5lf);
  double r = ((a - kd * 1.57079632673412561417e+00lf) - kd * 6.07710050630396597660e-11lf)
             - kd * 2.02226624879595063154e-21lf;
  double r2 = r * r;
  double ps = -1.0lf / 121645100408832000.0lf;   // sin r = r - r^3/3! + ... - r^19/19!
  ps = ps * r2 + 1.0lf / 355687428096000.0lf;
  ps = ps * r2 - 1.0lf / 1307674368000.0lf;
  ps = ps * r2 + 1.0lf / 6227020800.0lf;
  ps = ps * r2 - 1.0lf / 39916800.0lf;
  ps = ps * r2 + 1.0lf / 362880.0lf;
  ps = ps * r2 - 1.0lf / 5040.0lf;
  ps = ps * r2 + 1.0lf / 120.0lf;
  ps = ps * r2 - 1.0lf / 6.0lf;
  double s = r + r * r2 * ps;
  double pcos = 1.0lf / 6402373705728000.0lf;   // cos r = 1 - r^2/2! + ... + r^18/18!
  pcos = pcos * r2 - 1.0lf / 20922789888000.0lf;
  pcos = pcos * r2 + 1.0lf / 87178291200.0lf;
  pcos = pcos * r2 - 1.0lf / 479001600.0lf;
  pcos = pcos * r2 + 1.0lf / 3628800.0lf;
  pcos = pcos * r2 - 1.0lf / 40320.0lf;
  pcos = pcos * r2 + 1.0lf / 720.0lf;
  pcos = pcos * r2 - 1.0lf / 24.0lf;
  pcos = pcos * r2 + 0.5lf;
  double c = 1.0lf - r2 * pcos;
  int q = int(kd - 4.0lf * floor(kd * 0.25lf));   // quadrant 0..3
  if (q == 0) { sn = s; cs = c; }
  else if (q == 1) { sn = c; cs = -s; }
  else if (q == 2) { sn = -s; cs = -c; }
  else { sn = -c; cs = s; }
}
