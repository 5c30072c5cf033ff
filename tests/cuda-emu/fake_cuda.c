/* fake_cuda.c: a stand-in libcuda.so.1 for tests without a GPU: one "device" (sm_90) whose memory is host
 * memory and whose modules are the shared objects fake_nvrtc.c builds; cuLaunchKernel runs the kernel with
 * emu.h's fiber launcher, synchronously. Each allocation ends at a PROT_NONE page, so a kernel reading past the
 * end of its (256-byte-rounded) buffer faults instead of passing silently.
 * Environment: QMOE_EMU_NO_DEVICE=1 makes cuInit fail as on a machine whose driver sees no GPU. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

typedef int CUresult;
typedef unsigned long long CUdeviceptr;
enum { OK = 0, E_INVALID_VALUE = 1, E_OUT_OF_MEMORY = 2, E_NO_DEVICE = 100, E_INVALID_IMAGE = 200,
       E_NOT_FOUND = 500, E_LAUNCH_FAILED = 719 };

CUresult cuGetErrorName(CUresult r, const char **s) {
  switch (r) {
  case OK: *s = "CUDA_SUCCESS"; break;
  case E_INVALID_VALUE: *s = "CUDA_ERROR_INVALID_VALUE"; break;
  case E_OUT_OF_MEMORY: *s = "CUDA_ERROR_OUT_OF_MEMORY"; break;
  case E_NO_DEVICE: *s = "CUDA_ERROR_NO_DEVICE"; break;
  case E_INVALID_IMAGE: *s = "CUDA_ERROR_INVALID_IMAGE"; break;
  case E_NOT_FOUND: *s = "CUDA_ERROR_NOT_FOUND"; break;
  case E_LAUNCH_FAILED: *s = "CUDA_ERROR_LAUNCH_FAILED"; break;
  default: *s = "CUDA_ERROR_UNKNOWN"; return E_INVALID_VALUE;
  }
  return OK;
}
CUresult cuGetErrorString(CUresult r, const char **s) {
  const char *n;
  cuGetErrorName(r, &n);
  *s = r == E_NO_DEVICE ? "no CUDA-capable device is detected (emulated)" : n;
  return OK;
}

CUresult cuInit(unsigned flags) {
  (void)flags;
  const char *e = getenv("QMOE_EMU_NO_DEVICE");
  return e && e[0] && strcmp(e, "0") ? E_NO_DEVICE : OK;
}
CUresult cuDriverGetVersion(int *v) { *v = 99000; return OK; }
CUresult cuDeviceGetCount(int *n) { *n = 1; return OK; }
CUresult cuDeviceGet(int *d, int i) { if (i != 0) return E_INVALID_VALUE; *d = 0; return OK; }
CUresult cuDeviceGetName(char *s, int n, int d) {
  (void)d;
  snprintf(s, (size_t)n, "qmoe host emulator (tests/cuda-emu)");
  return OK;
}
CUresult cuDeviceGetAttribute(int *v, int a, int d) {
  (void)d;
  switch (a) {
  case 75: *v = 9; break;      /* compute capability major */
  case 76: *v = 0; break;      /* minor */
  case 16: *v = 4; break;      /* multiprocessors */
  case 97: *v = 232448; break; /* shared memory per block, opt-in */
  default: *v = 0;
  }
  return OK;
}
CUresult cuDeviceTotalMem_v2(size_t *b, int d) { (void)d; *b = (size_t)16 << 30; return OK; }
static int ctx_token;
CUresult cuDevicePrimaryCtxRetain(void **c, int d) { (void)d; *c = &ctx_token; return OK; }
CUresult cuDevicePrimaryCtxRelease_v2(int d) { (void)d; return OK; }
CUresult cuCtxSetCurrent(void *c) { (void)c; return OK; }
static int stream_token;
CUresult cuStreamCreate(void **s, unsigned f) { (void)f; *s = &stream_token; return OK; }
CUresult cuStreamDestroy_v2(void *s) { (void)s; return OK; }
CUresult cuStreamSynchronize(void *s) { (void)s; return OK; }

/* ---- memory: [pages ... data][PROT_NONE page] ---- */
typedef struct { void *map; size_t len; CUdeviceptr p; } mapping;
static mapping *maps;
static size_t nmaps, capmaps;

CUresult cuMemAlloc_v2(CUdeviceptr *out, size_t n) {
  size_t pg = (size_t)sysconf(_SC_PAGESIZE);
  size_t rounded = (n + 255) / 256 * 256;
  if (rounded == 0) rounded = 256;
  size_t data_pages = (rounded + pg - 1) / pg * pg, len = data_pages + pg;
  unsigned char *m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (m == MAP_FAILED) return E_OUT_OF_MEMORY;
  if (mprotect(m + data_pages, pg, PROT_NONE)) return E_OUT_OF_MEMORY;
  unsigned char *p = m + data_pages - rounded; /* 256-aligned, ends at the guard page */
  memset(p, 0xCD, rounded);                    /* device memory starts as garbage */
  if (nmaps == capmaps) {
    capmaps = capmaps ? 2 * capmaps : 64;
    maps = realloc(maps, capmaps * sizeof *maps);
  }
  maps[nmaps++] = (mapping){ m, len, (CUdeviceptr)(uintptr_t)p };
  *out = (CUdeviceptr)(uintptr_t)p;
  return OK;
}
CUresult cuMemFree_v2(CUdeviceptr p) {
  for (size_t i = 0; i < nmaps; i++) {
    if (maps[i].p == p) {
      munmap(maps[i].map, maps[i].len);
      maps[i] = maps[--nmaps];
      return OK;
    }
  }
  return E_INVALID_VALUE;
}
CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr d, const void *s, size_t n, void *st) {
  (void)st;
  memcpy((void *)(uintptr_t)d, s, n);
  return OK;
}
CUresult cuMemcpyDtoHAsync_v2(void *d, CUdeviceptr s, size_t n, void *st) {
  (void)st;
  memcpy(d, (const void *)(uintptr_t)s, n);
  return OK;
}
CUresult cuMemsetD8Async(CUdeviceptr d, unsigned char v, size_t n, void *st) {
  (void)st;
  memset((void *)(uintptr_t)d, v, n);
  return OK;
}

/* ---- modules ---- */
typedef int (*launch_fn)(void *, const void *, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned);
typedef struct { void *so; } module;
typedef struct { void *fn; launch_fn launch; } function;

CUresult cuModuleLoadData(module **out, const void *image) {
  const unsigned char *b = image;
  if (memcmp(b, "QMOEEMU1", 8)) return E_INVALID_IMAGE;
  uint64_t n;
  memcpy(&n, b + 8, 8);
  char path[] = "/tmp/qmoe-emu-module-XXXXXX";
  int fd = mkstemp(path);
  if (fd < 0) return E_INVALID_IMAGE;
  int ok = write(fd, b + 16, n) == (ssize_t)n;
  close(fd);
  void *so = ok ? dlopen(path, RTLD_NOW | RTLD_LOCAL) : NULL;
  unlink(path);
  if (!so) {
    fprintf(stderr, "fake libcuda: dlopen of the emulated module failed: %s\n", dlerror());
    return E_INVALID_IMAGE;
  }
  module *m = malloc(sizeof *m);
  m->so = so;
  *out = m;
  return OK;
}
CUresult cuModuleUnload(module *m) {
  dlclose(m->so);
  free(m);
  return OK;
}
CUresult cuModuleGetFunction(function **out, module *m, const char *name) {
  void *fn = dlsym(m->so, name);
  launch_fn l = (launch_fn)dlsym(m->so, "qmoe_emu_launch");
  if (!fn || !l) return E_NOT_FOUND;
  function *f = malloc(sizeof *f); /* kept for the module's lifetime; tests open few modules */
  f->fn = fn;
  f->launch = l;
  *out = f;
  return OK;
}
CUresult cuFuncGetAttribute(int *v, int a, function *f) { (void)a, (void)f; *v = 0; return OK; }
CUresult cuFuncSetAttribute(function *f, int a, int v) { (void)f, (void)a, (void)v; return OK; }
CUresult cuLaunchKernel(function *f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                        unsigned smem, void *st, void **params, void **extra) {
  (void)smem, (void)st, (void)extra;
  if (!f || !params || !params[0] || gx == 0 || gy == 0 || gz == 0) return E_INVALID_VALUE;
  int rc = f->launch(f->fn, params[0], gx, gy, gz, bx, by, bz);
  return rc == 0 ? OK : E_LAUNCH_FAILED;
}

/* ---- graphs: a list of launches with copies of their argument (qmoe's one kernel argument, struct qmoe_args:
 * 8 buffer addresses, 8 int and 4 double params and the tokens = 168 bytes), run in order by cuGraphLaunch ---- */
enum { ARGS_BYTES = 176 }; /* struct qmoe_args */
typedef struct {
  function *func;
  unsigned gx, gy, gz, bx, by, bz, smem;
  void **kernelParams, **extra;
  void *kern, *ctx;
} node_params;
typedef struct { function *f; unsigned g[3], b[3]; unsigned char args[ARGS_BYTES]; } gnode;
typedef struct { gnode *nodes; size_t n; } graph;
static void set_node(gnode *n, const node_params *p) {
  n->f = p->func;
  n->g[0] = p->gx, n->g[1] = p->gy, n->g[2] = p->gz, n->b[0] = p->bx, n->b[1] = p->by, n->b[2] = p->bz;
  memcpy(n->args, p->kernelParams[0], ARGS_BYTES);
}
CUresult cuGraphCreate(graph **g, unsigned flags) {
  (void)flags;
  *g = calloc(1, sizeof **g);
  return *g ? OK : E_OUT_OF_MEMORY;
}
/* A node is its index + 1. Its dependencies must be earlier nodes (qmoe adds nodes in an order that respects
 * them: a chain, or lanes and their join), so running the nodes in order runs each after its own. */
CUresult cuGraphAddKernelNode_v2(uintptr_t *node, graph *g, const uintptr_t *deps, size_t ndeps,
                                 const node_params *p) {
  if (!g || !p || !p->func || !p->kernelParams || !p->kernelParams[0]) return E_INVALID_VALUE;
  if (ndeps > 0 && !deps) return E_INVALID_VALUE;
  for (size_t i = 0; i < ndeps; i++)
    if (deps[i] < 1 || deps[i] > g->n || (i && deps[i] == deps[0])) return E_INVALID_VALUE;
  gnode *nn = realloc(g->nodes, (g->n + 1) * sizeof *nn);
  if (!nn) return E_OUT_OF_MEMORY;
  g->nodes = nn;
  set_node(&g->nodes[g->n], p);
  *node = ++g->n;
  return OK;
}
/* The executable graph is a copy. */
CUresult cuGraphInstantiateWithFlags(graph **exec, graph *g, unsigned long long flags) {
  (void)flags;
  graph *x = calloc(1, sizeof *x);
  if (!x || (g->n && !(x->nodes = malloc(g->n * sizeof *x->nodes)))) {
    free(x);
    return E_OUT_OF_MEMORY;
  }
  if (g->n) memcpy(x->nodes, g->nodes, g->n * sizeof *x->nodes);
  x->n = g->n;
  *exec = x;
  return OK;
}
CUresult cuGraphExecKernelNodeSetParams_v2(graph *x, uintptr_t node, const node_params *p) {
  if (!x || node < 1 || node > x->n || !p || !p->func || p->func != x->nodes[node - 1].f) return E_INVALID_VALUE;
  set_node(&x->nodes[node - 1], p);
  return OK;
}
CUresult cuGraphLaunch(graph *x, void *st) {
  (void)st;
  for (size_t i = 0; i < x->n; i++) {
    gnode *n = &x->nodes[i];
    if (n->f->launch(n->f->fn, n->args, n->g[0], n->g[1], n->g[2], n->b[0], n->b[1], n->b[2])) return E_LAUNCH_FAILED;
  }
  return OK;
}
CUresult cuGraphExecDestroy(graph *x) {
  if (x) free(x->nodes);
  free(x);
  return OK;
}
CUresult cuGraphDestroy(graph *g) { return cuGraphExecDestroy(g); }

/* ---- events ---- */
typedef struct { double t; } event;
CUresult cuEventCreate(event **e, unsigned f) { (void)f; *e = calloc(1, sizeof **e); return OK; }
CUresult cuEventRecord(event *e, void *s) {
  (void)s;
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  e->t = ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
  return OK;
}
CUresult cuEventSynchronize(event *e) { (void)e; return OK; }
CUresult cuEventElapsedTime_v2(float *ms, event *a, event *b) { *ms = (float)(b->t - a->t); return OK; }
CUresult cuEventDestroy_v2(event *e) { free(e); return OK; }
