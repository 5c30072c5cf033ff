/* error.c: the thread-local last-error message behind qmoe_last_error(). */
#include <stdarg.h>
#include <stdio.h>
#include "qmoe.h"

static _Thread_local char last_error[2048];

const char *qmoe_last_error(void) { return last_error; }

void qmoe_set_error(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(last_error, sizeof last_error, fmt, ap);
  va_end(ap);
}
