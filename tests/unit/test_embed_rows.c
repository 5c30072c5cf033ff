/* test_embed_rows.c: the out-of-range rule of contracts/stages/embed_rows.yaml on every backend that opens here:
 * the CPU reference refuses an id outside [0, rows) with QMOE_EINVAL naming it; a GPU kernel reads nothing and
 * writes NaN to all of y. An id in range gives the row bit for bit (f32 weights decode to themselves). */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include "../harness.h"
#include "backend.h"
#include "qmoe.h"

enum { ROWS = 5, COLS = 96 };

static const char *backend_name;

static void test_ids(void) {
  qmoe_backend *be = NULL;
  if (qmoe_backend_open(backend_name, &be)) SKIP("no %s device: %s", backend_name, qmoe_last_error());
  float W[ROWS * COLS], y[COLS];
  for (int i = 0; i < ROWS * COLS; i++) W[i] = (float)t_rand_normal();
  qmoe_buffer *bw = NULL, *bid = NULL, *by = NULL;
  REQUIRE(be->alloc(be, sizeof W, &bw) == 0 && be->alloc(be, 4, &bid) == 0 && be->alloc(be, sizeof y, &by) == 0,
          "alloc: %s", qmoe_last_error());
  REQUIRE(be->upload(be, bw, 0, W, sizeof W) == 0, "upload: %s", qmoe_last_error());
  const int32_t ids[] = { 3, 0, ROWS - 1, ROWS, -1, INT32_MAX };
  for (size_t t = 0; t < sizeof ids / sizeof ids[0]; t++) {
    for (int acc = 0; acc <= QMOE_ACC_F64; acc++) { /* its accumulators (q8: row stages only) */
      qmoe_stage_call c;
      qmoe_call_embed_rows(&c, COLS, ROWS, bw, bid, by);
      c.qtype = 0; /* f32 */
      c.acc = (qmoe_acc)acc;
      c.tensor = "token_embd.weight";
      float poison[COLS];
      for (int i = 0; i < COLS; i++) poison[i] = 12345.0f;
      REQUIRE(be->upload(be, bid, 0, &ids[t], 4) == 0 && be->upload(be, by, 0, poison, sizeof poison) == 0, "upload");
      int rc = be->run(be, &c);
      if (rc == 0) rc = be->sync(be);
      int in_range = ids[t] >= 0 && ids[t] < ROWS;
      if (in_range) {
        CHECK(rc == 0, "%s: id %d: %s", backend_name, (int)ids[t], qmoe_last_error());
        CHECK(be->download(be, by, 0, y, sizeof y) == 0, "download: %s", qmoe_last_error());
        CHECK(!memcmp(y, W + (size_t)ids[t] * COLS, sizeof y), "%s: id %d: y is not row %d bit for bit", backend_name,
              (int)ids[t], (int)ids[t]);
      } else if (!strcmp(backend_name, "cpu")) {
        char want[64];
        snprintf(want, sizeof want, "id = %d is outside", (int)ids[t]);
        CHECK(rc == QMOE_EINVAL && strstr(qmoe_last_error(), want), "cpu: id %d gave %d: %s", (int)ids[t], rc,
              qmoe_last_error());
      } else {
        CHECK(rc == 0, "%s: id %d: %s", backend_name, (int)ids[t], qmoe_last_error());
        CHECK(be->download(be, by, 0, y, sizeof y) == 0, "download: %s", qmoe_last_error());
        int all_nan = 1;
        for (int i = 0; i < COLS; i++) all_nan &= isnan(y[i]);
        CHECK(all_nan, "%s: id %d outside [0, %d): y is not all NaN (y[0] = %g)", backend_name, (int)ids[t], ROWS,
              (double)y[0]);
      }
    }
  }
  be->free_buf(be, bw);
  be->free_buf(be, bid);
  be->free_buf(be, by);
  be->close(be);
}

int main(void) {
  t_seed();
  const char *names[] = { "cpu", "vulkan", "cuda" };
  for (int i = 0; i < 3; i++) {
    backend_name = names[i];
    char name[64];
    snprintf(name, sizeof name, "embed_rows_ids/%s", names[i]);
    RUN_NAMED(name, test_ids);
  }
  return T_DONE();
}
