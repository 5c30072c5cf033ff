/* test_vk_graph.c: Vulkan graphs (backend.h's graph_begin/graph_end, runtime/vulkan/vk.c). A decode-like sequence
 * of real stage calls, run as a graph again and again with new params, offsets, grids and data, is bit-identical
 * to the same calls enqueued one by one on a second Vulkan backend; the recording is replayed while its shape
 * stays and recorded anew when it changes (another call list, a scratch buffer that grew, a freed buffer); and
 * the error paths: upload/download/sync and a nested begin inside a graph, a dropped graph, a freed buffer. */
#include <stdint.h>
#include <stdlib.h>
#include "../harness.h"
#include "backend.h"
#include "qmoe.h"
#include "ref_internal.h"
#include "vk_internal.h"

/* No device: the case skips, or fails when QMOE_TEST_REQUIRE_BACKEND is set (the GPU machine). */
static int open_backend(qmoe_backend **be) {
  int rc = qmoe_backend_vulkan_open(be);
  if (rc == QMOE_ENODEV) {
    const char *req = getenv("QMOE_TEST_REQUIRE_BACKEND");
    if (req && *req) t_fail(__FILE__, __LINE__, "no Vulkan device: %s (QMOE_TEST_REQUIRE_BACKEND is set)", qmoe_last_error());
    else t_skip("no Vulkan device: %s", qmoe_last_error());
    return 0;
  }
  if (rc) t_fail(__FILE__, __LINE__, "qmoe_backend_vulkan_open: %d %s", rc, qmoe_last_error());
  return rc == 0;
}

static qmoe_vk_graph_stats stats(qmoe_backend *be) {
  qmoe_vk_graph_stats s;
  qmoe_vk_graph_stats_get(qmoe_backend_vulkan_vk(be), &s);
  return s;
}

static void fill_normal(float *x, size_t n, double scale) {
  for (size_t i = 0; i < n; i++) x[i] = (float)(t_rand_normal() * scale);
}

static int rand_int(int lo, int hi) { return lo + (int)(t_rand_unit() * (hi - lo + 1)) % (hi - lo + 1); }

/* ---- the rig: the same buffers on a backend that runs graphs (g) and one that runs the calls one by one (s) ---- */

enum { Q4_K = 12 };
enum { H = 512, ROWS = 300, NX = 4, NH = 8, NKV = 2, D = 64, CTX = 300, E = 16, K = 4, NQ = 2 };
enum { X, G, W, XN, Y, BIAS, Y2, IDX, Q, KB, VB, KC, VC, O, WR, IDS, WK, NBUF };
static const char *const buf_name[NBUF] = {"x", "g", "W", "xn", "y", "bias", "y2", "idx", "q", "k",
                                           "v", "kc", "vc", "o", "Wr", "ids", "wk"};
static size_t buf_bytes[NBUF];

typedef struct {
  qmoe_backend *g, *s;
  qmoe_buffer *bg[NBUF], *bs[NBUF];
} rig;

/* What changes from one step to the next. */
typedef struct {
  size_t xoff, yoff, qoff, idxoff;
  double eps, theta;
  int64_t pos, n_kv;
} step;

static int upload_both(rig *r, int i, const void *src, size_t n) {
  int rc = r->g->upload(r->g, r->bg[i], 0, src, n);
  if (!rc) rc = r->s->upload(r->s, r->bs[i], 0, src, n);
  if (rc) t_fail(__FILE__, __LINE__, "upload %s: %s", buf_name[i], qmoe_last_error());
  return rc == 0;
}

/* Fresh random contents for buffer I on both backends (never all zeros); quantized for W. */
static int fresh(rig *r, int i) {
  size_t n = buf_bytes[i];
  unsigned char *data = calloc(n, 1);
  if (i == W) {
    const qmoe_qtype_info *q = qmoe_qtype_by_id(Q4_K);
    size_t rb = (size_t)qmoe_qtype_row_bytes(q, H);
    float row[H];
    for (int k = 0; k < ROWS; k++) {
      fill_normal(row, H, 0.05);
      if (qmoe_quantize_row(Q4_K, row, data + (size_t)k * rb, H)) t_fail(__FILE__, __LINE__, "quantize");
    }
  } else if (i == IDX || i == IDS) {
    memset(data, 0xA5, n);
  } else {
    fill_normal((float *)data, n / 4, i == WR ? 0.2 : 1.0);
  }
  int ok = upload_both(r, i, data, n);
  free(data);
  return ok;
}

static int rig_open(rig *r) {
  memset(r, 0, sizeof *r);
  buf_bytes[X] = (size_t)NX * H * 4, buf_bytes[G] = H * 4;
  buf_bytes[W] = (size_t)ROWS * (size_t)qmoe_qtype_row_bytes(qmoe_qtype_by_id(Q4_K), H);
  buf_bytes[XN] = H * 4, buf_bytes[Y] = (ROWS + 16) * 4, buf_bytes[BIAS] = (ROWS + 16) * 4;
  buf_bytes[Y2] = ROWS * 4, buf_bytes[IDX] = 8 * 4, buf_bytes[Q] = ((size_t)NQ * NH * D + 16) * 4;
  buf_bytes[KB] = buf_bytes[VB] = NKV * D * 4, buf_bytes[KC] = buf_bytes[VC] = (size_t)CTX * NKV * D * 4;
  buf_bytes[O] = NH * D * 4, buf_bytes[WR] = (size_t)E * H * 4, buf_bytes[IDS] = K * 4, buf_bytes[WK] = K * 4;
  if (!open_backend(&r->g)) return 0;
  if (!open_backend(&r->s)) {
    r->g->close(r->g);
    r->g = NULL;
    return 0;
  }
  for (int i = 0; i < NBUF; i++) {
    if (r->g->alloc(r->g, buf_bytes[i], &r->bg[i]) || r->s->alloc(r->s, buf_bytes[i], &r->bs[i])) {
      t_fail(__FILE__, __LINE__, "alloc %s: %s", buf_name[i], qmoe_last_error());
      return 0;
    }
    if (!fresh(r, i)) return 0;
  }
  return 1;
}

static void rig_close(rig *r) {
  if (r->g) r->g->close(r->g); /* frees the buffers */
  if (r->s) r->s->close(r->s);
}

static step random_step(int64_t n_kv) {
  step s;
  s.xoff = (size_t)rand_int(0, NX - 1) * H * 4;
  s.yoff = (size_t)rand_int(0, 15) * 4;
  s.qoff = ((size_t)rand_int(0, NQ - 1) * NH * D + (size_t)rand_int(0, 3)) * 4;
  s.idxoff = (size_t)rand_int(0, 7) * 4;
  s.eps = rand_int(0, 1) ? 1e-5 : 1e-6;
  s.theta = rand_int(0, 1) ? 10000.0 : 1000000.0;
  s.pos = rand_int(0, CTX - 1);
  s.n_kv = n_kv ? n_kv : rand_int(1, CTX);
  return s;
}

/* The sequence of one step on BE (buffers B). SHAPE 0: the whole sequence; 1: without the argmax. */
static int run_seq(qmoe_backend *be, qmoe_buffer **b, const step *st, int shape) {
  qmoe_stage_call c;
  int rc = 0;
#define STEP(build, ...) if (!rc) { build; __VA_ARGS__; rc = be->run(be, &c); }
  STEP(qmoe_call_rmsnorm(&c, H, st->eps, b[X], b[G], b[XN]), c.off[0] = st->xoff);
  STEP(qmoe_call_matvec(&c, ROWS, H, b[W], b[XN], b[Y]), c.qtype = Q4_K, c.off[2] = st->yoff);
  STEP(qmoe_call_router_topk(&c, H, E, K, b[WR], b[XN], b[IDS], b[WK]));
  STEP(qmoe_call_rope_neox(&c, NH, D, st->pos, st->theta, b[Q], b[Q]), c.off[0] = c.off[1] = st->qoff);
  STEP(qmoe_call_rope_neox(&c, NKV, D, st->pos, st->theta, b[KB], b[KB]));
  STEP(qmoe_call_kv_store(&c, NKV, D, st->pos, CTX, b[KB], b[VB], b[KC], b[VC]));
  STEP(qmoe_call_attention(&c, NH, NKV, D, st->n_kv, CTX, b[Q], b[KC], b[VC], b[O]), c.off[0] = st->qoff);
  STEP(qmoe_call_add(&c, ROWS, b[Y], b[BIAS], b[Y2]), c.off[0] = st->yoff);
  if (shape == 0) STEP(qmoe_call_argmax(&c, ROWS, b[Y2], b[IDX]), c.off[1] = st->idxoff);
#undef STEP
  if (rc) t_fail(__FILE__, __LINE__, "%s: %s", be->name, qmoe_last_error());
  return rc == 0;
}

/* Every buffer of both backends, compared byte for byte. */
static int same_results(rig *r, const char *what) {
  int ok = 1;
  for (int i = 0; i < NBUF && ok; i++) {
    unsigned char *a = malloc(buf_bytes[i]), *b = malloc(buf_bytes[i]);
    int rc = r->g->download(r->g, r->bg[i], 0, a, buf_bytes[i]);
    if (!rc) rc = r->s->download(r->s, r->bs[i], 0, b, buf_bytes[i]);
    if (rc) {
      t_fail(__FILE__, __LINE__, "%s: download %s: %s", what, buf_name[i], qmoe_last_error());
      ok = 0;
    } else if (memcmp(a, b, buf_bytes[i])) {
      size_t k = 0;
      while (a[k] == b[k]) k++;
      t_fail(__FILE__, __LINE__, "%s: buffer %s differs from the calls run one by one (first at byte %zu)", what,
             buf_name[i], k);
      ok = 0;
    }
    free(a);
    free(b);
  }
  return ok;
}

/* One step on both: fresh inputs; on g, maybe a call enqueued before the graph (submitted ahead of it), the
 * graph, maybe a call after it (which waits for the graph); on s the same calls one by one. */
static int both_step(rig *r, const step *st, int shape, int before, int after) {
  if (!fresh(r, X) || !fresh(r, Q) || !fresh(r, KB) || !fresh(r, VB)) return 0;
  qmoe_stage_call c;
  for (int k = 0; k < 2; k++) {
    qmoe_backend *be = k ? r->s : r->g;
    qmoe_buffer **b = k ? r->bs : r->bg;
    int rc = 0;
    if (before) { /* x += x, which the graph's first dispatch reads */
      qmoe_call_add(&c, NX * H, b[X], b[X], b[X]);
      rc = be->run(be, &c);
    }
    if (!rc && !k) rc = be->graph_begin(be);
    if (rc) {
      t_fail(__FILE__, __LINE__, "%s: %s", be->name, qmoe_last_error());
      return 0;
    }
    int ok = run_seq(be, b, st, shape);
    if (!k && (rc = be->graph_end(be, ok))) {
      t_fail(__FILE__, __LINE__, "graph_end: %s", qmoe_last_error());
      return 0;
    }
    if (!ok) return 0;
    if (after) { /* bias = y2 + bias, reading what the graph wrote */
      qmoe_call_add(&c, ROWS, b[Y2], b[BIAS], b[BIAS]);
      if ((rc = be->run(be, &c))) {
        t_fail(__FILE__, __LINE__, "%s: %s", be->name, qmoe_last_error());
        return 0;
      }
    }
  }
  return 1;
}

/* The same shape N times with new params, offsets, grids and data: recorded once, replayed N-1 times, every
 * result bit-identical to the calls run one by one. The first step has the largest n_kv, so the attention's
 * scratch grows inside the first graph (after the router's calls were kept with the smaller one) and never
 * again. */
static void test_replay_matches_calls(void) {
  rig r;
  if (!rig_open(&r)) {
    rig_close(&r);
    return;
  }
  const int N = 6;
  qmoe_vk_graph_stats s0 = stats(r.g);
  for (int i = 0; i < N; i++) {
    step st = random_step(i == 0 ? CTX : 0);
    if (!both_step(&r, &st, 0, i % 3 == 1, i % 2 == 1)) break;
    qmoe_vk_graph_stats s = stats(r.g);
    CHECK(s.in_flight == (i % 2 == 0), "step %d: in flight %d (graph_end(1) does not wait; a call after it does)", i,
          s.in_flight);
    char what[96];
    snprintf(what, sizeof what, "step %d (pos %lld, n_kv %lld)", i, (long long)st.pos, (long long)st.n_kv);
    if (!same_results(&r, what)) break;
    CHECK(s.records - s0.records == 1 && s.replays - s0.replays == i, "step %d: %ld records, %ld replays", i,
          s.records - s0.records, s.replays - s0.replays);
  }
  qmoe_vk_graph_stats s = stats(r.g);
  CHECK(s.kept == 10, "the kept recording has %d dispatches, the sequence 10 (9 calls, argmax of two passes)", s.kept);
  CHECK(!stats(r.s).records && !stats(r.s).replays, "the backend without graphs recorded one");
  rig_close(&r);
}

/* The same with device-local buffers (uploads and downloads through a staging buffer); the params tables
 * stay host-visible. */
static void test_replay_staged(void) {
  setenv("QMOE_VK_STAGING", "1", 1);
  test_replay_matches_calls();
  unsetenv("QMOE_VK_STAGING");
}

/* A different shape is recorded anew, and only the last recording is kept; a scratch buffer that grew outside
 * the graph, or a freed buffer, drops the kept recording. */
static void test_shape_changes(void) {
  rig r;
  if (!rig_open(&r)) {
    rig_close(&r);
    return;
  }
  static const struct { int shape; long records, replays; const char *what; } seq[] = {
      {0, 1, 0, "first"}, {0, 1, 1, "same shape"}, {1, 2, 1, "without the argmax"}, {1, 2, 2, "same again"},
      {0, 3, 2, "the first shape again (only the last is kept)"}, {0, 3, 3, "same again"},
  };
  int ok = 1;
  for (size_t i = 0; ok && i < sizeof seq / sizeof seq[0]; i++) {
    step st = random_step(CTX);
    ok = both_step(&r, &st, seq[i].shape, 0, 0) && same_results(&r, seq[i].what);
    qmoe_vk_graph_stats s = stats(r.g);
    CHECK(s.records == seq[i].records && s.replays == seq[i].replays, "%s: %ld records, %ld replays, expected %ld, %ld",
          seq[i].what, s.records, s.replays, seq[i].records, seq[i].replays);
  }
  if (!ok) {
    rig_close(&r);
    return;
  }
  /* The scratch grows outside the graph (an attention over a longer cache): the kept recording binds the old
   * one, so it is dropped and the next graph of the same calls is recorded anew. */
  enum { CTX2 = 4 * CTX };
  qmoe_buffer *kc2 = NULL, *vc2 = NULL;
  float *cache = malloc((size_t)CTX2 * NKV * D * 4);
  fill_normal(cache, (size_t)CTX2 * NKV * D, 1.0);
  int rc = r.g->alloc(r.g, (size_t)CTX2 * NKV * D * 4, &kc2);
  if (!rc) rc = r.g->alloc(r.g, (size_t)CTX2 * NKV * D * 4, &vc2);
  if (!rc) rc = r.g->upload(r.g, kc2, 0, cache, (size_t)CTX2 * NKV * D * 4);
  if (!rc) rc = r.g->upload(r.g, vc2, 0, cache, (size_t)CTX2 * NKV * D * 4);
  free(cache);
  qmoe_stage_call c;
  qmoe_call_attention(&c, NH, NKV, D, CTX2, CTX2, r.bg[Q], kc2, vc2, r.bg[O]);
  if (!rc) rc = r.g->run(r.g, &c);
  if (!rc) rc = r.g->sync(r.g);
  REQUIRE(!rc, "attention over %d positions: %s", CTX2, qmoe_last_error());
  CHECK(stats(r.g).kept == 0, "the kept recording survived the scratch it binds");
  step st = random_step(0);
  if (both_step(&r, &st, 0, 0, 0) && same_results(&r, "after the scratch grew")) {
    qmoe_vk_graph_stats s = stats(r.g);
    CHECK(s.records == 4 && s.replays == 3, "after the scratch grew: %ld records, %ld replays", s.records, s.replays);
  }
  /* Freeing a buffer the kept recording binds drops it too. */
  r.g->free_buf(r.g, kc2);
  r.g->free_buf(r.g, vc2);
  CHECK(stats(r.g).kept == 10, "freeing buffers the graph does not use dropped it");
  r.g->free_buf(r.g, r.bg[BIAS]);
  CHECK(stats(r.g).kept == 0, "freeing a buffer the kept recording binds did not drop it");
  REQUIRE(r.g->alloc(r.g, buf_bytes[BIAS], &r.bg[BIAS]) == 0, "alloc: %s", qmoe_last_error());
  if (fresh(&r, BIAS) && both_step(&r, &st, 0, 0, 0) && same_results(&r, "after a buffer was freed")) {
    qmoe_vk_graph_stats s = stats(r.g);
    CHECK(s.records == 5 && s.replays == 3, "after a buffer was freed: %ld records, %ld replays", s.records, s.replays);
  }
  rig_close(&r);
}

/* ---- error paths ---- */

static qmoe_buffer *make_buf(qmoe_backend *be, size_t n, const void *src) {
  qmoe_buffer *b = NULL;
  if (be->alloc(be, n, &b)) return NULL;
  unsigned char *poison = malloc(n);
  memset(poison, 0xA5, n);
  if (be->upload(be, b, 0, src ? src : poison, n)) {
    be->free_buf(be, b);
    b = NULL;
  }
  free(poison);
  return b;
}

static void test_errors(void) {
  qmoe_backend *be;
  if (!open_backend(&be)) return;
  enum { N = 1000 };
  float a[N], b[N], y[N], want[N], poison[N];
  fill_normal(a, N, 1.0);
  fill_normal(b, N, 1.0);
  for (int i = 0; i < N; i++) want[i] = a[i] + b[i];
  memset(poison, 0xA5, sizeof poison);
  qmoe_buffer *A = make_buf(be, sizeof a, a), *B = make_buf(be, sizeof b, b), *Y = make_buf(be, sizeof y, NULL);
  REQUIRE(A && B && Y, "buffers: %s", qmoe_last_error());
  qmoe_vk *vk = qmoe_backend_vulkan_vk(be);
  qmoe_stage_call c;
  qmoe_call_add(&c, N, A, B, Y);

  CHECK(be->graph_end(be, 1) == QMOE_EINVAL && strstr(qmoe_last_error(), "no graph is open"), "end without begin: %s",
        qmoe_last_error());
  REQUIRE(be->graph_begin(be) == 0, "graph_begin: %s", qmoe_last_error());
  CHECK(be->graph_begin(be) == QMOE_EINVAL && strstr(qmoe_last_error(), "already open"), "nested begin: %s",
        qmoe_last_error());
  CHECK(be->run(be, &c) == 0, "run in a graph: %s", qmoe_last_error());
  CHECK(be->upload(be, A, 0, a, sizeof a) == QMOE_EINVAL && strstr(qmoe_last_error(), "upload: not allowed inside a graph"),
        "upload in a graph: %s", qmoe_last_error());
  CHECK(be->download(be, Y, 0, y, sizeof y) == QMOE_EINVAL &&
            strstr(qmoe_last_error(), "download: not allowed inside a graph"),
        "download in a graph: %s", qmoe_last_error());
  CHECK(be->sync(be) == QMOE_EINVAL && strstr(qmoe_last_error(), "sync: not allowed inside a graph"),
        "sync in a graph: %s", qmoe_last_error());
  CHECK(stats(be).open == 1, "the graph is still open after the refused calls");
  CHECK(be->graph_end(be, 0) == 0, "graph_end(0): %s", qmoe_last_error());
  qmoe_vk_graph_stats s = stats(be);
  CHECK(!s.open && !s.in_flight && s.drops == 1 && !s.records && !s.kept && qmoe_vk_pending(vk) == 0,
        "graph_end(0) left open %d, in flight %d, drops %ld, records %ld, kept %d, pending %d", s.open, s.in_flight,
        s.drops, s.records, s.kept, qmoe_vk_pending(vk));
  CHECK(be->sync(be) == 0 && be->download(be, Y, 0, y, sizeof y) == 0, "%s", qmoe_last_error());
  CHECK(!memcmp(y, poison, sizeof y), "the dropped graph ran");

  /* The next graph works. */
  CHECK(be->graph_begin(be) == 0 && be->run(be, &c) == 0 && be->graph_end(be, 1) == 0, "graph: %s", qmoe_last_error());
  CHECK(be->download(be, Y, 0, y, sizeof y) == 0 && !memcmp(y, want, sizeof y), "the graph after a dropped one: %s",
        qmoe_last_error());
  CHECK(stats(be).records == 1 && stats(be).kept == 1, "records %ld, kept %d", stats(be).records, stats(be).kept);

  /* A buffer freed while the graph binds it: graph_end(1) refuses, nothing runs, the next graph works. */
  qmoe_buffer *T = make_buf(be, sizeof y, NULL);
  REQUIRE(T, "buffer: %s", qmoe_last_error());
  qmoe_call_add(&c, N, A, B, T);
  CHECK(be->graph_begin(be) == 0 && be->run(be, &c) == 0, "graph: %s", qmoe_last_error());
  be->free_buf(be, T);
  CHECK(be->graph_end(be, 1) == QMOE_EINVAL && strstr(qmoe_last_error(), "freed before graph_end"),
        "graph_end after a freed buffer: %s", qmoe_last_error());
  CHECK(!stats(be).open && !stats(be).in_flight, "the refused graph is not open or in flight");
  fill_normal(a, N, 1.0);
  for (int i = 0; i < N; i++) want[i] = a[i] + b[i];
  qmoe_call_add(&c, N, A, B, Y);
  CHECK(be->upload(be, A, 0, a, sizeof a) == 0, "%s", qmoe_last_error());
  CHECK(be->graph_begin(be) == 0 && be->run(be, &c) == 0 && be->graph_end(be, 1) == 0, "graph: %s", qmoe_last_error());
  CHECK(be->download(be, Y, 0, y, sizeof y) == 0 && !memcmp(y, want, sizeof y), "the graph after a refused one: %s",
        qmoe_last_error());
  CHECK(stats(be).replays == 1, "the same call again is a replay (%ld replays)", stats(be).replays);

  /* An empty graph submits nothing; a failed run() inside a graph leaves the graph open for graph_end(0). */
  CHECK(be->graph_begin(be) == 0 && be->graph_end(be, 1) == 0 && !stats(be).in_flight, "empty graph: %s",
        qmoe_last_error());
  qmoe_stage_call bad = c;
  bad.p[0] = N * 4; /* more than the buffers hold */
  CHECK(be->graph_begin(be) == 0, "%s", qmoe_last_error());
  CHECK(be->run(be, &bad) == QMOE_EINVAL, "an oversized call is refused inside a graph too");
  CHECK(be->graph_end(be, 0) == 0 && !stats(be).open, "%s", qmoe_last_error());
  be->close(be);
}

int main(void) {
  t_seed();
  RUN(test_errors);
  RUN(test_replay_matches_calls);
  RUN(test_replay_staged);
  RUN(test_shape_changes);
  return T_DONE();
}
