/* cuda.c: loads the CUDA driver and NVRTC with dlopen, opens the device context, compiles kernels with NVRTC
 * for the device's own architecture and keeps the CUBINs in an on-disk cache. */
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "cuda_internal.h"
#include "qmoe.h"

#ifdef QMOE_HAVE_CUDA_H
/* Our function-pointer shapes must be the toolkit's (these are what the no-header build relies on). */
#define SAME_SHAPE(fn, member, T)                                                                          \
  _Static_assert(__builtin_types_compatible_p(__typeof__(&fn), __typeof__(((T *)0)->member)),            \
                 #fn " does not match qmoe's declaration")
SAME_SHAPE(cuInit, Init, qmoe_cuda_driver);
SAME_SHAPE(cuMemAlloc_v2, MemAlloc, qmoe_cuda_driver);
SAME_SHAPE(cuMemcpyHtoDAsync_v2, MemcpyHtoDAsync, qmoe_cuda_driver);
SAME_SHAPE(cuMemcpyDtoHAsync_v2, MemcpyDtoHAsync, qmoe_cuda_driver);
SAME_SHAPE(cuLaunchKernel, LaunchKernel, qmoe_cuda_driver);
SAME_SHAPE(cuModuleLoadData, ModuleLoadData, qmoe_cuda_driver);
SAME_SHAPE(cuDeviceTotalMem_v2, DeviceTotalMem, qmoe_cuda_driver);
SAME_SHAPE(cuEventElapsedTime_v2, EventElapsedTime, qmoe_cuda_driver);
SAME_SHAPE(nvrtcCreateProgram, CreateProgram, qmoe_cuda_nvrtc);
SAME_SHAPE(nvrtcCompileProgram, CompileProgram, qmoe_cuda_nvrtc);
SAME_SHAPE(nvrtcGetCUBIN, GetCUBIN, qmoe_cuda_nvrtc);
SAME_SHAPE(cuGraphAddKernelNode_v2, GraphAddKernelNode, qmoe_cuda_driver);
SAME_SHAPE(cuGraphInstantiateWithFlags, GraphInstantiate, qmoe_cuda_driver);
SAME_SHAPE(cuGraphExecKernelNodeSetParams_v2, GraphExecKernelNodeSetParams, qmoe_cuda_driver);
SAME_SHAPE(cuGraphLaunch, GraphLaunch, qmoe_cuda_driver);
SAME_SHAPE(cuGraphAddDependencies_v2, GraphAddDependencies2, qmoe_cuda_driver);
_Static_assert(sizeof(CUdeviceptr) == 8 && sizeof(CUresult) == sizeof(int), "CUDA ABI assumptions");
_Static_assert(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR == 75 && CU_FUNC_ATTRIBUTE_NUM_REGS == 4 &&
                   CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN == 97 &&
                   CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES == 8,
               "attribute numbers used by the no-header build");
#endif

static pthread_mutex_t load_lock = PTHREAD_MUTEX_INITIALIZER;

/* ---- driver ------------------------------------------------------------------------------------------ */

static qmoe_cuda_driver drv;
static int drv_state; /* 0 not tried, 1 loaded, negative: the error of the first try */
static char drv_error[512];

static void *sym(void *lib, const char *name, const char *alt, char *missing, size_t n) {
  void *p = dlsym(lib, name);
  if (!p && alt) p = dlsym(lib, alt);
  if (!p && !missing[0]) snprintf(missing, n, "%s", name);
  return p;
}

int qmoe_cuda_driver_load(const qmoe_cuda_driver **out) {
  pthread_mutex_lock(&load_lock);
  if (drv_state == 0) {
    void *lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
      snprintf(drv_error, sizeof drv_error, "no CUDA driver found (libcuda.so.1): %s", dlerror());
      drv_state = QMOE_ENODEV;
    } else {
      char miss[128] = "";
#define D(member, name, alt) *(void **)&drv.member = sym(lib, name, alt, miss, sizeof miss)
      D(Init, "cuInit", NULL);
      D(DriverGetVersion, "cuDriverGetVersion", NULL);
      D(GetErrorName, "cuGetErrorName", NULL);
      D(GetErrorString, "cuGetErrorString", NULL);
      D(DeviceGetCount, "cuDeviceGetCount", NULL);
      D(DeviceGet, "cuDeviceGet", NULL);
      D(DeviceGetName, "cuDeviceGetName", NULL);
      D(DeviceGetAttribute, "cuDeviceGetAttribute", NULL);
      D(DeviceTotalMem, "cuDeviceTotalMem_v2", NULL);
      D(DevicePrimaryCtxRetain, "cuDevicePrimaryCtxRetain", NULL);
      D(DevicePrimaryCtxRelease, "cuDevicePrimaryCtxRelease_v2", "cuDevicePrimaryCtxRelease");
      D(CtxSetCurrent, "cuCtxSetCurrent", NULL);
      D(StreamCreate, "cuStreamCreate", NULL);
      D(StreamDestroy, "cuStreamDestroy_v2", "cuStreamDestroy");
      D(StreamSynchronize, "cuStreamSynchronize", NULL);
      D(MemAlloc, "cuMemAlloc_v2", NULL);
      D(MemFree, "cuMemFree_v2", NULL);
      D(MemcpyHtoDAsync, "cuMemcpyHtoDAsync_v2", NULL);
      D(MemcpyDtoHAsync, "cuMemcpyDtoHAsync_v2", NULL);
      D(MemsetD8Async, "cuMemsetD8Async", NULL);
      D(ModuleLoadData, "cuModuleLoadData", NULL);
      D(ModuleUnload, "cuModuleUnload", NULL);
      D(ModuleGetFunction, "cuModuleGetFunction", NULL);
      D(FuncGetAttribute, "cuFuncGetAttribute", NULL);
      D(FuncSetAttribute, "cuFuncSetAttribute", NULL);
      D(LaunchKernel, "cuLaunchKernel", NULL);
      D(EventCreate, "cuEventCreate", NULL);
      D(EventRecord, "cuEventRecord", NULL);
      D(EventSynchronize, "cuEventSynchronize", NULL);
      D(EventElapsedTime, "cuEventElapsedTime_v2", "cuEventElapsedTime");
      D(EventDestroy, "cuEventDestroy_v2", "cuEventDestroy");
      char opt_miss[128] = ""; /* graphs are optional */
#define O(member, name) *(void **)&drv.member = sym(lib, name, NULL, opt_miss, sizeof opt_miss)
      O(GraphCreate, "cuGraphCreate");
      O(GraphAddKernelNode, "cuGraphAddKernelNode_v2");
      O(GraphInstantiate, "cuGraphInstantiateWithFlags");
      O(GraphExecKernelNodeSetParams, "cuGraphExecKernelNodeSetParams_v2");
      O(GraphLaunch, "cuGraphLaunch");
      O(GraphExecDestroy, "cuGraphExecDestroy");
      O(GraphDestroy, "cuGraphDestroy");
#undef O
      if (opt_miss[0]) drv.GraphCreate = NULL; /* all or none */
      char pdl_miss[64] = "";
      *(void **)&drv.GraphAddDependencies2 = sym(lib, "cuGraphAddDependencies_v2", NULL, pdl_miss, sizeof pdl_miss);
#undef D
      if (miss[0]) {
        snprintf(drv_error, sizeof drv_error, "the CUDA driver (libcuda.so.1) lacks %s; update the NVIDIA driver",
                 miss);
        dlclose(lib);
        drv_state = QMOE_ENODEV;
      } else {
        drv.lib = lib;
        drv_state = 1;
      }
    }
  }
  int rc = drv_state == 1 ? 0 : drv_state;
  pthread_mutex_unlock(&load_lock);
  if (rc) {
    qmoe_set_error("%s", drv_error);
    return rc;
  }
  *out = &drv;
  return 0;
}

int qmoe_cuda_check(const qmoe_cuda_driver *d, CUresult r, const char *call, const char *kernel) {
  if (r == CUDA_SUCCESS) return 0;
  const char *name = NULL, *desc = NULL;
  if (d->GetErrorName) d->GetErrorName(r, &name);
  if (d->GetErrorString) d->GetErrorString(r, &desc);
  qmoe_set_error("%s failed%s%s: %s (%d: %s)", call, kernel ? " for kernel " : "", kernel ? kernel : "",
                 name ? name : "CUDA_ERROR_?", (int)r, desc ? desc : "no description");
  return QMOE_EDEVICE;
}

/* ---- NVRTC ------------------------------------------------------------------------------------------- */

static qmoe_cuda_nvrtc nv;
static int nv_state;
static char nv_error[1024];

static int nvrtc_bind(void *lib, char *miss, size_t n) {
#define N(member, name) *(void **)&nv.member = sym(lib, name, NULL, miss, n)
  N(Version, "nvrtcVersion");
  N(GetErrorString, "nvrtcGetErrorString");
  N(GetNumSupportedArchs, "nvrtcGetNumSupportedArchs");
  N(GetSupportedArchs, "nvrtcGetSupportedArchs");
  N(CreateProgram, "nvrtcCreateProgram");
  N(DestroyProgram, "nvrtcDestroyProgram");
  N(CompileProgram, "nvrtcCompileProgram");
  N(GetProgramLogSize, "nvrtcGetProgramLogSize");
  N(GetProgramLog, "nvrtcGetProgramLog");
  N(GetCUBINSize, "nvrtcGetCUBINSize");
  N(GetCUBIN, "nvrtcGetCUBIN");
#undef N
  return miss[0] ? -1 : 0;
}

int qmoe_cuda_nvrtc_load(const qmoe_cuda_nvrtc **out) {
  pthread_mutex_lock(&load_lock);
  if (nv_state == 0) {
    char cand[8][512];
    int nc = 0;
    const char *names[] = { "libnvrtc.so", "libnvrtc.so.13", "libnvrtc.so.12" };
    for (int i = 0; i < 3; i++) snprintf(cand[nc++], sizeof cand[0], "%s", names[i]);
    const char *cp = getenv("CUDA_PATH");
    const char *dirs[] = { cp && cp[0] ? cp : NULL, "/usr/local/cuda" };
    for (int d = 0; d < 2; d++) {
      if (!dirs[d]) continue;
      snprintf(cand[nc++], sizeof cand[0], "%s/lib64/libnvrtc.so", dirs[d]);
      if (d == 1) break;
      snprintf(cand[nc++], sizeof cand[0], "%s/lib64/libnvrtc.so.13", dirs[d]);
      snprintf(cand[nc++], sizeof cand[0], "%s/lib64/libnvrtc.so.12", dirs[d]);
    }
    void *lib = NULL;
    int i;
    for (i = 0; i < nc && !lib; i++) lib = dlopen(cand[i], RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
      snprintf(nv_error, sizeof nv_error,
               "NVRTC not found (tried libnvrtc.so, libnvrtc.so.13, libnvrtc.so.12, $CUDA_PATH/lib64, "
               "/usr/local/cuda/lib64); install the CUDA toolkit's NVRTC (e.g. Debian/Ubuntu package cuda-nvrtc-13-0)");
      nv_state = QMOE_ENODEV;
    } else {
      char miss[128] = "";
      snprintf(nv.path, sizeof nv.path, "%s", cand[i - 1]);
      if (nvrtc_bind(lib, miss, sizeof miss) != 0) {
        snprintf(nv_error, sizeof nv_error, "NVRTC (%s) lacks %s; it is too old, install CUDA 12 or newer", nv.path,
                 miss);
        dlclose(lib);
        nv_state = QMOE_ENODEV;
      } else if (nv.Version(&nv.major, &nv.minor) != NVRTC_SUCCESS) {
        snprintf(nv_error, sizeof nv_error, "nvrtcVersion failed (%s)", nv.path);
        dlclose(lib);
        nv_state = QMOE_ENODEV;
      } else {
        nv.lib = lib;
        nv_state = 1;
      }
    }
  }
  int rc = nv_state == 1 ? 0 : nv_state;
  pthread_mutex_unlock(&load_lock);
  if (rc) {
    qmoe_set_error("%s", nv_error);
    return rc;
  }
  *out = &nv;
  return 0;
}

/* Deterministic results: no fast math; FMA contraction in the kernels' own arithmetic is allowed (the
 * decode functions use __fmul_rn/__fadd_rn/__fsub_rn, which are never contracted). */
static const char *const cuda_options[] = { "--std=c++17", "--dopt=on", "-DQMOE_NVRTC=1", NULL };

const char *const *qmoe_cuda_options(void) { return cuda_options; }

static char *get_log(const qmoe_cuda_nvrtc *n, nvrtcProgram prog) {
  size_t sz = 0;
  if (n->GetProgramLogSize(prog, &sz) != NVRTC_SUCCESS || sz == 0) sz = 1;
  char *log = calloc(1, sz + 1);
  if (!log) abort();
  if (sz > 1 && n->GetProgramLog(prog, log) != NVRTC_SUCCESS) log[0] = 0;
  return log;
}

int qmoe_cuda_compile(const char *src, const char *kernel, int arch, const char *const *extra, int n_extra,
                      void **cubin, size_t *cubin_size, char **log_out) {
  const qmoe_cuda_nvrtc *n;
  int rc = qmoe_cuda_nvrtc_load(&n);
  if (rc) return rc;
  *cubin = NULL;
  *cubin_size = 0;
  if (log_out) *log_out = NULL;
  /* The architecture must be one this NVRTC knows: never compile for another one. */
  int na = 0, known = 0;
  if (n->GetNumSupportedArchs(&na) == NVRTC_SUCCESS && na > 0 && na < 1024) {
    int archs[1024];
    if (n->GetSupportedArchs(archs) == NVRTC_SUCCESS)
      for (int i = 0; i < na; i++) known |= archs[i] == arch;
  }
  if (!known) {
    qmoe_set_error("NVRTC %d.%d (%s) cannot compile kernel %s for sm_%d; install a CUDA toolkit that supports it",
                   n->major, n->minor, n->path, kernel, arch);
    return QMOE_EUNSUPPORTED;
  }
  const char *opts[32];
  int no = 0;
  char archopt[64];
  snprintf(archopt, sizeof archopt, "--gpu-architecture=sm_%d", arch);
  opts[no++] = archopt;
  for (int i = 0; cuda_options[i]; i++) opts[no++] = cuda_options[i];
  for (int i = 0; i < n_extra && no < 32; i++) opts[no++] = extra[i];
  char fname[128];
  snprintf(fname, sizeof fname, "%s.cu", kernel);
  nvrtcProgram prog;
  nvrtcResult r = n->CreateProgram(&prog, src, fname, 0, NULL, NULL);
  if (r != NVRTC_SUCCESS) {
    qmoe_set_error("nvrtcCreateProgram failed for kernel %s: %s", kernel, n->GetErrorString(r));
    return QMOE_EDEVICE;
  }
  r = n->CompileProgram(prog, no, opts);
  char *log = get_log(n, prog);
  if (r != NVRTC_SUCCESS) {
    qmoe_set_error("nvrtcCompileProgram failed for kernel %s (sm_%d, NVRTC %d.%d): %s\n%s", kernel, arch, n->major,
                   n->minor, n->GetErrorString(r), log);
    free(log);
    n->DestroyProgram(&prog);
    return QMOE_EDEVICE;
  }
  size_t sz = 0;
  r = n->GetCUBINSize(prog, &sz);
  if (r != NVRTC_SUCCESS || sz == 0) {
    qmoe_set_error("nvrtcGetCUBINSize failed for kernel %s: %s", kernel,
                   r != NVRTC_SUCCESS ? n->GetErrorString(r) : "empty CUBIN");
    free(log);
    n->DestroyProgram(&prog);
    return QMOE_EDEVICE;
  }
  void *bin = malloc(sz);
  if (!bin) abort();
  r = n->GetCUBIN(prog, bin);
  n->DestroyProgram(&prog);
  if (r != NVRTC_SUCCESS) {
    qmoe_set_error("nvrtcGetCUBIN failed for kernel %s: %s", kernel, n->GetErrorString(r));
    free(bin);
    free(log);
    return QMOE_EDEVICE;
  }
  *cubin = bin;
  *cubin_size = sz;
  if (log_out) *log_out = log;
  else free(log);
  return 0;
}

/* ptxas -v prints, per entry:
 *   ptxas info    : Compiling entry function 'K' for 'sm_90'
 *   ptxas info    : Function properties for K
 *       S bytes stack frame, A bytes spill stores, B bytes spill loads
 *   ptxas info    : Used R registers, used 1 barriers, M bytes smem, C bytes cmem[0]       */
int qmoe_cuda_parse_ptxas(const char *log, const char *kernel, qmoe_cuda_ptxas_info *info) {
  info->regs = info->spill_stores = info->spill_loads = info->smem = info->stack = info->cmem = -1;
  char key[160];
  snprintf(key, sizeof key, "Function properties for %s\n", kernel); /* whole name: K is a prefix of K_tok */
  const char *p = strstr(log, key);
  if (!p) return -1;
  p += strlen(key);
  const char *q = strstr(p, "bytes stack frame");
  if (q) {
    const char *s = q;
    while (s > p && (s[-1] == ' ' || (s[-1] >= '0' && s[-1] <= '9'))) s--;
    sscanf(s, "%d bytes stack frame, %d bytes spill stores, %d bytes spill loads", &info->stack,
           &info->spill_stores, &info->spill_loads);
  }
  const char *u = strstr(p, "Used ");
  if (u) {
    sscanf(u, "Used %d registers", &info->regs);
    const char *line_end = strchr(u, '\n');
    const char *sm = strstr(u, "bytes smem");
    if (sm && (!line_end || sm < line_end)) {
      const char *s = sm;
      while (s > u && (s[-1] == ' ' || (s[-1] >= '0' && s[-1] <= '9'))) s--;
      sscanf(s, "%d", &info->smem);
    } else {
      info->smem = 0;
    }
    const char *cm = strstr(u, "bytes cmem[0]");
    if (cm && (!line_end || cm < line_end)) {
      const char *s = cm;
      while (s > u && (s[-1] == ' ' || (s[-1] >= '0' && s[-1] <= '9'))) s--;
      sscanf(s, "%d", &info->cmem);
    }
  }
  return info->regs >= 0 && info->spill_stores >= 0 ? 0 : -1;
}

/* ---- disk cache -------------------------------------------------------------------------------------- */

void qmoe_cuda_cache_dir(char *buf, size_t n) {
  const char *e = getenv("QMOE_CUDA_CACHE");
  buf[0] = 0;
  if (e && e[0]) {
    if (strcmp(e, "0") != 0) snprintf(buf, n, "%s", e);
    return;
  }
  const char *x = getenv("XDG_CACHE_HOME");
  const char *h = getenv("HOME");
  if (x && x[0]) snprintf(buf, n, "%s/qmoe/cuda", x);
  else if (h && h[0]) snprintf(buf, n, "%s/.cache/qmoe/cuda", h);
}

typedef struct { uint64_t a, b; } hash2;

static void hash_bytes(hash2 *h, const void *data, size_t n) {
  const unsigned char *p = data;
  for (size_t i = 0; i < n; i++) {
    h->a = (h->a ^ p[i]) * 0x100000001b3ull; /* FNV-1a */
    h->b = (h->b ^ p[i]) * 0x9E3779B97F4A7C15ull;
    h->b ^= h->b >> 29;
  }
}

static void hash_str(hash2 *h, const char *s) { hash_bytes(h, s, strlen(s) + 1); }

void qmoe_cuda_cache_key(const char *src, int arch, int nvrtc_major, int nvrtc_minor, int driver_version,
                         char out[33]) {
  hash2 h = { 0xcbf29ce484222325ull, 0x6a09e667f3bcc909ull };
  hash_str(&h, src);
  for (int i = 0; cuda_options[i]; i++) hash_str(&h, cuda_options[i]);
  char v[96];
  snprintf(v, sizeof v, "sm_%d nvrtc %d.%d driver %d", arch, nvrtc_major, nvrtc_minor, driver_version);
  hash_str(&h, v);
  snprintf(out, 33, "%016llx%016llx", (unsigned long long)h.a, (unsigned long long)h.b);
}

static uint64_t checksum(const void *data, size_t n) {
  hash2 h = { 0xcbf29ce484222325ull, 0 };
  hash_bytes(&h, data, n);
  return h.a;
}

static const char CACHE_MAGIC[8] = { 'Q', 'M', 'O', 'E', 'C', 'U', 'B', '1' };

static void mkdir_p(const char *dir) {
  char tmp[1024];
  snprintf(tmp, sizeof tmp, "%s", dir);
  for (char *p = tmp + 1; *p; p++) {
    if (*p == '/') {
      *p = 0;
      mkdir(tmp, 0755);
      *p = '/';
    }
  }
  mkdir(tmp, 0755);
}

/* Reads a cached CUBIN; NULL when absent or damaged (a damaged file is removed). */
void *qmoe_cuda_cache_read(const char *path, size_t *size) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  unsigned char hdr[24];
  void *bin = NULL;
  if (fread(hdr, 1, sizeof hdr, f) == sizeof hdr && memcmp(hdr, CACHE_MAGIC, 8) == 0) {
    uint64_t sz, sum;
    memcpy(&sz, hdr + 8, 8);
    memcpy(&sum, hdr + 16, 8);
    if (sz > 0 && sz < (1ull << 30)) {
      bin = malloc(sz);
      if (!bin) abort();
      if (fread(bin, 1, sz, f) != sz || fgetc(f) != EOF || checksum(bin, sz) != sum) {
        free(bin);
        bin = NULL;
      } else {
        *size = sz;
      }
    }
  }
  fclose(f);
  if (!bin) unlink(path);
  return bin;
}

/* Writes atomically (temporary file + rename); a cache that cannot be written is only a missed speed-up. */
void qmoe_cuda_cache_write(const char *dir, const char *path, const void *bin, size_t size) {
  mkdir_p(dir);
  char tmp[1200];
  snprintf(tmp, sizeof tmp, "%s.%ld.tmp", path, (long)getpid());
  FILE *f = fopen(tmp, "wb");
  if (!f) return;
  unsigned char hdr[24];
  uint64_t sz = size, sum = checksum(bin, size);
  memcpy(hdr, CACHE_MAGIC, 8);
  memcpy(hdr + 8, &sz, 8);
  memcpy(hdr + 16, &sum, 8);
  int ok = fwrite(hdr, 1, sizeof hdr, f) == sizeof hdr && fwrite(bin, 1, size, f) == size;
  ok = (fclose(f) == 0) && ok;
  if (!ok || rename(tmp, path) != 0) unlink(tmp);
}

/* ---- context ----------------------------------------------------------------------------------------- */

int qmoe_cuda_ctx_open(qmoe_cuda_ctx *c) {
  memset(c, 0, sizeof *c);
  int rc = qmoe_cuda_driver_load(&c->d);
  if (rc) return rc;
  const qmoe_cuda_driver *d = c->d;
  CUresult r = d->Init(0);
  if (r != CUDA_SUCCESS) {
    qmoe_cuda_check(d, r, "cuInit", NULL);
    char msg[1024];
    snprintf(msg, sizeof msg, "no CUDA device found (%s)", qmoe_last_error());
    qmoe_set_error("%s", msg);
    return QMOE_ENODEV;
  }
  int count = 0;
  if ((rc = qmoe_cuda_check(d, d->DeviceGetCount(&count), "cuDeviceGetCount", NULL))) return rc;
  if (count <= 0) {
    qmoe_set_error("no CUDA device found (the driver reports 0 devices)");
    return QMOE_ENODEV;
  }
  const char *e = getenv("QMOE_CUDA_DEVICE");
  if (e && e[0]) {
    char *end;
    long v = strtol(e, &end, 10);
    if (*end || v < 0 || v >= count) {
      qmoe_set_error("QMOE_CUDA_DEVICE=%s is not a device: %d CUDA device(s), numbered 0..%d", e, count, count - 1);
      return QMOE_EINVAL;
    }
    c->ordinal = (int)v;
  }
  if ((rc = qmoe_cuda_check(d, d->DeviceGet(&c->dev, c->ordinal), "cuDeviceGet", NULL))) return rc;
  if ((rc = qmoe_cuda_check(d, d->DeviceGetName(c->name, sizeof c->name - 1, c->dev), "cuDeviceGetName", NULL)))
    return rc;
  struct { int *dst; CUdevice_attribute a; const char *what; } attrs[] = {
    { &c->cc_major, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, "compute capability" },
    { &c->cc_minor, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, "compute capability" },
    { &c->sm_count, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, "multiprocessor count" },
    { &c->max_smem_optin, CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN, "shared memory" },
  };
  for (size_t i = 0; i < sizeof attrs / sizeof attrs[0]; i++)
    if ((rc = qmoe_cuda_check(d, d->DeviceGetAttribute(attrs[i].dst, attrs[i].a, c->dev), "cuDeviceGetAttribute",
                              NULL)))
      return rc;
  if ((rc = qmoe_cuda_check(d, d->DriverGetVersion(&c->driver_version), "cuDriverGetVersion", NULL))) return rc;
  if ((rc = qmoe_cuda_check(d, d->DevicePrimaryCtxRetain(&c->ctx, c->dev), "cuDevicePrimaryCtxRetain", NULL)))
    return rc;
  if ((rc = qmoe_cuda_check(d, d->CtxSetCurrent(c->ctx), "cuCtxSetCurrent", NULL)) ||
      (rc = qmoe_cuda_check(d, d->StreamCreate(&c->stream, CU_STREAM_NON_BLOCKING), "cuStreamCreate", NULL))) {
    d->DevicePrimaryCtxRelease(c->dev);
    c->ctx = NULL;
    return rc;
  }
  qmoe_cuda_cache_dir(c->cache_dir, sizeof c->cache_dir);
  return 0;
}

int qmoe_cuda_ctx_use(qmoe_cuda_ctx *c) {
  return qmoe_cuda_check(c->d, c->d->CtxSetCurrent(c->ctx), "cuCtxSetCurrent", NULL);
}

void qmoe_cuda_ctx_close(qmoe_cuda_ctx *c) {
  if (!c->d || !c->ctx) return;
  c->d->CtxSetCurrent(c->ctx);
  if (c->stream) {
    c->d->StreamSynchronize(c->stream);
    c->d->StreamDestroy(c->stream);
  }
  c->d->DevicePrimaryCtxRelease(c->dev);
  c->ctx = NULL;
  c->stream = NULL;
}

/* SRC with `#define NAME 1` first for each NAME in QMOE_CUDA_DEFINES (comma-separated identifiers: kernel
 * experiments such as QMOE_LANE_STRIDED, see docs/cuda.md), malloc'd; NULL when the variable is unset or empty.
 * The cache key hashes the text, so each set of defines has its own CUBINs. */
static char *with_defines(const char *src) {
  const char *e = getenv("QMOE_CUDA_DEFINES");
  if (!e || !e[0]) return NULL;
  size_t n = strlen(src), el = strlen(e);
  char *out = malloc(n + 10 * el + 64);
  if (!out) return NULL;
  size_t k = 0;
  for (const char *p = e; *p;) {
    size_t len = strcspn(p, ",");
    int ok = len > 0 && len < 64;
    for (size_t i = 0; ok && i < len; i++)
      ok = p[i] == '_' || (p[i] >= 'A' && p[i] <= 'Z') || (p[i] >= 'a' && p[i] <= 'z') || (i && p[i] >= '0' && p[i] <= '9');
    if (ok) k += (size_t)sprintf(out + k, "#define %.*s 1\n", (int)len, p);
    p += len + (p[len] == ',');
  }
  memcpy(out + k, src, n + 1);
  return out;
}

int qmoe_cuda_module_load(qmoe_cuda_ctx *c, const char *src0, const char *kernel, CUmodule *out) {
  const qmoe_cuda_nvrtc *n;
  int rc = qmoe_cuda_nvrtc_load(&n);
  if (rc) return rc;
  char *defined = with_defines(src0);
  const char *src = defined ? defined : src0;
  int arch = c->cc_major * 10 + c->cc_minor;
  char key[33], path[1200] = "";
  void *bin = NULL;
  size_t size = 0;
  if (c->cache_dir[0]) {
    qmoe_cuda_cache_key(src, arch, n->major, n->minor, c->driver_version, key);
    snprintf(path, sizeof path, "%s/%s-%s.cubin", c->cache_dir, kernel, key);
    bin = qmoe_cuda_cache_read(path, &size);
    if (bin) {
      CUresult r = c->d->ModuleLoadData(out, bin);
      free(bin);
      if (r == CUDA_SUCCESS) {
        free(defined);
        return 0;
      }
      unlink(path); /* stale or damaged: compile the same source again */
      bin = NULL;
    }
  }
  rc = qmoe_cuda_compile(src, kernel, arch, NULL, 0, &bin, &size, NULL);
  free(defined);
  if (rc) return rc;
  rc = qmoe_cuda_check(c->d, c->d->ModuleLoadData(out, bin), "cuModuleLoadData", kernel);
  if (rc == 0 && path[0]) qmoe_cuda_cache_write(c->cache_dir, path, bin, size);
  free(bin);
  return rc;
}

/* ---- events ------------------------------------------------------------------------------------------ */

int qmoe_cuda_event_create(qmoe_cuda_ctx *c, CUevent *out) {
  return qmoe_cuda_check(c->d, c->d->EventCreate(out, CU_EVENT_DEFAULT), "cuEventCreate", NULL);
}

int qmoe_cuda_event_record(qmoe_cuda_ctx *c, CUevent e) {
  return qmoe_cuda_check(c->d, c->d->EventRecord(e, c->stream), "cuEventRecord", NULL);
}

int qmoe_cuda_event_elapsed_ms(qmoe_cuda_ctx *c, CUevent start, CUevent end, float *ms) {
  int rc = qmoe_cuda_check(c->d, c->d->EventSynchronize(end), "cuEventSynchronize", NULL);
  if (rc) return rc;
  return qmoe_cuda_check(c->d, c->d->EventElapsedTime(ms, start, end), "cuEventElapsedTime", NULL);
}

void qmoe_cuda_event_destroy(qmoe_cuda_ctx *c, CUevent e) {
  if (e) c->d->EventDestroy(e);
}

/* ---- the embedded variant table ---------------------------------------------------------------------- */

static int kv_str(const char *line, const char *key, char *dst, size_t n) {
  char pat[48];
  snprintf(pat, sizeof pat, " %s=", key);
  const char *p = strstr(line, pat);
  if (!p) return -1;
  p += strlen(pat);
  size_t k = 0;
  while (p[k] && p[k] != ' ' && p[k] != '\n' && k + 1 < n) k++;
  memcpy(dst, p, k);
  dst[k] = 0;
  return 0;
}

static int kv_int(const char *line, const char *key, int *dst) {
  char buf[32];
  if (kv_str(line, key, buf, sizeof buf)) return -1;
  char *end;
  long v = strtol(buf, &end, 10);
  if (*end) return -1;
  *dst = (int)v;
  return 0;
}

int qmoe_cuda_variant_parse(const char *file, const char *src, qmoe_cuda_variant *v) {
  memset(v, 0, sizeof *v);
  v->file = file;
  v->src = src;
  const char *p = strstr(src, "\n// qmoe-cuda:");
  if (!p) {
    qmoe_set_error("embedded CUDA kernel %s has no '// qmoe-cuda:' line (regenerate with codegen/gen_cuda.lua)", file);
    return QMOE_EFORMAT;
  }
  char line[512];
  const char *e = strchr(p + 1, '\n');
  size_t len = e ? (size_t)(e - p - 1) : strlen(p + 1);
  if (len >= sizeof line - 2) len = sizeof line - 2;
  memcpy(line, p + 1, len);
  line[len] = ' ';
  line[len + 1] = 0;
  int bad = kv_str(line, "stage", v->stage, sizeof v->stage) | kv_str(line, "qtype", v->qtype, sizeof v->qtype) |
            kv_str(line, "acc", v->acc, sizeof v->acc) | kv_str(line, "entry", v->entry, sizeof v->entry) |
            kv_int(line, "ggml_type", &v->ggml_type) | kv_int(line, "block_elements", &v->block_elements) |
            kv_int(line, "block_bytes", &v->block_bytes) | kv_int(line, "threads", &v->threads) |
            kv_int(line, "rows_per_block", &v->rows_per_block);
  if (kv_str(line, "tok_entry", v->tok_entry, sizeof v->tok_entry)) v->tok_entry[0] = 0; /* optional */
  if (bad || v->threads <= 0) {
    qmoe_set_error("embedded CUDA kernel %s: malformed '// qmoe-cuda:' line: %s", file, line);
    return QMOE_EFORMAT;
  }
  return 0;
}
