/* test_cuda_graph.c: the CUDA backend's graphs (backend.h graph_begin/graph_end): a sequence of real stage calls
 * whose params change between runs (rope's position, a buffer offset) gives, through a replayed graph, the
 * same bytes as the same calls launched one by one; a same-shape sequence is built once and replayed with
 * only its changed nodes patched, a new shape is built anew and an old one found again in the cache; nothing
 * may upload, download or sync inside a graph; graph_end(be, 0) runs nothing; three lanes and a join
 * (backend.branch) give the bytes of launches in order; each launch's early bits (the inputs it may read before
 * its grid wait) leave out exactly what the launch before it writes, and moe_down gives the same bytes in a graph
 * whether the launch before it wrote its ids (router_topk: read after the wait) or not (gate+up: before it).
 * Runs on a GPU and on the
 * emulator of tests/cuda-emu; elsewhere "skipped: no CUDA device". */
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include "../harness.h"
#include "backend.h"
#include "cuda_internal.h"
#include "qmoe.h"

enum { H = 256, R = 128, NH = 2, D = 64, STEPS = 6 };

typedef struct {
  qmoe_buffer *x, *w, *W, *xn, *y, *z, *idx;
} bufs;

/* The sequence: xn = rmsnorm(x + off·H); y = W·xn; rope(y, pos) in place; z = y + y; idx = argmax(z). EXTRA
 * adds one more call (another shape). */
static int sequence(qmoe_backend *be, bufs *b, int64_t pos, size_t row, int extra) {
  qmoe_stage_call c;
  int rc;
  qmoe_call_rmsnorm(&c, H, 1e-6, b->x, b->w, b->xn);
  c.off[QMOE_B_RMSNORM_X] = row * H * sizeof(float);
  if ((rc = be->run(be, &c))) return rc;
  qmoe_call_matvec(&c, R, H, b->W, b->xn, b->y);
  c.qtype = 0, c.tensor = "W";
  if ((rc = be->run(be, &c))) return rc;
  qmoe_call_rope_neox(&c, NH, D, pos, 10000.0, b->y, b->y);
  if ((rc = be->run(be, &c))) return rc;
  qmoe_call_add(&c, R, b->y, b->y, b->z);
  if ((rc = be->run(be, &c))) return rc;
  if (extra) {
    qmoe_call_add(&c, R, b->z, b->y, b->z);
    if ((rc = be->run(be, &c))) return rc;
  }
  qmoe_call_argmax(&c, R, b->z, b->idx);
  return be->run(be, &c);
}

/* Lanes (backend.branch): xn = rmsnorm(x + row·H); then lane 0: y = W·xn, rope(y, pos); lane 1: y2 = W·xn;
 * lane 2: y3 = W·xn, y3 = y3 + y3; lane 0 again: y = y + y; joined: z = y + y2, z = z + y3, idx = argmax(z). */
static int lanes(qmoe_backend *be, bufs *b, qmoe_buffer *y2, qmoe_buffer *y3, int64_t pos, size_t row) {
  qmoe_stage_call c;
  int rc;
#define BR(l) if (be->branch && (rc = be->branch(be, l))) return rc
  qmoe_call_rmsnorm(&c, H, 1e-6, b->x, b->w, b->xn);
  c.off[QMOE_B_RMSNORM_X] = row * H * sizeof(float);
  if ((rc = be->run(be, &c))) return rc;
  qmoe_buffer *ys[3] = { b->y, y2, y3 };
  for (int l = 0; l < 3; l++) {
    BR(l);
    qmoe_call_matvec(&c, R, H, b->W, b->xn, ys[l]);
    c.qtype = 0, c.tensor = "W";
    if ((rc = be->run(be, &c))) return rc;
    if (l == 0) qmoe_call_rope_neox(&c, NH, D, pos, 10000.0, b->y, b->y);
    if (l == 2) qmoe_call_add(&c, R, y3, y3, y3);
    if (l != 1 && (rc = be->run(be, &c))) return rc;
  }
  BR(0);
  qmoe_call_add(&c, R, b->y, b->y, b->y);
  if ((rc = be->run(be, &c))) return rc;
  BR(QMOE_BRANCH_JOIN);
  qmoe_call_add(&c, R, b->y, y2, b->z);
  if ((rc = be->run(be, &c))) return rc;
  qmoe_call_add(&c, R, b->z, y3, b->z);
  if ((rc = be->run(be, &c))) return rc;
  qmoe_call_argmax(&c, R, b->z, b->idx);
  return be->run(be, &c);
#undef BR
}

/* The sequence's buffers, x, w and W filled with fresh random values. */
static int new_bufs(qmoe_backend *be, bufs *b) {
  static float x[4 * H], w[H], W[R * H];
  for (int i = 0; i < 4 * H; i++) x[i] = (float)t_rand_normal();
  for (int i = 0; i < H; i++) w[i] = 1.0f + 0.1f * (float)t_rand_normal();
  for (int i = 0; i < R * H; i++) W[i] = (float)t_rand_normal() * 0.1f;
  int rc;
  if ((rc = be->alloc(be, sizeof x, &b->x)) || (rc = be->alloc(be, sizeof w, &b->w)) ||
      (rc = be->alloc(be, sizeof W, &b->W)) || (rc = be->alloc(be, H * 4, &b->xn)) ||
      (rc = be->alloc(be, R * 4, &b->y)) || (rc = be->alloc(be, R * 4, &b->z)) || (rc = be->alloc(be, 4, &b->idx)))
    return rc;
  if ((rc = be->upload(be, b->x, 0, x, sizeof x)) || (rc = be->upload(be, b->w, 0, w, sizeof w)) ||
      (rc = be->upload(be, b->W, 0, W, sizeof W)))
    return rc;
  return 0;
}

/* The CUDA backend with graphs and the sequence's buffers; 0 (the case skipped or failed) where there are none. */
static int open_graph_backend(qmoe_backend **be, bufs *b) {
  *be = NULL;
  if (qmoe_backend_open("cuda", be)) {
    t_skip("no CUDA device: %s", qmoe_last_error());
    return 0;
  }
  if (!(*be)->graph_begin) {
    (*be)->close(*be);
    t_skip("the CUDA driver has no graphs (or QMOE_CUDA_SYNC / QMOE_CUDA_NO_GRAPH is set)");
    return 0;
  }
  if (new_bufs(*be, b) != 0) {
    t_fail(__FILE__, __LINE__, "buffers: %s", qmoe_last_error());
    return 0;
  }
  return 1;
}

static void test_graph(void) {
  qmoe_backend *be;
  bufs b = {0};
  if (!open_graph_backend(&be, &b)) return;
  qmoe_cuda_graph_stats s0, s;
  REQUIRE(qmoe_cuda_graph_stats_of(be, &s0) == 0, "stats");

  /* Replays with changing params and offsets give the bytes of one-by-one launches. */
  for (int i = 0; i < STEPS; i++) {
    int64_t pos = 1 + 37 * i;
    size_t row = (size_t)i % 4;
    float zg[R], zd[R];
    int32_t ig, id;
    REQUIRE(be->graph_begin(be) == 0, "graph_begin: %s", qmoe_last_error());
    REQUIRE(sequence(be, &b, pos, row, 0) == 0, "recording: %s", qmoe_last_error());
    REQUIRE(be->graph_end(be, 1) == 0, "graph_end: %s", qmoe_last_error());
    REQUIRE(!be->download(be, b.z, 0, zg, sizeof zg) && !be->download(be, b.idx, 0, &ig, 4), "download: %s",
            qmoe_last_error());
    REQUIRE(sequence(be, &b, pos, row, 0) == 0, "direct: %s", qmoe_last_error());
    REQUIRE(!be->download(be, b.z, 0, zd, sizeof zd) && !be->download(be, b.idx, 0, &id, 4), "download: %s",
            qmoe_last_error());
    CHECK(!memcmp(zg, zd, sizeof zg) && ig == id, "step %d (pos %lld, row %zu): the graph's output differs from "
          "the launches' (z[0] %g vs %g, argmax %d vs %d)", i, (long long)pos, row, (double)zg[0], (double)zd[0],
          (int)ig, (int)id);
  }
  REQUIRE(qmoe_cuda_graph_stats_of(be, &s) == 0, "stats");
  CHECK(s.builds - s0.builds == 1 && s.replays - s0.replays == STEPS - 1,
        "%d same-shape sequences: %llu builds and %llu replays (want 1 and %d)", STEPS,
        (unsigned long long)(s.builds - s0.builds), (unsigned long long)(s.replays - s0.replays), STEPS - 1);
  /* Each replay patches rmsnorm (the row offset) and rope (the position), and nothing that did not change. */
  CHECK(s.nodes_patched - s0.nodes_patched == 2 * (STEPS - 1), "%llu nodes patched over %d replays (want %d)",
        (unsigned long long)(s.nodes_patched - s0.nodes_patched), STEPS - 1, 2 * (STEPS - 1));

  /* Another shape is built; the first is still cached. */
  s0 = s;
  for (int extra = 1; extra >= 0; extra--) {
    REQUIRE(be->graph_begin(be) == 0 && sequence(be, &b, 5, 0, extra) == 0 && be->graph_end(be, 1) == 0,
            "graph: %s", qmoe_last_error());
  }
  REQUIRE(be->sync(be) == 0 && qmoe_cuda_graph_stats_of(be, &s) == 0, "sync: %s", qmoe_last_error());
  CHECK(s.builds - s0.builds == 1 && s.replays - s0.replays == 1,
        "a new shape then the old one: %llu builds, %llu replays (want 1 and 1)",
        (unsigned long long)(s.builds - s0.builds), (unsigned long long)(s.replays - s0.replays));

  /* Inside a graph: no upload, download, sync or nested begin; graph_end(be, 0) runs nothing. */
  const float poison[R] = { 12345.0f };
  float got[R];
  REQUIRE(be->upload(be, b.z, 0, poison, sizeof poison) == 0 && be->sync(be) == 0, "upload: %s", qmoe_last_error());
  REQUIRE(be->graph_begin(be) == 0 && sequence(be, &b, 3, 1, 0) == 0, "graph: %s", qmoe_last_error());
  CHECK(be->upload(be, b.z, 0, poison, 4) == QMOE_EINVAL && strstr(qmoe_last_error(), "graph"),
        "upload inside a graph: %s", qmoe_last_error());
  CHECK(be->download(be, b.z, 0, got, 4) == QMOE_EINVAL, "download inside a graph: %s", qmoe_last_error());
  CHECK(be->sync(be) == QMOE_EINVAL, "sync inside a graph: %s", qmoe_last_error());
  CHECK(be->graph_begin(be) == QMOE_EINVAL && strstr(qmoe_last_error(), "nest"), "nested graph_begin: %s",
        qmoe_last_error());
  REQUIRE(be->graph_end(be, 0) == 0, "graph_end(0): %s", qmoe_last_error());
  REQUIRE(be->sync(be) == 0 && be->download(be, b.z, 0, got, sizeof got) == 0, "download: %s", qmoe_last_error());
  CHECK(!memcmp(got, poison, sizeof got), "graph_end(be, 0) ran the recorded calls (z[0] = %g)", (double)got[0]);
  CHECK(be->graph_end(be, 1) == QMOE_EINVAL, "graph_end without graph_begin: %s", qmoe_last_error());

  /* A buffer the open graph uses, freed: graph_end refuses and nothing runs. */
  qmoe_buffer *tmp = NULL;
  REQUIRE(be->alloc(be, R * 4, &tmp) == 0, "alloc: %s", qmoe_last_error());
  REQUIRE(be->upload(be, b.z, 0, poison, sizeof poison) == 0 && be->sync(be) == 0, "upload: %s", qmoe_last_error());
  REQUIRE(be->graph_begin(be) == 0, "graph_begin: %s", qmoe_last_error());
  qmoe_stage_call c;
  qmoe_call_add(&c, R, b.y, tmp, b.z);
  REQUIRE(be->run(be, &c) == 0, "run: %s", qmoe_last_error());
  be->free_buf(be, tmp);
  CHECK(be->graph_end(be, 1) == QMOE_EINVAL && strstr(qmoe_last_error(), "freed"), "graph_end after a freed buffer: %s",
        qmoe_last_error());
  REQUIRE(be->sync(be) == 0 && be->download(be, b.z, 0, got, sizeof got) == 0, "download: %s", qmoe_last_error());
  CHECK(!memcmp(got, poison, sizeof got), "a graph whose buffer was freed ran (z[0] = %g)", (double)got[0]);

  /* Three lanes and a join, replayed with a new position and row, give the bytes of one-by-one launches; a lane
   * past QMOE_BRANCH_LANES is refused. */
  if (be->branch) {
    qmoe_buffer *y2 = NULL, *y3 = NULL;
    REQUIRE(!be->alloc(be, R * 4, &y2) && !be->alloc(be, R * 4, &y3), "alloc: %s", qmoe_last_error());
    for (int i = 0; i < 3; i++) {
      const int64_t pos = 7 + 11 * i;
      const size_t row = (size_t)(i + 1) % 4;
      float zg[R], zd[R];
      int32_t ig, id;
      REQUIRE(be->graph_begin(be) == 0 && lanes(be, &b, y2, y3, pos, row) == 0 && be->graph_end(be, 1) == 0,
              "lanes graph: %s", qmoe_last_error());
      REQUIRE(!be->download(be, b.z, 0, zg, sizeof zg) && !be->download(be, b.idx, 0, &ig, 4), "download: %s",
              qmoe_last_error());
      REQUIRE(lanes(be, &b, y2, y3, pos, row) == 0, "lanes direct: %s", qmoe_last_error());
      REQUIRE(!be->download(be, b.z, 0, zd, sizeof zd) && !be->download(be, b.idx, 0, &id, 4), "download: %s",
              qmoe_last_error());
      CHECK(!memcmp(zg, zd, sizeof zg) && ig == id, "lanes, step %d: the graph's output differs from the launches' "
            "(z[0] %g vs %g, argmax %d vs %d)", i, (double)zg[0], (double)zd[0], (int)ig, (int)id);
    }
    REQUIRE(be->graph_begin(be) == 0, "graph_begin: %s", qmoe_last_error());
    CHECK(be->branch(be, QMOE_BRANCH_LANES) == QMOE_EINVAL && strstr(qmoe_last_error(), "lanes"),
          "branch(%d): %s", QMOE_BRANCH_LANES, qmoe_last_error());
    REQUIRE(be->graph_end(be, 0) == 0, "graph_end(0): %s", qmoe_last_error());
    be->free_buf(be, y2);
    be->free_buf(be, y3);
  }

  qmoe_buffer *all[] = { b.x, b.w, b.W, b.xn, b.y, b.z, b.idx };
  for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) be->free_buf(be, all[i]);
  be->close(be);
}

/* The MoE calls, f32 weights: router_topk, then gate+up when GU, then moe_down. */
enum { ME = 8, MK = 2, MF = 64 };
typedef struct {
  qmoe_buffer *Wr, *x, *ids, *w, *Wg, *Wu, *hb, *Wd, *y;
} moe_bufs;
static int moe_calls(qmoe_backend *be, const moe_bufs *m, int gu) {
  qmoe_stage_call c;
  int rc;
  qmoe_call_router_topk(&c, H, ME, MK, m->Wr, m->x, m->ids, m->w);
  if ((rc = be->run(be, &c))) return rc;
  if (gu) {
    qmoe_call_moe_gate_up_swiglu(&c, H, MF, ME, MK, m->Wg, m->Wu, m->x, m->ids, m->hb);
    c.qtype = 0;
    if ((rc = be->run(be, &c))) return rc;
  }
  qmoe_call_moe_down(&c, H, MF, ME, MK, m->Wd, m->hb, m->ids, m->w, m->y);
  c.qtype = 0;
  return be->run(be, &c);
}

static void test_early(void) {
  qmoe_backend *be;
  bufs b = {0};
  if (!open_graph_backend(&be, &b)) return;
  /* rmsnorm(x, w -> xn), matvec(W, xn -> y), rope(y -> y), add(y, y -> z), argmax(z -> idx): each input is early
   * unless the launch before it writes it. */
  REQUIRE(be->graph_begin(be) == 0 && sequence(be, &b, 3, 1, 0) == 0, "recording: %s", qmoe_last_error());
  const uint64_t want[] = { 0x3, 0x1, 0x0, 0x0, 0x0 };
  for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
    uint64_t e = ~(uint64_t)0;
    CHECK(qmoe_cuda_graph_early_of(be, i, &e) == 0 && e == want[i], "launch %zu: early bits %#llx, expected %#llx", i,
          (unsigned long long)e, (unsigned long long)want[i]);
  }
  uint64_t e;
  CHECK(qmoe_cuda_graph_early_of(be, 5, &e) == QMOE_EINVAL, "launch 5 of 5: not refused");
  REQUIRE(be->graph_end(be, 0) == 0, "graph_end(0): %s", qmoe_last_error());
  CHECK(qmoe_cuda_graph_early_of(be, 0, &e) == QMOE_EINVAL, "no recording: not refused");
  qmoe_buffer *all[] = { b.x, b.w, b.W, b.xn, b.y, b.z, b.idx };
  for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) be->free_buf(be, all[i]);

  /* moe_down after router_topk (its ids written by the launch before) and after gate+up, as graphs and as
   * launches on the stream: the same bytes. */
  static float Wr[ME * H], xm[H], Wg[ME * MF * H], Wu[ME * MF * H], Wd[ME * H * MF];
  for (int i = 0; i < ME * H; i++) Wr[i] = (float)t_rand_normal() * 0.1f;
  for (int i = 0; i < H; i++) xm[i] = (float)t_rand_normal();
  for (int i = 0; i < ME * MF * H; i++) Wg[i] = (float)t_rand_normal() * 0.1f, Wu[i] = (float)t_rand_normal() * 0.1f;
  for (int i = 0; i < ME * H * MF; i++) Wd[i] = (float)t_rand_normal() * 0.1f;
  moe_bufs m = {0};
  REQUIRE(!be->alloc(be, sizeof Wr, &m.Wr) && !be->alloc(be, sizeof xm, &m.x) && !be->alloc(be, MK * 4, &m.ids) &&
              !be->alloc(be, MK * 4, &m.w) && !be->alloc(be, sizeof Wg, &m.Wg) && !be->alloc(be, sizeof Wu, &m.Wu) &&
              !be->alloc(be, MK * MF * 4, &m.hb) && !be->alloc(be, sizeof Wd, &m.Wd) && !be->alloc(be, H * 4, &m.y),
          "alloc: %s", qmoe_last_error());
  REQUIRE(!be->upload(be, m.Wr, 0, Wr, sizeof Wr) && !be->upload(be, m.x, 0, xm, sizeof xm) &&
              !be->upload(be, m.Wg, 0, Wg, sizeof Wg) && !be->upload(be, m.Wu, 0, Wu, sizeof Wu) &&
              !be->upload(be, m.Wd, 0, Wd, sizeof Wd),
          "upload: %s", qmoe_last_error());
  for (int gu = 1; gu >= 0; gu--) {
    static const float poison[H] = { 12345.0f };
    float yg[H], yd[H];
    REQUIRE(be->upload(be, m.y, 0, poison, sizeof poison) == 0, "upload: %s", qmoe_last_error());
    REQUIRE(be->graph_begin(be) == 0 && moe_calls(be, &m, gu) == 0, "moe recording: %s", qmoe_last_error());
    uint64_t ed = 0;
    REQUIRE(qmoe_cuda_graph_early_of(be, gu ? 2 : 1, &ed) == 0, "early: %s", qmoe_last_error());
    CHECK(((ed >> QMOE_B_MOE_DOWN_IDS) & 1) == (uint64_t)gu && ((ed >> QMOE_B_MOE_DOWN_WD) & 1) &&
              ((ed >> QMOE_B_MOE_DOWN_H) & 1) == (uint64_t)!gu,
          "moe_down after %s: early bits %#llx", gu ? "gate+up" : "router_topk", (unsigned long long)ed);
    REQUIRE(be->graph_end(be, 1) == 0 && be->download(be, m.y, 0, yg, sizeof yg) == 0, "moe graph: %s",
            qmoe_last_error());
    REQUIRE(be->upload(be, m.y, 0, poison, sizeof poison) == 0 && moe_calls(be, &m, gu) == 0 &&
                be->download(be, m.y, 0, yd, sizeof yd) == 0,
            "moe direct: %s", qmoe_last_error());
    int finite = 1;
    for (int i = 0; i < H; i++) finite &= yd[i] == yd[i] && yd[i] != 12345.0f;
    CHECK(finite && !memcmp(yg, yd, sizeof yg), "moe_down after %s: the graph's y differs from the launches' (y[0] %g "
          "vs %g)", gu ? "gate+up" : "router_topk", (double)yg[0], (double)yd[0]);
  }
  qmoe_buffer *mall[] = { m.Wr, m.x, m.ids, m.w, m.Wg, m.Wu, m.hb, m.Wd, m.y };
  for (size_t i = 0; i < sizeof mall / sizeof mall[0]; i++) be->free_buf(be, mall[i]);
  be->close(be);
}

int main(void) {
  t_seed();
  RUN_NAMED("cuda_graph", test_graph);
  RUN_NAMED("cuda_graph_early", test_early);
  return T_DONE();
}
