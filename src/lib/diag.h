/* diag.h: diagnostics (file:line:col: error[CODE]: message) collected by the YAML loader, pv and the
 * generator host; plus the allocation policy shared by the tools (out of memory aborts with a message). */
#ifndef QMOE_DIAG_H
#define QMOE_DIAG_H
#include <stddef.h>

typedef enum { DIAG_ERROR = 0, DIAG_WARNING = 1 } diag_severity;

typedef struct {
  char *file;
  int line, col;        /* 1-based; 0 when the diagnostic has no position */
  diag_severity severity;
  char code[16];        /* e.g. "Y001", "E104" */
  char *message;
} diag_entry;

typedef struct {
  diag_entry *items;
  size_t n, cap;
  size_t errors, warnings;
  size_t limit;         /* stop recording after this many (0 = 10000); counts still grow */
} diag_list;

void diag_add(diag_list *d, diag_severity sev, const char *file, int line, int col, const char *code,
              const char *fmt, ...) __attribute__((format(printf, 7, 8)));
void diag_free(diag_list *d);
/* Prints "file:line:col: error[CODE]: message" lines, in the order they were added. */
void diag_print_text(const diag_list *d, void *stream);
/* Sorts by file, line, column (stable for equal positions). */
void diag_sort(diag_list *d);

void *xmalloc(size_t n);
void *xcalloc(size_t n, size_t size);
void *xrealloc(void *p, size_t n);
char *xstrdup(const char *s);
char *xstrndup(const char *s, size_t n);
char *xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
