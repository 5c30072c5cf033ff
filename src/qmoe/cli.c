/* cli.c: helpers the `qmoe` subcommands share: messages, integer and row-range parsing, near-match
 * suggestions for tensor names, progress on stderr, little-endian f32 output. */
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include "cli.h"

int cli_error(const char *cmd, const char *fmt, ...) {
  va_list ap;
  fprintf(stderr, "qmoe %s: error: ", cmd);
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputc('\n', stderr);
  return 1;
}

int cli_usage_error(const qmoe_command *c, const char *fmt, ...) {
  va_list ap;
  fprintf(stderr, "qmoe %s: ", c->name);
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  const char *nl = strchr(c->usage, '\n');
  fprintf(stderr, "\n%.*s\n(`qmoe %s --help` for more)\n", nl ? (int)(nl - c->usage) : (int)strlen(c->usage),
          c->usage, c->name);
  return 2;
}

int cli_writer_error(const char *cmd, const char *in) {
  const char *msg = qmoe_last_error();
  return cli_error(cmd, "%s: %s%s", in, msg,
                   strstr(msg, "not valid UTF-8") ? " (--verbatim-names copies such names as they are)" : "");
}

int cli_once(const qmoe_command *c, const char **seen, const char *opt) {
  if (*seen) {
    if (!strcmp(*seen, opt)) cli_usage_error(c, "option %s given twice", opt);
    else cli_usage_error(c, "option %s given twice (as %s and %s)", opt, *seen, opt);
    return 2;
  }
  *seen = opt;
  return 0;
}

int cli_parse_i64(const char *s, int64_t *out) {
  if (!s || !*s) return -1;
  int64_t v = 0;
  for (const char *p = s; *p; p++) {
    if (*p < '0' || *p > '9') return -1;
    if (__builtin_mul_overflow(v, 10, &v) || __builtin_add_overflow(v, *p - '0', &v)) return -1;
  }
  *out = v;
  return 0;
}

int cli_parse_rows(const char *s, int64_t n_rows, int64_t *first, int64_t *end, char *why, size_t cap) {
  const char *dots = strstr(s, "..");
  int64_t a = 0, b = n_rows;
  if (!dots) {
    if (cli_parse_i64(s, &a)) goto bad;
    b = a + (a < INT64_MAX);
  } else {
    char head[32];
    size_t n = (size_t)(dots - s);
    if (n >= sizeof head) goto bad;
    memcpy(head, s, n);
    head[n] = 0;
    if (n && cli_parse_i64(head, &a)) goto bad;
    if (dots[2] && cli_parse_i64(dots + 2, &b)) goto bad;
  }
  if (a >= b) {
    snprintf(why, cap, "row range '%s' is empty", s);
    return -1;
  }
  if (b > n_rows) {
    snprintf(why, cap, "rows %s are out of range: the tensor has %lld row%s (0..%lld)", s, (long long)n_rows,
             n_rows == 1 ? "" : "s", (long long)n_rows);
    return -1;
  }
  *first = a;
  *end = b;
  return 0;
bad:
  snprintf(why, cap, "bad row range '%s' (expected A..B for rows A to B-1, A, A.. or ..B)", s);
  return -1;
}

/* Edit distance between a and b, stopping early beyond limit. */
static int edit_distance(const char *a, const char *b, int limit) {
  int la = (int)strlen(a), lb = (int)strlen(b);
  if (abs(la - lb) > limit) return limit + 1;
  int *row = malloc(sizeof(int) * (size_t)(lb + 1));
  if (!row) return limit + 1;
  for (int j = 0; j <= lb; j++) row[j] = j;
  for (int i = 1; i <= la; i++) {
    int prev = row[0], best;
    row[0] = i;
    best = row[0];
    for (int j = 1; j <= lb; j++) {
      int cur = row[j];
      int v = prev + (a[i - 1] != b[j - 1]);
      if (row[j] + 1 < v) v = row[j] + 1;
      if (row[j - 1] + 1 < v) v = row[j - 1] + 1;
      row[j] = v;
      prev = cur;
      if (v < best) best = v;
    }
    if (best > limit) {
      free(row);
      return limit + 1;
    }
  }
  int d = row[lb];
  free(row);
  return d;
}

void cli_tensor_not_found(const qmoe_gguf *f, const char *name, char *msg, size_t cap) {
  enum { MAX_SUGGEST = 5 };
  const char *best[MAX_SUGGEST];
  int bestd[MAX_SUGGEST], nb = 0;
  int limit = (int)strlen(name) / 3;
  if (limit < 3) limit = 3;
  for (int64_t i = 0; i < qmoe_gguf_tensor_count(f); i++) {
    const char *t = qmoe_gguf_tensor_at(f, i)->name;
    int d = edit_distance(name, t, limit);
    if (d > limit && strstr(t, name)) d = limit; /* a part of the name: still worth showing */
    if (d > limit) continue;
    int at = nb < MAX_SUGGEST ? nb++ : MAX_SUGGEST;
    while (at > 0 && bestd[at - 1] > d) {
      if (at < MAX_SUGGEST) best[at] = best[at - 1], bestd[at] = bestd[at - 1];
      at--;
    }
    if (at < MAX_SUGGEST) best[at] = t, bestd[at] = d;
  }
  int n = snprintf(msg, cap, "no tensor '%s' in %s", name, qmoe_gguf_path(f));
  for (int i = 0; i < nb && n > 0 && (size_t)n < cap; i++)
    n += snprintf(msg + n, cap - (size_t)n, "%s%s", i ? ", " : "; did you mean: ", best[i]);
  if (n > 0 && (size_t)n < cap) {
    if (nb) snprintf(msg + n, cap - (size_t)n, "?");
    else snprintf(msg + n, cap - (size_t)n, " (it has %lld tensors: `qmoe inspect %s` lists them)",
                  (long long)qmoe_gguf_tensor_count(f), qmoe_gguf_path(f));
  }
}

static double now_seconds(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

void cli_progress_start(cli_progress *p, const char *cmd, uint64_t total) {
  p->cmd = cmd;
  p->tty = isatty(2);
  p->total = total ? total : 1;
  p->last_pct = -1;
  p->start_time = p->last_time = now_seconds();
}

void cli_progress_update(cli_progress *p, uint64_t done, const char *label) {
  int pct = (int)(100.0 * (double)done / (double)p->total);
  double t = now_seconds();
  if (p->tty) {
    if (pct == p->last_pct && t - p->last_time < 0.2) return;
    enum { WIDTH = 30 };
    int fill = pct * WIDTH / 100;
    char bar[WIDTH + 1];
    for (int i = 0; i < WIDTH; i++) bar[i] = i < fill ? '#' : '.';
    bar[WIDTH] = 0;
    fprintf(stderr, "\r\033[K[%s] %3d%% %.50s", bar, pct, label);
  } else {
    if (pct / 10 == p->last_pct / 10 && t - p->last_time < 30) return;
    fprintf(stderr, "qmoe %s: %3d%% (%.0f s) %s\n", p->cmd, pct, t - p->start_time, label);
  }
  fflush(stderr);
  p->last_pct = pct;
  p->last_time = t;
}

void cli_progress_end(cli_progress *p) {
  double t = now_seconds() - p->start_time;
  if (p->tty) fprintf(stderr, "\r\033[K");
  fprintf(stderr, "qmoe %s: done in %.1f s\n", p->cmd, t);
}

int cli_write_f32le(qmoe_out *o, const float *x, int64_t n) {
  unsigned char buf[4096];
  int64_t i = 0;
  while (i < n) {
    size_t k = 0;
    for (; i < n && k + 4 <= sizeof buf; i++, k += 4) {
      uint32_t u;
      memcpy(&u, &x[i], 4);
      buf[k] = (unsigned char)u, buf[k + 1] = (unsigned char)(u >> 8);
      buf[k + 2] = (unsigned char)(u >> 16), buf[k + 3] = (unsigned char)(u >> 24);
    }
    if (qmoe_out_write(o, buf, k) != 0) return -1;
  }
  return 0;
}
