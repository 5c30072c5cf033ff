/* test_gguf_types.c: the GGML type table of runtime/gguf_types.c: it never repeats a contracted qtype (those
 * come from generated/c), and together with the generated table it gives the GGUF spec's names and sizes. */
#include <string.h>
#include "../harness.h"
#include "gguf_internal.h"

/* The GGUF spec's types (ggml.h ids; elements and bytes per block, as ggml's type traits give them). */
static const struct { int id; const char *name; int64_t be, bb; } spec[] = {
  { 0, "F32", 1, 4 },         { 1, "F16", 1, 2 },         { 2, "Q4_0", 32, 18 },      { 3, "Q4_1", 32, 20 },
  { 6, "Q5_0", 32, 22 },      { 7, "Q5_1", 32, 24 },      { 8, "Q8_0", 32, 34 },      { 9, "Q8_1", 32, 36 },
  { 10, "Q2_K", 256, 84 },    { 11, "Q3_K", 256, 110 },   { 12, "Q4_K", 256, 144 },   { 13, "Q5_K", 256, 176 },
  { 14, "Q6_K", 256, 210 },   { 15, "Q8_K", 256, 292 },   { 16, "IQ2_XXS", 256, 66 }, { 17, "IQ2_XS", 256, 74 },
  { 18, "IQ3_XXS", 256, 98 }, { 19, "IQ1_S", 256, 50 },   { 20, "IQ4_NL", 32, 18 },   { 21, "IQ3_S", 256, 110 },
  { 22, "IQ2_S", 256, 82 },   { 23, "IQ4_XS", 256, 136 }, { 24, "I8", 1, 1 },         { 25, "I16", 1, 2 },
  { 26, "I32", 1, 4 },        { 27, "I64", 1, 8 },        { 28, "F64", 1, 8 },        { 29, "IQ1_M", 256, 56 },
  { 30, "BF16", 1, 2 },       { 34, "TQ1_0", 256, 54 },   { 35, "TQ2_0", 256, 66 },   { 39, "MXFP4", 32, 17 },
  { 40, "NVFP4", 64, 36 },    { 41, "Q1_0", 128, 18 },
};
#define N_SPEC ((int)(sizeof spec / sizeof spec[0]))

static void test_no_overlap_with_contracts(void) {
  int n = qmoe_gguf__other_type_count();
  REQUIRE(n > 0, "the table of uncontracted types is empty");
  for (int i = 0; i < n; i++) {
    int id = qmoe_gguf__other_type_id(i);
    const qmoe_qtype_info *q = qmoe_qtype_by_id(id);
    CHECK(!q, "GGML type %d (%s) has a contract but is listed among the other types (generated/c/qtypes.c is stale: run ninja)", id, q ? q->name : "");
    for (int j = 0; j < i; j++) CHECK(qmoe_gguf__other_type_id(j) != id, "type %d is listed twice", id);
  }
}

static void test_spec_names_and_sizes(void) {
  for (int i = 0; i < N_SPEC; i++) {
    const char *name = NULL;
    int64_t be = 0, bb = 0;
    int rc = qmoe_gguf_type_size(spec[i].id, &name, &be, &bb);
    CHECK(rc == 0, "type %d (%s) unknown: %s", spec[i].id, spec[i].name, qmoe_last_error());
    if (rc) continue;
    CHECK(!strcmp(name, spec[i].name), "type %d is named %s, want %s", spec[i].id, name, spec[i].name);
    CHECK(be == spec[i].be && bb == spec[i].bb, "type %d (%s): %lld elements / %lld bytes per block, want %lld / %lld",
          spec[i].id, spec[i].name, (long long)be, (long long)bb, (long long)spec[i].be, (long long)spec[i].bb);
  }
}

static void test_unknown_ids(void) {
  const int removed[] = { 4, 5, 31, 32, 33, 36, 37, 38, 42, 63, 64, 1000, -1 };
  for (size_t i = 0; i < sizeof removed / sizeof removed[0]; i++) {
    CHECK(qmoe_gguf_type_size(removed[i], NULL, NULL, NULL) == QMOE_EUNSUPPORTED, "type id %d should be unknown", removed[i]);
    CHECK(strstr(qmoe_last_error(), "unknown") != NULL, "message for %d: %s", removed[i], qmoe_last_error());
  }
}

static void test_by_name(void) {
  CHECK(qmoe_gguf_type_by_name("Q6_K") == 14, "Q6_K");
  CHECK(qmoe_gguf_type_by_name("q6k") == 14, "q6k");
  CHECK(qmoe_gguf_type_by_name("q6_k") == 14, "q6_k");
  CHECK(qmoe_gguf_type_by_name("iq2_xxs") == 16, "iq2_xxs");
  CHECK(qmoe_gguf_type_by_name("IQ2XXS") == 16, "IQ2XXS");
  CHECK(qmoe_gguf_type_by_name("f32") == 0, "f32");
  CHECK(qmoe_gguf_type_by_name("q4") == -1, "q4 is not a type");
  CHECK(qmoe_gguf_type_by_name("") == -1, "empty name");
  CHECK(qmoe_gguf_type_by_name("q6_k_m") == -1, "q6_k_m is not a type");
}

int main(void) {
  RUN(test_no_overlap_with_contracts);
  RUN(test_spec_names_and_sizes);
  RUN(test_unknown_ids);
  RUN(test_by_name);
  return T_DONE();
}
