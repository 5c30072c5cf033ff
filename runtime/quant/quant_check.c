/* quant_check.c: does an encoded row hold what it was given? Decodes it with the qtype's own generated
 * dequant_row and refuses non-finite inputs, non-finite decodes and blocks that collapse or clip. */
#include <math.h>
#include "qmoe.h"

/* A block matters when its largest |x| is at least this fraction of the row's (smaller blocks may round to
 * zero next to large ones: that is quantization, not a failure to represent). */
#define SIGNIFICANT (1.0 / 4096.0)

int qmoe_qtype_check_row(const qmoe_qtype_info *qt, const float *src, const void *enc, int64_t n, float *scratch) {
  double row_amax = 0;
  for (int64_t i = 0; i < n; i++) {
    if (!isfinite(src[i])) {
      qmoe_set_error("element %lld is %g: not a finite number, which no qtype can encode", (long long)i, (double)src[i]);
      return QMOE_EINVAL;
    }
    if (fabs((double)src[i]) > row_amax) row_amax = fabs((double)src[i]);
  }
  int rc = qt->dequant_row(enc, scratch, n);
  if (rc) return rc;
  int64_t be = qt->block_elements;
  for (int64_t b0 = 0; b0 < n; b0 += be) {
    int64_t b1 = b0 + be < n ? b0 + be : n, imax = b0;
    for (int64_t i = b0; i < b1; i++)
      if (fabs((double)src[i]) > fabs((double)src[imax])) imax = i;
    for (int64_t i = b0; i < b1; i++) {
      if (!isfinite(scratch[i])) {
        qmoe_set_error("element %lld: value %.9g cannot be stored as %s: the block of elements %lld..%lld decodes "
                       "to %g at element %lld (out of the format's range)", (long long)imax, (double)src[imax],
                       qt->name, (long long)b0, (long long)b1 - 1, (double)scratch[i], (long long)i);
        return QMOE_EINVAL;
      }
    }
    double x = src[imax], y = scratch[imax];
    if (x != 0 && fabs(x) >= row_amax * SIGNIFICANT && !(fabs(y - x) <= 0.5 * fabs(x))) {
      qmoe_set_error("element %lld: value %.9g cannot be stored as %s: it decodes to %g (%s)", (long long)imax, x,
                     qt->name, y, y == 0 ? "collapses to zero" : "out of the format's range");
      return QMOE_EINVAL;
    }
  }
  return 0;
}
