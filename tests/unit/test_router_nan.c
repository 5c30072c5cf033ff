/* test_router_nan.c: router_topk with NaN logits (a broken model) on every backend that opens here (cpu, vulkan,
 * cuda) and in every accumulator: the K chosen ids are still K distinct experts in [0, E) — never an unwritten
 * slot (the id buffer holds -1 before the call) — and the NaN reaches the weights, so the forward's finite checks see it.
 * One NaN logit, several, and all of them; each after a call with finite logits. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "../harness.h"
#include "backend.h"
#include "qmoe.h"

enum { H = 256, E = 128, K = 8 };

static const char *backend_name;

static int run_sync(qmoe_backend *be, const qmoe_stage_call *c) {
  int rc = be->run(be, c);
  return rc ? rc : be->sync(be);
}

static void test_backend(void) {
  qmoe_backend *be = NULL;
  if (qmoe_backend_open(backend_name, &be)) SKIP("no %s device: %s", backend_name, qmoe_last_error());
  float *wr = malloc((size_t)E * H * sizeof *wr), *x = malloc(H * sizeof *x), w[K];
  int32_t ids[K];
  REQUIRE(wr && x, "out of memory");
  qmoe_buffer *bwr = NULL, *bx = NULL, *bids = NULL, *bw = NULL;
  REQUIRE(be->alloc(be, (size_t)E * H * 4, &bwr) == 0 && be->alloc(be, H * 4, &bx) == 0 &&
              be->alloc(be, K * 4, &bids) == 0 && be->alloc(be, K * 4, &bw) == 0,
          "alloc: %s", qmoe_last_error());
  const int nan_rows[] = { 1, 5, E };
  for (int acc = 0; acc <= QMOE_ACC_F64; acc++) /* its accumulators (q8: row stages only) */
    for (int c = 0; c < 3; c++) {
      char what[96];
      snprintf(what, sizeof what, "%s acc %s, %d NaN logit(s)", backend_name, acc == QMOE_ACC_F64 ? "f64" : "f32",
               nan_rows[c]);
      for (size_t i = 0; i < (size_t)E * H; i++) wr[i] = (float)(0.1 * t_rand_normal());
      for (int i = 0; i < H; i++) x[i] = (float)t_rand_normal();
      qmoe_stage_call call;
      qmoe_call_router_topk(&call, H, E, K, bwr, bx, bids, bw);
      call.acc = (qmoe_acc)acc;
      /* first with finite logits, so the id buffer holds a real earlier choice */
      REQUIRE(be->upload(be, bwr, 0, wr, (size_t)E * H * 4) == 0 && be->upload(be, bx, 0, x, H * 4) == 0, "upload: %s",
              qmoe_last_error());
      REQUIRE(run_sync(be, &call) == 0, "%s: finite call: %s", what, qmoe_last_error());
      /* then rows of NaN weights (distinct random rows; all of them in the last case) */
      unsigned char is_nan[E] = { 0 };
      for (int n = 0; n < nan_rows[c];) {
        int e = nan_rows[c] == E ? n : (int)(t_rand_u64() % E);
        if (is_nan[e]) continue;
        is_nan[e] = 1, n++;
        for (int i = 0; i < H; i++) wr[(size_t)e * H + i] = NAN;
      }
      /* and -1 in the id slots, so a slot the kernel leaves unwritten shows */
      int32_t unset[K];
      for (int k = 0; k < K; k++) unset[k] = -1;
      REQUIRE(be->upload(be, bwr, 0, wr, (size_t)E * H * 4) == 0 && be->upload(be, bids, 0, unset, sizeof unset) == 0,
              "upload: %s", qmoe_last_error());
      REQUIRE(run_sync(be, &call) == 0, "%s: %s", what, qmoe_last_error());
      REQUIRE(be->download(be, bids, 0, ids, sizeof ids) == 0 && be->download(be, bw, 0, w, sizeof w) == 0,
              "download: %s", qmoe_last_error());
      unsigned char seen[E] = { 0 };
      int ok = 1, finite = 0;
      for (int k = 0; k < K; k++) {
        if (ids[k] < 0 || ids[k] >= E || seen[ids[k]]) ok = 0;
        else seen[ids[k]] = 1;
        finite += isfinite(w[k]) != 0;
      }
      CHECK(ok, "%s: ids %d %d %d %d %d %d %d %d are not %d distinct experts in [0, %d)", what, ids[0], ids[1], ids[2],
            ids[3], ids[4], ids[5], ids[6], ids[7], K, E);
      CHECK(finite < K, "%s: every weight is finite (w[0] = %g): the NaN was lost", what, (double)w[0]);
    }
  be->free_buf(be, bwr);
  be->free_buf(be, bx);
  be->free_buf(be, bids);
  be->free_buf(be, bw);
  free(wr), free(x);
  be->close(be);
}

int main(void) {
  t_seed();
  const char *names[] = { "cpu", "vulkan", "cuda" };
  for (int i = 0; i < 3; i++) {
    backend_name = names[i];
    char name[64];
    snprintf(name, sizeof name, "router_nan/%s", names[i]);
    RUN_NAMED(name, test_backend);
  }
  return T_DONE();
}
