/* test_qk_norm_rope.c: the fused stage of contracts/stages/qk_norm_rope.yaml is qk_norm followed by rope_neox bit
 * for bit, on every backend that opens here (cpu, vulkan, cuda) and in every accumulator, out of place and in
 * place, on fresh random shapes, positions, offsets and data; and on the CPU reference's long-double oracle. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "../harness.h"
#include "backend.h"
#include "qmoe.h"
#include "ref_internal.h"

enum { TRIALS = 6, PAD = 37 }; /* PAD: floats of room for random offsets before a buffer's data */

static const char *backend_name;

static int64_t rand_int(int64_t lo, int64_t hi) { return lo + (int64_t)(t_rand_u64() % (uint64_t)(hi - lo + 1)); }

typedef struct {
  int64_t nh, D, pos;
  double eps, theta;
} shape;

/* Model-like shapes (head dims 64 and 128) and odd ones (any even D up to 300, more threads than pairs and
 * fewer), positions up to 40000, the base frequencies of real models and a random one. */
static shape draw_shape(void) {
  static const double thetas[] = { 10000.0, 1e6, 5e5 };
  shape s;
  s.nh = rand_int(1, 12);
  s.D = t_rand_u64() % 3 ? (t_rand_u64() & 1 ? 128 : 64) : 2 * rand_int(1, 150);
  s.pos = t_rand_u64() & 1 ? rand_int(0, 40000) : rand_int(0, 8);
  s.eps = t_rand_u64() & 1 ? 1e-6 : 1e-5;
  s.theta = t_rand_u64() % 4 ? thetas[t_rand_u64() % 3] : 100.0 + 1e7 * t_rand_unit();
  return s;
}

static void fill(float *v, size_t n, double sd) {
  for (size_t i = 0; i < n; i++) v[i] = (float)(sd * t_rand_normal());
}

/* Index of the first float where A and B differ in bits, or -1. */
static int64_t first_diff(const float *a, const float *b, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (memcmp(&a[i], &b[i], 4)) return (int64_t)i;
  return -1;
}

static int run_sync(qmoe_backend *be, const qmoe_stage_call *c) {
  int rc = be->run(be, c);
  return rc ? rc : be->sync(be);
}

static void test_backend(void) {
  qmoe_backend *be = NULL;
  if (qmoe_backend_open(backend_name, &be)) SKIP("no %s device: %s", backend_name, qmoe_last_error());
  for (int t = 0; t < TRIALS; t++) {
    const shape s = draw_shape();
    const size_t n = (size_t)(s.nh * s.D), bytes = (n + PAD) * sizeof(float);
    float *x = malloc(n * sizeof *x), *w = malloc((size_t)s.D * sizeof *w), *two = malloc(n * sizeof *two),
          *out = malloc(n * sizeof *out), *in = malloc(n * sizeof *in), *xback = malloc(n * sizeof *xback);
    REQUIRE(x && w && two && out && in && xback, "out of memory");
    fill(x, n, t_rand_u64() & 1 ? 1.0 : 40.0);
    fill(w, (size_t)s.D, 0.5);
    qmoe_buffer *bx = NULL, *bw = NULL, *bt = NULL, *by = NULL, *bz = NULL;
    REQUIRE(be->alloc(be, bytes, &bx) == 0 && be->alloc(be, (size_t)s.D * 4, &bw) == 0 &&
                be->alloc(be, bytes, &bt) == 0 && be->alloc(be, bytes, &by) == 0 && be->alloc(be, bytes, &bz) == 0,
            "alloc: %s", qmoe_last_error());
    /* Offsets in floats: x and y apart; z, in place, at one. */
    const size_t ox = (size_t)rand_int(0, PAD), oy = (size_t)rand_int(0, PAD), oz = (size_t)rand_int(0, PAD);
    REQUIRE(be->upload(be, bx, ox * 4, x, n * 4) == 0 && be->upload(be, bw, 0, w, (size_t)s.D * 4) == 0, "upload: %s",
            qmoe_last_error());
    for (int acc = 0; acc <= QMOE_ACC_F64; acc++) { /* its accumulators (q8: row stages only) */
      char what[160];
      snprintf(what, sizeof what, "%s acc %s nh %lld D %lld pos %lld eps %g theta %.17g", backend_name,
               acc == QMOE_ACC_F64 ? "f64" : "f32", (long long)s.nh, (long long)s.D, (long long)s.pos, s.eps, s.theta);
      qmoe_stage_call c;
      /* The two-stage path as the model runs it: qk_norm x -> t, then rope_neox in place on t. */
      qmoe_call_qk_norm(&c, s.nh, s.D, s.eps, bx, bw, bt);
      c.acc = (qmoe_acc)acc;
      c.off[QMOE_B_QK_NORM_X] = ox * 4;
      REQUIRE(run_sync(be, &c) == 0, "%s: qk_norm: %s", what, qmoe_last_error());
      qmoe_call_rope_neox(&c, s.nh, s.D, s.pos, s.theta, bt, bt);
      c.acc = (qmoe_acc)acc;
      REQUIRE(run_sync(be, &c) == 0, "%s: rope_neox: %s", what, qmoe_last_error());
      REQUIRE(be->download(be, bt, 0, two, n * 4) == 0, "download: %s", qmoe_last_error());
      int finite = 1;
      for (size_t i = 0; i < n; i++) finite &= isfinite(two[i]) != 0;
      REQUIRE(finite && first_diff(two, x, n) >= 0, "%s: the two-stage result is not finite or is x", what);
      /* Fused, out of place: x -> y. */
      qmoe_call_qk_norm_rope(&c, s.nh, s.D, s.pos, s.eps, s.theta, bx, bw, by);
      c.acc = (qmoe_acc)acc;
      c.off[QMOE_B_QK_NORM_ROPE_X] = ox * 4;
      c.off[QMOE_B_QK_NORM_ROPE_Y] = oy * 4;
      REQUIRE(run_sync(be, &c) == 0, "%s: qk_norm_rope: %s", what, qmoe_last_error());
      REQUIRE(be->download(be, by, oy * 4, out, n * 4) == 0 && be->download(be, bx, ox * 4, xback, n * 4) == 0,
              "download: %s", qmoe_last_error());
      int64_t d = first_diff(out, two, n);
      CHECK(d < 0, "%s: out of place: y[%lld] = %.9g, two-stage %.9g", what, (long long)d, d < 0 ? 0.0 : (double)out[d],
            d < 0 ? 0.0 : (double)two[d]);
      CHECK(first_diff(xback, x, n) < 0, "%s: out of place: x changed", what);
      /* Fused, in place: z -> z. */
      REQUIRE(be->upload(be, bz, oz * 4, x, n * 4) == 0, "upload: %s", qmoe_last_error());
      qmoe_call_qk_norm_rope(&c, s.nh, s.D, s.pos, s.eps, s.theta, bz, bw, bz);
      c.acc = (qmoe_acc)acc;
      c.off[QMOE_B_QK_NORM_ROPE_X] = c.off[QMOE_B_QK_NORM_ROPE_Y] = oz * 4;
      REQUIRE(run_sync(be, &c) == 0, "%s: qk_norm_rope in place: %s", what, qmoe_last_error());
      REQUIRE(be->download(be, bz, oz * 4, in, n * 4) == 0, "download: %s", qmoe_last_error());
      d = first_diff(in, two, n);
      CHECK(d < 0, "%s: in place: y[%lld] = %.9g, two-stage %.9g", what, (long long)d, d < 0 ? 0.0 : (double)in[d],
            d < 0 ? 0.0 : (double)two[d]);
    }
    be->free_buf(be, bx);
    be->free_buf(be, bw);
    be->free_buf(be, bt);
    be->free_buf(be, by);
    be->free_buf(be, bz);
    free(x), free(w), free(two), free(out), free(in), free(xback);
  }
  be->close(be);
}

/* The CPU reference's long-double oracle (what parity tests judge f64 variants by) composes the same way. */
static void test_oracle(void) {
  for (int t = 0; t < TRIALS; t++) {
    const shape s = draw_shape();
    const size_t n = (size_t)(s.nh * s.D);
    float *x = malloc(n * 4), *w = malloc((size_t)s.D * 4), *two = malloc(n * 4), *fused = malloc(n * 4);
    REQUIRE(x && w && two && fused, "out of memory");
    fill(x, n, 1.0);
    fill(w, (size_t)s.D, 0.5);
    memcpy(fused, x, n * 4);
    size_t size[QMOE_STAGE_MAX_BUFS] = { n * 4, (size_t)s.D * 4, n * 4 };
    qmoe_stage_call c;
    qmoe_call_qk_norm(&c, s.nh, s.D, s.eps, NULL, NULL, NULL);
    void *p1[QMOE_STAGE_MAX_BUFS] = { x, w, two };
    REQUIRE(qmoe_ref_run(&c, QMOE_REF_LDBL, p1, size) == 0, "qk_norm: %s", qmoe_last_error());
    qmoe_call_rope_neox(&c, s.nh, s.D, s.pos, s.theta, NULL, NULL);
    void *p2[QMOE_STAGE_MAX_BUFS] = { two, two };
    size_t size2[QMOE_STAGE_MAX_BUFS] = { n * 4, n * 4 };
    REQUIRE(qmoe_ref_run(&c, QMOE_REF_LDBL, p2, size2) == 0, "rope_neox: %s", qmoe_last_error());
    qmoe_call_qk_norm_rope(&c, s.nh, s.D, s.pos, s.eps, s.theta, NULL, NULL, NULL);
    void *p3[QMOE_STAGE_MAX_BUFS] = { fused, w, fused }; /* in place */
    REQUIRE(qmoe_ref_run(&c, QMOE_REF_LDBL, p3, size) == 0, "qk_norm_rope: %s", qmoe_last_error());
    int64_t d = first_diff(fused, two, n);
    CHECK(d < 0, "oracle nh %lld D %lld pos %lld: y[%lld] = %.9g, two-stage %.9g", (long long)s.nh, (long long)s.D,
          (long long)s.pos, (long long)d, d < 0 ? 0.0 : (double)fused[d], d < 0 ? 0.0 : (double)two[d]);
    free(x), free(w), free(two), free(fused);
  }
}

/* The contract's rules hold for the fused stage as for rope_neox: odd D and theta <= 0 are refused. */
static void test_rules(void) {
  size_t need[QMOE_STAGE_MAX_BUFS];
  qmoe_stage_call c;
  qmoe_call_qk_norm_rope(&c, 2, 63, 5, 1e-6, 1e6, NULL, NULL, NULL);
  CHECK(qmoe_stage_check(&c, need) == QMOE_EINVAL && strstr(qmoe_last_error(), "D = 63 must be even"), "odd D: %s",
        qmoe_last_error());
  qmoe_call_qk_norm_rope(&c, 2, 64, 5, 1e-6, 0.0, NULL, NULL, NULL);
  CHECK(qmoe_stage_check(&c, need) == QMOE_EINVAL && strstr(qmoe_last_error(), "must be positive"), "theta 0: %s",
        qmoe_last_error());
  qmoe_call_qk_norm_rope(&c, 2, 64, 5, 1e-6, 1e6, NULL, NULL, NULL);
  CHECK(qmoe_stage_check(&c, need) == 0 && need[0] == 2 * 64 * 4 && need[1] == 64 * 4 && need[2] == 2 * 64 * 4,
        "sizes: %zu %zu %zu (%s)", need[0], need[1], need[2], qmoe_last_error());
}

int main(void) {
  t_seed();
  const char *names[] = { "cpu", "vulkan", "cuda" };
  for (int i = 0; i < 3; i++) {
    backend_name = names[i];
    char name[64];
    snprintf(name, sizeof name, "qk_norm_rope_fused/%s", names[i]);
    RUN_NAMED(name, test_backend);
  }
  RUN(test_oracle);
  RUN(test_rules);
  return T_DONE();
}
