/* test_ref_stages.c: checks the CPU reference itself (runtime/cpu/ref_stages.c), so the GPU parity tests do not
 * trust it blindly: its f32 and f64 paths against its long-double oracle on fresh random data, known
 * answers computed independently here (the codecs' own fused dot products, hand-built cases), error paths,
 * and the cpu backend and backend dispatcher around it. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "../harness.h"
#include "backend.h"
#include "qmoe.h"
#include "ref_internal.h"
#include "stage_table.h"

/* ---- a stage call on host memory ---- */

typedef struct {
  qmoe_stage_call c;
  int nbuf;
  size_t size[QMOE_STAGE_MAX_BUFS];
  void *ptr[QMOE_STAGE_MAX_BUFS];
} host_call;

/* Makes a call with the given int params (backend.h order) and float params; buffers sized by the
 * reference's own check and zero-filled. Returns 0 or the check's error. */
static int host_make(host_call *h, qmoe_stage stage, int qtype, const int64_t *p, int np, const double *f, int nf) {
  memset(h, 0, sizeof *h);
  h->c.stage = stage;
  h->c.qtype = qtype;
  h->c.acc = QMOE_ACC_F32;
  for (int i = 0; i < np; i++) h->c.p[i] = p[i];
  for (int i = 0; i < nf; i++) h->c.f[i] = f[i];
  int rc = qmoe_stage_check(&h->c, h->size);
  if (rc) return rc;
  const qmoe_stage_info *si = qmoe_stage_info_get(stage);
  h->nbuf = si->n_inputs + si->n_outputs;
  for (int i = 0; i < h->nbuf; i++) h->ptr[i] = calloc(1, h->size[i] ? h->size[i] : 1);
  return 0;
}

static void host_free(host_call *h) {
  for (int i = 0; i < QMOE_STAGE_MAX_BUFS; i++) free(h->ptr[i]);
  memset(h, 0, sizeof *h);
}

static int host_run(host_call *h, qmoe_ref_prec prec) { return qmoe_ref_run(&h->c, prec, h->ptr, h->size); }

static float *F(host_call *h, int i) { return (float *)h->ptr[i]; }
static int32_t *I(host_call *h, int i) { return (int32_t *)h->ptr[i]; }

static int64_t rand_int(int64_t lo, int64_t hi) { return lo + (int64_t)(t_rand_u64() % (uint64_t)(hi - lo + 1)); }

static void fill_normal(float *x, size_t n, double sd) {
  for (size_t i = 0; i < n; i++) x[i] = (float)(sd * t_rand_normal());
}

/* Gaussian rows quantized with the qtype's reference quantizer. */
static int fill_quant(void *dst, int qtype, int64_t rows, int64_t cols) {
  const qmoe_qtype_info *q = qmoe_qtype_by_id(qtype);
  if (!q) return -1;
  int64_t rb = qmoe_qtype_row_bytes(q, cols);
  float *src = malloc((size_t)cols * sizeof(float));
  int rc = 0;
  for (int64_t r = 0; r < rows && !rc; r++) {
    fill_normal(src, (size_t)cols, 1.0 / sqrt((double)cols));
    rc = qmoe_quantize_row(qtype, src, (unsigned char *)dst + r * rb, cols);
  }
  free(src);
  return rc;
}

static void distinct_ids(int32_t *ids, int64_t K, int64_t E) {
  for (int64_t k = 0; k < K; k++) {
    int again;
    do {
      ids[k] = (int32_t)rand_int(0, E - 1);
      again = 0;
      for (int64_t j = 0; j < k; j++) again |= ids[j] == ids[k];
    } while (again);
  }
}

/* Σ(a−b)²/Σb² and max|a−b|/max|b| (b the oracle). */
static void measure(const float *a, const float *b, size_t n, double *nmse, double *maxrel) {
  double se = 0, sb = 0, md = 0, mb = 0;
  for (size_t i = 0; i < n; i++) {
    double d = (double)a[i] - (double)b[i];
    se += d * d;
    sb += (double)b[i] * b[i];
    if (fabs(d) > md) md = fabs(d);
    if (fabs((double)b[i]) > mb) mb = fabs((double)b[i]);
  }
  *nmse = sb > 0 ? se / sb : (se > 0 ? INFINITY : 0);
  *maxrel = mb > 0 ? md / mb : (md > 0 ? INFINITY : 0);
}

static int all_finite(const float *x, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (!isfinite(x[i])) return 0;
  return 1;
}

/* ---- the f32 and f64 paths against the long-double oracle ---- */

/* Fresh inputs for one stage: Qwen3-MoE shapes scaled down (smaller than the parity tests': quantizing the
 * weights is most of this test's time). */
static int make_stage(host_call *h, qmoe_stage s, int qtype) {
  int64_t D = t_rand_u64() & 1 ? 128 : 64;
  int64_t p[8] = {0};
  double f[4] = {0};
  int np = 0, nf = 0;
  switch (s) {
  case QMOE_STAGE_MATVEC: p[0] = rand_int(16, 64); p[1] = 256 * rand_int(2, 4); np = 2; break;
  case QMOE_STAGE_MOE_GATE_UP_SWIGLU:
  case QMOE_STAGE_MOE_DOWN: p[0] = 512; p[1] = 256; p[2] = 4; p[3] = 2; np = 4; break;
  case QMOE_STAGE_ROUTER_TOPK: p[0] = 512; p[1] = 128; p[2] = 8; np = 3; break;
  case QMOE_STAGE_RMSNORM: p[0] = rand_int(256, 2048); f[0] = 1e-6; np = 1; nf = 1; break;
  case QMOE_STAGE_QK_NORM: p[0] = 8; p[1] = D; f[0] = 1e-6; np = 2; nf = 1; break;
  case QMOE_STAGE_ROPE_NEOX: p[0] = 8; p[1] = D; p[2] = rand_int(0, 4095); f[0] = 1e6; np = 3; nf = 1; break;
  case QMOE_STAGE_QK_NORM_ROPE: p[0] = 8; p[1] = D; p[2] = rand_int(0, 4095); f[0] = 1e-6; f[1] = 1e6; np = 3; nf = 2; break;
  case QMOE_STAGE_KV_STORE: p[0] = 2; p[1] = D; p[3] = rand_int(1, 40); p[2] = rand_int(0, p[3] - 1); np = 4; break;
  case QMOE_STAGE_ATTENTION: p[0] = 8; p[1] = 2; p[2] = D; p[3] = rand_int(1, 33); p[4] = p[3] + rand_int(0, 8); np = 5; break;
  case QMOE_STAGE_ADD: p[0] = rand_int(256, 4096); np = 1; break;
  case QMOE_STAGE_ARGMAX: p[0] = rand_int(1, 8192); np = 1; break;
  default: { /* a stage without a recipe here: the shapes its contract's test_params give */
    const qmoe_stage_info *g = qmoe_stage_info_get(s);
    if (!g || g->n_test_params == 0) return -1;
    for (int i = 0; i < g->n_test_params; i++) {
      const qmoe_stage_test_param *tp = &g->test_params[i];
      p[tp->param] = rand_int((tp->min + tp->step - 1) / tp->step, tp->max / tp->step) * tp->step;
    }
    np = g->n_params;
    for (int i = 0; i < g->n_fparams; i++) { /* test_params hold ints: a norm's eps is the model's, else no recipe */
      if (strcmp(g->fparams[i], "eps")) return -1;
      f[i] = 1e-6;
    }
    nf = g->n_fparams;
    break;
  }
  }
  int rc = host_make(h, s, qtype, p, np, f, nf);
  if (rc) return rc;
  const qmoe_stage_info *si = qmoe_stage_info_get(s);
  for (int i = 0; i < si->n_inputs; i++) {
    const qmoe_stage_buf *b = &si->bufs[i];
    if (b->dtype == QMOE_DTYPE_F32) fill_normal(F(h, i), h->size[i] / 4, 1.0);
    else if (b->dtype == QMOE_DTYPE_I32 && b->index_param >= 0) /* values index p[index_param] items */
      for (size_t j = 0; j < h->size[i] / 4; j++) I(h, i)[j] = (int32_t)rand_int(0, p[b->index_param] - 1);
    else if (b->dtype == QMOE_DTYPE_I32) distinct_ids(I(h, i), h->size[i] / 4, p[2]);
    else if (b->dtype == QMOE_DTYPE_QTYPE && s > QMOE_STAGE_ARGMAX && b->n_dims > 0) { /* rows of the last dim */
      int64_t rows = 1;
      for (int d = 0; d + 1 < b->n_dims; d++) rows *= b->dims[d].param >= 0 ? p[b->dims[d].param] : b->dims[d].value;
      const qmoe_stage_dim *last = &b->dims[b->n_dims - 1];
      rc = fill_quant(h->ptr[i], qtype, rows, last->param >= 0 ? p[last->param] : last->value);
      if (rc) return rc;
    }
  }
  if (s == QMOE_STAGE_MATVEC) rc = fill_quant(h->ptr[0], qtype, p[0], p[1]);
  if (s == QMOE_STAGE_MOE_GATE_UP_SWIGLU) {
    rc = fill_quant(h->ptr[0], qtype, p[2] * p[1], p[0]);
    if (!rc) rc = fill_quant(h->ptr[1], qtype, p[2] * p[1], p[0]);
  }
  if (s == QMOE_STAGE_MOE_DOWN) {
    rc = fill_quant(h->ptr[0], qtype, p[2] * p[0], p[1]);
    double sum = 0;
    for (int k = 0; k < p[3]; k++) sum += F(h, 3)[k] = (float)(0.05 + t_rand_unit());
    for (int k = 0; k < p[3]; k++) F(h, 3)[k] = (float)(F(h, 3)[k] / sum);
  }
  if (s == QMOE_STAGE_ROUTER_TOPK) fill_normal(F(h, 0), h->size[0] / 4, 1.0 / sqrt(512.0));
  return rc;
}

/* Runs H in PREC on a copy of its buffers; returns the copies (caller frees each and the array). */
static void **run_copy(host_call *h, qmoe_ref_prec prec, int *rc) {
  void **out = calloc(QMOE_STAGE_MAX_BUFS, sizeof *out);
  for (int i = 0; i < h->nbuf; i++) {
    out[i] = malloc(h->size[i] ? h->size[i] : 1);
    memcpy(out[i], h->ptr[i], h->size[i]);
  }
  *rc = qmoe_ref_run(&h->c, prec, out, h->size);
  return out;
}

static void free_copy(void **b) {
  for (int i = 0; i < QMOE_STAGE_MAX_BUFS; i++) free(b[i]);
  free(b);
}

static const qmoe_stage_info *cur_stage;
static int cur_qtype;

/* The f32 path within f32-accumulation error of the oracle, and visibly not the oracle on stages with
 * long reductions (so it really accumulates in f32); the f64 path within f32 rounding of the oracle. */
static void test_precisions(void) {
  host_call h;
  REQUIRE(make_stage(&h, cur_stage->id, cur_qtype) == 0, "inputs: %s", qmoe_last_error());
  int r32, r64, rld;
  void **a = run_copy(&h, QMOE_REF_F32, &r32), **b = run_copy(&h, QMOE_REF_F64, &r64), **o = run_copy(&h, QMOE_REF_LDBL, &rld);
  CHECK(r32 == 0 && r64 == 0 && rld == 0, "reference failed: %d %d %d: %s", r32, r64, rld, qmoe_last_error());
  double worst32 = 0;
  for (int i = cur_stage->n_inputs; i < h.nbuf && !r32 && !r64 && !rld; i++) {
    size_t n = h.size[i] / 4;
    if (cur_stage->bufs[i].dtype == QMOE_DTYPE_I32) {
      CHECK(!memcmp(a[i], o[i], h.size[i]) && !memcmp(b[i], o[i], h.size[i]), "%s: ids differ between precisions",
            cur_stage->bufs[i].name);
      continue;
    }
    CHECK(all_finite(o[i], n) && all_finite(a[i], n) && all_finite(b[i], n), "%s: non-finite output",
          cur_stage->bufs[i].name);
    double nm, mr;
    measure(a[i], o[i], n, &nm, &mr);
    CHECK(nm <= 1e-10 && mr <= 1e-5, "f32 path vs oracle: %s nmse %.3g maxrel %.3g", cur_stage->bufs[i].name, nm, mr);
    if (nm > worst32) worst32 = nm;
    measure(b[i], o[i], n, &nm, &mr);
    CHECK(nm <= 1e-15 && mr <= 1.2e-7, "f64 path vs oracle: %s nmse %.3g maxrel %.3g (more than f32 rounding)",
          cur_stage->bufs[i].name, nm, mr);
  }
  int long_reduction = cur_stage->id == QMOE_STAGE_MATVEC || cur_stage->id == QMOE_STAGE_MOE_GATE_UP_SWIGLU ||
                       cur_stage->id == QMOE_STAGE_MOE_DOWN;
  if (long_reduction && !r32)
    CHECK(worst32 > 0, "f32 path equals the oracle bit for bit: it does not accumulate in f32");
  free_copy(a);
  free_copy(b);
  free_copy(o);
  host_free(&h);
}

/* ---- known answers, computed independently of the reference ---- */

/* matvec f64 equals the codec's own fused dot_f64 (generated separately from the quant contract) for every
 * qtype; f32 weights against a plain double dot written here. */
static void test_matvec_vs_codec_dot(void) {
  for (size_t t = 0; t < qmoe_qtype_count(); t++) {
    const qmoe_qtype_info *q = qmoe_qtype_at(t);
    if (!qmoe_stage_has_qtype(qmoe_stage_info_get(QMOE_STAGE_MATVEC), q->ggml_type)) continue;
    host_call h;
    int64_t p[2] = {rand_int(3, 40), 256 * rand_int(1, 3)};
    REQUIRE(host_make(&h, QMOE_STAGE_MATVEC, q->ggml_type, p, 2, NULL, 0) == 0, "%s", qmoe_last_error());
    REQUIRE(fill_quant(h.ptr[0], q->ggml_type, p[0], p[1]) == 0, "quantize %s: %s", q->name, qmoe_last_error());
    fill_normal(F(&h, 1), (size_t)p[1], 1.0);
    CHECK(host_run(&h, QMOE_REF_F64) == 0, "%s: %s", q->name, qmoe_last_error());
    int64_t rb = qmoe_qtype_row_bytes(q, p[1]);
    for (int64_t r = 0; r < p[0]; r++) {
      double want = q->dot_f64((const unsigned char *)h.ptr[0] + r * rb, F(&h, 1), p[1]);
      double got = F(&h, 2)[r];
      CHECK(fabs(got - want) <= 1e-6 * (fabs(want) + 1e-3), "%s row %lld: reference %.9g, codec dot_f64 %.9g", q->name,
            (long long)r, got, want);
    }
    if (q->ggml_type == 0) { /* f32 weights: an independent plain dot */
      for (int64_t r = 0; r < p[0]; r++) {
        double s = 0;
        for (int64_t i = 0; i < p[1]; i++) s += (double)((const float *)h.ptr[0])[r * p[1] + i] * F(&h, 1)[i];
        CHECK(fabs(F(&h, 2)[r] - s) <= 1e-6 * (fabs(s) + 1e-3), "f32 row %lld: %.9g vs %.9g", (long long)r,
              (double)F(&h, 2)[r], s);
      }
    }
    host_free(&h);
  }
}

/* MoE: gate/up/SwiGLU and the weighted down-projection against the codecs' dot_f64 and double math here. */
static void test_moe_vs_codec_dot(void) {
  const qmoe_qtype_info *q4 = qmoe_qtype_by_name("q4_k"), *q6 = qmoe_qtype_by_name("q6_k");
  REQUIRE(q4 && q6, "no q4_k/q6_k codec");
  int64_t H = 256, Fd = 256, E = 6, K = 3, p[4] = {H, Fd, E, K};
  host_call up, dn;
  REQUIRE(host_make(&up, QMOE_STAGE_MOE_GATE_UP_SWIGLU, q4->ggml_type, p, 4, NULL, 0) == 0, "%s", qmoe_last_error());
  REQUIRE(host_make(&dn, QMOE_STAGE_MOE_DOWN, q6->ggml_type, p, 4, NULL, 0) == 0, "%s", qmoe_last_error());
  REQUIRE(fill_quant(up.ptr[0], q4->ggml_type, E * Fd, H) == 0 && fill_quant(up.ptr[1], q4->ggml_type, E * Fd, H) == 0 &&
              fill_quant(dn.ptr[0], q6->ggml_type, E * H, Fd) == 0, "quantize: %s", qmoe_last_error());
  fill_normal(F(&up, 2), (size_t)H, 1.0);
  distinct_ids(I(&up, 3), K, E);
  CHECK(host_run(&up, QMOE_REF_F64) == 0, "gate_up: %s", qmoe_last_error());
  int64_t rbu = qmoe_qtype_row_bytes(q4, H), rbd = qmoe_qtype_row_bytes(q6, Fd);
  for (int64_t k = 0; k < K; k++) {
    for (int64_t f = 0; f < Fd; f++) {
      int64_t r = I(&up, 3)[k] * Fd + f;
      double g = q4->dot_f64((const unsigned char *)up.ptr[0] + r * rbu, F(&up, 2), H);
      double u = q4->dot_f64((const unsigned char *)up.ptr[1] + r * rbu, F(&up, 2), H);
      double want = g / (1.0 + exp(-g)) * u;
      CHECK(fabs(F(&up, 4)[k * Fd + f] - want) <= 1e-6 * (fabs(want) + 1e-3), "h[%lld][%lld] = %.9g, want %.9g",
            (long long)k, (long long)f, (double)F(&up, 4)[k * Fd + f], want);
    }
  }
  memcpy(dn.ptr[1], up.ptr[4], dn.size[1]);
  memcpy(dn.ptr[2], up.ptr[3], dn.size[2]);
  for (int64_t k = 0; k < K; k++) F(&dn, 3)[k] = (float)(1.0 / (double)(k + 2));
  CHECK(host_run(&dn, QMOE_REF_F64) == 0, "down: %s", qmoe_last_error());
  for (int64_t r = 0; r < H; r++) {
    double want = 0;
    for (int64_t k = 0; k < K; k++)
      want += (double)F(&dn, 3)[k] *
              q6->dot_f64((const unsigned char *)dn.ptr[0] + (I(&dn, 2)[k] * H + r) * rbd, F(&dn, 1) + k * Fd, Fd);
    CHECK(fabs(F(&dn, 4)[r] - want) <= 1e-6 * (fabs(want) + 1e-3), "y[%lld] = %.9g, want %.9g", (long long)r,
          (double)F(&dn, 4)[r], want);
  }
  host_free(&up);
  host_free(&dn);
}

/* Router: ids are the K largest logits (ties to the lower index), weights sum to 1 and equal the
 * renormalized softmax computed here. */
static void test_router_known(void) {
  int64_t H = 64, E = 16, K = 5, p[3] = {H, E, K};
  for (int prec = QMOE_REF_F32; prec <= QMOE_REF_LDBL; prec++) {
    host_call h;
    REQUIRE(host_make(&h, QMOE_STAGE_ROUTER_TOPK, -1, p, 3, NULL, 0) == 0, "%s", qmoe_last_error());
    fill_normal(F(&h, 0), (size_t)(E * H), 0.2);
    fill_normal(F(&h, 1), (size_t)H, 1.0);
    /* Experts 3, 9 and 12 get the same row, aligned with x: bit-identical largest logits. */
    for (int64_t i = 0; i < H; i++) F(&h, 0)[3 * H + i] = F(&h, 0)[9 * H + i] = F(&h, 0)[12 * H + i] = F(&h, 1)[i] * 0.5f;
    REQUIRE(host_run(&h, (qmoe_ref_prec)prec) == 0, "%s", qmoe_last_error());
    double logit[16], mx = -INFINITY, sum = 0;
    for (int64_t e = 0; e < E; e++) {
      logit[e] = 0;
      for (int64_t i = 0; i < H; i++) logit[e] += (double)F(&h, 0)[e * H + i] * F(&h, 1)[i];
      if (logit[e] > mx) mx = logit[e];
    }
    int taken[16] = {0};
    double chosen = 0, pr[16];
    for (int64_t e = 0; e < E; e++) sum += pr[e] = exp(logit[e] - mx);
    int want_ids[5];
    for (int64_t k = 0; k < K; k++) {
      int best = -1;
      for (int e = 0; e < E; e++)
        if (!taken[e] && (best < 0 || logit[e] > logit[best])) best = e;
      taken[best] = 1;
      want_ids[k] = best;
      chosen += pr[best] / sum;
    }
    double wsum = 0;
    for (int64_t k = 0; k < K; k++) {
      CHECK(I(&h, 2)[k] == want_ids[k], "prec %d: ids[%lld] = %d, want %d", prec, (long long)k, (int)I(&h, 2)[k], want_ids[k]);
      double w = pr[want_ids[k]] / sum / chosen;
      CHECK(fabs(F(&h, 3)[k] - w) <= 1e-6, "prec %d: w[%lld] = %.9g, want %.9g", prec, (long long)k, (double)F(&h, 3)[k], w);
      wsum += F(&h, 3)[k];
    }
    CHECK(fabs(wsum - 1) <= 1e-6, "prec %d: weights sum to %.9g", prec, wsum);
    /* 3, 9 and 12 have bit-identical logits (the largest): they are chosen in index order. */
    CHECK(I(&h, 2)[0] == 3 && I(&h, 2)[1] == 9 && I(&h, 2)[2] == 12, "prec %d: tied experts chosen as %d %d %d, want 3 9 12",
          prec, (int)I(&h, 2)[0], (int)I(&h, 2)[1], (int)I(&h, 2)[2]);
    host_free(&h);
  }
}

/* RMSNorm of a constant vector c with w = 1 is c/sqrt(c² + eps); qk_norm does it per head with w. */
static void test_rmsnorm_known(void) {
  for (int prec = QMOE_REF_F32; prec <= QMOE_REF_LDBL; prec++) {
    host_call h;
    int64_t n = 1000, p[1] = {n};
    double eps = 1e-6, f[1] = {eps};
    REQUIRE(host_make(&h, QMOE_STAGE_RMSNORM, -1, p, 1, f, 1) == 0, "%s", qmoe_last_error());
    float c = (float)(0.1 + t_rand_unit());
    for (int64_t i = 0; i < n; i++) F(&h, 0)[i] = c, F(&h, 1)[i] = 1.0f;
    REQUIRE(host_run(&h, (qmoe_ref_prec)prec) == 0, "%s", qmoe_last_error());
    double want = c / sqrt((double)c * c + eps);
    double tol = prec == QMOE_REF_F32 ? 1e-4 : 2e-7; /* f32: a sum of 1000 squares in f32 */
    for (int64_t i = 0; i < n; i++)
      CHECK(fabs(F(&h, 2)[i] - want) <= tol * want, "prec %d: y[%lld] = %.9g, want %.9g", prec, (long long)i, (double)F(&h, 2)[i], want);
    host_free(&h);

    int64_t q[2] = {3, 8};
    REQUIRE(host_make(&h, QMOE_STAGE_QK_NORM, -1, q, 2, f, 1) == 0, "%s", qmoe_last_error());
    for (int64_t hd = 0; hd < 3; hd++)
      for (int64_t i = 0; i < 8; i++) F(&h, 0)[hd * 8 + i] = (float)(hd + 1) * (i % 2 ? -2.0f : 2.0f);
    for (int64_t i = 0; i < 8; i++) F(&h, 1)[i] = (float)i;
    REQUIRE(host_run(&h, (qmoe_ref_prec)prec) == 0, "%s", qmoe_last_error());
    for (int64_t hd = 0; hd < 3; hd++) {
      double v = 2.0 * (double)(hd + 1), r = 1 / sqrt(v * v + eps);
      for (int64_t i = 0; i < 8; i++) {
        double w = (i % 2 ? -v : v) * r * (double)i;
        CHECK(fabs(F(&h, 2)[hd * 8 + i] - w) <= 2e-6 * (fabs(w) + 1e-6), "prec %d: qk_norm y[%lld][%lld] = %.9g, want %.9g",
              prec, (long long)hd, (long long)i, (double)F(&h, 2)[hd * 8 + i], w);
      }
    }
    host_free(&h);
  }
}

/* RoPE: identity at pos 0 (bit for bit); at pos p, dimension pair i rotates by p·theta^(−2i/D) computed here
 * in double; in place (y = x) gives the same. */
static void test_rope_known(void) {
  for (int prec = QMOE_REF_F32; prec <= QMOE_REF_LDBL; prec++) {
    host_call h;
    int64_t nh = 3, D = 16, p[3] = {nh, D, 0};
    double theta = 1e6, f[1] = {theta};
    REQUIRE(host_make(&h, QMOE_STAGE_ROPE_NEOX, -1, p, 3, f, 1) == 0, "%s", qmoe_last_error());
    fill_normal(F(&h, 0), (size_t)(nh * D), 1.0);
    REQUIRE(host_run(&h, (qmoe_ref_prec)prec) == 0, "%s", qmoe_last_error());
    CHECK(!memcmp(h.ptr[0], h.ptr[1], h.size[0]), "prec %d: rope at pos 0 is not the identity", prec);
    h.c.p[2] = 1234;
    REQUIRE(host_run(&h, (qmoe_ref_prec)prec) == 0, "%s", qmoe_last_error());
    for (int64_t hd = 0; hd < nh; hd++) {
      for (int64_t i = 0; i < D / 2; i++) {
        double a = 1234.0 * pow(theta, -2.0 * (double)i / (double)D);
        double x0 = F(&h, 0)[hd * D + i], x1 = F(&h, 0)[hd * D + i + D / 2];
        double y0 = x0 * cos(a) - x1 * sin(a), y1 = x0 * sin(a) + x1 * cos(a);
        CHECK(fabs(F(&h, 1)[hd * D + i] - y0) <= 1e-6 && fabs(F(&h, 1)[hd * D + i + D / 2] - y1) <= 1e-6,
              "prec %d: head %lld pair %lld: (%.7g, %.7g), want (%.7g, %.7g)", prec, (long long)hd, (long long)i,
              (double)F(&h, 1)[hd * D + i], (double)F(&h, 1)[hd * D + i + D / 2], y0, y1);
      }
    }
    void *y = h.ptr[1];
    h.ptr[1] = h.ptr[0]; /* in place */
    int rc = host_run(&h, (qmoe_ref_prec)prec);
    h.ptr[1] = y;
    CHECK(rc == 0 && !memcmp(y, h.ptr[0], h.size[0]), "prec %d: in-place rope differs (%d)", prec, rc);
    host_free(&h);
  }
}

/* Attention with one cached position returns that position's V for each head's kv group (GQA mapping);
 * with two positions holding the same key it returns the mean of their V rows. */
static void test_attention_known(void) {
  for (int prec = QMOE_REF_F32; prec <= QMOE_REF_LDBL; prec++) {
    host_call h;
    int64_t nh = 8, nkv = 2, D = 64, ctx = 5, p[5] = {nh, nkv, D, 1, ctx};
    REQUIRE(host_make(&h, QMOE_STAGE_ATTENTION, -1, p, 5, NULL, 0) == 0, "%s", qmoe_last_error());
    fill_normal(F(&h, 0), h.size[0] / 4, 3.0);
    fill_normal(F(&h, 1), h.size[1] / 4, 3.0);
    fill_normal(F(&h, 2), h.size[2] / 4, 1.0);
    REQUIRE(host_run(&h, (qmoe_ref_prec)prec) == 0, "%s", qmoe_last_error());
    for (int64_t hd = 0; hd < nh; hd++)
      CHECK(!memcmp(F(&h, 3) + hd * D, F(&h, 2) + (hd / (nh / nkv)) * D, (size_t)D * 4),
            "prec %d: n_kv = 1: head %lld does not return V of kv head %lld", prec, (long long)hd, (long long)(hd / (nh / nkv)));
    /* Two positions with equal keys: softmax weights 1/2 each. */
    h.c.p[3] = 2;
    memcpy(F(&h, 1) + nkv * D, F(&h, 1), (size_t)(nkv * D) * 4);
    REQUIRE(host_run(&h, (qmoe_ref_prec)prec) == 0, "%s", qmoe_last_error());
    for (int64_t hd = 0; hd < nh; hd++) {
      int64_t g = hd / (nh / nkv);
      for (int64_t d = 0; d < D; d++) {
        double want = 0.5 * ((double)F(&h, 2)[g * D + d] + (double)F(&h, 2)[(nkv + g) * D + d]);
        CHECK(fabs(F(&h, 3)[hd * D + d] - want) <= 1e-6 * (1 + fabs(want)), "prec %d: o[%lld][%lld] = %.9g, want %.9g", prec,
              (long long)hd, (long long)d, (double)F(&h, 3)[hd * D + d], want);
      }
    }
    host_free(&h);
  }
}

/* kv_store writes row pos of both caches and nothing else; add is elementwise (in place too); argmax
 * breaks ties to the lowest index and never picks a NaN. */
static void test_copy_add_argmax(void) {
  host_call h;
  int64_t nkv = 2, D = 8, ctx = 6, pos = 4, p[4] = {nkv, D, pos, ctx};
  REQUIRE(host_make(&h, QMOE_STAGE_KV_STORE, -1, p, 4, NULL, 0) == 0, "%s", qmoe_last_error());
  for (int i = 0; i < 4; i++) fill_normal(F(&h, i), h.size[i] / 4, 1.0);
  float *before = malloc(h.size[2]);
  memcpy(before, h.ptr[2], h.size[2]);
  REQUIRE(host_run(&h, QMOE_REF_F32) == 0, "%s", qmoe_last_error());
  CHECK(!memcmp(F(&h, 2) + pos * nkv * D, h.ptr[0], (size_t)(nkv * D) * 4), "Kc row pos is not k");
  CHECK(!memcmp(F(&h, 3) + pos * nkv * D, h.ptr[1], (size_t)(nkv * D) * 4), "Vc row pos is not v");
  CHECK(!memcmp(F(&h, 2), before, (size_t)(pos * nkv * D) * 4), "kv_store touched rows before pos");
  CHECK(!memcmp(F(&h, 2) + (pos + 1) * nkv * D, before + (pos + 1) * nkv * D, (size_t)nkv * D * 4), "kv_store touched rows after pos");
  free(before);
  host_free(&h);

  int64_t n = 777, q[1] = {n};
  REQUIRE(host_make(&h, QMOE_STAGE_ADD, -1, q, 1, NULL, 0) == 0, "%s", qmoe_last_error());
  fill_normal(F(&h, 0), (size_t)n, 1.0);
  fill_normal(F(&h, 1), (size_t)n, 1.0);
  REQUIRE(host_run(&h, QMOE_REF_F32) == 0, "%s", qmoe_last_error());
  for (int64_t i = 0; i < n; i++) CHECK(F(&h, 2)[i] == F(&h, 0)[i] + F(&h, 1)[i], "add y[%lld]", (long long)i);
  void *y = h.ptr[2];
  h.ptr[2] = h.ptr[0]; /* y = a */
  int rc = host_run(&h, QMOE_REF_F32);
  h.ptr[2] = y;
  CHECK(rc == 0 && !memcmp(y, h.ptr[0], h.size[0]), "in-place add differs (%d)", rc);
  host_free(&h);

  REQUIRE(host_make(&h, QMOE_STAGE_ARGMAX, -1, q, 1, NULL, 0) == 0, "%s", qmoe_last_error());
  fill_normal(F(&h, 0), (size_t)n, 1.0);
  F(&h, 0)[500] = 100.0f;
  F(&h, 0)[123] = 100.0f;
  F(&h, 0)[700] = 100.0f;
  REQUIRE(host_run(&h, QMOE_REF_F32) == 0, "%s", qmoe_last_error());
  CHECK(I(&h, 1)[0] == 123, "argmax with ties at 123, 500, 700 gave %d", (int)I(&h, 1)[0]);
  F(&h, 0)[0] = NAN; /* NaN never wins, wherever it is */
  F(&h, 0)[124] = NAN;
  REQUIRE(host_run(&h, QMOE_REF_F32) == 0, "%s", qmoe_last_error());
  CHECK(I(&h, 1)[0] == 123, "argmax with NaN at 0 and 124 gave %d", (int)I(&h, 1)[0]);
  host_free(&h);
}

/* ---- errors ---- */

/* A GGUF type id qmoe has no codec for (so no stage lists it). */
static int uncodec_qtype(void) {
  for (int id = 0; id < 1000; id++)
    if (!qmoe_qtype_by_id(id)) return id;
  return -1;
}

static void test_errors(void) {
  host_call h;
  int64_t p[4] = {256, 256, 4, 2};
  /* A qtype moe_down has no variant for: EUNSUPPORTED naming stage, tensor, qtype. */
  int bad = uncodec_qtype();
  char badname[32];
  snprintf(badname, sizeof badname, "ggml type %d", bad);
  memset(&h, 0, sizeof h);
  h.c.stage = QMOE_STAGE_MOE_DOWN;
  h.c.qtype = bad;
  h.c.tensor = "blk.3.ffn_down_exps.weight";
  memcpy(h.c.p, p, sizeof p);
  size_t need[QMOE_STAGE_MAX_BUFS];
  int rc = qmoe_stage_check(&h.c, need);
  CHECK(rc == QMOE_EUNSUPPORTED, "unlisted qtype gave %d", rc);
  CHECK(strstr(qmoe_last_error(), "blk.3.ffn_down_exps.weight") && strstr(qmoe_last_error(), "moe_down") &&
            strstr(qmoe_last_error(), badname), "message does not name stage, tensor and qtype: %s", qmoe_last_error());
  /* Expert id out of range. */
  REQUIRE(host_make(&h, QMOE_STAGE_MOE_DOWN, 12, p, 4, NULL, 0) == 0, "%s", qmoe_last_error());
  I(&h, 2)[0] = 0;
  I(&h, 2)[1] = 4;
  rc = host_run(&h, QMOE_REF_F32);
  CHECK(rc == QMOE_EINVAL && strstr(qmoe_last_error(), "ids[1] = 4"), "bad id gave %d: %s", rc, qmoe_last_error());
  /* Buffer too small. */
  I(&h, 2)[1] = 1;
  h.size[4] -= 4;
  rc = host_run(&h, QMOE_REF_F32);
  CHECK(rc == QMOE_EINVAL && strstr(qmoe_last_error(), "buffer 4 (y)"), "short buffer gave %d: %s", rc, qmoe_last_error());
  host_free(&h);
  /* Row not a whole number of blocks; pos outside the cache; a stage that does not vary by qtype given one. */
  int64_t mv[2] = {4, 100};
  CHECK(host_make(&h, QMOE_STAGE_MATVEC, 12, mv, 2, NULL, 0) == QMOE_EINVAL && strstr(qmoe_last_error(), "multiple of"),
        "cols 100 with q4_k: %s", qmoe_last_error());
  int64_t kv[4] = {2, 8, 6, 6};
  CHECK(host_make(&h, QMOE_STAGE_KV_STORE, -1, kv, 4, NULL, 0) == QMOE_EINVAL && strstr(qmoe_last_error(), "pos = 6"),
        "pos = ctx: %s", qmoe_last_error());
  int64_t ad[1] = {8};
  CHECK(host_make(&h, QMOE_STAGE_ADD, 12, ad, 1, NULL, 0) == QMOE_EINVAL, "add with a qtype: %s", qmoe_last_error());
  int64_t at[5] = {6, 4, 8, 2, 4};
  CHECK(host_make(&h, QMOE_STAGE_ATTENTION, -1, at, 5, NULL, 0) == QMOE_EINVAL && strstr(qmoe_last_error(), "multiple"),
        "nh 6 nkv 4: %s", qmoe_last_error());
}

/* ---- the cpu backend and the dispatcher ---- */

static void test_backend_cpu(void) {
  qmoe_backend *be = NULL;
  REQUIRE(qmoe_backend_open("cpu", &be) == 0 && be && !strcmp(be->name, "cpu"), "open cpu: %s", qmoe_last_error());
  qmoe_buffer *b[3] = {0};
  int64_t rows = 5, cols = 256;
  host_call h;
  int64_t p[2] = {rows, cols};
  REQUIRE(host_make(&h, QMOE_STAGE_MATVEC, 14, p, 2, NULL, 0) == 0, "%s", qmoe_last_error());
  REQUIRE(fill_quant(h.ptr[0], 14, rows, cols) == 0, "%s", qmoe_last_error());
  fill_normal(F(&h, 1), (size_t)cols, 1.0);
  /* Buffers with a leading pad, used through call offsets. */
  qmoe_stage_call c = h.c;
  c.acc = QMOE_ACC_F64;
  for (int i = 0; i < 3; i++) {
    REQUIRE(be->alloc(be, h.size[i] + 16, &b[i]) == 0, "alloc: %s", qmoe_last_error());
    CHECK(be->upload(be, b[i], 16, h.ptr[i], h.size[i]) == 0, "upload: %s", qmoe_last_error());
    c.buf[i] = b[i];
    c.off[i] = 16;
  }
  CHECK(be->run(be, &c) == 0 && be->sync(be) == 0, "run: %s", qmoe_last_error());
  float y[5];
  CHECK(be->download(be, b[2], 16, y, sizeof y) == 0, "download: %s", qmoe_last_error());
  REQUIRE(host_run(&h, QMOE_REF_F64) == 0, "%s", qmoe_last_error());
  CHECK(!memcmp(y, h.ptr[2], sizeof y), "cpu backend f64 differs from the reference's f64 path");
  /* Bounds. */
  CHECK(be->upload(be, b[1], 17, h.ptr[1], h.size[1]) == QMOE_EINVAL, "upload past the end accepted");
  CHECK(be->download(be, b[1], SIZE_MAX, y, 1) == QMOE_EINVAL, "download at SIZE_MAX accepted");
  c.off[2] = 20; /* y no longer fits */
  CHECK(be->run(be, &c) == QMOE_EINVAL, "run with y past the end accepted");
  c.off[2] = 16;
  c.qtype = uncodec_qtype();
  c.tensor = "output.weight";
  CHECK(be->run(be, &c) == QMOE_EUNSUPPORTED && strstr(qmoe_last_error(), "output.weight"),
        "unsupported qtype: %s", qmoe_last_error());
  for (int i = 0; i < 3; i++) be->free_buf(be, b[i]);
  be->close(be);
  host_free(&h);
}

/* Unknown names list the valid ones; a GPU backend whose file is in the tree must be linked in (libqmoe is
 * an archive: a constructor referenced only weakly would be silently left out). */
static void test_dispatcher(void) {
  qmoe_backend *be = (qmoe_backend *)1;
  CHECK(qmoe_backend_open("metal", &be) == QMOE_EINVAL && be == NULL, "unknown backend accepted");
  CHECK(strstr(qmoe_last_error(), "cpu, vulkan, cuda") != NULL, "message does not list the backends: %s", qmoe_last_error());
  const char *gpus[2] = {"vulkan", "cuda"};
  for (int i = 0; i < 2; i++) {
    int rc = qmoe_backend_open(gpus[i], &be);
    if (rc == 0) {
      be->close(be);
      continue;
    }
    char path[64];
    snprintf(path, sizeof path, "runtime/backend_%s.c", gpus[i]);
    FILE *f = fopen(path, "r");
    if (f) {
      fclose(f);
      CHECK(!strstr(qmoe_last_error(), "not built"), "%s exists but libqmoe says: %s", path, qmoe_last_error());
    }
  }
}

int main(void) {
  t_seed();
  if (QMOE_STAGE_TABLE_COUNT == 0) {
    printf("not ok stage_contracts: generated/c/stage_table.c holds no stages (contracts/stages/ is empty)\n");
    return 1;
  }
  static char names[QMOE_STAGE_COUNT * 40][64];
  int nn = 0;
  for (int s = 0; s < QMOE_STAGE_COUNT; s++) {
    cur_stage = qmoe_stage_info_get((qmoe_stage)s);
    if (!cur_stage) continue;
    int nq = cur_stage->varies_by_qtype ? cur_stage->n_qtypes : 1;
    for (int qi = 0; qi < nq; qi++) {
      cur_qtype = cur_stage->varies_by_qtype ? cur_stage->qtypes[qi] : -1;
      snprintf(names[nn], sizeof names[nn], "precisions/%s/%s", cur_stage->name,
               cur_qtype >= 0 ? qmoe_qtype_name(cur_qtype) : "-");
      RUN_NAMED(names[nn], test_precisions);
      nn++;
    }
  }
  RUN(test_matvec_vs_codec_dot);
  RUN(test_moe_vs_codec_dot);
  RUN(test_router_known);
  RUN(test_rmsnorm_known);
  RUN(test_rope_known);
  RUN(test_attention_known);
  RUN(test_copy_add_argmax);
  RUN(test_errors);
  RUN(test_backend_cpu);
  RUN(test_dispatcher);
  return T_DONE();
}
