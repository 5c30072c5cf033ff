/* test_q8.c: Q8, the input rounding of the q8 accumulator variants (docs/q8.md, qmoe_q8_quantize in
 * runtime/cpu/ref_stages.c), against an independent formulation in long double (the exponent found by search,
 * ldexpl and nearbyintl) on random groups of every magnitude and on the edge cases; then FALSIFY-Q8-ERROR: the
 * CPU q8 variant of each row stage against its f64 variant on the unquantized input, and the same measure of
 * deliberately broken Q8s (truncation, an exponent one too large), which must fail it. */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "../harness.h"
#include "backend.h"
#include "falsifiers.h"
#include "qmoe.h"
#include "ref_internal.h"
#include "stage_table.h"

enum { G = QMOE_Q8_GROUP };

static uint32_t bits_of(float f) {
  uint32_t b;
  memcpy(&b, &f, sizeof b);
  return b;
}
static float float_of(uint32_t b) {
  float f;
  memcpy(&f, &b, sizeof f);
  return f;
}

/* The rule as docs/q8.md states it, without the bit formula: a group with an inf or NaN is NaN; else e is the
 * smallest integer >= -126 with max|x| <= 127·2^e (searched upwards), q = x·2^-e rounded to nearest, ties to
 * even, and x' = q·2^e rounded to f32 (exact, or inf past FLT_MAX). */
static void q8_model(const float *x, float *y) {
  long double m = 0;
  int finite = 1;
  for (int i = 0; i < G; i++) {
    finite &= isfinite(x[i]) != 0;
    if (finite && fabsl((long double)x[i]) > m) m = fabsl((long double)x[i]);
  }
  if (!finite) {
    for (int i = 0; i < G; i++) y[i] = float_of(0x7fc00000u);
    return;
  }
  int e = -126;
  while (m > ldexpl(127.0L, e)) e++;
  for (int i = 0; i < G; i++) {
    long double q = nearbyintl(ldexpl((long double)x[i], -e));
    CHECK(fabsl(q) <= 127, "q = %Lg outside [-127, 127] (x %g, e %d)", q, (double)x[i], e);
    y[i] = (float)ldexpl(q, e);
  }
}

/* Compares qmoe_q8_quantize with the model on one group; WHAT names the case. 1 when equal. */
static int check_group(const float *x, const char *what) {
  float got[G], want[G], inplace[G];
  if (qmoe_q8_quantize(x, got, G)) {
    CHECK(0, "%s: %s", what, qmoe_last_error());
    return 0;
  }
  q8_model(x, want);
  memcpy(inplace, x, sizeof inplace);
  qmoe_q8_quantize(inplace, inplace, G);
  for (int i = 0; i < G; i++) {
    int same = isnan(want[i]) ? bits_of(got[i]) == 0x7fc00000u : bits_of(got[i]) == bits_of(want[i]);
    if (!same || bits_of(inplace[i]) != bits_of(got[i])) {
      CHECK(0, "%s: element %d: x %a -> %a (bits %08x), the model says %a (bits %08x)%s", what, i, (double)x[i],
            (double)got[i], (unsigned)bits_of(got[i]), (double)want[i], (unsigned)bits_of(want[i]),
            same ? "; in place differs" : "");
      return 0;
    }
  }
  return 1;
}

static void test_random_magnitudes(void) {
  float x[G];
  int bad = 0;
  for (int n = 0; n < 20000 && !bad; n++) {
    int k = (int)(t_rand_u64() % 280) - 150; /* 2^-150 .. 2^129: subnormal groups to overflowing ones */
    int kind = (int)(t_rand_u64() % 4);
    for (int i = 0; i < G; i++) {
      double v = t_rand_normal();
      if (kind == 1) v = (double)(int)(t_rand_u64() % 255) - 127; /* integers: ties at .5 after scaling */
      if (kind == 2 && (t_rand_u64() & 3) == 0) v = 0;
      x[i] = (float)ldexp(v, k);
    }
    if (kind == 3) x[t_rand_u64() % G] = (float)ldexp(127.0, k) * (t_rand_u64() & 1 ? 1 : -1); /* max at 127·2^k */
    char what[64];
    snprintf(what, sizeof what, "random group %d (2^%d, kind %d)", n, k, kind);
    bad = !check_group(x, what);
  }
}

static void fill(float *x, float v) {
  for (int i = 0; i < G; i++) x[i] = v;
}

static void test_edges(void) {
  float x[G], y[G];
  fill(x, 0.0f);
  check_group(x, "all zero");
  qmoe_q8_quantize(x, y, G);
  CHECK(bits_of(y[0]) == 0, "all zero gives %a", (double)y[0]);
  x[5] = -0.0f;
  check_group(x, "zeros with a -0");
  fill(x, 1.0f), x[7] = INFINITY;
  check_group(x, "a group with inf");
  fill(x, 1.0f), x[31] = -INFINITY;
  check_group(x, "a group with -inf");
  fill(x, 1.0f), x[0] = NAN;
  check_group(x, "a group with NaN");
  qmoe_q8_quantize(x, y, G);
  CHECK(isnan(y[1]) && isnan(y[31]), "a NaN poisons its whole group");
  /* max exactly 127·2^k: e = k, q = 127; ties at .5 of both parities */
  fill(x, 0.0f);
  x[0] = 127.0f, x[1] = 0.5f, x[2] = 1.5f, x[3] = 2.5f, x[4] = -0.5f, x[5] = -1.5f, x[6] = -2.5f, x[7] = 126.5f;
  check_group(x, "max 127, ties");
  qmoe_q8_quantize(x, y, G);
  CHECK(y[0] == 127 && y[1] == 0 && y[2] == 2 && y[3] == 2 && y[4] == 0 && signbit(y[4]) && y[5] == -2 &&
            y[6] == -2 && y[7] == 126,
        "max 127: got %g %g %g %g %g %g %g %g", y[0], y[1], y[2], y[3], y[4], y[5], y[6], y[7]);
  for (int k = -126; k <= 120; k += 7) {
    fill(x, 0.0f);
    x[3] = ldexpf(127.0f, k), x[4] = ldexpf(3.0f, k - 1), x[5] = ldexpf(-5.0f, k - 1);
    check_group(x, "max 127*2^k");
    x[3] = nextafterf(ldexpf(127.0f, k), INFINITY); /* just above: e = k + 1, ties at 1.5 and 2.5 there */
    x[4] = ldexpf(3.0f, k), x[5] = ldexpf(-5.0f, k);
    check_group(x, "max just above 127*2^k");
    qmoe_q8_quantize(x, y, G);
    CHECK(y[3] == ldexpf(128.0f, k) && y[4] == ldexpf(4.0f, k) && y[5] == ldexpf(-4.0f, k),
          "just above 127*2^%d: %a %a %a", k, (double)y[3], (double)y[4], (double)y[5]);
  }
  fill(x, 0.0f); /* subnormals: e = -126 */
  x[0] = ldexpf(1.0f, -127), x[1] = ldexpf(3.0f, -128), x[2] = -FLT_TRUE_MIN, x[3] = ldexpf(1.0f, -126);
  check_group(x, "subnormals");
  fill(x, FLT_TRUE_MIN);
  check_group(x, "all FLT_TRUE_MIN");
  fill(x, 1.0f); /* near FLT_MAX: e = 122; q = 64 gives 2^128, which is inf in f32 (docs/q8.md) */
  x[0] = FLT_MAX, x[1] = -FLT_MAX / 3, x[2] = ldexpf(1.0f, 127);
  check_group(x, "near FLT_MAX");
  fill(x, 1.0f), x[9] = ldexpf(127.0f, 120);
  check_group(x, "max 127*2^120");
  CHECK(qmoe_q8_quantize(x, y, 31) == QMOE_EINVAL, "n = 31 is refused");
  CHECK(strstr(qmoe_last_error(), "multiple of the group size 32") != NULL, "message: %s", qmoe_last_error());
}

/* ---- FALSIFY-Q8-ERROR ---- */

/* A broken Q8 (the kinds a wrong implementation would have): 1 truncates, 2 takes the exponent one too large. */
static void q8_broken(int how, const float *x, float *y, int64_t n) {
  for (int64_t g = 0; g < n; g += G) {
    float m = 0;
    for (int i = 0; i < G; i++) m = fmaxf(m, fabsf(x[g + i]));
    int e = -126;
    while (m > ldexpf(127.0f, e)) e++;
    if (how == 2) e++;
    for (int i = 0; i < G; i++) {
      float v = ldexpf(x[g + i], -e);
      y[g + i] = ldexpf(how == 1 ? truncf(v) : nearbyintf(v), e);
    }
  }
}

typedef struct {
  qmoe_stage_call c;
  void *ptr[QMOE_STAGE_MAX_BUFS];
  size_t size[QMOE_STAGE_MAX_BUFS];
  int nbuf, xbuf, out;
} host_call;

static void host_free(host_call *h) {
  for (int i = 0; i < h->nbuf; i++) free(h->ptr[i]);
}

/* A call of STAGE with QTYPE for TOKENS tokens: weights N(0, 1/512) through the qtype's quantizer, the input
 * vectors N(0, 1). Thousands of outputs, so the measured NMSE is within a few percent of its expectation. */
enum { TOKENS = 12 };
static int host_prepare(host_call *h, const char *stage, int qtype) {
  memset(h, 0, sizeof *h);
  const qmoe_stage_info *si = qmoe_stage_by_name(stage);
  const qmoe_qtype_info *q = qmoe_qtype_by_id(qtype);
  if (!si || !q) return -1;
  h->c.stage = si->id, h->c.qtype = qtype, h->c.acc = QMOE_ACC_F32, h->c.tokens = TOKENS;
  const int64_t H = 512, F = 256, E = 8, K = 4;
  for (int i = 0; i < si->n_params; i++) {
    const char *p = si->params[i];
    h->c.p[i] = !strcmp(p, "rows") ? 512 : !strcmp(p, "cols") ? 1024 : !strcmp(p, "H") ? H : !strcmp(p, "F") ? F
              : !strcmp(p, "E") ? E : K;
  }
  if (qmoe_stage_check(&h->c, h->size)) return -1;
  h->nbuf = si->n_inputs + si->n_outputs;
  h->out = si->n_inputs; /* the first output: y or h */
  for (int i = 0; i < h->nbuf; i++) {
    const qmoe_stage_buf *b = &si->bufs[i];
    h->ptr[i] = calloc(1, h->size[i]);
    if (b->dtype == QMOE_DTYPE_QTYPE) {
      int64_t cols = stage[0] == 'm' && stage[1] == 'a' ? 1024 : !strcmp(stage, "moe_down") ? F : H;
      int64_t rows = (int64_t)h->size[i] / qmoe_qtype_row_bytes(q, cols);
      float *src = malloc((size_t)cols * sizeof *src);
      for (int64_t r = 0; r < rows; r++) {
        for (int64_t j = 0; j < cols; j++) src[j] = (float)(t_rand_normal() / sqrt(512.0));
        if (qmoe_quantize_row(qtype, src, (unsigned char *)h->ptr[i] + r * qmoe_qtype_row_bytes(q, cols), cols)) return -1;
      }
      free(src);
    } else if (!strcmp(b->name, "ids")) {
      for (int k = 0; k < K * TOKENS; k++) ((int32_t *)h->ptr[i])[k] = (int32_t)((k % K * 3 + k / K) % E);
    } else if (!strcmp(b->name, "w")) {
      for (int k = 0; k < K * TOKENS; k++) ((float *)h->ptr[i])[k] = 1.0f / (float)K;
    } else if (!b->is_output) {
      h->xbuf = i;
      for (size_t j = 0; j < h->size[i] / 4; j++) ((float *)h->ptr[i])[j] = (float)t_rand_normal();
    }
  }
  return 0;
}

/* Runs the call with ACC and PREC on a copy of the inputs (the input vector replaced by X when given). */
static float *host_run(host_call *h, qmoe_acc acc, qmoe_ref_prec prec, const float *x) {
  void *ptr[QMOE_STAGE_MAX_BUFS] = {0};
  memcpy(ptr, h->ptr, sizeof ptr);
  float *out = malloc(h->size[h->out]), *xc = NULL;
  ptr[h->out] = out;
  if (x) {
    xc = malloc(h->size[h->xbuf]);
    memcpy(xc, x, h->size[h->xbuf]);
    ptr[h->xbuf] = xc;
  }
  qmoe_stage_call c = h->c;
  c.acc = acc;
  int rc = qmoe_ref_run(&c, prec, ptr, h->size);
  free(xc);
  if (rc) {
    CHECK(0, "reference run: %s", qmoe_last_error());
    free(out);
    return NULL;
  }
  return out;
}

static double nmse(const float *a, const float *ref, size_t n) {
  double se = 0, sr = 0;
  for (size_t i = 0; i < n; i++) se += ((double)a[i] - ref[i]) * ((double)a[i] - ref[i]), sr += (double)ref[i] * ref[i];
  return se / sr;
}

static void test_q8_error(void) {
  const qmoe_falsifier *f = qmoe_falsifier_find("FALSIFY-Q8-ERROR");
  REQUIRE(f && !strcmp(f->metric, "nmse") && !strcmp(f->comparator, "<="), "no FALSIFY-Q8-ERROR nmse <= check");
  const char *stages[] = { "matvec", "moe_gate_up_swiglu", "moe_down" };
  double worst = 0, best_broken[3] = { INFINITY, INFINITY, INFINITY };
  for (int s = 0; s < 3; s++) {
    const qmoe_stage_info *si = qmoe_stage_by_name(stages[s]);
    REQUIRE(si, "no stage %s", stages[s]);
    int n_q8 = 0;
    for (int i = 0; i < si->n_qtypes; i++) {
      int qt = si->qtypes[i];
      if (!qmoe_stage_has_acc(si, qt, QMOE_ACC_Q8)) continue;
      n_q8++;
      host_call h;
      REQUIRE(host_prepare(&h, stages[s], qt) == 0, "%s/%s: prepare: %s", stages[s], qmoe_qtype_name(qt), qmoe_last_error());
      size_t n = h.size[h.out] / 4, nx = h.size[h.xbuf] / 4;
      float *exact = host_run(&h, QMOE_ACC_F64, QMOE_REF_F64, NULL), *q8 = host_run(&h, QMOE_ACC_Q8, QMOE_REF_F32, NULL);
      float *f32 = host_run(&h, QMOE_ACC_F32, QMOE_REF_F32, NULL);
      float *xb = malloc(nx * 4);
      if (exact && q8 && f32) {
        double e = nmse(q8, exact, n);
        worst = fmax(worst, e);
        CHECK(e <= f->threshold, "FALSIFY-Q8-ERROR: %s/%s nmse %.3g > %.3g", stages[s], qmoe_qtype_name(qt), e,
              f->threshold);
        CHECK(memcmp(q8, f32, n * 4) != 0, "%s/%s: the q8 result equals the f32 one bit for bit", stages[s],
              qmoe_qtype_name(qt));
        printf("# %s/%s: q8 vs f64 nmse %.3g, f32 vs f64 %.3g", stages[s], qmoe_qtype_name(qt), e, nmse(f32, exact, n));
        for (int how = 1; how <= 2; how++) { /* the broken Q8s, through the f32 path */
          q8_broken(how, (const float *)h.ptr[h.xbuf], xb, (int64_t)nx);
          float *bad = host_run(&h, QMOE_ACC_F32, QMOE_REF_F32, xb);
          if (!bad) break;
          double be = nmse(bad, exact, n);
          best_broken[how] = fmin(best_broken[how], be);
          printf(", %s %.3g", how == 1 ? "truncated" : "e+1", be);
          CHECK(be > f->threshold, "FALSIFY-Q8-ERROR does not catch a %s Q8: %s/%s nmse %.3g <= %.3g",
                how == 1 ? "truncating" : "exponent-too-large", stages[s], qmoe_qtype_name(qt), be, f->threshold);
          free(bad);
        }
        printf("\n");
      }
      free(exact), free(q8), free(f32), free(xb);
      host_free(&h);
    }
    CHECK(n_q8 >= 10, "%s has q8 variants for %d qtypes, want the 10 integer block formats", stages[s], n_q8);
  }
  printf("# FALSIFY-Q8-ERROR: worst q8 nmse %.3g, threshold %.3g; smallest broken: truncated %.3g, e+1 %.3g\n", worst,
         f->threshold, best_broken[1], best_broken[2]);
}

/* Stages and formats without q8 refuse it (never a silent f32 run). */
static void test_q8_refused(void) {
  qmoe_stage_call c;
  size_t need[QMOE_STAGE_MAX_BUFS];
  qmoe_call_rmsnorm(&c, 64, 1e-6, NULL, NULL, NULL);
  c.acc = QMOE_ACC_Q8;
  CHECK(qmoe_stage_check(&c, need) == QMOE_EUNSUPPORTED, "rmsnorm q8 accepted");
  CHECK(strstr(qmoe_last_error(), "no q8 variant") != NULL, "message: %s", qmoe_last_error());
  qmoe_call_matvec(&c, 4, 64, NULL, NULL, NULL);
  c.qtype = 1, c.acc = QMOE_ACC_Q8, c.tensor = "output.weight"; /* f16 */
  CHECK(qmoe_stage_check(&c, need) == QMOE_EUNSUPPORTED, "matvec f16 q8 accepted");
  CHECK(strstr(qmoe_last_error(), "output.weight") != NULL, "message: %s", qmoe_last_error());
  c.qtype = 8; /* q8_0 */
  CHECK(qmoe_stage_check(&c, need) == 0, "matvec q8_0 q8 refused: %s", qmoe_last_error());
  CHECK(qmoe_acc_by_name("q8") == QMOE_ACC_Q8 && qmoe_acc_by_name("q16") == -1 && !strcmp(qmoe_acc_name(2), "q8"),
        "acc names");
}

int main(void) {
  t_seed();
  RUN(test_edges);
  RUN(test_random_magnitudes);
  RUN(test_q8_error);
  RUN(test_q8_refused);
  return T_DONE();
}
