/* cuda_internal.h: the CUDA driver and NVRTC, loaded with dlopen at run time (no link-time dependency), the
 * device context, NVRTC compilation with an on-disk CUBIN cache, and the embedded kernel table. */
#ifndef QMOE_CUDA_INTERNAL_H
#define QMOE_CUDA_INTERNAL_H
#include <stddef.h>
#include <stdint.h>

#ifdef QMOE_HAVE_CUDA_H
#include <cuda.h>
#include <nvrtc.h>
#else
/* The few driver and NVRTC types qmoe uses, declared as the toolkit headers declare them (ABI-compatible:
 * enums are int-sized, handles are opaque pointers). When the headers exist, cuda.c checks these shapes
 * against them at compile time. */
typedef int CUresult;
typedef int CUdevice;
typedef int CUdevice_attribute;
typedef int CUfunction_attribute;
typedef unsigned long long CUdeviceptr;
typedef struct CUctx_st *CUcontext;
typedef struct CUmod_st *CUmodule;
typedef struct CUfunc_st *CUfunction;
typedef struct CUstream_st *CUstream;
typedef struct CUevent_st *CUevent;
typedef int nvrtcResult;
typedef struct _nvrtcProgram *nvrtcProgram;
typedef struct CUgraph_st *CUgraph;
typedef struct CUgraphNode_st *CUgraphNode;
typedef struct CUgraphExec_st *CUgraphExec;
typedef struct CUkern_st *CUkernel;
typedef struct CUDA_KERNEL_NODE_PARAMS_v2_st {
  CUfunction func;
  unsigned int gridDimX, gridDimY, gridDimZ, blockDimX, blockDimY, blockDimZ, sharedMemBytes;
  void **kernelParams;
  void **extra;
  CUkernel kern;
  CUcontext ctx;
} CUDA_KERNEL_NODE_PARAMS_v2;
#define CUDA_SUCCESS 0
#define NVRTC_SUCCESS 0
#define CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT 16
#define CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR 75
#define CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR 76
#define CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN 97
#define CU_FUNC_ATTRIBUTE_NUM_REGS 4
#define CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES 8
#define CU_STREAM_NON_BLOCKING 0x1
#define CU_EVENT_DEFAULT 0x0
typedef struct CUgraphEdgeData_st {
  unsigned char from_port, to_port, type, reserved[5];
} CUgraphEdgeData;
#endif
/* Programmatic dependent launch between graph nodes (sm_90+, CUDA 12.3+ drivers): an edge of this type from
 * this port lets the next kernel launch as the previous one's blocks finish; the kernel waits at
 * qmoe_grid_wait() (griddepcontrol.wait) until the previous grid has completed and its writes are visible. */
#define QMOE_CU_GRAPH_DEPENDENCY_TYPE_PROGRAMMATIC 1
#define QMOE_CU_GRAPH_KERNEL_NODE_PORT_PROGRAMMATIC 1

/* Driver entry points (versioned names resolved with dlsym, as cuda.h maps them). */
typedef struct {
  void *lib;
  CUresult (*Init)(unsigned int);
  CUresult (*DriverGetVersion)(int *);
  CUresult (*GetErrorName)(CUresult, const char **);
  CUresult (*GetErrorString)(CUresult, const char **);
  CUresult (*DeviceGetCount)(int *);
  CUresult (*DeviceGet)(CUdevice *, int);
  CUresult (*DeviceGetName)(char *, int, CUdevice);
  CUresult (*DeviceGetAttribute)(int *, CUdevice_attribute, CUdevice);
  CUresult (*DeviceTotalMem)(size_t *, CUdevice);
  CUresult (*DevicePrimaryCtxRetain)(CUcontext *, CUdevice);
  CUresult (*DevicePrimaryCtxRelease)(CUdevice);
  CUresult (*CtxSetCurrent)(CUcontext);
  CUresult (*StreamCreate)(CUstream *, unsigned int);
  CUresult (*StreamDestroy)(CUstream);
  CUresult (*StreamSynchronize)(CUstream);
  CUresult (*MemAlloc)(CUdeviceptr *, size_t);
  CUresult (*MemFree)(CUdeviceptr);
  CUresult (*MemcpyHtoDAsync)(CUdeviceptr, const void *, size_t, CUstream);
  CUresult (*MemcpyDtoHAsync)(void *, CUdeviceptr, size_t, CUstream);
  CUresult (*MemsetD8Async)(CUdeviceptr, unsigned char, size_t, CUstream);
  CUresult (*ModuleLoadData)(CUmodule *, const void *);
  CUresult (*ModuleUnload)(CUmodule);
  CUresult (*ModuleGetFunction)(CUfunction *, CUmodule, const char *);
  CUresult (*FuncGetAttribute)(int *, CUfunction_attribute, CUfunction);
  CUresult (*FuncSetAttribute)(CUfunction, CUfunction_attribute, int);
  CUresult (*LaunchKernel)(CUfunction, unsigned int, unsigned int, unsigned int, unsigned int, unsigned int,
                           unsigned int, unsigned int, CUstream, void **, void **);
  CUresult (*EventCreate)(CUevent *, unsigned int);
  CUresult (*EventRecord)(CUevent, CUstream);
  CUresult (*EventSynchronize)(CUevent);
  CUresult (*EventElapsedTime)(float *, CUevent, CUevent);
  CUresult (*EventDestroy)(CUevent);
  /* Graphs (optional: NULL when the driver lacks them; the backend then launches stage by stage). */
  CUresult (*GraphCreate)(CUgraph *, unsigned int);
  CUresult (*GraphAddKernelNode)(CUgraphNode *, CUgraph, const CUgraphNode *, size_t,
                                 const CUDA_KERNEL_NODE_PARAMS_v2 *);
  CUresult (*GraphInstantiate)(CUgraphExec *, CUgraph, unsigned long long);
  CUresult (*GraphExecKernelNodeSetParams)(CUgraphExec, CUgraphNode, const CUDA_KERNEL_NODE_PARAMS_v2 *);
  CUresult (*GraphLaunch)(CUgraphExec, CUstream);
  CUresult (*GraphExecDestroy)(CUgraphExec);
  CUresult (*GraphDestroy)(CUgraph);
  /* optional on its own (NULL before CUDA 12.3): edges with data, for programmatic dependent launch */
  CUresult (*GraphAddDependencies2)(CUgraph, const CUgraphNode *, const CUgraphNode *, const CUgraphEdgeData *, size_t);
} qmoe_cuda_driver;

/* NVRTC entry points. */
typedef struct {
  void *lib;
  char path[512]; /* the library that was loaded */
  int major, minor;
  nvrtcResult (*Version)(int *, int *);
  const char *(*GetErrorString)(nvrtcResult);
  nvrtcResult (*GetNumSupportedArchs)(int *);
  nvrtcResult (*GetSupportedArchs)(int *);
  nvrtcResult (*CreateProgram)(nvrtcProgram *, const char *, const char *, int, const char *const *,
                               const char *const *);
  nvrtcResult (*DestroyProgram)(nvrtcProgram *);
  nvrtcResult (*CompileProgram)(nvrtcProgram, int, const char *const *);
  nvrtcResult (*GetProgramLogSize)(nvrtcProgram, size_t *);
  nvrtcResult (*GetProgramLog)(nvrtcProgram, char *);
  nvrtcResult (*GetCUBINSize)(nvrtcProgram, size_t *);
  nvrtcResult (*GetCUBIN)(nvrtcProgram, char *);
} qmoe_cuda_nvrtc;

/* What the CUDA backend's graphs did (tests): graphs built, replays of a cached graph, nodes patched in them. */
typedef struct { uint64_t builds, replays, nodes_patched; } qmoe_cuda_graph_stats;
struct qmoe_backend;
int qmoe_cuda_graph_stats_of(struct qmoe_backend *be, qmoe_cuda_graph_stats *out);
/* For tests: the early bits (kernel_args.early in backend_cuda.c: the inputs launch I may read before its grid
 * wait) of launch I of the recording in progress. QMOE_EINVAL when no recording is open or I is past its end. */
int qmoe_cuda_graph_early_of(struct qmoe_backend *be, size_t i, uint64_t *out);

/* Loads the driver (libcuda.so.1) once per process. No driver: QMOE_ENODEV, "no CUDA driver found
 * (libcuda.so.1)". */
int qmoe_cuda_driver_load(const qmoe_cuda_driver **out);
/* Loads NVRTC once per process: libnvrtc.so, libnvrtc.so.13, libnvrtc.so.12, then $CUDA_PATH/lib64 and
 * /usr/local/cuda/lib64. Missing: QMOE_ENODEV naming what was tried. */
int qmoe_cuda_nvrtc_load(const qmoe_cuda_nvrtc **out);

/* One NVRTC compilation of SRC (entry KERNEL, for messages) to CUBIN for sm_<arch> (e.g. 90), with the
 * options of qmoe_cuda_options() plus EXTRA. On success *cubin (malloc'd) and *log (malloc'd, may be
 * empty; NULL accepted for log) are set. Failure: QMOE_EDEVICE with the NVRTC log in the message. */
int qmoe_cuda_compile(const char *src, const char *kernel, int arch, const char *const *extra, int n_extra,
                      void **cubin, size_t *cubin_size, char **log);
/* The fixed NVRTC options (without the architecture), for the cache key and for tests: NULL-terminated. */
const char *const *qmoe_cuda_options(void);

/* ptxas -v figures parsed from an NVRTC log (compiled with --ptxas-options=-v). -1 where absent. */
typedef struct { int regs, spill_stores, spill_loads, smem, stack, cmem; } qmoe_cuda_ptxas_info;
int qmoe_cuda_parse_ptxas(const char *log, const char *kernel, qmoe_cuda_ptxas_info *info);

/* The device context: device N (QMOE_CUDA_DEVICE, default 0), its primary context and one stream. */
typedef struct {
  const qmoe_cuda_driver *d;
  CUdevice dev;
  CUcontext ctx;
  CUstream stream;
  int ordinal, cc_major, cc_minor, sm_count, driver_version, max_smem_optin;
  char name[256];
  char cache_dir[1024]; /* "" when the cache is off */
} qmoe_cuda_ctx;

int qmoe_cuda_ctx_open(qmoe_cuda_ctx *c);
void qmoe_cuda_ctx_close(qmoe_cuda_ctx *c);
/* Makes the context current on the calling thread (every entry point of the backend calls it). */
int qmoe_cuda_ctx_use(qmoe_cuda_ctx *c);

/* Checks a driver result: on failure sets "CALL failed for KERNEL: NAME (description)" (KERNEL may be NULL)
 * and returns QMOE_EDEVICE; else 0. */
int qmoe_cuda_check(const qmoe_cuda_driver *d, CUresult r, const char *call, const char *kernel);

/* Compiles SRC for the context's device (or takes the CUBIN from the disk cache) and loads it. */
int qmoe_cuda_module_load(qmoe_cuda_ctx *c, const char *src, const char *kernel, CUmodule *out);

/* The cache directory from the environment: QMOE_CUDA_CACHE (a directory, or "0" for no cache), else
 * $XDG_CACHE_HOME/qmoe/cuda, else $HOME/.cache/qmoe/cuda. Writes "" when off. */
void qmoe_cuda_cache_dir(char *buf, size_t n);
/* The cache key of one compilation: two independent 64-bit hashes of source, options, NVRTC and driver
 * versions, as 32 hex digits. */
void qmoe_cuda_cache_key(const char *src, int arch, int nvrtc_major, int nvrtc_minor, int driver_version,
                         char out[33]);

/* One cache file (DIR/<kernel>-<key>.cubin): a header (magic, size, checksum) and the CUBIN. Reading returns
 * NULL (and removes the file) when it is absent, truncated or damaged; writing is atomic (tmp + rename) and
 * silently does nothing when DIR cannot be written. */
void *qmoe_cuda_cache_read(const char *path, size_t *size);
void qmoe_cuda_cache_write(const char *dir, const char *path, const void *bin, size_t size);

/* Device events, for benchmarks. */
int qmoe_cuda_event_create(qmoe_cuda_ctx *c, CUevent *out);
int qmoe_cuda_event_record(qmoe_cuda_ctx *c, CUevent e);
int qmoe_cuda_event_elapsed_ms(qmoe_cuda_ctx *c, CUevent start, CUevent end, float *ms);
void qmoe_cuda_event_destroy(qmoe_cuda_ctx *c, CUevent e);

/* The kernels gen_cuda.lua wrote, embedded by codegen/embed.lua (name = file stem, data = NUL-terminated). */
typedef struct { const char *name; const unsigned char *data; size_t size; } qmoe_embedded;
extern const qmoe_embedded qmoe_embedded_cuda[];
extern const size_t qmoe_embedded_cuda_count;

/* One kernel variant, read from the "// qmoe-cuda:" line gen_cuda.lua puts at the top of each file. */
typedef struct {
  const char *file;       /* embedded name, e.g. "matvec__q4_k__f32" */
  const char *src;
  char stage[40], qtype[24], acc[8], entry[96];
  char tok_entry[100];    /* own_tokens kernels: the entry for calls of T > 1 tokens (its own registers); else "" */
  int ggml_type;          /* -1 for stages that do not vary by qtype */
  int block_elements, block_bytes; /* 0 when no qtype */
  int threads;            /* threads per block */
  int rows_per_block;     /* rows (or items) one block handles; 0 when not applicable */
} qmoe_cuda_variant;

/* Parses the metadata line of one embedded source. */
int qmoe_cuda_variant_parse(const char *file, const char *src, qmoe_cuda_variant *v);

/* Launch geometry of one stage call (generated/c/cuda_launch.c, from codegen/gen_cuda.lua's LAUNCH): from the
 * call's int params and the variant's constants, the grid and the zeroed workspace the kernel needs at
 * args.buf[7] (0: none). QMOE_EUNSUPPORTED when a param exceeds a kernel's fixed-size arrays. */
typedef struct { int64_t rows_per_block, threads, sm_count, acc_bytes, tokens; } qmoe_cuda_launch_env;
typedef struct { int64_t grid[3]; size_t workspace; } qmoe_cuda_launch;
typedef int (*qmoe_cuda_launch_fn)(const qmoe_cuda_launch_env *env, const int64_t *p, qmoe_cuda_launch *out);
extern const qmoe_cuda_launch_fn qmoe_cuda_launch_table[];

/* The device context of an open "cuda" backend (for events and benchmarks on its stream); NULL for others. */
struct qmoe_backend;
qmoe_cuda_ctx *qmoe_backend_cuda_ctx(struct qmoe_backend *be);

#endif
