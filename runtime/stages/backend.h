/* backend.h: the one interface the CPU reference, Vulkan and CUDA backends implement: device buffers and
 * one call per stage of docs/stages.md, dispatched by (stage, qtype, accumulator). */
#ifndef QMOE_BACKEND_H
#define QMOE_BACKEND_H
#include <stddef.h>
#include <stdint.h>

/* The stages: the qmoe_stage enum (QMOE_STAGE_<NAME>, each contract's `order`) and the index names of each
 * stage's params and buffers (QMOE_P_<STAGE>_<PARAM>, QMOE_F_<STAGE>_<FPARAM>, QMOE_B_<STAGE>_<BUF>), generated
 * from contracts/stages/ by codegen/gen_stages.lua. */
#include "stage_ids.h"

/* Accumulator variants (docs/stages.md): f32, f64, and q8 = the f32 variant on the input vector rounded to
 * 8-bit values per group of 32 (docs/q8.md; only the row stages of integer block formats have it). */
typedef enum { QMOE_ACC_F32 = 0, QMOE_ACC_F64 = 1, QMOE_ACC_Q8 = 2, QMOE_ACC_COUNT } qmoe_acc;

/* "f32", "f64", "q8"; "?" for anything else. */
const char *qmoe_acc_name(int acc);
/* The accumulator named NAME ("f32", "f64", "q8"), or -1. */
int qmoe_acc_by_name(const char *name);

enum { QMOE_STAGE_MAX_PARAMS = 8, QMOE_STAGE_MAX_FPARAMS = 4, QMOE_STAGE_MAX_BUFS = 8 };

typedef struct qmoe_buffer qmoe_buffer; /* backend-owned memory (device memory on GPUs) */

/* One stage invocation. Integer params p[] and float params f[] are in the order the stage contract lists
 * them; buffers are the contract's inputs then outputs, in order (docs/stages.md). Build one with the typed
 * builder of its stage (stage_calls.h, below), e.g. qmoe_call_moe_down(&c, H, F, E, K, Wd, h, ids, w, y), then
 * set qtype, acc, off[QMOE_B_...] and tensor where they apply.
 * qtype is the GGUF type id of the quantized weight (stages that vary by qtype), else -1.
 * tokens: how many tokens the call carries (builders set 1; 0 counts as 1). A call for T tokens is, by
 * definition, T one-token calls in order: token t's with the contract's per-token buffers (tokens.buffers)
 * at off[i] + t × their one-token size and its advancing params (tokens.params) + t. Stages without `tokens`
 * in their contract take one token. Backends may compute the T tokens together (one read of a weight for
 * all of them), but the results are those of the T calls. */
typedef struct {
  qmoe_stage stage;
  int qtype;
  qmoe_acc acc;
  int64_t tokens;
  int64_t p[QMOE_STAGE_MAX_PARAMS];
  double f[QMOE_STAGE_MAX_FPARAMS];
  qmoe_buffer *buf[QMOE_STAGE_MAX_BUFS];
  size_t off[QMOE_STAGE_MAX_BUFS]; /* byte offset into each buffer */
  const char *tensor;              /* name of the weight tensor, for error messages (may be NULL) */
} qmoe_stage_call;

/* The typed builders qmoe_call_<stage>(call, int params..., float params..., inputs..., outputs...). */
#include "stage_calls.h"

/* Checks a call against its stage contract, ignoring c->buf and c->off (runtime/stages/stage_check.c): the stage id,
 * the accumulator, the qtype (listed by the contract and known to qmoe), every int param within [min, 2^31-1],
 * every float param finite, the contract's `requires` rules, and a qtype buffer's rows a whole number of
 * blocks. Gives the bytes each buffer needs (SIZE_MAX when that overflows), in contract order; unused slots
 * are 0. Returns 0, QMOE_EUNSUPPORTED for a qtype the stage has no variant for (the message names the stage,
 * the tensor and the qtype) or QMOE_EINVAL. Every backend's run() calls it first. */
int qmoe_stage_check(const qmoe_stage_call *c, size_t need[QMOE_STAGE_MAX_BUFS]);

/* The most tokens one call carries (CUDA's grid.z limit). */
enum { QMOE_STAGE_MAX_TOKENS = 65535 };

/* Token T's one-token call of the (checked) call C: tokens = 1, per-token buffers' offsets advanced by T of
 * their one-token sizes, advancing params by T. A backend that computes tokens one by one runs these. */
void qmoe_stage_token_call(const qmoe_stage_call *c, int64_t t, qmoe_stage_call *out);
/* Bytes of one token's slice of buffer BUF of C (0: the buffer is not per token). */
size_t qmoe_stage_token_bytes(const qmoe_stage_call *c, int buf);

/* Checks the call's buffers against NEED (from qmoe_stage_check): each must be non-NULL, HAVE[i] (the bytes
 * buffer i holds from c->off[i]; 0 when the offset is past its end) at least NEED[i], and an f32/i32 buffer's
 * offset a multiple of 4. QMOE_EINVAL with a message that starts with WHO ("cuda backend"). */
int qmoe_stage_check_buffers(const char *who, const qmoe_stage_call *c, const size_t need[QMOE_STAGE_MAX_BUFS],
                             const size_t have[QMOE_STAGE_MAX_BUFS]);

/* Name of a GGUF type id for messages ("q4_k", or "ggml type 7" when qmoe has no codec for it). The
 * returned string is valid until the next call from this thread. */
const char *qmoe_qtype_name(int ggml_type);

typedef struct qmoe_backend qmoe_backend;
enum { QMOE_BRANCH_JOIN = -1, QMOE_BRANCH_LANES = 3 }; /* backend.branch(): the end of the lanes; how many there may be */
struct qmoe_backend {
  const char *name; /* "cpu", "vulkan", "cuda" */
  int (*alloc)(qmoe_backend *, size_t bytes, qmoe_buffer **out);
  void (*free_buf)(qmoe_backend *, qmoe_buffer *);
  int (*upload)(qmoe_backend *, qmoe_buffer *, size_t off, const void *src, size_t n);
  int (*download)(qmoe_backend *, qmoe_buffer *, size_t off, void *dst, size_t n);
  /* Enqueues (GPU) or runs (CPU) one stage. An unsupported (stage, qtype, acc) is QMOE_EUNSUPPORTED with a
   * message naming the stage, the tensor and the qtype — never a fallback to another format's kernel. */
  int (*run)(qmoe_backend *, const qmoe_stage_call *);
  int (*sync)(qmoe_backend *); /* waits for everything enqueued */
  /* Optional (NULL where a backend does not offer it): a call sequence recorded once and replayed, so that a
   * decode step costs one submission instead of one launch per stage. Between graph_begin() and graph_end(),
   * run() checks each call as always but records it instead of enqueuing it; graph_end(be, 1) enqueues the
   * whole sequence as one unit (it completes like any enqueued work: download/sync wait for it). When the
   * sequence has the same shape as the one last recorded — the same stages and kernels on the same buffer
   * objects, in the same order — the backend replays its recording (CUDA: one instantiated graph; Vulkan: one
   * command buffer) with only what changed patched in: params, buffer offsets, grid sizes. A different shape
   * is recorded anew. graph_end(be, 0) drops what was recorded (an error path). upload, download and sync
   * between the two are QMOE_EINVAL; so is a graph_begin() inside another. free_buf() of a buffer that a call
   * of the open graph uses makes its graph_end(be, 1) QMOE_EINVAL (nothing of it runs); a kept recording that
   * uses a freed buffer is not replayed but recorded anew. */
  int (*graph_begin)(qmoe_backend *);
  int (*graph_end)(qmoe_backend *, int submit);
  /* Optional: which earlier calls of a recording the calls that follow depend on, so a backend may run
   * several chains of calls at once. branch(be, l) after a call F (the fork), 0 <= l < QMOE_BRANCH_LANES: the calls
   * that follow, until the next branch(), form lane l, each after the one before it in its lane and the first
   * after F; the lanes may run concurrently, so none may write what another reads or writes.
   * branch(be, QMOE_BRANCH_JOIN): the next call runs after the last call of every lane, and the calls after it
   * form one chain again. A hint: outside a recording, or where a backend runs one call after another, it
   * changes nothing, and the results are the same bits either way. */
  int (*branch)(qmoe_backend *, int lane);
  void (*close)(qmoe_backend *);
  void *impl;
};

/* Opens "cpu", "vulkan" or "cuda". A missing driver/device is QMOE_ENODEV with a plain message
 * ("no CUDA driver found", "no Vulkan device found"). */
int qmoe_backend_open(const char *name, qmoe_backend **out);
/* Backend constructors (each in its own file). */
int qmoe_backend_cpu_open(qmoe_backend **out);
int qmoe_backend_vulkan_open(qmoe_backend **out);
int qmoe_backend_cuda_open(qmoe_backend **out);

#endif
