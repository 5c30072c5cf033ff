/* model_cli.c: what `qmoe run`, `qmoe trace` and `qmoe bench` share — an option table that rejects repeated
 * and unknown options, token-id lists, backend and accumulator names, loading the model with its memory
 * report, and a monotonic clock. */
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include "backend.h"
#include "cli.h"

int cli_parse_opts(const qmoe_command *c, int argc, char **argv, cli_opt *o, int n) {
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    int k = 0;
    for (; k < n; k++)
      if (!strcmp(a, o[k].name) || (o[k].alt && !strcmp(a, o[k].alt))) break;
    if (k == n) return cli_usage_error(c, a[0] == '-' ? "unknown option '%s'" : "unexpected argument '%s'", a);
    if (o[k].value) return cli_usage_error(c, "%s is given twice", o[k].name);
    if (!o[k].takes_value) {
      o[k].value = "1";
      continue;
    }
    if (i + 1 >= argc) return cli_usage_error(c, "%s needs a value", o[k].name);
    o[k].value = argv[++i];
  }
  return 0;
}

int cli_parse_ids(const char *cmd, const char *s, int32_t **ids, size_t *n) {
  size_t cap = 1;
  for (const char *p = s; *p; p++) cap += *p == ',';
  int32_t *v = malloc(cap * sizeof *v);
  if (!v) return cli_error(cmd, "out of memory");
  size_t k = 0;
  const char *p = s;
  while (1) {
    const char *e = strchr(p, ',');
    size_t len = e ? (size_t)(e - p) : strlen(p);
    char buf[24];
    int64_t x;
    if (len == 0 || len >= sizeof buf) goto bad;
    memcpy(buf, p, len);
    buf[len] = 0;
    if (cli_parse_i64(buf, &x) || x > INT32_MAX) goto bad;
    v[k++] = (int32_t)x;
    if (!e) break;
    p = e + 1;
  }
  *ids = v;
  *n = k;
  return 0;
bad:
  free(v);
  return cli_error(cmd, "--tokens '%s': expected comma-separated token ids such as 1,2,3", s);
}

int cli_parse_acc(const char *cmd, const char *s, int *acc) {
  if (!s) *acc = QMOE_ACC_F32;
  else if ((*acc = qmoe_acc_by_name(s)) < 0) return cli_error(cmd, "--acc '%s': expected f32, f64 or q8", s);
  return 0;
}

int cli_parse_count(const char *cmd, const char *opt, const char *s, int64_t lo, int64_t hi, int64_t *out) {
  int64_t v;
  if (cli_parse_i64(s, &v) || v < lo || v > hi)
    return cli_error(cmd, "%s '%s': expected an integer in %lld..%lld", opt, s, (long long)lo, (long long)hi);
  *out = v;
  return 0;
}

int cli_open_model(const char *cmd, const char *path, const char *backend, int64_t n_ctx, int64_t need_ctx, int acc,
                   int quiet, qmoe_backend **be_out, qmoe_model **m_out) {
  *be_out = NULL, *m_out = NULL;
  /* Check the file first: a bad model is reported before any device is opened. */
  qmoe_gguf *f;
  qmoe_model_config c;
  if (qmoe_gguf_open(path, &f)) {
    if (!strcmp(path, QMOE_DEFAULT_MODEL) && access(path, F_OK) != 0)
      return cli_error(cmd, "%s (the default model: `ninja` builds it, or give -m FILE)", qmoe_last_error());
    return cli_error(cmd, "%s", qmoe_last_error());
  }
  int rc = qmoe_model_check(f, &c);
  qmoe_gguf_close(f);
  if (rc) return cli_error(cmd, "%s", qmoe_last_error());
  if (n_ctx == 0) {
    n_ctx = c.n_ctx_train < 4096 ? c.n_ctx_train : 4096;
    if (need_ctx > n_ctx && need_ctx <= c.n_ctx_train) n_ctx = need_ctx;
  }
  if (need_ctx > n_ctx)
    return cli_error(cmd, "the prompt and the generated tokens need %lld positions but the KV cache holds %lld "
                     "(--ctx; the model allows up to %lld)", (long long)need_ctx, (long long)n_ctx,
                     (long long)c.n_ctx_train);
  qmoe_backend *be;
  if (qmoe_backend_open(backend, &be)) return cli_error(cmd, "%s", qmoe_last_error());
  qmoe_model *m;
  if (qmoe_model_load(path, be, n_ctx, &m)) {
    cli_error(cmd, "%s", qmoe_last_error());
    be->close(be);
    return 1;
  }
  if (qmoe_model_set_acc(m, acc)) {
    cli_error(cmd, "%s", qmoe_last_error());
    qmoe_model_free(m);
    be->close(be);
    return 1;
  }
  if (!quiet) {
    qmoe_model_memory mem;
    qmoe_model_memory_of(m, &mem);
    double mib = 1.0 / (1 << 20);
    fprintf(stderr, "qmoe %s: %s on %s: weights %.1f MiB + KV cache %.1f MiB (%lld tokens) + workspace %.1f MiB = "
            "%.1f MiB\n", cmd, path, backend, mem.weights * mib, mem.kv_cache * mib, (long long)n_ctx,
            mem.workspace * mib, (mem.weights + mem.kv_cache + mem.workspace) * mib);
  }
  *be_out = be, *m_out = m;
  return 0;
}

void cli_close_model(qmoe_backend *be, qmoe_model *m) {
  qmoe_model_free(m);
  if (be) be->close(be);
}

qmoe_tokenizer *cli_tokenizer(const char *path, char *err, size_t cap) {
  qmoe_gguf *f;
  qmoe_tokenizer *t = NULL;
  err[0] = 0;
  if (qmoe_gguf_open(path, &f)) {
    snprintf(err, cap, "%s", qmoe_last_error());
    return NULL;
  }
  if (qmoe_gguf_find_key(f, "tokenizer.ggml.tokens") >= 0 && qmoe_tokenizer_load(f, &t))
    snprintf(err, cap, "%s", qmoe_last_error());
  qmoe_gguf_close(f);
  return t;
}

int cli_prompt_ids(const char *cmd, const char *path, const char *text, const char *ids, int chat, int32_t **out,
                   size_t *n) {
  if (ids) {
    if (chat) return cli_error(cmd, "--chat needs the prompt as text (-p TEXT), not --tokens");
    return cli_parse_ids(cmd, ids, out, n);
  }
  char err[1024];
  qmoe_tokenizer *t = cli_tokenizer(path, err, sizeof err);
  if (!t) {
    if (err[0]) return cli_error(cmd, "%s", err);
    return cli_error(cmd, "%s has no tokenizer (tokenizer.ggml.tokens); give the prompt as --tokens IDS", path);
  }
  char *wrapped = NULL;
  int rc = 0;
  if (chat && qmoe_tokenizer_apply_chat(t, NULL, text, &wrapped)) rc = cli_error(cmd, "--chat: %s", qmoe_last_error());
  const char *s = wrapped ? wrapped : text;
  if (!rc && qmoe_tokenizer_encode(t, s, strlen(s), 1, out, n)) rc = cli_error(cmd, "%s", qmoe_last_error());
  if (!rc && *n == 0) {
    free(*out);
    *out = NULL;
    rc = cli_error(cmd, "the prompt encodes to no tokens");
  }
  free(wrapped);
  qmoe_tokenizer_free(t);
  return rc;
}

void cli_json_string(FILE *fp, const char *s, size_t n) {
  const unsigned char *u = (const unsigned char *)s;
  fputc('"', fp);
  for (size_t i = 0; i < n;) {
    size_t k = qmoe_utf8_seq_len(u + i, n - i);
    if (!k) {
      fputs("\\ufffd", fp);
      i++;
      continue;
    }
    unsigned char c = u[i];
    if (k > 1) fwrite(u + i, 1, k, fp);
    else if (c == '"' || c == '\\') fprintf(fp, "\\%c", c);
    else if (c == '\n') fputs("\\n", fp);
    else if (c == '\t') fputs("\\t", fp);
    else if (c == '\r') fputs("\\r", fp);
    else if (c < 0x20 || c == 0x7f) fprintf(fp, "\\u%04x", c);
    else fputc(c, fp);
    i += k;
  }
  fputc('"', fp);
}

double cli_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}
