/* error.c: the thread-local last-error message behind qmoe_last_error(), and the library's one host
 * allocator (out of memory is QMOE_ENOMEM with a message, never an abort). */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include "qmoe.h"

static _Thread_local char last_error[2048];

const char *qmoe_last_error(void) { return last_error; }

void qmoe_set_error(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(last_error, sizeof last_error, fmt, ap);
  va_end(ap);
}

void *qmoe_alloc(size_t n, const char *who) {
  void *p = calloc(1, n ? n : 1);
  if (!p) qmoe_set_error("%s: out of host memory allocating %zu bytes", who, n);
  return p;
}
