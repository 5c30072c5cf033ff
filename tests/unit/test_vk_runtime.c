/* test_vk_runtime.c: the Vulkan runtime (runtime/vulkan/vk.c) and backend (runtime/vulkan/backend_vulkan.c) — loader,
 * device selection and QMOE_VK_DEVICE, feature checks and their messages, buffers (mapped and staged),
 * validation, unsupported variants, recording of several stages per sync, offsets and strided grids.
 * Stage results are compared with the CPU backend; the full per-variant parity is test_parity_vulkan. */
#include <ctype.h>
#include <stdint.h>
#include <stdlib.h>
#include "../harness.h"
#include "backend.h"
#include "qmoe.h"
#include "ref_internal.h"
#include "stage_table.h"
#include "vk_internal.h"

/* ---- helpers ---- */

/* setenv, or unsetenv when VALUE is NULL. */
static void set_env(const char *name, const char *value) {
  if (value) setenv(name, value, 1);
  else unsetenv(name);
}

/* No device: the case skips, or fails when QMOE_TEST_REQUIRE_BACKEND is set (the GPU machine). */
static void no_device(void) {
  const char *req = getenv("QMOE_TEST_REQUIRE_BACKEND");
  if (req && *req) t_fail(__FILE__, __LINE__, "no Vulkan device: %s (QMOE_TEST_REQUIRE_BACKEND is set)", qmoe_last_error());
  else t_skip("no Vulkan device: %s", qmoe_last_error());
}

/* Opens the Vulkan backend; 1 = opened, 0 = no device (the case is skipped). */
static int open_backend(qmoe_backend **be) {
  int rc = qmoe_backend_vulkan_open(be);
  if (rc == QMOE_ENODEV) {
    no_device();
    return 0;
  }
  if (rc) {
    t_fail(__FILE__, __LINE__, "qmoe_backend_vulkan_open: %d %s", rc, qmoe_last_error());
    return 0;
  }
  return 1;
}

static int open_runtime(qmoe_vk **vk) {
  int rc = qmoe_vk_open(vk);
  if (rc == QMOE_ENODEV) {
    no_device();
    return 0;
  }
  if (rc) {
    t_fail(__FILE__, __LINE__, "qmoe_vk_open: %d %s", rc, qmoe_last_error());
    return 0;
  }
  return 1;
}

static int ci_has(const char *hay, const char *needle) {
  for (size_t i = 0; hay[i]; i++) {
    size_t k = 0;
    while (needle[k] && hay[i + k] && tolower((unsigned char)hay[i + k]) == tolower((unsigned char)needle[k])) k++;
    if (!needle[k]) return 1;
  }
  return !needle[0];
}

static void fill_normal(float *x, size_t n, double scale) {
  for (size_t i = 0; i < n; i++) x[i] = (float)(t_rand_normal() * scale);
}

/* A buffer on backend BE holding N bytes of SRC (or poison when SRC is NULL). */
static qmoe_buffer *make_buf(qmoe_backend *be, size_t n, const void *src) {
  qmoe_buffer *b = NULL;
  if (be->alloc(be, n, &b)) return NULL;
  unsigned char *poison = malloc(n ? n : 1);
  memset(poison, 0xA5, n);
  int rc = be->upload(be, b, 0, src ? src : poison, n);
  free(poison);
  if (rc) {
    be->free_buf(be, b);
    return NULL;
  }
  return b;
}

/* max |a-b| / max |b| over N floats (NaN if either has a NaN). */
static double rel_err(const float *a, const float *b, size_t n) {
  double num = 0, den = 0;
  for (size_t i = 0; i < n; i++) {
    if (isnan(a[i]) || isnan(b[i])) return NAN;
    double d = fabs((double)a[i] - (double)b[i]);
    if (d > num) num = d;
    if (fabs((double)b[i]) > den) den = fabs((double)b[i]);
  }
  return den > 0 ? num / den : num;
}

/* ---- device selection (pure) ---- */

static qmoe_vk_devinfo dev(const char *name, VkPhysicalDeviceType type, int usable) {
  qmoe_vk_devinfo d;
  memset(&d, 0, sizeof d);
  snprintf(d.name, sizeof d.name, "%s", name);
  d.type = type;
  d.api_version = VK_API_VERSION_1_3;
  d.usable = usable;
  if (!usable) snprintf(d.why_not, sizeof d.why_not, "supports Vulkan 1.1, qmoe needs 1.2");
  return d;
}

static void test_pick_device(void) {
  char err[1024];
  qmoe_vk_devinfo three[3] = {dev("llvmpipe (LLVM 15)", VK_PHYSICAL_DEVICE_TYPE_CPU, 1),
                              dev("Intel(R) UHD 770", VK_PHYSICAL_DEVICE_TYPE_INTEGRATED_GPU, 1),
                              dev("NVIDIA H100 80GB HBM3", VK_PHYSICAL_DEVICE_TYPE_DISCRETE_GPU, 1)};
  CHECK(qmoe_vk_pick_device(three, 3, NULL, err, sizeof err) == 2, "discrete first");
  CHECK(qmoe_vk_pick_device(three, 3, "", err, sizeof err) == 2, "empty QMOE_VK_DEVICE is automatic");
  CHECK(qmoe_vk_pick_device(three, 2, NULL, err, sizeof err) == 1, "integrated before CPU");
  CHECK(qmoe_vk_pick_device(three, 1, NULL, err, sizeof err) == 0, "any device when alone");
  three[2] = dev("NVIDIA H100 80GB HBM3", VK_PHYSICAL_DEVICE_TYPE_DISCRETE_GPU, 0);
  CHECK(qmoe_vk_pick_device(three, 3, NULL, err, sizeof err) == 1, "an unusable discrete GPU is passed over");
  CHECK(qmoe_vk_pick_device(three, 3, "2", err, sizeof err) == -1 && strstr(err, "cannot use") &&
            strstr(err, "Vulkan 1.1"),
        "an explicitly chosen unusable device is an error naming why: %s", err);
  three[2].usable = 1;
  CHECK(qmoe_vk_pick_device(three, 3, "0", err, sizeof err) == 0, "index");
  CHECK(qmoe_vk_pick_device(three, 3, "uhd", err, sizeof err) == 1, "case-insensitive name substring");
  CHECK(qmoe_vk_pick_device(three, 3, "NVIDIA", err, sizeof err) == 2, "name substring");
  int r = qmoe_vk_pick_device(three, 3, "radeon", err, sizeof err);
  CHECK(r == -1, "no match");
  CHECK(strstr(err, "QMOE_VK_DEVICE='radeon' matches no Vulkan device") && strstr(err, "0: 'llvmpipe (LLVM 15)' (CPU)") &&
            strstr(err, "1: 'Intel(R) UHD 770' (integrated GPU)") && strstr(err, "2: 'NVIDIA H100 80GB HBM3' (discrete GPU)"),
        "the message lists the devices: %s", err);
  CHECK(qmoe_vk_pick_device(three, 3, "3", err, sizeof err) == -1 && strstr(err, "matches no Vulkan device"),
        "index out of range: %s", err);
  CHECK(qmoe_vk_pick_device(three, 0, NULL, err, sizeof err) == -1 && strcmp(err, "no Vulkan device found") == 0,
        "no devices: %s", err);
  qmoe_vk_devinfo none[1] = {dev("old GPU", VK_PHYSICAL_DEVICE_TYPE_DISCRETE_GPU, 0)};
  CHECK(qmoe_vk_pick_device(none, 1, NULL, err, sizeof err) == -1 && strstr(err, "no usable Vulkan device") &&
            strstr(err, "old GPU"),
        "no usable device: %s", err);
}

/* ---- SPIR-V capabilities → features ---- */

static void test_spirv_features(void) {
  REQUIRE(qmoe_embedded_spirv_count > 0, "no embedded SPIR-V");
  for (size_t i = 0; i < qmoe_embedded_spirv_count; i++) {
    const qmoe_embedded *e = &qmoe_embedded_spirv[i];
    uint32_t f;
    int rc = qmoe_vk_spirv_features(e->data, e->size, e->name, &f);
    CHECK(rc == 0, "%s: %s", e->name, qmoe_last_error());
    /* f64 variants use doubles, except a stage whose contract says `compare: exact` (a copy or a decode:
     * nothing accumulated); rope_neox and qk_norm_rope compute their angles in double in every variant. */
    char stage[64]; /* the shader's stage: its name up to "__" or "." */
    size_t sl = strcspn(e->name, ".");
    const char *dd = strstr(e->name, "__");
    if (dd && (size_t)(dd - e->name) < sl) snprintf(stage, sizeof stage, "%.*s", (int)(dd - e->name), e->name);
    else snprintf(stage, sizeof stage, "%.*s", (int)sl, e->name);
    const qmoe_stage_info *esi = qmoe_stage_by_name(stage);
    int f64 = (strstr(e->name, "__f64") != NULL && !(esi && esi->exact)) || strncmp(e->name, "rope_neox", 9) == 0 ||
              strncmp(e->name, "qk_norm_rope", 12) == 0;
    CHECK(((f & QMOE_VK_F_FLOAT64) != 0) == f64, "%s: Float64 needed = %d, expected %d", e->name,
          (f & QMOE_VK_F_FLOAT64) != 0, f64);
    CHECK(!(f & (QMOE_VK_F_INT8 | QMOE_VK_F_SB8 | QMOE_VK_F_INT64)), "%s needs 8-bit or 64-bit integer features", e->name);
  }
  /* A module needing a capability the runtime does not check is refused, naming it. */
  uint32_t words[7] = {0x07230203u, 0x00010500u, 0, 1, 0, (2u << 16) | 17u, 5345u}; /* OpCapability VulkanMemoryModel */
  uint32_t f;
  int rc = qmoe_vk_spirv_features((const unsigned char *)words, sizeof words, "fake", &f);
  CHECK(rc == QMOE_EUNSUPPORTED && strstr(qmoe_last_error(), "capability 5345"), "unknown capability: %d %s", rc,
        qmoe_last_error());
  words[0] = 0x12345678u;
  CHECK(qmoe_vk_spirv_features((const unsigned char *)words, sizeof words, "fake", &f) == QMOE_EINVAL, "bad magic");
  uint32_t dis;
  CHECK(qmoe_vk_parse_feature_list("shaderFloat64, subgroupArithmetic", &dis) == 0 &&
            dis == (QMOE_VK_F_FLOAT64 | QMOE_VK_F_SG_ARITH),
        "feature list");
  CHECK(qmoe_vk_parse_feature_list("shaderFloat65", &dis) == QMOE_EINVAL && strstr(qmoe_last_error(), "shaderFloat65"),
        "unknown feature: %s", qmoe_last_error());
}

/* ---- loader ---- */

static void test_no_loader(void) {
  set_env("QMOE_VK_LOADER", "libqmoe-no-such-vulkan-loader.so.1");
  qmoe_backend *be = NULL;
  int rc = qmoe_backend_open("vulkan", &be);
  CHECK(rc == QMOE_ENODEV && be == NULL, "rc %d", rc);
  CHECK(strncmp(qmoe_last_error(), "no Vulkan loader found (libqmoe-no-such-vulkan-loader.so.1)", 59) == 0,
        "message: %s", qmoe_last_error());
  qmoe_vk *vk = NULL;
  CHECK(qmoe_vk_open(&vk) == QMOE_ENODEV && vk == NULL, "runtime");
  set_env("QMOE_VK_LOADER", NULL);
}

/* ---- the device ---- */

static void test_open_default(void) {
  qmoe_vk *vk;
  if (!open_runtime(&vk)) return;
  const qmoe_vk_devinfo *devs;
  int n = qmoe_vk_device_list(vk, &devs);
  CHECK(n >= 1, "device list");
  char err[1024];
  int want = qmoe_vk_pick_device(devs, n, getenv("QMOE_VK_DEVICE"), err, sizeof err);
  CHECK(want >= 0 && strcmp(devs[want].name, qmoe_vk_device_name(vk)) == 0, "opened '%s', the rule picks %d",
        qmoe_vk_device_name(vk), want);
  printf("# device: %s (%s), %s memory, validation %s\n", qmoe_vk_device_name(vk),
         qmoe_vk_device_type_name(qmoe_vk_device_type(vk)), qmoe_vk_uses_staging(vk) ? "staged" : "mapped",
         qmoe_vk_validation_enabled(vk) ? "on" : "off");
  CHECK(qmoe_vk_offset_align(vk) >= 16 && (qmoe_vk_offset_align(vk) & (qmoe_vk_offset_align(vk) - 1)) == 0,
        "offset alignment %llu", (unsigned long long)qmoe_vk_offset_align(vk));
  CHECK(qmoe_vk_check_validation(vk, "test") == 0, "validation: %s", qmoe_last_error());
  qmoe_vk_close(vk);
}

static void test_env_device(void) {
  qmoe_vk *vk;
  if (!open_runtime(&vk)) return;
  char name[VK_MAX_PHYSICAL_DEVICE_NAME_SIZE];
  snprintf(name, sizeof name, "%s", qmoe_vk_device_name(vk));
  const qmoe_vk_devinfo *devs;
  int n = qmoe_vk_device_list(vk, &devs), idx = -1;
  for (int i = 0; i < n; i++)
    if (strcmp(devs[i].name, name) == 0 && idx < 0) idx = i;
  qmoe_vk_close(vk);
  REQUIRE(idx >= 0, "opened device is not in the list");
  char buf[64];
  snprintf(buf, sizeof buf, "%d", idx);
  set_env("QMOE_VK_DEVICE", buf);
  int rc = qmoe_vk_open(&vk);
  CHECK(rc == 0 && strcmp(qmoe_vk_device_name(vk), name) == 0, "by index %s: %d %s", buf, rc, rc ? qmoe_last_error() : "");
  if (!rc) qmoe_vk_close(vk);
  /* a lower-cased piece of the name */
  snprintf(buf, sizeof buf, "%.5s", name);
  for (char *p = buf; *p; p++) *p = (char)tolower((unsigned char)*p);
  set_env("QMOE_VK_DEVICE", buf);
  rc = qmoe_vk_open(&vk);
  CHECK(rc == 0, "by name '%s': %s", buf, qmoe_last_error());
  if (!rc) {
    CHECK(ci_has(qmoe_vk_device_name(vk), buf), "'%s' does not contain '%s'", qmoe_vk_device_name(vk), buf);
    qmoe_vk_close(vk);
  }
  set_env("QMOE_VK_DEVICE", "no-such-gpu-xyz");
  rc = qmoe_vk_open(&vk);
  CHECK(rc == QMOE_ENODEV, "no match: rc %d", rc);
  CHECK(strstr(qmoe_last_error(), "QMOE_VK_DEVICE='no-such-gpu-xyz' matches no Vulkan device") &&
            strstr(qmoe_last_error(), name),
        "message lists the devices: %s", qmoe_last_error());
  set_env("QMOE_VK_DEVICE", "99");
  CHECK(qmoe_vk_open(&vk) == QMOE_ENODEV && strstr(qmoe_last_error(), "QMOE_VK_DEVICE='99'"), "index 99: %s",
        qmoe_last_error());
  qmoe_backend *be = NULL;
  CHECK(qmoe_backend_open("vulkan", &be) == QMOE_ENODEV && !be, "the backend reports it too");
  set_env("QMOE_VK_DEVICE", NULL);
}

/* ---- buffers ---- */

static void roundtrip(const char *staging) {
  set_env("QMOE_VK_STAGING", staging);
  qmoe_vk *vk;
  int ok = open_runtime(&vk);
  set_env("QMOE_VK_STAGING", NULL);
  if (!ok) return;
  CHECK(qmoe_vk_uses_staging(vk) == (staging[0] == '1'), "QMOE_VK_STAGING=%s not honoured", staging);
  /* The last size is larger than the staging buffer, so staged copies go in several chunks. */
  const size_t sizes[] = {1, 13, 4099, 3u << 20, (64u << 20) + 4099};
  for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
    size_t n = sizes[s];
    if (n > (4u << 20) && staging[0] != '1') continue; /* chunking only exists on the staged path */
    unsigned char *src = malloc(n), *dst = malloc(n);
    for (size_t i = 0; i < n; i++) src[i] = (unsigned char)t_rand_u64();
    memset(dst, 0xA5, n);
    qmoe_vk_buf b;
    int rc = qmoe_vk_buf_create(vk, n, &b);
    CHECK(rc == 0, "create %zu: %s", n, qmoe_last_error());
    if (!rc) {
      CHECK(qmoe_vk_buf_write(vk, &b, 0, src, n) == 0, "write %zu: %s", n, qmoe_last_error());
      CHECK(qmoe_vk_buf_read(vk, &b, 0, dst, n) == 0, "read %zu: %s", n, qmoe_last_error());
      CHECK(memcmp(src, dst, n) == 0, "round trip of %zu bytes differs", n);
      if (n > 8) { /* a sub-range at an odd offset */
        size_t off = n / 3 | 1, len = n - off - 1;
        memset(dst, 0x5A, n);
        CHECK(qmoe_vk_buf_write(vk, &b, off, src, len) == 0, "write at %zu", off);
        CHECK(qmoe_vk_buf_read(vk, &b, off, dst, len) == 0, "read at %zu", off);
        CHECK(memcmp(src, dst, len) == 0, "sub-range round trip of %zu bytes at %zu differs", len, off);
      }
      CHECK(qmoe_vk_buf_write(vk, &b, n, src, 1) == QMOE_EINVAL && strstr(qmoe_last_error(), "outside"),
            "write past the end: %s", qmoe_last_error());
      CHECK(qmoe_vk_buf_read(vk, &b, 1, dst, n) == QMOE_EINVAL, "read past the end");
      CHECK(qmoe_vk_buf_read(vk, &b, n, dst, 0) == 0, "empty read at the end");
      qmoe_vk_buf_destroy(vk, &b);
    }
    free(src);
    free(dst);
  }
  CHECK(qmoe_vk_check_validation(vk, "buffers") == 0, "%s", qmoe_last_error());
  qmoe_vk_close(vk);
}
static void test_buffers_mapped(void) { roundtrip("0"); }
static void test_buffers_staged(void) { roundtrip("1"); }

/* ---- validation ---- */

static void test_validation_catches(void) {
  set_env("QMOE_VK_VALIDATION", "1");
  qmoe_vk *vk = NULL;
  int rc = qmoe_vk_open(&vk);
  set_env("QMOE_VK_VALIDATION", NULL);
  if (rc == QMOE_ENODEV && strstr(qmoe_last_error(), "not installed")) SKIP("%s", qmoe_last_error());
  if (rc == QMOE_ENODEV) {
    no_device();
    return;
  }
  REQUIRE(rc == 0, "open with QMOE_VK_VALIDATION=1: %s", qmoe_last_error());
  CHECK(qmoe_vk_validation_enabled(vk), "validation is not enabled");
  int before = qmoe_vk_validation_count(vk);
  CHECK(qmoe_vk_provoke_validation_message(vk) == 1, "provoke");
  CHECK(qmoe_vk_validation_count(vk) > before, "the layer's message was not caught");
  rc = qmoe_vk_sync(vk);
  CHECK(rc == QMOE_EDEVICE && strstr(qmoe_last_error(), "Vulkan validation (sync)") && strstr(qmoe_last_error(), "VUID"),
        "a validation message fails the next operation: %d %s", rc, qmoe_last_error());
  CHECK(qmoe_vk_sync(vk) == 0, "reported once: %s", qmoe_last_error());
  qmoe_vk_close(vk);
  set_env("QMOE_VK_VALIDATION", "0");
  rc = qmoe_vk_open(&vk);
  set_env("QMOE_VK_VALIDATION", NULL);
  REQUIRE(rc == 0, "open with QMOE_VK_VALIDATION=0: %s", qmoe_last_error());
  CHECK(!qmoe_vk_validation_enabled(vk) && qmoe_vk_provoke_validation_message(vk) == 0, "QMOE_VK_VALIDATION=0");
  qmoe_vk_close(vk);
}

/* Closing is clean: buffers the caller did not free are freed, and the layer reports nothing at teardown
 * (close cannot return an error, so the runtime counts what it sees then). Run last: it checks the whole
 * process. */
static void test_teardown_clean(void) {
  qmoe_backend *be;
  if (!open_backend(&be)) return;
  qmoe_buffer *b = make_buf(be, 1000, NULL), *b2 = make_buf(be, 5000, NULL);
  REQUIRE(b && b2, "buffers: %s", qmoe_last_error());
  qmoe_stage_call c;
  memset(&c, 0, sizeof c);
  c.stage = QMOE_STAGE_ADD;
  c.qtype = -1;
  c.p[0] = 200;
  c.buf[0] = b, c.buf[1] = b2, c.buf[2] = b2;
  CHECK(be->run(be, &c) == 0, "%s", qmoe_last_error()); /* recorded, never synced */
  be->free_buf(be, b);
  be->close(be); /* b2 and the recorded work are left to close */
  CHECK(qmoe_vk_teardown_validation_count() == 0, "%d validation messages while closing (see stderr)",
        qmoe_vk_teardown_validation_count());
}

/* ---- stages through the backend, against the CPU backend ---- */

/* Runs CALL (whose buffers are indices into vk_bufs/cpu_bufs via slot numbers) on both backends. */
typedef struct {
  qmoe_backend *vk, *cpu;
  qmoe_buffer *vb[QMOE_STAGE_MAX_BUFS], *cb[QMOE_STAGE_MAX_BUFS];
} pair;

static int pair_open(pair *p) {
  memset(p, 0, sizeof *p);
  if (!open_backend(&p->vk)) return 0;
  if (qmoe_backend_cpu_open(&p->cpu)) {
    t_fail(__FILE__, __LINE__, "cpu backend: %s", qmoe_last_error());
    p->vk->close(p->vk);
    return 0;
  }
  return 1;
}

static void pair_close(pair *p) {
  for (int i = 0; i < QMOE_STAGE_MAX_BUFS; i++) {
    if (p->vb[i]) p->vk->free_buf(p->vk, p->vb[i]);
    if (p->cb[i]) p->cpu->free_buf(p->cpu, p->cb[i]);
  }
  if (p->vk) p->vk->close(p->vk);
  if (p->cpu) p->cpu->close(p->cpu);
}

/* Buffer slot I on both backends, N bytes of SRC (poison when NULL). */
static int pair_buf(pair *p, int i, size_t n, const void *src) {
  p->vb[i] = make_buf(p->vk, n, src);
  p->cb[i] = make_buf(p->cpu, n, src);
  if (!p->vb[i] || !p->cb[i]) {
    t_fail(__FILE__, __LINE__, "buffer %d (%zu bytes): %s", i, n, qmoe_last_error());
    return 0;
  }
  return 1;
}

/* Runs C on both backends; C's buf[k] holds slot numbers cast to pointers (slot + 1). */
static int pair_run(pair *p, const qmoe_stage_call *c) {
  qmoe_stage_call a = *c, b = *c;
  for (int k = 0; k < QMOE_STAGE_MAX_BUFS; k++) {
    intptr_t slot = (intptr_t)c->buf[k];
    a.buf[k] = slot ? p->vb[slot - 1] : NULL;
    b.buf[k] = slot ? p->cb[slot - 1] : NULL;
  }
  int rc = p->vk->run(p->vk, &a);
  if (rc) {
    t_fail(__FILE__, __LINE__, "vulkan run stage %d: %s", (int)c->stage, qmoe_last_error());
    return 0;
  }
  rc = p->cpu->run(p->cpu, &b);
  if (rc) {
    t_fail(__FILE__, __LINE__, "cpu run stage %d: %s", (int)c->stage, qmoe_last_error());
    return 0;
  }
  return 1;
}

#define SLOT(i) ((qmoe_buffer *)(intptr_t)((i) + 1))

/* Downloads N floats at OFF of slot I from both and compares them. */
static void pair_compare(pair *p, int i, size_t off, size_t n, double tol, const char *what) {
  float *a = malloc(n * sizeof *a), *b = malloc(n * sizeof *b);
  int rc = p->vk->download(p->vk, p->vb[i], off, a, n * sizeof *a);
  CHECK(rc == 0, "%s: vulkan download: %s", what, qmoe_last_error());
  CHECK(p->cpu->download(p->cpu, p->cb[i], off, b, n * sizeof *b) == 0, "cpu download");
  double e = rel_err(a, b, n);
  CHECK(!rc && e <= tol, "%s: max relative error %.3g > %.3g (vulkan %g, cpu %g at 0)", what, e, tol, a[0], b[0]);
  free(a);
  free(b);
}

static qmoe_stage_call call(qmoe_stage s, int qtype, qmoe_acc acc) {
  qmoe_stage_call c;
  memset(&c, 0, sizeof c);
  c.stage = s;
  c.qtype = qtype;
  c.acc = acc;
  return c;
}

enum { Q4_K = 12, Q8_0 = 8, Q6_K = 14, Q4_0 = 2, F16 = 1 };

/* Quantized rows×cols matrix of qtype QT (random normal values), written at byte OFF of a buffer. */
static unsigned char *quant_matrix(int qt, int64_t rows, int64_t cols, size_t off, size_t *bytes) {
  const qmoe_qtype_info *q = qmoe_qtype_by_id(qt);
  size_t rb = (size_t)qmoe_qtype_row_bytes(q, cols);
  *bytes = off + (size_t)rows * rb;
  unsigned char *m = calloc(*bytes, 1);
  float *row = malloc((size_t)cols * sizeof *row);
  for (int64_t r = 0; r < rows; r++) {
    fill_normal(row, (size_t)cols, 0.05);
    if (qmoe_quantize_row(qt, row, m + off + (size_t)r * rb, cols)) {
      free(row);
      free(m);
      return NULL;
    }
  }
  free(row);
  return m;
}

/* Dependencies between recorded dispatches of every kind: read after write, write after read (a later
 * stage overwrites what an earlier one still reads), write after write, and independent ones in between.
 * With the validation layer, synchronization validation reports any barrier that is missing. */
static void test_hazards(void) {
  pair p;
  if (!pair_open(&p)) return;
  const size_t n = 3000;
  float *a = malloc(n * 4), *b = malloc(n * 4), *c = malloc(n * 4);
  fill_normal(a, n, 1.0);
  fill_normal(b, n, 1.0);
  fill_normal(c, n, 1.0);
  if (pair_buf(&p, 0, n * 4, a) && pair_buf(&p, 1, n * 4, b) && pair_buf(&p, 2, n * 4, c) &&
      pair_buf(&p, 3, n * 4, NULL) && pair_buf(&p, 4, n * 4, NULL)) {
    static const int ops[][3] = {
        {0, 1, 3}, /* y3 = a + b */
        {0, 2, 4}, /* y4 = a + c        independent of the one before */
        {1, 2, 0}, /* a = b + c         write after read (both read a) */
        {0, 3, 3}, /* y3 = a + y3       read after write (a, y3), in place */
        {4, 4, 4}, /* y4 = y4 + y4      independent of the one before */
        {3, 4, 1}, /* b = y3 + y4       read after write */
        {2, 2, 3}, /* y3 = c + c        write after read (y3) */
        {3, 1, 3}, /* y3 = y3 + b       read after write */
    };
    for (size_t i = 0; i < sizeof ops / sizeof ops[0]; i++) {
      qmoe_stage_call cl = call(QMOE_STAGE_ADD, -1, QMOE_ACC_F32);
      cl.p[0] = (int64_t)n;
      cl.buf[0] = SLOT(ops[i][0]), cl.buf[1] = SLOT(ops[i][1]), cl.buf[2] = SLOT(ops[i][2]);
      if (!pair_run(&p, &cl)) break;
    }
    CHECK(p.vk->sync(p.vk) == 0, "sync: %s", qmoe_last_error());
    for (int i = 0; i < 5; i++) pair_compare(&p, i, 0, n, 0, "adds with every kind of dependency");
  }
  free(a);
  free(b);
  free(c);
  pair_close(&p);
}

/* Several stages recorded into one command buffer and submitted by one sync, with data at offsets that are
 * not multiples of the device's alignment (the weights at an odd byte offset). */
static void test_recorded_chain(void) {
  pair p;
  if (!pair_open(&p)) return;
  const int64_t n = 512, rows = 300;
  const size_t xo = 4 * 3, wo = 7, to = 4 * 5, zo = 4 * 9, bo = 4 * 8;
  size_t wbytes;
  unsigned char *W = quant_matrix(Q6_K, rows, n, wo, &wbytes);
  float *x = malloc((size_t)(n + 8) * 4), *g = malloc((size_t)n * 4), *bias = malloc((size_t)(rows + 8) * 4);
  fill_normal(x, (size_t)n + 8, 1.0);
  fill_normal(g, (size_t)n, 1.0);
  fill_normal(bias, (size_t)rows + 8, 1.0);
  REQUIRE(W, "quantize: %s", qmoe_last_error());
  if (pair_buf(&p, 0, (size_t)(n + 8) * 4, x) && pair_buf(&p, 1, (size_t)n * 4, g) && pair_buf(&p, 2, wbytes, W) &&
      pair_buf(&p, 3, (size_t)(rows + 16) * 4, NULL) && pair_buf(&p, 4, (size_t)(n + 16) * 4, NULL) &&
      pair_buf(&p, 5, (size_t)(rows + 8) * 4, bias)) {
    qmoe_stage_call c = call(QMOE_STAGE_RMSNORM, -1, QMOE_ACC_F64); /* x@xo -> t@to */
    c.p[0] = n;
    c.f[0] = 1e-6;
    c.buf[0] = SLOT(0), c.off[0] = xo;
    c.buf[1] = SLOT(1);
    c.buf[2] = SLOT(4), c.off[2] = to;
    int ok = pair_run(&p, &c);
    c = call(QMOE_STAGE_MATVEC, Q6_K, QMOE_ACC_F64); /* W@wo . t@to -> z@zo: reads what rmsnorm wrote */
    c.p[0] = rows, c.p[1] = n;
    c.buf[0] = SLOT(2), c.off[0] = wo;
    c.buf[1] = SLOT(4), c.off[1] = to;
    c.buf[2] = SLOT(3), c.off[2] = zo;
    c.tensor = "blk.0.attn_q.weight";
    ok = ok && pair_run(&p, &c);
    c = call(QMOE_STAGE_ADD, -1, QMOE_ACC_F32); /* z@zo += bias@bo, in place */
    c.p[0] = rows;
    c.buf[0] = SLOT(3), c.off[0] = zo;
    c.buf[1] = SLOT(5), c.off[1] = bo;
    c.buf[2] = SLOT(3), c.off[2] = zo;
    ok = ok && pair_run(&p, &c);
    int rc = p.vk->sync(p.vk);
    CHECK(rc == 0, "sync: %s", qmoe_last_error());
    if (ok) {
      pair_compare(&p, 4, to, (size_t)n, 1e-6, "rmsnorm/f64 at offsets");
      pair_compare(&p, 3, zo, (size_t)rows, 1e-6, "matvec/q6_k/f64 then add, at offsets");
    }
  }
  free(W);
  free(x);
  free(g);
  free(bias);
  pair_close(&p);
}

/* The matvec of a recorded chain reads what the stage before it wrote (barriers between dispatches). */
static void test_chain_dependencies(void) {
  pair p;
  if (!pair_open(&p)) return;
  const int64_t n = 256 * 3, rows = 37;
  size_t wbytes;
  unsigned char *W = quant_matrix(Q4_K, rows, n, 0, &wbytes);
  float *x = malloc((size_t)n * 4), *g = malloc((size_t)n * 4);
  fill_normal(x, (size_t)n, 1.0);
  fill_normal(g, (size_t)n, 1.0);
  REQUIRE(W, "quantize: %s", qmoe_last_error());
  if (pair_buf(&p, 0, (size_t)n * 4, x) && pair_buf(&p, 1, (size_t)n * 4, g) && pair_buf(&p, 2, wbytes, W) &&
      pair_buf(&p, 3, (size_t)rows * 4, NULL) && pair_buf(&p, 4, (size_t)rows * 4, NULL)) {
    for (int rep = 0; rep < 3; rep++) {
      qmoe_stage_call c = call(QMOE_STAGE_RMSNORM, -1, QMOE_ACC_F32); /* x = rmsnorm(x) * g, in place */
      c.p[0] = n;
      c.f[0] = 1e-5;
      c.buf[0] = SLOT(0), c.buf[1] = SLOT(1), c.buf[2] = SLOT(0);
      if (!pair_run(&p, &c)) break;
      c = call(QMOE_STAGE_MATVEC, Q4_K, QMOE_ACC_F32);
      c.p[0] = rows, c.p[1] = n;
      c.buf[0] = SLOT(2), c.buf[1] = SLOT(0), c.buf[2] = SLOT(3);
      if (!pair_run(&p, &c)) break;
      c = call(QMOE_STAGE_ADD, -1, QMOE_ACC_F32); /* acc += y */
      c.p[0] = rows;
      c.buf[0] = SLOT(4), c.buf[1] = SLOT(3), c.buf[2] = SLOT(4);
      if (!pair_run(&p, &c)) break;
    }
    int rc = p.vk->sync(p.vk);
    CHECK(rc == 0, "sync: %s", qmoe_last_error());
    pair_compare(&p, 4, 0, (size_t)rows, 1e-5, "rmsnorm -> matvec -> add, three times, one sync");
  }
  free(W);
  free(x);
  free(g);
  pair_close(&p);
}

/* Kernels that stride over their work: with QMOE_VK_MAX_GROUPS=2 every strided loop takes several turns. */
static void test_strided_grids(void) {
  set_env("QMOE_VK_MAX_GROUPS", "2");
  pair p;
  int ok = pair_open(&p);
  set_env("QMOE_VK_MAX_GROUPS", NULL);
  if (!ok) return;
  const int64_t H = 512, F = 256, E = 5, K = 3, rows = 77, n = 70001;
  size_t wb, gb, ub, db;
  unsigned char *W = quant_matrix(Q8_0, rows, H, 0, &wb), *Wg = quant_matrix(Q4_K, E * F, H, 0, &gb),
                *Wu = quant_matrix(Q4_K, E * F, H, 0, &ub), *Wd = quant_matrix(Q4_K, E * H, F, 0, &db);
  float *x = malloc((size_t)n * 4), *y = malloc((size_t)n * 4), *hk = malloc((size_t)(K * F) * 4), wk[3] = {0.5f, 0.3f, 0.2f};
  int32_t ids[3] = {4, 0, 2};
  fill_normal(x, (size_t)n, 1.0);
  fill_normal(y, (size_t)n, 1.0);
  fill_normal(hk, (size_t)(K * F), 1.0);
  x[12345] = 40.0f; /* the argmax, in a later chunk */
  REQUIRE(W && Wg && Wu && Wd, "quantize: %s", qmoe_last_error());
  if (pair_buf(&p, 0, wb, W) && pair_buf(&p, 1, (size_t)n * 4, x) && pair_buf(&p, 2, (size_t)n * 4, y) &&
      pair_buf(&p, 3, gb, Wg) && pair_buf(&p, 4, ub, Wu) && pair_buf(&p, 5, db, Wd) &&
      pair_buf(&p, 6, sizeof ids, ids) && pair_buf(&p, 7, (size_t)(K * F) * 4, hk)) {
    qmoe_stage_call c = call(QMOE_STAGE_MATVEC, Q8_0, QMOE_ACC_F32);
    c.p[0] = rows, c.p[1] = H;
    c.buf[0] = SLOT(0), c.buf[1] = SLOT(1), c.buf[2] = SLOT(2);
    pair_run(&p, &c);
    CHECK(p.vk->sync(p.vk) == 0, "%s", qmoe_last_error());
    pair_compare(&p, 2, 0, (size_t)rows, 1e-5, "matvec over 2 workgroups");
    CHECK(p.vk->upload(p.vk, p.vb[2], 0, y, (size_t)n * 4) == 0 && p.cpu->upload(p.cpu, p.cb[2], 0, y, (size_t)n * 4) == 0,
          "upload");
    c = call(QMOE_STAGE_ADD, -1, QMOE_ACC_F32);
    c.p[0] = n;
    c.buf[0] = SLOT(2), c.buf[1] = SLOT(1), c.buf[2] = SLOT(2);
    pair_run(&p, &c);
    pair_compare(&p, 2, 0, (size_t)n, 0, "add over 2 workgroups (exact)");
    c = call(QMOE_STAGE_ROPE_NEOX, -1, QMOE_ACC_F32);
    c.p[0] = 40, c.p[1] = 128, c.p[2] = 4321;
    c.f[0] = 1e6;
    c.buf[0] = SLOT(1), c.buf[1] = SLOT(2);
    pair_run(&p, &c);
    pair_compare(&p, 2, 0, 40 * 128, 1e-6, "rope over 2 workgroups");
    c = call(QMOE_STAGE_MOE_GATE_UP_SWIGLU, Q4_K, QMOE_ACC_F32); /* F / R = 32 row groups over 2 workgroups */
    c.p[0] = H, c.p[1] = F, c.p[2] = E, c.p[3] = K;
    c.buf[0] = SLOT(3), c.buf[1] = SLOT(4), c.buf[2] = SLOT(1), c.buf[3] = SLOT(6), c.buf[4] = SLOT(7);
    pair_run(&p, &c);
    pair_compare(&p, 7, 0, (size_t)(K * F), 1e-5, "moe_gate_up_swiglu over 2 workgroups");
    float *wkbuf = wk;
    qmoe_buffer *vw = make_buf(p.vk, sizeof wk, wkbuf), *cw = make_buf(p.cpu, sizeof wk, wkbuf);
    REQUIRE(vw && cw, "w buffer");
    c = call(QMOE_STAGE_MOE_DOWN, Q4_K, QMOE_ACC_F32);
    c.p[0] = H, c.p[1] = F, c.p[2] = E, c.p[3] = K;
    qmoe_stage_call a = c, b = c;
    a.buf[0] = p.vb[5], a.buf[1] = p.vb[7], a.buf[2] = p.vb[6], a.buf[3] = vw, a.buf[4] = p.vb[2];
    b.buf[0] = p.cb[5], b.buf[1] = p.cb[7], b.buf[2] = p.cb[6], b.buf[3] = cw, b.buf[4] = p.cb[2];
    CHECK(p.vk->run(p.vk, &a) == 0, "%s", qmoe_last_error());
    CHECK(p.cpu->run(p.cpu, &b) == 0, "%s", qmoe_last_error());
    pair_compare(&p, 2, 0, (size_t)H, 1e-5, "moe_down over 2 workgroups");
    p.vk->free_buf(p.vk, vw);
    p.cpu->free_buf(p.cpu, cw);
    /* the router's logits over 2 workgroups, and select in the last of them to finish (one dispatch) */
    c = call(QMOE_STAGE_ROUTER_TOPK, -1, QMOE_ACC_F32);
    c.p[0] = H, c.p[1] = 40, c.p[2] = K; /* Wr: the first 40 x H floats of slot 2 */
    c.buf[0] = SLOT(2), c.buf[1] = SLOT(1), c.buf[2] = SLOT(6), c.buf[3] = SLOT(7);
    pair_run(&p, &c);
    pair_compare(&p, 6, 0, (size_t)K, 0, "router_topk ids over 2 workgroups");
    /* logits of tens (512-long dots of values of a few units): their f32 rounding, in another order than the
     * CPU's, is a relative error of some 1e-5 in each softmax weight */
    pair_compare(&p, 7, 0, (size_t)K, 1e-4, "router_topk weights over 2 workgroups");
    c = call(QMOE_STAGE_ARGMAX, -1, QMOE_ACC_F32); /* chunks grow so that 2 workgroups cover n */
    c.p[0] = n;
    c.buf[0] = SLOT(1), c.buf[1] = SLOT(2);
    pair_run(&p, &c);
    int32_t got = -1;
    CHECK(p.vk->download(p.vk, p.vb[2], 0, &got, 4) == 0 && got == 12345, "argmax over 2 workgroups: %d", got);
  }
  free(W);
  free(Wg);
  free(Wu);
  free(Wd);
  free(x);
  free(y);
  free(hk);
  pair_close(&p);
}

/* Shapes the parity test's small ones do not reach: in the mat-vec family (a subgroup's rows staged in chunks
 * of 64 bytes per lane, docs/vulkan.md) several chunks per row, chunk starts at every alignment, partial last
 * steps and runs, MoE down over more experts than a workgroup keeps at once (32); attention over several
 * splits (some empty), at both row widths (16-byte and one-float columns) and column counts. */
typedef struct {
  qmoe_stage stage;
  int qtype;
  int64_t p[5];
} shape;

static void run_shape(const shape *sh, qmoe_acc acc) {
  pair pr;
  if (!pair_open(&pr)) return;
  qmoe_stage_call c = call(sh->stage, sh->qtype, acc);
  memcpy(c.p, sh->p, sizeof sh->p);
  size_t need[QMOE_STAGE_MAX_BUFS];
  REQUIRE(qmoe_stage_check(&c, need) == 0, "shape: %s", qmoe_last_error());
  const qmoe_stage_info *si = qmoe_stage_info_get(sh->stage);
  int nbuf = si->n_inputs + si->n_outputs;
  char what[128];
  snprintf(what, sizeof what, "%s/%s/%s p=%lld,%lld,%lld,%lld,%lld", si->name,
           sh->qtype >= 0 ? qmoe_qtype_by_id(sh->qtype)->name : "-",
           acc == QMOE_ACC_F64 ? "f64" : acc == QMOE_ACC_Q8 ? "q8" : "f32",
           (long long)sh->p[0], (long long)sh->p[1], (long long)sh->p[2], (long long)sh->p[3], (long long)sh->p[4]);
  for (int i = 0; i < nbuf; i++) {
    unsigned char *host = NULL;
    if (si->bufs[i].dtype == QMOE_DTYPE_QTYPE) {
      const qmoe_qtype_info *q = qmoe_qtype_by_id(sh->qtype);
      int64_t cols = si->bufs[i].dims[si->bufs[i].n_dims - 1].param >= 0 ? c.p[si->bufs[i].dims[si->bufs[i].n_dims - 1].param]
                                                                       : si->bufs[i].dims[si->bufs[i].n_dims - 1].value;
      size_t bytes;
      host = quant_matrix(sh->qtype, (int64_t)(need[i] / (size_t)qmoe_qtype_row_bytes(q, cols)), cols, 0, &bytes);
      REQUIRE(host && bytes == need[i], "%s: weights", what);
    } else if (si->bufs[i].dtype == QMOE_DTYPE_I32 && !si->bufs[i].is_output) {
      int32_t *ids = malloc(need[i]);
      int64_t E = sh->p[2], K = (int64_t)(need[i] / 4); /* MoE: ids of K distinct experts of E */
      for (int64_t k = 0; k < K; k++) ids[k] = (int32_t)((E - 1 - k * 2) % E + E) % (int32_t)E;
      host = (unsigned char *)ids;
    } else if (!si->bufs[i].is_output) {
      float *f = malloc(need[i]);
      fill_normal(f, need[i] / 4, 1.0);
      if (!strcmp(si->buf_names[i], "w")) /* router weights of the MoE down projection */
        for (size_t k = 0; k < need[i] / 4; k++) f[k] = (float)(0.1 + 0.8 * t_rand_unit());
      host = (unsigned char *)f;
    }
    if (!pair_buf(&pr, i, need[i], host)) {
      free(host);
      pair_close(&pr);
      return;
    }
    free(host);
    c.buf[i] = SLOT(i);
  }
  if (pair_run(&pr, &c)) {
    CHECK(pr.vk->sync(pr.vk) == 0, "%s: sync: %s", what, qmoe_last_error());
    for (int i = si->n_inputs; i < nbuf; i++)
      pair_compare(&pr, i, 0, need[i] / 4, acc == QMOE_ACC_F64 ? 3e-7 : 3e-5, what);
  }
  pair_close(&pr);
}

static void test_larger_shapes(void) {
  static const shape shapes[] = {
      {QMOE_STAGE_MATVEC, Q4_K, {50, 4096 + 256}},      /* 17 blocks: 2 chunks (32 lanes) to 9 (4 lanes) */
      {QMOE_STAGE_MATVEC, Q6_K, {21, 2048 + 512}},      /* 210-byte blocks: chunks start at every alignment */
      {QMOE_STAGE_MATVEC, Q8_0, {19, 32 * 133}},        /* 133 blocks: several chunks, a partial last step */
      {QMOE_STAGE_MATVEC, 0, {13, 1003}},               /* f32: several chunks, a partial last run */
      {QMOE_STAGE_MATVEC, F16, {6, 777}},               /* f16: odd rows, a partial last run */
      {QMOE_STAGE_MOE_GATE_UP_SWIGLU, Q4_K, {4096, 40, 3, 2}},
      {QMOE_STAGE_MOE_DOWN, Q6_K, {33, 768, 4, 3}},
      {QMOE_STAGE_MOE_DOWN, Q8_0, {17, 96 * 7, 5, 5}},
      {QMOE_STAGE_MOE_DOWN, Q4_0, {9, 64, 48, 40}},     /* K = 40 > 32: two chunks of experts, in order */
      {QMOE_STAGE_MOE_DOWN, Q4_K, {64, 256, 40, 24}},   /* K = 24: subgroups take several experts (the next one's
                                                         * rows asked for ahead); with q8, K*F in the records */
      /* q8 (docs/q8.md): x longer than a workgroup's shared records (QX_MAX: 4,096 in matvec, 6,144 in moe_down) takes the
       * per-lane path; the shapes above, with q8 too, the records */
      {QMOE_STAGE_MATVEC, Q4_K, {9, 9216}},
      {QMOE_STAGE_MOE_DOWN, Q4_K, {8, 1536, 8, 6}},     /* K*F = 9,216 */
      {QMOE_STAGE_ATTENTION, -1, {24, 2, 64, 200, 210}},  /* 12 heads per kv head; 11 splits of 19 */
      {QMOE_STAGE_ATTENTION, -1, {32, 4, 128, 130, 130}}, /* Qwen's GQA 8:1; 8 splits of 17, the last of 11 */
      {QMOE_STAGE_ATTENTION, -1, {32, 4, 128, 1000, 1000}}, /* 8 splits of 125 positions */
      {QMOE_STAGE_ATTENTION, -1, {1, 1, 64, 4100, 4100}},   /* 256 splits of 17: the last ones empty */
      {QMOE_STAGE_ATTENTION, -1, {2, 1, 512, 100, 100}},    /* 128 16-byte columns: one position group */
      {QMOE_STAGE_ATTENTION, -1, {4, 4, 20, 77, 80}},       /* D % 4 != 0: one float per column, 6 groups */
      {QMOE_STAGE_ATTENTION, -1, {4, 2, 202, 50, 50}},      /* 202 one-float columns: more than the workgroup */
      {QMOE_STAGE_ROUTER_TOPK, -1, {300, 77, 9}},        /* H not a multiple of 4: scalar loads */
      {QMOE_STAGE_ROUTER_TOPK, -1, {256, 300, 140}},    /* E, K > 128: ranked in several rounds of the workgroup */
      {QMOE_STAGE_ARGMAX, -1, {100003}},
  };
  for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
    const qmoe_stage_info *si = qmoe_stage_info_get(shapes[i].stage);
    run_shape(&shapes[i], QMOE_ACC_F32);
    if (si->varies_by_acc) run_shape(&shapes[i], QMOE_ACC_F64);
    if (shapes[i].qtype >= 0 && qmoe_stage_has_acc(si, shapes[i].qtype, QMOE_ACC_Q8)) run_shape(&shapes[i], QMOE_ACC_Q8);
    if (t_case_skipped) return;
  }
}

/* The GPU timer: device time around recorded work, and misuse refused. */
static void test_timer(void) {
  qmoe_backend *be;
  if (!open_backend(&be)) return;
  qmoe_vk *vk = qmoe_backend_vulkan_vk(be);
  REQUIRE(vk, "qmoe_backend_vulkan_vk");
  qmoe_backend *cpu = NULL;
  CHECK(qmoe_backend_cpu_open(&cpu) == 0 && qmoe_backend_vulkan_vk(cpu) == NULL, "not a Vulkan backend");
  if (cpu) cpu->close(cpu);
  CHECK(qmoe_vk_timer_stop(vk) == QMOE_EINVAL, "stop before start");
  const size_t n = 1 << 16;
  qmoe_buffer *a = make_buf(be, n * 4, NULL), *y = make_buf(be, n * 4, NULL);
  REQUIRE(a && y, "buffers");
  int rc = qmoe_vk_timer_start(vk);
  if (rc == QMOE_EUNSUPPORTED) {
    be->free_buf(be, a), be->free_buf(be, y), be->close(be);
    SKIP("%s", qmoe_last_error());
  }
  CHECK(rc == 0, "start: %s", qmoe_last_error());
  qmoe_stage_call c = call(QMOE_STAGE_ADD, -1, QMOE_ACC_F32);
  c.p[0] = (int64_t)n;
  c.buf[0] = a, c.buf[1] = a, c.buf[2] = y;
  for (int i = 0; i < 10; i++) CHECK(be->run(be, &c) == 0, "%s", qmoe_last_error());
  CHECK(qmoe_vk_timer_stop(vk) == 0, "stop: %s", qmoe_last_error());
  CHECK(be->sync(be) == 0, "%s", qmoe_last_error());
  double us = -1;
  CHECK(qmoe_vk_timer_read(vk, &us) == 0 && us > 0 && us < 60e6, "read: %g us (%s)", us, qmoe_last_error());
  be->free_buf(be, a);
  be->free_buf(be, y);
  be->close(be);
}

/* ---- errors ---- */

static void test_unsupported_variant(void) {
  qmoe_backend *be;
  if (!open_backend(&be)) return;
  /* a GGUF type id with no matvec variant in the Vulkan table */
  int qt = -1;
  for (int id = 0; id < 64 && qt < 0; id++) {
    int found = 0;
    for (size_t i = 0; i < qmoe_vk_variant_count; i++)
      found |= qmoe_vk_variants[i].stage == QMOE_STAGE_MATVEC && qmoe_vk_variants[i].qtype == id;
    if (!found) qt = id;
  }
  REQUIRE(qt >= 0, "every id has a variant?");
  qmoe_buffer *b = make_buf(be, 1 << 16, NULL);
  REQUIRE(b, "buffer: %s", qmoe_last_error());
  qmoe_stage_call c = call(QMOE_STAGE_MATVEC, qt, QMOE_ACC_F32);
  c.p[0] = 4, c.p[1] = 256;
  c.buf[0] = c.buf[1] = c.buf[2] = b;
  c.tensor = "blk.7.ffn_down_exps.weight";
  int rc = be->run(be, &c);
  char m[2048], qname[64];
  snprintf(m, sizeof m, "%s", qmoe_last_error());
  snprintf(qname, sizeof qname, "%s", qmoe_qtype_name(qt)); /* (sets the error: it is looked up) */
  CHECK(rc == QMOE_EUNSUPPORTED, "rc %d (%s)", rc, m);
  CHECK(strstr(m, "vulkan") && strstr(m, "matvec") && strstr(m, "blk.7.ffn_down_exps.weight") &&
            strstr(m, qname) && strstr(m, "q4_k/f32"),
        "message names the stage, tensor, qtype and the variants there are: %s", m);
  c.stage = QMOE_STAGE_MOE_GATE_UP_SWIGLU;
  c.p[0] = 256, c.p[1] = 4, c.p[2] = 1, c.p[3] = 1;
  c.buf[3] = c.buf[4] = b;
  c.tensor = NULL;
  rc = be->run(be, &c);
  CHECK(rc == QMOE_EUNSUPPORTED && strstr(qmoe_last_error(), "'Wg'"), "without a tensor name the buffer is named: %s",
        qmoe_last_error());
  c = call(QMOE_STAGE_MATVEC, Q4_K, QMOE_ACC_F32); /* a buffer too small for the call */
  c.p[0] = 1000, c.p[1] = 256;
  c.buf[0] = c.buf[1] = c.buf[2] = b;
  c.tensor = "output.weight";
  rc = be->run(be, &c);
  CHECK(rc == QMOE_EINVAL && strstr(qmoe_last_error(), "output.weight"), "too small: %d %s", rc, qmoe_last_error());
  c.p[0] = 4;
  c.off[1] = 2; /* an f32 buffer at an offset that is not a multiple of 4 */
  rc = be->run(be, &c);
  CHECK(rc == QMOE_EINVAL && strstr(qmoe_last_error(), "multiple of 4"), "misaligned: %d %s", rc, qmoe_last_error());
  CHECK(be->sync(be) == 0, "sync after refused calls: %s", qmoe_last_error());
  be->free_buf(be, b);
  be->close(be);
}

static void test_missing_feature(void) {
  qmoe_vk *vk;
  if (!open_runtime(&vk)) return;
  uint32_t have = qmoe_vk_features(vk);
  char name[VK_MAX_PHYSICAL_DEVICE_NAME_SIZE];
  snprintf(name, sizeof name, "%s", qmoe_vk_device_name(vk));
  qmoe_vk_close(vk);
  if (!(have & QMOE_VK_F_FLOAT64)) {
    /* the real thing: this device has no fp64 */
  } else {
    set_env("QMOE_VK_DISABLE", "shaderFloat64");
  }
  pair p;
  int ok = pair_open(&p);
  set_env("QMOE_VK_DISABLE", NULL);
  if (!ok) return;
  const int64_t rows = 8, cols = 64;
  size_t wb;
  unsigned char *W = quant_matrix(Q8_0, rows, cols, 0, &wb);
  float x[64];
  fill_normal(x, 64, 1.0);
  REQUIRE(W, "quantize");
  if (pair_buf(&p, 0, wb, W) && pair_buf(&p, 1, sizeof x, x) && pair_buf(&p, 2, (size_t)rows * 4, NULL)) {
    qmoe_stage_call c = call(QMOE_STAGE_MATVEC, Q8_0, QMOE_ACC_F64);
    c.p[0] = rows, c.p[1] = cols;
    c.buf[0] = p.vb[0], c.buf[1] = p.vb[1], c.buf[2] = p.vb[2];
    int rc = p.vk->run(p.vk, &c);
    char want[512];
    snprintf(want, sizeof want, "device '%s' lacks shaderFloat64, needed by matvec/q8_0/f64", name);
    CHECK(rc == QMOE_EUNSUPPORTED && strcmp(qmoe_last_error(), want) == 0, "f64 variant: %d '%s', expected '%s'", rc,
          qmoe_last_error(), want);
    c = call(QMOE_STAGE_ROPE_NEOX, -1, QMOE_ACC_F32);
    c.p[0] = 1, c.p[1] = 64, c.p[2] = 3;
    c.f[0] = 10000.0;
    c.buf[0] = p.vb[1], c.buf[1] = p.vb[1];
    rc = p.vk->run(p.vk, &c);
    CHECK(rc == QMOE_EUNSUPPORTED && strstr(qmoe_last_error(), "lacks shaderFloat64, needed by rope_neox/f32"),
          "rope computes its angles in double: %d %s", rc, qmoe_last_error());
    c = call(QMOE_STAGE_MATVEC, Q8_0, QMOE_ACC_F32); /* the f32 variant still runs, and right */
    c.p[0] = rows, c.p[1] = cols;
    c.buf[0] = SLOT(0), c.buf[1] = SLOT(1), c.buf[2] = SLOT(2);
    if (pair_run(&p, &c)) pair_compare(&p, 2, 0, (size_t)rows, 1e-5, "matvec/q8_0/f32 without fp64");
  }
  pair_close(&p);
  /* Without subgroup arithmetic no kernel runs; the message names it. */
  set_env("QMOE_VK_DISABLE", "subgroupArithmetic");
  qmoe_backend *be;
  ok = open_backend(&be);
  set_env("QMOE_VK_DISABLE", NULL);
  if (ok) {
    qmoe_buffer *b = make_buf(be, 4096, NULL);
    qmoe_stage_call c = call(QMOE_STAGE_RMSNORM, -1, QMOE_ACC_F32);
    c.p[0] = 16;
    c.f[0] = 1e-6;
    c.buf[0] = c.buf[1] = c.buf[2] = b;
    int rc = be->run(be, &c);
    CHECK(rc == QMOE_EUNSUPPORTED && strstr(qmoe_last_error(), "lacks subgroupArithmetic, needed by rmsnorm/f32"),
          "%d %s", rc, qmoe_last_error());
    be->free_buf(be, b);
    be->close(be);
  }
  /* Without integer dot products the q8 row variants do not run (OpSUDot, docs/vulkan.md); f32 still does. */
  set_env("QMOE_VK_DISABLE", "shaderIntegerDotProduct");
  ok = pair_open(&p);
  set_env("QMOE_VK_DISABLE", NULL);
  if (ok) {
    if (pair_buf(&p, 0, wb, W) && pair_buf(&p, 1, sizeof x, x) && pair_buf(&p, 2, (size_t)rows * 4, NULL)) {
      qmoe_stage_call c = call(QMOE_STAGE_MATVEC, Q8_0, QMOE_ACC_Q8);
      c.p[0] = rows, c.p[1] = cols;
      c.buf[0] = p.vb[0], c.buf[1] = p.vb[1], c.buf[2] = p.vb[2];
      int rc = p.vk->run(p.vk, &c);
      CHECK(rc == QMOE_EUNSUPPORTED && strstr(qmoe_last_error(), "lacks shaderIntegerDotProduct, needed by matvec/q8_0/q8"),
            "q8 variant without integer dot products: %d %s", rc, qmoe_last_error());
      c = call(QMOE_STAGE_MATVEC, Q8_0, QMOE_ACC_F32);
      c.p[0] = rows, c.p[1] = cols;
      c.buf[0] = SLOT(0), c.buf[1] = SLOT(1), c.buf[2] = SLOT(2);
      if (pair_run(&p, &c)) pair_compare(&p, 2, 0, (size_t)rows, 1e-5, "matvec/q8_0/f32 without integer dot products");
    }
    pair_close(&p);
  }
  set_env("QMOE_VK_DISABLE", "shaderFloat65");
  qmoe_vk *v2 = NULL;
  int rc = qmoe_vk_open(&v2);
  set_env("QMOE_VK_DISABLE", NULL);
  CHECK(rc == QMOE_EINVAL && strstr(qmoe_last_error(), "unknown feature 'shaderFloat65'"), "bad QMOE_VK_DISABLE: %s",
        qmoe_last_error());
  free(W);
}

static void test_missing_shader(void) {
  qmoe_vk *vk;
  if (!open_runtime(&vk)) return;
  VkPipeline pl;
  int rc = qmoe_vk_pipeline(vk, "matvec__q9_z__f32", "matvec/q9_z/f32", 0, 64, &pl);
  CHECK(rc == QMOE_EUNSUPPORTED && strstr(qmoe_last_error(), "matvec__q9_z__f32") && strstr(qmoe_last_error(), "not among"),
        "%d %s", rc, qmoe_last_error());
  /* every variant's shaders are embedded, and the table names them consistently */
  for (size_t i = 0; i < qmoe_vk_variant_count; i++) {
    const qmoe_vk_variant *v = &qmoe_vk_variants[i];
    CHECK(v->npass >= 1 && v->npass <= QMOE_VK_MAX_PASSES, "%s: %d passes", v->name, v->npass);
    for (int k = 0; k < v->npass; k++) {
      int found = 0;
      for (size_t j = 0; j < qmoe_embedded_spirv_count; j++) found |= strcmp(qmoe_embedded_spirv[j].name, v->pass[k].shader) == 0;
      CHECK(found, "%s: shader %s is not embedded", v->name, v->pass[k].shader);
      CHECK(strncmp(v->pass[k].shader, v->name, strlen(v->name)) == 0, "%s: shader %s", v->name, v->pass[k].shader);
    }
  }
  qmoe_vk_close(vk);
}

/* Every variant of the contracts has a row in the Vulkan table (the lookup never falls back). */
static void test_table_covers_contracts(void) {
  for (int s = 0; s < QMOE_STAGE_COUNT; s++) {
    const qmoe_stage_info *si = qmoe_stage_info_get((qmoe_stage)s);
    REQUIRE(si, "stage %d has no contract", s);
    int nq = si->varies_by_qtype ? si->n_qtypes : 1;
    for (int qi = 0; qi < nq; qi++) {
      int qt = si->varies_by_qtype ? si->qtypes[qi] : -1;
      const qmoe_qtype_info *q = qt >= 0 ? qmoe_qtype_by_id(qt) : NULL;
      int na = si->varies_by_acc ? si->n_accs : 1;
      for (int ai = 0; ai < na; ai++) {
        int acc = si->varies_by_acc ? (int)si->accs[ai] : -1;
        if (q && acc >= 0 && !(q->acc_mask & (1u << acc))) continue;
        int found = 0;
        for (size_t i = 0; i < qmoe_vk_variant_count; i++) {
          const qmoe_vk_variant *v = &qmoe_vk_variants[i];
          found += v->stage == s && v->qtype == qt && v->acc == acc;
        }
        CHECK(found == 1, "stage %s qtype %d acc %d: %d rows in qmoe_vk_variants", si->name, qt, acc, found);
      }
    }
  }
}

int main(void) {
  t_seed();
  RUN(test_pick_device);
  RUN(test_spirv_features);
  RUN(test_table_covers_contracts);
  RUN(test_no_loader);
  RUN(test_open_default);
  RUN(test_env_device);
  RUN(test_buffers_mapped);
  RUN(test_buffers_staged);
  RUN(test_validation_catches);
  RUN(test_missing_shader);
  RUN(test_unsupported_variant);
  RUN(test_missing_feature);
  RUN(test_chain_dependencies);
  RUN(test_hazards);
  RUN(test_recorded_chain);
  RUN(test_strided_grids);
  RUN(test_larger_shapes);
  RUN(test_timer);
  RUN(test_teardown_clean);
  return T_DONE();
}
