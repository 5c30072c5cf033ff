// exp(x) in double: x = k*ln2 + r, |r| <= ln2/2 (ln2 in two parts, fdlibm's constants), Taylor to r^14.
double qmoe_exp(double x) {
  if (x != x) return x;
  if (x > 709.78lf) return 1.0lf / 0.0lf;
  if (x < -745.2lf) return 0.0lf;
  double kd = floor(x * 1.4426950408889634lf + 0.5lf);
  double r = (x - kd * 6.93147180369123816490e-01lf) - kd * 1.90821492927058770002e-10lf;
  double p = 1.0lf / 87178291200.0lf;
  p = p * r + 1.0lf / 6227020800.0lf;
  p = p * r + 1.0lf / 479001600.0lf;
  p = p * r + 1.0lf / 39916800.0lf;
  p = p * r + 1.0lf / 3628800.0lf;
  p = p * r + 1.0lf / 362880.0lf;
  p = p * r + 1.0lf / 40320.0lf;
  p = p * r + 1.0lf / 5040.0lf;
  p = p * r + 1.0lf / 720.0lf;
  p = p * r + 1.0lf / 120.0lf;
  p = p * r + 1.0lf / 24.0lf;
  p = p * r + 1.0lf / 6.0lf;
  p = p * r + 0.5lf;
  p = p * r + 1.0lf;
  p = p * r + 1.0lf;
  int k = int(kd);
  // in two steps, so that 2^k alone never overflows while the result is finite
  return ldexp(ldexp(p, k / 2), k - k / 2);
}
