/* fuzz_tokenizer.c: libFuzzer target for the tokenizer. An input that starts with "GGUF" is a file: its
 * tokenizer must load or be refused with a message naming the file; a loaded one must encode and decode a
 * fixed text exactly. Any other input is text for a fixed synthetic tokenizer: encoding (with and without
 * special tokens) must succeed, and decoding, whole or streamed, must give the input's bytes back.
 * Build and run with scripts/fuzz.sh; the lines below tell it what to link and where seeds are. */
// fuzz-sources: runtime/tokenizer.c runtime/gguf*.c runtime/error.c runtime/quant.c generated/c/qtypes.c generated/c/quant_*.c
// fuzz-libs: -lm -lpthread
// fuzz-seeds: tests/fuzz/corpus_tokenizer
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "qmoe.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check(int ok) {
  if (!ok) __builtin_trap();
}

static void round_trip(const qmoe_tokenizer *t, const char *text, size_t len, int special) {
  int32_t *ids;
  size_t n, blen;
  char *back;
  check(qmoe_tokenizer_encode(t, text, len, special, &ids, &n) == 0);
  check(qmoe_tokenizer_decode(t, ids, n, 1, &back, &blen) == 0);
  check(blen == len && !memcmp(back, text, len));
  qmoe_detok d;
  qmoe_detok_init(&d, t);
  size_t o = 0;
  for (size_t i = 0; i < n; i++) {
    const char *c;
    size_t k;
    check(qmoe_detok_push(&d, ids[i], &c, &k) == 0);
    check(o + k <= len && !memcmp(text + o, c, k));
    o += k;
  }
  const char *c;
  size_t k;
  qmoe_detok_flush(&d, &c, &k);
  check(o + k == len && !memcmp(text + o, c, k));
  qmoe_detok_free(&d);
  free(back);
  free(ids);
}

static qmoe_tokenizer *fixed(void) {
  static qmoe_tokenizer *t;
  if (t) return t;
  char path[] = "/tmp/qmoe-fuzz-tok-XXXXXX";
  int fd = mkstemp(path);
  check(fd >= 0);
  close(fd);
  qmoe_gguf_writer *w = qmoe_gguf_writer_new();
  qmoe_gguf *f;
  check(qmoe_tokenizer_write_synthetic(w, 2000, 1) == 0 && qmoe_gguf_writer_write(w, path) == 0);
  check(qmoe_gguf_open(path, &f) == 0 && qmoe_tokenizer_load(f, &t) == 0);
  qmoe_gguf_close(f);
  qmoe_gguf_writer_free(w);
  unlink(path);
  return t;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  uint8_t *copy = malloc(size ? size : 1); /* an exact-size copy, so the sanitizer sees any read past the end */
  if (!copy) return 0;
  memcpy(copy, data, size);
  if (size >= 4 && !memcmp(data, "GGUF", 4)) {
    qmoe_gguf *f = NULL;
    qmoe_tokenizer *t = NULL;
    if (qmoe_gguf_open_memory(copy, size, "fuzz.gguf", &f) == 0) {
      int rc = qmoe_tokenizer_load(f, &t);
      if (rc != 0) {
        check(t == NULL && (rc == QMOE_EFORMAT || rc == QMOE_EUNSUPPORTED));
        check(strncmp(qmoe_last_error(), "fuzz.gguf", 9) == 0);
      } else {
        static const char text[] = "Hello, world! <|im_start|>user\n 123 don't\r\n\t \xe4\xb8\xad\xf0\x9f\x98\x80 \xff";
        round_trip(t, text, sizeof text - 1, 1);
        round_trip(t, text, sizeof text - 1, 0);
        char *chat = NULL;
        if (qmoe_tokenizer_apply_chat(t, "s", "u", &chat) == 0) round_trip(t, chat, strlen(chat), 1);
        free(chat);
        qmoe_tokenizer_free(t);
      }
      qmoe_gguf_close(f);
    }
  } else {
    round_trip(fixed(), (const char *)copy, size, 1);
    round_trip(fixed(), (const char *)copy, size, 0);
  }
  free(copy);
  return 0;
}
