/* qmoe.h: the public interface of libqmoe — quant formats, GGUF I/O, and the CPU, Vulkan and CUDA
 * backends of the Qwen3-MoE forward. Functions return 0 or a negative QMOE_E* code. */
#ifndef QMOE_H
#define QMOE_H
#include <stddef.h>
#include <stdint.h>

enum {
  QMOE_OK = 0,
  QMOE_EINVAL = -1,    /* bad argument */
  QMOE_EIO = -2,       /* file could not be read or written */
  QMOE_EFORMAT = -3,   /* malformed or hostile input file */
  QMOE_EUNSUPPORTED = -4, /* a qtype, feature or device qmoe has no support for */
  QMOE_ENODEV = -5,    /* no driver or device for the requested backend */
  QMOE_EDEVICE = -6,   /* a driver/compiler call failed */
};

/* Last error message of this thread (never NULL). Set by every function that fails. */
const char *qmoe_last_error(void);
void qmoe_set_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
