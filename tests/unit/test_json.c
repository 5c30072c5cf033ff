/* test_json.c: the strict JSON parser (runtime/hf/json.c): decoding of strings, numbers and nesting against values
 * written out by hand, random documents against an independent encoder, and invalid input refused at the right
 * line:column. */
#include <stdint.h>
#include "../harness.h"
#include "qmoe.h"

static void test_values(void) {
  const char *doc = "\xEF\xBB\xBF{\"a\": [1, -0, 2.5e3, -12345678901234, true, false, null],\n"
                    " \"s\": \"x\\u00e9\\ud83d\\ude00\\n\\t\\\"\\\\\\/\", \"k\\u0000z\": {}, \"e\": []}";
  qmoe_json *j;
  REQUIRE(qmoe_json_parse(doc, strlen(doc), "t", &j) == 0, "parse: %s", qmoe_last_error());
  const qmoe_json *a = qmoe_json_get(j, "a"), *s = qmoe_json_get(j, "s");
  REQUIRE(a && a->type == QMOE_JSON_ARRAY && a->count == 7, "a");
  CHECK(a->items[0].is_integer && a->items[0].integer == 1, "1");
  CHECK(a->items[1].is_integer && a->items[1].integer == 0, "-0");
  CHECK(!a->items[2].is_integer && a->items[2].number == 2500.0, "2.5e3");
  CHECK(a->items[3].is_integer && a->items[3].integer == -12345678901234LL, "big int");
  CHECK(a->items[4].type == QMOE_JSON_TRUE && a->items[5].type == QMOE_JSON_FALSE && a->items[6].type == QMOE_JSON_NULL, "words");
  REQUIRE(s && s->type == QMOE_JSON_STRING, "s");
  const char want[] = "x\xC3\xA9\xF0\x9F\x98\x80\n\t\"\\/";
  CHECK(s->len == sizeof want - 1 && !memcmp(s->string, want, sizeof want), "escapes decoded: len %zu", s->len);
  CHECK(s->line == 2 && s->col == 7, "position of s: %d:%d", s->line, s->col);
  CHECK(j->items[2].key_len == 3 && !memcmp(j->items[2].key, "k\0z", 3), "key with NUL");
  qmoe_json_free(j);
}

/* Random documents: integers, strings of random code points (escaped or raw UTF-8) and nesting, encoded here and
 * checked value by value after parsing. */
static uint64_t rng = 0x9E3779B97F4A7C15ull;
static uint32_t rnd(void) {
  rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
  return (uint32_t)(rng >> 11);
}
static void utf8(char **o, uint32_t cp) {
  char *p = *o;
  if (cp < 0x80) *p++ = (char)cp;
  else if (cp < 0x800) *p++ = (char)(0xC0 | cp >> 6), *p++ = (char)(0x80 | (cp & 63));
  else if (cp < 0x10000) *p++ = (char)(0xE0 | cp >> 12), *p++ = (char)(0x80 | ((cp >> 6) & 63)), *p++ = (char)(0x80 | (cp & 63));
  else *p++ = (char)(0xF0 | cp >> 18), *p++ = (char)(0x80 | ((cp >> 12) & 63)), *p++ = (char)(0x80 | ((cp >> 6) & 63)), *p++ = (char)(0x80 | (cp & 63));
  *o = p;
}
static void test_random(void) {
  enum { N = 200 };
  for (int doc = 0; doc < 50; doc++) {
    static char text[1 << 16], want[N][64];
    static size_t want_len[N];
    static int64_t ints[N];
    char *o = text;
    o += sprintf(o, "[");
    for (int i = 0; i < N; i++) {
      if (i) *o++ = ',';
      if (rnd() % 2) {
        ints[i] = (int64_t)rnd() * (rnd() % 2 ? 1 : -1000003);
        want_len[i] = SIZE_MAX;
        o += sprintf(o, "%lld", (long long)ints[i]);
        continue;
      }
      *o++ = '"';
      char *w = want[i];
      for (int k = rnd() % 8; k > 0; k--) {
        uint32_t cp;
        do cp = rnd() % 4 == 0 ? 0x10000 + rnd() % 0x100000 : rnd() % 0x3000; while (cp >= 0xD800 && cp <= 0xDFFF);
        utf8(&w, cp);
        if (cp < 0x20 || cp == '"' || cp == '\\' || rnd() % 3 == 0) {
          if (cp >= 0x10000) {
            uint32_t v = cp - 0x10000;
            o += sprintf(o, "\\u%04X\\u%04x", 0xD800 + (v >> 10), 0xDC00 + (v & 0x3FF));
          } else {
            o += sprintf(o, "\\u%04x", cp);
          }
        } else {
          utf8(&o, cp);
        }
      }
      want_len[i] = (size_t)(w - want[i]);
      *o++ = '"';
    }
    *o++ = ']';
    qmoe_json *j;
    REQUIRE(qmoe_json_parse(text, (size_t)(o - text), "rnd", &j) == 0, "doc %d: %s", doc, qmoe_last_error());
    REQUIRE(j->type == QMOE_JSON_ARRAY && j->count == N, "doc %d: count %zu", doc, j->count);
    for (int i = 0; i < N; i++) {
      const qmoe_json *v = &j->items[i];
      if (want_len[i] == SIZE_MAX) CHECK(v->is_integer && v->integer == ints[i], "doc %d item %d: integer", doc, i);
      else CHECK(v->type == QMOE_JSON_STRING && v->len == want_len[i] && !memcmp(v->string, want[i], v->len), "doc %d item %d: string", doc, i);
    }
    qmoe_json_free(j);
  }
}

static void test_invalid(void) {
  static const struct { const char *doc, *msg; } bad[] = {
    { "", "t:1:1: expected a value, found end of input" },
    { "{\"a\":1,}", "t:1:8: trailing comma before '}'" },
    { "[1,\n  2,,3]", "t:2:5: expected a value" },
    { "{\"a\" 1}", "t:1:6: expected ':' after the key, found '1'" },
    { "[01]", "t:1:2: number with a leading zero" },
    { "[1.]", "t:1:2: bad number: a digit must follow '.'" },
    { "[1e999]", "t:1:2: number out of range" },
    { "[NaN]", "t:1:2: expected a value" },
    { "\"\\ud800\"", "t:1:2: high surrogate" },
    { "\"\\udc00\"", "t:1:2: lone low surrogate" },
    { "\"a\tb\"", "t:1:3: control character in a string" },
    { "\"\xC0\x80\"", "t:1:2: invalid UTF-8" },
    { "\"\xED\xA0\x80\"", "t:1:2: invalid UTF-8" },
    { "\"abc", "t:1:1: unterminated string" },
    { "[1] x", "t:1:5: unexpected 'x' after the JSON value" },
    { "{\"a\":1,\"a\":2}", "t:1:8: duplicate key \"a\"" },
    { "// c\n1", "t:1:1: expected a value" },
    { "\"\\x\"", "t:1:2: unknown escape" },
    { "[\"é\", x]", "t:1:7: expected a value" },
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    qmoe_json *j = (qmoe_json *)1;
    int rc = qmoe_json_parse(bad[i].doc, strlen(bad[i].doc), "t", &j);
    CHECK(rc == QMOE_EFORMAT && j == NULL, "case %zu accepted", i);
    CHECK(strstr(qmoe_last_error(), bad[i].msg) == qmoe_last_error(), "case %zu: '%s', expected '%s...'", i, qmoe_last_error(), bad[i].msg);
  }
  /* Duplicates in a large object are found too (checked sorted at the end). */
  char big[4096], *o = big;
  o += sprintf(o, "{");
  for (int i = 0; i < 40; i++) o += sprintf(o, "%s\"k%d\":%d", i ? "," : "", i == 37 ? 5 : i, i);
  sprintf(o, "}");
  qmoe_json *j;
  CHECK(qmoe_json_parse(big, strlen(big), "t", &j) == QMOE_EFORMAT && strstr(qmoe_last_error(), "duplicate key \"k5\""), "big dup: %s",
        qmoe_last_error());
  /* Deep nesting is refused, not a stack overflow. */
  static char deep[200001];
  memset(deep, '[', 100000);
  memset(deep + 100000, ']', 100000);
  CHECK(qmoe_json_parse(deep, 200000, "t", &j) == QMOE_EFORMAT && strstr(qmoe_last_error(), "nested deeper"), "deep: %s", qmoe_last_error());
}

int main(void) {
  RUN(test_values);
  RUN(test_random);
  RUN(test_invalid);
  return T_DONE();
}
