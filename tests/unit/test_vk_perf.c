/* test_vk_perf.c: timings of the Vulkan kernels at Qwen3-30B-A3B shapes (docs/vulkan.md): the mat-vecs, the
 * fused MoE stages, and one whole decoder layer of stage calls recorded per sync; prints µs per call and the
 * effective bandwidth. Each case also checks its result against the CPU (tiled rows, so the check is cheap).
 * Runs on discrete GPUs (or anywhere with QMOE_VK_PERF=1); elsewhere it skips. QMOE_VK_PERF_MIN_GBS=N makes
 * a mat-vec below N GB/s a failure. Validation is off unless QMOE_VK_VALIDATION says otherwise. */
#include <stdint.h>
#include <stdlib.h>
#include <time.h>
#include "../harness.h"
#include "backend.h"
#include "qmoe.h"
#include "stage_table.h"
#include "vk_internal.h"

enum { Q4_K = 12, Q6_K = 14, TILE_ROWS = 64 };
/* Qwen3-30B-A3B */
enum { HID = 2048, NH = 32, NKV = 4, HD = 128, NE = 128, NK = 8, FF = 768, VOCAB = 151936 };

static qmoe_backend *be;
static int scale_down; /* lavapipe with QMOE_VK_PERF=1: smaller shapes */

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int setup(void) {
  if (be) return 1;
  setenv("QMOE_VK_VALIDATION", "0", 0);
  int rc = qmoe_backend_vulkan_open(&be);
  if (rc == QMOE_ENODEV) {
    const char *req = getenv("QMOE_TEST_REQUIRE_BACKEND");
    if (req && *req) t_fail(__FILE__, __LINE__, "no Vulkan device: %s (QMOE_TEST_REQUIRE_BACKEND is set)", qmoe_last_error());
    else t_skip("no Vulkan device: %s", qmoe_last_error());
    return 0;
  }
  if (rc) {
    t_fail(__FILE__, __LINE__, "open: %s", qmoe_last_error());
    return 0;
  }
  return 1;
}

/* Skips unless the device is a discrete GPU or QMOE_VK_PERF=1 (then lavapipe runs reduced shapes). */
static int perf_device(void) {
  static int discrete = -1;
  if (!setup()) return 0;
  if (discrete < 0) { /* the device the backend opened: the same selection rules and QMOE_VK_DEVICE */
    qmoe_vk *vk = NULL;
    if (qmoe_vk_open(&vk)) {
      t_fail(__FILE__, __LINE__, "%s", qmoe_last_error());
      return 0;
    }
    discrete = qmoe_vk_device_type(vk) == VK_PHYSICAL_DEVICE_TYPE_DISCRETE_GPU;
    printf("# device: %s\n", qmoe_vk_device_name(vk));
    qmoe_vk_close(vk);
  }
  const char *force = getenv("QMOE_VK_PERF");
  if (!discrete && !(force && strcmp(force, "1") == 0)) {
    t_skip("timings are taken on a discrete GPU (QMOE_VK_PERF=1 runs reduced shapes here)");
    return 0;
  }
  scale_down = !discrete;
  return 1;
}

/* A rows×cols matrix of qtype QT made of TILE_ROWS quantized random rows repeated; *tile keeps them. */
static qmoe_buffer *tiled_matrix(int qt, int64_t rows, int64_t cols, unsigned char **tile, size_t *row_bytes) {
  const qmoe_qtype_info *q = qmoe_qtype_by_id(qt);
  size_t rb = (size_t)qmoe_qtype_row_bytes(q, cols);
  unsigned char *t = malloc(rb * TILE_ROWS);
  float *row = malloc((size_t)cols * sizeof *row);
  for (int r = 0; r < TILE_ROWS; r++) {
    for (int64_t i = 0; i < cols; i++) row[i] = (float)(t_rand_normal() * 0.05);
    if (qmoe_quantize_row(qt, row, t + (size_t)r * rb, cols)) {
      free(row);
      free(t);
      return NULL;
    }
  }
  free(row);
  qmoe_buffer *b = NULL;
  if (be->alloc(be, rb * (size_t)rows, &b)) {
    free(t);
    return NULL;
  }
  size_t chunk_rows = 4096;
  unsigned char *chunk = malloc(rb * chunk_rows);
  for (size_t r = 0; r < chunk_rows; r++) memcpy(chunk + r * rb, t + (r % TILE_ROWS) * rb, rb);
  for (int64_t r0 = 0; r0 < rows; r0 += (int64_t)chunk_rows) {
    size_t n = (size_t)(rows - r0 < (int64_t)chunk_rows ? rows - r0 : (int64_t)chunk_rows);
    if (be->upload(be, b, (size_t)r0 * rb, chunk, n * rb)) { /* r0 is a multiple of TILE_ROWS */
      free(chunk);
      free(t);
      be->free_buf(be, b);
      return NULL;
    }
  }
  free(chunk);
  *tile = t;
  *row_bytes = rb;
  return b;
}

static qmoe_buffer *f32_buf(size_t n, float **host) {
  float *h = malloc(n * sizeof *h);
  for (size_t i = 0; i < n; i++) h[i] = (float)t_rand_normal();
  qmoe_buffer *b = NULL;
  if (be->alloc(be, n * sizeof *h, &b) || be->upload(be, b, 0, h, n * sizeof *h)) {
    free(h);
    return NULL;
  }
  if (host) *host = h;
  else free(h);
  return b;
}

/* Runs C ITERS times per sync, REPS syncs; returns seconds per call (best of REPS). */
static double time_calls(const qmoe_stage_call *c, int iters, int reps) {
  double best = 1e30;
  if (be->run(be, c) || be->sync(be)) return -1; /* warm-up: pipeline creation */
  for (int r = 0; r < reps; r++) {
    double t0 = now_s();
    for (int i = 0; i < iters; i++)
      if (be->run(be, c)) return -1;
    if (be->sync(be)) return -1;
    double t = (now_s() - t0) / iters;
    if (t < best) best = t;
  }
  return best;
}

static void report(const char *what, double s, double bytes) {
  printf("# perf %-44s %9.2f us/call %8.1f GB/s\n", what, s * 1e6, bytes / s / 1e9);
  const char *min = getenv("QMOE_VK_PERF_MIN_GBS");
  if (min && bytes / s / 1e9 < atof(min)) t_fail(__FILE__, __LINE__, "%s: %.1f GB/s < QMOE_VK_PERF_MIN_GBS=%s", what, bytes / s / 1e9, min);
}

static void matvec_case(int qt, int64_t rows, int64_t cols, int iters, const char *name) {
  if (!perf_device()) return;
  if (scale_down && rows > 4096) rows = 4096;
  unsigned char *tile = NULL;
  size_t rb;
  float *x;
  qmoe_buffer *W = tiled_matrix(qt, rows, cols, &tile, &rb), *xb = f32_buf((size_t)cols, &x), *y = f32_buf((size_t)rows, NULL);
  REQUIRE(W && xb && y, "buffers: %s", qmoe_last_error());
  qmoe_stage_call c;
  memset(&c, 0, sizeof c);
  c.stage = QMOE_STAGE_MATVEC;
  c.qtype = qt;
  c.acc = QMOE_ACC_F32;
  c.p[0] = rows, c.p[1] = cols;
  c.buf[0] = W, c.buf[1] = xb, c.buf[2] = y;
  c.tensor = name;
  double s = time_calls(&c, scale_down ? 2 : iters, 3);
  REQUIRE(s > 0, "%s: %s", name, qmoe_last_error());
  char what[128];
  snprintf(what, sizeof what, "matvec/%s/f32 %lldx%lld (%s)", qmoe_qtype_by_id(qt)->name, (long long)rows,
           (long long)cols, name);
  report(what, s, (double)rows * (double)rb + (double)cols * 4 + (double)rows * 4);
  float *got = malloc((size_t)rows * sizeof *got);
  REQUIRE(be->download(be, y, 0, got, (size_t)rows * 4) == 0, "download");
  const qmoe_qtype_info *q = qmoe_qtype_by_id(qt);
  for (int64_t r = 0; r < rows; r++) {
    double want = q->dot_f64(tile + (size_t)(r % TILE_ROWS) * rb, x, cols);
    if (!(fabs(got[r] - want) <= 1e-4 * (1 + fabs(want)))) {
      t_fail(__FILE__, __LINE__, "%s row %lld: %g, expected %g", what, (long long)r, got[r], want);
      break;
    }
  }
  free(got);
  free(tile);
  free(x);
  be->free_buf(be, W);
  be->free_buf(be, xb);
  be->free_buf(be, y);
}

/* The device's streaming bandwidth as the add kernel sees it (reads 2n, writes n floats): the yardstick for
 * the GB/s of the mat-vecs. */
static void test_add_bandwidth(void) {
  if (!perf_device()) return;
  size_t n = scale_down ? (1u << 20) : (64u << 20);
  float *ha;
  qmoe_buffer *a = f32_buf(n, &ha), *b = f32_buf(n, NULL), *y = f32_buf(n, NULL);
  REQUIRE(a && b && y, "buffers: %s", qmoe_last_error());
  qmoe_stage_call c;
  memset(&c, 0, sizeof c);
  c.stage = QMOE_STAGE_ADD;
  c.qtype = -1;
  c.p[0] = (int64_t)n;
  c.buf[0] = a, c.buf[1] = a, c.buf[2] = y;
  double s = time_calls(&c, scale_down ? 2 : 20, 3);
  REQUIRE(s > 0, "add: %s", qmoe_last_error());
  char what[96];
  snprintf(what, sizeof what, "add %zu floats (y = a + a)", n);
  report(what, s, 12.0 * (double)n);
  float got[4];
  REQUIRE(be->download(be, y, (n - 4) * 4, got, sizeof got) == 0, "download");
  for (int i = 0; i < 4; i++) CHECK(got[i] == ha[n - 4 + i] * 2, "y[%zu] = %g, expected %g", n - 4 + i, got[i], ha[n - 4 + i] * 2);
  free(ha);
  be->free_buf(be, a);
  be->free_buf(be, b);
  be->free_buf(be, y);
}

static void test_matvec_attn_q(void) { matvec_case(Q4_K, NH * HD, HID, 200, "blk.0.attn_q.weight"); }
static void test_matvec_attn_out(void) { matvec_case(Q4_K, HID, NH * HD, 200, "blk.0.attn_output.weight"); }
static void test_matvec_lm_head(void) { matvec_case(Q6_K, VOCAB, HID, 20, "output.weight"); }

/* MoE gate+up+SwiGLU and down for K = 8 of E = 128 experts. */
static void test_moe(void) {
  if (!perf_device()) return;
  int64_t E = scale_down ? 16 : NE;
  unsigned char *tg = NULL, *tu = NULL, *td = NULL;
  size_t rbg, rbu, rbd;
  qmoe_buffer *Wg = tiled_matrix(Q4_K, E * FF, HID, &tg, &rbg), *Wu = tiled_matrix(Q4_K, E * FF, HID, &tu, &rbu),
              *Wd = tiled_matrix(Q6_K, E * HID, FF, &td, &rbd);
  float *x;
  qmoe_buffer *xb = f32_buf(HID, &x), *h = f32_buf((size_t)NK * FF, NULL), *y = f32_buf(HID, NULL), *ids = NULL, *w = NULL;
  int32_t idv[NK];
  float wv[NK];
  for (int k = 0; k < NK; k++) {
    idv[k] = (int32_t)((k * 37 + 5) % E);
    wv[k] = 1.0f / NK;
  }
  REQUIRE(Wg && Wu && Wd && xb && h && y, "buffers: %s", qmoe_last_error());
  REQUIRE(!be->alloc(be, sizeof idv, &ids) && !be->upload(be, ids, 0, idv, sizeof idv) && !be->alloc(be, sizeof wv, &w) &&
              !be->upload(be, w, 0, wv, sizeof wv),
          "ids");
  qmoe_stage_call c;
  memset(&c, 0, sizeof c);
  c.stage = QMOE_STAGE_MOE_GATE_UP_SWIGLU;
  c.qtype = Q4_K;
  c.p[0] = HID, c.p[1] = FF, c.p[2] = E, c.p[3] = NK;
  c.buf[0] = Wg, c.buf[1] = Wu, c.buf[2] = xb, c.buf[3] = ids, c.buf[4] = h;
  double s = time_calls(&c, scale_down ? 2 : 100, 3);
  REQUIRE(s > 0, "gate_up: %s", qmoe_last_error());
  report("moe_gate_up_swiglu/q4_k/f32 K=8 H=2048 F=768", s, 2.0 * NK * FF * (double)rbg);
  qmoe_stage_call d;
  memset(&d, 0, sizeof d);
  d.stage = QMOE_STAGE_MOE_DOWN;
  d.qtype = Q6_K;
  d.p[0] = HID, d.p[1] = FF, d.p[2] = E, d.p[3] = NK;
  d.buf[0] = Wd, d.buf[1] = h, d.buf[2] = ids, d.buf[3] = w, d.buf[4] = y;
  s = time_calls(&d, scale_down ? 2 : 100, 3);
  REQUIRE(s > 0, "down: %s", qmoe_last_error());
  report("moe_down/q6_k/f32 K=8 H=2048 F=768", s, (double)NK * HID * (double)rbd);
  /* check h[k][f] for a few (k, f) against the tiles: the rows of expert e are rows e*F + f of the tiling */
  float hv[NK * FF];
  REQUIRE(be->run(be, &c) == 0 && be->sync(be) == 0 && be->download(be, h, 0, hv, sizeof hv) == 0, "h");
  const qmoe_qtype_info *q4 = qmoe_qtype_by_id(Q4_K);
  for (int k = 0; k < NK; k++) {
    for (int f = 0; f < FF; f += 97) {
      int64_t r = (int64_t)idv[k] * FF + f;
      double g = q4->dot_f64(tg + (size_t)(r % TILE_ROWS) * rbg, x, HID), u = q4->dot_f64(tu + (size_t)(r % TILE_ROWS) * rbu, x, HID);
      double want = g / (1 + exp(-g)) * u;
      CHECK(fabs(hv[k * FF + f] - want) <= 1e-4 * (1 + fabs(want)), "h[%d][%d] = %g, expected %g", k, f, hv[k * FF + f], want);
    }
  }
  free(tg);
  free(tu);
  free(td);
  free(x);
  qmoe_buffer *all[] = {Wg, Wu, Wd, xb, h, y, ids, w};
  for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) be->free_buf(be, all[i]);
}

/* One decoder layer of Qwen3-30B-A3B (Q4_K_M: q4_k attention and gate/up, q6_k down) at position POS, as the
 * stage calls a forward pass records, and lm_head; prints µs per layer and the implied tokens/s. */
static void test_layer(void) {
  if (!perf_device()) return;
  const int64_t E = scale_down ? 16 : NE, ctx = scale_down ? 256 : 4096, pos = ctx - 1;
  unsigned char *t[8] = {0};
  size_t rb[8];
  qmoe_buffer *Wq = tiled_matrix(Q4_K, NH * HD, HID, &t[0], &rb[0]), *Wk = tiled_matrix(Q4_K, NKV * HD, HID, &t[1], &rb[1]),
              *Wv = tiled_matrix(Q6_K, NKV * HD, HID, &t[2], &rb[2]), *Wo = tiled_matrix(Q4_K, HID, NH * HD, &t[3], &rb[3]),
              *Wg = tiled_matrix(Q4_K, E * FF, HID, &t[4], &rb[4]), *Wu = tiled_matrix(Q4_K, E * FF, HID, &t[5], &rb[5]),
              *Wd = tiled_matrix(Q6_K, E * HID, FF, &t[6], &rb[6]);
  qmoe_buffer *hs = f32_buf(HID, NULL), *xn = f32_buf(HID, NULL), *nw = f32_buf(HID, NULL), *q = f32_buf(NH * HD, NULL),
              *k = f32_buf(NKV * HD, NULL), *v = f32_buf(NKV * HD, NULL), *qn = f32_buf(HD, NULL), *kn = f32_buf(HD, NULL),
              *Kc = f32_buf((size_t)(ctx * NKV * HD), NULL), *Vc = f32_buf((size_t)(ctx * NKV * HD), NULL),
              *ao = f32_buf(NH * HD, NULL), *o = f32_buf(HID, NULL), *Wr = f32_buf((size_t)(E * HID), NULL),
              *ids = NULL, *w = NULL, *hh = f32_buf((size_t)NK * FF, NULL), *y = f32_buf(HID, NULL);
  REQUIRE(Wq && Wk && Wv && Wo && Wg && Wu && Wd && hs && xn && nw && q && k && v && qn && kn && Kc && Vc && ao && o && Wr &&
              hh && y && !be->alloc(be, NK * 4, &ids) && !be->alloc(be, NK * 4, &w),
          "buffers: %s", qmoe_last_error());
  qmoe_stage_call calls[20];
  int n = 0;
#define CALL(st, qt, ...)                                                                                       \
  do {                                                                                                         \
    memset(&calls[n], 0, sizeof calls[n]);                                                                     \
    calls[n].stage = st;                                                                                       \
    calls[n].qtype = qt;                                                                                       \
    calls[n].acc = QMOE_ACC_F32;                                                                               \
    qmoe_buffer *bl[] = {__VA_ARGS__};                                                                         \
    for (size_t i_ = 0; i_ < sizeof bl / sizeof bl[0]; i_++) calls[n].buf[i_] = bl[i_];                       \
    n++;                                                                                                       \
  } while (0)
#define P(...)                                                                                                 \
  do {                                                                                                         \
    int64_t pv[] = {__VA_ARGS__};                                                                              \
    for (size_t i_ = 0; i_ < sizeof pv / sizeof pv[0]; i_++) calls[n - 1].p[i_] = pv[i_];                     \
  } while (0)
  CALL(QMOE_STAGE_RMSNORM, -1, hs, nw, xn); P(HID); calls[n - 1].f[0] = 1e-6;
  CALL(QMOE_STAGE_MATVEC, Q4_K, Wq, xn, q); P(NH * HD, HID);
  CALL(QMOE_STAGE_MATVEC, Q4_K, Wk, xn, k); P(NKV * HD, HID);
  CALL(QMOE_STAGE_MATVEC, Q6_K, Wv, xn, v); P(NKV * HD, HID);
  CALL(QMOE_STAGE_QK_NORM, -1, q, qn, q); P(NH, HD); calls[n - 1].f[0] = 1e-6;
  CALL(QMOE_STAGE_QK_NORM, -1, k, kn, k); P(NKV, HD); calls[n - 1].f[0] = 1e-6;
  CALL(QMOE_STAGE_ROPE_NEOX, -1, q, q); P(NH, HD, pos); calls[n - 1].f[0] = 1e7;
  CALL(QMOE_STAGE_ROPE_NEOX, -1, k, k); P(NKV, HD, pos); calls[n - 1].f[0] = 1e7;
  CALL(QMOE_STAGE_KV_STORE, -1, k, v, Kc, Vc); P(NKV, HD, pos, ctx);
  CALL(QMOE_STAGE_ATTENTION, -1, q, Kc, Vc, ao); P(NH, NKV, HD, pos + 1, ctx);
  CALL(QMOE_STAGE_MATVEC, Q4_K, Wo, ao, o); P(HID, NH * HD);
  CALL(QMOE_STAGE_ADD, -1, hs, o, hs); P(HID);
  CALL(QMOE_STAGE_RMSNORM, -1, hs, nw, xn); P(HID); calls[n - 1].f[0] = 1e-6;
  CALL(QMOE_STAGE_ROUTER_TOPK, -1, Wr, xn, ids, w); P(HID, E, NK);
  CALL(QMOE_STAGE_MOE_GATE_UP_SWIGLU, Q4_K, Wg, Wu, xn, ids, hh); P(HID, FF, E, NK);
  CALL(QMOE_STAGE_MOE_DOWN, Q6_K, Wd, hh, ids, w, y); P(HID, FF, E, NK);
  CALL(QMOE_STAGE_ADD, -1, hs, y, hs); P(HID);
#undef CALL
#undef P
  const int layers = scale_down ? 2 : 48;
  double best = 1e30;
  for (int rep = 0; rep < 4; rep++) { /* the first one creates the pipelines */
    double t0 = now_s();
    for (int l = 0; l < layers; l++)
      for (int i = 0; i < n; i++) REQUIRE(be->run(be, &calls[i]) == 0, "layer call %d: %s", i, qmoe_last_error());
    REQUIRE(be->sync(be) == 0, "sync: %s", qmoe_last_error());
    double dt = (now_s() - t0) / layers;
    if (rep > 0 && dt < best) best = dt;
  }
  double bytes = 0;
  bytes += (double)NH * HD * rb[0] + (double)NKV * HD * (rb[1] + rb[2]) + (double)HID * rb[3];
  bytes += (double)NK * FF * (rb[4] + rb[5]) + (double)NK * HID * rb[6] + (double)E * HID * 4;
  bytes += 2.0 * (double)(pos + 1) * NKV * HD * 4;
  printf("# perf decoder layer (%d stage calls, pos %lld, E %lld)       %9.2f us/layer %8.1f GB/s\n", n,
         (long long)pos, (long long)E, best * 1e6, bytes / best / 1e9);
  printf("# perf 48 layers: %.2f ms/token without lm_head (%.0f tokens/s)\n", 48 * best * 1e3, 1.0 / (48 * best));
  int32_t idv[NK];
  float wv[NK], sum = 0;
  REQUIRE(be->download(be, ids, 0, idv, sizeof idv) == 0 && be->download(be, w, 0, wv, sizeof wv) == 0, "router");
  for (int i = 0; i < NK; i++) {
    CHECK(idv[i] >= 0 && idv[i] < E, "router id %d", idv[i]);
    sum += wv[i];
  }
  CHECK(fabs(sum - 1) < 1e-5, "router weights sum to %g", sum);
  for (int i = 0; i < 8; i++) free(t[i]);
  qmoe_buffer *all[] = {Wq, Wk, Wv, Wo, Wg, Wu, Wd, hs, xn, nw, q, k, v, qn, kn, Kc, Vc, ao, o, Wr, ids, w, hh, y};
  for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) be->free_buf(be, all[i]);
}

int main(void) {
  t_seed();
  RUN(test_add_bandwidth);
  RUN(test_matvec_attn_q);
  RUN(test_matvec_attn_out);
  RUN(test_matvec_lm_head);
  RUN(test_moe);
  RUN(test_layer);
  if (be) be->close(be);
  return T_DONE();
}
