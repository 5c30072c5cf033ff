/* utf8.c: UTF-8 validation for names the GGUF writer refuses and strings `qmoe inspect --json` escapes. */
#include "qmoe.h"

size_t qmoe_utf8_seq_len(const void *s, size_t n) {
  const unsigned char *p = s;
  if (n == 0) return 0;
  unsigned c = p[0];
  if (c < 0x80) return 1;
  size_t len;
  unsigned cp, min;
  if (c >= 0xC2 && c <= 0xDF) len = 2, cp = c & 0x1F, min = 0x80;
  else if (c >= 0xE0 && c <= 0xEF) len = 3, cp = c & 0x0F, min = 0x800;
  else if (c >= 0xF0 && c <= 0xF4) len = 4, cp = c & 0x07, min = 0x10000;
  else return 0;
  if (n < len) return 0;
  for (size_t i = 1; i < len; i++) {
    if ((p[i] & 0xC0) != 0x80) return 0;
    cp = (cp << 6) | (p[i] & 0x3F);
  }
  if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
  return len;
}

int64_t qmoe_utf8_check(const void *s, size_t n) {
  const unsigned char *p = s;
  size_t i = 0;
  while (i < n) {
    size_t k = qmoe_utf8_seq_len(p + i, n - i);
    if (!k) return (int64_t)i;
    i += k;
  }
  return -1;
}
