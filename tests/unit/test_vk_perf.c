/* test_vk_perf.c: timings of the Vulkan kernels at Qwen3-30B-A3B shapes (docs/vulkan.md) — the same cases
 * as test_cuda_backend's bench/ cases (lm_head, attn_q, gate+up and down over 8 of 128 experts), plus the
 * add kernel as the device's streaming yardstick and one whole decoder layer of stage calls. Device time
 * from GPU timestamps around ITERS calls recorded per sync; the figures go into the case names
 * ("ok bench/vulkan/matvec/q6_k/f32 (lm_head) 88.1 us 2896 GB/s ..."). Each case checks its result against
 * the CPU (weights are tiled rows, so the check is cheap). Runs on discrete GPUs (QMOE_VK_PERF=1: anywhere,
 * with reduced shapes); elsewhere it skips. QMOE_VK_PERF_MIN_GBS=N makes a case below N GB/s a failure.
 * Validation is off unless QMOE_VK_VALIDATION says otherwise. */
#include <stdint.h>
#include <stdlib.h>
#include "../harness.h"
#include "backend.h"
#include "qmoe.h"
#include "stage_table.h"
#include "vk_internal.h"

enum { Q4_K = 12, Q6_K = 14, TILE_ROWS = 64 };
/* Qwen3-30B-A3B */
enum { HID = 2048, NH = 32, NKV = 4, HD = 128, NE = 128, NK = 8, FF = 768, VOCAB = 151936 };

static qmoe_backend *be;
static qmoe_vk *vk;
static char open_error[1024];
static int scale_down; /* not a discrete GPU, QMOE_VK_PERF=1: smaller shapes */
static char label[256];

/* 1 when the case may run; otherwise it has skipped (or failed: no device and QMOE_TEST_REQUIRE_BACKEND). */
static int perf_device(void) {
  if (!be) {
    const char *req = getenv("QMOE_TEST_REQUIRE_BACKEND");
    if (req && *req) t_fail(__FILE__, __LINE__, "no Vulkan device: %s (QMOE_TEST_REQUIRE_BACKEND is set)", open_error);
    else t_skip("no Vulkan device: %s", open_error);
    return 0;
  }
  const char *force = getenv("QMOE_VK_PERF");
  if (!scale_down) return 1;
  if (force && strcmp(force, "1") == 0) return 1;
  t_skip("timings are taken on a discrete GPU, this is '%s' (QMOE_VK_PERF=1 runs reduced shapes here)",
         qmoe_vk_device_name(vk));
  return 0;
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
  const size_t chunk_rows = 4096; /* a multiple of TILE_ROWS */
  unsigned char *chunk = malloc(rb * chunk_rows);
  for (size_t r = 0; r < chunk_rows; r++) memcpy(chunk + r * rb, t + (r % TILE_ROWS) * rb, rb);
  for (int64_t r0 = 0; r0 < rows; r0 += (int64_t)chunk_rows) {
    size_t n = (size_t)(rows - r0 < (int64_t)chunk_rows ? rows - r0 : (int64_t)chunk_rows);
    if (be->upload(be, b, (size_t)r0 * rb, chunk, n * rb)) {
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

/* Device time of one of the N calls in CALLS, run ITERS times per sync (µs, best of 3), or -1. */
static double time_calls(const qmoe_stage_call *calls, int n, int iters) {
  double best = 1e30;
  for (int i = 0; i < n; i++)
    if (be->run(be, &calls[i])) return -1; /* warm-up: pipeline creation */
  if (be->sync(be)) return -1;
  for (int rep = 0; rep < 3; rep++) {
    if (qmoe_vk_timer_start(vk)) return -1;
    for (int it = 0; it < iters; it++)
      for (int i = 0; i < n; i++)
        if (be->run(be, &calls[i])) return -1;
    double us;
    if (qmoe_vk_timer_stop(vk) || be->sync(be) || qmoe_vk_timer_read(vk, &us)) return -1;
    if (us / iters < best) best = us / iters;
  }
  return best;
}

/* Appends the figures to the case's name; fails below QMOE_VK_PERF_MIN_GBS. */
static void report(double us, double bytes, const char *extra) {
  size_t len = strlen(label);
  snprintf(label + len, sizeof label - len, " %.1f us %.0f GB/s (%.1f MB)%s", us, bytes / (us * 1e-6) / 1e9, bytes / 1e6,
           extra ? extra : "");
  const char *min = getenv("QMOE_VK_PERF_MIN_GBS");
  if (min && bytes / (us * 1e-6) / 1e9 < atof(min))
    t_fail(__FILE__, __LINE__, "%.0f GB/s < QMOE_VK_PERF_MIN_GBS=%s", bytes / (us * 1e-6) / 1e9, min);
}

static qmoe_stage_call call(qmoe_stage s, int qt, qmoe_acc acc) {
  qmoe_stage_call c;
  memset(&c, 0, sizeof c);
  c.stage = s;
  c.qtype = qt;
  c.acc = acc;
  return c;
}

static qmoe_acc cur_acc;

/* The device's streaming bandwidth as the add kernel sees it (reads 2n, writes n floats). */
static void test_add(void) {
  if (!perf_device()) return;
  size_t n = scale_down ? (1u << 20) : (64u << 20);
  float *ha;
  qmoe_buffer *a = f32_buf(n, &ha), *b = f32_buf(n, NULL), *y = f32_buf(n, NULL);
  REQUIRE(a && b && y, "buffers: %s", qmoe_last_error());
  qmoe_stage_call c = call(QMOE_STAGE_ADD, -1, QMOE_ACC_F32);
  c.p[0] = (int64_t)n;
  c.buf[0] = a, c.buf[1] = a, c.buf[2] = y;
  double us = time_calls(&c, 1, scale_down ? 2 : 20);
  REQUIRE(us > 0, "%s", qmoe_last_error());
  report(us, 12.0 * (double)n, NULL);
  float got[4];
  REQUIRE(be->download(be, y, (n - 4) * 4, got, sizeof got) == 0, "download");
  for (int i = 0; i < 4; i++) CHECK(got[i] == ha[n - 4 + i] * 2, "y[%zu] = %g, expected %g", n - 4 + i, got[i], ha[n - 4 + i] * 2);
  free(ha);
  be->free_buf(be, a);
  be->free_buf(be, b);
  be->free_buf(be, y);
}

static int mv_qt;
static int64_t mv_rows, mv_cols;

static void test_matvec(void) {
  if (!perf_device()) return;
  int64_t rows = scale_down && mv_rows > 4096 ? 4096 : mv_rows, cols = mv_cols;
  unsigned char *tile = NULL;
  size_t rb;
  float *x;
  qmoe_buffer *W = tiled_matrix(mv_qt, rows, cols, &tile, &rb), *xb = f32_buf((size_t)cols, &x), *y = f32_buf((size_t)rows, NULL);
  REQUIRE(W && xb && y, "buffers: %s", qmoe_last_error());
  qmoe_stage_call c = call(QMOE_STAGE_MATVEC, mv_qt, cur_acc);
  c.p[0] = rows, c.p[1] = cols;
  c.buf[0] = W, c.buf[1] = xb, c.buf[2] = y;
  double us = time_calls(&c, 1, scale_down ? 2 : (rows > 100000 ? 20 : 200));
  REQUIRE(us > 0, "%s", qmoe_last_error());
  report(us, (double)rows * (double)rb, NULL);
  float *got = malloc((size_t)rows * sizeof *got);
  REQUIRE(be->download(be, y, 0, got, (size_t)rows * 4) == 0, "download");
  const qmoe_qtype_info *q = qmoe_qtype_by_id(mv_qt);
  for (int64_t r = 0; r < rows; r++) {
    double want = q->dot_f64(tile + (size_t)(r % TILE_ROWS) * rb, x, cols);
    if (!(fabs(got[r] - want) <= 1e-4 * (1 + fabs(want)))) {
      t_fail(__FILE__, __LINE__, "row %lld: %g, expected %g", (long long)r, got[r], want);
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

static int moe_qt;
static qmoe_stage moe_stage;

/* MoE gate+up+SwiGLU or down over K = 8 of E = 128 experts; bytes are the K experts' weights read. */
static void test_moe(void) {
  if (!perf_device()) return;
  int64_t E = scale_down ? 16 : NE;
  int gu = moe_stage == QMOE_STAGE_MOE_GATE_UP_SWIGLU;
  unsigned char *t0 = NULL, *t1 = NULL;
  size_t rb0, rb1 = 0;
  qmoe_buffer *W0 = gu ? tiled_matrix(moe_qt, E * FF, HID, &t0, &rb0) : tiled_matrix(moe_qt, E * HID, FF, &t0, &rb0);
  qmoe_buffer *W1 = gu ? tiled_matrix(moe_qt, E * FF, HID, &t1, &rb1) : NULL;
  float *x, *h;
  qmoe_buffer *xb = f32_buf(HID, &x), *hb = f32_buf((size_t)NK * FF, &h), *y = f32_buf(HID, NULL), *ids = NULL, *w = NULL;
  int32_t idv[NK];
  float wv[NK];
  for (int k = 0; k < NK; k++) {
    idv[k] = (int32_t)((k * 37 + 5) % E);
    wv[k] = 1.0f / NK;
  }
  REQUIRE(W0 && (!gu || W1) && xb && hb && y, "buffers: %s", qmoe_last_error());
  REQUIRE(!be->alloc(be, sizeof idv, &ids) && !be->upload(be, ids, 0, idv, sizeof idv) && !be->alloc(be, sizeof wv, &w) &&
              !be->upload(be, w, 0, wv, sizeof wv),
          "ids: %s", qmoe_last_error());
  qmoe_stage_call c = call(moe_stage, moe_qt, cur_acc);
  c.p[0] = HID, c.p[1] = FF, c.p[2] = E, c.p[3] = NK;
  if (gu) c.buf[0] = W0, c.buf[1] = W1, c.buf[2] = xb, c.buf[3] = ids, c.buf[4] = hb;
  else c.buf[0] = W0, c.buf[1] = hb, c.buf[2] = ids, c.buf[3] = w, c.buf[4] = y;
  double us = time_calls(&c, 1, scale_down ? 2 : 100);
  REQUIRE(us > 0, "%s", qmoe_last_error());
  report(us, gu ? 2.0 * NK * FF * (double)rb0 : (double)NK * HID * (double)rb0, NULL);
  const qmoe_qtype_info *q = qmoe_qtype_by_id(moe_qt);
  if (gu) { /* h[k][f] for some (k, f): the rows of expert e are rows e*F + f of the tiling */
    float hv[NK * FF];
    REQUIRE(be->download(be, hb, 0, hv, sizeof hv) == 0, "download");
    for (int k = 0; k < NK; k++)
      for (int f = 0; f < FF; f += 97) {
        int64_t r = (int64_t)idv[k] * FF + f;
        double g = q->dot_f64(t0 + (size_t)(r % TILE_ROWS) * rb0, x, HID), u = q->dot_f64(t1 + (size_t)(r % TILE_ROWS) * rb1, x, HID);
        double want = g / (1 + exp(-g)) * u;
        CHECK(fabs(hv[k * FF + f] - want) <= 1e-4 * (1 + fabs(want)), "h[%d][%d] = %g, expected %g", k, f, hv[k * FF + f], want);
      }
  } else {
    float yv[HID];
    REQUIRE(be->download(be, y, 0, yv, sizeof yv) == 0, "download");
    for (int j = 0; j < HID; j += 61) {
      double want = 0;
      for (int k = 0; k < NK; k++) {
        int64_t r = (int64_t)idv[k] * HID + j;
        want += wv[k] * q->dot_f64(t0 + (size_t)(r % TILE_ROWS) * rb0, h + k * FF, FF);
      }
      CHECK(fabs(yv[j] - want) <= 1e-4 * (1 + fabs(want)), "y[%d] = %g, expected %g", j, yv[j], want);
    }
  }
  free(t0);
  free(t1);
  free(x);
  free(h);
  qmoe_buffer *all[] = {W0, W1, xb, hb, y, ids, w};
  for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
    if (all[i]) be->free_buf(be, all[i]);
}

/* One decoder layer of Qwen3-30B-A3B (Q4_K_M: q4_k attention, gate and up, q6_k v and down) at position POS,
 * as a forward pass records it: 17 stage calls; the figure is device time per layer. */
static void test_layer(void) {
  if (!perf_device()) return;
  const int64_t E = scale_down ? 16 : NE, ctx = scale_down ? 256 : 4096, pos = ctx - 1;
  unsigned char *t[7] = {0};
  size_t rb[7];
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
    calls[n] = call(st, qt, cur_acc);                                                                          \
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
  double us = time_calls(calls, n, scale_down ? 1 : 48);
  REQUIRE(us > 0, "%s", qmoe_last_error());
  double bytes = (double)NH * HD * rb[0] + (double)NKV * HD * (rb[1] + rb[2]) + (double)HID * rb[3] +
                 (double)NK * FF * (rb[4] + rb[5]) + (double)NK * HID * rb[6] + (double)E * HID * 4 +
                 2.0 * (double)(pos + 1) * NKV * HD * 4;
  char extra[96];
  snprintf(extra, sizeof extra, "; 48 layers %.2f ms = %.0f tokens/s before lm_head", 48 * us * 1e-3, 1e6 / (48 * us));
  report(us, bytes, extra);
  int32_t idv[NK];
  float wv[NK], sum = 0;
  REQUIRE(be->download(be, ids, 0, idv, sizeof idv) == 0 && be->download(be, w, 0, wv, sizeof wv) == 0, "router");
  for (int i = 0; i < NK; i++) {
    CHECK(idv[i] >= 0 && idv[i] < E, "router id %d", idv[i]);
    sum += wv[i];
  }
  CHECK(fabs(sum - 1) < 1e-5, "router weights sum to %g", sum);
  float hv[HID];
  REQUIRE(be->download(be, hs, 0, hv, sizeof hv) == 0, "download");
  for (int i = 0; i < HID; i++) CHECK(isfinite(hv[i]), "h[%d] = %g after the layers", i, hv[i]);
  for (int i = 0; i < 7; i++) free(t[i]);
  qmoe_buffer *all[] = {Wq, Wk, Wv, Wo, Wg, Wu, Wd, hs, xn, nw, q, k, v, qn, kn, Kc, Vc, ao, o, Wr, ids, w, hh, y};
  for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) be->free_buf(be, all[i]);
}

static void run_labeled(void (*fn)(void)) { t_run(label, fn); }

int main(void) {
  t_seed();
  setenv("QMOE_VK_VALIDATION", "0", 0);
  if (qmoe_backend_vulkan_open(&be) == 0) {
    vk = qmoe_backend_vulkan_vk(be);
    scale_down = qmoe_vk_device_type(vk) != VK_PHYSICAL_DEVICE_TYPE_DISCRETE_GPU;
    printf("# device: %s\n", qmoe_vk_device_name(vk));
  } else {
    be = NULL;
    snprintf(open_error, sizeof open_error, "%s", qmoe_last_error());
  }
  snprintf(label, sizeof label, "bench/vulkan/add (64M floats, the streaming yardstick)");
  run_labeled(test_add);
  static const struct { int qt; int64_t rows, cols; const char *what; } mv[] = {
      {Q6_K, VOCAB, HID, "lm_head"}, {Q4_K, NH * HD, HID, "attn_q"}, {Q4_K, HID, NH * HD, "attn_output"}};
  for (size_t i = 0; i < sizeof mv / sizeof mv[0]; i++)
    for (int a = 0; a < 2; a++) {
      mv_qt = mv[i].qt, mv_rows = mv[i].rows, mv_cols = mv[i].cols, cur_acc = (qmoe_acc)a;
      snprintf(label, sizeof label, "bench/vulkan/matvec/%s/%s (%s)", mv[i].qt == Q6_K ? "q6_k" : "q4_k", a ? "f64" : "f32",
               mv[i].what);
      run_labeled(test_matvec);
    }
  static const struct { qmoe_stage st; int qt; const char *what; } moe[] = {
      {QMOE_STAGE_MOE_GATE_UP_SWIGLU, Q4_K, "gate+up, 8 experts"},
      {QMOE_STAGE_MOE_DOWN, Q6_K, "down (Q6_K), 8 experts"},
      {QMOE_STAGE_MOE_DOWN, Q4_K, "down (Q4_K), 8 experts"}};
  for (size_t i = 0; i < sizeof moe / sizeof moe[0]; i++)
    for (int a = 0; a < 2; a++) {
      moe_stage = moe[i].st, moe_qt = moe[i].qt, cur_acc = (qmoe_acc)a;
      snprintf(label, sizeof label, "bench/vulkan/%s/%s/%s (%s)", qmoe_stage_info_get(moe[i].st)->name,
               moe[i].qt == Q6_K ? "q6_k" : "q4_k", a ? "f64" : "f32", moe[i].what);
      run_labeled(test_moe);
    }
  for (int a = 0; a < 2; a++) {
    cur_acc = (qmoe_acc)a;
    snprintf(label, sizeof label, "bench/vulkan/layer/%s (17 stage calls at the end of a 4096 context)", a ? "f64" : "f32");
    run_labeled(test_layer);
  }
  if (be) be->close(be);
  return T_DONE();
}
