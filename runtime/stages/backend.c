/* backend.c: qmoe_backend_open — picks a backend by name ("cpu", "vulkan", "cuda") from one table.
 * Each constructor lives in its own file (backend_cpu.c, backend_vulkan.c, backend_cuda.c). The references
 * are strong on purpose: libqmoe is a static archive, and a weak reference does not pull a member out of
 * it, so a weakly referenced backend would silently read as "not built" (tests/unit/test_ref_stages.c
 * checks that every backend file in the tree is reachable from here). The GPU backends load their driver
 * at run time, so linking them needs no GPU toolkit. */
#include <stddef.h>
#include <string.h>
#include "backend.h"
#include "qmoe.h"

static const struct {
  const char *name;
  int (*open)(qmoe_backend **out);
} backends[] = {
    {"cpu", qmoe_backend_cpu_open},
    {"vulkan", qmoe_backend_vulkan_open},
    {"cuda", qmoe_backend_cuda_open},
};

int qmoe_backend_open(const char *name, qmoe_backend **out) {
  if (!out) {
    qmoe_set_error("qmoe_backend_open: out is NULL");
    return QMOE_EINVAL;
  }
  *out = NULL;
  for (size_t i = 0; name && i < sizeof backends / sizeof backends[0]; i++)
    if (strcmp(name, backends[i].name) == 0) return backends[i].open(out);
  qmoe_set_error("unknown backend '%s' (valid: cpu, vulkan, cuda)", name ? name : "(null)");
  return QMOE_EINVAL;
}
