/* backend.h: the one interface the CPU reference, Vulkan and CUDA backends implement: device buffers and
 * one call per stage of docs/stages.md, dispatched by (stage, qtype, accumulator). */
#ifndef QMOE_BACKEND_H
#define QMOE_BACKEND_H
#include <stddef.h>
#include <stdint.h>

/* Stage ids: the order of contracts/stages/ is mirrored by generated/c/stage_table.c, and a test checks
 * that this enum and the contracts agree (name, param lists, buffer lists). */
typedef enum {
  QMOE_STAGE_MATVEC = 0,
  QMOE_STAGE_MOE_GATE_UP_SWIGLU,
  QMOE_STAGE_MOE_DOWN,
  QMOE_STAGE_ROUTER_TOPK,
  QMOE_STAGE_RMSNORM,
  QMOE_STAGE_QK_NORM,
  QMOE_STAGE_ROPE_NEOX,
  QMOE_STAGE_KV_STORE,
  QMOE_STAGE_ATTENTION,
  QMOE_STAGE_ADD,
  QMOE_STAGE_ARGMAX,
  QMOE_STAGE_COUNT
} qmoe_stage;

typedef enum { QMOE_ACC_F32 = 0, QMOE_ACC_F64 = 1, QMOE_ACC_COUNT } qmoe_acc;

enum { QMOE_STAGE_MAX_PARAMS = 8, QMOE_STAGE_MAX_FPARAMS = 4, QMOE_STAGE_MAX_BUFS = 8 };

typedef struct qmoe_buffer qmoe_buffer; /* backend-owned memory (device memory on GPUs) */

/* One stage invocation. Integer params p[] and float params f[] are in the order the stage contract lists
 * them; buffers are the contract's inputs then outputs, in order (see docs/stages.md):
 *   matvec               p: rows, cols            buf: W, x, y
 *   moe_gate_up_swiglu   p: H, F, E, K            buf: Wg, Wu, x, ids, h
 *   moe_down             p: H, F, E, K            buf: Wd, h, ids, w, y
 *   router_topk          p: H, E, K               buf: Wr, x, ids, w
 *   rmsnorm              p: n        f: eps       buf: x, w, y
 *   qk_norm              p: nh, D    f: eps       buf: x, w, y
 *   rope_neox            p: nh, D, pos  f: theta  buf: x, y        (y may be x)
 *   kv_store             p: nkv, D, pos, ctx      buf: k, v, Kc, Vc
 *   attention            p: nh, nkv, D, n_kv, ctx buf: q, Kc, Vc, o
 *   add                  p: n                     buf: a, b, y     (y may be a)
 *   argmax               p: n                     buf: x, idx
 * qtype is the GGUF type id of the quantized weight (stages that vary by qtype), else -1. */
typedef struct {
  qmoe_stage stage;
  int qtype;
  qmoe_acc acc;
  int64_t p[QMOE_STAGE_MAX_PARAMS];
  double f[QMOE_STAGE_MAX_FPARAMS];
  qmoe_buffer *buf[QMOE_STAGE_MAX_BUFS];
  size_t off[QMOE_STAGE_MAX_BUFS]; /* byte offset into each buffer */
  const char *tensor;              /* name of the weight tensor, for error messages (may be NULL) */
} qmoe_stage_call;

typedef struct qmoe_backend qmoe_backend;
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
