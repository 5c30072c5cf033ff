/* synth_tokenizer.c: the minimal synthetic byte-level BPE vocabulary of synth_tokenizer.h: every merge joins
 * two earlier tokens, so the vocabulary is a valid BPE one; the merges are seeded, not learned. */
#include <stdlib.h>
#include <string.h>
#include "diag.h"
#include "synth_tokenizer.h"

static const char chatml[] =
  "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
  "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/* GPT-2's byte-to-unicode map: printable bytes stand for themselves, the others for U+0100 upwards. */
static int byte_char(int b) {
  if ((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174) return b;
  int n = 0;
  for (int c = 0; c < b; c++)
    if (!((c >= 33 && c <= 126) || (c >= 161 && c <= 172) || c >= 174)) n++;
  return 256 + n;
}

static uint64_t mix(uint64_t *s) {
  uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

int cli_synth_tokenizer(qmoe_gguf_writer *w, int64_t n_vocab, uint64_t seed) {
  const char *specials[] = { "<|endoftext|>", "<|im_start|>", "<|im_end|>" };
  if (n_vocab < 259 || n_vocab > 10000000) {
    qmoe_set_error("a synthetic tokenizer needs from 259 to 10000000 tokens, not %lld", (long long)n_vocab);
    return QMOE_EINVAL;
  }
  int64_t n_merges = n_vocab - 256 - 3;
  char **tok = xmalloc(sizeof *tok * (size_t)n_vocab);
  char **merges = xmalloc(sizeof *merges * (size_t)(n_merges ? n_merges : 1));
  int32_t *type = xmalloc(sizeof *type * (size_t)n_vocab);
  for (int b = 0; b < 256; b++) {
    int c = byte_char(b);
    tok[b] = xmalloc(3);
    if (c < 128) tok[b][0] = (char)c, tok[b][1] = 0;
    else tok[b][0] = (char)(0xC0 | (c >> 6)), tok[b][1] = (char)(0x80 | (c & 63)), tok[b][2] = 0;
    type[b] = 1;
  }
  /* Merges: left and right parts drawn from the tokens so far (letters and space-led pieces favoured, as
   * a learned vocabulary would have them); a pair that would repeat an existing token is drawn again. */
  uint64_t s = seed ^ 0x746F6B656E697A65ull;
  uint64_t hcap = 1;
  while (hcap < (uint64_t)n_vocab * 2) hcap <<= 1;
  int64_t *set = xmalloc(sizeof *set * hcap); /* open addressing over the merged tokens, -1 empty */
  for (uint64_t i = 0; i < hcap; i++) set[i] = -1;
  int64_t n = 256;
  for (int64_t m = 0; m < n_merges; m++) {
    for (;;) {
      uint64_t r = mix(&s);
      int64_t a = (r & 3) == 0 ? 'a' + (int64_t)((r >> 8) % 26) : (r & 3) == 1 ? ' ' : (int64_t)((r >> 8) % (uint64_t)n);
      int64_t b = (r >> 40) & 1 ? 'a' + (int64_t)((r >> 41) % 26) : (int64_t)((r >> 41) % (uint64_t)n);
      size_t la = strlen(tok[a]), lb = strlen(tok[b]);
      if (la + lb > 24) continue;
      char t[32];
      memcpy(t, tok[a], la), memcpy(t + la, tok[b], lb + 1);
      uint64_t h = 1469598103934665603ull;
      for (const char *c = t; *c; c++) h = (h ^ (unsigned char)*c) * 1099511628211ull;
      uint64_t k = h & (hcap - 1);
      while (set[k] >= 0 && strcmp(tok[set[k]], t)) k = (k + 1) & (hcap - 1);
      if (set[k] >= 0) continue; /* already a token */
      set[k] = n;
      tok[n] = strdup(t), type[n] = 1;
      merges[m] = xmalloc(la + lb + 2);
      memcpy(merges[m], tok[a], la), merges[m][la] = ' ', memcpy(merges[m] + la + 1, tok[b], lb + 1);
      n++;
      break;
    }
  }
  free(set);
  for (int i = 0; i < 3; i++) tok[n] = strdup(specials[i]), type[n] = 3, n++;
  int rc = 0;
  rc |= qmoe_gguf_writer_set_str(w, "tokenizer.ggml.model", "gpt2", 4);
  rc |= qmoe_gguf_writer_set_str(w, "tokenizer.ggml.pre", "qwen2", 5);
  rc |= qmoe_gguf_writer_set_str_array(w, "tokenizer.ggml.tokens", (const char *const *)tok, (uint64_t)n);
  rc |= qmoe_gguf_writer_set_array(w, "tokenizer.ggml.token_type", QMOE_GGUF_I32, type, (uint64_t)n);
  rc |= qmoe_gguf_writer_set_str_array(w, "tokenizer.ggml.merges", (const char *const *)merges, (uint64_t)n_merges);
  rc |= qmoe_gguf_writer_set_u32(w, "tokenizer.ggml.eos_token_id", (uint32_t)(n - 1));     /* <|im_end|> */
  rc |= qmoe_gguf_writer_set_u32(w, "tokenizer.ggml.padding_token_id", (uint32_t)(n - 3)); /* <|endoftext|> */
  rc |= qmoe_gguf_writer_set_u32(w, "tokenizer.ggml.bos_token_id", (uint32_t)(n - 3));
  rc |= qmoe_gguf_writer_set_bool(w, "tokenizer.ggml.add_bos_token", 0);
  rc |= qmoe_gguf_writer_set_str(w, "tokenizer.chat_template", chatml, strlen(chatml));
  for (int64_t i = 0; i < n; i++) free(tok[i]);
  for (int64_t i = 0; i < n_merges; i++) free(merges[i]);
  free(tok), free(merges), free(type);
  return rc ? QMOE_EINVAL : 0;
}
