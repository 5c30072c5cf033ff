/* test_tokenizer.c: the GGUF tokenizer: qmoe_tokenizer_write_synthetic's vocabularies load and round-trip
 * random UTF-8 text, single pieces encode as a naive BPE over the file's merge strings does, the streaming
 * decoder, ChatML, and hostile tokenizer metadata (each a clear error naming the key and the file).
 * tests/tokenizer/check_tokenizer.py holds the tokenizer to Hugging Face tokenizers. */
#include <stdint.h>
#include <unistd.h>
#include "../harness.h"
#include "qmoe.h"

static char tmp_path[64];

static const char *temp_file(void) {
  snprintf(tmp_path, sizeof tmp_path, "/tmp/qmoe-test-tok-XXXXXX");
  int fd = mkstemp(tmp_path);
  if (fd >= 0) close(fd);
  return tmp_path;
}

/* Writes w to a temp file and opens it; NULL on failure (the case fails). */
static qmoe_gguf *write_and_open(qmoe_gguf_writer *w) {
  const char *p = temp_file();
  qmoe_gguf *f = NULL;
  if (qmoe_gguf_writer_write(w, p) != 0 || qmoe_gguf_open(p, &f) != 0) f = NULL;
  unlink(p); /* the open file stays mapped; tmp_path still names it in messages */
  return f;
}

static qmoe_tokenizer *synthetic(int64_t n_vocab, uint64_t seed, qmoe_gguf **fout) {
  qmoe_gguf_writer *w = qmoe_gguf_writer_new();
  qmoe_gguf_writer_set_str(w, "general.architecture", "qwen3moe", 8);
  qmoe_tokenizer *t = NULL;
  qmoe_gguf *f = NULL;
  if (qmoe_tokenizer_write_synthetic(w, n_vocab, seed) == 0 && (f = write_and_open(w)) != NULL &&
      qmoe_tokenizer_load(f, &t) != 0)
    t = NULL;
  qmoe_gguf_writer_free(w);
  if (fout) *fout = f;
  else qmoe_gguf_close(f);
  return t;
}

/* Random UTF-8 text: ASCII words, digits, whitespace runs, and code points from every plane. */
static size_t random_text(char *out, size_t cap) {
  size_t n = 0;
  while (n + 8 < cap) {
    uint32_t cp;
    double r = t_rand_unit();
    if (r < 0.5) cp = 'a' + (uint32_t)(t_rand_u64() % 26);
    else if (r < 0.6) cp = " \t\n\r"[t_rand_u64() % 4];
    else if (r < 0.65) cp = '0' + (uint32_t)(t_rand_u64() % 10);
    else if (r < 0.7) cp = "'.,;!?(){}<>|"[t_rand_u64() % 13];
    else if (r < 0.85) cp = 0x80 + (uint32_t)(t_rand_u64() % 0x2F80);
    else if (r < 0.95) cp = 0x3000 + (uint32_t)(t_rand_u64() % 0xC000);
    else cp = 0x10000 + (uint32_t)(t_rand_u64() % 0x100000);
    if (cp >= 0xD800 && cp <= 0xDFFF) continue;
    if (cp < 0x80) out[n++] = (char)cp;
    else if (cp < 0x800) out[n++] = (char)(0xC0 | cp >> 6), out[n++] = (char)(0x80 | (cp & 0x3F));
    else if (cp < 0x10000)
      out[n++] = (char)(0xE0 | cp >> 12), out[n++] = (char)(0x80 | ((cp >> 6) & 0x3F)), out[n++] = (char)(0x80 | (cp & 0x3F));
    else
      out[n++] = (char)(0xF0 | cp >> 18), out[n++] = (char)(0x80 | ((cp >> 12) & 0x3F)),
      out[n++] = (char)(0x80 | ((cp >> 6) & 0x3F)), out[n++] = (char)(0x80 | (cp & 0x3F));
  }
  return n;
}

static void test_synthetic_round_trip(void) {
  static const int64_t sizes[] = { 259, 300, 2000, 151936 };
  for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
    uint64_t seed = t_rand_u64();
    qmoe_tokenizer *t = synthetic(sizes[s], seed, NULL);
    REQUIRE(t, "n_vocab %lld: %s", (long long)sizes[s], qmoe_last_error());
    CHECK(qmoe_tokenizer_n_vocab(t) == sizes[s], "n_vocab %lld, wanted %lld", (long long)qmoe_tokenizer_n_vocab(t),
          (long long)sizes[s]);
    CHECK(qmoe_tokenizer_eos(t) == qmoe_tokenizer_find(t, "<|im_end|>", 10) && qmoe_tokenizer_eos(t) == sizes[s] - 1,
          "eos %d", qmoe_tokenizer_eos(t));
    CHECK(qmoe_tokenizer_token_type(t, (int32_t)sizes[s] - 2) == 3, "<|im_start|> is not a control token");
    if (sizes[s] >= 2000) { /* lowercase words encode to fewer tokens than bytes: the merges are used */
      char words[1024];
      size_t wl = 0;
      while (wl + 10 < sizeof words) {
        size_t k = 2 + t_rand_u64() % 6;
        words[wl++] = ' ';
        for (size_t i = 0; i < k; i++) words[wl++] = (char)('a' + t_rand_u64() % 26);
      }
      int32_t *ids;
      size_t n;
      REQUIRE(qmoe_tokenizer_encode(t, words, wl, 1, &ids, &n) == 0, "%s", qmoe_last_error());
      CHECK(n < wl * 9 / 10, "n_vocab %lld: %zu tokens for %zu bytes of words: merges unused", (long long)sizes[s], n, wl);
      free(ids);
    }
    for (int rep = 0; rep < 20; rep++) {
      char text[2048];
      size_t len = random_text(text, sizeof text);
      int32_t *ids;
      size_t n;
      char *back;
      size_t blen;
      REQUIRE(qmoe_tokenizer_encode(t, text, len, 1, &ids, &n) == 0, "%s", qmoe_last_error());
      REQUIRE(qmoe_tokenizer_decode(t, ids, n, 1, &back, &blen) == 0, "%s", qmoe_last_error());
      CHECK(blen == len && !memcmp(back, text, len), "n_vocab %lld: decode(encode(text)) differs", (long long)sizes[s]);
      /* the streaming decoder gives the same bytes, each chunk ending on a whole character */
      qmoe_detok d;
      qmoe_detok_init(&d, t);
      size_t o = 0;
      int whole = 1;
      for (size_t i = 0; i < n; i++) {
        const char *c;
        size_t k;
        REQUIRE(qmoe_detok_push(&d, ids[i], &c, &k) == 0, "%s", qmoe_last_error());
        if (o + k <= len && memcmp(text + o, c, k)) whole = 0;
        if (k && ((unsigned char)c[k - 1] >= 0xC0 || (o + k < len && ((unsigned char)text[o + k] & 0xC0) == 0x80)))
          whole = 0;
        o += k;
      }
      const char *c;
      size_t k;
      qmoe_detok_flush(&d, &c, &k);
      CHECK(whole && o == len && k == 0, "streaming decode: %zu of %zu bytes, %zu held, whole chunks %d", o, len, k, whole);
      qmoe_detok_free(&d);
      free(ids);
      free(back);
    }
    qmoe_tokenizer_free(t);
  }
}

static void test_synthetic_deterministic(void) {
  uint64_t seed = t_rand_u64();
  qmoe_gguf *a, *b, *c;
  qmoe_tokenizer *ta = synthetic(3000, seed, &a), *tb = synthetic(3000, seed, &b), *tc = synthetic(3000, seed + 1, &c);
  REQUIRE(ta && tb && tc, "%s", qmoe_last_error());
  qmoe_gguf_value ma, mb, mc;
  REQUIRE(qmoe_gguf_get_array(a, "tokenizer.ggml.merges", QMOE_GGUF_STRING, &ma) == 0 &&
          qmoe_gguf_get_array(b, "tokenizer.ggml.merges", QMOE_GGUF_STRING, &mb) == 0 &&
          qmoe_gguf_get_array(c, "tokenizer.ggml.merges", QMOE_GGUF_STRING, &mc) == 0, "%s", qmoe_last_error());
  CHECK(ma.count == 3000 - 259, "%llu merges", (unsigned long long)ma.count);
  CHECK(ma.size == mb.size && !memcmp(ma.data, mb.data, ma.size), "same seed, different merges");
  CHECK(ma.size != mc.size || memcmp(ma.data, mc.data, ma.size), "different seeds, same merges");
  qmoe_tokenizer_free(ta), qmoe_tokenizer_free(tb), qmoe_tokenizer_free(tc);
  qmoe_gguf_close(a), qmoe_gguf_close(b), qmoe_gguf_close(c);
}

/* ---- a naive BPE over the merge strings, as the reference for single pieces ---------------------------- */
static void byte_level_char(unsigned b, char *out) { /* GPT-2's bytes_to_unicode, built the classic way */
  unsigned n = 0, cp = b;
  int printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
  if (!printable) {
    for (unsigned x = 0; x < b; x++)
      if (!((x >= '!' && x <= '~') || (x >= 0xA1 && x <= 0xAC) || (x >= 0xAE && x <= 0xFF))) n++;
    cp = 256 + n;
  }
  if (cp < 0x80) out[0] = (char)cp, out[1] = 0;
  else out[0] = (char)(0xC0 | cp >> 6), out[1] = (char)(0x80 | (cp & 0x3F)), out[2] = 0;
}

static void test_bpe_matches_naive(void) {
  qmoe_gguf *f;
  qmoe_tokenizer *t = synthetic(4000, t_rand_u64(), &f);
  REQUIRE(t, "%s", qmoe_last_error());
  qmoe_gguf_value mv;
  REQUIRE(qmoe_gguf_get_array(f, "tokenizer.ggml.merges", QMOE_GGUF_STRING, &mv) == 0, "%s", qmoe_last_error());
  size_t nm = (size_t)mv.count;
  char **merges = calloc(nm, sizeof *merges);
  qmoe_gguf_iter it;
  qmoe_gguf_value e;
  qmoe_gguf_iter_init(&it, &mv);
  for (size_t i = 0; qmoe_gguf_iter_next(&it, &e); i++) {
    merges[i] = malloc(e.count + 1);
    memcpy(merges[i], e.data, e.count);
    merges[i][e.count] = 0;
  }
  for (int rep = 0; rep < 200; rep++) {
    /* one piece of the split: an optional space, then lowercase letters */
    char word[40];
    size_t wl = 0;
    if (t_rand_u64() & 1) word[wl++] = ' ';
    size_t letters = 1 + t_rand_u64() % 20;
    for (size_t i = 0; i < letters; i++) word[wl++] = (char)('a' + t_rand_u64() % 26);
    /* naive BPE: symbols as byte-level strings; merge the lowest-ranked adjacent pair, leftmost first */
    char sym[40][512];
    size_t ns = 0;
    for (size_t i = 0; i < wl; i++) byte_level_char((unsigned char)word[i], sym[ns++]);
    for (;;) {
      size_t best = SIZE_MAX, at = 0;
      for (size_t i = 0; i + 1 < ns; i++) {
        char pair[1030];
        snprintf(pair, sizeof pair, "%.511s %.511s", sym[i], sym[i + 1]);
        for (size_t m = 0; m < nm && m < best; m++)
          if (!strcmp(merges[m], pair)) best = m, at = i;
      }
      if (best == SIZE_MAX) break;
      size_t la = strlen(sym[at]), lb = strlen(sym[at + 1]);
      memcpy(sym[at] + la, sym[at + 1], lb + 1);
      memmove(sym[at + 1], sym[at + 2], (ns - at - 2) * sizeof sym[0]);
      ns--;
    }
    int32_t *ids;
    size_t n;
    REQUIRE(qmoe_tokenizer_encode(t, word, wl, 1, &ids, &n) == 0, "%s", qmoe_last_error());
    int same = n == ns;
    for (size_t i = 0; same && i < n; i++) same = ids[i] == qmoe_tokenizer_find(t, sym[i], strlen(sym[i]));
    CHECK(same, "'%.*s': %zu tokens, the naive BPE %zu", (int)wl, word, n, ns);
    free(ids);
  }
  for (size_t i = 0; i < nm; i++) free(merges[i]);
  free(merges);
  qmoe_tokenizer_free(t);
  qmoe_gguf_close(f);
}

static void test_chat(void) {
  qmoe_tokenizer *t = synthetic(400, 7, NULL);
  REQUIRE(t, "%s", qmoe_last_error());
  char *s;
  REQUIRE(qmoe_tokenizer_apply_chat(t, NULL, "Hi!", &s) == 0, "%s", qmoe_last_error());
  CHECK(!strcmp(s, "<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n"), "got '%s'", s);
  int32_t *ids;
  size_t n;
  REQUIRE(qmoe_tokenizer_encode(t, s, strlen(s), 1, &ids, &n) == 0, "%s", qmoe_last_error());
  int starts = 0, ends = 0;
  for (size_t i = 0; i < n; i++) starts += ids[i] == 398, ends += ids[i] == 399;
  CHECK(ids[0] == 398 && starts == 2 && ends == 1, "control tokens not matched: first id %d, %d starts, %d ends", ids[0],
        starts, ends);
  free(ids);
  REQUIRE(qmoe_tokenizer_encode(t, s, strlen(s), 0, &ids, &n) == 0, "%s", qmoe_last_error());
  for (size_t i = 0; i < n; i++) CHECK(qmoe_tokenizer_token_type(t, ids[i]) == 1, "parse_special 0 matched id %d", ids[i]);
  free(ids);
  free(s);
  REQUIRE(qmoe_tokenizer_apply_chat(t, "Be brief.", "Hi!", &s) == 0, "%s", qmoe_last_error());
  CHECK(!strncmp(s, "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi!", 57), "got '%s'", s);
  free(s);
  qmoe_tokenizer_free(t);
}

/* ---- hostile metadata ---------------------------------------------------------------------------------- */
enum { BASE_MERGES = 4 };
static const char *const base_merges[BASE_MERGES] = { "h e", "l l", "he ll", "Ġ h" };
static const char *const base_extra[] = { "he", "ll", "hell", "Ġh", "<|im_start|>", "<|im_end|>" };
#define N_BASE (256 + 6)

/* A valid small vocabulary; mutate(w, tokens, types) changes it before writing. */
typedef void (*mutator)(qmoe_gguf_writer *w, const char **tokens, int32_t *types);

static void write_base(qmoe_gguf_writer *w, mutator m) {
  static char bytes[256][4];
  const char *tokens[N_BASE + 1];
  int32_t types[N_BASE + 1];
  for (unsigned b = 0; b < 256; b++) {
    byte_level_char(b, bytes[b]);
    tokens[b] = bytes[b];
    types[b] = 1;
  }
  for (int i = 0; i < 6; i++) tokens[256 + i] = base_extra[i], types[256 + i] = i >= 4 ? 3 : 1;
  qmoe_gguf_writer_set_str(w, "general.architecture", "qwen3moe", 8);
  qmoe_gguf_writer_set_str(w, "tokenizer.ggml.model", "gpt2", 4);
  qmoe_gguf_writer_set_str(w, "tokenizer.ggml.pre", "qwen2", 5);
  qmoe_gguf_writer_set_str_array(w, "tokenizer.ggml.merges", base_merges, BASE_MERGES);
  qmoe_gguf_writer_set_u32(w, "tokenizer.ggml.eos_token_id", 261);
  qmoe_gguf_writer_set_str(w, "tokenizer.chat_template", "<|im_start|>", 12);
  if (m) m(w, tokens, types);
  qmoe_gguf_writer_set_str_array(w, "tokenizer.ggml.tokens", tokens, N_BASE);
  qmoe_gguf_writer_set_array(w, "tokenizer.ggml.token_type", QMOE_GGUF_I32, types, N_BASE);
  if (m) m(w, NULL, NULL); /* second call: after tokens and types are set */
}

#define MUT(name, ...) \
  static void name(qmoe_gguf_writer *w, const char **tokens, int32_t *types) { (void)w, (void)tokens, (void)types; __VA_ARGS__ }
MUT(m_no_model, if (!tokens) qmoe_gguf_writer_remove(w, "tokenizer.ggml.model");)
MUT(m_llama_model, if (!tokens) qmoe_gguf_writer_set_str(w, "tokenizer.ggml.model", "llama", 5);)
MUT(m_model_u32, if (!tokens) qmoe_gguf_writer_set_u32(w, "tokenizer.ggml.model", 2);)
MUT(m_no_pre, if (!tokens) qmoe_gguf_writer_remove(w, "tokenizer.ggml.pre");)
MUT(m_other_pre, if (!tokens) qmoe_gguf_writer_set_str(w, "tokenizer.ggml.pre", "llama-bpe", 9);)
MUT(m_no_tokens, if (!tokens) qmoe_gguf_writer_remove(w, "tokenizer.ggml.tokens");)
MUT(m_tokens_u32, if (!tokens) { uint32_t x[3] = { 1, 2, 3 }; qmoe_gguf_writer_set_array(w, "tokenizer.ggml.tokens", QMOE_GGUF_U32, x, 3); })
MUT(m_tokens_str, if (!tokens) qmoe_gguf_writer_set_str(w, "tokenizer.ggml.tokens", "a", 1);)
MUT(m_tokens_empty, if (!tokens) { qmoe_gguf_writer_set_str_array(w, "tokenizer.ggml.tokens", NULL, 0);
                                   qmoe_gguf_writer_set_array(w, "tokenizer.ggml.token_type", QMOE_GGUF_I32, NULL, 0); })
MUT(m_types_short, if (!tokens) { int32_t x[3] = { 1, 1, 1 }; qmoe_gguf_writer_set_array(w, "tokenizer.ggml.token_type", QMOE_GGUF_I32, x, 3); })
MUT(m_types_f32, if (!tokens) { float x[N_BASE] = { 0 }; qmoe_gguf_writer_set_array(w, "tokenizer.ggml.token_type", QMOE_GGUF_F32, x, N_BASE); })
MUT(m_types_bad, if (types) types[100] = 9;)
MUT(m_types_missing, if (!tokens) qmoe_gguf_writer_remove(w, "tokenizer.ggml.token_type");)
MUT(m_duplicate, if (tokens) tokens[258] = "he";)
MUT(m_empty_token, if (tokens) tokens[259] = "";)
MUT(m_not_byte_level, if (tokens) tokens[259] = "\xe4\xb8\xad";) /* U+4E2D: no character of the byte mapping */
MUT(m_no_byte, if (tokens) tokens[65] = "AA";)               /* byte 'A' has no token */
MUT(m_merge_unknown, if (!tokens) { const char *x[1] = { "h q@" }; qmoe_gguf_writer_set_str_array(w, "tokenizer.ggml.merges", x, 1); })
MUT(m_merge_nospace, if (!tokens) { const char *x[1] = { "hell" }; qmoe_gguf_writer_set_str_array(w, "tokenizer.ggml.merges", x, 1); })
MUT(m_merge_result, if (!tokens) { const char *x[1] = { "l e" }; qmoe_gguf_writer_set_str_array(w, "tokenizer.ggml.merges", x, 1); })
MUT(m_merge_trailing, if (!tokens) { const char *x[1] = { "h " }; qmoe_gguf_writer_set_str_array(w, "tokenizer.ggml.merges", x, 1); })
MUT(m_merges_missing, if (!tokens) qmoe_gguf_writer_remove(w, "tokenizer.ggml.merges");)
MUT(m_merges_u32, if (!tokens) { uint32_t x[1] = { 7 }; qmoe_gguf_writer_set_array(w, "tokenizer.ggml.merges", QMOE_GGUF_U32, x, 1); })
MUT(m_eos_range, if (!tokens) qmoe_gguf_writer_set_u32(w, "tokenizer.ggml.eos_token_id", N_BASE);)
MUT(m_eos_str, if (!tokens) qmoe_gguf_writer_set_str(w, "tokenizer.ggml.eos_token_id", "2", 1);)
MUT(m_template_u32, if (!tokens) qmoe_gguf_writer_set_u32(w, "tokenizer.chat_template", 1);)

static void test_hostile(void) {
  static const struct { const char *name; mutator m; int rc; const char *key; } cases[] = {
    { "no model", m_no_model, QMOE_EFORMAT, "tokenizer.ggml.model" },
    { "llama model", m_llama_model, QMOE_EUNSUPPORTED, "tokenizer.ggml.model" },
    { "model u32", m_model_u32, QMOE_EFORMAT, "tokenizer.ggml.model" },
    { "no pre", m_no_pre, QMOE_EFORMAT, "tokenizer.ggml.pre" },
    { "other pre", m_other_pre, QMOE_EUNSUPPORTED, "llama-bpe" },
    { "no tokens", m_no_tokens, QMOE_EFORMAT, "tokenizer.ggml.tokens" },
    { "tokens u32", m_tokens_u32, QMOE_EFORMAT, "tokenizer.ggml.tokens" },
    { "tokens string", m_tokens_str, QMOE_EFORMAT, "tokenizer.ggml.tokens" },
    { "tokens empty", m_tokens_empty, QMOE_EFORMAT, "tokenizer.ggml.tokens is empty" },
    { "types short", m_types_short, QMOE_EFORMAT, "tokenizer.ggml.token_type has 3" },
    { "types f32", m_types_f32, QMOE_EFORMAT, "tokenizer.ggml.token_type" },
    { "type 9", m_types_bad, QMOE_EFORMAT, "tokenizer.ggml.token_type[100] is 9" },
    { "types missing", m_types_missing, QMOE_EFORMAT, "tokenizer.ggml.token_type" },
    { "duplicate", m_duplicate, QMOE_EFORMAT, "tokenizer.ggml.tokens[258] 'he' duplicates tokenizer.ggml.tokens[256]" },
    { "empty token", m_empty_token, QMOE_EFORMAT, "tokenizer.ggml.tokens[259] is an empty string" },
    { "not byte-level", m_not_byte_level, QMOE_EFORMAT, "tokenizer.ggml.tokens[259]" },
    { "no byte token", m_no_byte, QMOE_EFORMAT, "byte 0x41" },
    { "merge unknown", m_merge_unknown, QMOE_EFORMAT, "tokenizer.ggml.merges[0] names 'q@'" },
    { "merge no space", m_merge_nospace, QMOE_EFORMAT, "tokenizer.ggml.merges[0] 'hell'" },
    { "merge result", m_merge_result, QMOE_EFORMAT, "makes 'le'" },
    { "merge trailing space", m_merge_trailing, QMOE_EFORMAT, "tokenizer.ggml.merges[0]" },
    { "merges missing", m_merges_missing, QMOE_EFORMAT, "tokenizer.ggml.merges" },
    { "merges u32", m_merges_u32, QMOE_EFORMAT, "tokenizer.ggml.merges" },
    { "eos range", m_eos_range, QMOE_EFORMAT, "tokenizer.ggml.eos_token_id is 262" },
    { "eos string", m_eos_str, QMOE_EFORMAT, "tokenizer.ggml.eos_token_id" },
    { "template u32", m_template_u32, QMOE_EFORMAT, "tokenizer.chat_template" },
  };
  /* the unmutated base loads and encodes with its merges */
  qmoe_gguf_writer *w = qmoe_gguf_writer_new();
  write_base(w, NULL);
  qmoe_gguf *f = write_and_open(w);
  qmoe_gguf_writer_free(w);
  REQUIRE(f, "%s", qmoe_last_error());
  qmoe_tokenizer *t;
  REQUIRE(qmoe_tokenizer_load(f, &t) == 0, "base: %s", qmoe_last_error());
  int32_t *ids;
  size_t n;
  REQUIRE(qmoe_tokenizer_encode(t, "hello hell<|im_end|>", 20, 1, &ids, &n) == 0, "%s", qmoe_last_error());
  CHECK(n == 5 && ids[0] == 258 && ids[1] == 'o' && ids[2] == ' ' && ids[3] == 258 && ids[4] == 261,
        "base: %zu ids, first %d", n, ids[0]);
  free(ids);
  qmoe_tokenizer_free(t);
  qmoe_gguf_close(f);
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    w = qmoe_gguf_writer_new();
    write_base(w, cases[i].m);
    f = write_and_open(w);
    qmoe_gguf_writer_free(w);
    if (!f) {
      CHECK(0, "%s: could not write the file: %s", cases[i].name, qmoe_last_error());
      continue;
    }
    t = (qmoe_tokenizer *)1;
    int rc = qmoe_tokenizer_load(f, &t);
    const char *msg = qmoe_last_error();
    CHECK(rc == cases[i].rc && t == NULL, "%s: rc %d (wanted %d)", cases[i].name, rc, cases[i].rc);
    CHECK(strstr(msg, cases[i].key) && strstr(msg, tmp_path), "%s: message '%s' lacks '%s' or the file name",
          cases[i].name, msg, cases[i].key);
    if (rc == 0) qmoe_tokenizer_free(t);
    qmoe_gguf_close(f);
  }
}

static void test_chat_refusals(void) {
  static const char *const templates[] = { NULL, "{{ bos_token }}[INST] {{ message }} [/INST]" };
  for (int i = 0; i < 2; i++) {
    qmoe_gguf_writer *w = qmoe_gguf_writer_new();
    write_base(w, NULL);
    if (templates[i]) qmoe_gguf_writer_set_str(w, "tokenizer.chat_template", templates[i], strlen(templates[i]));
    else qmoe_gguf_writer_remove(w, "tokenizer.chat_template");
    qmoe_gguf *f = write_and_open(w);
    qmoe_gguf_writer_free(w);
    qmoe_tokenizer *t;
    REQUIRE(f && qmoe_tokenizer_load(f, &t) == 0, "%s", qmoe_last_error());
    char *s = (char *)1;
    int rc = qmoe_tokenizer_apply_chat(t, NULL, "hi", &s);
    CHECK(rc == QMOE_EUNSUPPORTED && !s && strstr(qmoe_last_error(), tmp_path), "template %d: rc %d, '%s'", i, rc,
          qmoe_last_error());
    qmoe_tokenizer_free(t);
    qmoe_gguf_close(f);
  }
}

static void test_detok_holds_partial(void) {
  qmoe_gguf_writer *w = qmoe_gguf_writer_new();
  write_base(w, NULL);
  qmoe_gguf *f = write_and_open(w);
  qmoe_gguf_writer_free(w);
  qmoe_tokenizer *t;
  REQUIRE(f && qmoe_tokenizer_load(f, &t) == 0, "%s", qmoe_last_error());
  /* "€" (E2 82 AC) one byte token at a time, then an invalid byte, then a cut sequence at the end */
  static const unsigned char bytes[] = { 0xE2, 0x82, 0xAC, 'x', 0xFF, 'y', 0xF0, 0x9F };
  static const size_t want[] = { 0, 0, 3, 1, 1, 1, 0, 0 };
  qmoe_detok d;
  qmoe_detok_init(&d, t);
  for (size_t i = 0; i < sizeof bytes; i++) {
    size_t ul;
    const char *c;
    size_t k;
    unsigned b = bytes[i];
    int32_t id = -1;
    for (int32_t j = 0; j < 256 && id < 0; j++) {
      const char *tb;
      if (qmoe_tokenizer_token_bytes(t, j, &tb, &ul) == 0 && ul == 1 && (unsigned char)tb[0] == b) id = j;
    }
    REQUIRE(id >= 0 && qmoe_detok_push(&d, id, &c, &k) == 0, "byte %02x", b);
    CHECK(k == want[i], "after byte %zu (%02x): %zu bytes out, wanted %zu", i, b, k, want[i]);
  }
  const char *c;
  size_t k;
  qmoe_detok_flush(&d, &c, &k);
  CHECK(k == 2 && (unsigned char)c[0] == 0xF0, "flush gave %zu bytes", k);
  CHECK(qmoe_detok_push(&d, 100000, &c, &k) == QMOE_EINVAL, "an id outside the vocabulary was accepted");
  qmoe_detok_free(&d);
  qmoe_tokenizer_free(t);
  qmoe_gguf_close(f);
}

int main(void) {
  t_seed();
  RUN(test_synthetic_round_trip);
  RUN(test_synthetic_deterministic);
  RUN(test_bpe_matches_naive);
  RUN(test_chat);
  RUN(test_hostile);
  RUN(test_chat_refusals);
  RUN(test_detok_holds_partial);
  return T_DONE();
}
