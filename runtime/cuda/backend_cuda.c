/* backend_cuda.c: the "cuda" backend — backend.h over device memory (cuMemAlloc) and one stream; each stage call
 * launches the embedded kernel of its (stage, qtype, acc) variant, compiled by NVRTC on first use. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "backend.h"
#include "cuda_internal.h"
#include "qmoe.h"
#include "stage_table.h"

/* Every allocation is rounded up to this, so the 16-byte loads of a row kernel, which may reach up to 15 bytes
 * past a row's end, stay inside the allocation (cuMemAlloc returns addresses aligned to at least 256). */
enum { ALLOC_ROUND = 256 };

struct qmoe_buffer {
  CUdeviceptr ptr;
  size_t size; /* bytes asked for (what bounds checks use) */
};

typedef struct {
  qmoe_cuda_ctx ctx;
  size_t nvar;
  qmoe_cuda_variant *vars;
  CUmodule *mods;  /* per variant, NULL until first use */
  CUfunction *fns;
  const char *last_kernel; /* entry of the last launch, for errors reported by a later sync */
  CUdeviceptr ws;          /* workspace of split attention (args.buf[7]); zeroed when (re)allocated */
  size_t ws_size;
  int sync_each;           /* QMOE_CUDA_SYNC=1: synchronize after every launch (names a faulting kernel) */
} cuda_impl;

static cuda_impl *impl_of(qmoe_backend *be) { return be->impl; }

qmoe_cuda_ctx *qmoe_backend_cuda_ctx(qmoe_backend *be) {
  return be && be->name && !strcmp(be->name, "cuda") ? &impl_of(be)->ctx : NULL;
}

/* ---- buffers ----------------------------------------------------------------------------------------- */

static int cu_alloc(qmoe_backend *be, size_t bytes, qmoe_buffer **out) {
  cuda_impl *im = impl_of(be);
  *out = NULL;
  int rc = qmoe_cuda_ctx_use(&im->ctx);
  if (rc) return rc;
  if (bytes > SIZE_MAX - ALLOC_ROUND) {
    qmoe_set_error("cuda backend: cannot allocate %zu bytes", bytes);
    return QMOE_EINVAL;
  }
  size_t rounded = (bytes + ALLOC_ROUND - 1) / ALLOC_ROUND * ALLOC_ROUND;
  if (rounded == 0) rounded = ALLOC_ROUND;
  qmoe_buffer *b = qmoe_alloc(sizeof *b, "cuda backend");
  if (!b) return QMOE_ENOMEM;
  char what[96];
  snprintf(what, sizeof what, "cuMemAlloc(%zu bytes)", rounded);
  if ((rc = qmoe_cuda_check(im->ctx.d, im->ctx.d->MemAlloc(&b->ptr, rounded), what, NULL))) {
    free(b);
    return rc;
  }
  b->size = bytes;
  *out = b;
  return 0;
}

static void cu_free_buf(qmoe_backend *be, qmoe_buffer *b) {
  if (!b) return;
  cuda_impl *im = impl_of(be);
  if (qmoe_cuda_ctx_use(&im->ctx) == 0) im->ctx.d->MemFree(b->ptr);
  free(b);
}

static int in_bounds(const char *what, const qmoe_buffer *b, size_t off, size_t n) {
  if (!b) {
    qmoe_set_error("cuda backend: %s: buffer is NULL", what);
    return QMOE_EINVAL;
  }
  if (off > b->size || n > b->size - off) {
    qmoe_set_error("cuda backend: %s of %zu bytes at offset %zu is outside the buffer of %zu bytes", what, n, off,
                   b->size);
    return QMOE_EINVAL;
  }
  return 0;
}

/* Error of the stream, naming the last kernel launched (faults are reported asynchronously). */
static int stream_sync(cuda_impl *im, const char *why) {
  const qmoe_cuda_driver *d = im->ctx.d;
  CUresult r = d->StreamSynchronize(im->ctx.stream);
  if (r == CUDA_SUCCESS) return 0;
  char call[160];
  snprintf(call, sizeof call, "cuStreamSynchronize (%s; last kernel launched: %s)", why,
           im->last_kernel ? im->last_kernel : "none");
  return qmoe_cuda_check(d, r, call, NULL);
}

static int cu_upload(qmoe_backend *be, qmoe_buffer *b, size_t off, const void *src, size_t n) {
  cuda_impl *im = impl_of(be);
  int rc = in_bounds("upload", b, off, n);
  if (rc || n == 0) return rc;
  if ((rc = qmoe_cuda_ctx_use(&im->ctx))) return rc;
  /* From pageable memory the copy returns once SRC has been staged; it is ordered with kernels on the stream. */
  return qmoe_cuda_check(im->ctx.d, im->ctx.d->MemcpyHtoDAsync(b->ptr + off, src, n, im->ctx.stream),
                         "cuMemcpyHtoDAsync (upload)", NULL);
}

static int cu_download(qmoe_backend *be, qmoe_buffer *b, size_t off, void *dst, size_t n) {
  cuda_impl *im = impl_of(be);
  int rc = in_bounds("download", b, off, n);
  if (rc || n == 0) return rc;
  if ((rc = qmoe_cuda_ctx_use(&im->ctx))) return rc;
  if ((rc = qmoe_cuda_check(im->ctx.d, im->ctx.d->MemcpyDtoHAsync(dst, b->ptr + off, n, im->ctx.stream),
                            "cuMemcpyDtoHAsync (download)", NULL)))
    return rc;
  return stream_sync(im, "download");
}

static int cu_sync(qmoe_backend *be) {
  cuda_impl *im = impl_of(be);
  int rc = qmoe_cuda_ctx_use(&im->ctx);
  return rc ? rc : stream_sync(im, "sync");
}

/* ---- variants ---------------------------------------------------------------------------------------- */

static const char *acc_name(qmoe_acc a) { return a == QMOE_ACC_F64 ? "f64" : "f32"; }

/* The variant of (stage, qtype, acc), or QMOE_EUNSUPPORTED naming the stage, the tensor and the qtype and
 * listing what exists: never another format's or accumulator's kernel. */
static int find_variant(cuda_impl *im, const qmoe_stage_info *si, const qmoe_stage_call *c, size_t *out) {
  char have[512] = "";
  size_t len = 0;
  int acc_missing = 0;
  for (size_t i = 0; i < im->nvar; i++) {
    const qmoe_cuda_variant *v = &im->vars[i];
    if (strcmp(v->stage, si->name) != 0) continue;
    int q_ok = si->varies_by_qtype ? v->ggml_type == c->qtype : c->qtype == -1;
    int a_ok = si->varies_by_acc ? !strcmp(v->acc, acc_name(c->acc)) : 1;
    if (q_ok && a_ok) {
      *out = i;
      return 0;
    }
    if (q_ok) acc_missing = 1;
    if (len < sizeof have - 40)
      len += (size_t)snprintf(have + len, sizeof have - len, "%s%s%s%s", len ? ", " : "", v->qtype,
                              si->varies_by_acc ? "/" : "", si->varies_by_acc ? v->acc : "");
  }
  const char *tensor = c->tensor ? c->tensor : si->buf_names[0];
  if (!si->varies_by_qtype && c->qtype != -1) {
    qmoe_set_error("cuda backend: stage %s does not vary by qtype, but the call for tensor '%s' passes qtype %s; pass -1",
                   si->name, tensor, qmoe_qtype_name(c->qtype));
    return QMOE_EINVAL;
  }
  if (acc_missing || !si->varies_by_qtype)
    qmoe_set_error("cuda backend: stage %s has no %s-accumulator CUDA kernel for tensor '%s' (qtype %s); it has: %s",
                   si->name, acc_name(c->acc), tensor, si->varies_by_qtype ? qmoe_qtype_name(c->qtype) : "-",
                   have[0] ? have : "none");
  else
    qmoe_set_error("cuda backend: stage %s has no CUDA kernel for tensor '%s' of qtype %s (ggml type %d); kernels "
                   "exist for: %s",
                   si->name, tensor, qmoe_qtype_name(c->qtype), c->qtype, have[0] ? have : "none");
  return QMOE_EUNSUPPORTED;
}

static int get_function(cuda_impl *im, size_t vi, CUfunction *fn) {
  if (im->fns[vi]) {
    *fn = im->fns[vi];
    return 0;
  }
  const qmoe_cuda_variant *v = &im->vars[vi];
  CUmodule mod;
  int rc = qmoe_cuda_module_load(&im->ctx, v->src, v->entry, &mod);
  if (rc) return rc;
  if ((rc = qmoe_cuda_check(im->ctx.d, im->ctx.d->ModuleGetFunction(fn, mod, v->entry), "cuModuleGetFunction",
                            v->entry))) {
    im->ctx.d->ModuleUnload(mod);
    return rc;
  }
  im->mods[vi] = mod;
  im->fns[vi] = *fn;
  return 0;
}

/* ---- run --------------------------------------------------------------------------------------------- */

/* The one kernel argument: struct qmoe_args of every generated CUDA file, field for field. */
typedef struct {
  uint64_t buf[QMOE_STAGE_MAX_BUFS];
  int64_t p[QMOE_STAGE_MAX_PARAMS];
  double f[QMOE_STAGE_MAX_FPARAMS];
} kernel_args;

/* A workspace of at least N bytes at args.buf[7], zeroed when it is (re)allocated (the kernels' counters start
 * at 0 and reset themselves). */
static int workspace(cuda_impl *im, size_t n, uint64_t *out) {
  const qmoe_cuda_driver *d = im->ctx.d;
  if (n > im->ws_size) {
    int rc;
    if (im->ws) {
      if ((rc = stream_sync(im, "workspace"))) return rc;
      d->MemFree(im->ws);
      im->ws = 0;
      im->ws_size = 0;
    }
    size_t sz = (n + 4095) / 4096 * 4096;
    char what[96];
    snprintf(what, sizeof what, "cuMemAlloc(%zu bytes, attention workspace)", sz);
    if ((rc = qmoe_cuda_check(d, d->MemAlloc(&im->ws, sz), what, NULL))) return rc;
    im->ws_size = sz;
    if ((rc = qmoe_cuda_check(d, d->MemsetD8Async(im->ws, 0, sz, im->ctx.stream), "cuMemsetD8Async (workspace)",
                              NULL)))
      return rc;
  }
  *out = (uint64_t)im->ws;
  return 0;
}

static int cu_run(qmoe_backend *be, const qmoe_stage_call *c) {
  cuda_impl *im = impl_of(be);
  const qmoe_stage_info *si = (unsigned)c->stage < QMOE_STAGE_COUNT ? qmoe_stage_info_get(c->stage) : NULL;
  if (!si) {
    qmoe_set_error("cuda backend: unknown stage id %d (valid: 0..%d)", (int)c->stage, QMOE_STAGE_COUNT - 1);
    return QMOE_EINVAL;
  }
  if (c->acc != QMOE_ACC_F32 && c->acc != QMOE_ACC_F64) {
    qmoe_set_error("cuda backend: stage %s: unknown accumulator %d (valid: QMOE_ACC_F32, QMOE_ACC_F64)", si->name,
                   (int)c->acc);
    return QMOE_EINVAL;
  }
  size_t vi;
  int rc = find_variant(im, si, c, &vi);
  if (rc) return rc;
  const qmoe_cuda_variant *v = &im->vars[vi];
  /* Params and buffer sizes: the stage contract's checks (runtime/stages/stage_check.c). */
  size_t need[QMOE_STAGE_MAX_BUFS], have[QMOE_STAGE_MAX_BUFS] = {0};
  if ((rc = qmoe_stage_check(c, need))) return rc;
  for (int i = 0; i < si->n_inputs + si->n_outputs; i++)
    if (c->buf[i]) have[i] = c->off[i] > c->buf[i]->size ? 0 : c->buf[i]->size - c->off[i];
  if ((rc = qmoe_stage_check_buffers("cuda backend", c, need, have))) return rc;
  kernel_args args;
  memset(&args, 0, sizeof args);
  for (int i = 0; i < si->n_inputs + si->n_outputs; i++) args.buf[i] = (uint64_t)(c->buf[i]->ptr + c->off[i]);
  memcpy(args.p, c->p, sizeof args.p);
  memcpy(args.f, c->f, sizeof args.f);

  /* Grid and workspace: the stage's launch function (generated/c/cuda_launch.c). */
  const qmoe_cuda_launch_env env = { v->rows_per_block > 0 ? v->rows_per_block : 1, v->threads,
                                     im->ctx.sm_count > 0 ? im->ctx.sm_count : 1, c->acc == QMOE_ACC_F64 ? 8 : 4 };
  qmoe_cuda_launch L;
  if ((rc = qmoe_cuda_launch_table[c->stage](&env, c->p, &L))) return rc;
  const int64_t gx = L.grid[0], gy = L.grid[1];
  if (gx < 1 || gx > INT32_MAX || gy < 1 || gy > 65535) {
    qmoe_set_error("cuda backend: stage %s: grid %lld × %lld is outside CUDA's limits", si->name, (long long)gx,
                   (long long)gy);
    return QMOE_EUNSUPPORTED;
  }
  if (L.workspace > 0 && ((rc = qmoe_cuda_ctx_use(&im->ctx)) ||
                          (rc = workspace(im, L.workspace, &args.buf[QMOE_STAGE_MAX_BUFS - 1]))))
    return rc;
  if ((rc = qmoe_cuda_ctx_use(&im->ctx))) return rc;
  CUfunction fn;
  if ((rc = get_function(im, vi, &fn))) return rc;
  void *params[] = { &args };
  rc = qmoe_cuda_check(im->ctx.d,
                       im->ctx.d->LaunchKernel(fn, (unsigned)gx, (unsigned)gy, 1, (unsigned)v->threads, 1, 1, 0,
                                               im->ctx.stream, params, NULL),
                       "cuLaunchKernel", v->entry);
  if (rc) return rc;
  im->last_kernel = v->entry;
  return im->sync_each ? stream_sync(im, "QMOE_CUDA_SYNC=1") : 0;
}

/* ---- open / close ------------------------------------------------------------------------------------ */

static void cu_close(qmoe_backend *be) {
  if (!be) return;
  cuda_impl *im = impl_of(be);
  if (im) {
    if (im->ctx.ctx && qmoe_cuda_ctx_use(&im->ctx) == 0) {
      im->ctx.d->StreamSynchronize(im->ctx.stream);
      for (size_t i = 0; i < im->nvar; i++)
        if (im->mods[i]) im->ctx.d->ModuleUnload(im->mods[i]);
      if (im->ws) im->ctx.d->MemFree(im->ws);
    }
    qmoe_cuda_ctx_close(&im->ctx);
    free(im->vars);
    free(im->mods);
    free(im->fns);
    free(im);
  }
  free(be);
}

int qmoe_backend_cuda_open(qmoe_backend **out) {
  *out = NULL;
  qmoe_backend *be = qmoe_alloc(sizeof *be, "cuda backend");
  cuda_impl *im = be ? qmoe_alloc(sizeof *im, "cuda backend") : NULL;
  if (!im) {
    free(be);
    return QMOE_ENOMEM;
  }
  be->name = "cuda";
  be->impl = im;
  int rc = qmoe_cuda_ctx_open(&im->ctx);
  if (rc) {
    cu_close(be);
    return rc;
  }
  im->nvar = qmoe_embedded_cuda_count;
  if (im->nvar == 0) {
    cu_close(be);
    qmoe_set_error("cuda backend: libqmoe embeds no CUDA kernels (generated/cuda/*.cu were not built in)");
    return QMOE_EUNSUPPORTED;
  }
  im->vars = qmoe_alloc(im->nvar * sizeof *im->vars, "cuda backend");
  im->mods = qmoe_alloc(im->nvar * sizeof *im->mods, "cuda backend");
  im->fns = qmoe_alloc(im->nvar * sizeof *im->fns, "cuda backend");
  if (!im->vars || !im->mods || !im->fns) {
    cu_close(be);
    return QMOE_ENOMEM;
  }
  for (size_t i = 0; i < im->nvar; i++) {
    if ((rc = qmoe_cuda_variant_parse(qmoe_embedded_cuda[i].name, (const char *)qmoe_embedded_cuda[i].data,
                                      &im->vars[i]))) {
      cu_close(be);
      return rc;
    }
  }
  const char *s = getenv("QMOE_CUDA_SYNC");
  im->sync_each = s && s[0] && strcmp(s, "0") != 0;
  be->alloc = cu_alloc;
  be->free_buf = cu_free_buf;
  be->upload = cu_upload;
  be->download = cu_download;
  be->run = cu_run;
  be->sync = cu_sync;
  be->close = cu_close;
  *out = be;
  return 0;
}
