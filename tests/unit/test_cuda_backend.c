/* test_cuda_backend.c: the "cuda" backend at the real Qwen3-30B-A3B shapes (multi-block grids, 630-byte Q6_K rows,
 * 128 experts, long KV caches) against the CPU reference, odd buffer offsets with guard bytes, error paths, the
 * CUBIN disk cache, and bandwidth figures. Needs a GPU: prints "skip ...: no CUDA device" here (set
 * QMOE_TEST_REQUIRE_BACKEND=1 to make that a failure, as tests/gpu.sh does).
 * Thresholds are the parity test's (FALSIFY-STAGE-PARITY/MAXREL): f32 variants against the reference's f32
 * path, f64 variants against its long-double oracle. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "../harness.h"
#include "backend.h"
#include "cuda_internal.h"
#include "qmoe.h"
#include "ref_internal.h"
#include "stage_table.h"
#include "qtypes.h"

static qmoe_backend *be;
static char open_error[1024];
static char cache_dir[] = "/tmp/qmoe-cuda-test-cache-XXXXXX";

static int need_backend(void) {
  if (be) return 1;
  const char *req = getenv("QMOE_TEST_REQUIRE_BACKEND");
  if (req && *req) CHECK(0, "no CUDA device: %s (QMOE_TEST_REQUIRE_BACKEND is set)", open_error);
  else t_skip("no CUDA device: %s", open_error);
  return 0;
}

/* ---- calls with host copies --------------------------------------------------------------------------- */

enum { GUARD = 64 }; /* bytes before and after each buffer's region, poisoned and checked untouched */

typedef struct {
  const qmoe_stage_info *si;
  qmoe_stage_call call;
  int nbuf;
  size_t need[QMOE_STAGE_MAX_BUFS];
  size_t off[QMOE_STAGE_MAX_BUFS];            /* where the region starts in the device buffer */
  unsigned char *host[QMOE_STAGE_MAX_BUFS];   /* the region's contents (inputs; outputs poisoned) */
} tcall;

static void tcall_free(tcall *t) {
  for (int i = 0; i < QMOE_STAGE_MAX_BUFS; i++) free(t->host[i]);
  memset(t, 0, sizeof *t);
}

static int pidx(const qmoe_stage_info *si, const char *name) {
  for (int i = 0; i < si->n_params; i++)
    if (!strcmp(si->params[i], name)) return i;
  return -1;
}
static int bidx(const qmoe_stage_info *si, const char *name) {
  for (int i = 0; i < si->n_inputs + si->n_outputs; i++)
    if (!strcmp(si->buf_names[i], name)) return i;
  return -1;
}

static void fill_normal(float *x, size_t n, double sd) {
  for (size_t i = 0; i < n; i++) x[i] = (float)(sd * t_rand_normal());
}

/* Quantized rows: a bank of 64 rows quantized from N(0, 1/cols) by the reference quantizer, copied to every
 * row in a scattered order (so each expert and row differs from its neighbours) — fast at 128 experts. */
static int fill_weights(tcall *t, int buf, int64_t cols) {
  const qmoe_qtype_info *q = qmoe_qtype_by_id(t->call.qtype);
  if (!q) return -1;
  int64_t rb = qmoe_qtype_row_bytes(q, cols);
  if (rb <= 0 || t->need[buf] % (size_t)rb) return -1;
  enum { BANK = 64 };
  unsigned char *bank = malloc((size_t)rb * BANK);
  float *src = malloc((size_t)cols * sizeof(float));
  for (int r = 0; r < BANK; r++) {
    fill_normal(src, (size_t)cols, 1.0 / sqrt((double)cols));
    if (qmoe_quantize_row(t->call.qtype, src, bank + (size_t)r * (size_t)rb, cols)) {
      free(bank);
      free(src);
      return -1;
    }
  }
  size_t rows = t->need[buf] / (size_t)rb;
  uint64_t salt = t_rand_u64() | 1;
  for (size_t r = 0; r < rows; r++)
    memcpy(t->host[buf] + r * (size_t)rb, bank + ((r * salt) >> 7) % BANK * (size_t)rb, (size_t)rb);
  free(bank);
  free(src);
  return 0;
}

/* Prepares STAGE with params P (in contract order) and F; offsets: each buffer's region starts OFFS[i] bytes
 * into its device buffer (0 when OFFS is NULL). Inputs are random, outputs NaN. */
static int tcall_make(tcall *t, const char *stage, int qtype, qmoe_acc acc, const int64_t *p, int np, const double *f,
                      const size_t *offs) {
  memset(t, 0, sizeof *t);
  t->si = qmoe_stage_by_name(stage);
  if (!t->si) return -1;
  t->call.stage = t->si->id;
  t->call.qtype = qtype;
  t->call.acc = acc;
  for (int i = 0; i < np; i++) t->call.p[i] = p[i];
  for (int i = 0; i < t->si->n_fparams; i++) t->call.f[i] = f ? f[i] : 0;
  t->nbuf = t->si->n_inputs + t->si->n_outputs;
  if (qmoe_stage_check(&t->call, t->need)) return -1;
  for (int i = 0; i < t->nbuf; i++) {
    t->off[i] = offs ? offs[i] : 0;
    t->host[i] = calloc(1, t->need[i] + 4);
    const qmoe_stage_buf *b = &t->si->bufs[i];
    size_t n4 = t->need[i] / 4;
    if (b->dtype == QMOE_DTYPE_QTYPE) {
      const qmoe_stage_dim *last = &b->dims[b->n_dims - 1];
      if (fill_weights(t, i, last->param >= 0 ? t->call.p[last->param] : last->value)) return -1;
    } else if (b->is_output) {
      for (size_t j = 0; j < n4; j++) ((uint32_t *)t->host[i])[j] = 0x7fc00000u;
    } else if (b->dtype == QMOE_DTYPE_F32) {
      fill_normal((float *)t->host[i], n4, 1.0);
    }
  }
  int ids = bidx(t->si, "ids");
  if (ids >= 0 && !t->si->bufs[ids].is_output) { /* K distinct experts */
    int64_t K = t->call.p[pidx(t->si, "K")], E = t->call.p[pidx(t->si, "E")];
    int32_t *id = (int32_t *)t->host[ids];
    for (int64_t k = 0; k < K; k++) {
      int again;
      do {
        id[k] = (int32_t)(t_rand_u64() % (uint64_t)E);
        again = 0;
        for (int64_t j = 0; j < k; j++) again |= id[j] == id[k];
      } while (again);
    }
  }
  int w = bidx(t->si, "w");
  if (w >= 0 && !t->si->bufs[w].is_output) { /* router weights: positive, summing to 1 */
    int64_t K = t->call.p[pidx(t->si, "K")];
    float *wv = (float *)t->host[w];
    double s = 0;
    for (int64_t k = 0; k < K; k++) s += wv[k] = (float)(0.05 + t_rand_unit());
    for (int64_t k = 0; k < K; k++) wv[k] = (float)(wv[k] / s);
  }
  int wr = bidx(t->si, "Wr");
  if (wr >= 0) fill_normal((float *)t->host[wr], t->need[wr] / 4, 1.0 / sqrt((double)t->call.p[pidx(t->si, "H")]));
  return 0;
}

/* Runs on the device (buffers with guards around each region) and leaves outputs in OUT; checks the guards. */
static int run_cuda(tcall *t, unsigned char *out[QMOE_STAGE_MAX_BUFS], char *why, size_t n) {
  qmoe_buffer *b[QMOE_STAGE_MAX_BUFS] = {0};
  qmoe_stage_call c = t->call;
  int rc = 0;
  unsigned char *guard = malloc(GUARD);
  memset(guard, 0xA5, GUARD);
  for (int i = 0; i < t->nbuf && !rc; i++) {
    size_t total = t->off[i] + t->need[i] + GUARD;
    if ((rc = be->alloc(be, total, &b[i]))) { snprintf(why, n, "alloc: %s", qmoe_last_error()); break; }
    unsigned char *init = malloc(total);
    memset(init, 0xA5, total);
    memcpy(init + t->off[i], t->host[i], t->need[i]);
    if ((rc = be->upload(be, b[i], 0, init, total))) snprintf(why, n, "upload: %s", qmoe_last_error());
    free(init);
    c.buf[i] = b[i];
    c.off[i] = t->off[i];
  }
  if (!rc && (rc = be->run(be, &c))) snprintf(why, n, "run: %s", qmoe_last_error());
  if (!rc && (rc = be->sync(be))) snprintf(why, n, "sync: %s", qmoe_last_error());
  for (int i = 0; i < t->nbuf; i++) {
    out[i] = NULL;
    if (rc || !t->si->bufs[i].is_output) continue;
    size_t total = t->off[i] + t->need[i] + GUARD;
    unsigned char *all = malloc(total);
    if ((rc = be->download(be, b[i], 0, all, total))) {
      snprintf(why, n, "download: %s", qmoe_last_error());
      free(all);
      continue;
    }
    for (size_t j = 0; j < t->off[i]; j++)
      if (all[j] != 0xA5) { rc = -100; snprintf(why, n, "%s: byte %zu before the region was written", t->si->buf_names[i], j); break; }
    if (memcmp(all + t->off[i] + t->need[i], guard, GUARD)) {
      rc = -100;
      snprintf(why, n, "%s: bytes after the region were written", t->si->buf_names[i]);
    }
    out[i] = malloc(t->need[i] + 4);
    memcpy(out[i], all + t->off[i], t->need[i]);
    free(all);
  }
  for (int i = 0; i < t->nbuf; i++) if (b[i]) be->free_buf(be, b[i]);
  free(guard);
  return rc;
}

static int run_ref(tcall *t, unsigned char *out[QMOE_STAGE_MAX_BUFS], char *why, size_t n) {
  void *ptr[QMOE_STAGE_MAX_BUFS] = {0};
  for (int i = 0; i < t->nbuf; i++) {
    out[i] = malloc(t->need[i] + 4);
    memcpy(out[i], t->host[i], t->need[i]);
    ptr[i] = out[i];
  }
  int rc = qmoe_ref_run(&t->call, t->call.acc == QMOE_ACC_F64 ? QMOE_REF_LDBL : QMOE_REF_F32, ptr, t->need);
  if (rc) snprintf(why, n, "reference: %s", qmoe_last_error());
  return rc;
}

static void free_outs(unsigned char *o[QMOE_STAGE_MAX_BUFS]) {
  for (int i = 0; i < QMOE_STAGE_MAX_BUFS; i++) { free(o[i]); o[i] = NULL; }
}

static char case_label[256];

/* Compares every output: i32 exactly, f32 by NMSE and max|a−b|/max|b| against the accumulator's thresholds. */
static void compare(tcall *t, unsigned char *got[], unsigned char *want[]) {
  int f64 = t->call.acc == QMOE_ACC_F64 && t->si->varies_by_acc;
  double nmse_max = f64 ? 1e-13 : 1e-8, rel_max = f64 ? 1e-7 : 1e-5, worst_n = 0, worst_r = 0;
  for (int i = 0; i < t->nbuf; i++) {
    const qmoe_stage_buf *b = &t->si->bufs[i];
    if (!b->is_output) continue;
    size_t n = t->need[i] / 4;
    if (b->dtype == QMOE_DTYPE_I32) {
      for (size_t j = 0; j < n; j++)
        if (((int32_t *)got[i])[j] != ((int32_t *)want[i])[j]) {
          CHECK(0, "%s[%zu] = %d, reference %d", b->name, j, ((int32_t *)got[i])[j], ((int32_t *)want[i])[j]);
          return;
        }
      continue;
    }
    const float *a = (const float *)got[i], *r = (const float *)want[i];
    double se = 0, sr = 0, md = 0, mr = 0;
    for (size_t j = 0; j < n; j++) {
      if (!isfinite(a[j])) { CHECK(0, "%s[%zu] = %g (reference %g)", b->name, j, a[j], r[j]); return; }
      double d = (double)a[j] - r[j];
      se += d * d;
      sr += (double)r[j] * r[j];
      if (fabs(d) > md) md = fabs(d);
      if (fabs(r[j]) > mr) mr = fabs(r[j]);
    }
    double nm = sr > 0 ? se / sr : se, rel = mr > 0 ? md / mr : md;
    CHECK(nm <= nmse_max, "%s: nmse %.3g > %.3g", b->name, nm, nmse_max);
    CHECK(rel <= rel_max, "%s: max_abs_rel %.3g > %.3g", b->name, rel, rel_max);
    if (nm > worst_n) worst_n = nm;
    if (rel > worst_r) worst_r = rel;
  }
  size_t len = strlen(case_label);
  snprintf(case_label + len, sizeof case_label - len, " nmse=%.1e maxrel=%.1e", worst_n, worst_r);
}

/* ---- cases at Qwen3-30B-A3B shapes -------------------------------------------------------------------- */

typedef struct {
  const char *stage, *qtype; /* qtype name or NULL */
  int64_t p[8];
  int np;
  double f[4];
  size_t offs[8];            /* byte offsets of each buffer's region */
  const char *what;
} shape_case;

static const shape_case shapes[] = {
  { "matvec", "q4_k", { 4096, 2048 }, 2, {0}, {0}, "attn_q" },
  { "matvec", "q6_k", { 512, 2048 }, 2, {0}, {0}, "attn_v (Q6_K layers)" },
  { "matvec", "q4_k", { 2048, 4096 }, 2, {0}, {0}, "attn_output" },
  { "matvec", "q6_k", { 16384, 2048 }, 2, {0}, {0}, "lm_head slice" },
  { "matvec", "q6_k", { 333, 768 }, 2, {0}, { 3, 20, 12 }, "630-byte rows, odd W offset, odd row count" },
  { "matvec", "q8_0", { 1000, 2080 }, 2, {0}, { 2, 8, 4 }, "Q8_0, row not a whole chunk" },
  { "matvec", "f16", { 77, 300 }, 2, {0}, { 6, 4, 0 }, "F16, rows ending mid-step" },
  { "matvec", "q4_0", { 5, 32 }, 2, {0}, { 1, 0, 0 }, "one block per row" },
  { "moe_gate_up_swiglu", "q4_k", { 2048, 768, 128, 8 }, 4, {0}, {0}, "ffn_gate/up_exps" },
  { "moe_down", "q6_k", { 2048, 768, 128, 8 }, 4, {0}, {0}, "ffn_down_exps (Q6_K, 630-byte rows)" },
  { "moe_down", "q4_k", { 2048, 768, 128, 8 }, 4, {0}, { 18, 0, 0, 0, 0 }, "ffn_down_exps (Q4_K), odd offset" },
  { "router_topk", NULL, { 2048, 128, 8 }, 3, {0}, {0}, "ffn_gate_inp" },
  { "rmsnorm", NULL, { 2048 }, 1, { 1e-6 }, {0}, "attn_norm" },
  { "qk_norm", NULL, { 32, 128 }, 2, { 1e-6 }, {0}, "attn_q_norm" },
  { "rope_neox", NULL, { 32, 128, 30000 }, 3, { 1e7 }, {0}, "rope at pos 30000, theta 1e7" },
  { "qk_norm_rope", NULL, { 32, 128, 30000 }, 3, { 1e-6, 1e7 }, { 4, 0, 4 }, "q norm + rope at pos 30000, offsets" },
  { "kv_store", NULL, { 4, 128, 777, 1024 }, 4, {0}, {0}, "kv row 777" },
  { "attention", NULL, { 32, 4, 128, 1000, 1024 }, 5, {0}, {0}, "GQA 8:1 over 1000 positions" },
  { "attention", NULL, { 32, 4, 128, 1, 8 }, 5, {0}, {0}, "first token" },
  { "attention", NULL, { 16, 2, 64, 4000, 4096 }, 5, {0}, {0}, "4000 positions: 63 splits merged" },
  { "attention", NULL, { 4, 4, 256, 130, 130 }, 5, {0}, { 0, 0, 0, 8 }, "D = 256, 3 splits, offset output" },
  { "add", NULL, { 2048 }, 1, {0}, {0}, "residual" },
  { "argmax", NULL, { 151936 }, 1, {0}, {0}, "vocab" },
};

static const shape_case *cur_shape;
static qmoe_acc cur_acc;

static void test_shape(void) {
  if (!need_backend()) return;
  const shape_case *s = cur_shape;
  int qt = -1;
  if (s->qtype) {
    const qmoe_qtype_info *q = qmoe_qtype_by_name(s->qtype);
    REQUIRE(q, "no qtype %s", s->qtype);
    qt = q->ggml_type;
  }
  tcall t;
  REQUIRE(tcall_make(&t, s->stage, qt, cur_acc, s->p, s->np, s->f, s->offs) == 0, "cannot prepare %s: %s", s->stage,
          qmoe_last_error());
  if (!strcmp(s->stage, "argmax")) { /* a tie across blocks: the max copied to an earlier index */
    float *x = (float *)t.host[0];
    int64_t n = t.call.p[0], best = 0;
    for (int64_t i = 1; i < n; i++) if (x[i] > x[best]) best = i;
    x[best / 3] = x[best];
  }
  if (!strcmp(s->stage, "kv_store")) { /* earlier rows of the cache must survive: outputs start as random data */
    for (int c = 2; c < 4; c++) fill_normal((float *)t.host[c], t.need[c] / 4, 1.0);
  }
  unsigned char *got[QMOE_STAGE_MAX_BUFS] = {0}, *again[QMOE_STAGE_MAX_BUFS] = {0}, *want[QMOE_STAGE_MAX_BUFS] = {0};
  char why[512] = "";
  if (run_ref(&t, want, why, sizeof why) || run_cuda(&t, got, why, sizeof why) || run_cuda(&t, again, why, sizeof why)) {
    CHECK(0, "%s", why);
  } else {
    compare(&t, got, want);
    for (int i = 0; i < t.nbuf; i++)
      if (t.si->bufs[i].is_output && memcmp(got[i], again[i], t.need[i]))
        CHECK(0, "two runs differ in %s (the kernels must be deterministic)", t.si->buf_names[i]);
  }
  free_outs(got);
  free_outs(again);
  free_outs(want);
  tcall_free(&t);
}

/* ---- errors ------------------------------------------------------------------------------------------ */

static int run_expect(tcall *t, qmoe_stage_call *c, int want_rc, const char *want_text) {
  qmoe_buffer *b[QMOE_STAGE_MAX_BUFS] = {0};
  for (int i = 0; i < t->nbuf; i++) {
    if (be->alloc(be, t->need[i] + 64, &b[i])) return -1;
    if (!c->buf[i]) c->buf[i] = b[i];
  }
  qmoe_set_error("(none)");
  int rc = be->run(be, c);
  if (rc == 0) rc = be->sync(be);
  CHECK(rc == want_rc, "%s: rc %d, want %d (%s)", t->si->name, rc, want_rc, qmoe_last_error());
  CHECK(strstr(qmoe_last_error(), want_text) != NULL, "%s: message lacks '%s': %s", t->si->name, want_text,
        qmoe_last_error());
  for (int i = 0; i < t->nbuf; i++) be->free_buf(be, b[i]);
  return 0;
}

static void test_errors(void) {
  if (!need_backend()) return;
  tcall t;
  int64_t p[2] = { 64, 512 };
  REQUIRE(tcall_make(&t, "matvec", qmoe_qtype_by_name("q4_k")->ggml_type, QMOE_ACC_F32, p, 2, NULL, NULL) == 0, "prepare");
  qmoe_stage_call c = t.call;
  c.qtype = qmoe_ggml_other_types[0].id; /* a GGUF type no contract lists (generated/c/qtypes.c) */
  c.tensor = "blk.3.attn_q.weight";
  run_expect(&t, &c, QMOE_EUNSUPPORTED, "blk.3.attn_q.weight");
  c = t.call;
  c.tensor = "blk.3.attn_q.weight";
  c.off[0] = 65; /* the buffer holds need + 64 bytes: from offset 65 one byte is missing */
  run_expect(&t, &c, QMOE_EINVAL, "the call needs");
  c = t.call;
  c.off[1] = 2; /* x not at a multiple of 4 */
  run_expect(&t, &c, QMOE_EINVAL, "not a multiple of 4");
  c = t.call;
  c.acc = (qmoe_acc)7;
  run_expect(&t, &c, QMOE_EINVAL, "unknown accumulator");
  tcall_free(&t);
  int64_t pd[4] = { 64, 256, 128, 65 }; /* moe_down with K = 65 > 64 */
  if (tcall_make(&t, "moe_down", qmoe_qtype_by_name("q4_k")->ggml_type, QMOE_ACC_F32, pd, 4, NULL, NULL) == 0) {
    c = t.call;
    run_expect(&t, &c, QMOE_EUNSUPPORTED, "K = 65 exceeds");
  } else {
    CHECK(0, "prepare moe_down: %s", qmoe_last_error());
  }
  tcall_free(&t);
  int64_t pa[5] = { 2, 1, 512, 4, 4 }; /* attention with D = 512 > 256 */
  REQUIRE(tcall_make(&t, "attention", -1, QMOE_ACC_F32, pa, 5, NULL, NULL) == 0, "prepare attention: %s", qmoe_last_error());
  c = t.call;
  run_expect(&t, &c, QMOE_EUNSUPPORTED, "D = 512 exceeds");
  tcall_free(&t);
}

/* ---- the CUBIN cache ---------------------------------------------------------------------------------- */

static int count_cubins(void) {
  char cmd[256];
  snprintf(cmd, sizeof cmd, "ls '%s' 2>/dev/null | grep -c '\\.cubin$'", cache_dir);
  FILE *f = popen(cmd, "r");
  int n = 0;
  if (f) {
    if (fscanf(f, "%d", &n) != 1) n = 0;
    pclose(f);
  }
  return n;
}

static void one_matvec(qmoe_backend *b2, const char *label) {
  qmoe_backend *keep = be;
  be = b2;
  tcall t;
  int64_t p[2] = { 40, 512 };
  if (tcall_make(&t, "matvec", qmoe_qtype_by_name("q6_k")->ggml_type, QMOE_ACC_F64, p, 2, NULL, NULL)) {
    CHECK(0, "%s: prepare", label);
  } else {
    unsigned char *got[QMOE_STAGE_MAX_BUFS] = {0}, *want[QMOE_STAGE_MAX_BUFS] = {0};
    char why[512];
    if (run_ref(&t, want, why, sizeof why) || run_cuda(&t, got, why, sizeof why)) CHECK(0, "%s: %s", label, why);
    else compare(&t, got, want);
    free_outs(got);
    free_outs(want);
  }
  tcall_free(&t);
  be = keep;
}

static void test_cache(void) {
  if (!need_backend()) return;
  int before = count_cubins();
  CHECK(before > 0, "no .cubin in QMOE_CUDA_CACHE=%s after the shape cases", cache_dir);
  /* A fresh backend finds the modules in the cache (no new files), and gives the same results. */
  qmoe_backend *b2 = NULL;
  REQUIRE(qmoe_backend_open("cuda", &b2) == 0, "second open: %s", qmoe_last_error());
  one_matvec(b2, "from cache");
  CHECK(count_cubins() == before, "a cached module was compiled again (%d -> %d files)", before, count_cubins());
  b2->close(b2);
  /* Damaged files are detected, removed and rebuilt. */
  char cmd[512];
  snprintf(cmd, sizeof cmd, "for f in '%s'/*.cubin; do printf 'garbage' | dd of=\"$f\" bs=1 seek=40 conv=notrunc 2>/dev/null; done", cache_dir);
  CHECK(system(cmd) == 0, "could not damage the cache");
  REQUIRE(qmoe_backend_open("cuda", &b2) == 0, "third open: %s", qmoe_last_error());
  one_matvec(b2, "after damage");
  b2->close(b2);
  /* QMOE_CUDA_CACHE=0: nothing is written. */
  snprintf(cmd, sizeof cmd, "rm -f '%s'/*.cubin", cache_dir);
  CHECK(system(cmd) == 0, "rm");
  setenv("QMOE_CUDA_CACHE", "0", 1);
  REQUIRE(qmoe_backend_open("cuda", &b2) == 0, "fourth open: %s", qmoe_last_error());
  one_matvec(b2, "no cache");
  b2->close(b2);
  CHECK(count_cubins() == 0, "QMOE_CUDA_CACHE=0 still wrote %d files", count_cubins());
  setenv("QMOE_CUDA_CACHE", cache_dir, 1);
}

/* ---- bandwidth (informational: prints figures, fails only on a broken run) ---------------------------- */

typedef struct { const char *stage, *qtype; int64_t p[4]; int np; const char *what; } bench_case;
static const bench_case benches[] = {
  { "matvec", "q6_k", { 151936, 2048 }, 2, "lm_head" },
  { "matvec", "q4_k", { 4096, 2048 }, 2, "attn_q" },
  { "moe_gate_up_swiglu", "q4_k", { 2048, 768, 128, 8 }, 4, "gate+up, 8 experts" },
  { "moe_down", "q6_k", { 2048, 768, 128, 8 }, 4, "down (Q6_K), 8 experts" },
  { "moe_down", "q4_k", { 2048, 768, 128, 8 }, 4, "down (Q4_K), 8 experts" },
};
static const bench_case *cur_bench;

static void test_bench(void) {
  if (!need_backend()) return;
  if (strstr(qmoe_backend_cuda_ctx(be)->name, "emulator")) SKIP("bandwidth needs a real GPU (device: %s)", qmoe_backend_cuda_ctx(be)->name);
  const bench_case *bc = cur_bench;
  const qmoe_qtype_info *q = qmoe_qtype_by_name(bc->qtype);
  tcall t;
  REQUIRE(tcall_make(&t, bc->stage, q->ggml_type, cur_acc, bc->p, bc->np, NULL, NULL) == 0, "prepare: %s", qmoe_last_error());
  qmoe_buffer *b[QMOE_STAGE_MAX_BUFS] = {0};
  qmoe_stage_call c = t.call;
  for (int i = 0; i < t.nbuf; i++) {
    REQUIRE(be->alloc(be, t.need[i], &b[i]) == 0 && be->upload(be, b[i], 0, t.host[i], t.need[i]) == 0, "%s",
            qmoe_last_error());
    c.buf[i] = b[i];
  }
  /* Bytes of weights the call reads: all rows of a matvec; K experts' rows for MoE. */
  double bytes = (double)t.need[0];
  if (strcmp(bc->stage, "matvec")) bytes = bytes * (double)bc->p[3] / (double)bc->p[2] * (strcmp(bc->stage, "moe_down") ? 2 : 1);
  qmoe_cuda_ctx *cx = qmoe_backend_cuda_ctx(be);
  CUevent e0 = NULL, e1 = NULL;
  REQUIRE(qmoe_cuda_event_create(cx, &e0) == 0 && qmoe_cuda_event_create(cx, &e1) == 0, "%s", qmoe_last_error());
  int rc = 0;
  for (int i = 0; i < 3 && !rc; i++) rc = be->run(be, &c); /* warm-up (and module load) */
  const int iters = 50;
  if (!rc) rc = qmoe_cuda_event_record(cx, e0);
  for (int i = 0; i < iters && !rc; i++) rc = be->run(be, &c);
  if (!rc) rc = qmoe_cuda_event_record(cx, e1);
  float ms = 0;
  if (!rc) rc = qmoe_cuda_event_elapsed_ms(cx, e0, e1, &ms);
  CHECK(rc == 0, "%s", qmoe_last_error());
  if (!rc) {
    double us = ms * 1000.0 / iters;
    size_t len = strlen(case_label);
    snprintf(case_label + len, sizeof case_label - len, " %.1f us %.0f GB/s (%.1f MB of weights)", us,
             bytes / (us * 1e-6) / 1e9, bytes / 1e6);
  }
  qmoe_cuda_event_destroy(cx, e0);
  qmoe_cuda_event_destroy(cx, e1);
  for (int i = 0; i < t.nbuf; i++) be->free_buf(be, b[i]);
  tcall_free(&t);
}

/* Runs a case under a label it may extend (the harness prints the name it was given when the case ends). */
static void run_labeled(void (*fn)(void)) { t_run(case_label, fn); }

int main(void) {
  t_seed();
  if (mkdtemp(cache_dir)) setenv("QMOE_CUDA_CACHE", cache_dir, 1);
  if (qmoe_backend_open("cuda", &be) != 0) {
    be = NULL;
    snprintf(open_error, sizeof open_error, "%s", qmoe_last_error());
  }
  for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
    const qmoe_stage_info *si = qmoe_stage_by_name(shapes[i].stage);
    int na = si && si->varies_by_acc ? 2 : 1;
    for (int a = 0; a < na; a++) {
      cur_shape = &shapes[i];
      cur_acc = (qmoe_acc)a;
      snprintf(case_label, sizeof case_label, "shape/%s/%s/%s (%s)", shapes[i].stage, shapes[i].qtype ? shapes[i].qtype : "-",
               na > 1 ? (a ? "f64" : "f32") : "-", shapes[i].what);
      run_labeled(test_shape);
    }
  }
  snprintf(case_label, sizeof case_label, "errors");
  run_labeled(test_errors);
  snprintf(case_label, sizeof case_label, "cubin_cache");
  run_labeled(test_cache);
  for (size_t i = 0; i < sizeof benches / sizeof benches[0]; i++) {
    for (int a = 0; a < 2; a++) {
      cur_bench = &benches[i];
      cur_acc = (qmoe_acc)a;
      snprintf(case_label, sizeof case_label, "bench/%s/%s/%s (%s)", benches[i].stage, benches[i].qtype, a ? "f64" : "f32",
               benches[i].what);
      run_labeled(test_bench);
    }
  }
  if (be) be->close(be);
  char cmd[256];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", cache_dir);
  if (system(cmd) != 0) printf("# could not remove %s\n", cache_dir);
  return T_DONE();
}
