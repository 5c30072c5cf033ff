/* vk.c: the Vulkan runtime — loads libvulkan.so.1 with dlopen(), creates the instance (with the validation
 * layer when asked or installed), picks and opens a device, and provides buffers, lazily created pipelines
 * from the embedded SPIR-V and command recording with one submit per sync. See vk_internal.h. */
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

enum { FENCE_TIMEOUT_S = 600, STAGING_MIN = 1 << 20, STAGING_MAX = 64 << 20, TRACK_MAX = 32 };

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
  uint32_t dev_type, host_type; /* memory types: device buffers, staging buffer */
  qmoe_vk_buf staging;

  VkDescriptorSetLayout dsl;
  VkPipelineLayout layout;
  VkShaderModule *modules; /* per embedded shader, created on first use */
  VkPipeline *pipes;

  VkCommandPool pool;
  VkCommandBuffer cmd;
  VkFence fence;
  int recording, ncmds;
  /* Buffers read and written by the commands recorded since the last barrier: the next command needs a
   * barrier only when it reads or writes one written there, or writes one read there. */
  VkBuffer read[TRACK_MAX], written[TRACK_MAX];
  int nread, nwritten;
  VkQueryPool timer; /* two timestamps, created on first use */
  uint32_t timestamp_bits;
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
    "subgroupShuffle", "subgroupShuffleRelative", "subgroupClustered", "subgroupQuad",
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

  VkPhysicalDeviceVulkan12Features f12 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_1_2_FEATURES};
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

  if (!find_compute_family(vk, vk->phys, &vk->queue_family)) { /* checked in select_device */
    qmoe_set_error("device '%s' has no compute queue", vk->devs[vk->dev_index].name);
    return QMOE_ENODEV;
  }
  float prio = 1.0f;
  VkDeviceQueueCreateInfo qci = {.sType = VK_STRUCTURE_TYPE_DEVICE_QUEUE_CREATE_INFO,
                                 .queueFamilyIndex = vk->queue_family, .queueCount = 1, .pQueuePriorities = &prio};
  const char *exts[] = {VK_KHR_PUSH_DESCRIPTOR_EXTENSION_NAME};
  VkDeviceCreateInfo dci = {.sType = VK_STRUCTURE_TYPE_DEVICE_CREATE_INFO, .pNext = &e2, .queueCreateInfoCount = 1,
                            .pQueueCreateInfos = &qci, .enabledExtensionCount = 1, .ppEnabledExtensionNames = exts};
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

  VkDescriptorSetLayoutBinding binds[QMOE_VK_MAX_BINDINGS];
  for (uint32_t i = 0; i < QMOE_VK_MAX_BINDINGS; i++)
    binds[i] = (VkDescriptorSetLayoutBinding){.binding = i, .descriptorType = VK_DESCRIPTOR_TYPE_STORAGE_BUFFER,
                                              .descriptorCount = 1, .stageFlags = VK_SHADER_STAGE_COMPUTE_BIT};
  VkDescriptorSetLayoutCreateInfo dci = {.sType = VK_STRUCTURE_TYPE_DESCRIPTOR_SET_LAYOUT_CREATE_INFO,
                                         .flags = VK_DESCRIPTOR_SET_LAYOUT_CREATE_PUSH_DESCRIPTOR_BIT_KHR,
                                         .bindingCount = QMOE_VK_MAX_BINDINGS, .pBindings = binds};
  VkResult r = vk->f.vkCreateDescriptorSetLayout(vk->device, &dci, NULL, &vk->dsl);
  if (r != VK_SUCCESS) return vk_fail(r, "vkCreateDescriptorSetLayout");
  if (vk->props.limits.maxPushConstantsSize < QMOE_VK_PUSH_BYTES) {
    qmoe_set_error("device '%s' allows %u bytes of push constants, qmoe needs %d", vk->props.deviceName,
                   vk->props.limits.maxPushConstantsSize, QMOE_VK_PUSH_BYTES);
    return QMOE_EUNSUPPORTED;
  }
  VkPushConstantRange pcr = {.stageFlags = VK_SHADER_STAGE_COMPUTE_BIT, .offset = 0, .size = QMOE_VK_PUSH_BYTES};
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
                                     .level = VK_COMMAND_BUFFER_LEVEL_PRIMARY, .commandBufferCount = 1};
  r = vk->f.vkAllocateCommandBuffers(vk->device, &cai, &vk->cmd);
  if (r != VK_SUCCESS) return vk_fail(r, "vkAllocateCommandBuffers");
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

/* Validation messages reported while devices were being closed, over the whole process (tests check it:
 * close cannot return an error, and an object left alive shows up only there). */
static int teardown_messages;
int qmoe_vk_teardown_validation_count(void) { return teardown_messages; }

void qmoe_vk_close(qmoe_vk *vk) {
  if (!vk) return;
  int before = vk->val_count;
  if (vk->device) {
    if (vk->recording) {
      vk->f.vkEndCommandBuffer(vk->cmd);
      vk->recording = 0;
    }
    vk->f.vkDeviceWaitIdle(vk->device);
    qmoe_vk_buf_destroy(vk, &vk->staging);
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
int qmoe_vk_pending(const qmoe_vk *vk) { return vk->recording ? vk->ncmds : 0; }

/* ---- buffers ---- */

static int buf_create(qmoe_vk *vk, size_t bytes, int host, qmoe_vk_buf *out) {
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
                                     VK_BUFFER_USAGE_TRANSFER_DST_BIT,
                            .sharingMode = VK_SHARING_MODE_EXCLUSIVE};
  VkResult r = vk->f.vkCreateBuffer(vk->device, &bci, NULL, &out->buf);
  if (r != VK_SUCCESS) return vk_fail(r, "vkCreateBuffer(%zu bytes)", bytes);
  VkMemoryRequirements req;
  vk->f.vkGetBufferMemoryRequirements(vk->device, out->buf, &req);
  int type;
  const VkMemoryPropertyFlags hv = VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT | VK_MEMORY_PROPERTY_HOST_COHERENT_BIT;
  if (host) /* staging: host-visible, cached if possible (downloads read it) */
    type = find_memory_type(&vk->mem, req.memoryTypeBits, hv, hv | VK_MEMORY_PROPERTY_HOST_CACHED_BIT);
  else if (vk->staging_mode)
    type = find_memory_type(&vk->mem, req.memoryTypeBits, 0, VK_MEMORY_PROPERTY_DEVICE_LOCAL_BIT);
  else
    type = find_memory_type(&vk->mem, req.memoryTypeBits, hv, hv | VK_MEMORY_PROPERTY_DEVICE_LOCAL_BIT);
  if (type < 0) {
    vk->f.vkDestroyBuffer(vk->device, out->buf, NULL);
    out->buf = VK_NULL_HANDLE;
    qmoe_set_error("device '%s' has no %s memory type for a storage buffer", vk->props.deviceName,
                   host || !vk->staging_mode ? "host-visible coherent" : "suitable");
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
  if (r == VK_SUCCESS && (host || !vk->staging_mode)) {
    void *p = NULL;
    r = vk->f.vkMapMemory(vk->device, out->mem, 0, VK_WHOLE_SIZE, 0, &p);
    out->map = p;
  }
  out->size = bytes;
  out->alloc = alloc;
  if (r != VK_SUCCESS) {
    qmoe_vk_buf_destroy(vk, out);
    return vk_fail(r, "binding/mapping a buffer of %zu bytes", bytes);
  }
  return 0;
}

int qmoe_vk_buf_create(qmoe_vk *vk, size_t bytes, qmoe_vk_buf *out) { return buf_create(vk, bytes, 0, out); }

void qmoe_vk_buf_destroy(qmoe_vk *vk, qmoe_vk_buf *b) {
  if (!b || !b->buf) return;
  if (vk->recording && vk->ncmds) qmoe_vk_sync(vk); /* recorded work may use it (an error is reported there) */
  if (b->map) vk->f.vkUnmapMemory(vk->device, b->mem);
  vk->f.vkDestroyBuffer(vk->device, b->buf, NULL);
  vk->f.vkFreeMemory(vk->device, b->mem, NULL);
  memset(b, 0, sizeof *b);
}

static int ensure_staging(qmoe_vk *vk, size_t want) {
  if (want < STAGING_MIN) want = STAGING_MIN;
  if (want > STAGING_MAX) want = STAGING_MAX;
  if (vk->staging.buf && vk->staging.size >= want) return 0;
  qmoe_vk_buf_destroy(vk, &vk->staging);
  return buf_create(vk, want, 1, &vk->staging);
}

static void begin_if_needed(qmoe_vk *vk, int *rc) {
  if (vk->recording) return;
  VkCommandBufferBeginInfo bi = {.sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_BEGIN_INFO,
                                 .flags = VK_COMMAND_BUFFER_USAGE_ONE_TIME_SUBMIT_BIT};
  VkResult r = vk->f.vkBeginCommandBuffer(vk->cmd, &bi);
  if (r != VK_SUCCESS) {
    *rc = vk_fail(r, "vkBeginCommandBuffer");
    return;
  }
  vk->recording = 1;
  vk->ncmds = 0;
  vk->nread = vk->nwritten = 0; /* what ran before was waited for */
}

/* Orders the next command after everything recorded before it (compute and transfer, both ways). */
static void barrier(qmoe_vk *vk) {
  vk->nread = vk->nwritten = 0;
  if (!vk->ncmds) return;
  VkMemoryBarrier mb = {.sType = VK_STRUCTURE_TYPE_MEMORY_BARRIER,
                        .srcAccessMask = VK_ACCESS_SHADER_WRITE_BIT | VK_ACCESS_TRANSFER_WRITE_BIT,
                        .dstAccessMask = VK_ACCESS_SHADER_READ_BIT | VK_ACCESS_SHADER_WRITE_BIT |
                                         VK_ACCESS_TRANSFER_READ_BIT | VK_ACCESS_TRANSFER_WRITE_BIT};
  VkPipelineStageFlags st = VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT | VK_PIPELINE_STAGE_TRANSFER_BIT;
  vk->f.vkCmdPipelineBarrier(vk->cmd, st, st, 0, 1, &mb, 0, NULL, 0, NULL);
}

int qmoe_vk_sync(qmoe_vk *vk) {
  int rc = 0;
  if (vk->recording) {
    /* Make the device's writes visible to the host (mapped buffers are read right after the wait). */
    VkMemoryBarrier mb = {.sType = VK_STRUCTURE_TYPE_MEMORY_BARRIER,
                          .srcAccessMask = VK_ACCESS_SHADER_WRITE_BIT | VK_ACCESS_TRANSFER_WRITE_BIT,
                          .dstAccessMask = VK_ACCESS_HOST_READ_BIT};
    vk->f.vkCmdPipelineBarrier(vk->cmd, VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT | VK_PIPELINE_STAGE_TRANSFER_BIT,
                               VK_PIPELINE_STAGE_HOST_BIT, 0, 1, &mb, 0, NULL, 0, NULL);
    vk->recording = 0;
    VkResult r = vk->f.vkEndCommandBuffer(vk->cmd);
    if (r != VK_SUCCESS) return vk_fail(r, "vkEndCommandBuffer");
    VkSubmitInfo si = {.sType = VK_STRUCTURE_TYPE_SUBMIT_INFO, .commandBufferCount = 1, .pCommandBuffers = &vk->cmd};
    r = vk->f.vkQueueSubmit(vk->queue, 1, &si, vk->fence);
    if (r != VK_SUCCESS) return vk_fail(r, "vkQueueSubmit (%d commands)", vk->ncmds);
    r = vk->f.vkWaitForFences(vk->device, 1, &vk->fence, VK_TRUE, (uint64_t)FENCE_TIMEOUT_S * 1000000000ull);
    if (r == VK_TIMEOUT) {
      qmoe_set_error("Vulkan: the work submitted to '%s' did not finish within %d s", vk->props.deviceName,
                     FENCE_TIMEOUT_S);
      return QMOE_EDEVICE;
    }
    if (r != VK_SUCCESS) return vk_fail(r, "vkWaitForFences");
    r = vk->f.vkResetFences(vk->device, 1, &vk->fence);
    if (r != VK_SUCCESS) return vk_fail(r, "vkResetFences");
    r = vk->f.vkResetCommandBuffer(vk->cmd, 0);
    if (r != VK_SUCCESS) return vk_fail(r, "vkResetCommandBuffer");
    vk->ncmds = 0;
  }
  rc = qmoe_vk_check_validation(vk, "sync");
  return rc;
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
  int rc = check_range("upload", b, off, n);
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
    begin_if_needed(vk, &rc);
    if (rc) return rc;
    VkBufferCopy region = {.srcOffset = 0, .dstOffset = off + done, .size = chunk};
    vk->f.vkCmdCopyBuffer(vk->cmd, vk->staging.buf, b->buf, 1, &region);
    vk->ncmds++;
    if ((rc = qmoe_vk_sync(vk))) return rc;
    done += chunk;
  }
  return 0;
}

int qmoe_vk_buf_read(qmoe_vk *vk, const qmoe_vk_buf *b, size_t off, void *dst, size_t n) {
  int rc = check_range("download", b, off, n);
  if (rc || !n) return rc;
  if ((rc = qmoe_vk_sync(vk))) return rc;
  if (b->map) {
    memcpy(dst, b->map + off, n);
    return 0;
  }
  if ((rc = ensure_staging(vk, n))) return rc;
  for (size_t done = 0; done < n;) {
    size_t chunk = n - done < vk->staging.size ? n - done : vk->staging.size;
    begin_if_needed(vk, &rc);
    if (rc) return rc;
    VkBufferCopy region = {.srcOffset = off + done, .dstOffset = 0, .size = chunk};
    vk->f.vkCmdCopyBuffer(vk->cmd, b->buf, vk->staging.buf, 1, &region);
    vk->ncmds++;
    if ((rc = qmoe_vk_sync(vk))) return rc;
    memcpy((unsigned char *)dst + done, vk->staging.map, chunk);
    done += chunk;
  }
  return 0;
}

/* ---- pipelines ---- */

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
  VkComputePipelineCreateInfo cpi = {
      .sType = VK_STRUCTURE_TYPE_COMPUTE_PIPELINE_CREATE_INFO,
      .stage = {.sType = VK_STRUCTURE_TYPE_PIPELINE_SHADER_STAGE_CREATE_INFO, .stage = VK_SHADER_STAGE_COMPUTE_BIT,
                .module = vk->modules[idx], .pName = "main"},
      .layout = vk->layout};
  VkResult r = vk->f.vkCreateComputePipelines(vk->device, VK_NULL_HANDLE, 1, &cpi, NULL, &vk->pipes[idx]);
  if (r != VK_SUCCESS) {
    vk->pipes[idx] = VK_NULL_HANDLE;
    return vk_fail(r, "vkCreateComputePipelines(%s)", what);
  }
  if ((rc = qmoe_vk_check_validation(vk, what))) return rc;
  *out = vk->pipes[idx];
  return 0;
}

/* ---- recording ---- */

int qmoe_vk_dispatch(qmoe_vk *vk, VkPipeline pipe, const qmoe_vk_binding *b, int nb, const void *pc, size_t pc_size,
                     uint32_t gx, uint32_t gy, uint32_t gz) {
  const VkPhysicalDeviceLimits *L = &vk->props.limits;
  if (nb > QMOE_VK_MAX_BINDINGS || pc_size > QMOE_VK_PUSH_BYTES) {
    qmoe_set_error("vulkan dispatch: %d bindings / %zu push-constant bytes exceed %d / %d", nb, pc_size,
                   QMOE_VK_MAX_BINDINGS, QMOE_VK_PUSH_BYTES);
    return QMOE_EINVAL;
  }
  if (gx > L->maxComputeWorkGroupCount[0] || gy > L->maxComputeWorkGroupCount[1] || gz > L->maxComputeWorkGroupCount[2]) {
    qmoe_set_error("vulkan dispatch of %ux%ux%u workgroups exceeds device '%s''s maxComputeWorkGroupCount %ux%ux%u",
                   gx, gy, gz, vk->props.deviceName, L->maxComputeWorkGroupCount[0], L->maxComputeWorkGroupCount[1],
                   L->maxComputeWorkGroupCount[2]);
    return QMOE_EINVAL;
  }
  VkDescriptorBufferInfo info[QMOE_VK_MAX_BINDINGS];
  VkWriteDescriptorSet wr[QMOE_VK_MAX_BINDINGS];
  VkDeviceSize align = qmoe_vk_offset_align(vk);
  for (int i = 0; i < nb; i++) {
    if (!b[i].buf || !b[i].buf->buf || b[i].off % align || b[i].off >= b[i].buf->alloc) {
      qmoe_set_error("vulkan dispatch: binding %d has no buffer or a bad offset %llu", i, (unsigned long long)b[i].off);
      return QMOE_EINVAL;
    }
    VkDeviceSize range = b[i].buf->alloc - b[i].off;
    VkDeviceSize maxr = L->maxStorageBufferRange & ~(VkDeviceSize)15;
    if (range > maxr) range = maxr;
    info[i] = (VkDescriptorBufferInfo){.buffer = b[i].buf->buf, .offset = b[i].off, .range = range};
    wr[i] = (VkWriteDescriptorSet){.sType = VK_STRUCTURE_TYPE_WRITE_DESCRIPTOR_SET, .dstBinding = (uint32_t)i,
                                   .descriptorCount = 1, .descriptorType = VK_DESCRIPTOR_TYPE_STORAGE_BUFFER,
                                   .pBufferInfo = &info[i]};
  }
  int rc = 0;
  begin_if_needed(vk, &rc);
  if (rc) return rc;
  int hazard = vk->nread + nb > TRACK_MAX || vk->nwritten + nb > TRACK_MAX;
  for (int i = 0; i < nb && !hazard; i++) {
    for (int k = 0; k < vk->nwritten; k++) hazard |= vk->written[k] == b[i].buf->buf; /* RAW, WAW */
    for (int k = 0; b[i].writes && k < vk->nread; k++) hazard |= vk->read[k] == b[i].buf->buf; /* WAR */
  }
  if (hazard) barrier(vk);
  for (int i = 0; i < nb; i++) {
    if (b[i].writes) vk->written[vk->nwritten++] = b[i].buf->buf;
    vk->read[vk->nread++] = b[i].buf->buf; /* a written binding may be read too */
  }
  vk->f.vkCmdBindPipeline(vk->cmd, VK_PIPELINE_BIND_POINT_COMPUTE, pipe);
  vk->f.vkCmdPushDescriptorSetKHR(vk->cmd, VK_PIPELINE_BIND_POINT_COMPUTE, vk->layout, 0, (uint32_t)nb, wr);
  unsigned char pcbuf[QMOE_VK_PUSH_BYTES] = {0};
  memcpy(pcbuf, pc, pc_size);
  vk->f.vkCmdPushConstants(vk->cmd, vk->layout, VK_SHADER_STAGE_COMPUTE_BIT, 0, QMOE_VK_PUSH_BYTES, pcbuf);
  vk->f.vkCmdDispatch(vk->cmd, gx, gy, gz);
  vk->ncmds++;
  return qmoe_vk_check_validation(vk, "dispatch");
}

int qmoe_vk_update(qmoe_vk *vk, qmoe_vk_buf *b, size_t off, const void *data, size_t n) {
  int rc = check_range("update", b, off, n);
  if (rc) return rc;
  if (n == 0 || n > 65536 || n % 4 || off % 4) {
    qmoe_set_error("vulkan update: %zu bytes at offset %zu (must be 4-byte aligned, 1..65536 bytes)", n, off);
    return QMOE_EINVAL;
  }
  begin_if_needed(vk, &rc);
  if (rc) return rc;
  barrier(vk);
  vk->f.vkCmdUpdateBuffer(vk->cmd, b->buf, off, n, data);
  vk->written[vk->nwritten++] = b->buf;
  vk->ncmds++;
  return 0;
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
  int rc = 0;
  begin_if_needed(vk, &rc);
  if (rc) return rc;
  vk->f.vkCmdResetQueryPool(vk->cmd, vk->timer, 0, 2);
  vk->f.vkCmdWriteTimestamp(vk->cmd, VK_PIPELINE_STAGE_BOTTOM_OF_PIPE_BIT, vk->timer, 0);
  return 0;
}

int qmoe_vk_timer_stop(qmoe_vk *vk) {
  if (!vk->timer || !vk->recording) {
    qmoe_set_error("qmoe_vk_timer_stop: no timer started in the work being recorded");
    return QMOE_EINVAL;
  }
  vk->f.vkCmdWriteTimestamp(vk->cmd, VK_PIPELINE_STAGE_BOTTOM_OF_PIPE_BIT, vk->timer, 1);
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
