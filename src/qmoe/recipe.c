/* recipe.c: llama.cpp's Q4_K_M recipe by tensor name (see recipe.h); `qmoe quantize` documents it in its
 * usage text and docs/gguf.md. */
#include <string.h>
#include "recipe.h"

enum { T_F32 = 0, T_Q4_K = 12, T_Q6_K = 14 };

int64_t cli_layer_of(const char *name, const char **rest) {
  if (strncmp(name, "blk.", 4)) return -1;
  int64_t n = 0;
  const char *p = name + 4;
  if (*p < '0' || *p > '9') return -1;
  while (*p >= '0' && *p <= '9') {
    if (n > 100000000) return -1;
    n = n * 10 + (*p++ - '0');
  }
  if (*p != '.') return -1;
  *rest = p + 1;
  return n;
}

int cli_recipe_more_bits(int64_t i, int64_t n) { return i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2; }

int cli_recipe_q4_k_m(const char *name, int n_dims, int64_t n_layers) {
  const char *rest = "";
  int64_t layer = cli_layer_of(name, &rest);
  if (n_dims == 1 || (layer >= 0 && !strncmp(rest, "ffn_gate_inp.", 13))) return T_F32;
  if (!strcmp(name, "output.weight")) return T_Q6_K;
  if (layer >= 0 && (!strncmp(rest, "ffn_down_exps.", 14) || !strncmp(rest, "ffn_down.", 9) || !strncmp(rest, "attn_v.", 7)))
    return cli_recipe_more_bits(layer, n_layers) ? T_Q6_K : T_Q4_K;
  return T_Q4_K;
}
