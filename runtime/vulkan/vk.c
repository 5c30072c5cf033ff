/* vk.c: the Vulkan runtime — loads libvulkan.so.1 with dlopen(), creates the instance (with the validation
 * layer when asked or installed), picks and opens a device, and provides buffers, lazily created pipelines
 * from the embedded SPIR-V, command recording with one submit per sync, and graphs (one recording replayed
 * with new params). See vk_internal.h. */
#include <ctype.h>
#include <dlfcn.h>
#include <link.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "qmoe.h"
#include "vk_internal.h"

#if defined(__SANITIZE_ADDRESS__)
#define SYNC_VALIDATION 0
#else
#define SYNC_VALIDATION 1
#endif

enum { FENCE_TIMEOUT_S = 600, STAGING_MIN = 1 << 20, STAGING_MAX = 64 << 20, TRACK_MAX = 32, TABLE_MIN_SLOTS = 1024 };

/* A command buffer being recorded, and the buffers read and written by its commands since the last barrier:
 * the next command needs a barrier only when it reads or writes one written there, or writes one read there. */
typedef struct {
  VkCommandBuffer cmd;
  int recording, ncmds;
  VkBuffer read[TRACK_MAX], written[TRACK_MAX];
  int nread, nwritten;
} vk_rec;

/* A params table: host-visible coherent memory, one QMOE_VK_SLOT_BYTES slot per dispatch, written by the
 * host before the submission that reads it (a submission makes host writes visible to the device). */
typedef struct {
  qmoe_vk_buf buf;
  uint32_t cap, used;
} vk_table;

/* A binding as recorded: what a dispatch's descriptor holds. */
typedef struct {
  VkBuffer buf;
  VkDeviceSize off, range;
  int64_t writes;
} vk_desc;

/* A dispatch's shape: what its recording depends on (compared whole, padding zeroed, with memcmp). */
typedef struct {
  VkPipeline pipe;
  int64_t nb;
  vk_desc d[QMOE_VK_MAX_BINDINGS];
  uint32_t grid[4]; /* QMOE_VK_GRAPH_DIRECT: the recorded workgroup counts; else zero */
} vk_shape;

/* A dispatch kept by an open graph: its bindings (looked up at graph_end) and its params slot. */
typedef struct {
  VkPipeline pipe;
  int nb;
  qmoe_vk_binding b[QMOE_VK_MAX_BINDINGS];
  uint32_t slot[QMOE_VK_SLOT_BYTES / 4];
} vk_gcall;

struct qmoe_vk {
  void *lib;
  qmoe_vk_fns f;
  VkInstance instance;
  VkDebugUtilsMessengerEXT messenger;
  int validation;
  /* validation messages: total seen, and the first one not yet reported */
  int val_count, val_pending;
  char val_msg[1536];

  qmoe_vk_devinfo *devs;
  int ndevs, dev_index;
  VkPhysicalDevice phys;
  VkPhysicalDeviceProperties props;
  VkDeviceSize max_alloc;
  uint32_t features; /* QMOE_VK_F_* the device has and we enabled */
  uint32_t subgroup_size;
  VkPhysicalDeviceMemoryProperties mem;
  VkDevice device;
  VkQueue queue;
  uint32_t queue_family;

  int staging_mode;           /* device memory is not host-visible: copies go through a staging buffer */
  /* graph recording hooks for timing (docs/vulkan.md): dispatches with their counts recorded (re-recorded when
   * they change), barriers between dispatches over the compute stage only, or (with QMOE_VK_EMPTY) none */
  int g_direct, g_compute_barrier, g_no_barrier;
  uint32_t dev_type, host_type; /* memory types: device buffers, staging buffer */
  qmoe_vk_buf staging;

  VkDescriptorSetLayout dsl;
  VkPipelineLayout layout;
  VkShaderModule *modules; /* per embedded shader, created on first use */
  VkPipeline *pipes;

  VkCommandPool pool;
  VkFence fence;
  /* At most one submission is in flight (in_flight): a graph, after the stream recorded before it when
   * in_flight_stream. Recording the stream again, rewriting a table it reads, or freeing a buffer waits. */
  int in_flight, in_flight_stream;
  vk_rec stream;        /* dispatches outside graphs, submitted by sync (or ahead of a graph) */
  vk_table stab;        /* their params; a full table is replaced by one twice its size... */
  qmoe_vk_buf *stab_old; /* ...and the full ones are freed when the stream's submission completes */
  int nstab_old;

  /* Graphs: the open one's dispatches, and the kept recording (nkept > 0) with its shape and table. */
  int graph_open, graph_broken;
  char graph_why[256];
  vk_gcall *gcalls;
  int ngcalls, capgcalls;
  vk_shape *kept, *fresh; /* the kept recording's shape; the open graph's, resolved at graph_end */
  int nkept, capshape;
  vk_rec graph;
  vk_table gtab;
  long g_records, g_replays, g_drops;
  VkQueryPool timer; /* two timestamps, created on first use */
  uint32_t timestamp_bits;
  /* QMOE_VK_PIPELINE_STATS=1 and VK_KHR_pipeline_executable_properties: each pipeline's compiler statistics
   * (registers, shared memory, ... as the driver names them) go to stderr when it is created */
  PFN_vkGetPipelineExecutablePropertiesKHR get_exec_props;
  PFN_vkGetPipelineExecutableStatisticsKHR get_exec_stats;
};

/* Out of memory aborts with a message (the library's one allocation policy). */
static void *vk_xcalloc(size_t n, size_t size) {
  void *p = calloc(n ? n : 1, size ? size : 1);
  if (!p) {
    fprintf(stderr, "qmoe: out of memory in the Vulkan runtime\n");
    abort();
  }
  return p;
}

static const char *vk_result_name(VkResult r) {
  switch (r) {
#define R(x) case x: return #x;
    R(VK_SUCCESS) R(VK_NOT_READY) R(VK_TIMEOUT) R(VK_INCOMPLETE) R(VK_ERROR_OUT_OF_HOST_MEMORY)
    R(VK_ERROR_OUT_OF_DEVICE_MEMORY) R(VK_ERROR_INITIALIZATION_FAILED) R(VK_ERROR_DEVICE_LOST)
    R(VK_ERROR_MEMORY_MAP_FAILED) R(VK_ERROR_LAYER_NOT_PRESENT) R(VK_ERROR_EXTENSION_NOT_PRESENT)
    R(VK_ERROR_FEATURE_NOT_PRESENT) R(VK_ERROR_INCOMPATIBLE_DRIVER) R(VK_ERROR_TOO_MANY_OBJECTS)
    R(VK_ERROR_FORMAT_NOT_SUPPORTED) R(VK_ERROR_FRAGMENTED_POOL) R(VK_ERROR_UNKNOWN)
    R(VK_ERROR_OUT_OF_POOL_MEMORY) R(VK_ERROR_INVALID_SHADER_NV)
#undef R
  default: return "VkResult (unknown)";
  }
}

/* Sets the error for a failed Vulkan call and returns the qmoe code for it. */
static int vk_fail(VkResult r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int vk_fail(VkResult r, const char *fmt, ...) {
  char what[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(what, sizeof what, fmt, ap);
  va_end(ap);
  qmoe_set_error("%s failed: %s (%d)", what, vk_result_name(r), (int)r);
  return QMOE_EDEVICE;
}

/* ---- features ---- */

static const char *const feature_names[QMOE_VK_F_COUNT] = {
    "shaderFloat64", "shaderInt64", "shaderInt16", "shaderInt8", "shaderFloat16", "storageBuffer8BitAccess",
    "storageBuffer16BitAccess", "subgroupBasic", "subgroupVote", "subgroupArithmetic", "subgroupBallot",
    "subgroupShuffle", "subgroupShuffleRelative", "subgroupClustered", "subgroupQuad", "shaderIntegerDotProduct",
};

const char *qmoe_vk_feature_name(int bit) {
  return bit >= 0 && bit < QMOE_VK_F_COUNT ? feature_names[bit] : "(unknown feature)";
}

int qmoe_vk_parse_feature_list(const char *list, uint32_t *out) {
  *out = 0;
  if (!list) return 0;
  const char *p = list;
  while (*p) {
    while (*p == ',' || *p == ' ') p++;
    if (!*p) break;
    size_t n = strcspn(p, ", ");
    int found = -1;
    for (int i = 0; i < QMOE_VK_F_COUNT; i++)
      if (strlen(feature_names[i]) == n && strncmp(p, feature_names[i], n) == 0) found = i;
    if (found < 0) {
      char names[512] = "";
      size_t len = 0;
      for (int i = 0; i < QMOE_VK_F_COUNT && len < sizeof names; i++)
        len += (size_t)snprintf(names + len, sizeof names - len, "%s%s", i ? ", " : "", feature_names[i]);
      qmoe_set_error("QMOE_VK_DISABLE: unknown feature '%.*s' (known: %s)", (int)n, p, names);
      return QMOE_EINVAL;
    }
    *out |= 1u << found;
    p += n;
  }
  return 0;
}

/* SPIR-V capabilities (the numbers of the SPIR-V specification) and the feature bits they need. */
static const struct {
  uint32_t cap;
  uint32_t need;
} cap_features[] = {
    {1, 0},                             /* Shader */
    {9, QMOE_VK_F_FLOAT16},             /* Float16 */
    {10, QMOE_VK_F_FLOAT64},            /* Float64 */
    {11, QMOE_VK_F_INT64},              /* Int64 */
    {22, QMOE_VK_F_INT16},              /* Int16 */
    {39, QMOE_VK_F_INT8},               /* Int8 */
    {61, QMOE_VK_F_SG_BASIC},           /* GroupNonUniform */
    {62, QMOE_VK_F_SG_VOTE},            /* GroupNonUniformVote */
    {63, QMOE_VK_F_SG_ARITH},           /* GroupNonUniformArithmetic */
    {64, QMOE_VK_F_SG_BALLOT},          /* GroupNonUniformBallot */
    {65, QMOE_VK_F_SG_SHUFFLE},         /* GroupNonUniformShuffle */
    {66, QMOE_VK_F_SG_SHUFFLE_REL},     /* GroupNonUniformShuffleRelative */
    {67, QMOE_VK_F_SG_CLUSTERED},       /* GroupNonUniformClustered */
    {68, QMOE_VK_F_SG_QUAD},            /* GroupNonUniformQuad */
    {4433, QMOE_VK_F_SB16},             /* StorageBuffer16BitAccess */
    {4448, QMOE_VK_F_SB8},              /* StorageBuffer8BitAccess */
    {6018, QMOE_VK_F_INTDOT},           /* DotProductInput4x8BitPacked */
    {6019, QMOE_VK_F_INTDOT},           /* DotProduct */
};

int qmoe_vk_spirv_features(const unsigned char *spv, size_t size, const char *what, uint32_t *out) {
  *out = 0;
  if (size < 20 || size % 4) {
    qmoe_set_error("SPIR-V of %s is %zu bytes, not a whole module", what, size);
    return QMOE_EINVAL;
  }
  uint32_t magic;
  memcpy(&magic, spv, 4);
  if (magic != 0x07230203u) {
    qmoe_set_error("SPIR-V of %s has magic 0x%08x, expected 0x07230203", what, magic);
    return QMOE_EINVAL;
  }
  size_t nw = size / 4, i = 5;
  while (i < nw) {
    uint32_t w;
    memcpy(&w, spv + 4 * i, 4);
    uint32_t op = w & 0xFFFFu, len = w >> 16;
    if (len == 0 || i + len > nw) {
      qmoe_set_error("SPIR-V of %s is malformed at word %zu", what, i);
      return QMOE_EINVAL;
    }
    if (op == 17 && len == 2) { /* OpCapability */
      uint32_t cap;
      memcpy(&cap, spv + 4 * (i + 1), 4);
      size_t k = 0;
      while (k < sizeof cap_features / sizeof cap_features[0] && cap_features[k].cap != cap) k++;
      if (k == sizeof cap_features / sizeof cap_features[0]) {
        qmoe_set_error("SPIR-V of %s needs capability %u, which the Vulkan runtime does not check; add it to "
                       "cap_features in runtime/vulkan/vk.c", what, cap);
        return QMOE_EUNSUPPORTED;
      }
      *out |= cap_features[k].need;
    }
    i += len;
  }
  return 0;
}

/* ---- device selection ---- */

const char *qmoe_vk_device_type_name(VkPhysicalDeviceType t) {
  switch (t) {
  case VK_PHYSICAL_DEVICE_TYPE_DISCRETE_GPU: return "discrete GPU";
  case VK_PHYSICAL_DEVICE_TYPE_INTEGRATED_GPU: return "integrated GPU";
  case VK_PHYSICAL_DEVICE_TYPE_VIRTUAL_GPU: return "virtual GPU";
  case VK_PHYSICAL_DEVICE_TYPE_CPU: return "CPU";
  default: return "other";
  }
}

static int type_rank(VkPhysicalDeviceType t) {
  return t == VK_PHYSICAL_DEVICE_TYPE_DISCRETE_GPU ? 0 : t == VK_PHYSICAL_DEVICE_TYPE_INTEGRATED_GPU ? 1 : 2;
}

static void list_devices(const qmoe_vk_devinfo *devs, int n, char *buf, size_t len) {
  size_t at = 0;
  buf[0] = 0;
  for (int i = 0; i < n && at < len; i++)
    at += (size_t)snprintf(buf + at, len - at, "%s%d: '%s' (%s%s%s)", i ? "; " : "", i, devs[i].name,
                           qmoe_vk_device_type_name(devs[i].type), devs[i].usable ? "" : ", unusable: ",
                           devs[i].usable ? "" : devs[i].why_not);
}

static int ci_contains(const char *hay, const char *needle) {
  size_t n = strlen(needle);
  for (const char *h = hay; *h; h++) {
    size_t k = 0;
    while (k < n && h[k] && tolower((unsigned char)h[k]) == tolower((unsigned char)needle[k])) k++;
    if (k == n) return 1;
  }
  return n == 0;
}

int qmoe_vk_pick_device(const qmoe_vk_devinfo *devs, int n, const char *want, char *err, size_t errlen) {
  char list[1024];
  list_devices(devs, n, list, sizeof list);
  if (n <= 0) {
    snprintf(err, errlen, "no Vulkan device found");
    return -1;
  }
  if (want && *want) {
    int all_digits = 1;
    for (const char *p = want; *p; p++) all_digits &= isdigit((unsigned char)*p) != 0;
    int pick = -1;
    if (all_digits) {
      long idx = strtol(want, NULL, 10);
      if (idx >= 0 && idx < n) pick = (int)idx;
    } else {
      for (int i = 0; i < n; i++)
        if (ci_contains(devs[i].name, want) && (pick < 0 || type_rank(devs[i].type) < type_rank(devs[pick].type)))
          pick = i;
    }
    if (pick < 0) {
      snprintf(err, errlen, "QMOE_VK_DEVICE='%s' matches no Vulkan device (an index or part of a name); devices: %s",
               want, list);
      return -1;
    }
    if (!devs[pick].usable) {
      snprintf(err, errlen, "QMOE_VK_DEVICE='%s' selects device %d '%s', which qmoe cannot use: %s; devices: %s",
               want, pick, devs[pick].name, devs[pick].why_not, list);
      return -1;
    }
    return pick;
  }
  int best = -1;
  for (int i = 0; i < n; i++)
    if (devs[i].usable && (best < 0 || type_rank(devs[i].type) < type_rank(devs[best].type))) best = i;
  if (best < 0) snprintf(err, errlen, "no usable Vulkan device found; devices: %s", list);
  return best;
}

/* ---- validation messages ---- */

static VKAPI_ATTR VkBool32 VKAPI_CALL debug_cb(VkDebugUtilsMessageSeverityFlagBitsEXT sev,
                                               VkDebugUtilsMessageTypeFlagsEXT types,
                                               const VkDebugUtilsMessengerCallbackDataEXT *data, void *user) {
  qmoe_vk *vk = user;
  if (sev < VK_DEBUG_UTILS_MESSAGE_SEVERITY_WARNING_BIT_EXT) return VK_FALSE;
  const char *msg = data && data->pMessage ? data->pMessage : "(no message)";
  int validation = (types & VK_DEBUG_UTILS_MESSAGE_TYPE_VALIDATION_BIT_EXT) != 0;
  fprintf(stderr, "qmoe: Vulkan %s %s: %s\n", validation ? "validation" : "loader/driver",
          sev >= VK_DEBUG_UTILS_MESSAGE_SEVERITY_ERROR_BIT_EXT ? "error" : "warning", msg);
  /* Only the layer's findings about qmoe's use of Vulkan count; the loader's notes on the machine's
   * drivers (say, an ICD manifest naming a missing library) are printed but do not fail anything. */
  if (!validation) return VK_FALSE;
  vk->val_count++;
  if (!vk->val_pending++) snprintf(vk->val_msg, sizeof vk->val_msg, "%s", msg);
  return VK_FALSE;
}

int qmoe_vk_check_validation(qmoe_vk *vk, const char *call) {
  if (!vk->val_pending) return 0;
  qmoe_set_error("Vulkan validation (%s): %d message(s); the first: %s", call, vk->val_pending, vk->val_msg);
  vk->val_pending = 0;
  return QMOE_EDEVICE;
}

int qmoe_vk_validation_count(const qmoe_vk *vk) { return vk->val_count; }

/* ---- keeping the driver libraries loaded ---- */

typedef struct {
  char **names;
  size_t n, cap;
} so_list;

static int collect_so(struct dl_phdr_info *info, size_t size, void *data) {
  (void)size;
  so_list *l = data;
  if (!info->dlpi_name || !info->dlpi_name[0]) return 0;
  if (l->n == l->cap) {
    l->cap = l->cap ? 2 * l->cap : 64;
    char **grown = realloc(l->names, l->cap * sizeof *grown);
    if (!grown) {
      fprintf(stderr, "qmoe: out of memory in the Vulkan runtime\n");
      abort();
    }
    l->names = grown;
  }
  size_t len = strlen(info->dlpi_name) + 1;
  l->names[l->n] = vk_xcalloc(len, 1);
  memcpy(l->names[l->n++], info->dlpi_name, len);
  return 0;
}

static void so_list_free(so_list *l) {
  for (size_t i = 0; i < l->n; i++) free(l->names[i]);
  free(l->names);
  memset(l, 0, sizeof *l);
}

/* Marks every shared object loaded since BEFORE (the loader, drivers, layers) RTLD_NODELETE, so it stays
 * mapped for the life of the process: drivers are not made to be unloaded and loaded again, and with them
 * mapped LeakSanitizer sees what their globals still point to (and can name their frames). */
static void pin_new_objects(const so_list *before) {
  so_list now = {0};
  dl_iterate_phdr(collect_so, &now);
  for (size_t i = 0; i < now.n; i++) {
    int seen = 0;
    for (size_t j = 0; j < before->n && !seen; j++) seen = strcmp(now.names[i], before->names[j]) == 0;
    if (!seen) (void)dlopen(now.names[i], RTLD_NOW | RTLD_NOLOAD | RTLD_NODELETE);
  }
  so_list_free(&now);
}

/* ---- instance ---- */

static int env_is(const char *name, const char *value) {
  const char *v = getenv(name);
  return v && strcmp(v, value) == 0;
}

static int load_loader(qmoe_vk *vk) {
  const char *name = getenv("QMOE_VK_LOADER");
  if (!name || !*name) name = "libvulkan.so.1";
  vk->lib = dlopen(name, RTLD_NOW | RTLD_LOCAL);
  if (!vk->lib) {
    qmoe_set_error("no Vulkan loader found (%s); install the Vulkan loader (Debian: libvulkan1) and a driver", name);
    return QMOE_ENODEV;
  }
  vk->f.vkGetInstanceProcAddr = (PFN_vkGetInstanceProcAddr)dlsym(vk->lib, "vkGetInstanceProcAddr");
  if (!vk->f.vkGetInstanceProcAddr) {
    qmoe_set_error("no Vulkan loader found (%s has no vkGetInstanceProcAddr)", name);
    return QMOE_ENODEV;
  }
#define LOAD_GLOBAL(fn)                                                                                           \
  vk->f.fn = (PFN_##fn)vk->f.vkGetInstanceProcAddr(NULL, #fn);                                                    \
  if (!vk->f.fn) {                                                                                                \
    qmoe_set_error("the Vulkan loader %s lacks %s (Vulkan 1.1 or newer is needed)", name, #fn);                  \
    return QMOE_ENODEV;                                                                                           \
  }
  QMOE_VK_GLOBAL_FNS(LOAD_GLOBAL)
#undef LOAD_GLOBAL
  return 0;
}

static int has_layer(qmoe_vk *vk, const char *layer) {
  uint32_t n = 0;
  if (vk->f.vkEnumerateInstanceLayerProperties(&n, NULL) != VK_SUCCESS || !n) return 0;
  VkLayerProperties *lp = vk_xcalloc(n, sizeof *lp);
  int found = 0;
  if (vk->f.vkEnumerateInstanceLayerProperties(&n, lp) == VK_SUCCESS)
    for (uint32_t i = 0; i < n; i++) found |= strcmp(lp[i].layerName, layer) == 0;
  free(lp);
  return found;
}

static int has_instance_ext(qmoe_vk *vk, const char *layer, const char *ext) {
  uint32_t n = 0;
  if (vk->f.vkEnumerateInstanceExtensionProperties(layer, &n, NULL) != VK_SUCCESS || !n) return 0;
  VkExtensionProperties *ep = vk_xcalloc(n, sizeof *ep);
  int found = 0;
  if (vk->f.vkEnumerateInstanceExtensionProperties(layer, &n, ep) == VK_SUCCESS)
    for (uint32_t i = 0; i < n; i++) found |= strcmp(ep[i].extensionName, ext) == 0;
  free(ep);
  return found;
}

static const char VALIDATION_LAYER[] = "VK_LAYER_KHRONOS_validation";

static int create_instance(qmoe_vk *vk) {
  uint32_t version = 0;
  vk->f.vkEnumerateInstanceVersion(&version);
  if (version < VK_API_VERSION_1_2) {
    qmoe_set_error("the Vulkan loader supports Vulkan %u.%u; qmoe needs 1.2 or newer", VK_API_VERSION_MAJOR(version),
                   VK_API_VERSION_MINOR(version));
    return QMOE_ENODEV;
  }
  /* Validation: QMOE_VK_VALIDATION=1 requires the layer, =0 turns it off, unset uses it when installed. */
  int want = env_is("QMOE_VK_VALIDATION", "1"), off = env_is("QMOE_VK_VALIDATION", "0");
  int layer = !off && has_layer(vk, VALIDATION_LAYER);
  if (want && !layer) {
    qmoe_set_error("QMOE_VK_VALIDATION=1 but the layer %s is not installed (Debian: vulkan-validationlayers)",
                   VALIDATION_LAYER);
    return QMOE_ENODEV;
  }
  int debug_utils = layer && (has_instance_ext(vk, NULL, VK_EXT_DEBUG_UTILS_EXTENSION_NAME) ||
                              has_instance_ext(vk, VALIDATION_LAYER, VK_EXT_DEBUG_UTILS_EXTENSION_NAME));
  if (want && !debug_utils) {
    qmoe_set_error("QMOE_VK_VALIDATION=1 but %s is not available, so validation messages cannot be caught",
                   VK_EXT_DEBUG_UTILS_EXTENSION_NAME);
    return QMOE_ENODEV;
  }
  vk->validation = layer && debug_utils;
  const char *exts[3];
  uint32_t next = 0;
  VkInstanceCreateFlags flags = 0;
  if (vk->validation) exts[next++] = VK_EXT_DEBUG_UTILS_EXTENSION_NAME;
  /* With the layer, synchronization validation too: a missing barrier between dispatches is reported even on
   * a device (lavapipe) that happens to run them in order. Not in the ASan build: the layer's synchronization
   * state leaks there (reference cycles inside the layer); the normal build of the same tests runs it. */
  int sync_val = SYNC_VALIDATION && vk->validation &&
                 has_instance_ext(vk, VALIDATION_LAYER, VK_EXT_VALIDATION_FEATURES_EXTENSION_NAME);
  if (sync_val) exts[next++] = VK_EXT_VALIDATION_FEATURES_EXTENSION_NAME;
  if (has_instance_ext(vk, NULL, VK_KHR_PORTABILITY_ENUMERATION_EXTENSION_NAME)) {
    exts[next++] = VK_KHR_PORTABILITY_ENUMERATION_EXTENSION_NAME;
    flags |= VK_INSTANCE_CREATE_ENUMERATE_PORTABILITY_BIT_KHR;
  }
  VkApplicationInfo app = {.sType = VK_STRUCTURE_TYPE_APPLICATION_INFO, .pApplicationName = "qmoe",
                           .pEngineName = "qmoe", .apiVersion = VK_API_VERSION_1_2};
  VkDebugUtilsMessengerCreateInfoEXT dbg = {
      .sType = VK_STRUCTURE_TYPE_DEBUG_UTILS_MESSENGER_CREATE_INFO_EXT,
      .messageSeverity = VK_DEBUG_UTILS_MESSAGE_SEVERITY_WARNING_BIT_EXT | VK_DEBUG_UTILS_MESSAGE_SEVERITY_ERROR_BIT_EXT,
      .messageType = VK_DEBUG_UTILS_MESSAGE_TYPE_GENERAL_BIT_EXT | VK_DEBUG_UTILS_MESSAGE_TYPE_VALIDATION_BIT_EXT |
                     VK_DEBUG_UTILS_MESSAGE_TYPE_PERFORMANCE_BIT_EXT,
      .pfnUserCallback = debug_cb,
      .pUserData = vk};
  VkValidationFeatureEnableEXT sync_feature = VK_VALIDATION_FEATURE_ENABLE_SYNCHRONIZATION_VALIDATION_EXT;
  VkValidationFeaturesEXT vfeat = {.sType = VK_STRUCTURE_TYPE_VALIDATION_FEATURES_EXT, .pNext = &dbg,
                                   .enabledValidationFeatureCount = 1, .pEnabledValidationFeatures = &sync_feature};
  VkInstanceCreateInfo ci = {.sType = VK_STRUCTURE_TYPE_INSTANCE_CREATE_INFO,
                             .pNext = sync_val ? (const void *)&vfeat : vk->validation ? (const void *)&dbg : NULL,
                             .flags = flags, .pApplicationInfo = &app, .enabledExtensionCount = next,
                             .ppEnabledExtensionNames = exts};
  const char *layers[1] = {VALIDATION_LAYER};
  if (vk->validation) {
    ci.enabledLayerCount = 1;
    ci.ppEnabledLayerNames = layers;
  }
  VkResult r = vk->f.vkCreateInstance(&ci, NULL, &vk->instance);
  if (r == VK_ERROR_INCOMPATIBLE_DRIVER) {
    qmoe_set_error("no Vulkan device found (vkCreateInstance: no compatible driver)");
    return QMOE_ENODEV;
  }
  if (r != VK_SUCCESS) return vk_fail(r, "vkCreateInstance");
#define LOAD_INSTANCE(fn)                                                                                         \
  vk->f.fn = (PFN_##fn)vk->f.vkGetInstanceProcAddr(vk->instance, #fn);                                            \
  if (!vk->f.fn) {                                                                                                \
    qmoe_set_error("the Vulkan loader lacks %s (Vulkan 1.2 is needed)", #fn);                                     \
    return QMOE_ENODEV;                                                                                           \
  }
  QMOE_VK_INSTANCE_FNS(LOAD_INSTANCE)
#undef LOAD_INSTANCE
  if (vk->validation) {
    vk->f.vkCreateDebugUtilsMessengerEXT =
        (PFN_vkCreateDebugUtilsMessengerEXT)vk->f.vkGetInstanceProcAddr(vk->instance, "vkCreateDebugUtilsMessengerEXT");
    vk->f.vkDestroyDebugUtilsMessengerEXT =
        (PFN_vkDestroyDebugUtilsMessengerEXT)vk->f.vkGetInstanceProcAddr(vk->instance, "vkDestroyDebugUtilsMessengerEXT");
    if (!vk->f.vkCreateDebugUtilsMessengerEXT || !vk->f.vkDestroyDebugUtilsMessengerEXT) {
      qmoe_set_error("validation layer loaded but vkCreateDebugUtilsMessengerEXT is missing");
      return QMOE_ENODEV;
    }
    r = vk->f.vkCreateDebugUtilsMessengerEXT(vk->instance, &dbg, NULL, &vk->messenger);
    if (r != VK_SUCCESS) return vk_fail(r, "vkCreateDebugUtilsMessengerEXT");
  }
  return 0;
}

/* ---- physical device ---- */

static int find_compute_family(qmoe_vk *vk, VkPhysicalDevice pd, uint32_t *family) {
  uint32_t n = 0;
  vk->f.vkGetPhysicalDeviceQueueFamilyProperties(pd, &n, NULL);
  VkQueueFamilyProperties *qf = vk_xcalloc(n, sizeof *qf);
  vk->f.vkGetPhysicalDeviceQueueFamilyProperties(pd, &n, qf);
  int found = 0;
  for (uint32_t i = 0; i < n && !found; i++)
    if (qf[i].queueFlags & VK_QUEUE_COMPUTE_BIT) {
      *family = i;
      found = 1;
    }
  free(qf);
  return found;
}

/* QMOE_VK_PIPELINE_STATS=1: one stderr line per executable of a new pipeline with the driver's statistics. */
static void print_pipeline_stats(qmoe_vk *vk, VkPipeline pipe, const char *what) {
  VkPipelineInfoKHR pi = {.sType = VK_STRUCTURE_TYPE_PIPELINE_INFO_KHR, .pipeline = pipe};
  uint32_t ne = 0;
  if (vk->get_exec_props(vk->device, &pi, &ne, NULL) != VK_SUCCESS) return;
  for (uint32_t i = 0; i < ne && i < 8; i++) {
    VkPipelineExecutableInfoKHR ei = {.sType = VK_STRUCTURE_TYPE_PIPELINE_EXECUTABLE_INFO_KHR, .pipeline = pipe,
                                      .executableIndex = i};
    VkPipelineExecutableStatisticKHR st[32];
    uint32_t ns = 32;
    for (uint32_t k = 0; k < ns; k++) st[k] = (VkPipelineExecutableStatisticKHR){
        .sType = VK_STRUCTURE_TYPE_PIPELINE_EXECUTABLE_STATISTIC_KHR};
    VkResult r = vk->get_exec_stats(vk->device, &ei, &ns, st);
    if (r != VK_SUCCESS && r != VK_INCOMPLETE) continue;
    char line[2048];
    size_t len = (size_t)snprintf(line, sizeof line, "qmoe: vulkan pipeline %s [%u]:", what, i);
    for (uint32_t k = 0; k < ns && len < sizeof line; k++) {
      const VkPipelineExecutableStatisticKHR *x = &st[k];
      if (x->format == VK_PIPELINE_EXECUTABLE_STATISTIC_FORMAT_BOOL32_KHR)
        len += (size_t)snprintf(line + len, sizeof line - len, " %s=%u", x->name, (unsigned)x->value.b32);
      else if (x->format == VK_PIPELINE_EXECUTABLE_STATISTIC_FORMAT_INT64_KHR)
        len += (size_t)snprintf(line + len, sizeof line - len, " %s=%lld", x->name, (long long)x->value.i64);
      else if (x->format == VK_PIPELINE_EXECUTABLE_STATISTIC_FORMAT_UINT64_KHR)
        len += (size_t)snprintf(line + len, sizeof line - len, " %s=%llu", x->name, (unsigned long long)x->value.u64);
      else
        len += (size_t)snprintf(line + len, sizeof line - len, " %s=%g", x->name, x->value.f64);
    }
    fprintf(stderr, "%s\n", line);
  }
}

static int has_device_ext(qmoe_vk *vk, VkPhysicalDevice pd, const char *ext) {
  uint32_t n = 0;
  if (vk->f.vkEnumerateDeviceExtensionProperties(pd, NULL, &n, NULL) != VK_SUCCESS || !n) return 0;
  VkExtensionProperties *ep = vk_xcalloc(n, sizeof *ep);
  int found = 0;
  if (vk->f.vkEnumerateDeviceExtensionProperties(pd, NULL, &n, ep) == VK_SUCCESS)
    for (uint32_t i = 0; i < n; i++) found |= strcmp(ep[i].extensionName, ext) == 0;
  free(ep);
  return found;
}

static int select_device(qmoe_vk *vk) {
  uint32_t n = 0;
  VkResult r = vk->f.vkEnumeratePhysicalDevices(vk->instance, &n, NULL);
  if (r == VK_ERROR_INITIALIZATION_FAILED) { /* the loader's answer when no driver finds a device */
    qmoe_set_error("no Vulkan device found (vkEnumeratePhysicalDevices: VK_ERROR_INITIALIZATION_FAILED)");
    return QMOE_ENODEV;
  }
  if (r != VK_SUCCESS && r != VK_INCOMPLETE) return vk_fail(r, "vkEnumeratePhysicalDevices");
  if (n == 0) {
    qmoe_set_error("no Vulkan device found (the loader sees no driver with a device)");
    return QMOE_ENODEV;
  }
  VkPhysicalDevice *pds = vk_xcalloc(n, sizeof *pds);
  r = vk->f.vkEnumeratePhysicalDevices(vk->instance, &n, pds);
  if (r != VK_SUCCESS && r != VK_INCOMPLETE) {
    free(pds);
    return vk_fail(r, "vkEnumeratePhysicalDevices");
  }
  vk->devs = vk_xcalloc(n, sizeof *vk->devs);
  vk->ndevs = (int)n;
  for (uint32_t i = 0; i < n; i++) {
    VkPhysicalDeviceProperties p;
    vk->f.vkGetPhysicalDeviceProperties(pds[i], &p);
    qmoe_vk_devinfo *d = &vk->devs[i];
    snprintf(d->name, sizeof d->name, "%s", p.deviceName);
    d->type = p.deviceType;
    d->api_version = p.apiVersion;
    uint32_t fam;
    if (p.apiVersion < VK_API_VERSION_1_2)
      snprintf(d->why_not, sizeof d->why_not, "supports Vulkan %u.%u, qmoe needs 1.2",
               VK_API_VERSION_MAJOR(p.apiVersion), VK_API_VERSION_MINOR(p.apiVersion));
    else if (!find_compute_family(vk, pds[i], &fam))
      snprintf(d->why_not, sizeof d->why_not, "has no compute queue");
    else if (!has_device_ext(vk, pds[i], VK_KHR_PUSH_DESCRIPTOR_EXTENSION_NAME))
      snprintf(d->why_not, sizeof d->why_not, "lacks %s", VK_KHR_PUSH_DESCRIPTOR_EXTENSION_NAME);
    else
      d->usable = 1;
  }
  char err[1536];
  int pick = qmoe_vk_pick_device(vk->devs, vk->ndevs, getenv("QMOE_VK_DEVICE"), err, sizeof err);
  if (pick < 0) {
    free(pds);
    qmoe_set_error("%s", err);
    return QMOE_ENODEV;
  }
  vk->dev_index = pick;
  vk->phys = pds[pick];
  free(pds);
  return 0;
}

/* Queries what the chosen device has, and creates it with those features enabled (minus QMOE_VK_DISABLE). */
static int create_device(qmoe_vk *vk) {
  uint32_t disabled = 0;
  int rc = qmoe_vk_parse_feature_list(getenv("QMOE_VK_DISABLE"), &disabled);
  if (rc) return rc;
  VkPhysicalDeviceSubgroupProperties sg = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_SUBGROUP_PROPERTIES};
  VkPhysicalDeviceMaintenance3Properties m3 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_MAINTENANCE_3_PROPERTIES,
                                               .pNext = &sg};
  VkPhysicalDeviceProperties2 p2 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_PROPERTIES_2, .pNext = &m3};
  vk->f.vkGetPhysicalDeviceProperties2(vk->phys, &p2);
  vk->props = p2.properties;
  vk->max_alloc = m3.maxMemoryAllocationSize;
  vk->subgroup_size = sg.subgroupSize;

  /* VK_KHR_shader_integer_dot_product (core in 1.3): queried and enabled through the extension's own struct */
  const int has_idot = has_device_ext(vk, vk->phys, VK_KHR_SHADER_INTEGER_DOT_PRODUCT_EXTENSION_NAME);
  VkPhysicalDeviceShaderIntegerDotProductFeaturesKHR fid = {
      .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_SHADER_INTEGER_DOT_PRODUCT_FEATURES_KHR};
  VkPhysicalDeviceVulkan12Features f12 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_1_2_FEATURES,
                                          .pNext = has_idot ? &fid : NULL};
  VkPhysicalDeviceVulkan11Features f11 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_1_1_FEATURES, .pNext = &f12};
  VkPhysicalDeviceFeatures2 f2 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_FEATURES_2, .pNext = &f11};
  vk->f.vkGetPhysicalDeviceFeatures2(vk->phys, &f2);
  uint32_t have = 0;
  have |= f2.features.shaderFloat64 ? QMOE_VK_F_FLOAT64 : 0;
  have |= f2.features.shaderInt64 ? QMOE_VK_F_INT64 : 0;
  have |= f2.features.shaderInt16 ? QMOE_VK_F_INT16 : 0;
  have |= f12.shaderInt8 ? QMOE_VK_F_INT8 : 0;
  have |= f12.shaderFloat16 ? QMOE_VK_F_FLOAT16 : 0;
  have |= f12.storageBuffer8BitAccess ? QMOE_VK_F_SB8 : 0;
  have |= f11.storageBuffer16BitAccess ? QMOE_VK_F_SB16 : 0;
  have |= has_idot && fid.shaderIntegerDotProduct ? QMOE_VK_F_INTDOT : 0;
  if (sg.supportedStages & VK_SHADER_STAGE_COMPUTE_BIT) {
    static const struct { VkSubgroupFeatureFlagBits vk; uint32_t bit; } sgmap[] = {
        {VK_SUBGROUP_FEATURE_BASIC_BIT, QMOE_VK_F_SG_BASIC},
        {VK_SUBGROUP_FEATURE_VOTE_BIT, QMOE_VK_F_SG_VOTE},
        {VK_SUBGROUP_FEATURE_ARITHMETIC_BIT, QMOE_VK_F_SG_ARITH},
        {VK_SUBGROUP_FEATURE_BALLOT_BIT, QMOE_VK_F_SG_BALLOT},
        {VK_SUBGROUP_FEATURE_SHUFFLE_BIT, QMOE_VK_F_SG_SHUFFLE},
        {VK_SUBGROUP_FEATURE_SHUFFLE_RELATIVE_BIT, QMOE_VK_F_SG_SHUFFLE_REL},
        {VK_SUBGROUP_FEATURE_CLUSTERED_BIT, QMOE_VK_F_SG_CLUSTERED},
        {VK_SUBGROUP_FEATURE_QUAD_BIT, QMOE_VK_F_SG_QUAD}};
    for (size_t i = 0; i < sizeof sgmap / sizeof sgmap[0]; i++)
      if (sg.supportedOperations & sgmap[i].vk) have |= sgmap[i].bit;
  }
  vk->features = have & ~disabled;

  /* Enable exactly what we report. */
  VkPhysicalDeviceVulkan12Features e12 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_1_2_FEATURES};
  VkPhysicalDeviceVulkan11Features e11 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_1_1_FEATURES, .pNext = &e12};
  VkPhysicalDeviceFeatures2 e2 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_FEATURES_2, .pNext = &e11};
  e2.features.shaderFloat64 = (vk->features & QMOE_VK_F_FLOAT64) != 0;
  e2.features.shaderInt64 = (vk->features & QMOE_VK_F_INT64) != 0;
  e2.features.shaderInt16 = (vk->features & QMOE_VK_F_INT16) != 0;
  e12.shaderInt8 = (vk->features & QMOE_VK_F_INT8) != 0;
  e12.shaderFloat16 = (vk->features & QMOE_VK_F_FLOAT16) != 0;
  e12.storageBuffer8BitAccess = (vk->features & QMOE_VK_F_SB8) != 0;
  e11.storageBuffer16BitAccess = (vk->features & QMOE_VK_F_SB16) != 0;
  VkPhysicalDeviceShaderIntegerDotProductFeaturesKHR eid = {
      .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_SHADER_INTEGER_DOT_PRODUCT_FEATURES_KHR,
      .shaderIntegerDotProduct = VK_TRUE};

  if (!find_compute_family(vk, vk->phys, &vk->queue_family)) { /* checked in select_device */
    qmoe_set_error("device '%s' has no compute queue", vk->devs[vk->dev_index].name);
    return QMOE_ENODEV;
  }
  float prio = 1.0f;
  VkDeviceQueueCreateInfo qci = {.sType = VK_STRUCTURE_TYPE_DEVICE_QUEUE_CREATE_INFO,
                                 .queueFamilyIndex = vk->queue_family, .queueCount = 1, .pQueuePriorities = &prio};
  const char *exts[3] = {VK_KHR_PUSH_DESCRIPTOR_EXTENSION_NAME};
  uint32_t next = 1;
  if (vk->features & QMOE_VK_F_INTDOT) {
    exts[next++] = VK_KHR_SHADER_INTEGER_DOT_PRODUCT_EXTENSION_NAME;
    eid.pNext = e12.pNext;
    e12.pNext = &eid;
  }
  const char *ps_env = getenv("QMOE_VK_PIPELINE_STATS");
  const int pipe_stats = ps_env && strcmp(ps_env, "1") == 0;
  int stats_ext = 0; /* VK_KHR_pipeline_executable_properties enabled */
  VkPhysicalDevicePipelineExecutablePropertiesFeaturesKHR pef = {
      .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_PIPELINE_EXECUTABLE_PROPERTIES_FEATURES_KHR, .pipelineExecutableInfo = VK_TRUE};
  if (pipe_stats) {
    if (has_device_ext(vk, vk->phys, VK_KHR_PIPELINE_EXECUTABLE_PROPERTIES_EXTENSION_NAME)) {
      exts[next++] = VK_KHR_PIPELINE_EXECUTABLE_PROPERTIES_EXTENSION_NAME;
      stats_ext = 1;
      pef.pNext = e12.pNext;
      e12.pNext = &pef;
    } else {
      fprintf(stderr, "qmoe: QMOE_VK_PIPELINE_STATS=1: device '%s' lacks %s; no pipeline statistics\n",
              vk->props.deviceName, VK_KHR_PIPELINE_EXECUTABLE_PROPERTIES_EXTENSION_NAME);
    }
  }
  VkDeviceCreateInfo dci = {.sType = VK_STRUCTURE_TYPE_DEVICE_CREATE_INFO, .pNext = &e2, .queueCreateInfoCount = 1,
                            .pQueueCreateInfos = &qci, .enabledExtensionCount = next, .ppEnabledExtensionNames = exts};
  VkResult r = vk->f.vkCreateDevice(vk->phys, &dci, NULL, &vk->device);
  if (r != VK_SUCCESS) return vk_fail(r, "vkCreateDevice('%s')", vk->props.deviceName);
#define LOAD_DEVICE(fn)                                                                                           \
  vk->f.fn = (PFN_##fn)vk->f.vkGetDeviceProcAddr(vk->device, #fn);                                                \
  if (!vk->f.fn) {                                                                                                \
    qmoe_set_error("device '%s': the driver lacks %s", vk->props.deviceName, #fn);                               \
    return QMOE_ENODEV;                                                                                           \
  }
  QMOE_VK_DEVICE_FNS(LOAD_DEVICE)
#undef LOAD_DEVICE
  if (stats_ext) {
    vk->get_exec_props = (PFN_vkGetPipelineExecutablePropertiesKHR)vk->f.vkGetDeviceProcAddr(
        vk->device, "vkGetPipelineExecutablePropertiesKHR");
    vk->get_exec_stats = (PFN_vkGetPipelineExecutableStatisticsKHR)vk->f.vkGetDeviceProcAddr(
        vk->device, "vkGetPipelineExecutableStatisticsKHR");
    if (!vk->get_exec_props || !vk->get_exec_stats) vk->get_exec_props = NULL, vk->get_exec_stats = NULL;
  }
  vk->f.vkGetDeviceQueue(vk->device, vk->queue_family, 0, &vk->queue);
  {
    uint32_t nq = 0;
    vk->f.vkGetPhysicalDeviceQueueFamilyProperties(vk->phys, &nq, NULL);
    VkQueueFamilyProperties *qf = vk_xcalloc(nq, sizeof *qf);
    vk->f.vkGetPhysicalDeviceQueueFamilyProperties(vk->phys, &nq, qf);
    vk->timestamp_bits = vk->queue_family < nq ? qf[vk->queue_family].timestampValidBits : 0;
    free(qf);
  }
  vk->f.vkGetPhysicalDeviceMemoryProperties(vk->phys, &vk->mem);
  return 0;
}

/* Index of a memory type allowed by BITS with all REQUIRED flags, preferring one with all PREFERRED. */
static int find_memory_type(const VkPhysicalDeviceMemoryProperties *mp, uint32_t bits, VkMemoryPropertyFlags required,
                            VkMemoryPropertyFlags preferred) {
  int fallback = -1;
  for (uint32_t i = 0; i < mp->memoryTypeCount; i++) {
    if (!(bits & (1u << i))) continue;
    VkMemoryPropertyFlags f = mp->memoryTypes[i].propertyFlags;
    if ((f & required) != required) continue;
    if ((f & preferred) == preferred) return (int)i;
    if (fallback < 0) fallback = (int)i;
  }
  return fallback;
}

static int create_objects(qmoe_vk *vk) {
  /* Memory: on discrete GPUs device-local memory plus a staging buffer; elsewhere host-visible memory that is
   * device-local where possible, mapped once. QMOE_VK_STAGING=1/0 forces either (tests use it). */
  vk->staging_mode = vk->props.deviceType == VK_PHYSICAL_DEVICE_TYPE_DISCRETE_GPU;
  if (env_is("QMOE_VK_STAGING", "1")) vk->staging_mode = 1;
  if (env_is("QMOE_VK_STAGING", "0")) vk->staging_mode = 0;
  vk->g_direct = env_is("QMOE_VK_GRAPH_DIRECT", "1");
  vk->g_compute_barrier = env_is("QMOE_VK_GRAPH_BARRIER", "compute");
  vk->g_no_barrier = env_is("QMOE_VK_GRAPH_BARRIER", "none");

  /* Set 0, all push descriptors: the call's buffers at 0..QMOE_VK_MAX_BINDINGS-1, then the params table.
   * The one push constant is the dispatch's slot in that table (Vulkan guarantees 128 bytes of push
   * constants and 32 push descriptors). */
  _Static_assert(QMOE_VK_PARAMS_BINDING == QMOE_VK_MAX_BINDINGS, "the params table follows the call's bindings");
  VkDescriptorSetLayoutBinding binds[QMOE_VK_MAX_BINDINGS + 1];
  for (uint32_t i = 0; i <= QMOE_VK_MAX_BINDINGS; i++)
    binds[i] = (VkDescriptorSetLayoutBinding){.binding = i, .descriptorType = VK_DESCRIPTOR_TYPE_STORAGE_BUFFER,
                                              .descriptorCount = 1, .stageFlags = VK_SHADER_STAGE_COMPUTE_BIT};
  VkDescriptorSetLayoutCreateInfo dci = {.sType = VK_STRUCTURE_TYPE_DESCRIPTOR_SET_LAYOUT_CREATE_INFO,
                                         .flags = VK_DESCRIPTOR_SET_LAYOUT_CREATE_PUSH_DESCRIPTOR_BIT_KHR,
                                         .bindingCount = QMOE_VK_MAX_BINDINGS + 1, .pBindings = binds};
  VkResult r = vk->f.vkCreateDescriptorSetLayout(vk->device, &dci, NULL, &vk->dsl);
  if (r != VK_SUCCESS) return vk_fail(r, "vkCreateDescriptorSetLayout");
  VkPushConstantRange pcr = {.stageFlags = VK_SHADER_STAGE_COMPUTE_BIT, .offset = 0, .size = sizeof(uint32_t)};
  VkPipelineLayoutCreateInfo pci = {.sType = VK_STRUCTURE_TYPE_PIPELINE_LAYOUT_CREATE_INFO, .setLayoutCount = 1,
                                    .pSetLayouts = &vk->dsl, .pushConstantRangeCount = 1, .pPushConstantRanges = &pcr};
  r = vk->f.vkCreatePipelineLayout(vk->device, &pci, NULL, &vk->layout);
  if (r != VK_SUCCESS) return vk_fail(r, "vkCreatePipelineLayout");
  VkCommandPoolCreateInfo cpi = {.sType = VK_STRUCTURE_TYPE_COMMAND_POOL_CREATE_INFO,
                                 .flags = VK_COMMAND_POOL_CREATE_RESET_COMMAND_BUFFER_BIT,
                                 .queueFamilyIndex = vk->queue_family};
  r = vk->f.vkCreateCommandPool(vk->device, &cpi, NULL, &vk->pool);
  if (r != VK_SUCCESS) return vk_fail(r, "vkCreateCommandPool");
  VkCommandBufferAllocateInfo cai = {.sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_ALLOCATE_INFO, .commandPool = vk->pool,
                                     .level = VK_COMMAND_BUFFER_LEVEL_PRIMARY, .commandBufferCount = 2};
  VkCommandBuffer cbs[2];
  r = vk->f.vkAllocateCommandBuffers(vk->device, &cai, cbs);
  if (r != VK_SUCCESS) return vk_fail(r, "vkAllocateCommandBuffers");
  vk->stream.cmd = cbs[0];
  vk->graph.cmd = cbs[1];
  VkFenceCreateInfo fci = {.sType = VK_STRUCTURE_TYPE_FENCE_CREATE_INFO};
  r = vk->f.vkCreateFence(vk->device, &fci, NULL, &vk->fence);
  if (r != VK_SUCCESS) return vk_fail(r, "vkCreateFence");
  vk->modules = vk_xcalloc(qmoe_embedded_spirv_count + 1, sizeof *vk->modules);
  vk->pipes = vk_xcalloc(qmoe_embedded_spirv_count + 1, sizeof *vk->pipes);
  return 0;
}

int qmoe_vk_open(qmoe_vk **out) {
  *out = NULL;
  qmoe_vk *vk = vk_xcalloc(1, sizeof *vk);
  so_list before = {0};
  dl_iterate_phdr(collect_so, &before);
  int rc = load_loader(vk);
  if (!rc) rc = create_instance(vk);
  if (!rc) rc = select_device(vk);
  pin_new_objects(&before); /* the drivers the loader opened for this instance */
  so_list_free(&before);
  if (!rc) rc = create_device(vk);
  if (!rc) rc = create_objects(vk);
  if (!rc) rc = qmoe_vk_check_validation(vk, "opening the device");
  if (rc) {
    char msg[2048];
    snprintf(msg, sizeof msg, "%s", qmoe_last_error());
    qmoe_vk_close(vk);
    qmoe_set_error("%s", msg);
    return rc;
  }
  *out = vk;
  return 0;
}

static void buf_release(qmoe_vk *vk, qmoe_vk_buf *b);

/* Validation messages reported while devices were being closed, over the whole process (tests check it:
 * close cannot return an error, and an object left alive shows up only there). */
static int teardown_messages;
int qmoe_vk_teardown_validation_count(void) { return teardown_messages; }

void qmoe_vk_close(qmoe_vk *vk) {
  if (!vk) return;
  int before = vk->val_count;
  if (vk->device) {
    if (vk->stream.recording) {
      vk->f.vkEndCommandBuffer(vk->stream.cmd);
      vk->stream.recording = 0;
    }
    vk->f.vkDeviceWaitIdle(vk->device);
    vk->in_flight = vk->in_flight_stream = 0;
    buf_release(vk, &vk->staging);
    buf_release(vk, &vk->stab.buf);
    buf_release(vk, &vk->gtab.buf);
    for (int i = 0; i < vk->nstab_old; i++) buf_release(vk, &vk->stab_old[i]);
    for (size_t i = 0; vk->pipes && i < qmoe_embedded_spirv_count; i++) {
      if (vk->pipes[i]) vk->f.vkDestroyPipeline(vk->device, vk->pipes[i], NULL);
      if (vk->modules[i]) vk->f.vkDestroyShaderModule(vk->device, vk->modules[i], NULL);
    }
    if (vk->fence) vk->f.vkDestroyFence(vk->device, vk->fence, NULL);
    if (vk->timer) vk->f.vkDestroyQueryPool(vk->device, vk->timer, NULL);
    if (vk->pool) vk->f.vkDestroyCommandPool(vk->device, vk->pool, NULL);
    if (vk->layout) vk->f.vkDestroyPipelineLayout(vk->device, vk->layout, NULL);
    if (vk->dsl) vk->f.vkDestroyDescriptorSetLayout(vk->device, vk->dsl, NULL);
    vk->f.vkDestroyDevice(vk->device, NULL);
  }
  if (vk->messenger) vk->f.vkDestroyDebugUtilsMessengerEXT(vk->instance, vk->messenger, NULL);
  if (vk->instance) vk->f.vkDestroyInstance(vk->instance, NULL);
  teardown_messages += vk->val_count - before;
  /* The loader is never dlclose()d: drivers are not made to be unloaded, and with it mapped, LeakSanitizer
   * sees what the driver's globals still point to. dlopen() of it again only takes another reference. */
  free(vk->modules);
  free(vk->pipes);
  free(vk->devs);
  free(vk->stab_old);
  free(vk->gcalls);
  free(vk->kept);
  free(vk->fresh);
  free(vk);
}

const char *qmoe_vk_device_name(const qmoe_vk *vk) { return vk->props.deviceName; }
VkPhysicalDeviceType qmoe_vk_device_type(const qmoe_vk *vk) { return vk->props.deviceType; }
int qmoe_vk_device_list(const qmoe_vk *vk, const qmoe_vk_devinfo **devs) {
  *devs = vk->devs;
  return vk->ndevs;
}
int qmoe_vk_validation_enabled(const qmoe_vk *vk) { return vk->validation; }
int qmoe_vk_uses_staging(const qmoe_vk *vk) { return vk->staging_mode; }
uint32_t qmoe_vk_features(const qmoe_vk *vk) { return vk->features; }
const VkPhysicalDeviceLimits *qmoe_vk_limits(const qmoe_vk *vk) { return &vk->props.limits; }
VkDeviceSize qmoe_vk_offset_align(const qmoe_vk *vk) {
  VkDeviceSize a = vk->props.limits.minStorageBufferOffsetAlignment;
  return a < 16 ? 16 : a;
}
int qmoe_vk_pending(const qmoe_vk *vk) { return vk->stream.recording ? vk->stream.ncmds : 0; }

/* ---- buffers ---- */

/* What a buffer is for: its memory and usage. */
enum { BUF_DEVICE, BUF_STAGING, BUF_TABLE };

static int buf_create(qmoe_vk *vk, size_t bytes, int kind, qmoe_vk_buf *out) {
  memset(out, 0, sizeof *out);
  if (bytes > (size_t)1 << 62) {
    qmoe_set_error("Vulkan buffer of %zu bytes is too large", bytes);
    return QMOE_EINVAL;
  }
  VkDeviceSize alloc = (((VkDeviceSize)bytes + 15) & ~(VkDeviceSize)15) + 16;
  if (vk->max_alloc && alloc > vk->max_alloc) {
    qmoe_set_error("Vulkan buffer of %zu bytes exceeds device '%s''s maxMemoryAllocationSize of %llu bytes", bytes,
                   vk->props.deviceName, (unsigned long long)vk->max_alloc);
    return QMOE_EINVAL;
  }
  VkBufferCreateInfo bci = {.sType = VK_STRUCTURE_TYPE_BUFFER_CREATE_INFO, .size = alloc,
                            .usage = VK_BUFFER_USAGE_STORAGE_BUFFER_BIT | VK_BUFFER_USAGE_TRANSFER_SRC_BIT |
                                     VK_BUFFER_USAGE_TRANSFER_DST_BIT |
                                     (kind == BUF_TABLE ? VK_BUFFER_USAGE_INDIRECT_BUFFER_BIT : 0),
                            .sharingMode = VK_SHARING_MODE_EXCLUSIVE};
  VkResult r = vk->f.vkCreateBuffer(vk->device, &bci, NULL, &out->buf);
  if (r != VK_SUCCESS) return vk_fail(r, "vkCreateBuffer(%zu bytes)", bytes);
  VkMemoryRequirements req;
  vk->f.vkGetBufferMemoryRequirements(vk->device, out->buf, &req);
  int type;
  const VkMemoryPropertyFlags hv = VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT | VK_MEMORY_PROPERTY_HOST_COHERENT_BIT;
  int mapped = kind != BUF_DEVICE || !vk->staging_mode;
  if (kind == BUF_STAGING) /* host-visible, cached if possible (downloads read it) */
    type = find_memory_type(&vk->mem, req.memoryTypeBits, hv, hv | VK_MEMORY_PROPERTY_HOST_CACHED_BIT);
  else if (mapped) /* tables too: every workgroup reads its params, so device-local where the host can map it */
    type = find_memory_type(&vk->mem, req.memoryTypeBits, hv, hv | VK_MEMORY_PROPERTY_DEVICE_LOCAL_BIT);
  else
    type = find_memory_type(&vk->mem, req.memoryTypeBits, 0, VK_MEMORY_PROPERTY_DEVICE_LOCAL_BIT);
  if (type < 0) {
    vk->f.vkDestroyBuffer(vk->device, out->buf, NULL);
    out->buf = VK_NULL_HANDLE;
    qmoe_set_error("device '%s' has no %s memory type for a storage buffer", vk->props.deviceName,
                   mapped ? "host-visible coherent" : "suitable");
    return QMOE_EUNSUPPORTED;
  }
  VkMemoryAllocateInfo mai = {.sType = VK_STRUCTURE_TYPE_MEMORY_ALLOCATE_INFO, .allocationSize = req.size,
                              .memoryTypeIndex = (uint32_t)type};
  r = vk->f.vkAllocateMemory(vk->device, &mai, NULL, &out->mem);
  if (r != VK_SUCCESS) {
    vk->f.vkDestroyBuffer(vk->device, out->buf, NULL);
    out->buf = VK_NULL_HANDLE;
    return vk_fail(r, "vkAllocateMemory(%llu bytes on '%s')", (unsigned long long)req.size, vk->props.deviceName);
  }
  r = vk->f.vkBindBufferMemory(vk->device, out->buf, out->mem, 0);
  if (r == VK_SUCCESS && mapped) {
    void *p = NULL;
    r = vk->f.vkMapMemory(vk->device, out->mem, 0, VK_WHOLE_SIZE, 0, &p);
    out->map = p;
  }
  out->size = bytes;
  out->alloc = alloc;
  if (r != VK_SUCCESS) {
    buf_release(vk, out);
    return vk_fail(r, "binding/mapping a buffer of %zu bytes", bytes);
  }
  return 0;
}

/* Frees a buffer no recorded or submitted work uses any more. */
static void buf_release(qmoe_vk *vk, qmoe_vk_buf *b) {
  if (!b || !b->buf) return;
  if (b->map) vk->f.vkUnmapMemory(vk->device, b->mem);
  vk->f.vkDestroyBuffer(vk->device, b->buf, NULL);
  vk->f.vkFreeMemory(vk->device, b->mem, NULL);
  memset(b, 0, sizeof *b);
}

int qmoe_vk_buf_create(qmoe_vk *vk, size_t bytes, qmoe_vk_buf *out) { return buf_create(vk, bytes, BUF_DEVICE, out); }

static int finish(qmoe_vk *vk);

void qmoe_vk_buf_destroy(qmoe_vk *vk, qmoe_vk_buf *b) {
  if (!b || !b->buf) return;
  (void)finish(vk); /* recorded or submitted work may use it (an error is reported by the next call) */
  for (int i = 0; i < vk->nkept; i++)
    for (int k = 0; k < vk->kept[i].nb; k++)
      if (vk->kept[i].d[k].buf == b->buf) vk->nkept = 0; /* the kept graph is recorded anew next time */
  for (int i = 0; i < vk->ngcalls && !vk->graph_broken; i++)
    for (int k = 0; k < vk->gcalls[i].nb; k++)
      if (vk->gcalls[i].b[k].buf == b) {
        vk->graph_broken = 1;
        snprintf(vk->graph_why, sizeof vk->graph_why,
                 "a buffer of %llu bytes that dispatch %d of the graph binds was freed before graph_end",
                 (unsigned long long)b->size, i + 1);
        break;
      }
  buf_release(vk, b);
}

static int ensure_staging(qmoe_vk *vk, size_t want) {
  if (want < STAGING_MIN) want = STAGING_MIN;
  if (want > STAGING_MAX) want = STAGING_MAX;
  if (vk->staging.buf && vk->staging.size >= want) return 0;
  (void)finish(vk);
  buf_release(vk, &vk->staging);
  return buf_create(vk, want, BUF_STAGING, &vk->staging);
}

/* ---- submission ---- */

/* Waits for the submission in flight, if any; then its command buffers and tables may be reused. */
static int wait_in_flight(qmoe_vk *vk) {
  if (!vk->in_flight) return 0;
  vk->in_flight = 0;
  VkResult r = vk->f.vkWaitForFences(vk->device, 1, &vk->fence, VK_TRUE, (uint64_t)FENCE_TIMEOUT_S * 1000000000ull);
  if (r == VK_TIMEOUT) {
    qmoe_set_error("Vulkan: the work submitted to '%s' did not finish within %d s", vk->props.deviceName,
                   FENCE_TIMEOUT_S);
    return QMOE_EDEVICE;
  }
  if (r != VK_SUCCESS) return vk_fail(r, "vkWaitForFences");
  r = vk->f.vkResetFences(vk->device, 1, &vk->fence);
  if (r != VK_SUCCESS) return vk_fail(r, "vkResetFences");
  if (vk->in_flight_stream) {
    vk->in_flight_stream = 0;
    r = vk->f.vkResetCommandBuffer(vk->stream.cmd, 0);
    if (r != VK_SUCCESS) return vk_fail(r, "vkResetCommandBuffer");
    vk->stream.ncmds = 0;
    vk->stab.used = 0;
    for (int i = 0; i < vk->nstab_old; i++) buf_release(vk, &vk->stab_old[i]);
    vk->nstab_old = 0;
  }
  return 0;
}

/* Submits the stream recorded so far (when WITH_STREAM) and then the graph's command buffer (when
 * WITH_GRAPH), without waiting; nothing may be in flight. */
static int submit(qmoe_vk *vk, int with_stream, int with_graph) {
  VkCommandBuffer cbs[2];
  uint32_t n = 0;
  if (with_stream) {
    vk->stream.recording = 0;
    VkResult r = vk->f.vkEndCommandBuffer(vk->stream.cmd);
    if (r != VK_SUCCESS) return vk_fail(r, "vkEndCommandBuffer");
    cbs[n++] = vk->stream.cmd;
  }
  if (with_graph) cbs[n++] = vk->graph.cmd;
  if (!n) return 0;
  VkSubmitInfo si = {.sType = VK_STRUCTURE_TYPE_SUBMIT_INFO, .commandBufferCount = n, .pCommandBuffers = cbs};
  VkResult r = vk->f.vkQueueSubmit(vk->queue, 1, &si, vk->fence);
  if (r != VK_SUCCESS)
    return vk_fail(r, "vkQueueSubmit (%d commands%s)", with_stream ? vk->stream.ncmds : 0,
                   with_graph ? " and a graph" : "");
  vk->in_flight = 1;
  vk->in_flight_stream = with_stream;
  return 0;
}

/* Makes the device's writes visible to the host (mapped buffers are read right after the wait). */
static void host_barrier(qmoe_vk *vk, VkCommandBuffer cmd) {
  VkMemoryBarrier mb = {.sType = VK_STRUCTURE_TYPE_MEMORY_BARRIER,
                        .srcAccessMask = VK_ACCESS_SHADER_WRITE_BIT | VK_ACCESS_TRANSFER_WRITE_BIT,
                        .dstAccessMask = VK_ACCESS_HOST_READ_BIT};
  vk->f.vkCmdPipelineBarrier(cmd, VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT | VK_PIPELINE_STAGE_TRANSFER_BIT,
                             VK_PIPELINE_STAGE_HOST_BIT, 0, 1, &mb, 0, NULL, 0, NULL);
}

/* Submits what the stream recorded and waits for it and for anything in flight. */
static int finish(qmoe_vk *vk) {
  int rc = wait_in_flight(vk);
  if (rc || !vk->stream.recording) return rc;
  host_barrier(vk, vk->stream.cmd);
  if ((rc = submit(vk, 1, 0))) return rc;
  return wait_in_flight(vk);
}

/* The stream's command buffer, begun if it is not (after waiting for it to come back from the device). */
static int stream_begin(qmoe_vk *vk) {
  if (vk->stream.recording) return 0;
  int rc = wait_in_flight(vk);
  if (rc) return rc;
  VkCommandBufferBeginInfo bi = {.sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_BEGIN_INFO,
                                 .flags = VK_COMMAND_BUFFER_USAGE_ONE_TIME_SUBMIT_BIT};
  VkResult r = vk->f.vkBeginCommandBuffer(vk->stream.cmd, &bi);
  if (r != VK_SUCCESS) return vk_fail(r, "vkBeginCommandBuffer");
  vk->stream.recording = 1;
  vk->stream.ncmds = 0;
  vk->stream.nread = vk->stream.nwritten = 0; /* what ran before was waited for */
  return 0;
}

/* Orders the next command of R after everything before it (compute and transfer, both ways); FORCE also at
 * the start of a command buffer, ordering it after earlier submissions that were not waited for. */
static void barrier(qmoe_vk *vk, vk_rec *rec, int force) {
  rec->nread = rec->nwritten = 0;
  if (!rec->ncmds && !force) return;
  if (rec == &vk->graph && !force && (vk->g_no_barrier || vk->g_compute_barrier)) {
    if (vk->g_no_barrier) return; /* timing only: wrong results unless the stages are empty */
    VkMemoryBarrier cb = {.sType = VK_STRUCTURE_TYPE_MEMORY_BARRIER, .srcAccessMask = VK_ACCESS_SHADER_WRITE_BIT,
                          .dstAccessMask = VK_ACCESS_SHADER_READ_BIT | VK_ACCESS_SHADER_WRITE_BIT};
    vk->f.vkCmdPipelineBarrier(rec->cmd, VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT, VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT, 0,
                               1, &cb, 0, NULL, 0, NULL);
    return;
  }
  VkMemoryBarrier mb = {.sType = VK_STRUCTURE_TYPE_MEMORY_BARRIER,
                        .srcAccessMask = VK_ACCESS_SHADER_WRITE_BIT | VK_ACCESS_TRANSFER_WRITE_BIT,
                        .dstAccessMask = VK_ACCESS_SHADER_READ_BIT | VK_ACCESS_SHADER_WRITE_BIT |
                                         VK_ACCESS_TRANSFER_READ_BIT | VK_ACCESS_TRANSFER_WRITE_BIT};
  VkPipelineStageFlags st = VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT | VK_PIPELINE_STAGE_TRANSFER_BIT;
  vk->f.vkCmdPipelineBarrier(rec->cmd, st, st, 0, 1, &mb, 0, NULL, 0, NULL);
}

static int in_graph(const qmoe_vk *vk, const char *what) {
  if (!vk->graph_open) return 0;
  qmoe_set_error("vulkan %s: not allowed inside a graph (between graph_begin and graph_end); end the graph first",
                 what);
  return QMOE_EINVAL;
}

int qmoe_vk_sync(qmoe_vk *vk) {
  int rc = in_graph(vk, "sync");
  if (rc) return rc;
  rc = finish(vk);
  int vrc = qmoe_vk_check_validation(vk, "sync");
  return rc ? rc : vrc;
}

static int check_range(const char *what, const qmoe_vk_buf *b, size_t off, size_t n) {
  if (!b || !b->buf) {
    qmoe_set_error("vulkan %s: buffer is NULL", what);
    return QMOE_EINVAL;
  }
  if (off > b->size || n > b->size - off) {
    qmoe_set_error("vulkan %s: %zu bytes at offset %zu are outside the buffer of %llu bytes", what, n, off,
                   (unsigned long long)b->size);
    return QMOE_EINVAL;
  }
  return 0;
}

int qmoe_vk_buf_write(qmoe_vk *vk, qmoe_vk_buf *b, size_t off, const void *src, size_t n) {
  int rc = in_graph(vk, "upload");
  if (!rc) rc = check_range("upload", b, off, n);
  if (rc || !n) return rc;
  if ((rc = qmoe_vk_sync(vk))) return rc;
  if (b->map) {
    memcpy(b->map + off, src, n);
    return 0;
  }
  if ((rc = ensure_staging(vk, n))) return rc;
  for (size_t done = 0; done < n;) {
    size_t chunk = n - done < vk->staging.size ? n - done : vk->staging.size;
    memcpy(vk->staging.map, (const unsigned char *)src + done, chunk);
    if ((rc = stream_begin(vk))) return rc;
    VkBufferCopy region = {.srcOffset = 0, .dstOffset = off + done, .size = chunk};
    vk->f.vkCmdCopyBuffer(vk->stream.cmd, vk->staging.buf, b->buf, 1, &region);
    vk->stream.ncmds++;
    if ((rc = qmoe_vk_sync(vk))) return rc;
    done += chunk;
  }
  return 0;
}

int qmoe_vk_buf_read(qmoe_vk *vk, const qmoe_vk_buf *b, size_t off, void *dst, size_t n) {
  int rc = in_graph(vk, "download");
  if (!rc) rc = check_range("download", b, off, n);
  if (rc || !n) return rc;
  if ((rc = qmoe_vk_sync(vk))) return rc;
  if (b->map) {
    memcpy(dst, b->map + off, n);
    return 0;
  }
  if ((rc = ensure_staging(vk, n))) return rc;
  for (size_t done = 0; done < n;) {
    size_t chunk = n - done < vk->staging.size ? n - done : vk->staging.size;
    if ((rc = stream_begin(vk))) return rc;
    VkBufferCopy region = {.srcOffset = off + done, .dstOffset = 0, .size = chunk};
    vk->f.vkCmdCopyBuffer(vk->stream.cmd, b->buf, vk->staging.buf, 1, &region);
    vk->stream.ncmds++;
    if ((rc = qmoe_vk_sync(vk))) return rc;
    memcpy((unsigned char *)dst + done, vk->staging.map, chunk);
    done += chunk;
  }
  return 0;
}

/* ---- pipelines ---- */

/* Whether QMOE_VK_EMPTY (`all`, or stage names separated by commas) names the stage of SHADER
 * (`<stage>__<qtype>__<acc>[.<pass>]`): its pipeline is created with QMOE_EMPTY true, so it does nothing. A
 * timing hook, like CUDA's QMOE_EMPTY_* defines; the outputs are wrong. */
static VkBool32 empty_stage(const char *shader) {
  const char *e0 = getenv("QMOE_VK_EMPTY"), *e = e0;
  if (!e || !*e) return VK_FALSE;
  const char *end = strstr(shader, "__");
  size_t n = end ? (size_t)(end - shader) : strcspn(shader, ".");
  while (*e) {
    size_t k = strcspn(e, ",");
    if ((k == 3 && strncmp(e, "all", 3) == 0) || (k == n && strncmp(e, shader, n) == 0)) {
      static int warned;
      if (!warned++) fprintf(stderr, "qmoe: vulkan: QMOE_VK_EMPTY=%s: those stages do nothing (a timing hook); outputs are wrong\n", e0);
      return VK_TRUE;
    }
    e += k + (e[k] == ',');
  }
  return VK_FALSE;
}

int qmoe_vk_pipeline(qmoe_vk *vk, const char *shader, const char *what, uint32_t shared_bytes, uint32_t local_size,
                     VkPipeline *out) {
  *out = VK_NULL_HANDLE;
  size_t idx = 0;
  while (idx < qmoe_embedded_spirv_count && strcmp(qmoe_embedded_spirv[idx].name, shader) != 0) idx++;
  if (idx == qmoe_embedded_spirv_count) {
    qmoe_set_error("%s: shader '%s' is not among the %zu embedded SPIR-V modules (rebuild: generated/glsl/%s.comp)",
                   what, shader, qmoe_embedded_spirv_count, shader);
    return QMOE_EUNSUPPORTED;
  }
  if (vk->pipes[idx]) {
    *out = vk->pipes[idx];
    return 0;
  }
  const qmoe_embedded *e = &qmoe_embedded_spirv[idx];
  uint32_t need;
  int rc = qmoe_vk_spirv_features(e->data, e->size, what, &need);
  if (rc) return rc;
  uint32_t missing = need & ~vk->features;
  if (missing) {
    char names[512] = "";
    size_t len = 0;
    for (int i = 0; i < QMOE_VK_F_COUNT && len < sizeof names; i++)
      if (missing & (1u << i))
        len += (size_t)snprintf(names + len, sizeof names - len, "%s%s", len ? ", " : "", feature_names[i]);
    qmoe_set_error("device '%s' lacks %s, needed by %s", vk->props.deviceName, names, what);
    return QMOE_EUNSUPPORTED;
  }
  const VkPhysicalDeviceLimits *L = &vk->props.limits;
  if (shared_bytes > L->maxComputeSharedMemorySize) {
    qmoe_set_error("device '%s' allows %u bytes of workgroup shared memory, %s needs %u", vk->props.deviceName,
                   L->maxComputeSharedMemorySize, what, shared_bytes);
    return QMOE_EUNSUPPORTED;
  }
  if (local_size > L->maxComputeWorkGroupInvocations || local_size > L->maxComputeWorkGroupSize[0]) {
    qmoe_set_error("device '%s' allows workgroups of %u invocations, %s needs %u", vk->props.deviceName,
                   L->maxComputeWorkGroupInvocations, what, local_size);
    return QMOE_EUNSUPPORTED;
  }
  if (!vk->modules[idx]) {
    uint32_t *code = vk_xcalloc(e->size / 4, 4); /* the embedded bytes are not 4-byte aligned */
    memcpy(code, e->data, e->size);
    VkShaderModuleCreateInfo smi = {.sType = VK_STRUCTURE_TYPE_SHADER_MODULE_CREATE_INFO, .codeSize = e->size,
                                    .pCode = code};
    VkResult r = vk->f.vkCreateShaderModule(vk->device, &smi, NULL, &vk->modules[idx]);
    free(code);
    if (r != VK_SUCCESS) return vk_fail(r, "vkCreateShaderModule(%s)", what);
  }
  /* Specialization constant 0: the device's subgroup size (SPIR-V 1.5 compute shaders run with it), which the
   * row kernels size their shared staging for (codegen/gen_glsl.lua QMOE_SG); shaders without it ignore it.
   * Constant 1: QMOE_EMPTY (templates/glsl/_push.glsl), true where QMOE_VK_EMPTY names the shader's stage. */
  const uint32_t spec[2] = {vk->subgroup_size, empty_stage(shader)};
  const VkSpecializationMapEntry sme[2] = {{.constantID = 0, .offset = 0, .size = 4},
                                           {.constantID = 1, .offset = 4, .size = 4}};
  const VkSpecializationInfo spi = {.mapEntryCount = spec[0] ? 2 : 1, .pMapEntries = spec[0] ? sme : sme + 1,
                                    .dataSize = sizeof spec, .pData = spec};
  VkComputePipelineCreateInfo cpi = {
      .sType = VK_STRUCTURE_TYPE_COMPUTE_PIPELINE_CREATE_INFO,
      .stage = {.sType = VK_STRUCTURE_TYPE_PIPELINE_SHADER_STAGE_CREATE_INFO, .stage = VK_SHADER_STAGE_COMPUTE_BIT,
                .module = vk->modules[idx], .pName = "main", .pSpecializationInfo = &spi},
      .layout = vk->layout};
  if (vk->get_exec_stats) cpi.flags |= VK_PIPELINE_CREATE_CAPTURE_STATISTICS_BIT_KHR;
  VkResult r = vk->f.vkCreateComputePipelines(vk->device, VK_NULL_HANDLE, 1, &cpi, NULL, &vk->pipes[idx]);
  if (r != VK_SUCCESS) {
    vk->pipes[idx] = VK_NULL_HANDLE;
    return vk_fail(r, "vkCreateComputePipelines(%s)", what);
  }
  if (vk->get_exec_stats) print_pipeline_stats(vk, vk->pipes[idx], what);
  if ((rc = qmoe_vk_check_validation(vk, what))) return rc;
  *out = vk->pipes[idx];
  return 0;
}

/* ---- recording ---- */

/* The descriptors of bindings B: each bound from its offset to the end of its buffer (at most
 * maxStorageBufferRange). */
static void resolve(qmoe_vk *vk, VkPipeline pipe, const qmoe_vk_binding *b, int nb, vk_shape *s) {
  memset(s, 0, sizeof *s); /* shapes are compared with memcmp */
  s->pipe = pipe;
  s->nb = nb;
  VkDeviceSize maxr = vk->props.limits.maxStorageBufferRange & ~(VkDeviceSize)15;
  for (int i = 0; i < nb; i++) {
    VkDeviceSize range = b[i].buf->alloc - b[i].off;
    s->d[i] = (vk_desc){.buf = b[i].buf->buf, .off = b[i].off, .range = range > maxr ? maxr : range,
                        .writes = b[i].writes != 0};
  }
}

/* Records dispatch S into REC with its params in slot SLOT of table T: GROUPS workgroups, or (NULL) the
 * counts the slot holds when the dispatch runs. */
static void record(qmoe_vk *vk, vk_rec *rec, const vk_shape *s, const vk_table *t, uint32_t slot,
                   const uint32_t *groups) {
  const int nb = (int)s->nb;
  int hazard = rec->nread + nb > TRACK_MAX || rec->nwritten + nb > TRACK_MAX;
  for (int i = 0; i < nb && !hazard; i++) {
    for (int k = 0; k < rec->nwritten; k++) hazard |= rec->written[k] == s->d[i].buf; /* RAW, WAW */
    for (int k = 0; s->d[i].writes && k < rec->nread; k++) hazard |= rec->read[k] == s->d[i].buf; /* WAR */
  }
  if (hazard) barrier(vk, rec, 0);
  for (int i = 0; i < nb; i++) {
    if (s->d[i].writes) rec->written[rec->nwritten++] = s->d[i].buf;
    rec->read[rec->nread++] = s->d[i].buf; /* a written binding may be read too */
  }
  VkDescriptorBufferInfo info[QMOE_VK_MAX_BINDINGS + 1];
  VkWriteDescriptorSet wr[QMOE_VK_MAX_BINDINGS + 1];
  for (int i = 0; i <= nb; i++) {
    info[i] = i < nb ? (VkDescriptorBufferInfo){.buffer = s->d[i].buf, .offset = s->d[i].off, .range = s->d[i].range}
                     : (VkDescriptorBufferInfo){.buffer = t->buf.buf, .offset = 0,
                                                .range = (VkDeviceSize)t->cap * QMOE_VK_SLOT_BYTES};
    wr[i] = (VkWriteDescriptorSet){.sType = VK_STRUCTURE_TYPE_WRITE_DESCRIPTOR_SET,
                                   .dstBinding = i < nb ? (uint32_t)i : QMOE_VK_PARAMS_BINDING, .descriptorCount = 1,
                                   .descriptorType = VK_DESCRIPTOR_TYPE_STORAGE_BUFFER, .pBufferInfo = &info[i]};
  }
  vk->f.vkCmdBindPipeline(rec->cmd, VK_PIPELINE_BIND_POINT_COMPUTE, s->pipe);
  vk->f.vkCmdPushDescriptorSetKHR(rec->cmd, VK_PIPELINE_BIND_POINT_COMPUTE, vk->layout, 0, (uint32_t)nb + 1, wr);
  vk->f.vkCmdPushConstants(rec->cmd, vk->layout, VK_SHADER_STAGE_COMPUTE_BIT, 0, sizeof slot, &slot);
  if (groups)
    vk->f.vkCmdDispatch(rec->cmd, groups[0], groups[1], groups[2]);
  else
    vk->f.vkCmdDispatchIndirect(rec->cmd, t->buf.buf, (VkDeviceSize)slot * QMOE_VK_SLOT_BYTES + QMOE_VK_PUSH_BYTES);
  rec->ncmds++;
}

/* Makes T a table of at least N slots (nothing may use the one it has). */
static int table_reserve(qmoe_vk *vk, vk_table *t, uint32_t n) {
  if (t->buf.buf && t->cap >= n) return 0;
  uint32_t cap = TABLE_MIN_SLOTS;
  while (cap < n) cap *= 2;
  buf_release(vk, &t->buf);
  t->cap = t->used = 0;
  int rc = buf_create(vk, (size_t)cap * QMOE_VK_SLOT_BYTES, BUF_TABLE, &t->buf);
  if (rc) return rc;
  t->cap = cap;
  return 0;
}

/* The next free slot of the stream's table. A full table stays alive (the stream's commands read it) until
 * the stream's submission completes; its successor is twice its size. */
static int stream_slot(qmoe_vk *vk, uint32_t *slot) {
  if (!vk->stab.buf.buf || vk->stab.used == vk->stab.cap) {
    uint32_t want = vk->stab.cap ? vk->stab.cap * 2 : TABLE_MIN_SLOTS;
    if (vk->stab.used) {
      qmoe_vk_buf *grown = realloc(vk->stab_old, (size_t)(vk->nstab_old + 1) * sizeof *grown);
      if (!grown) {
        qmoe_set_error("vulkan: out of memory for the list of params tables");
        return QMOE_ENOMEM;
      }
      vk->stab_old = grown;
      vk->stab_old[vk->nstab_old++] = vk->stab.buf;
      memset(&vk->stab.buf, 0, sizeof vk->stab.buf);
    }
    int rc = table_reserve(vk, &vk->stab, want);
    if (rc) return rc;
  }
  *slot = vk->stab.used++;
  return 0;
}

int qmoe_vk_dispatch(qmoe_vk *vk, VkPipeline pipe, const qmoe_vk_binding *b, int nb, const void *pc, size_t pc_size,
                     uint32_t gx, uint32_t gy, uint32_t gz) {
  const VkPhysicalDeviceLimits *L = &vk->props.limits;
  if (nb > QMOE_VK_MAX_BINDINGS || pc_size > QMOE_VK_PUSH_BYTES) {
    qmoe_set_error("vulkan dispatch: %d bindings / %zu params bytes exceed %d / %d", nb, pc_size,
                   QMOE_VK_MAX_BINDINGS, QMOE_VK_PUSH_BYTES);
    return QMOE_EINVAL;
  }
  if (gx > L->maxComputeWorkGroupCount[0] || gy > L->maxComputeWorkGroupCount[1] || gz > L->maxComputeWorkGroupCount[2]) {
    qmoe_set_error("vulkan dispatch of %ux%ux%u workgroups exceeds device '%s''s maxComputeWorkGroupCount %ux%ux%u",
                   gx, gy, gz, vk->props.deviceName, L->maxComputeWorkGroupCount[0], L->maxComputeWorkGroupCount[1],
                   L->maxComputeWorkGroupCount[2]);
    return QMOE_EINVAL;
  }
  VkDeviceSize align = qmoe_vk_offset_align(vk);
  for (int i = 0; i < nb; i++) {
    if (!b[i].buf || !b[i].buf->buf || b[i].off % align || b[i].off >= b[i].buf->alloc) {
      qmoe_set_error("vulkan dispatch: binding %d has no buffer or a bad offset %llu", i, (unsigned long long)b[i].off);
      return QMOE_EINVAL;
    }
  }
  /* The slot: params, then the VkDispatchIndirectCommand a graph's replay dispatches with. */
  uint32_t slot[QMOE_VK_SLOT_BYTES / 4] = {0};
  memcpy(slot, pc, pc_size);
  slot[QMOE_VK_PUSH_BYTES / 4] = gx;
  slot[QMOE_VK_PUSH_BYTES / 4 + 1] = gy;
  slot[QMOE_VK_PUSH_BYTES / 4 + 2] = gz;
  if (vk->graph_open) { /* kept for graph_end */
    if (vk->ngcalls == vk->capgcalls) {
      int cap = vk->capgcalls ? 2 * vk->capgcalls : 256;
      vk_gcall *grown = realloc(vk->gcalls, (size_t)cap * sizeof *grown);
      if (!grown) {
        qmoe_set_error("vulkan: out of memory for a graph of %d dispatches", cap);
        return QMOE_ENOMEM;
      }
      vk->gcalls = grown;
      vk->capgcalls = cap;
    }
    vk_gcall *g = &vk->gcalls[vk->ngcalls++];
    memset(g, 0, sizeof *g);
    g->pipe = pipe;
    g->nb = nb;
    memcpy(g->b, b, (size_t)nb * sizeof *b);
    memcpy(g->slot, slot, sizeof slot);
    return 0;
  }
  uint32_t at;
  int rc = stream_begin(vk);
  if (!rc) rc = stream_slot(vk, &at);
  if (rc) return rc;
  memcpy(vk->stab.buf.map + (size_t)at * QMOE_VK_SLOT_BYTES, slot, sizeof slot);
  vk_shape s;
  resolve(vk, pipe, b, nb, &s);
  const uint32_t groups[3] = {gx, gy, gz};
  record(vk, &vk->stream, &s, &vk->stab, at, groups);
  return qmoe_vk_check_validation(vk, "dispatch");
}

int qmoe_vk_update(qmoe_vk *vk, qmoe_vk_buf *b, size_t off, const void *data, size_t n) {
  int rc = in_graph(vk, "update");
  if (!rc) rc = check_range("update", b, off, n);
  if (rc) return rc;
  if (n == 0 || n > 65536 || n % 4 || off % 4) {
    qmoe_set_error("vulkan update: %zu bytes at offset %zu (must be 4-byte aligned, 1..65536 bytes)", n, off);
    return QMOE_EINVAL;
  }
  if ((rc = stream_begin(vk))) return rc;
  barrier(vk, &vk->stream, 0);
  vk->f.vkCmdUpdateBuffer(vk->stream.cmd, b->buf, off, n, data);
  vk->stream.written[vk->stream.nwritten++] = b->buf;
  vk->stream.ncmds++;
  return 0;
}

/* ---- graphs ---- */

int qmoe_vk_graph_begin(qmoe_vk *vk) {
  if (vk->graph_open) {
    qmoe_set_error("vulkan graph_begin: a graph is already open (graphs do not nest); end it first");
    return QMOE_EINVAL;
  }
  vk->graph_open = 1;
  vk->graph_broken = 0;
  vk->ngcalls = 0;
  return 0;
}

/* Records the graph's command buffer from the shapes in vk->fresh (N dispatches, slot i for dispatch i).
 * Nothing may be in flight. */
static int record_graph(qmoe_vk *vk, int n) {
  int rc = table_reserve(vk, &vk->gtab, (uint32_t)n);
  if (rc) return rc;
  VkCommandBufferBeginInfo bi = {.sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_BEGIN_INFO}; /* submitted again */
  VkResult r = vk->f.vkBeginCommandBuffer(vk->graph.cmd, &bi);
  if (r != VK_SUCCESS) return vk_fail(r, "vkBeginCommandBuffer (graph)");
  vk->graph.ncmds = 0;
  barrier(vk, &vk->graph, 1); /* after the stream submitted ahead of it, whatever that wrote */
  for (int i = 0; i < n; i++)
    record(vk, &vk->graph, &vk->fresh[i], &vk->gtab, (uint32_t)i, vk->g_direct ? vk->fresh[i].grid : NULL);
  host_barrier(vk, vk->graph.cmd);
  r = vk->f.vkEndCommandBuffer(vk->graph.cmd);
  if (r != VK_SUCCESS) return vk_fail(r, "vkEndCommandBuffer (graph)");
  return 0;
}

int qmoe_vk_graph_end(qmoe_vk *vk, int submit_it) {
  if (!vk->graph_open) {
    qmoe_set_error("vulkan graph_end: no graph is open (graph_begin first)");
    return QMOE_EINVAL;
  }
  vk->graph_open = 0;
  const int n = vk->ngcalls;
  vk->ngcalls = 0;
  if (!submit_it) {
    vk->g_drops++;
    return 0;
  }
  if (vk->graph_broken) {
    qmoe_set_error("vulkan graph_end: %s; nothing was submitted", vk->graph_why);
    return QMOE_EINVAL;
  }
  if (!n) return qmoe_vk_check_validation(vk, "graph_end");
  if (n > vk->capshape) {
    vk_shape *k = realloc(vk->kept, (size_t)n * sizeof *k);
    if (k) vk->kept = k;
    vk_shape *f = k ? realloc(vk->fresh, (size_t)n * sizeof *f) : NULL;
    if (f) vk->fresh = f;
    if (!k || !f) {
      qmoe_set_error("vulkan: out of memory for a graph of %d dispatches", n);
      return QMOE_ENOMEM;
    }
    vk->capshape = n;
  }
  for (int i = 0; i < n; i++) {
    resolve(vk, vk->gcalls[i].pipe, vk->gcalls[i].b, vk->gcalls[i].nb, &vk->fresh[i]);
    if (vk->g_direct) memcpy(vk->fresh[i].grid, &vk->gcalls[i].slot[QMOE_VK_PUSH_BYTES / 4], 3 * sizeof(uint32_t));
  }
  const int same = vk->nkept == n && memcmp(vk->kept, vk->fresh, (size_t)n * sizeof *vk->fresh) == 0;
  int rc = wait_in_flight(vk); /* the command buffer and table may be in use */
  if (rc) return rc;
  if (same) {
    vk->g_replays++;
  } else {
    vk->nkept = 0;
    if ((rc = record_graph(vk, n))) return rc;
    vk_shape *t = vk->kept;
    vk->kept = vk->fresh;
    vk->fresh = t;
    vk->nkept = n;
    vk->g_records++;
  }
  for (int i = 0; i < n; i++)
    memcpy(vk->gtab.buf.map + (size_t)i * QMOE_VK_SLOT_BYTES, vk->gcalls[i].slot, QMOE_VK_SLOT_BYTES);
  if ((rc = submit(vk, vk->stream.recording, 1))) return rc;
  return qmoe_vk_check_validation(vk, "graph_end");
}

void qmoe_vk_graph_stats_get(const qmoe_vk *vk, qmoe_vk_graph_stats *out) {
  *out = (qmoe_vk_graph_stats){.records = vk->g_records, .replays = vk->g_replays, .drops = vk->g_drops,
                               .kept = vk->nkept, .open = vk->graph_open, .in_flight = vk->in_flight};
}

int qmoe_vk_provoke_validation_message(qmoe_vk *vk) {
  if (!vk->validation) return 0;
  /* usage 0 breaks VUID-VkBufferCreateInfo-usage-requiredbitmask; drivers create the buffer anyway. */
  VkBufferCreateInfo bci = {.sType = VK_STRUCTURE_TYPE_BUFFER_CREATE_INFO, .size = 256, .usage = 0,
                            .sharingMode = VK_SHARING_MODE_EXCLUSIVE};
  VkBuffer b = VK_NULL_HANDLE;
  if (vk->f.vkCreateBuffer(vk->device, &bci, NULL, &b) == VK_SUCCESS && b) vk->f.vkDestroyBuffer(vk->device, b, NULL);
  return 1;
}

/* ---- GPU timer ---- */

int qmoe_vk_timer_start(qmoe_vk *vk) {
  int rc = in_graph(vk, "timer");
  if (rc) return rc;
  if (!vk->timestamp_bits) {
    qmoe_set_error("device '%s': its compute queue has no timestamps", vk->props.deviceName);
    return QMOE_EUNSUPPORTED;
  }
  if (!vk->timer) {
    VkQueryPoolCreateInfo qi = {.sType = VK_STRUCTURE_TYPE_QUERY_POOL_CREATE_INFO, .queryType = VK_QUERY_TYPE_TIMESTAMP,
                                .queryCount = 2};
    VkResult r = vk->f.vkCreateQueryPool(vk->device, &qi, NULL, &vk->timer);
    if (r != VK_SUCCESS) return vk_fail(r, "vkCreateQueryPool");
  }
  if ((rc = stream_begin(vk))) return rc;
  vk->f.vkCmdResetQueryPool(vk->stream.cmd, vk->timer, 0, 2);
  vk->f.vkCmdWriteTimestamp(vk->stream.cmd, VK_PIPELINE_STAGE_BOTTOM_OF_PIPE_BIT, vk->timer, 0);
  return 0;
}

int qmoe_vk_timer_stop(qmoe_vk *vk) {
  int rc = in_graph(vk, "timer");
  if (rc) return rc;
  if (!vk->timer || !vk->stream.recording) {
    qmoe_set_error("qmoe_vk_timer_stop: no timer started in the work being recorded");
    return QMOE_EINVAL;
  }
  vk->f.vkCmdWriteTimestamp(vk->stream.cmd, VK_PIPELINE_STAGE_BOTTOM_OF_PIPE_BIT, vk->timer, 1);
  return 0;
}

int qmoe_vk_timer_read(qmoe_vk *vk, double *us) {
  uint64_t t[2];
  if (!vk->timer) {
    qmoe_set_error("qmoe_vk_timer_read: no timer was started");
    return QMOE_EINVAL;
  }
  VkResult r = vk->f.vkGetQueryPoolResults(vk->device, vk->timer, 0, 2, sizeof t, t, sizeof t[0],
                                           VK_QUERY_RESULT_64_BIT | VK_QUERY_RESULT_WAIT_BIT);
  if (r != VK_SUCCESS) return vk_fail(r, "vkGetQueryPoolResults");
  uint64_t mask = vk->timestamp_bits >= 64 ? ~0ull : (1ull << vk->timestamp_bits) - 1;
  *us = (double)((t[1] - t[0]) & mask) * (double)vk->props.limits.timestampPeriod * 1e-3;
  return 0;
}
