/* backend.c: qmoe_backend_open — picks a backend by name ("cpu", "vulkan", "cuda") from one table.
 * The GPU constructors live in their own files (backend_vulkan.c, backend_cuda.c); they are referenced
 * weakly, so a library built without one still links and says plainly that the backend is not built. */
#include <stddef.h>
#include <string.h>
#include "backend.h"
#include "qmoe.h"

/* Weak references: NULL when the constructor's file is not part of the build. */
#pragma weak qmoe_backend_vulkan_open
#pragma weak qmoe_backend_cuda_open

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
  for (size_t i = 0; name && i < sizeof backends / sizeof backends[0]; i++) {
    if (strcmp(name, backends[i].name) != 0) continue;
    if (!backends[i].open) {
      qmoe_set_error("backend '%s' is not built into this libqmoe (runtime/backend_%s.c is missing)", name, name);
      return QMOE_ENODEV;
    }
    return backends[i].open(out);
  }
  qmoe_set_error("unknown backend '%s' (valid: cpu, vulkan, cuda)", name ? name : "(null)");
  return QMOE_EINVAL;
}
