/* test_recipe.c: the recipes of contracts/recipes as runtime/recipe.c applies them. q4_k_m against the facts
 * of a real Qwen3-Coder-30B-A3B Q4_K_M file (shared reference: 241 F32, 289 Q4_K, 49 Q6_K tensors of 48
 * layers) and against llama.cpp's use_more_bits for every layer count up to 200. */
#include <stdint.h>
#include "../harness.h"
#include "qmoe.h"

/* llama.cpp's use_more_bits (llama-quant.cpp): the independent statement of which layers get more bits. */
static int use_more_bits(int64_t i, int64_t n) { return i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2; }

static void test_q4_k_m_qwen3moe(void) {
  const qmoe_recipe *r = qmoe_recipe_by_name("Q4_K_M");
  REQUIRE(r, "%s", qmoe_last_error());
  CHECK(qmoe_recipe_file_type(r) == 15, "file_type %d, want 15 (LLAMA_FTYPE_MOSTLY_Q4_K_M)", qmoe_recipe_file_type(r));
  static const struct { const char *name; int dims; } per_layer[] = {
    { "attn_norm.weight", 1 }, { "attn_q.weight", 2 }, { "attn_k.weight", 2 }, { "attn_v.weight", 2 },
    { "attn_output.weight", 2 }, { "attn_q_norm.weight", 1 }, { "attn_k_norm.weight", 1 }, { "ffn_norm.weight", 1 },
    { "ffn_gate_inp.weight", 2 }, { "ffn_gate_exps.weight", 3 }, { "ffn_up_exps.weight", 3 }, { "ffn_down_exps.weight", 3 },
  };
  int f32 = 0, q4k = 0, q6k = 0, other = 0;
  const char *q;
#define COUNT(q) (q && !strcmp(q, "f32") ? f32++ : q && !strcmp(q, "q4_k") ? q4k++ : q && !strcmp(q, "q6_k") ? q6k++ : other++)
  q = qmoe_recipe_qtype(r, "token_embd.weight", 2, 48); COUNT(q);
  q = qmoe_recipe_qtype(r, "output_norm.weight", 1, 48); COUNT(q);
  q = qmoe_recipe_qtype(r, "output.weight", 2, 48); COUNT(q);
  CHECK(q && !strcmp(q, "q6_k"), "output.weight gets %s, want q6_k", q ? q : qmoe_last_error());
  for (int l = 0; l < 48; l++)
    for (size_t k = 0; k < sizeof per_layer / sizeof per_layer[0]; k++) {
      char name[64];
      snprintf(name, sizeof name, "blk.%d.%s", l, per_layer[k].name);
      q = qmoe_recipe_qtype(r, name, per_layer[k].dims, 48);
      COUNT(q);
    }
#undef COUNT
  CHECK(f32 == 241 && q4k == 289 && q6k == 49 && other == 0, "F32 %d, Q4_K %d, Q6_K %d, other %d; a real file has 241, 289, 49, 0",
        f32, q4k, q6k, other);
}

static void test_q4_k_m_layers(void) {
  const qmoe_recipe *r = qmoe_recipe_by_name("q4_k_m");
  REQUIRE(r, "%s", qmoe_last_error());
  for (int64_t n = 1; n <= 200; n++)
    for (int64_t i = 0; i < n; i++) {
      char name[64];
      snprintf(name, sizeof name, "blk.%lld.ffn_down_exps.weight", (long long)i);
      const char *q = qmoe_recipe_qtype(r, name, 3, n), *want = use_more_bits(i, n) ? "q6_k" : "q4_k";
      if (!q || strcmp(q, want)) {
        t_fail(__FILE__, __LINE__, "layer %lld of %lld: %s, llama.cpp's use_more_bits gives %s", (long long)i, (long long)n,
               q ? q : qmoe_last_error(), want);
        return;
      }
      snprintf(name, sizeof name, "blk.%lld.attn_q.weight", (long long)i);
      q = qmoe_recipe_qtype(r, name, 2, n);
      CHECK(q && !strcmp(q, "q4_k"), "%s: %s, want q4_k", name, q ? q : qmoe_last_error());
    }
}

static void test_lookup(void) {
  CHECK(qmoe_recipe_count() >= 1, "no recipes");
  for (size_t i = 0; i < qmoe_recipe_count(); i++) {
    const qmoe_recipe *r = qmoe_recipe_at(i);
    CHECK(qmoe_recipe_by_name(qmoe_recipe_name(r)) == r, "recipe %s not found by its name", qmoe_recipe_name(r));
  }
  CHECK(qmoe_recipe_at(qmoe_recipe_count()) == NULL, "recipe past the end");
  CHECK(qmoe_recipe_by_name("q4_k_x") == NULL && strstr(qmoe_last_error(), "q4_k_x"), "unknown recipe: %s", qmoe_last_error());
  const qmoe_recipe *r = qmoe_recipe_by_name("q4km");
  REQUIRE(r, "q4km: %s", qmoe_last_error());
  /* a layer tensor beyond the layer count, a name that is not blk.N. */
  CHECK(!strcmp(qmoe_recipe_qtype(r, "blk.60.attn_v.weight", 2, 48), "q4_k"), "layer 60 of 48: the `when` rule must not match");
  CHECK(!strcmp(qmoe_recipe_qtype(r, "blk.x.attn_v.weight", 2, 48), "q4_k"), "blk.x: not a layer");
  CHECK(qmoe_recipe_qtype(r, "output.weight", 2, -1) == NULL, "negative layer count accepted");
}

int main(void) {
  t_seed();
  RUN(test_lookup);
  RUN(test_q4_k_m_qwen3moe);
  RUN(test_q4_k_m_layers);
  return T_DONE();
}
