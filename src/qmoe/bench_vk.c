/* bench_vk.c: Vulkan timestamps for `qmoe bench` (bench_timers.h) over the vulkan backend's runtime. */
#include "bench_timers.h"
#include "qmoe.h"
#include "vk_internal.h"

int bench_vk_is(qmoe_backend *be) { return qmoe_backend_vulkan_vk(be) != NULL; }

int bench_vk_start(qmoe_backend *be) {
  qmoe_vk *vk = qmoe_backend_vulkan_vk(be);
  return vk ? qmoe_vk_timer_start(vk) : QMOE_EINVAL;
}

int bench_vk_stop(qmoe_backend *be, double *secs) {
  qmoe_vk *vk = qmoe_backend_vulkan_vk(be);
  double us;
  int rc;
  if (!vk) return QMOE_EINVAL;
  if ((rc = qmoe_vk_timer_stop(vk)) || (rc = be->sync(be)) || (rc = qmoe_vk_timer_read(vk, &us))) return rc;
  *secs = us * 1e-6;
  return 0;
}
