/* test_add_rmsnorm.c: the fused stage add_rmsnorm equals add followed by rmsnorm bit for bit, y and xn, on every
 * backend that opens here, both accumulators, random sizes (tails of a workgroup included), fresh random data,
 * in place (y = a, as the model calls it) and out of place, buffers at offsets; y is also a + b as the host
 * computes it (the add stage is exact in f32). */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "../harness.h"
#include "backend.h"
#include "qmoe.h"

static const char *backend_name;
static qmoe_backend *be;

static int64_t rand_int(int64_t lo, int64_t hi) { return lo + (int64_t)(t_rand_u64() % (uint64_t)(hi - lo + 1)); }

/* A device buffer of N floats at byte offset OFF, filled from X (NULL: poisoned with NaN). */
typedef struct { qmoe_buffer *b; size_t off; } dbuf;

static int dev_make(dbuf *d, const float *x, int64_t n, size_t off) {
  size_t bytes = (size_t)n * 4;
  float *tmp = NULL;
  if (!x) {
    tmp = malloc(bytes);
    for (int64_t i = 0; i < n; i++) tmp[i] = NAN;
    x = tmp;
  }
  d->off = off;
  int rc = be->alloc(be, off + bytes, &d->b);
  if (!rc) rc = be->upload(be, d->b, off, x, bytes);
  free(tmp);
  return rc;
}

static int dev_read(const dbuf *d, float *x, int64_t n) { return be->download(be, d->b, d->off, x, (size_t)n * 4); }

static int run(qmoe_stage_call *c) {
  int rc = be->run(be, c);
  return rc ? rc : be->sync(be);
}

/* The first element where two vectors differ in their bits, or -1. */
static int64_t first_diff(const float *x, const float *y, int64_t n) {
  for (int64_t i = 0; i < n; i++)
    if (memcmp(&x[i], &y[i], 4)) return i;
  return -1;
}

/* One size: fused against the two-stage path, out of place then in place, for both accumulators. */
static void check_size(int64_t n) {
  const double eps = t_rand_u64() & 1 ? 1e-6 : 0.25;
  const size_t off = t_rand_u64() & 1 ? 0 : 64; /* every buffer's data at this byte offset */
  float *a = malloc((size_t)n * 4), *bv = malloc((size_t)n * 4), *w = malloc((size_t)n * 4), *sum = malloc((size_t)n * 4);
  float *y1 = malloc((size_t)n * 4), *x1 = malloc((size_t)n * 4), *y2 = malloc((size_t)n * 4), *x2 = malloc((size_t)n * 4);
  float *a_after = malloc((size_t)n * 4);
  int nonzero = 0;
  for (int64_t i = 0; i < n; i++) {
    a[i] = (float)(2.0 * t_rand_normal());
    bv[i] = (float)t_rand_normal();
    w[i] = (float)(1.0 + 0.25 * t_rand_normal());
    sum[i] = a[i] + bv[i];
    nonzero |= sum[i] != 0.0f;
  }
  CHECK(nonzero, "n = %lld: the random sums are all zero", (long long)n);
  for (int acc = 0; acc <= QMOE_ACC_F64; acc++) { /* its accumulators (q8: row stages only) */
    const char *an = acc == QMOE_ACC_F64 ? "f64" : "f32";
    for (int in_place = 0; in_place < 2; in_place++) {
      const char *how = in_place ? "in place" : "out of place";
      /* fused: y = a (one buffer) in place; a, y apart otherwise */
      dbuf A = {0}, B = {0}, W = {0}, Y = {0}, XN = {0};
      dbuf A2 = {0}, Y2 = {0}, XN2 = {0};
      int rc = dev_make(&A, a, n, off) || dev_make(&B, bv, n, off) || dev_make(&W, w, n, off) ||
               dev_make(&XN, NULL, n, off) || (!in_place && dev_make(&Y, NULL, n, off)) || dev_make(&A2, a, n, off) ||
               dev_make(&XN2, NULL, n, off) || (!in_place && dev_make(&Y2, NULL, n, off));
      if (in_place) Y = A, Y2 = A2;
      CHECK(rc == 0, "%s: alloc/upload: %s", backend_name, qmoe_last_error());
      qmoe_stage_call c;
      if (!rc) {
        qmoe_call_add_rmsnorm(&c, n, eps, A.b, B.b, W.b, Y.b, XN.b);
        c.acc = (qmoe_acc)acc;
        c.off[QMOE_B_ADD_RMSNORM_A] = c.off[QMOE_B_ADD_RMSNORM_B] = c.off[QMOE_B_ADD_RMSNORM_W] = off;
        c.off[QMOE_B_ADD_RMSNORM_Y] = c.off[QMOE_B_ADD_RMSNORM_XN] = off;
        rc = run(&c);
        CHECK(rc == 0, "%s %s %s n = %lld: add_rmsnorm: %s", backend_name, an, how, (long long)n, qmoe_last_error());
      }
      if (!rc) { /* the two-stage path: add, then rmsnorm of its sum */
        qmoe_call_add(&c, n, A2.b, B.b, Y2.b);
        c.off[QMOE_B_ADD_A] = c.off[QMOE_B_ADD_B] = c.off[QMOE_B_ADD_Y] = off;
        rc = run(&c);
        if (!rc) {
          qmoe_call_rmsnorm(&c, n, eps, Y2.b, W.b, XN2.b);
          c.acc = (qmoe_acc)acc;
          c.off[QMOE_B_RMSNORM_X] = c.off[QMOE_B_RMSNORM_W] = c.off[QMOE_B_RMSNORM_Y] = off;
          rc = run(&c);
        }
        CHECK(rc == 0, "%s %s %s n = %lld: add then rmsnorm: %s", backend_name, an, how, (long long)n, qmoe_last_error());
      }
      if (!rc) {
        rc = dev_read(&Y, y1, n) || dev_read(&XN, x1, n) || dev_read(&Y2, y2, n) || dev_read(&XN2, x2, n) ||
             (!in_place && dev_read(&A, a_after, n));
        CHECK(rc == 0, "%s: download: %s", backend_name, qmoe_last_error());
      }
      if (!rc) {
        int64_t d;
        CHECK((d = first_diff(y1, sum, n)) < 0, "%s %s %s n = %lld: y[%lld] = %.9g, a + b = %.9g", backend_name, an, how,
              (long long)n, (long long)d, (double)y1[d < 0 ? 0 : d], (double)sum[d < 0 ? 0 : d]);
        CHECK((d = first_diff(y1, y2, n)) < 0, "%s %s %s n = %lld: y[%lld] = %.9g, add gives %.9g", backend_name, an, how,
              (long long)n, (long long)d, (double)y1[d < 0 ? 0 : d], (double)y2[d < 0 ? 0 : d]);
        CHECK((d = first_diff(x1, x2, n)) < 0, "%s %s %s n = %lld eps = %g: xn[%lld] = %.9g, add then rmsnorm gives %.9g",
              backend_name, an, how, (long long)n, eps, (long long)d, (double)x1[d < 0 ? 0 : d], (double)x2[d < 0 ? 0 : d]);
        int finite = 1;
        for (int64_t i = 0; i < n; i++) finite &= isfinite(x1[i]) != 0;
        CHECK(finite, "%s %s %s n = %lld: xn is not finite", backend_name, an, how, (long long)n);
        if (!in_place)
          CHECK(first_diff(a_after, a, n) < 0, "%s %s n = %lld: out of place, a changed", backend_name, an, (long long)n);
      }
      dbuf *all[] = { &A, &B, &W, &XN, &A2, &XN2, in_place ? NULL : &Y, in_place ? NULL : &Y2 };
      for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        if (all[i] && all[i]->b) be->free_buf(be, all[i]->b);
    }
  }
  free(a), free(bv), free(w), free(sum), free(y1), free(x1), free(y2), free(x2), free(a_after);
}

static void test_fused_equals_two_stages(void) {
  be = NULL;
  if (qmoe_backend_open(backend_name, &be)) SKIP("no %s device: %s", backend_name, qmoe_last_error());
  /* a tail shorter than a workgroup, a few workgroups with a tail, the model's hidden size (2048), larger */
  const int64_t sizes[] = { rand_int(1, 255), rand_int(257, 2047), 2048, rand_int(2049, 6000) };
  for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) check_size(sizes[i]);
  be->close(be);
  be = NULL;
}

int main(void) {
  t_seed();
  const char *names[] = { "cpu", "vulkan", "cuda" };
  for (int i = 0; i < 3; i++) {
    backend_name = names[i];
    char name[64];
    snprintf(name, sizeof name, "add_rmsnorm_fused/%s", names[i]);
    RUN_NAMED(name, test_fused_equals_two_stages);
  }
  return T_DONE();
}
