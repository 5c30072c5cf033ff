/* bench_timers.h: device timers for `qmoe bench` — Vulkan timestamps (bench_vk.c) and CUDA events
 * (bench_cuda.c), each in its own file because the two runtimes' internal headers cannot share one. */
#ifndef QMOE_BENCH_TIMERS_H
#define QMOE_BENCH_TIMERS_H
#include "backend.h"

/* Vulkan: 0 when BE is the vulkan backend and its queue has timestamps. stop records the end timestamp
 * (the work recorded since the last synchronization must not be empty), synchronizes and reads. */
int bench_vk_start(qmoe_backend *be);
int bench_vk_stop(qmoe_backend *be, double *secs);
int bench_vk_is(qmoe_backend *be);
/* CUDA: a pair of events on the backend's stream; NULL when BE is not the cuda backend. */
typedef struct bench_cuda_timer bench_cuda_timer;
bench_cuda_timer *bench_cuda_new(qmoe_backend *be);
void bench_cuda_free(bench_cuda_timer *t);
int bench_cuda_start(bench_cuda_timer *t);
int bench_cuda_stop(bench_cuda_timer *t, double *secs); /* waits for the end event */

#endif
