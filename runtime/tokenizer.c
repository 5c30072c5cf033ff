/* tokenizer.c: the byte-level BPE tokenizer of a GGUF file (tokenizer.ggml.model "gpt2", pre "qwen2"):
 * loading and checking the vocabulary, the qwen2 pre-tokenizer split, BPE merging, decoding, ChatML. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "qmoe.h"
#include "tokenizer_unicode.h"

/* GGUF token types (llama.cpp's numbering). */
enum { TT_NORMAL = 1, TT_UNKNOWN = 2, TT_CONTROL = 3, TT_USER_DEFINED = 4, TT_UNUSED = 5, TT_BYTE = 6 };

/* Ids are int32 and a few tables are indexed by them; far beyond any real vocabulary (Qwen: 151936). */
#define MAX_TOKENS (1 << 26)

/* One allocation policy: out of memory aborts with a message. */
static void *xrealloc(void *p, size_t n) {
  void *q = realloc(p, n ? n : 1);
  if (!q) {
    fprintf(stderr, "qmoe: out of memory (%zu bytes) in the tokenizer\n", n);
    abort();
  }
  return q;
}
static void *xcalloc(size_t n, size_t size) {
  void *q = calloc(n ? n : 1, size ? size : 1);
  if (!q) {
    fprintf(stderr, "qmoe: out of memory (%zu x %zu bytes) in the tokenizer\n", n, size);
    abort();
  }
  return q;
}

/* ---- GPT-2's byte <-> unicode mapping ---------------------------------------------------------------
 * Printable bytes '!'..'~', 0xA1..0xAC and 0xAE..0xFF stand for themselves; the other 68 bytes (controls,
 * space, 0x7F..0xA0, 0xAD), in increasing order, stand for U+0100, U+0101, ... */
static uint32_t byte_to_cp(unsigned b) {
  if ((b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE)) return b;
  unsigned n = 0; /* how many non-printable bytes come before b */
  for (unsigned x = 0; x < b; x++)
    if (!((x >= 0x21 && x <= 0x7E) || (x >= 0xA1 && x <= 0xAC) || x >= 0xAE)) n++;
  return 0x100 + n;
}

/* UTF-8 encoding of cp (< 0x110000) into out; returns the length. */
static int utf8_put(uint32_t cp, char *out) {
  if (cp < 0x80) return out[0] = (char)cp, 1;
  if (cp < 0x800) return out[0] = (char)(0xC0 | cp >> 6), out[1] = (char)(0x80 | (cp & 0x3F)), 2;
  if (cp < 0x10000)
    return out[0] = (char)(0xE0 | cp >> 12), out[1] = (char)(0x80 | ((cp >> 6) & 0x3F)), out[2] = (char)(0x80 | (cp & 0x3F)), 3;
  out[0] = (char)(0xF0 | cp >> 18), out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
  out[2] = (char)(0x80 | ((cp >> 6) & 0x3F)), out[3] = (char)(0x80 | (cp & 0x3F));
  return 4;
}

/* Decodes one code point at s[0..n) (n >= 1). A byte that does not start a valid, shortest-form, complete
 * sequence (no surrogates, <= U+10FFFF) is one character of its own: *cp = UINT32_MAX, length 1. */
static size_t utf8_get(const unsigned char *s, size_t n, uint32_t *cp) {
  unsigned c = s[0];
  size_t k;
  uint32_t v, min;
  if (c < 0x80) return *cp = c, 1;
  if (c >= 0xC2 && c <= 0xDF) k = 2, v = c & 0x1F, min = 0x80;
  else if (c >= 0xE0 && c <= 0xEF) k = 3, v = c & 0x0F, min = 0x800;
  else if (c >= 0xF0 && c <= 0xF4) k = 4, v = c & 0x07, min = 0x10000;
  else return *cp = UINT32_MAX, 1;
  if (n < k) return *cp = UINT32_MAX, 1;
  for (size_t i = 1; i < k; i++) {
    if ((s[i] & 0xC0) != 0x80) return *cp = UINT32_MAX, 1;
    v = v << 6 | (s[i] & 0x3F);
  }
  if (v < min || v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF)) return *cp = UINT32_MAX, 1;
  return *cp = v, k;
}

/* ---- code point classes ------------------------------------------------------------------------- */
static int uc_class(uint32_t cp) {
  if (cp == UINT32_MAX) return QMOE_UC_OTHER; /* an invalid byte */
  if (cp < 0x80) {
    if ((cp | 0x20) >= 'a' && (cp | 0x20) <= 'z') return QMOE_UC_LETTER;
    if (cp >= '0' && cp <= '9') return QMOE_UC_NUMBER;
    if (cp == ' ' || (cp >= 0x09 && cp <= 0x0D)) return QMOE_UC_SPACE;
    return QMOE_UC_OTHER;
  }
  size_t lo = 0, hi = sizeof qmoe_uc_ranges / sizeof qmoe_uc_ranges[0];
  while (lo < hi) {
    size_t mid = (lo + hi) / 2;
    if (cp < qmoe_uc_ranges[mid].lo) hi = mid;
    else if (cp > qmoe_uc_ranges[mid].hi) lo = mid + 1;
    else return qmoe_uc_ranges[mid].cls;
  }
  return QMOE_UC_OTHER;
}

/* ---- the qwen2 pre-tokenizer split ---------------------------------------------------------------------
 * Qwen2's tokenizer splits text at the matches of
 *   (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
 * (Oniguruma semantics: the first alternative that matches wins; every character is matched by some
 * alternative, so the matches tile the text). piece_end() returns where the match starting at i ends. */
typedef struct { uint32_t cp; int cls; size_t len; } uchar;

static uchar char_at(const unsigned char *s, size_t n, size_t i) {
  uchar u = { 0, QMOE_UC_OTHER, 0 };
  if (i >= n) return u;
  u.len = utf8_get(s + i, n - i, &u.cp);
  u.cls = uc_class(u.cp);
  return u;
}

/* Case-insensitive ASCII letter match, as Oniguruma's (?i) folds it: 's' also matches U+017F (long s). */
static size_t fold_match(const unsigned char *s, size_t n, size_t i, char lower) {
  if (i >= n) return 0;
  if ((s[i] | 0x20) == (unsigned char)lower && ((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z'))) return 1;
  if (lower == 's' && i + 1 < n && s[i] == 0xC5 && s[i + 1] == 0xBF) return 2;
  return 0;
}

static size_t contraction_end(const unsigned char *s, size_t n, size_t i) {
  size_t j = i + 1, a, b;
  static const char single[] = { 's', 't' };
  for (int k = 0; k < 2; k++)
    if ((a = fold_match(s, n, j, single[k]))) return j + a;
  static const char pairs[][2] = { { 'r', 'e' }, { 'v', 'e' } };
  for (int k = 0; k < 2; k++)
    if ((a = fold_match(s, n, j, pairs[k][0])) && (b = fold_match(s, n, j + a, pairs[k][1]))) return j + a + b;
  if ((a = fold_match(s, n, j, 'm'))) return j + a;
  if ((a = fold_match(s, n, j, 'l')) && (b = fold_match(s, n, j + a, 'l'))) return j + a + b;
  if ((a = fold_match(s, n, j, 'd'))) return j + a;
  return 0;
}

static size_t run_end(const unsigned char *s, size_t n, size_t i, int cls) {
  for (;;) {
    uchar u = char_at(s, n, i);
    if (!u.len || u.cls != cls) return i;
    i += u.len;
  }
}

static size_t piece_end(const unsigned char *s, size_t n, size_t i) {
  uchar c = char_at(s, n, i);
  size_t e;
  /* (?i:'s|'t|'re|'ve|'m|'ll|'d) */
  if (c.cp == '\'' && (e = contraction_end(s, n, i))) return e;
  /* [^\r\n\p{L}\p{N}]?\p{L}+ */
  if (c.cls == QMOE_UC_LETTER) return run_end(s, n, i, QMOE_UC_LETTER);
  if (c.cp != '\r' && c.cp != '\n' && c.cls != QMOE_UC_NUMBER && char_at(s, n, i + c.len).cls == QMOE_UC_LETTER)
    return run_end(s, n, i + c.len, QMOE_UC_LETTER);
  /* \p{N} */
  if (c.cls == QMOE_UC_NUMBER) return i + c.len;
  /* ' ?[^\s\p{L}\p{N}]+[\r\n]*' */
  size_t j = i;
  if (c.cp == ' ' && i + 1 < n && char_at(s, n, i + 1).cls == QMOE_UC_OTHER) j = i + 1;
  if (j > i || c.cls == QMOE_UC_OTHER) {
    j = run_end(s, n, j, QMOE_UC_OTHER);
    while (j < n && (s[j] == '\r' || s[j] == '\n')) j++;
    return j;
  }
  /* c is whitespace. \s*[\r\n]+ : up to the last \r or \n of the whitespace run. */
  size_t end = i, last_nl = 0, last_start = i, count = 0;
  for (;;) {
    uchar u = char_at(s, n, end);
    if (!u.len || u.cls != QMOE_UC_SPACE) break;
    if (u.cp == '\r' || u.cp == '\n') last_nl = end + 1;
    last_start = end;
    end += u.len;
    count++;
  }
  if (last_nl) return last_nl;
  /* \s+(?!\S) : the whole run at the end of the text, else all but its last character */
  if (end == n) return end;
  if (count >= 2) return last_start;
  /* \s+ */
  return end;
}

/* ---- hashing ------------------------------------------------------------------------------------------ */
static uint64_t hash_bytes(const char *s, size_t n) {
  uint64_t h = 1469598103934665603ull; /* FNV-1a */
  for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
  return h ^ (h >> 29);
}
static uint64_t hash_u64(uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdull;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ull;
  return x ^ (x >> 33);
}
static size_t table_size(size_t n) {
  size_t cap = 16;
  while (cap < 2 * n) cap *= 2;
  return cap;
}

/* ---- the tokenizer ---------------------------------------------------------------------------------- */
typedef struct {
  uint64_t key;     /* left id << 32 | right id; UINT64_MAX: empty slot */
  uint32_t rank;
  int32_t result;
} merge_slot;

struct qmoe_tokenizer {
  char *path;
  int32_t n_vocab;
  char *raw;            /* token strings as stored in the file, concatenated */
  uint64_t *raw_off;    /* n_vocab + 1 offsets into raw */
  char *bytes;          /* what each token stands for (byte-level mapping undone for normal tokens) */
  uint64_t *bytes_off;
  uint8_t *type;
  uint32_t *ids;        /* token string -> id + 1 (0: empty slot) */
  size_t ids_cap;
  merge_slot *merges;
  size_t merges_cap;
  int32_t byte_token[256];
  int32_t *specials;    /* control and user-defined tokens, by first byte, then longest first */
  size_t n_specials;
  size_t special_first[257]; /* specials[special_first[b] .. special_first[b + 1]) start with byte b */
  int32_t eos;
  char *chat_template;  /* NUL-terminated copy, or NULL */
};

static int32_t find_token(const qmoe_tokenizer *t, const char *s, size_t n) {
  size_t mask = t->ids_cap - 1;
  for (size_t h = hash_bytes(s, n) & mask;; h = (h + 1) & mask) {
    uint32_t v = t->ids[h];
    if (!v) return -1;
    int32_t id = (int32_t)(v - 1);
    if (t->raw_off[id + 1] - t->raw_off[id] == n && !memcmp(t->raw + t->raw_off[id], s, n)) return id;
  }
}

static const merge_slot *find_merge(const qmoe_tokenizer *t, int32_t a, int32_t b) {
  uint64_t key = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
  size_t mask = t->merges_cap - 1;
  for (size_t h = hash_u64(key) & mask;; h = (h + 1) & mask) {
    if (t->merges[h].key == key) return &t->merges[h];
    if (t->merges[h].key == UINT64_MAX) return NULL;
  }
}

void qmoe_tokenizer_free(qmoe_tokenizer *t) {
  if (!t) return;
  free(t->path);
  free(t->raw);
  free(t->raw_off);
  free(t->bytes);
  free(t->bytes_off);
  free(t->type);
  free(t->ids);
  free(t->merges);
  free(t->specials);
  free(t->chat_template);
  free(t);
}

static int load_error(qmoe_tokenizer *t, int rc, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int load_error(qmoe_tokenizer *t, int rc, const char *fmt, ...) {
  char msg[1536];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  qmoe_set_error("%s: %s", t->path, msg);
  qmoe_tokenizer_free(t);
  return rc;
}

/* A token string for messages: at most 40 bytes, printable ASCII kept, others as \xNN. */
static const char *show(const char *s, size_t n, char *buf, size_t cap) {
  size_t o = 0;
  for (size_t i = 0; i < n && o + 8 < cap; i++) {
    unsigned char c = (unsigned char)s[i];
    if (i == 40) {
      o += (size_t)snprintf(buf + o, cap - o, "...");
      break;
    }
    if (c >= 0x20 && c < 0x7F && c != '\\' && c != '\'') buf[o++] = (char)c;
    else o += (size_t)snprintf(buf + o, cap - o, "\\x%02x", c);
  }
  buf[o] = 0;
  return buf;
}

static int get_string_key(const qmoe_gguf *f, const char *key, const char **s, uint64_t *n) {
  int64_t i = qmoe_gguf_find_key(f, key);
  if (i < 0) return 1;
  return qmoe_gguf_get_str(f, key, s, n) == 0 ? 0 : -1;
}

/* qsort has no context argument in C11: the specials are sorted through this thread-local pointer, set
 * only during the sort. Order: by first byte, then longest first (so the first match is the longest). */
static _Thread_local const qmoe_tokenizer *sort_ctx;
static int cmp_specials(const void *pa, const void *pb) {
  const qmoe_tokenizer *t = sort_ctx;
  int32_t a = *(const int32_t *)pa, b = *(const int32_t *)pb;
  unsigned char fa = (unsigned char)t->raw[t->raw_off[a]], fb = (unsigned char)t->raw[t->raw_off[b]];
  if (fa != fb) return fa < fb ? -1 : 1;
  uint64_t la = t->raw_off[a + 1] - t->raw_off[a], lb = t->raw_off[b + 1] - t->raw_off[b];
  if (la != lb) return la > lb ? -1 : 1;
  return a < b ? -1 : a > b;
}

int qmoe_tokenizer_load(const qmoe_gguf *f, qmoe_tokenizer **out) {
  char sb[200], sb2[200];
  *out = NULL;
  qmoe_tokenizer *t = xcalloc(1, sizeof *t);
  const char *path = qmoe_gguf_path(f);
  size_t plen = strlen(path);
  t->path = xrealloc(NULL, plen + 1);
  memcpy(t->path, path, plen + 1);
  t->eos = -1;

  /* the model and pre-tokenizer */
  const char *s;
  uint64_t n;
  int r = get_string_key(f, "tokenizer.ggml.model", &s, &n);
  if (r > 0) return load_error(t, QMOE_EFORMAT, "key 'tokenizer.ggml.model' is missing: the file has no tokenizer");
  if (r < 0) return qmoe_tokenizer_free(t), QMOE_EFORMAT;
  if (n != 4 || memcmp(s, "gpt2", 4))
    return load_error(t, QMOE_EUNSUPPORTED, "tokenizer.ggml.model is '%s'; qmoe supports only 'gpt2' (byte-level BPE)",
                      show(s, n, sb, sizeof sb));
  r = get_string_key(f, "tokenizer.ggml.pre", &s, &n);
  if (r > 0) return load_error(t, QMOE_EFORMAT, "key 'tokenizer.ggml.pre' is missing (qmoe supports the pre-tokenizer 'qwen2')");
  if (r < 0) return qmoe_tokenizer_free(t), QMOE_EFORMAT;
  if (n != 5 || memcmp(s, "qwen2", 5))
    return load_error(t, QMOE_EUNSUPPORTED, "tokenizer.ggml.pre is '%s'; qmoe supports only the pre-tokenizer 'qwen2'",
                      show(s, n, sb, sizeof sb));

  /* tokens */
  qmoe_gguf_value tokens, types, merges;
  if (qmoe_gguf_get_array(f, "tokenizer.ggml.tokens", QMOE_GGUF_STRING, &tokens) != 0)
    return qmoe_tokenizer_free(t), QMOE_EFORMAT;
  if (tokens.count == 0) return load_error(t, QMOE_EFORMAT, "tokenizer.ggml.tokens is empty");
  if (tokens.count > MAX_TOKENS)
    return load_error(t, QMOE_EFORMAT, "tokenizer.ggml.tokens has %llu tokens; at most %d are supported",
                      (unsigned long long)tokens.count, MAX_TOKENS);
  t->n_vocab = (int32_t)tokens.count;
  size_t nv = (size_t)t->n_vocab;
  if (qmoe_gguf_get_array(f, "tokenizer.ggml.token_type", -1, &types) != 0) return qmoe_tokenizer_free(t), QMOE_EFORMAT;
  if (types.elem_type == QMOE_GGUF_STRING || types.elem_type == QMOE_GGUF_ARRAY || types.elem_type == QMOE_GGUF_F32 ||
      types.elem_type == QMOE_GGUF_F64 || types.elem_type == QMOE_GGUF_BOOL)
    return load_error(t, QMOE_EFORMAT, "tokenizer.ggml.token_type is an array of %s, expected an array of i32",
                      qmoe_gguf_type_name_of_value(types.elem_type));
  if (types.count != tokens.count)
    return load_error(t, QMOE_EFORMAT, "tokenizer.ggml.token_type has %llu entries but tokenizer.ggml.tokens has %llu",
                      (unsigned long long)types.count, (unsigned long long)tokens.count);
  t->raw = xrealloc(NULL, tokens.size);  /* the strings are shorter than their encoding */
  t->raw_off = xcalloc(nv + 1, sizeof *t->raw_off);
  t->type = xcalloc(nv, 1);
  qmoe_gguf_iter it;
  qmoe_gguf_value e;
  qmoe_gguf_iter_init(&it, &tokens);
  for (size_t i = 0; qmoe_gguf_iter_next(&it, &e); i++) {
    if (e.count == 0) return load_error(t, QMOE_EFORMAT, "tokenizer.ggml.tokens[%zu] is an empty string", i);
    memcpy(t->raw + t->raw_off[i], e.data, e.count);
    t->raw_off[i + 1] = t->raw_off[i] + e.count;
    qmoe_gguf_value tv;
    int64_t ty;
    if (qmoe_gguf_array_get(&types, i, &tv) != 0 || qmoe_gguf_value_i64(&tv, &ty) != 0)
      return load_error(t, QMOE_EFORMAT, "tokenizer.ggml.token_type[%zu]: %s", i, qmoe_last_error());
    if (ty < TT_NORMAL || ty > TT_BYTE)
      return load_error(t, QMOE_EFORMAT, "tokenizer.ggml.token_type[%zu] is %lld; token types are 1..6 "
                        "(1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte)", i, (long long)ty);
    t->type[i] = (uint8_t)ty;
  }

  /* string -> id */
  t->ids_cap = table_size(nv);
  t->ids = xcalloc(t->ids_cap, sizeof *t->ids);
  for (size_t i = 0; i < nv; i++) {
    const char *ts = t->raw + t->raw_off[i];
    size_t tn = t->raw_off[i + 1] - t->raw_off[i];
    int32_t prev = find_token(t, ts, tn);
    if (prev >= 0)
      return load_error(t, QMOE_EFORMAT, "tokenizer.ggml.tokens[%zu] '%s' duplicates tokenizer.ggml.tokens[%d]", i,
                        show(ts, tn, sb, sizeof sb), prev);
    size_t mask = t->ids_cap - 1, h = hash_bytes(ts, tn) & mask;
    while (t->ids[h]) h = (h + 1) & mask;
    t->ids[h] = (uint32_t)i + 1;
  }

  /* bytes of each token: the byte-level mapping undone (control and user-defined tokens are literal) */
  int32_t cp_byte[0x144]; /* code point -> byte for the mapping's code points (all < U+0144) */
  for (int c = 0; c < 0x144; c++) cp_byte[c] = -1;
  for (unsigned b = 0; b < 256; b++) cp_byte[byte_to_cp(b)] = (int32_t)b;
  t->bytes = xrealloc(NULL, t->raw_off[nv]);
  t->bytes_off = xcalloc(nv + 1, sizeof *t->bytes_off);
  for (size_t i = 0; i < nv; i++) {
    const unsigned char *ts = (const unsigned char *)t->raw + t->raw_off[i];
    size_t tn = t->raw_off[i + 1] - t->raw_off[i], o = t->bytes_off[i], p = 0;
    int literal = t->type[i] == TT_CONTROL || t->type[i] == TT_USER_DEFINED;
    while (!literal && p < tn) {
      uint32_t cp;
      size_t k = utf8_get(ts + p, tn - p, &cp);
      if (cp >= 0x144 || cp_byte[cp] < 0) {
        if (t->type[i] == TT_NORMAL)
          return load_error(t, QMOE_EFORMAT, "tokenizer.ggml.tokens[%zu] '%s' is a normal token but not byte-level "
                            "encoded (byte %zu is no character of the GPT-2 byte mapping)", i,
                            show((const char *)ts, tn, sb, sizeof sb), p);
        literal = 1; /* unknown/unused/byte tokens that are not byte-level text stand for themselves */
        o = t->bytes_off[i];
        break;
      }
      t->bytes[o++] = (char)cp_byte[cp];
      p += k;
    }
    if (literal) {
      memcpy(t->bytes + o, ts, tn);
      o += tn;
    }
    t->bytes_off[i + 1] = o;
  }
  /* the token of each byte (BPE starts from these) */
  for (unsigned b = 0; b < 256; b++) {
    char u[4];
    int k = utf8_put(byte_to_cp(b), u);
    t->byte_token[b] = find_token(t, u, (size_t)k);
    if (t->byte_token[b] < 0 || t->type[t->byte_token[b]] == TT_CONTROL || t->type[t->byte_token[b]] == TT_USER_DEFINED)
      return load_error(t, QMOE_EFORMAT, "tokenizer.ggml.tokens has no normal token for byte 0x%02x ('%.*s'); a "
                        "byte-level BPE vocabulary has one for each of the 256 bytes", b, k, u);
  }

  /* merges: "left right" -> rank; the first of two equal merges wins */
  if (qmoe_gguf_get_array(f, "tokenizer.ggml.merges", QMOE_GGUF_STRING, &merges) != 0)
    return qmoe_tokenizer_free(t), QMOE_EFORMAT;
  if (merges.count > UINT32_MAX - 1)
    return load_error(t, QMOE_EFORMAT, "tokenizer.ggml.merges has %llu entries; at most %u are supported",
                      (unsigned long long)merges.count, UINT32_MAX - 1);
  t->merges_cap = table_size((size_t)merges.count);
  t->merges = xrealloc(NULL, t->merges_cap * sizeof *t->merges);
  for (size_t i = 0; i < t->merges_cap; i++) t->merges[i].key = UINT64_MAX;
  char *cat = NULL;
  size_t cat_cap = 0;
  qmoe_gguf_iter_init(&it, &merges);
  for (uint32_t rank = 0; qmoe_gguf_iter_next(&it, &e); rank++) {
    const char *ms = e.data;
    size_t mn = (size_t)e.count, sp = 1;
    while (sp < mn && ms[sp] != ' ') sp++;
    if (mn < 3 || sp >= mn - 1) {
      free(cat);
      return load_error(t, QMOE_EFORMAT, "tokenizer.ggml.merges[%u] '%s' is not two tokens separated by a space", rank,
                        show(ms, mn, sb, sizeof sb));
    }
    int32_t a = find_token(t, ms, sp), b = find_token(t, ms + sp + 1, mn - sp - 1);
    if (a < 0 || b < 0) {
      free(cat);
      const char *bad = a < 0 ? ms : ms + sp + 1;
      size_t badn = a < 0 ? sp : mn - sp - 1;
      return load_error(t, QMOE_EFORMAT, "tokenizer.ggml.merges[%u] names '%s', which is not in tokenizer.ggml.tokens",
                        rank, show(bad, badn, sb, sizeof sb));
    }
    if (mn - 1 > cat_cap) cat = xrealloc(cat, cat_cap = 2 * mn);
    memcpy(cat, ms, sp);
    memcpy(cat + sp, ms + sp + 1, mn - sp - 1);
    int32_t res = find_token(t, cat, mn - 1);
    if (res < 0) {
      show(cat, mn - 1, sb2, sizeof sb2);
      free(cat);
      return load_error(t, QMOE_EFORMAT, "tokenizer.ggml.merges[%u] '%s' makes '%s', which is not in tokenizer.ggml.tokens",
                        rank, show(ms, mn, sb, sizeof sb), sb2);
    }
    uint64_t key = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
    size_t mask = t->merges_cap - 1, h = hash_u64(key) & mask;
    while (t->merges[h].key != UINT64_MAX && t->merges[h].key != key) h = (h + 1) & mask;
    if (t->merges[h].key == UINT64_MAX) t->merges[h] = (merge_slot){ key, rank, res };
  }
  free(cat);

  /* special (control and user-defined) tokens, matched in the text before the split */
  t->specials = xcalloc(nv, sizeof *t->specials);
  for (size_t i = 0; i < nv; i++)
    if (t->type[i] == TT_CONTROL || t->type[i] == TT_USER_DEFINED) t->specials[t->n_specials++] = (int32_t)i;
  sort_ctx = t;
  qsort(t->specials, t->n_specials, sizeof *t->specials, cmp_specials);
  sort_ctx = NULL;
  for (size_t b = 0, k = 0; b <= 256; b++) {
    while (k < t->n_specials && (unsigned char)t->raw[t->raw_off[t->specials[k]]] < b) k++;
    t->special_first[b] = k;
  }

  /* end of sequence and chat template */
  if (qmoe_gguf_find_key(f, "tokenizer.ggml.eos_token_id") >= 0) {
    int64_t eos;
    if (qmoe_gguf_get_i64(f, "tokenizer.ggml.eos_token_id", &eos) != 0) return qmoe_tokenizer_free(t), QMOE_EFORMAT;
    if (eos < 0 || eos >= t->n_vocab)
      return load_error(t, QMOE_EFORMAT, "tokenizer.ggml.eos_token_id is %lld, outside the vocabulary of %d tokens",
                        (long long)eos, t->n_vocab);
    t->eos = (int32_t)eos;
  }
  r = get_string_key(f, "tokenizer.chat_template", &s, &n);
  if (r < 0) return qmoe_tokenizer_free(t), QMOE_EFORMAT;
  if (r == 0) {
    t->chat_template = xrealloc(NULL, (size_t)n + 1);
    memcpy(t->chat_template, s, (size_t)n);
    t->chat_template[n] = 0;
  }
  *out = t;
  return 0;
}

int64_t qmoe_tokenizer_n_vocab(const qmoe_tokenizer *t) { return t->n_vocab; }
int32_t qmoe_tokenizer_eos(const qmoe_tokenizer *t) { return t->eos; }
const char *qmoe_tokenizer_path(const qmoe_tokenizer *t) { return t->path; }

int qmoe_tokenizer_token_type(const qmoe_tokenizer *t, int32_t id) {
  return id >= 0 && id < t->n_vocab ? t->type[id] : -1;
}

int32_t qmoe_tokenizer_find(const qmoe_tokenizer *t, const char *text, size_t len) {
  return len ? find_token(t, text, len) : -1;
}

int qmoe_tokenizer_token_bytes(const qmoe_tokenizer *t, int32_t id, const char **bytes, size_t *len) {
  if (id < 0 || id >= t->n_vocab) {
    qmoe_set_error("%s: token id %d is outside the vocabulary (0..%d)", t->path, id, t->n_vocab - 1);
    return QMOE_EINVAL;
  }
  *bytes = t->bytes + t->bytes_off[id];
  *len = (size_t)(t->bytes_off[id + 1] - t->bytes_off[id]);
  return 0;
}

/* ---- encoding --------------------------------------------------------------------------------------- */
typedef struct {
  int32_t *ids;
  size_t n, cap;
  /* BPE work space, reused across pieces */
  struct sym { int32_t id, prev, next; } *sym;
  size_t sym_cap;
  struct cand { uint32_t rank; int32_t pos, left, right, result; } *heap;
  size_t heap_n, heap_cap;
} encoder;

static void emit(encoder *e, int32_t id) {
  if (e->n == e->cap) e->ids = xrealloc(e->ids, (e->cap = e->cap ? 2 * e->cap : 64) * sizeof *e->ids);
  e->ids[e->n++] = id;
}

/* The heap orders candidate merges by rank, then by position (leftmost first), as BPE prescribes. */
static int cand_less(const struct cand *a, const struct cand *b) {
  return a->rank != b->rank ? a->rank < b->rank : a->pos < b->pos;
}
static void heap_push(encoder *e, struct cand c) {
  if (e->heap_n == e->heap_cap) e->heap = xrealloc(e->heap, (e->heap_cap = e->heap_cap ? 2 * e->heap_cap : 64) * sizeof *e->heap);
  size_t i = e->heap_n++;
  while (i > 0 && cand_less(&c, &e->heap[(i - 1) / 2])) {
    e->heap[i] = e->heap[(i - 1) / 2];
    i = (i - 1) / 2;
  }
  e->heap[i] = c;
}
static struct cand heap_pop(encoder *e) {
  struct cand top = e->heap[0], last = e->heap[--e->heap_n];
  size_t i = 0;
  for (;;) {
    size_t c = 2 * i + 1;
    if (c >= e->heap_n) break;
    if (c + 1 < e->heap_n && cand_less(&e->heap[c + 1], &e->heap[c])) c++;
    if (!cand_less(&e->heap[c], &last)) break;
    e->heap[i] = e->heap[c];
    i = c;
  }
  if (e->heap_n) e->heap[i] = last;
  return top;
}

static void push_pair(const qmoe_tokenizer *t, encoder *e, int32_t pos) {
  int32_t nx = e->sym[pos].next;
  if (nx < 0) return;
  const merge_slot *m = find_merge(t, e->sym[pos].id, e->sym[nx].id);
  if (m) heap_push(e, (struct cand){ m->rank, pos, e->sym[pos].id, e->sym[nx].id, m->result });
}

/* BPE over one piece of the split: starts from one token per byte and applies the lowest-ranked merge
 * present (leftmost among equals) until none applies. O(n log n) in the piece's length. */
static void bpe_piece(const qmoe_tokenizer *t, encoder *e, const unsigned char *s, size_t n) {
  if (n == 1) {
    emit(e, t->byte_token[s[0]]);
    return;
  }
  if (n > e->sym_cap) e->sym = xrealloc(e->sym, (e->sym_cap = n) * sizeof *e->sym);
  for (size_t i = 0; i < n; i++)
    e->sym[i] = (struct sym){ t->byte_token[s[i]], (int32_t)i - 1, i + 1 < n ? (int32_t)i + 1 : -1 };
  e->heap_n = 0;
  for (size_t i = 0; i + 1 < n; i++) push_pair(t, e, (int32_t)i);
  while (e->heap_n) {
    struct cand c = heap_pop(e);
    struct sym *l = &e->sym[c.pos];
    if (l->id != c.left || l->next < 0 || e->sym[l->next].id != c.right) continue; /* stale */
    struct sym *r = &e->sym[l->next];
    l->id = c.result;
    l->next = r->next;
    if (r->next >= 0) e->sym[r->next].prev = c.pos;
    r->id = -1;
    if (l->prev >= 0) push_pair(t, e, l->prev);
    push_pair(t, e, c.pos);
  }
  for (int32_t i = 0; i >= 0; i = e->sym[i].next) emit(e, e->sym[i].id);
}

static void encode_plain(const qmoe_tokenizer *t, encoder *e, const unsigned char *s, size_t n) {
  for (size_t i = 0; i < n;) {
    size_t end = piece_end(s, n, i);
    bpe_piece(t, e, s + i, end - i);
    i = end;
  }
}

/* The longest special token at s[0..n) that may be matched, or -1. */
static int32_t special_at(const qmoe_tokenizer *t, const unsigned char *s, size_t n, int parse_special) {
  for (size_t k = t->special_first[s[0]]; k < t->special_first[s[0] + 1]; k++) {
    int32_t id = t->specials[k];
    size_t len = (size_t)(t->raw_off[id + 1] - t->raw_off[id]);
    if (t->type[id] == TT_CONTROL && !parse_special) continue;
    if (len <= n && !memcmp(s, t->raw + t->raw_off[id], len)) return id;
  }
  return -1;
}

int qmoe_tokenizer_encode(const qmoe_tokenizer *t, const char *text, size_t len, int parse_special, int32_t **ids,
                          size_t *n) {
  encoder e = { 0 };
  const unsigned char *s = (const unsigned char *)text;
  *ids = NULL;
  *n = 0;
  if (!text && len) {
    qmoe_set_error("qmoe_tokenizer_encode: text is NULL");
    return QMOE_EINVAL;
  }
  if (len > INT32_MAX) { /* symbol positions are int32 */
    qmoe_set_error("%s: the text to encode has %zu bytes; at most %d at a time", t->path, len, INT32_MAX);
    return QMOE_EINVAL;
  }
  /* User-defined tokens are always matched; control tokens (<|im_start|>, ...) only when parse_special. */
  size_t start = 0;
  for (size_t i = 0; i < len && t->n_specials;) {
    int32_t id = special_at(t, s + i, len - i, parse_special);
    if (id < 0) {
      i++;
      continue;
    }
    encode_plain(t, &e, s + start, i - start);
    emit(&e, id);
    i += (size_t)(t->raw_off[id + 1] - t->raw_off[id]);
    start = i;
  }
  encode_plain(t, &e, s + start, len - start);
  free(e.sym);
  free(e.heap);
  *ids = e.n ? e.ids : xrealloc(e.ids, sizeof(int32_t));
  *n = e.n;
  return 0;
}

int qmoe_tokenizer_decode(const qmoe_tokenizer *t, const int32_t *ids, size_t n, int special, char **text, size_t *len) {
  size_t total = 0;
  *text = NULL;
  *len = 0;
  for (size_t i = 0; i < n; i++) {
    if (ids[i] < 0 || ids[i] >= t->n_vocab) {
      qmoe_set_error("%s: token %zu of %zu is %d, outside the vocabulary (0..%d)", t->path, i, n, ids[i], t->n_vocab - 1);
      return QMOE_EINVAL;
    }
    total += (size_t)(t->bytes_off[ids[i] + 1] - t->bytes_off[ids[i]]);
  }
  char *out = xrealloc(NULL, total + 1);
  size_t o = 0;
  for (size_t i = 0; i < n; i++) {
    if (!special && t->type[ids[i]] == TT_CONTROL) continue;
    size_t k = (size_t)(t->bytes_off[ids[i] + 1] - t->bytes_off[ids[i]]);
    memcpy(out + o, t->bytes + t->bytes_off[ids[i]], k);
    o += k;
  }
  out[o] = 0;
  *text = out;
  *len = o;
  return 0;
}

/* ---- streaming decoder ------------------------------------------------------------------------------ */
void qmoe_detok_init(qmoe_detok *d, const qmoe_tokenizer *t) {
  memset(d, 0, sizeof *d);
  d->t = t;
}

void qmoe_detok_free(qmoe_detok *d) {
  free(d->buf);
  memset(d, 0, sizeof *d);
}

/* Length of the prefix of s[0..n) that holds no incomplete UTF-8 sequence at its end. Invalid bytes are
 * passed through (they can never become valid, so holding them back would only delay them). */
static size_t complete_prefix(const unsigned char *s, size_t n) {
  size_t i = 0;
  while (i < n) {
    uint32_t cp;
    size_t k = utf8_get(s + i, n - i, &cp);
    if (cp != UINT32_MAX) {
      i += k;
      continue;
    }
    /* invalid here: is it a valid start cut short by the end of the buffer? */
    unsigned c = s[i];
    size_t need = c >= 0xC2 && c <= 0xDF ? 2 : c >= 0xE0 && c <= 0xEF ? 3 : c >= 0xF0 && c <= 0xF4 ? 4 : 0;
    if (need && n - i < need) {
      int ok = 1;
      for (size_t j = 1; j < n - i; j++) {
        unsigned x = s[i + j];
        unsigned lo = 0x80, hi = 0xBF;
        if (j == 1 && c == 0xE0) lo = 0xA0;
        if (j == 1 && c == 0xED) hi = 0x9F;
        if (j == 1 && c == 0xF0) lo = 0x90;
        if (j == 1 && c == 0xF4) hi = 0x8F;
        if (x < lo || x > hi) ok = 0;
      }
      if (ok) return i;
    }
    i++;
  }
  return n;
}

int qmoe_detok_push(qmoe_detok *d, int32_t id, const char **text, size_t *len) {
  const char *b;
  size_t k;
  *text = "";
  *len = 0;
  int rc = qmoe_tokenizer_token_bytes(d->t, id, &b, &k);
  if (rc) return rc;
  /* drop what the last call returned, keep the held tail */
  if (d->done) memmove(d->buf, d->buf + d->done, d->len - d->done);
  d->len -= d->done;
  d->done = 0;
  if (d->len + k > d->cap) d->buf = xrealloc(d->buf, d->cap = 2 * (d->len + k) + 16);
  memcpy(d->buf + d->len, b, k);
  d->len += k;
  d->done = complete_prefix((const unsigned char *)d->buf, d->len);
  *text = d->buf ? d->buf : "";
  *len = d->done;
  return 0;
}

void qmoe_detok_flush(qmoe_detok *d, const char **text, size_t *len) {
  *text = d->buf ? d->buf + d->done : "";
  *len = d->len - d->done;
  d->done = d->len;
}

/* ---- chat ------------------------------------------------------------------------------------------- */
int qmoe_tokenizer_apply_chat(const qmoe_tokenizer *t, const char *system, const char *user, char **text) {
  *text = NULL;
  if (!t->chat_template) {
    qmoe_set_error("%s has no tokenizer.chat_template; chat needs a ChatML template", t->path);
    return QMOE_EUNSUPPORTED;
  }
  if (!strstr(t->chat_template, "<|im_start|>")) {
    qmoe_set_error("%s: tokenizer.chat_template is not ChatML (it has no <|im_start|>); qmoe applies only ChatML templates",
                   t->path);
    return QMOE_EUNSUPPORTED;
  }
  static const char *const need[] = { "<|im_start|>", "<|im_end|>" };
  for (int i = 0; i < 2; i++) {
    int32_t id = find_token(t, need[i], strlen(need[i]));
    if (id < 0 || t->type[id] != TT_CONTROL) {
      qmoe_set_error("%s: its chat template is ChatML but %s is not a control token of its vocabulary", t->path, need[i]);
      return QMOE_EUNSUPPORTED;
    }
  }
  if (!user) {
    qmoe_set_error("qmoe_tokenizer_apply_chat: no user message");
    return QMOE_EINVAL;
  }
  size_t n = strlen(user) + (system ? strlen(system) : 0) + 128;
  char *out = xrealloc(NULL, n);
  int k = 0;
  if (system) k = snprintf(out, n, "<|im_start|>system\n%s<|im_end|>\n", system);
  snprintf(out + k, n - (size_t)k, "<|im_start|>user\n%s<|im_end|>\n<|im_start|>assistant\n", user);
  *text = out;
  return 0;
}

/* ---- a synthetic vocabulary for make-model -------------------------------------------------------------- */
static uint64_t splitmix64(uint64_t *s) {
  uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

typedef struct {
  char *arena;
  size_t used, cap;
  size_t *off;    /* token i: arena[off[i] .. off[i + 1]) */
  size_t n;
  uint32_t *set;  /* string -> index + 1 */
  size_t set_cap;
} synth_vocab;

static int synth_has(const synth_vocab *v, const char *s, size_t n) {
  size_t mask = v->set_cap - 1;
  for (size_t h = hash_bytes(s, n) & mask;; h = (h + 1) & mask) {
    uint32_t x = v->set[h];
    if (!x) return 0;
    if (v->off[x] - v->off[x - 1] == n + 1 && !memcmp(v->arena + v->off[x - 1], s, n)) return 1;
  }
}

static void synth_add(synth_vocab *v, const char *s, size_t n) {
  if (v->used + n + 1 > v->cap) v->arena = xrealloc(v->arena, v->cap = 2 * (v->used + n + 1));
  memcpy(v->arena + v->used, s, n);
  v->used += n;
  v->arena[v->used++] = 0; /* NUL-terminated for the writer; off[] spans exclude it */
  v->off[v->n + 1] = v->used;
  size_t mask = v->set_cap - 1, h = hash_bytes(s, n) & mask;
  while (v->set[h]) h = (h + 1) & mask;
  v->set[h] = (uint32_t)++v->n;
}

static size_t synth_len(const synth_vocab *v, size_t i) { return v->off[i + 1] - v->off[i] - 1; }

/* Merged tokens stay at most this many bytes of byte-level text (Qwen's vocabulary averages under 7). */
#define SYNTH_MAX_LEN 16

int qmoe_tokenizer_write_synthetic(qmoe_gguf_writer *w, int64_t n_vocab, uint64_t seed) {
  static const char *const specials[] = { "<|endoftext|>", "<|im_start|>", "<|im_end|>" };
  enum { N_SPECIALS = 3 };
  if (n_vocab < 256 + N_SPECIALS || n_vocab > MAX_TOKENS) {
    qmoe_set_error("synthetic tokenizer: n_vocab %lld is out of range (%d..%d: 256 bytes, %d specials)", (long long)n_vocab,
                   256 + N_SPECIALS, MAX_TOKENS, N_SPECIALS);
    return QMOE_EINVAL;
  }
  size_t nv = (size_t)n_vocab, n_merges = nv - 256 - N_SPECIALS;
  synth_vocab v = { 0 };
  v.off = xcalloc(nv + 1, sizeof *v.off);
  v.set_cap = table_size(nv);
  v.set = xcalloc(v.set_cap, sizeof *v.set);
  /* the 256 byte tokens, in byte order */
  for (unsigned b = 0; b < 256; b++) {
    char u[4];
    synth_add(&v, u, (size_t)utf8_put(byte_to_cp(b), u));
  }
  /* Merges pair existing tokens. Most join letter tokens ("Ġ"-prefixed word starts with lowercase
   * continuations) so that ordinary text encodes to multi-byte tokens, the rest join any two tokens. */
  size_t *words = xcalloc(nv, sizeof *words), n_words = 0;  /* letters, maybe after a leading Ġ */
  size_t *tails = xcalloc(nv, sizeof *tails), n_tails = 0;  /* lowercase letters only */
  uint8_t *is_word = xcalloc(nv, 1), *is_tail = xcalloc(nv, 1);
  for (unsigned b = 'a'; b <= 'z'; b++) {
    tails[n_tails++] = b, words[n_words++] = b, words[n_words++] = b - 32; /* token i is byte i */
    is_tail[b] = is_word[b] = is_word[b - 32] = 1;
  }
  char **merge_strs = xcalloc(n_merges ? n_merges : 1, sizeof *merge_strs);
  char *cat = NULL;
  size_t cat_cap = 0;
  uint64_t rng = seed;
  for (size_t m = 0; m < n_merges; m++) {
    size_t a, b, la, lb;
    for (int tries = 0;; tries++) {
      int kind = (int)(splitmix64(&rng) % 10);
      uint64_t x = splitmix64(&rng), y = splitmix64(&rng);
      if (tries > 1000) kind = 9; /* the letter pools are exhausted: any pair will do */
      if (kind < 2) a = ' ', b = tails[y % n_tails];               /* Ġ + lowercase: a word start */
      else if (kind < 7) a = words[x % n_words], b = tails[y % n_tails]; /* a longer word */
      else if (kind < 8) a = ' ', b = words[y % n_words];
      else a = x % v.n, b = y % v.n;
      la = synth_len(&v, a), lb = synth_len(&v, b);
      if (la + lb > cat_cap) cat = xrealloc(cat, cat_cap = 2 * (la + lb));
      memcpy(cat, v.arena + v.off[a], la);
      memcpy(cat + la, v.arena + v.off[b], lb);
      int clash = la + lb > SYNTH_MAX_LEN || synth_has(&v, cat, la + lb);
      for (int i = 0; i < N_SPECIALS && !clash; i++) clash = la + lb == strlen(specials[i]) && !memcmp(cat, specials[i], la + lb);
      if (!clash) break;
    }
    merge_strs[m] = xrealloc(NULL, la + lb + 2);
    memcpy(merge_strs[m], v.arena + v.off[a], la);
    merge_strs[m][la] = ' ';
    memcpy(merge_strs[m] + la + 1, v.arena + v.off[b], lb);
    merge_strs[m][la + lb + 1] = 0;
    size_t id = v.n;
    synth_add(&v, cat, la + lb);
    if (la + lb < SYNTH_MAX_LEN && (a == ' ' || is_word[a]) && is_tail[b]) words[n_words++] = id, is_word[id] = 1;
    if (la + lb < SYNTH_MAX_LEN && is_tail[a] && is_tail[b]) tails[n_tails++] = id, is_tail[id] = 1;
  }
  free(is_word);
  free(is_tail);
  free(cat);
  for (int i = 0; i < N_SPECIALS; i++) synth_add(&v, specials[i], strlen(specials[i]));

  const char **strs = xcalloc(nv, sizeof *strs);
  int32_t *types = xcalloc(nv, sizeof *types);
  for (size_t i = 0; i < nv; i++) {
    strs[i] = v.arena + v.off[i];
    types[i] = i >= nv - N_SPECIALS ? TT_CONTROL : TT_NORMAL;
  }
  static const char template[] =
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";
  int rc = 0;
  rc = rc ? rc : qmoe_gguf_writer_set_str(w, "tokenizer.ggml.model", "gpt2", 4);
  rc = rc ? rc : qmoe_gguf_writer_set_str(w, "tokenizer.ggml.pre", "qwen2", 5);
  rc = rc ? rc : qmoe_gguf_writer_set_str_array(w, "tokenizer.ggml.tokens", strs, nv);
  rc = rc ? rc : qmoe_gguf_writer_set_array(w, "tokenizer.ggml.token_type", QMOE_GGUF_I32, types, nv);
  rc = rc ? rc : qmoe_gguf_writer_set_str_array(w, "tokenizer.ggml.merges", (const char *const *)merge_strs, n_merges);
  rc = rc ? rc : qmoe_gguf_writer_set_u32(w, "tokenizer.ggml.eos_token_id", (uint32_t)(nv - 1));         /* <|im_end|> */
  rc = rc ? rc : qmoe_gguf_writer_set_u32(w, "tokenizer.ggml.padding_token_id", (uint32_t)(nv - 3));     /* <|endoftext|> */
  rc = rc ? rc : qmoe_gguf_writer_set_u32(w, "tokenizer.ggml.bos_token_id", (uint32_t)(nv - 3));
  rc = rc ? rc : qmoe_gguf_writer_set_bool(w, "tokenizer.ggml.add_bos_token", 0);
  rc = rc ? rc : qmoe_gguf_writer_set_str(w, "tokenizer.chat_template", template, sizeof template - 1);
  for (size_t m = 0; m < n_merges; m++) free(merge_strs[m]);
  free(merge_strs);
  free(strs);
  free(types);
  free(words);
  free(tails);
  free(v.arena);
  free(v.off);
  free(v.set);
  return rc;
}
