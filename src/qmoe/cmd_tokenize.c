/* cmd_tokenize.c: `qmoe tokenize` (text -> token ids) and `qmoe detokenize` (ids -> text) with the
 * byte-level BPE tokenizer stored in a GGUF file (runtime/tokenizer.c). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include "cmd.h"

static const char tokenize_usage[] =
  "usage: qmoe tokenize -m FILE.gguf (-p TEXT | -f TEXTFILE) [--no-special] [--json | --pieces]\n"
  "Encodes UTF-8 text with the file's tokenizer (tokenizer.ggml.*: byte-level BPE, qwen2 pre-tokenizer) and\n"
  "prints the token ids, comma-separated on one line (the form `qmoe detokenize --tokens` and\n"
  "`qmoe run --tokens` read). Control tokens written in the text (\"<|im_start|>\") become their ids.\n"
  "  -m FILE.gguf   the model (or any GGUF file with a tokenizer)\n"
  "  -p TEXT        the text to encode\n"
  "  -f TEXTFILE    read the text from a file, bytes as they are ('-' for stdin)\n"
  "  --no-special   split control tokens' text like any other text\n"
  "  --json         print {\"file\": ..., \"n_tokens\": N, \"ids\": [...]}\n"
  "  --pieces       print one line per token: the id, a tab, and its bytes (\\xNN where not printable)\n"
  "example: qmoe tokenize -m model.gguf -p 'Hello, world!'\n";

static const char detokenize_usage[] =
  "usage: qmoe detokenize -m FILE.gguf (--tokens IDS | -f IDSFILE) [--no-special]\n"
  "Decodes token ids with the file's tokenizer and writes the bytes to stdout, unchanged (no newline added).\n"
  "  -m FILE.gguf   the model (or any GGUF file with a tokenizer)\n"
  "  --tokens IDS   ids separated by commas or spaces: 9707,11,1879\n"
  "  -f IDSFILE     read the ids from a file ('-' for stdin)\n"
  "  --no-special   leave control tokens (<|im_end|>, ...) out\n"
  "example: qmoe detokenize -m model.gguf --tokens 9707,11,1879\n";

/* Reads a whole file (or stdin for "-"); NULL on error with errno set. */
static char *read_all(const char *path, size_t *len) {
  FILE *fp = strcmp(path, "-") ? fopen(path, "rb") : stdin;
  if (!fp) return NULL;
  size_t cap = 1 << 16, n = 0;
  char *buf = malloc(cap);
  while (buf) {
    size_t k = fread(buf + n, 1, cap - n, fp);
    n += k;
    if (k == 0) break;
    if (n == cap) {
      char *nb = realloc(buf, cap *= 2);
      if (!nb) free(buf);
      buf = nb;
    }
  }
  int err = ferror(fp) ? (errno ? errno : EIO) : 0;
  if (fp != stdin) fclose(fp);
  if (err || !buf) {
    free(buf);
    errno = err ? err : ENOMEM;
    return NULL;
  }
  *len = n;
  return buf;
}

/* Options shared by both commands: -m, -p, -f, --tokens, flags. A repeated option is an error. */
typedef struct {
  const char *model, *text, *file, *tokens;
  int no_special, json, pieces;
} opts;

static int parse(const qmoe_command *c, int argc, char **argv, opts *o, int tokenize) {
  memset(o, 0, sizeof *o);
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    const char **slot = !strcmp(a, "-m") || !strcmp(a, "--model")  ? &o->model
                        : tokenize && (!strcmp(a, "-p") || !strcmp(a, "--prompt")) ? &o->text
                        : !strcmp(a, "-f") || !strcmp(a, "--file") ? &o->file
                        : !tokenize && !strcmp(a, "--tokens")      ? &o->tokens
                                                                   : NULL;
    int *flag = !strcmp(a, "--no-special")          ? &o->no_special
                : tokenize && !strcmp(a, "--json")   ? &o->json
                : tokenize && !strcmp(a, "--pieces") ? &o->pieces
                                                     : NULL;
    if (slot) {
      if (i + 1 >= argc) return cli_usage_error(c, "%s needs a value", a);
      if (*slot) return cli_usage_error(c, "%s is given twice", a);
      *slot = argv[++i];
    } else if (flag) {
      if (*flag) return cli_usage_error(c, "%s is given twice", a);
      *flag = 1;
    } else if (a[0] == '-' && a[1]) {
      return cli_usage_error(c, "unknown option '%s'", a);
    } else {
      return cli_usage_error(c, "unexpected argument '%s'", a);
    }
  }
  if (!o->model) return cli_usage_error(c, "missing -m FILE.gguf");
  const char *in = tokenize ? o->text : o->tokens;
  if (!in == !o->file) return cli_usage_error(c, "give exactly one of %s and -f", tokenize ? "-p TEXT" : "--tokens IDS");
  if (o->json && o->pieces) return cli_usage_error(c, "give at most one of --json and --pieces");
  return 0;
}

static int load(const char *cmd, const char *path, qmoe_tokenizer **t) {
  qmoe_gguf *f;
  if (qmoe_gguf_open(path, &f) != 0) return cli_error(cmd, "%s", qmoe_last_error());
  int rc = qmoe_tokenizer_load(f, t);
  qmoe_gguf_close(f);
  return rc ? cli_error(cmd, "%s", qmoe_last_error()) : 0;
}

static void json_string(FILE *fp, const char *s) {
  fputc('"', fp);
  for (; *s; s++) {
    unsigned char c = (unsigned char)*s;
    if (c == '"' || c == '\\') fprintf(fp, "\\%c", c);
    else if (c < 0x20) fprintf(fp, "\\u%04x", c);
    else fputc(c, fp);
  }
  fputc('"', fp);
}

static int valid_utf8(const unsigned char *s, size_t n) {
  for (size_t i = 0; i < n;) {
    unsigned c = s[i];
    size_t k = c < 0x80 ? 1 : c >= 0xC2 && c <= 0xDF ? 2 : c >= 0xE0 && c <= 0xEF ? 3 : c >= 0xF0 && c <= 0xF4 ? 4 : 0;
    if (!k || i + k > n) return 0;
    for (size_t j = 1; j < k; j++)
      if ((s[i + j] & 0xC0) != 0x80) return 0;
    if ((c == 0xE0 && s[i + 1] < 0xA0) || (c == 0xED && s[i + 1] > 0x9F) || (c == 0xF0 && s[i + 1] < 0x90) ||
        (c == 0xF4 && s[i + 1] > 0x8F))
      return 0;
    i += k;
  }
  return 1;
}

static void print_piece(FILE *fp, const char *b, size_t n) {
  int utf8 = valid_utf8((const unsigned char *)b, n);
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)b[i];
    if (c == '\\') fputs("\\\\", fp);
    else if (c < 0x20 || c == 0x7F || (c >= 0x80 && !utf8)) fprintf(fp, "\\x%02x", c);
    else fputc(c, fp);
  }
}

static int run_tokenize(int argc, char **argv) {
  opts o;
  int rc = parse(&cmd_tokenize, argc, argv, &o, 1);
  if (rc) return rc;
  char *text = NULL;
  size_t len;
  if (o.file) {
    text = read_all(o.file, &len);
    if (!text) return cli_error("tokenize", "cannot read %s: %s", o.file, strerror(errno));
  }
  qmoe_tokenizer *t = NULL;
  int32_t *ids = NULL;
  size_t n = 0;
  rc = 1;
  if (load("tokenize", o.model, &t)) goto done;
  if (qmoe_tokenizer_encode(t, text ? text : o.text, text ? len : strlen(o.text), !o.no_special, &ids, &n) != 0) {
    cli_error("tokenize", "%s", qmoe_last_error());
    goto done;
  }
  if (o.json) {
    fputs("{\"file\": ", stdout);
    json_string(stdout, o.model);
    printf(", \"n_tokens\": %zu, \"ids\": [", n);
    for (size_t i = 0; i < n; i++) printf("%s%d", i ? ", " : "", ids[i]);
    fputs("]}\n", stdout);
  } else if (o.pieces) {
    for (size_t i = 0; i < n; i++) {
      const char *b;
      size_t k;
      qmoe_tokenizer_token_bytes(t, ids[i], &b, &k);
      printf("%d\t", ids[i]);
      print_piece(stdout, b, k);
      fputc('\n', stdout);
    }
  } else {
    for (size_t i = 0; i < n; i++) printf("%s%d", i ? "," : "", ids[i]);
    fputc('\n', stdout);
  }
  if (fflush(stdout) != 0 || ferror(stdout)) {
    cli_error("tokenize", "writing to stdout failed");
    goto done;
  }
  rc = 0;
done:
  free(ids);
  free(text);
  qmoe_tokenizer_free(t);
  return rc;
}

/* Parses ids separated by commas and/or whitespace. 0, or 1 after an error message. */
static int parse_ids(const char *src, const char *s, size_t len, int64_t n_vocab, int32_t **ids, size_t *n) {
  size_t cap = 64, k = 0;
  int32_t *v = malloc(cap * sizeof *v);
  if (!v) return cli_error("detokenize", "out of memory");
  size_t i = 0;
  for (;;) {
    while (i < len && (s[i] == ',' || s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r')) i++;
    if (i >= len) break;
    size_t st = i;
    int64_t x = 0;
    while (i < len && s[i] >= '0' && s[i] <= '9') {
      x = x * 10 + (s[i] - '0');
      if (x > INT32_MAX) x = (int64_t)INT32_MAX + 1; /* saturate: reported as outside the vocabulary */
      i++;
    }
    if (i == st || (i < len && s[i] != ',' && s[i] != ' ' && s[i] != '\t' && s[i] != '\n' && s[i] != '\r')) {
      free(v);
      return cli_error("detokenize", "%s: byte %zu: expected a token id (a non-negative integer), found '%.20s'", src, i,
                       s + i);
    }
    if (x >= n_vocab) {
      free(v);
      return cli_error("detokenize", "%s: token id %lld (id number %zu) is outside the vocabulary (0..%lld)", src,
                       (long long)x, k + 1, (long long)n_vocab - 1);
    }
    if (k == cap) {
      int32_t *nv = realloc(v, (cap *= 2) * sizeof *v);
      if (!nv) {
        free(v);
        return cli_error("detokenize", "out of memory");
      }
      v = nv;
    }
    v[k++] = (int32_t)x;
  }
  *ids = v;
  *n = k;
  return 0;
}

static int run_detokenize(int argc, char **argv) {
  opts o;
  int rc = parse(&cmd_detokenize, argc, argv, &o, 0);
  if (rc) return rc;
  char *src = NULL, *text = NULL;
  size_t len = 0, tlen = 0, n = 0;
  int32_t *ids = NULL;
  qmoe_tokenizer *t = NULL;
  rc = 1;
  if (o.file) {
    src = read_all(o.file, &len);
    if (!src) return cli_error("detokenize", "cannot read %s: %s", o.file, strerror(errno));
  }
  if (load("detokenize", o.model, &t)) goto done;
  if (parse_ids(o.file ? o.file : "--tokens", src ? src : o.tokens, src ? len : strlen(o.tokens),
                qmoe_tokenizer_n_vocab(t), &ids, &n))
    goto done;
  if (qmoe_tokenizer_decode(t, ids, n, !o.no_special, &text, &tlen) != 0) {
    cli_error("detokenize", "%s", qmoe_last_error());
    goto done;
  }
  if (fwrite(text, 1, tlen, stdout) != tlen || fflush(stdout) != 0) {
    cli_error("detokenize", "writing to stdout failed");
    goto done;
  }
  rc = 0;
done:
  free(text);
  free(ids);
  free(src);
  qmoe_tokenizer_free(t);
  return rc;
}

const qmoe_command cmd_tokenize = { "tokenize", "encode text into token ids with a file's tokenizer", tokenize_usage,
                                    run_tokenize };
const qmoe_command cmd_detokenize = { "detokenize", "decode token ids into text with a file's tokenizer",
                                      detokenize_usage, run_detokenize };
