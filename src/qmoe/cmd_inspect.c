/* cmd_inspect.c: `qmoe inspect FILE.gguf`: the header, the metadata (long arrays and strings abbreviated)
 * and the tensor table (name, type, shape, bytes, offset), like gguf-dump; --json for other programs. */
#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "cmd.h"

static const char usage[] =
  "usage: qmoe inspect FILE.gguf [--full] [--json] [--model]\n"
  "Shows a GGUF file's header, its metadata (key, type, value) and its tensor table (name, type, shape,\n"
  "bytes, absolute file offset). Opening the file validates all of it: a malformed file gives an error\n"
  "naming the byte offset and the key or tensor, and exit status 1. A file with general.architecture is\n"
  "checked as a model too: a count it needs (block_count, head counts, expert counts, widths, context\n"
  "length) that is missing, zero, negative, huge or not an integer is reported after the listing as a\n"
  "warning (and in \"problems\" with --json); a model loader refuses such a file.\n"
  "  --model  the file must be a usable model: check it even without general.architecture, and exit 1\n"
  "           when there is a problem\n"
  "  --full   print whole strings and every array element (default: abbreviated)\n"
  "  --json   print one JSON object instead: {\"file\", \"version\", \"alignment\", \"data_offset\", \"size\",\n"
  "           \"metadata\": [{\"key\", \"type\", \"elem_type\"?, \"value\"}], \"tensors\": [{\"name\", \"type\",\n"
  "           \"type_id\", \"shape\", \"offset\", \"file_offset\", \"bytes\"}], \"problems\": [...]}, always\n"
  "           valid JSON: bytes that are not UTF-8 become U+FFFD (a key or name holding any also gets\n"
  "           \"key_hex\" / \"name_hex\" with its exact bytes); non-finite floats are the strings \"NaN\",\n"
  "           \"Infinity\" and \"-Infinity\"\n"
  "example: qmoe inspect model.gguf\n";

enum { SHORT_STRING = 64, SHORT_ARRAY = 8 };

/* A string with C-style escapes for quotes, backslashes and control bytes; valid UTF-8 passes through.
 * A byte that is not part of valid UTF-8 is written \\xNN in text and as U+FFFD in JSON (which has no
 * way to hold it), so the JSON output is always valid; json_hex_field() then gives the exact bytes. */
static void print_string(FILE *fp, const char *s, uint64_t len, uint64_t max, int json) {
  uint64_t n = len < max ? len : max;
  fputc('"', fp);
  for (uint64_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    if (c >= 0x80) {
      size_t k = qmoe_utf8_seq_len(s + i, (size_t)(n - i));
      if (k) {
        fwrite(s + i, 1, k, fp);
        i += k - 1;
      } else {
        fprintf(fp, json ? "\\ufffd" : "\\x%02x", c);
      }
    } else if (c == '"' || c == '\\') fprintf(fp, "\\%c", c);
    else if (c == '\n') fputs("\\n", fp);
    else if (c == '\t') fputs("\\t", fp);
    else if (c == '\r') fputs("\\r", fp);
    else if (c < 0x20 || c == 0x7f) fprintf(fp, json ? "\\u%04x" : "\\x%02x", c);
    else fputc(c, fp);
  }
  fputc('"', fp);
  if (n < len) fprintf(fp, "... (%" PRIu64 " bytes)", len);
}

/* JSON has no NaN or infinity: they are written as the strings "NaN", "Infinity", "-Infinity". */
static void print_float(FILE *fp, double x, int is_f32, int json) {
  if (isnan(x)) fputs(json ? "\"NaN\"" : "nan", fp);
  else if (isinf(x)) fputs(x > 0 ? (json ? "\"Infinity\"" : "inf") : (json ? "\"-Infinity\"" : "-inf"), fp);
  else fprintf(fp, is_f32 ? "%.9g" : "%.17g", x);
}

static void print_value(FILE *fp, const qmoe_gguf_value *v, int full, int json) {
  switch (v->type) {
  case QMOE_GGUF_U8: case QMOE_GGUF_U16: case QMOE_GGUF_U32: case QMOE_GGUF_U64: {
    uint64_t u = 0;
    qmoe_gguf_value_u64(v, &u);
    fprintf(fp, "%" PRIu64, u);
    break;
  }
  case QMOE_GGUF_I8: case QMOE_GGUF_I16: case QMOE_GGUF_I32: case QMOE_GGUF_I64: {
    int64_t i = 0;
    qmoe_gguf_value_i64(v, &i);
    fprintf(fp, "%" PRId64, i);
    break;
  }
  case QMOE_GGUF_F32: case QMOE_GGUF_F64: {
    double d = 0;
    qmoe_gguf_value_f64(v, &d);
    print_float(fp, d, v->type == QMOE_GGUF_F32, json);
    break;
  }
  case QMOE_GGUF_BOOL: fputs(((const unsigned char *)v->data)[0] ? "true" : "false", fp); break;
  case QMOE_GGUF_STRING: print_string(fp, v->data, v->count, full ? UINT64_MAX : SHORT_STRING, json); break;
  case QMOE_GGUF_ARRAY: {
    qmoe_gguf_iter it;
    qmoe_gguf_value e;
    uint64_t shown = full ? v->count : (v->count < SHORT_ARRAY ? v->count : SHORT_ARRAY);
    fputc('[', fp);
    qmoe_gguf_iter_init(&it, v);
    for (uint64_t i = 0; i < shown && qmoe_gguf_iter_next(&it, &e); i++) {
      if (i) fputs(", ", fp);
      print_value(fp, &e, full, json);
    }
    if (shown < v->count) fprintf(fp, ", ... (%" PRIu64 " more)", v->count - shown);
    fputc(']', fp);
    break;
  }
  default: fputs("?", fp);
  }
}

/* A key or tensor name for the text table: control bytes shown as '?' so a hostile name cannot drive the
 * terminal; at most cap-1 bytes. */
static const char *shown(const char *name, char *buf, size_t cap) {
  size_t i = 0;
  for (; name[i] && i + 1 < cap; i++) buf[i] = ((unsigned char)name[i] < 0x20 || name[i] == 0x7f) ? '?' : name[i];
  buf[i] = 0;
  return buf;
}

static void print_shape(FILE *fp, const qmoe_gguf_tensor *t, char *buf, size_t cap) {
  int n = snprintf(buf, cap, "[");
  for (int d = 0; d < t->n_dims && n > 0 && (size_t)n < cap; d++)
    n += snprintf(buf + n, cap - (size_t)n, "%s%" PRId64, d ? ", " : "", t->ne[d]);
  if (n > 0 && (size_t)n < cap) snprintf(buf + n, cap - (size_t)n, "]");
  if (fp) fputs(buf, fp);
}

/* For a name that is not valid UTF-8: `, "FIELD_hex": "6b65ff"` with its exact bytes. */
static void json_hex_field(FILE *fp, const char *field, const char *s) {
  size_t n = strlen(s);
  if (qmoe_utf8_check(s, n) < 0) return;
  fprintf(fp, ", \"%s_hex\": \"", field);
  for (size_t i = 0; i < n; i++) fprintf(fp, "%02x", (unsigned char)s[i]);
  fputc('"', fp);
}

static void inspect_json(FILE *fp, const qmoe_gguf *f, const char *problems) {
  fputs("{\"file\": ", fp);
  print_string(fp, qmoe_gguf_path(f), strlen(qmoe_gguf_path(f)), UINT64_MAX, 1);
  fprintf(fp, ", \"version\": %u, \"alignment\": %" PRIu64 ", \"data_offset\": %" PRIu64 ", \"size\": %" PRIu64 ",\n",
          qmoe_gguf_version(f), qmoe_gguf_alignment(f), qmoe_gguf_data_offset(f), qmoe_gguf_file_size(f));
  fputs(" \"metadata\": [", fp);
  for (int64_t i = 0; i < qmoe_gguf_kv_count(f); i++) {
    const qmoe_gguf_value *v = qmoe_gguf_kv_value(f, i);
    const char *k = qmoe_gguf_kv_key(f, i);
    fputs(i ? ",\n  {\"key\": " : "\n  {\"key\": ", fp);
    print_string(fp, k, strlen(k), UINT64_MAX, 1);
    json_hex_field(fp, "key", k);
    fprintf(fp, ", \"type\": \"%s\", ", qmoe_gguf_type_name_of_value(v->type));
    if (v->type == QMOE_GGUF_ARRAY) fprintf(fp, "\"elem_type\": \"%s\", ", qmoe_gguf_type_name_of_value(v->elem_type));
    fputs("\"value\": ", fp);
    print_value(fp, v, 1, 1);
    fputc('}', fp);
  }
  fputs("],\n \"tensors\": [", fp);
  for (int64_t i = 0; i < qmoe_gguf_tensor_count(f); i++) {
    const qmoe_gguf_tensor *t = qmoe_gguf_tensor_at(f, i);
    char shape[128];
    fputs(i ? ",\n  {\"name\": " : "\n  {\"name\": ", fp);
    print_string(fp, t->name, strlen(t->name), UINT64_MAX, 1);
    json_hex_field(fp, "name", t->name);
    fprintf(fp, ", \"type\": \"%s\", \"type_id\": %d, \"shape\": ", t->type_name, t->type);
    print_shape(fp, t, shape, sizeof shape);
    fprintf(fp, ", \"offset\": %" PRIu64 ", \"file_offset\": %" PRIu64 ", \"bytes\": %" PRIu64 "}", t->offset,
            t->file_offset, t->nbytes);
  }
  fputs("],\n \"problems\": [", fp);
  for (const char *p = problems; p && *p;) {
    const char *nl = strchr(p, '\n');
    size_t n = nl ? (size_t)(nl - p) : strlen(p);
    fputs(p == problems ? "\n  " : ",\n  ", fp);
    print_string(fp, p, n, UINT64_MAX, 1);
    p += n + (nl != NULL);
  }
  fputs("]}\n", fp);
}

static void inspect_text(FILE *fp, const qmoe_gguf *f, int full) {
  fprintf(fp, "%s: GGUF v%u, %" PRIu64 " bytes, alignment %" PRIu64 ", tensor data at offset %" PRIu64 "\n",
          qmoe_gguf_path(f), qmoe_gguf_version(f), qmoe_gguf_file_size(f), qmoe_gguf_alignment(f),
          qmoe_gguf_data_offset(f));
  int64_t nkv = qmoe_gguf_kv_count(f), nt = qmoe_gguf_tensor_count(f);
  int kw = 10;
  for (int64_t i = 0; i < nkv; i++) {
    int l = (int)strlen(qmoe_gguf_kv_key(f, i));
    if (l > kw) kw = l < 60 ? l : 60;
  }
  fprintf(fp, "\nmetadata: %" PRId64 " key%s\n", nkv, nkv == 1 ? "" : "s");
  for (int64_t i = 0; i < nkv; i++) {
    const qmoe_gguf_value *v = qmoe_gguf_kv_value(f, i);
    char type[48];
    if (v->type == QMOE_GGUF_ARRAY)
      snprintf(type, sizeof type, "[%s; %" PRIu64 "]", qmoe_gguf_type_name_of_value(v->elem_type), v->count);
    else
      snprintf(type, sizeof type, "%s", qmoe_gguf_type_name_of_value(v->type));
    char name[256];
    fprintf(fp, "%5" PRId64 "  %-*s  %-18s ", i, kw, shown(qmoe_gguf_kv_key(f, i), name, sizeof name), type);
    print_value(fp, v, full, 0);
    fputc('\n', fp);
  }
  int nw = 4;
  uint64_t total = 0;
  for (int64_t i = 0; i < nt; i++) {
    const qmoe_gguf_tensor *t = qmoe_gguf_tensor_at(f, i);
    int l = (int)strlen(t->name);
    if (l > nw) nw = l < 60 ? l : 60;
    total += t->nbytes;
  }
  fprintf(fp, "\ntensors: %" PRId64 " (%" PRIu64 " bytes of data)\n", nt, total);
  fprintf(fp, "%5s  %-*s  %-7s  %-22s  %12s  %12s\n", "#", nw, "name", "type", "shape", "bytes", "offset");
  for (int64_t i = 0; i < nt; i++) {
    const qmoe_gguf_tensor *t = qmoe_gguf_tensor_at(f, i);
    char shape[128], name[256];
    print_shape(NULL, t, shape, sizeof shape);
    fprintf(fp, "%5" PRId64 "  %-*s  %-7s  %-22s  %12" PRIu64 "  %12" PRIu64 "\n", i, nw, shown(t->name, name, sizeof name),
            t->type_name, shape,
            t->nbytes, t->file_offset);
  }
}

/* Collects hparams problems, one per line. */
typedef struct {
  char *text;
  size_t n, cap;
} problem_list;

static void add_problem(void *ctx, const char *msg) {
  problem_list *p = ctx;
  size_t k = strlen(msg);
  if (p->n + k + 2 > p->cap) {
    size_t cap = (p->cap ? 2 * p->cap : 1024) + k;
    char *t = realloc(p->text, cap);
    if (!t) return;
    p->text = t;
    p->cap = cap;
  }
  memcpy(p->text + p->n, msg, k);
  p->n += k;
  p->text[p->n++] = '\n';
  p->text[p->n] = 0;
}

static int run(int argc, char **argv) {
  const char *path = NULL, *seen_full = NULL, *seen_json = NULL, *seen_model = NULL;
  int full = 0, json = 0, as_model = 0;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--full")) {
      if (cli_once(&cmd_inspect, &seen_full, "--full")) return 2;
      full = 1;
    } else if (!strcmp(argv[i], "--json")) {
      if (cli_once(&cmd_inspect, &seen_json, "--json")) return 2;
      json = 1;
    } else if (!strcmp(argv[i], "--model")) {
      if (cli_once(&cmd_inspect, &seen_model, "--model")) return 2;
      as_model = 1;
    } else if (argv[i][0] == '-' && argv[i][1]) return cli_usage_error(&cmd_inspect, "unknown option '%s'", argv[i]);
    else if (!path) path = argv[i];
    else return cli_usage_error(&cmd_inspect, "one FILE.gguf only ('%s' is a second)", argv[i]);
  }
  if (!path) return cli_usage_error(&cmd_inspect, "missing FILE.gguf");
  qmoe_gguf *f;
  if (qmoe_gguf_open(path, &f) != 0) return cli_error("inspect", "%s", qmoe_last_error());
  /* A file with an architecture is a model: the counts a model needs are checked and problems reported. */
  problem_list problems = { 0 };
  if (as_model || qmoe_gguf_find_key(f, "general.architecture") >= 0) {
    qmoe_hparams hp;
    qmoe_hparams_read(f, &hp, add_problem, &problems);
  }
  if (json) inspect_json(stdout, f, problems.text);
  else inspect_text(stdout, f, full);
  qmoe_gguf_close(f);
  if (fflush(stdout) != 0) {
    free(problems.text);
    return cli_error("inspect", "writing the output failed");
  }
  int rc = 0;
  for (const char *p = problems.text; p && *p;) {
    const char *nl = strchr(p, '\n');
    if (as_model) rc = cli_error("inspect", "%.*s", (int)(nl - p), p);
    else fprintf(stderr, "qmoe inspect: warning: %.*s\n", (int)(nl - p), p);
    p = nl + 1;
  }
  free(problems.text);
  return rc;
}

const qmoe_command cmd_inspect = { "inspect", "show a GGUF file's metadata and tensor table", usage, run };
