/* json.c: a small strict JSON (RFC 8259) parser for the files `qmoe convert` reads (config.json,
 * tokenizer.json, safetensors headers). Every node keeps its line and column; errors name FILE:LINE:COL. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "qmoe.h"

enum { JSON_MAX_DEPTH = 512 };

typedef struct {
  const char *name;
  const unsigned char *p, *end, *line_start;
  int line;
  const unsigned char *col_at; /* a position on the current line whose column is col (columns are counted */
  int col;                     /* forward from it, so a file on one long line stays linear) */
} parser;

static void *xrealloc(void *p, size_t n) {
  void *q = realloc(p, n ? n : 1);
  if (!q) {
    fprintf(stderr, "qmoe: out of memory (%zu bytes)\n", n);
    abort();
  }
  return q;
}

static int col_of(parser *ps, const unsigned char *at) {
  /* Columns count UTF-8 characters (continuation bytes do not start one), 1-based. */
  if (ps->col_at < ps->line_start || ps->col_at > at) ps->col_at = ps->line_start, ps->col = 1;
  for (const unsigned char *q = ps->col_at; q < at; q++) ps->col += (*q & 0xC0) != 0x80;
  ps->col_at = at;
  return ps->col;
}

static int fail_at(parser *ps, const unsigned char *at, const char *fmt, const char *arg) {
  char msg[256];
  snprintf(msg, sizeof msg, fmt, arg ? arg : "");
  qmoe_set_error("%s:%d:%d: %s", ps->name, ps->line, col_of(ps, at), msg);
  return QMOE_EFORMAT;
}

static void skip_ws(parser *ps) {
  while (ps->p < ps->end) {
    unsigned char c = *ps->p;
    if (c == '\n') {
      ps->line++;
      ps->line_start = ps->p + 1;
    } else if (c != ' ' && c != '\t' && c != '\r') {
      return;
    }
    ps->p++;
  }
}

static const char *describe(const parser *ps) {
  static _Thread_local char buf[32];
  if (ps->p >= ps->end) return "end of input";
  unsigned char c = *ps->p;
  if (c >= 0x20 && c < 0x7F) snprintf(buf, sizeof buf, "'%c'", c);
  else snprintf(buf, sizeof buf, "byte 0x%02X", c);
  return buf;
}

static void put_utf8(char **s, size_t *n, size_t *cap, uint32_t cp) {
  if (*n + 4 >= *cap) {
    *cap = *cap ? *cap * 2 : 32;
    *s = xrealloc(*s, *cap);
  }
  char *o = *s + *n;
  if (cp < 0x80) o[0] = (char)cp, *n += 1;
  else if (cp < 0x800) o[0] = (char)(0xC0 | cp >> 6), o[1] = (char)(0x80 | (cp & 0x3F)), *n += 2;
  else if (cp < 0x10000)
    o[0] = (char)(0xE0 | cp >> 12), o[1] = (char)(0x80 | ((cp >> 6) & 0x3F)), o[2] = (char)(0x80 | (cp & 0x3F)), *n += 3;
  else
    o[0] = (char)(0xF0 | cp >> 18), o[1] = (char)(0x80 | ((cp >> 12) & 0x3F)), o[2] = (char)(0x80 | ((cp >> 6) & 0x3F)),
    o[3] = (char)(0x80 | (cp & 0x3F)), *n += 4;
}

/* One UTF-8 sequence at p (shortest form, no surrogates, <= U+10FFFF); its length, or 0 if invalid. */
static int utf8_len(const unsigned char *p, const unsigned char *end, uint32_t *cp) {
  unsigned char c = p[0];
  int n;
  uint32_t v;
  if (c < 0x80) return *cp = c, 1;
  if (c >= 0xC2 && c <= 0xDF) n = 2, v = c & 0x1F;
  else if (c >= 0xE0 && c <= 0xEF) n = 3, v = c & 0x0F;
  else if (c >= 0xF0 && c <= 0xF4) n = 4, v = c & 0x07;
  else return 0;
  if (end - p < n) return 0;
  for (int i = 1; i < n; i++) {
    if ((p[i] & 0xC0) != 0x80) return 0;
    v = v << 6 | (p[i] & 0x3F);
  }
  if ((n == 3 && v < 0x800) || (n == 4 && (v < 0x10000 || v > 0x10FFFF)) || (v >= 0xD800 && v <= 0xDFFF)) return 0;
  *cp = v;
  return n;
}

static int hex4(const unsigned char *p, const unsigned char *end, uint32_t *out) {
  if (end - p < 4) return -1;
  uint32_t v = 0;
  for (int i = 0; i < 4; i++) {
    unsigned char c = p[i];
    v <<= 4;
    if (c >= '0' && c <= '9') v |= (uint32_t)(c - '0');
    else if (c >= 'a' && c <= 'f') v |= (uint32_t)(c - 'a' + 10);
    else if (c >= 'A' && c <= 'F') v |= (uint32_t)(c - 'A' + 10);
    else return -1;
  }
  *out = v;
  return 0;
}

/* A string at ps->p (on the opening quote): a NUL-terminated, decoded UTF-8 copy in *out (length *len). */
static int parse_string(parser *ps, char **out, size_t *len) {
  const unsigned char *start = ps->p;
  char *s = NULL;
  size_t n = 0, cap = 0;
  ps->p++;
  for (;;) {
    if (ps->p >= ps->end) {
      free(s);
      return fail_at(ps, start, "unterminated string%s", "");
    }
    unsigned char c = *ps->p;
    if (c == '"') break;
    if (c < 0x20) {
      free(s);
      return fail_at(ps, ps->p, "control character in a string (write it as a \\u escape)%s", "");
    }
    uint32_t cp;
    if (c == '\\') {
      const unsigned char *esc = ps->p;
      if (ps->end - ps->p < 2) {
        free(s);
        return fail_at(ps, start, "unterminated string%s", "");
      }
      char e = (char)ps->p[1];
      ps->p += 2;
      switch (e) {
      case '"': cp = '"'; break;
      case '\\': cp = '\\'; break;
      case '/': cp = '/'; break;
      case 'b': cp = '\b'; break;
      case 'f': cp = '\f'; break;
      case 'n': cp = '\n'; break;
      case 'r': cp = '\r'; break;
      case 't': cp = '\t'; break;
      case 'u':
        if (hex4(ps->p, ps->end, &cp)) {
          free(s);
          return fail_at(ps, esc, "bad \\u escape (needs 4 hex digits)%s", "");
        }
        ps->p += 4;
        if (cp >= 0xDC00 && cp <= 0xDFFF) {
          free(s);
          return fail_at(ps, esc, "lone low surrogate in a \\u escape%s", "");
        }
        if (cp >= 0xD800 && cp <= 0xDBFF) {
          uint32_t lo;
          if (ps->end - ps->p < 6 || ps->p[0] != '\\' || ps->p[1] != 'u' || hex4(ps->p + 2, ps->end, &lo) ||
              lo < 0xDC00 || lo > 0xDFFF) {
            free(s);
            return fail_at(ps, esc, "high surrogate \\u escape not followed by a low surrogate%s", "");
          }
          ps->p += 6;
          cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
        }
        break;
      default:
        free(s);
        return fail_at(ps, esc, "unknown escape in a string%s", "");
      }
      put_utf8(&s, &n, &cap, cp);
      continue;
    }
    int k = utf8_len(ps->p, ps->end, &cp);
    if (!k) {
      free(s);
      return fail_at(ps, ps->p, "invalid UTF-8 in a string%s", "");
    }
    ps->p += k;
    put_utf8(&s, &n, &cap, cp);
  }
  ps->p++;
  if (!s) s = xrealloc(NULL, 1);
  s[n] = 0;
  *out = s;
  *len = n;
  return 0;
}

static int parse_number(parser *ps, qmoe_json *v) {
  const unsigned char *s = ps->p, *q = s;
  if (q < ps->end && *q == '-') q++;
  if (q >= ps->end || *q < '0' || *q > '9') return fail_at(ps, s, "bad number%s", "");
  if (*q == '0') {
    q++;
    if (q < ps->end && *q >= '0' && *q <= '9') return fail_at(ps, s, "number with a leading zero%s", "");
  } else {
    while (q < ps->end && *q >= '0' && *q <= '9') q++;
  }
  int integer = 1;
  if (q < ps->end && *q == '.') {
    integer = 0;
    q++;
    if (q >= ps->end || *q < '0' || *q > '9') return fail_at(ps, s, "bad number: a digit must follow '.'%s", "");
    while (q < ps->end && *q >= '0' && *q <= '9') q++;
  }
  if (q < ps->end && (*q == 'e' || *q == 'E')) {
    integer = 0;
    q++;
    if (q < ps->end && (*q == '+' || *q == '-')) q++;
    if (q >= ps->end || *q < '0' || *q > '9') return fail_at(ps, s, "bad number: a digit must follow the exponent%s", "");
    while (q < ps->end && *q >= '0' && *q <= '9') q++;
  }
  size_t n = (size_t)(q - s);
  char small[64], *buf = n < sizeof small ? small : xrealloc(NULL, n + 1);
  memcpy(buf, s, n);
  buf[n] = 0;
  errno = 0;
  v->number = strtod(buf, NULL);
  v->is_integer = 0;
  if (integer) {
    errno = 0;
    long long ll = strtoll(buf, NULL, 10);
    if (errno == 0) v->is_integer = 1, v->integer = ll;
  }
  if (buf != small) free(buf);
  if (!isfinite(v->number)) return fail_at(ps, s, "number out of range%s", "");
  v->type = QMOE_JSON_NUMBER;
  ps->p = q;
  return 0;
}

static int parse_value(parser *ps, qmoe_json *v, int depth);

static int cmp_keys(const void *a, const void *b) {
  const qmoe_json *x = *(const qmoe_json *const *)a, *y = *(const qmoe_json *const *)b;
  size_t n = x->key_len < y->key_len ? x->key_len : y->key_len;
  int c = memcmp(x->key, y->key, n);
  if (c) return c;
  if (x->key_len != y->key_len) return x->key_len < y->key_len ? -1 : 1;
  return x < y ? -1 : x > y; /* equal keys: file order */
}

static int check_duplicates(parser *ps, const qmoe_json *v) {
  const qmoe_json **idx = xrealloc(NULL, v->count * sizeof *idx);
  for (size_t i = 0; i < v->count; i++) idx[i] = &v->items[i];
  qsort(idx, v->count, sizeof *idx, cmp_keys);
  for (size_t i = 1; i < v->count; i++) {
    if (idx[i]->key_len == idx[i - 1]->key_len && !memcmp(idx[i]->key, idx[i - 1]->key, idx[i]->key_len)) {
      qmoe_set_error("%s:%d:%d: duplicate key \"%.200s\" in the object (its value here; the first one is at %d:%d)", ps->name,
                     idx[i]->line, idx[i]->col, idx[i]->key, idx[i - 1]->line, idx[i - 1]->col);
      free(idx);
      return QMOE_EFORMAT;
    }
  }
  free(idx);
  return 0;
}

static int parse_container(parser *ps, qmoe_json *v, int depth, int object) {
  const unsigned char *open = ps->p;
  char close = object ? '}' : ']';
  size_t cap = 0;
  v->type = object ? QMOE_JSON_OBJECT : QMOE_JSON_ARRAY;
  ps->p++;
  skip_ws(ps);
  if (ps->p < ps->end && *ps->p == close) {
    ps->p++;
    return 0;
  }
  for (;;) {
    skip_ws(ps);
    if (v->count == cap) {
      cap = cap ? cap * 2 : 4;
      v->items = xrealloc(v->items, cap * sizeof *v->items);
    }
    qmoe_json *item = &v->items[v->count];
    memset(item, 0, sizeof *item);
    if (object) {
      if (ps->p >= ps->end || *ps->p != '"')
        return fail_at(ps, ps->p, "expected a key string in the object, found %s", describe(ps));
      item->line = ps->line;
      item->col = col_of(ps, ps->p);
      const unsigned char *kat = ps->p;
      int rc = parse_string(ps, &item->key, &item->key_len);
      if (rc) return rc;
      v->count++; /* owns the key from here on */
      if (v->count <= 16) { /* small objects here; large ones are checked once, sorted, at the end */
        for (size_t i = 0; i + 1 < v->count; i++)
          if (v->items[i].key_len == item->key_len && !memcmp(v->items[i].key, item->key, item->key_len))
            return fail_at(ps, kat, "duplicate key \"%s\" in the object", item->key);
      }
      skip_ws(ps);
      if (ps->p >= ps->end || *ps->p != ':') return fail_at(ps, ps->p, "expected ':' after the key, found %s", describe(ps));
      ps->p++;
      skip_ws(ps);
      char *key = item->key;
      size_t key_len = item->key_len;
      rc = parse_value(ps, item, depth + 1);
      item->key = key, item->key_len = key_len;
      if (rc) return rc;
    } else {
      v->count++;
      int rc = parse_value(ps, item, depth + 1);
      if (rc) return rc;
    }
    skip_ws(ps);
    if (ps->p < ps->end && *ps->p == ',') {
      ps->p++;
      skip_ws(ps);
      if (ps->p < ps->end && *ps->p == close) return fail_at(ps, ps->p, "trailing comma before '%s'", object ? "}" : "]");
      continue;
    }
    if (ps->p < ps->end && *ps->p == close) {
      ps->p++;
      return object && v->count > 16 ? check_duplicates(ps, v) : 0;
    }
    if (ps->p >= ps->end)
      return fail_at(ps, open, object ? "unterminated object (no closing '}')%s" : "unterminated array (no closing ']')%s", "");
    return fail_at(ps, ps->p, object ? "expected ',' or '}' in the object, found %s" : "expected ',' or ']' in the array, found %s",
                   describe(ps));
  }
}

static int parse_value(parser *ps, qmoe_json *v, int depth) {
  if (depth > JSON_MAX_DEPTH) return fail_at(ps, ps->p, "nested deeper than %s levels", "512");
  v->line = ps->line;
  v->col = col_of(ps, ps->p);
  if (ps->p >= ps->end) return fail_at(ps, ps->p, "expected a value, found end of input%s", "");
  unsigned char c = *ps->p;
  if (c == '{' || c == '[') return parse_container(ps, v, depth, c == '{');
  if (c == '"') {
    v->type = QMOE_JSON_STRING;
    return parse_string(ps, &v->string, &v->len);
  }
  if (c == '-' || (c >= '0' && c <= '9')) return parse_number(ps, v);
  static const struct { const char *word; int type; } words[] = {
    { "true", QMOE_JSON_TRUE }, { "false", QMOE_JSON_FALSE }, { "null", QMOE_JSON_NULL } };
  for (int i = 0; i < 3; i++) {
    size_t n = strlen(words[i].word);
    if ((size_t)(ps->end - ps->p) >= n && !memcmp(ps->p, words[i].word, n)) {
      ps->p += n;
      v->type = words[i].type;
      return 0;
    }
  }
  return fail_at(ps, ps->p, "expected a value (object, array, string, number, true, false or null), found %s", describe(ps));
}

static void free_node(qmoe_json *v) {
  for (size_t i = 0; i < v->count; i++) {
    free(v->items[i].key);
    free_node(&v->items[i]);
  }
  free(v->items);
  free(v->string);
}

void qmoe_json_free(qmoe_json *v) {
  if (!v) return;
  free_node(v);
  free(v);
}

int qmoe_json_parse(const void *text, size_t len, const char *name, qmoe_json **out) {
  parser ps = { name ? name : "<json>", text, (const unsigned char *)text + len, text, 1, text, 1 };
  *out = NULL;
  qmoe_json *root = xrealloc(NULL, sizeof *root);
  memset(root, 0, sizeof *root);
  if (len >= 3 && !memcmp(text, "\xEF\xBB\xBF", 3)) ps.p += 3, ps.line_start += 3; /* a UTF-8 byte order mark */
  skip_ws(&ps);
  int rc = parse_value(&ps, root, 0);
  if (!rc) {
    skip_ws(&ps);
    if (ps.p < ps.end) rc = fail_at(&ps, ps.p, "unexpected %s after the JSON value", describe(&ps));
  }
  if (rc) {
    qmoe_json_free(root);
    return rc;
  }
  *out = root;
  return 0;
}

int qmoe_json_read_file(const char *path, qmoe_json **out) {
  *out = NULL;
  FILE *fp = fopen(path, "rb");
  if (!fp) {
    qmoe_set_error("%s: cannot open: %s", path, strerror(errno));
    return QMOE_EIO;
  }
  size_t cap = 1 << 16, n = 0;
  char *buf = xrealloc(NULL, cap);
  for (;;) {
    if (n == cap) buf = xrealloc(buf, cap *= 2);
    size_t k = fread(buf + n, 1, cap - n, fp);
    n += k;
    if (k == 0) break;
  }
  int err = ferror(fp);
  fclose(fp);
  if (err) {
    free(buf);
    qmoe_set_error("%s: read error", path);
    return QMOE_EIO;
  }
  int rc = qmoe_json_parse(buf, n, path, out);
  free(buf);
  return rc;
}

const qmoe_json *qmoe_json_get(const qmoe_json *obj, const char *key) {
  if (!obj || obj->type != QMOE_JSON_OBJECT) return NULL;
  size_t n = strlen(key);
  for (size_t i = 0; i < obj->count; i++)
    if (obj->items[i].key_len == n && !memcmp(obj->items[i].key, key, n)) return &obj->items[i];
  return NULL;
}

const char *qmoe_json_type_name(int type) {
  switch (type) {
  case QMOE_JSON_NULL: return "null";
  case QMOE_JSON_FALSE: case QMOE_JSON_TRUE: return "a boolean";
  case QMOE_JSON_NUMBER: return "a number";
  case QMOE_JSON_STRING: return "a string";
  case QMOE_JSON_ARRAY: return "an array";
  case QMOE_JSON_OBJECT: return "an object";
  default: return "?";
  }
}
