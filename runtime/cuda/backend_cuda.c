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

/* The one kernel argument: struct qmoe_args of every generated CUDA file, field for field. */
typedef struct {
  uint64_t buf[QMOE_STAGE_MAX_BUFS];
  int64_t p[QMOE_STAGE_MAX_PARAMS];
  double f[QMOE_STAGE_MAX_FPARAMS];
  int64_t tokens; /* the call's tokens (>= 1) */
  /* Bit i: no launch that may run at the same time as this one writes buffer i, so the kernel may read it
   * before its grid wait (qmoe_grid_wait, docs/cuda.md "Graphs"): every input outside a graph (launches on the
   * stream run one after another); in a graph, the inputs that none of the launches it runs after (dep[])
   * writes. With programmatic edges a kernel's blocks start once every block of the one before has passed its
   * own wait, so everything earlier has completed: only the direct predecessors may still run. */
  uint64_t early;
} kernel_args;

/* One launch, as run() prepared it. */
typedef struct {
  CUfunction fn;
  unsigned gx, gy, gz, threads;
  int uses_ws; /* args.buf[7] is the workspace (a later call of the recording may have moved it) */
  int32_t dep[QMOE_BRANCH_LANES]; /* the recorded launches this one runs after (-1: none; more than one only at a
                                   * join) */
  int32_t chain;  /* 1: dep[0] is the launch before it in its chain (with PDL a programmatic edge) */
  const char *entry;
  kernel_args args;
  uint64_t wlo[QMOE_STAGE_MAX_BUFS], whi[QMOE_STAGE_MAX_BUFS]; /* the device bytes it writes: its outputs, */
  int32_t nw;                                                  /* the first nw of the two arrays */
} launch_rec;

/* A recorded sequence and its instantiated graph: node i launches recs[i]. */
typedef struct {
  CUgraph graph;
  CUgraphExec exec;
  CUgraphNode *nodes;
  launch_rec *recs;
  size_t n;
  uint64_t used; /* graph_end count when last launched (the least recently used is replaced) */
} cached_graph;

enum { GRAPH_CACHE = 4, VCACHE_QTYPES = 64 };

typedef struct {
  int recording;
  int freed;        /* a buffer the recording uses was freed: graph_end(be, 1) refuses */
  launch_rec *recs; /* the sequence being recorded */
  size_t n, cap;
  /* backend.branch(): lanes > 0 while lanes are open (lane: the one being recorded; fork: the launch before
   * them; last[l]: lane l's last launch, the fork while it has none); join: the next launch joins them */
  int lanes, lane, join;
  int64_t fork, last[QMOE_BRANCH_LANES];
  cached_graph cache[GRAPH_CACHE];
  uint64_t ends;
  qmoe_cuda_graph_stats stats;
} graph_state;

typedef struct {
  qmoe_cuda_ctx ctx;
  size_t nvar;
  qmoe_cuda_variant *vars;
  CUmodule *mods;  /* per variant, NULL until first use */
  CUfunction *fns, *fns_tok; /* per variant: its entry, its tok_entry (loaded on first use) */
  const char *last_kernel; /* entry of the last launch, for errors reported by a later sync */
  CUdeviceptr ws;          /* workspace of split attention (args.buf[7]); zeroed when (re)allocated */
  size_t ws_size;
  int sync_each;           /* QMOE_CUDA_SYNC=1: synchronize after every launch (names a faulting kernel) */
  int max_lanes;           /* lanes at or past it record into the last one (QMOE_CUDA_LANES; default all) */
  int lane_pdl;            /* the edges at a fork and a join programmatic too (QMOE_CUDA_LANE_PDL=0: plain) */
  int pdl;                 /* on sm_90+ with cuGraphAddDependencies_v2 unless QMOE_CUDA_PDL=0: graph edges are
                            * programmatic (each kernel launches as the one before finishes, and waits in
                            * qmoe_grid_wait for its completion; docs/cuda.md) */
  int64_t vcache[QMOE_STAGE_COUNT > 0 ? QMOE_STAGE_COUNT : 1][QMOE_ACC_COUNT][VCACHE_QTYPES]; /* variant index + 1, 0: unknown */
  graph_state g;
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
  /* A buffer a call of the open graph uses: that graph must not run (backend.h). Kept graphs need nothing: a
   * replay patches every node whose arguments differ from the new recording's. */
  for (size_t i = 0; im->g.recording && !im->g.freed && i < im->g.n; i++)
    for (int k = 0; k < QMOE_STAGE_MAX_BUFS; k++)
      if (im->g.recs[i].args.buf[k] >= b->ptr && im->g.recs[i].args.buf[k] < b->ptr + (b->size ? b->size : 1))
        im->g.freed = 1;
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

/* upload, download and sync are refused while a graph is being recorded (backend.h). */
static int not_in_graph(cuda_impl *im, const char *what) {
  if (!im->g.recording) return 0;
  qmoe_set_error("cuda backend: %s between graph_begin and graph_end", what);
  return QMOE_EINVAL;
}

static int cu_upload(qmoe_backend *be, qmoe_buffer *b, size_t off, const void *src, size_t n) {
  cuda_impl *im = impl_of(be);
  int rc = not_in_graph(im, "upload");
  if (rc) return rc;
  rc = in_bounds("upload", b, off, n);
  if (rc || n == 0) return rc;
  if ((rc = qmoe_cuda_ctx_use(&im->ctx))) return rc;
  /* From pageable memory the copy returns once SRC has been staged; it is ordered with kernels on the stream. */
  return qmoe_cuda_check(im->ctx.d, im->ctx.d->MemcpyHtoDAsync(b->ptr + off, src, n, im->ctx.stream),
                         "cuMemcpyHtoDAsync (upload)", NULL);
}

static int cu_download(qmoe_backend *be, qmoe_buffer *b, size_t off, void *dst, size_t n) {
  cuda_impl *im = impl_of(be);
  int rc = not_in_graph(im, "download");
  if (rc) return rc;
  rc = in_bounds("download", b, off, n);
  if (rc || n == 0) return rc;
  if ((rc = qmoe_cuda_ctx_use(&im->ctx))) return rc;
  if ((rc = qmoe_cuda_check(im->ctx.d, im->ctx.d->MemcpyDtoHAsync(dst, b->ptr + off, n, im->ctx.stream),
                            "cuMemcpyDtoHAsync (download)", NULL)))
    return rc;
  return stream_sync(im, "download");
}

static int cu_sync(qmoe_backend *be) {
  cuda_impl *im = impl_of(be);
  int rc = not_in_graph(im, "sync");
  if (rc) return rc;
  rc = qmoe_cuda_ctx_use(&im->ctx);
  return rc ? rc : stream_sync(im, "sync");
}

/* ---- variants ---------------------------------------------------------------------------------------- */


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
    int a_ok = si->varies_by_acc ? !strcmp(v->acc, qmoe_acc_name(c->acc)) : 1;
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
                   si->name, qmoe_acc_name(c->acc), tensor, si->varies_by_qtype ? qmoe_qtype_name(c->qtype) : "-",
                   have[0] ? have : "none");
  else
    qmoe_set_error("cuda backend: stage %s has no CUDA kernel for tensor '%s' of qtype %s (ggml type %d); kernels "
                   "exist for: %s",
                   si->name, tensor, qmoe_qtype_name(c->qtype), c->qtype, have[0] ? have : "none");
  return QMOE_EUNSUPPORTED;
}

/* Variant VI's kernel: its entry, or (TOK) its entry for calls of many tokens (tok_entry, same module). */
static int get_function(cuda_impl *im, size_t vi, int tok, CUfunction *fn) {
  CUfunction *slot = tok ? &im->fns_tok[vi] : &im->fns[vi];
  if (*slot) {
    *fn = *slot;
    return 0;
  }
  const qmoe_cuda_variant *v = &im->vars[vi];
  const char *name = tok ? v->tok_entry : v->entry;
  int rc;
  if (!im->mods[vi]) {
    CUmodule mod;
    if ((rc = qmoe_cuda_module_load(&im->ctx, v->src, v->entry, &mod))) return rc;
    im->mods[vi] = mod;
  }
  if ((rc = qmoe_cuda_check(im->ctx.d, im->ctx.d->ModuleGetFunction(fn, im->mods[vi], name), "cuModuleGetFunction",
                            name)))
    return rc;
  *slot = *fn;
  return 0;
}

/* ---- run --------------------------------------------------------------------------------------------- */

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

/* ---- graphs ------------------------------------------------------------------------------------------ */

/* Whether launch R writes any of the device bytes [LO, HI). */
static int writes(const launch_rec *r, uint64_t lo, uint64_t hi) {
  for (int i = 0; i < r->nw; i++)
    if (r->wlo[i] < hi && lo < r->whi[i]) return 1;
  return 0;
}

/* Records one launch of stage SI whose buffer i spans NEED[i] bytes from args->buf[i]. */
static int graph_add(cuda_impl *im, CUfunction fn, unsigned gx, unsigned gy, unsigned gz, unsigned threads,
                     const char *entry, int uses_ws, const kernel_args *args, const qmoe_stage_info *si,
                     const size_t *need) {
  graph_state *g = &im->g;
  if (g->n == g->cap) {
    size_t cap = g->cap ? g->cap * 2 : 1024;
    launch_rec *r = realloc(g->recs, cap * sizeof *r);
    if (!r) {
      qmoe_set_error("cuda backend: out of host memory recording a graph of %zu launches", g->n + 1);
      return QMOE_ENOMEM;
    }
    g->recs = r, g->cap = cap;
  }
  launch_rec *r = &g->recs[g->n++];
  memset(r, 0, sizeof *r); /* compared with memcmp: no stray padding bytes */
  r->fn = fn, r->gx = gx, r->gy = gy, r->gz = gz, r->threads = threads, r->entry = entry, r->args = *args;
  r->uses_ws = uses_ws;
  const int64_t i = (int64_t)g->n - 1;
  for (int l = 0; l < QMOE_BRANCH_LANES; l++) r->dep[l] = -1;
  r->dep[0] = (int32_t)(i - 1), r->chain = i > 0;
  if (g->join) { /* after each lane's last launch, each once (a lane with none left its last at the fork) */
    int nd = 0;
    for (int l = 0; l < QMOE_BRANCH_LANES; l++) {
      int seen = g->last[l] < 0;
      for (int j = 0; j < nd; j++) seen |= r->dep[j] == (int32_t)g->last[l];
      if (!seen) r->dep[nd++] = (int32_t)g->last[l];
    }
    for (int j = nd; j < QMOE_BRANCH_LANES; j++) r->dep[j] = -1;
    r->chain = 0;
    g->join = 0, g->lanes = 0;
  } else if (g->lanes) {
    r->dep[0] = (int32_t)g->last[g->lane];
    r->chain = g->last[g->lane] != g->fork; /* the lane's first launch: a plain edge from the fork */
    g->last[g->lane] = i;
  }
  for (int b = si->n_inputs; b < si->n_inputs + si->n_outputs; b++)
    if (need[b] > 0) r->wlo[r->nw] = r->args.buf[b], r->whi[r->nw++] = r->args.buf[b] + need[b];
  r->args.early = 0;
  for (int b = 0; b < si->n_inputs; b++) {
    int free_ = 1;
    for (int j = 0; j < QMOE_BRANCH_LANES && free_; j++)
      if (r->dep[j] >= 0) free_ = !writes(&g->recs[r->dep[j]], r->args.buf[b], r->args.buf[b] + need[b]);
    if (free_) r->args.early |= (uint64_t)1 << b;
  }
  return 0;
}

static int cu_branch(qmoe_backend *be, int lane) {
  cuda_impl *im = impl_of(be);
  graph_state *g = &im->g;
  if ((lane < 0 || lane >= QMOE_BRANCH_LANES) && lane != QMOE_BRANCH_JOIN) {
    qmoe_set_error("cuda backend: branch(%d): the lanes are 0 to %d, or QMOE_BRANCH_JOIN", lane, QMOE_BRANCH_LANES - 1);
    return QMOE_EINVAL;
  }
  if (!g->recording) return 0; /* launches on the stream run one after another anyway */
  if (lane >= im->max_lanes) lane = im->max_lanes - 1;
  if (lane == QMOE_BRANCH_JOIN) {
    g->join = g->lanes;
    return 0;
  }
  if (!g->lanes) {
    g->lanes = 1, g->fork = (int64_t)g->n - 1;
    for (int l = 0; l < QMOE_BRANCH_LANES; l++) g->last[l] = g->fork;
  }
  g->lane = lane;
  return 0;
}

static void node_params(launch_rec *r, void **argp, CUDA_KERNEL_NODE_PARAMS_v2 *kp) {
  memset(kp, 0, sizeof *kp);
  *argp = &r->args;
  kp->func = r->fn;
  kp->gridDimX = r->gx, kp->gridDimY = r->gy, kp->gridDimZ = r->gz;
  kp->blockDimX = r->threads, kp->blockDimY = 1, kp->blockDimZ = 1;
  kp->kernelParams = argp;
}

static void cached_free(const qmoe_cuda_driver *d, cached_graph *c) {
  if (c->exec) d->GraphExecDestroy(c->exec);
  if (c->graph) d->GraphDestroy(c->graph);
  free(c->nodes);
  free(c->recs);
  memset(c, 0, sizeof *c);
}

/* A graph of the N launches in RECS, each after the launches in its dep[] (one chain, or lanes between a fork
 * and a join: backend.branch()), instantiated. */
static int graph_build(cuda_impl *im, const launch_rec *recs, size_t n, cached_graph *out) {
  const qmoe_cuda_driver *d = im->ctx.d;
  cached_graph c = {0};
  c.nodes = malloc(n * sizeof *c.nodes);
  c.recs = malloc(n * sizeof *c.recs);
  if (!c.nodes || !c.recs) {
    free(c.nodes), free(c.recs);
    qmoe_set_error("cuda backend: out of host memory building a graph of %zu launches", n);
    return QMOE_ENOMEM;
  }
  memcpy(c.recs, recs, n * sizeof *recs);
  c.n = n;
  int rc = qmoe_cuda_check(d, d->GraphCreate(&c.graph, 0), "cuGraphCreate", NULL);
  for (size_t i = 0; !rc && i < n; i++) {
    void *argp;
    CUDA_KERNEL_NODE_PARAMS_v2 kp;
    node_params(&c.recs[i], &argp, &kp);
    /* Edges from the launches it runs after: with PDL programmatic (added after the node) within a chain, and
     * at a lane's start and a join unless QMOE_CUDA_LANE_PDL=0; otherwise plain */
    const launch_rec *r = &c.recs[i];
    const int prog = im->pdl && (r->chain || im->lane_pdl) && r->dep[0] >= 0;
    CUgraphNode deps[QMOE_BRANCH_LANES];
    size_t nd = 0;
    for (int j = 0; j < QMOE_BRANCH_LANES && !prog; j++)
      if (r->dep[j] >= 0) deps[nd++] = c.nodes[r->dep[j]];
    rc = qmoe_cuda_check(d, d->GraphAddKernelNode(&c.nodes[i], c.graph, nd ? deps : NULL, nd, &kp),
                         "cuGraphAddKernelNode", r->entry);
    if (!rc && prog) {
      CUgraphEdgeData e;
      memset(&e, 0, sizeof e);
      e.from_port = QMOE_CU_GRAPH_KERNEL_NODE_PORT_PROGRAMMATIC;
      e.type = QMOE_CU_GRAPH_DEPENDENCY_TYPE_PROGRAMMATIC;
      for (int j = 0; j < QMOE_BRANCH_LANES && !rc; j++)
        if (r->dep[j] >= 0)
          rc = qmoe_cuda_check(d, d->GraphAddDependencies2(c.graph, &c.nodes[r->dep[j]], &c.nodes[i], &e, 1),
                               "cuGraphAddDependencies_v2 (programmatic)", r->entry);
    }
  }
  if (!rc) rc = qmoe_cuda_check(d, d->GraphInstantiate(&c.exec, c.graph, 0), "cuGraphInstantiate", NULL);
  if (rc) {
    cached_free(d, &c);
    return rc;
  }
  *out = c;
  return 0;
}

static int cu_graph_begin(qmoe_backend *be) {
  cuda_impl *im = impl_of(be);
  if (im->g.recording) {
    qmoe_set_error("cuda backend: graph_begin inside a graph (graphs do not nest)");
    return QMOE_EINVAL;
  }
  im->g.recording = 1;
  im->g.freed = 0;
  im->g.n = 0;
  im->g.lanes = im->g.join = 0;
  return 0;
}

/* Same shape: the same kernels with the same block size and edges, in the same order (args and grids are
 * patched). */
static int same_shape(const cached_graph *c, const launch_rec *r, size_t n) {
  if (c->n != n || !c->exec) return 0;
  for (size_t i = 0; i < n; i++)
    if (c->recs[i].fn != r[i].fn || c->recs[i].threads != r[i].threads ||
        memcmp(c->recs[i].dep, r[i].dep, sizeof r[i].dep) != 0 || c->recs[i].chain != r[i].chain)
      return 0;
  return 1;
}

static int cu_graph_end(qmoe_backend *be, int submit) {
  cuda_impl *im = impl_of(be);
  graph_state *g = &im->g;
  const qmoe_cuda_driver *d = im->ctx.d;
  if (!g->recording) {
    qmoe_set_error("cuda backend: graph_end without graph_begin");
    return QMOE_EINVAL;
  }
  g->recording = 0;
  size_t n = g->n;
  g->n = 0;
  if (submit && g->freed) {
    qmoe_set_error("cuda backend: a buffer that a call of this graph uses was freed before graph_end; nothing of "
                   "the graph ran");
    return QMOE_EINVAL;
  }
  if (!submit || n == 0) return 0;
  int rc = qmoe_cuda_ctx_use(&im->ctx);
  if (rc) return rc;
  /* A call recorded after an earlier one may have grown (moved) the workspace: every call reads the final one. */
  for (size_t i = 0; i < n; i++)
    if (g->recs[i].uses_ws) g->recs[i].args.buf[QMOE_STAGE_MAX_BUFS - 1] = (uint64_t)im->ws;
  g->ends++;
  cached_graph *c = NULL, *lru = &g->cache[0];
  for (int i = 0; i < GRAPH_CACHE && !c; i++) {
    if (same_shape(&g->cache[i], g->recs, n)) c = &g->cache[i];
    if (g->cache[i].used < lru->used) lru = &g->cache[i];
  }
  if (c) {
    /* Replay: patch the nodes whose launch changed (a decode step: the position in rope, kv_store and
     * attention; the token's offset in embed_rows). */
    for (size_t i = 0; i < n && !rc; i++) {
      if (!memcmp(&c->recs[i], &g->recs[i], sizeof g->recs[i])) continue;
      c->recs[i] = g->recs[i];
      void *argp;
      CUDA_KERNEL_NODE_PARAMS_v2 kp;
      node_params(&c->recs[i], &argp, &kp);
      rc = qmoe_cuda_check(d, d->GraphExecKernelNodeSetParams(c->exec, c->nodes[i], &kp),
                           "cuGraphExecKernelNodeSetParams", c->recs[i].entry);
      g->stats.nodes_patched++;
    }
    if (rc) {
      cached_free(d, c); /* a half-patched graph is not replayed */
      return rc;
    }
    g->stats.replays++;
  } else {
    cached_free(d, lru);
    if ((rc = graph_build(im, g->recs, n, lru))) return rc;
    c = lru;
    g->stats.builds++;
  }
  c->used = g->ends;
  if ((rc = qmoe_cuda_check(d, d->GraphLaunch(c->exec, im->ctx.stream), "cuGraphLaunch", NULL))) return rc;
  im->last_kernel = "a graph of stage kernels (QMOE_CUDA_SYNC=1 names the kernel)";
  return 0;
}

int qmoe_cuda_graph_stats_of(qmoe_backend *be, qmoe_cuda_graph_stats *out) {
  if (!qmoe_backend_cuda_ctx(be)) return QMOE_EINVAL;
  *out = impl_of(be)->g.stats;
  return 0;
}

int qmoe_cuda_graph_early_of(qmoe_backend *be, size_t i, uint64_t *out) {
  if (!qmoe_backend_cuda_ctx(be)) return QMOE_EINVAL;
  const graph_state *g = &impl_of(be)->g;
  if (!g->recording || i >= g->n) {
    qmoe_set_error("cuda backend: no launch %zu in a recording (%s)", i, g->recording ? "past its end" : "none open");
    return QMOE_EINVAL;
  }
  *out = g->recs[i].args.early;
  return 0;
}

static int cu_run(qmoe_backend *be, const qmoe_stage_call *c) {
  cuda_impl *im = impl_of(be);
  const qmoe_stage_info *si = (unsigned)c->stage < QMOE_STAGE_COUNT ? qmoe_stage_info_get(c->stage) : NULL;
  if (!si) {
    qmoe_set_error("cuda backend: unknown stage id %d (valid: 0..%d)", (int)c->stage, QMOE_STAGE_COUNT - 1);
    return QMOE_EINVAL;
  }
  if ((unsigned)c->acc >= QMOE_ACC_COUNT) {
    qmoe_set_error("cuda backend: stage %s: unknown accumulator %d (valid: QMOE_ACC_F32, QMOE_ACC_F64, QMOE_ACC_Q8)",
                   si->name, (int)c->acc);
    return QMOE_EINVAL;
  }
  size_t vi;
  int rc;
  /* (stage, acc, qtype) -> variant, looked up once (a decode step makes ~800 calls). */
  int64_t *vc = c->qtype >= -1 && c->qtype < VCACHE_QTYPES - 1 ? &im->vcache[c->stage][c->acc][c->qtype + 1] : NULL;
  if (vc && *vc > 0) vi = (size_t)(*vc - 1);
  else if ((rc = find_variant(im, si, c, &vi))) return rc;
  else if (vc) *vc = (int64_t)vi + 1;
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
  args.tokens = c->tokens > 1 ? c->tokens : 1;
  args.early = ~(uint64_t)0; /* launches on the stream: nothing else runs (a graph narrows it, graph_add) */

  /* Grid and workspace: the stage's launch function (generated/c/cuda_launch.c). */
  const qmoe_cuda_launch_env env = { v->rows_per_block > 0 ? v->rows_per_block : 1, v->threads,
                                     im->ctx.sm_count > 0 ? im->ctx.sm_count : 1, c->acc == QMOE_ACC_F64 ? 8 : 4,
                                     args.tokens };
  qmoe_cuda_launch L;
  if ((rc = qmoe_cuda_launch_table[c->stage](&env, c->p, &L))) return rc;
  const int64_t gx = L.grid[0], gy = L.grid[1], gz = L.grid[2];
  if (gx < 1 || gx > INT32_MAX || gy < 1 || gy > 65535 || gz < 1 || gz > 65535) {
    qmoe_set_error("cuda backend: stage %s: grid %lld × %lld × %lld is outside CUDA's limits", si->name,
                   (long long)gx, (long long)gy, (long long)gz);
    return QMOE_EUNSUPPORTED;
  }
  if (L.workspace > 0 && ((rc = qmoe_cuda_ctx_use(&im->ctx)) ||
                          (rc = workspace(im, L.workspace, &args.buf[QMOE_STAGE_MAX_BUFS - 1]))))
    return rc;
  if ((rc = qmoe_cuda_ctx_use(&im->ctx))) return rc;
  CUfunction fn;
  const int tok = args.tokens > 1 && v->tok_entry[0];
  const char *entry = tok ? v->tok_entry : v->entry;
  if ((rc = get_function(im, vi, tok, &fn))) return rc;
  if (im->g.recording)
    return graph_add(im, fn, (unsigned)gx, (unsigned)gy, (unsigned)gz, (unsigned)v->threads, entry, L.workspace > 0,
                     &args, si, need);
  void *params[] = { &args };
  rc = qmoe_cuda_check(im->ctx.d,
                       im->ctx.d->LaunchKernel(fn, (unsigned)gx, (unsigned)gy, (unsigned)gz, (unsigned)v->threads, 1, 1, 0,
                                               im->ctx.stream, params, NULL),
                       "cuLaunchKernel", entry);
  if (rc) return rc;
  im->last_kernel = entry;
  return im->sync_each ? stream_sync(im, "QMOE_CUDA_SYNC=1") : 0;
}

/* ---- open / close ------------------------------------------------------------------------------------ */

static void cu_close(qmoe_backend *be) {
  if (!be) return;
  cuda_impl *im = impl_of(be);
  if (im) {
    if (im->ctx.ctx && qmoe_cuda_ctx_use(&im->ctx) == 0) {
      im->ctx.d->StreamSynchronize(im->ctx.stream);
      for (int i = 0; i < GRAPH_CACHE; i++) cached_free(im->ctx.d, &im->g.cache[i]);
      for (size_t i = 0; i < im->nvar; i++)
        if (im->mods[i]) im->ctx.d->ModuleUnload(im->mods[i]);
      if (im->ws) im->ctx.d->MemFree(im->ws);
    }
    qmoe_cuda_ctx_close(&im->ctx);
    free(im->g.recs);
    free(im->vars);
    free(im->mods);
    free(im->fns);
    free(im->fns_tok);
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
  im->fns_tok = qmoe_alloc(im->nvar * sizeof *im->fns_tok, "cuda backend");
  if (!im->vars || !im->mods || !im->fns || !im->fns_tok) {
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
  /* Graphs where the driver has them; not with QMOE_CUDA_SYNC=1 (which syncs per launch to name a fault). */
  const char *ng = getenv("QMOE_CUDA_NO_GRAPH");
  if (im->ctx.d->GraphCreate && !im->sync_each && !(ng && ng[0] && strcmp(ng, "0") != 0)) {
    be->graph_begin = cu_graph_begin;
    be->graph_end = cu_graph_end;
    const char *nb = getenv("QMOE_CUDA_NO_BRANCH"); /* one chain (the earlier graphs), for a measurement */
    if (!(nb && nb[0] && strcmp(nb, "0") != 0)) be->branch = cu_branch;
    const char *nl = getenv("QMOE_CUDA_LANES"); /* fewer lanes (1 to QMOE_BRANCH_LANES), for a measurement */
    im->max_lanes = nl && nl[0] >= '1' && nl[0] < '1' + QMOE_BRANCH_LANES && !nl[1] ? nl[0] - '0' : QMOE_BRANCH_LANES;
    const char *lp = getenv("QMOE_CUDA_LANE_PDL");
    im->lane_pdl = !(lp && lp[0] && strcmp(lp, "0") == 0);
    const char *pdl = getenv("QMOE_CUDA_PDL");
    im->pdl = !(pdl && pdl[0] && strcmp(pdl, "0") == 0) && im->ctx.d->GraphAddDependencies2 && im->ctx.cc_major >= 9;
  }
  *out = be;
  return 0;
}
