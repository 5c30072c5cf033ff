/* recipe.c: quantization recipes (contracts/recipes -> generated/c/recipes.c): which qtype a tensor gets,
 * by the first rule whose name pattern, dimension count and layer condition match it. */
#include <ctype.h>
#include <string.h>
#include "qmoe.h"
#include "recipes.h"

size_t qmoe_recipe_count(void) { return qmoe_recipes_count; }
const qmoe_recipe *qmoe_recipe_at(size_t i) { return i < qmoe_recipes_count ? &qmoe_recipes[i] : NULL; }
const char *qmoe_recipe_name(const qmoe_recipe *r) { return r->name; }
int qmoe_recipe_file_type(const qmoe_recipe *r) { return r->file_type; }

/* Names compare without case and underscores, as qtype names do: "q4_k_m", "q4km", "Q4_K_M". */
static int same_name(const char *a, const char *b) {
  for (;;) {
    while (*a == '_') a++;
    while (*b == '_') b++;
    if (!*a || !*b) return !*a && !*b;
    if (tolower((unsigned char)*a) != tolower((unsigned char)*b)) return 0;
    a++, b++;
  }
}

const qmoe_recipe *qmoe_recipe_by_name(const char *name) {
  for (size_t i = 0; name && i < qmoe_recipes_count; i++)
    if (same_name(qmoe_recipes[i].name, name)) return &qmoe_recipes[i];
  qmoe_set_error("unknown recipe '%s' (no contracts/recipes/*.yaml has it)", name ? name : "(null)");
  return NULL;
}

/* Glob match: '*' matches any run of characters (none included); everything else itself. */
static int glob(const char *p, const char *s) {
  const char *star = NULL, *resume = NULL;
  while (*s) {
    if (*p == '*') {
      star = p++;
      resume = s;
    } else if (*p == *s) {
      p++, s++;
    } else if (star) {
      p = star + 1;
      s = ++resume;
    } else {
      return 0;
    }
  }
  while (*p == '*') p++;
  return !*p;
}

/* "blk.N." -> N; -1 when NAME is not a layer tensor (or N is beyond any model). */
static int64_t layer_of(const char *name) {
  if (strncmp(name, "blk.", 4)) return -1;
  const char *p = name + 4;
  int64_t n = 0;
  if (*p < '0' || *p > '9') return -1;
  while (*p >= '0' && *p <= '9') {
    n = n * 10 + (*p++ - '0');
    if (n > 100000000) return -1;
  }
  return *p == '.' ? n : -1;
}

const char *qmoe_recipe_qtype(const qmoe_recipe *r, const char *name, int n_dims, int64_t n_layers) {
  if (!r || !name || n_layers < 0 || n_layers > 100000000) {
    qmoe_set_error("qmoe_recipe_qtype: bad arguments (layers %lld)", (long long)n_layers);
    return NULL;
  }
  int64_t layer = layer_of(name);
  for (int k = 0; k < r->nrules; k++) {
    const qmoe_recipe_rule *rule = &r->rules[k];
    if (rule->dims && rule->dims != n_dims) continue;
    if (rule->when && (layer < 0 || layer >= n_layers || !rule->when((int)layer, (int)n_layers))) continue;
    for (int t = 0; t < rule->ntensors; t++)
      if (glob(rule->tensors[t], name)) return rule->qtype;
  }
  qmoe_set_error("recipe %s has no rule for tensor '%s' (%d dims, layer %lld of %lld)", r->name, name, n_dims,
                 (long long)layer, (long long)n_layers);
  return NULL;
}
