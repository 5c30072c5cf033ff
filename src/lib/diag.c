/* diag.c: diagnostic list and the tools' allocation policy (abort with a message on out-of-memory). */
#include "diag.h"
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void oom(size_t n) {
  fprintf(stderr, "qmoe: out of memory allocating %zu bytes\n", n);
  abort();
}

void *xmalloc(size_t n) {
  void *p = malloc(n ? n : 1);
  if (!p) oom(n);
  return p;
}

void *xcalloc(size_t n, size_t size) {
  void *p = calloc(n ? n : 1, size ? size : 1);
  if (!p) oom(n * size);
  return p;
}

void *xrealloc(void *p, size_t n) {
  void *q = realloc(p, n ? n : 1);
  if (!q) oom(n);
  return q;
}

char *xstrdup(const char *s) { return xstrndup(s, strlen(s)); }

char *xstrndup(const char *s, size_t n) {
  char *p = xmalloc(n + 1);
  memcpy(p, s, n);
  p[n] = 0;
  return p;
}

static char *xvasprintf(const char *fmt, va_list ap) {
  va_list ap2;
  va_copy(ap2, ap);
  int len = vsnprintf(NULL, 0, fmt, ap2);
  va_end(ap2);
  if (len < 0) len = 0;
  char *p = xmalloc((size_t)len + 1);
  vsnprintf(p, (size_t)len + 1, fmt, ap);
  return p;
}

char *xasprintf(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  char *p = xvasprintf(fmt, ap);
  va_end(ap);
  return p;
}

void diag_add(diag_list *d, diag_severity sev, const char *file, int line, int col, const char *code,
              const char *fmt, ...) {
  if (sev == DIAG_ERROR) d->errors++; else d->warnings++;
  size_t limit = d->limit ? d->limit : 10000;
  if (d->n >= limit) return;
  if (d->n == d->cap) {
    d->cap = d->cap ? d->cap * 2 : 16;
    d->items = xrealloc(d->items, d->cap * sizeof *d->items);
  }
  diag_entry *e = &d->items[d->n++];
  e->file = xstrdup(file ? file : "");
  e->line = line;
  e->col = col;
  e->severity = sev;
  snprintf(e->code, sizeof e->code, "%s", code ? code : "");
  va_list ap;
  va_start(ap, fmt);
  e->message = xvasprintf(fmt, ap);
  va_end(ap);
}

void diag_free(diag_list *d) {
  for (size_t i = 0; i < d->n; i++) {
    free(d->items[i].file);
    free(d->items[i].message);
  }
  free(d->items);
  memset(d, 0, sizeof *d);
}

void diag_print_text(const diag_list *d, void *stream) {
  FILE *f = stream;
  for (size_t i = 0; i < d->n; i++) {
    const diag_entry *e = &d->items[i];
    const char *sev = e->severity == DIAG_ERROR ? "error" : "warning";
    if (e->line > 0)
      fprintf(f, "%s:%d:%d: %s[%s]: %s\n", e->file, e->line, e->col, sev, e->code, e->message);
    else
      fprintf(f, "%s: %s[%s]: %s\n", e->file, sev, e->code, e->message);
  }
}

static int cmp_entry(const void *a, const void *b) {
  const diag_entry *x = a, *y = b;
  int c = strcmp(x->file, y->file);
  if (c) return c;
  if (x->line != y->line) return x->line < y->line ? -1 : 1;
  if (x->col != y->col) return x->col < y->col ? -1 : 1;
  return 0;
}

void diag_sort(diag_list *d) {
  /* Insertion sort keeps equal positions in insertion order; lists are small. */
  for (size_t i = 1; i < d->n; i++) {
    diag_entry t = d->items[i];
    size_t j = i;
    while (j > 0 && cmp_entry(&d->items[j - 1], &t) > 0) { d->items[j] = d->items[j - 1]; j--; }
    d->items[j] = t;
  }
}
