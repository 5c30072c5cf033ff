/* pv_util.c: small pieces the validator shares — how a YAML scalar reads (int, float, string, ...),
 * near-miss suggestions, ID / semver / date formats, and quoting user text inside messages. */
#include "pv.h"
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static int is_digit(int c) { return c >= '0' && c <= '9'; }
static int is_xdigit_c(int c) { return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'); }
static int is_lower(int c) { return c >= 'a' && c <= 'z'; }
static int is_upper(int c) { return c >= 'A' && c <= 'Z'; }
static int is_alpha(int c) { return is_lower(c) || is_upper(c); }

/* [-+]?(0|[1-9][0-9]*) or [-+]?0[xX][0-9a-fA-F]+; *leading_zero set for "007". */
static int looks_int(const char *s, size_t len, int *leading_zero) {
  size_t i = 0;
  *leading_zero = 0;
  if (i < len && (s[i] == '-' || s[i] == '+')) i++;
  if (i + 1 < len && s[i] == '0' && (s[i + 1] == 'x' || s[i + 1] == 'X')) {
    size_t j = i + 2;
    if (j >= len) return 0;
    for (; j < len; j++)
      if (!is_xdigit_c((unsigned char)s[j])) return 0;
    return 1;
  }
  if (i >= len) return 0;
  size_t start = i;
  for (; i < len; i++)
    if (!is_digit((unsigned char)s[i])) return 0;
  if (s[start] == '0' && len - start > 1) *leading_zero = 1;
  return 1;
}

/* [-+]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][-+]?[0-9]+)? with a '.' or an exponent. */
static int looks_float(const char *s, size_t len) {
  size_t i = 0, digits = 0;
  int dot = 0, exp = 0;
  if (i < len && (s[i] == '-' || s[i] == '+')) i++;
  while (i < len && is_digit((unsigned char)s[i])) { i++; digits++; }
  if (i < len && s[i] == '.') {
    dot = 1;
    i++;
    while (i < len && is_digit((unsigned char)s[i])) { i++; digits++; }
  }
  if (!digits) return 0;
  if (i < len && (s[i] == 'e' || s[i] == 'E')) {
    exp = 1;
    i++;
    if (i < len && (s[i] == '-' || s[i] == '+')) i++;
    size_t ed = 0;
    while (i < len && is_digit((unsigned char)s[i])) { i++; ed++; }
    if (!ed) return 0;
  }
  return i == len && (dot || exp);
}

pv_sclass pv_classify(const qy_node *n, int64_t *iv, double *dv) {
  if (n->kind == QY_MAP) return PV_SC_MAP;
  if (n->kind == QY_SEQ) return PV_SC_SEQ;
  if (n->style != QY_PLAIN) return PV_SC_STR;
  const char *s = n->str;
  size_t len = n->len;
  if (len == 0 || !strcmp(s, "~") || !strcmp(s, "null")) return PV_SC_NULL;
  if (!strcmp(s, "true") || !strcmp(s, "false")) {
    if (iv) *iv = s[0] == 't';
    return PV_SC_BOOL;
  }
  if (memchr(s, 0, len)) return PV_SC_STR;
  int lz;
  if (looks_int(s, len, &lz)) {
    if (lz) return PV_SC_BADNUM;
    errno = 0;
    char *end;
    long long v = strtoll(s, &end, 0);
    if (errno == ERANGE || *end) return PV_SC_BADNUM;
    if (iv) *iv = v;
    if (dv) *dv = (double)v;
    return n->tag == QY_TAG_FLOAT ? PV_SC_FLOAT : PV_SC_INT; /* !!float 128 is the float 128.0 */
  }
  if (looks_float(s, len)) {
    errno = 0;
    char *end;
    double v = strtod(s, &end);
    if (*end || !isfinite(v)) return PV_SC_BADNUM;
    if (dv) *dv = v;
    return PV_SC_FLOAT;
  }
  return PV_SC_STR;
}

const char *pv_sclass_name(pv_sclass c) {
  switch (c) {
  case PV_SC_NULL: return "null (an empty value)";
  case PV_SC_BOOL: return "a bool";
  case PV_SC_INT: return "an int";
  case PV_SC_FLOAT: return "a float";
  case PV_SC_STR: return "a string";
  case PV_SC_SEQ: return "a list";
  case PV_SC_MAP: return "a mapping";
  case PV_SC_BADNUM: return "a malformed number";
  }
  return "?";
}

enum { ED_MAX = 64 };

int pv_edit_distance(const char *a, const char *b) {
  size_t n = strlen(a), m = strlen(b);
  if (n > ED_MAX) n = ED_MAX;
  if (m > ED_MAX) m = ED_MAX;
  int d[ED_MAX + 1][ED_MAX + 1];
  for (size_t i = 0; i <= n; i++) d[i][0] = (int)i;
  for (size_t j = 0; j <= m; j++) d[0][j] = (int)j;
  for (size_t i = 1; i <= n; i++) {
    for (size_t j = 1; j <= m; j++) {
      int cost = a[i - 1] == b[j - 1] ? 0 : 1;
      int v = d[i - 1][j] + 1;
      if (d[i][j - 1] + 1 < v) v = d[i][j - 1] + 1;
      if (d[i - 1][j - 1] + cost < v) v = d[i - 1][j - 1] + cost;
      if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] && d[i - 2][j - 2] + 1 < v)
        v = d[i - 2][j - 2] + 1; /* transposition */
      d[i][j] = v;
    }
  }
  return d[n][m];
}

const char *pv_suggest(const char *word, const char *const *cands, size_t n) {
  size_t len = strlen(word);
  if (len == 0 || len > ED_MAX) return NULL;
  /* A typo changes a few characters: one for short words, up to a third of a long one. */
  int limit = len <= 3 ? 1 : len <= 8 ? 2 : (int)(len / 3);
  const char *best = NULL;
  int best_d = limit + 1;
  for (size_t i = 0; i < n; i++) {
    if (!cands[i] || strlen(cands[i]) > ED_MAX) continue;
    int dist = pv_edit_distance(word, cands[i]);
    if (dist > 0 && dist < best_d) {
      best_d = dist;
      best = cands[i];
    }
  }
  return best;
}

/* PREFIX followed by [A-Z0-9-]+ */
static int match_id(const char *prefix, const char *s, size_t len) {
  size_t pl = strlen(prefix);
  if (len <= pl || strncmp(s, prefix, pl) != 0) return 0;
  for (size_t i = pl; i < len; i++) {
    int c = (unsigned char)s[i];
    if (!is_upper(c) && !is_digit(c) && c != '-') return 0;
  }
  return 1;
}

/* Dot-separated identifiers of [0-9A-Za-z-]; numeric ones without leading zeros when NUMERIC_STRICT. */
static int semver_idents(const char *s, size_t len, int numeric_strict) {
  if (len == 0) return 0;
  size_t start = 0;
  for (size_t i = 0; i <= len; i++) {
    if (i == len || s[i] == '.') {
      size_t n = i - start;
      if (n == 0) return 0;
      int all_digits = 1;
      for (size_t j = start; j < i; j++) {
        int c = (unsigned char)s[j];
        if (!is_alpha(c) && !is_digit(c) && c != '-') return 0;
        if (!is_digit(c)) all_digits = 0;
      }
      if (numeric_strict && all_digits && n > 1 && s[start] == '0') return 0;
      start = i + 1;
    }
  }
  return 1;
}

typedef struct { unsigned long long part[3]; const char *pre; size_t pre_len; } semver;

static int semver_parse(const char *s, size_t len, semver *v) {
  size_t i = 0;
  for (int k = 0; k < 3; k++) {
    size_t start = i;
    unsigned long long x = 0;
    while (i < len && is_digit((unsigned char)s[i])) {
      if (x > 999999999ull) return -1; /* keeps the arithmetic far from overflow */
      x = x * 10 + (unsigned)(s[i] - '0');
      i++;
    }
    if (i == start || (i - start > 1 && s[start] == '0')) return -1;
    v->part[k] = x;
    if (k < 2) {
      if (i >= len || s[i] != '.') return -1;
      i++;
    }
  }
  v->pre = NULL;
  v->pre_len = 0;
  if (i < len && s[i] == '-') {
    size_t start = ++i;
    while (i < len && s[i] != '+') i++;
    if (!semver_idents(s + start, i - start, 1)) return -1;
    v->pre = s + start;
    v->pre_len = i - start;
  }
  if (i < len && s[i] == '+') {
    i++;
    if (!semver_idents(s + i, len - i, 0)) return -1;
    i = len;
  }
  return i == len ? 0 : -1;
}

/* Precedence of prerelease identifiers (semver 2.0.0 §11). */
static int pre_cmp(const semver *a, const semver *b) {
  if (!a->pre && !b->pre) return 0;
  if (!a->pre) return 1; /* a release ranks above its prereleases */
  if (!b->pre) return -1;
  const char *p = a->pre, *pe = a->pre + a->pre_len, *q = b->pre, *qe = b->pre + b->pre_len;
  while (p < pe && q < qe) {
    const char *pd = memchr(p, '.', (size_t)(pe - p)), *qd = memchr(q, '.', (size_t)(qe - q));
    if (!pd) pd = pe;
    if (!qd) qd = qe;
    size_t pn = (size_t)(pd - p), qn = (size_t)(qd - q);
    int pnum = 1, qnum = 1;
    for (size_t i = 0; i < pn; i++) if (!is_digit((unsigned char)p[i])) pnum = 0;
    for (size_t i = 0; i < qn; i++) if (!is_digit((unsigned char)q[i])) qnum = 0;
    int c;
    if (pnum && qnum) c = pn != qn ? (pn < qn ? -1 : 1) : memcmp(p, q, pn);
    else if (pnum) c = -1;
    else if (qnum) c = 1;
    else {
      c = memcmp(p, q, pn < qn ? pn : qn);
      if (!c && pn != qn) c = pn < qn ? -1 : 1;
    }
    if (c) return c < 0 ? -1 : 1;
    p = pd < pe ? pd + 1 : pe;
    q = qd < qe ? qd + 1 : qe;
  }
  if (p < pe) return 1;
  if (q < qe) return -1;
  return 0;
}

int pv_semver_cmp(const char *a, const char *b) {
  semver x, y;
  if (semver_parse(a, strlen(a), &x) || semver_parse(b, strlen(b), &y)) return 0;
  for (int k = 0; k < 3; k++)
    if (x.part[k] != y.part[k]) return x.part[k] < y.part[k] ? -1 : 1;
  return pre_cmp(&x, &y);
}

static int match_date(const char *s, size_t len) {
  if (len != 10 || s[4] != '-' || s[7] != '-') return 0;
  for (size_t i = 0; i < 10; i++)
    if (i != 4 && i != 7 && !is_digit((unsigned char)s[i])) return 0;
  int y = atoi(s), m = (s[5] - '0') * 10 + (s[6] - '0'), d = (s[8] - '0') * 10 + (s[9] - '0');
  static const int days[12] = { 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 };
  if (m < 1 || m > 12 || d < 1) return 0;
  int leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
  int max = days[m - 1] + (m == 2 && leap);
  return d <= max;
}

int pv_match(pv_pattern p, const char *s, size_t len) {
  switch (p) {
  case PV_PAT_NONE: return 1;
  case PV_PAT_NAME:
    if (len == 0 || len > 64 || !is_lower((unsigned char)s[0])) return 0;
    for (size_t i = 1; i < len; i++) {
      int c = (unsigned char)s[i];
      if (!is_lower(c) && !is_digit(c) && c != '_') return 0;
    }
    return 1;
  case PV_PAT_IDENT:
    if (len == 0 || len > 64 || !(is_alpha((unsigned char)s[0]) || s[0] == '_')) return 0;
    for (size_t i = 1; i < len; i++) {
      int c = (unsigned char)s[i];
      if (!is_alpha(c) && !is_digit(c) && c != '_') return 0;
    }
    return 1;
  case PV_PAT_MODEL_ID:
    if (len == 0 || len > 64 || !(is_lower((unsigned char)s[0]) || is_digit((unsigned char)s[0]))) return 0;
    for (size_t i = 1; i < len; i++) {
      int c = (unsigned char)s[i];
      if (!is_lower(c) && !is_digit(c) && c != '-' && c != '.' && c != '_') return 0;
    }
    return 1;
  case PV_PAT_FALSIFY: return match_id("FALSIFY-", s, len);
  case PV_PAT_AC: return match_id("AC-", s, len);
  case PV_PAT_EQ: return match_id("EQ-", s, len);
  case PV_PAT_IMPL: return match_id("IMPL-", s, len);
  case PV_PAT_SEMVER: {
    semver v;
    return semver_parse(s, len, &v) == 0;
  }
  case PV_PAT_DATE: return match_date(s, len);
  case PV_PAT_NONBLANK:
    for (size_t i = 0; i < len; i++)
      if (s[i] != ' ' && s[i] != '\t' && s[i] != '\n' && s[i] != '\r') return 1;
    return 0;
  }
  return 0;
}

const char *pv_pattern_hint(pv_pattern p) {
  switch (p) {
  case PV_PAT_NONE: return "";
  case PV_PAT_NAME: return "a lowercase name matching [a-z][a-z0-9_]* (at most 64 characters), like q4_k";
  case PV_PAT_IDENT: return "an identifier matching [A-Za-z_][A-Za-z0-9_]* (at most 64 characters)";
  case PV_PAT_MODEL_ID: return "a lowercase id matching [a-z0-9][a-z0-9._-]*, like qwen3-moe-forward-v1";
  case PV_PAT_FALSIFY: return "an id matching FALSIFY-[A-Z0-9-]+, like FALSIFY-STAGE-PARITY-F32";
  case PV_PAT_AC: return "an id matching AC-[A-Z0-9-]+, like AC-STAGE-PARITY";
  case PV_PAT_EQ: return "an id matching EQ-[A-Z0-9-]+, like EQ-RMSNORM";
  case PV_PAT_IMPL: return "an id matching IMPL-[A-Z0-9-]+, like IMPL-CPU-REFERENCE";
  case PV_PAT_SEMVER: return "a semantic version MAJOR.MINOR.PATCH (no leading zeros), like 0.1.0";
  case PV_PAT_DATE: return "an ISO date YYYY-MM-DD naming a real day, like 2026-11-22";
  case PV_PAT_NONBLANK: return "non-blank text";
  }
  return "";
}

const char *pv_quote(char *buf, size_t size, const char *s, size_t len) {
  static const char hex[] = "0123456789abcdef";
  size_t o = 0, limit = size > 8 ? size - 8 : 0; /* room for an escape and "..." */
  for (size_t i = 0; i < len; i++) {
    unsigned char c = (unsigned char)s[i];
    if (o >= limit) {
      while (o > 0 && ((unsigned char)buf[o - 1] & 0xC0) == 0x80) o--; /* do not cut a UTF-8 character */
      if (o > 0 && ((unsigned char)buf[o - 1] & 0xC0) == 0xC0) o--;
      memcpy(buf + o, "...", 3);
      o += 3;
      break;
    }
    if (c < 0x20 || c == 0x7f) {
      buf[o++] = '\\';
      if (c == '\n') buf[o++] = 'n';
      else if (c == '\t') buf[o++] = 't';
      else {
        buf[o++] = 'x';
        buf[o++] = hex[c >> 4];
        buf[o++] = hex[c & 15];
      }
    } else {
      buf[o++] = (char)c;
    }
  }
  buf[o] = 0;
  return buf;
}
