/* bench_cuda.c: CUDA events for `qmoe bench` (bench_timers.h) on the cuda backend's stream. */
#include <stdlib.h>
#include "bench_timers.h"
#include "cuda_internal.h"

struct bench_cuda_timer {
  qmoe_cuda_ctx *ctx;
  CUevent e0, e1;
};

bench_cuda_timer *bench_cuda_new(qmoe_backend *be) {
  qmoe_cuda_ctx *ctx = qmoe_backend_cuda_ctx(be);
  if (!ctx) return NULL;
  bench_cuda_timer *t = calloc(1, sizeof *t);
  if (!t) return NULL;
  t->ctx = ctx;
  if (qmoe_cuda_event_create(ctx, &t->e0) || qmoe_cuda_event_create(ctx, &t->e1)) {
    bench_cuda_free(t);
    return NULL;
  }
  return t;
}

void bench_cuda_free(bench_cuda_timer *t) {
  if (!t) return;
  qmoe_cuda_event_destroy(t->ctx, t->e0);
  qmoe_cuda_event_destroy(t->ctx, t->e1);
  free(t);
}

int bench_cuda_start(bench_cuda_timer *t) { return qmoe_cuda_event_record(t->ctx, t->e0); }

int bench_cuda_stop(bench_cuda_timer *t, double *secs) {
  float ms;
  int rc = qmoe_cuda_event_record(t->ctx, t->e1);
  if (!rc) rc = qmoe_cuda_event_elapsed_ms(t->ctx, t->e0, t->e1, &ms);
  if (!rc) *secs = ms * 1e-3;
  return rc;
}
