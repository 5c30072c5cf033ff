/* vk_internal.h: the Vulkan runtime under backend_vulkan.c — the loader opened with dlopen(), instance
 * (+ validation layer), device selection, buffers, pipelines made lazily from the embedded SPIR-V, recording
 * of many dispatches into one command buffer that sync() submits, and graphs: a dispatch sequence recorded
 * once and replayed with new params. See docs/vulkan.md. */
#ifndef QMOE_VK_INTERNAL_H
#define QMOE_VK_INTERNAL_H
#define VK_NO_PROTOTYPES
#include <stddef.h>
#include <stdint.h>
#include <vulkan/vulkan.h>
#include "backend.h"

/* ---- entry points, fetched at run time (every binary runs on a machine without Vulkan) ---- */
#define QMOE_VK_GLOBAL_FNS(X)                                                                                    \
  X(vkCreateInstance)                                                                                            \
  X(vkEnumerateInstanceExtensionProperties)                                                                      \
  X(vkEnumerateInstanceLayerProperties)                                                                          \
  X(vkEnumerateInstanceVersion)
#define QMOE_VK_INSTANCE_FNS(X)                                                                                  \
  X(vkDestroyInstance)                                                                                           \
  X(vkEnumeratePhysicalDevices)                                                                                  \
  X(vkGetPhysicalDeviceProperties)                                                                               \
  X(vkGetPhysicalDeviceProperties2)                                                                              \
  X(vkGetPhysicalDeviceFeatures2)                                                                                \
  X(vkGetPhysicalDeviceQueueFamilyProperties)                                                                    \
  X(vkGetPhysicalDeviceMemoryProperties)                                                                         \
  X(vkEnumerateDeviceExtensionProperties)                                                                        \
  X(vkCreateDevice)                                                                                              \
  X(vkGetDeviceProcAddr)
#define QMOE_VK_DEVICE_FNS(X)                                                                                    \
  X(vkDestroyDevice)                                                                                             \
  X(vkGetDeviceQueue)                                                                                            \
  X(vkDeviceWaitIdle)                                                                                            \
  X(vkCreateBuffer)                                                                                              \
  X(vkDestroyBuffer)                                                                                             \
  X(vkGetBufferMemoryRequirements)                                                                               \
  X(vkAllocateMemory)                                                                                            \
  X(vkFreeMemory)                                                                                                \
  X(vkBindBufferMemory)                                                                                          \
  X(vkMapMemory)                                                                                                 \
  X(vkUnmapMemory)                                                                                               \
  X(vkCreateShaderModule)                                                                                        \
  X(vkDestroyShaderModule)                                                                                       \
  X(vkCreateDescriptorSetLayout)                                                                                 \
  X(vkDestroyDescriptorSetLayout)                                                                                \
  X(vkCreatePipelineLayout)                                                                                      \
  X(vkDestroyPipelineLayout)                                                                                     \
  X(vkCreateComputePipelines)                                                                                    \
  X(vkDestroyPipeline)                                                                                           \
  X(vkCreateCommandPool)                                                                                         \
  X(vkDestroyCommandPool)                                                                                        \
  X(vkAllocateCommandBuffers)                                                                                    \
  X(vkBeginCommandBuffer)                                                                                        \
  X(vkEndCommandBuffer)                                                                                          \
  X(vkResetCommandBuffer)                                                                                        \
  X(vkCmdBindPipeline)                                                                                           \
  X(vkCmdPushConstants)                                                                                          \
  X(vkCmdPushDescriptorSetKHR)                                                                                   \
  X(vkCmdDispatch)                                                                                               \
  X(vkCmdDispatchIndirect)                                                                                       \
  X(vkCmdPipelineBarrier)                                                                                        \
  X(vkCmdCopyBuffer)                                                                                             \
  X(vkCmdUpdateBuffer)                                                                                           \
  X(vkCreateFence)                                                                                               \
  X(vkDestroyFence)                                                                                              \
  X(vkWaitForFences)                                                                                             \
  X(vkResetFences)                                                                                               \
  X(vkQueueSubmit)                                                                                               \
  X(vkCreateQueryPool)                                                                                           \
  X(vkDestroyQueryPool)                                                                                          \
  X(vkCmdResetQueryPool)                                                                                         \
  X(vkCmdWriteTimestamp)                                                                                         \
  X(vkGetQueryPoolResults)

#define QMOE_VK_DECLARE_FN(name) PFN_##name name;
typedef struct {
  PFN_vkGetInstanceProcAddr vkGetInstanceProcAddr;
  QMOE_VK_GLOBAL_FNS(QMOE_VK_DECLARE_FN)
  QMOE_VK_INSTANCE_FNS(QMOE_VK_DECLARE_FN)
  QMOE_VK_DEVICE_FNS(QMOE_VK_DECLARE_FN)
  PFN_vkCreateDebugUtilsMessengerEXT vkCreateDebugUtilsMessengerEXT;   /* only with the validation layer */
  PFN_vkDestroyDebugUtilsMessengerEXT vkDestroyDebugUtilsMessengerEXT;
} qmoe_vk_fns;
#undef QMOE_VK_DECLARE_FN

/* ---- device features a shader variant may need (derived from its SPIR-V OpCapability list) ---- */
enum {
  QMOE_VK_F_FLOAT64 = 1u << 0,  /* shaderFloat64 */
  QMOE_VK_F_INT64 = 1u << 1,    /* shaderInt64 */
  QMOE_VK_F_INT16 = 1u << 2,    /* shaderInt16 */
  QMOE_VK_F_INT8 = 1u << 3,     /* shaderInt8 */
  QMOE_VK_F_FLOAT16 = 1u << 4,  /* shaderFloat16 */
  QMOE_VK_F_SB8 = 1u << 5,      /* storageBuffer8BitAccess */
  QMOE_VK_F_SB16 = 1u << 6,     /* storageBuffer16BitAccess */
  QMOE_VK_F_SG_BASIC = 1u << 7, /* subgroup operations in compute shaders: basic */
  QMOE_VK_F_SG_VOTE = 1u << 8,
  QMOE_VK_F_SG_ARITH = 1u << 9,
  QMOE_VK_F_SG_BALLOT = 1u << 10,
  QMOE_VK_F_SG_SHUFFLE = 1u << 11,
  QMOE_VK_F_SG_SHUFFLE_REL = 1u << 12,
  QMOE_VK_F_SG_CLUSTERED = 1u << 13,
  QMOE_VK_F_SG_QUAD = 1u << 14,
  QMOE_VK_F_INTDOT = 1u << 15, /* shaderIntegerDotProduct (VK_KHR_shader_integer_dot_product): the q8 row shaders */
  QMOE_VK_F_COUNT = 16
};
/* Vulkan's name of feature bit i ("shaderFloat64", "subgroup arithmetic (compute)", ...). */
const char *qmoe_vk_feature_name(int bit);
/* Parses a SPIR-V module's capabilities into QMOE_VK_F_* bits. A capability qmoe does not know is an error
 * (the message names it), so a new shader cannot silently need a feature nobody checks. */
int qmoe_vk_spirv_features(const unsigned char *spv, size_t size, const char *what, uint32_t *out);
/* Parses a comma-separated list of feature names (QMOE_VK_DISABLE) into bits; an unknown name is an error. */
int qmoe_vk_parse_feature_list(const char *list, uint32_t *out);

/* ---- device selection (pure, so tests can feed it any list of devices) ---- */
typedef struct {
  char name[VK_MAX_PHYSICAL_DEVICE_NAME_SIZE];
  VkPhysicalDeviceType type;
  uint32_t api_version;
  int usable;          /* Vulkan >= 1.2 and a compute queue */
  char why_not[128];   /* when !usable */
} qmoe_vk_devinfo;
/* Picks a device: WANT (QMOE_VK_DEVICE; NULL or "" = automatic) is an index or a case-insensitive substring
 * of the name; automatic picks the first usable discrete GPU, else integrated GPU, else any usable device.
 * Returns the index, or -1 with a message (listing the devices) in err. */
int qmoe_vk_pick_device(const qmoe_vk_devinfo *devs, int n, const char *want, char *err, size_t errlen);
const char *qmoe_vk_device_type_name(VkPhysicalDeviceType t);

/* ---- the runtime ---- */
typedef struct qmoe_vk qmoe_vk;

typedef struct {
  VkBuffer buf;
  VkDeviceMemory mem;
  VkDeviceSize size;     /* bytes the caller asked for */
  VkDeviceSize alloc;    /* bytes of the VkBuffer (size rounded up to 16, plus 16: uvec4 reads stay inside) */
  unsigned char *map;    /* host pointer when the memory is host-visible and mapped, else NULL */
} qmoe_vk_buf;

/* In a graph the buffer is looked up when graph_end records (so BUF must stay valid until then: a buffer
 * destroyed while a graph that binds it is open makes that graph's end fail). */
typedef struct {
  const qmoe_vk_buf *buf;
  VkDeviceSize off;      /* must be a multiple of qmoe_vk_offset_align() */
  int writes;            /* the shader may write it (decides which barriers the dispatch needs) */
} qmoe_vk_binding;

/* Opens the loader, an instance and the selected device (env: QMOE_VK_DEVICE, QMOE_VK_VALIDATION,
 * QMOE_VK_LOADER, QMOE_VK_STAGING, QMOE_VK_DISABLE; see docs/vulkan.md). QMOE_ENODEV without a loader or
 * device, with a plain message. */
int qmoe_vk_open(qmoe_vk **out);
void qmoe_vk_close(qmoe_vk *vk);

const char *qmoe_vk_device_name(const qmoe_vk *vk);
VkPhysicalDeviceType qmoe_vk_device_type(const qmoe_vk *vk);
/* The device list seen at open (for messages and tests). */
int qmoe_vk_device_list(const qmoe_vk *vk, const qmoe_vk_devinfo **devs);
int qmoe_vk_validation_enabled(const qmoe_vk *vk);
int qmoe_vk_uses_staging(const qmoe_vk *vk);
uint32_t qmoe_vk_features(const qmoe_vk *vk);
/* Offsets bound to a shader must be multiples of this (minStorageBufferOffsetAlignment, at least 16). */
VkDeviceSize qmoe_vk_offset_align(const qmoe_vk *vk);
const VkPhysicalDeviceLimits *qmoe_vk_limits(const qmoe_vk *vk);

/* Validation messages (warning or error) seen since the last call; each counts as a failure of the
 * operation that observes it: returns QMOE_EDEVICE with "Vulkan validation (<call>): <message>". */
int qmoe_vk_check_validation(qmoe_vk *vk, const char *call);
/* Test hook: the number of validation messages seen so far (warnings and errors). */
int qmoe_vk_validation_count(const qmoe_vk *vk);
/* Test hook: validation messages reported while closing devices, over the whole process. */
int qmoe_vk_teardown_validation_count(void);
/* Test hook: makes one call the validation layer reports (a buffer created with usage 0), so a test can
 * see that messages are caught. Returns 0 (and does nothing) when validation is off. */
int qmoe_vk_provoke_validation_message(qmoe_vk *vk);

int qmoe_vk_buf_create(qmoe_vk *vk, size_t bytes, qmoe_vk_buf *out);
void qmoe_vk_buf_destroy(qmoe_vk *vk, qmoe_vk_buf *b); /* waits for recorded work first */
/* Synchronous copies (recorded work is submitted and waited for first, so they see its results). */
int qmoe_vk_buf_write(qmoe_vk *vk, qmoe_vk_buf *b, size_t off, const void *src, size_t n);
int qmoe_vk_buf_read(qmoe_vk *vk, const qmoe_vk_buf *b, size_t off, void *dst, size_t n);

/* Embedded SPIR-V (build/gen/embedded_spirv.c, from the generated/glsl/ shaders). */
typedef struct { const char *name; const unsigned char *data; size_t size; } qmoe_embedded;
extern const qmoe_embedded qmoe_embedded_spirv[];
extern const size_t qmoe_embedded_spirv_count;

/* The variants (generated/c/vk_variants.c, written by codegen/gen_glsl.lua from the contracts): one row per
 * stage x qtype x accumulator. qtype is -1 for stages that do not vary by it, acc -1 for stages that do not
 * vary by accumulator. Each pass is one dispatch of an embedded shader. */
enum { QMOE_VK_MAX_PASSES = 2 };
typedef struct {
  const char *shader;      /* embedded SPIR-V name (generated/glsl/<shader>.comp) */
  uint32_t local_size;     /* invocations per workgroup */
  uint32_t shared_bytes;   /* workgroup shared memory it declares */
} qmoe_vk_pass;
typedef struct {
  const char *name;        /* "matvec__q4_k__f32" */
  const char *what;        /* "matvec/q4_k/f32", for messages */
  int stage;               /* qmoe_stage */
  int qtype;               /* GGUF type id, or -1 */
  int acc;                 /* qmoe_acc, or -1 */
  int npass;
  qmoe_vk_pass pass[QMOE_VK_MAX_PASSES];
  uint32_t rows;           /* output rows per workgroup (quantized mat-vec family), else 0 */
} qmoe_vk_variant;
extern const qmoe_vk_variant qmoe_vk_variants[];
extern const size_t qmoe_vk_variant_count;

/* Dispatch geometry of one stage call (generated/c/vk_variants.c, from codegen/gen_glsl.lua's STAGES): from the
 * call's int params and the variant, the workgroups of each pass, the scratch bytes bound after the call's
 * buffers (0: none) and the push-constant extras x[]. QMOE_EUNSUPPORTED when the device cannot run it. */
typedef struct {
  int64_t rows, wg, acc_bytes; /* the variant's rows per workgroup, pass 1's workgroup size, accumulator bytes */
  int64_t maxg[3];             /* maxComputeWorkGroupCount, lowered by QMOE_VK_MAX_GROUPS */
  int64_t devg[3];             /* maxComputeWorkGroupCount */
} qmoe_vk_launch_env;
typedef struct {
  int npass;
  int64_t groups[QMOE_VK_MAX_PASSES][3];
  size_t scratch;
  int64_t counters; /* counters the call uses (last-workgroup passes, codegen/gen_glsl.lua), bound after scratch */
  int64_t x[4];
} qmoe_vk_launch;
typedef int (*qmoe_vk_launch_fn)(const qmoe_vk_launch_env *e, const int64_t *p, qmoe_vk_launch *l);
extern const qmoe_vk_launch_fn qmoe_vk_launch_table[];

/* Pipeline of the embedded shader SHADER (created on first use and kept). WHAT names the variant for
 * messages ("matvec/q6_k/f64"); SHARED_BYTES and LOCAL_SIZE are checked against the device's limits, and
 * the features the module needs against the device's. A missing shader or feature: QMOE_EUNSUPPORTED. */
int qmoe_vk_pipeline(qmoe_vk *vk, const char *shader, const char *what, uint32_t shared_bytes, uint32_t local_size,
                     VkPipeline *out);

/* Records one dispatch, after a barrier when it touches a buffer an unbarriered earlier command wrote, or
 * writes one such a command read (dispatches with no dependency between them may overlap). PC is at most
 * QMOE_VK_PUSH_BYTES bytes of params: the dispatch's slot of a params table (binding
 * QMOE_VK_PARAMS_BINDING, QMOE_VK_SLOT_BYTES per slot: the params, then the group counts as a
 * VkDispatchIndirectCommand) that the shader reads as `pc` (codegen/templates/glsl/_push.glsl); the only push
 * constant is the slot's index. Group counts must be within maxComputeWorkGroupCount. Inside a graph the
 * dispatch is kept for graph_end instead of recorded. */
enum { QMOE_VK_PUSH_BYTES = 128, QMOE_VK_SLOT_BYTES = 144, QMOE_VK_MAX_BINDINGS = 8, QMOE_VK_PARAMS_BINDING = 8 };
int qmoe_vk_dispatch(qmoe_vk *vk, VkPipeline pipe, const qmoe_vk_binding *b, int nb, const void *pc, size_t pc_size,
                     uint32_t gx, uint32_t gy, uint32_t gz);
/* Records an inline buffer update (at most 65536 bytes, 4-byte aligned), ordered like a dispatch. Not inside a
 * graph (QMOE_EINVAL). */
int qmoe_vk_update(qmoe_vk *vk, qmoe_vk_buf *b, size_t off, const void *data, size_t n);
/* Submits everything recorded and waits for it (a submitted graph too). QMOE_EINVAL inside a graph. */
int qmoe_vk_sync(qmoe_vk *vk);
/* Number of dispatches recorded outside graphs and not yet submitted. */
int qmoe_vk_pending(const qmoe_vk *vk);

/* Graphs (backend.h's graph_begin/graph_end). Between begin and end, dispatches are kept in a list (pipeline,
 * bindings, params slot) instead of recorded. end(1) compares the list's shape — each dispatch's pipeline
 * and descriptors (buffer, bound offset, range), in order — with the graph recorded last: the same shape
 * replays that command buffer, whose dispatches read params and group counts (vkCmdDispatchIndirect) from
 * the graph's own params table, after only the table is rewritten; another shape is recorded anew and
 * kept. Either way it is submitted (after what was recorded outside the graph before it) without waiting:
 * at most one submission is in flight, and sync/upload/download, the next graph_end and any recording
 * outside a graph wait for it first. end(0) drops the list. Destroying a buffer the kept recording uses
 * drops the recording. Nested begin, end without begin, and sync/buf_write/buf_read/update/timer inside a
 * graph are QMOE_EINVAL. */
int qmoe_vk_graph_begin(qmoe_vk *vk);
int qmoe_vk_graph_end(qmoe_vk *vk, int submit);
/* Test hook: what graphs did since the runtime was opened. */
typedef struct {
  long records;  /* graph_end(1) that recorded a command buffer (a new shape) */
  long replays;  /* graph_end(1) that submitted the kept one again */
  long drops;    /* graph_end(0) */
  int kept;      /* dispatches in the kept recording (0: none kept) */
  int open;      /* between graph_begin and graph_end */
  int in_flight; /* a submission has not been waited for */
} qmoe_vk_graph_stats;
void qmoe_vk_graph_stats_get(const qmoe_vk *vk, qmoe_vk_graph_stats *out);

/* GPU timer (for benchmarks): start and stop record timestamps around what is recorded between them; after
 * sync, read gives the device time between them in microseconds. QMOE_EUNSUPPORTED when the queue has no
 * timestamps; QMOE_EINVAL inside a graph (they time the work recorded outside graphs). */
int qmoe_vk_timer_start(qmoe_vk *vk);
int qmoe_vk_timer_stop(qmoe_vk *vk);
int qmoe_vk_timer_read(qmoe_vk *vk, double *us);

/* The runtime under a backend opened by qmoe_backend_vulkan_open (NULL for any other backend). */
qmoe_vk *qmoe_backend_vulkan_vk(qmoe_backend *be);

#endif
