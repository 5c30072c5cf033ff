/* gguf_types.c: names and block sizes of GGML type ids, so the GGUF reader can size every tensor.
 * Contracted formats (the ones qmoe decodes) come from the generated qtype table in generated/c — their
 * numbers are never repeated here. The table below holds only the GGUF spec's other types, which qmoe
 * can read past and copy but not decode; tests/unit/test_gguf_types.c checks the two never overlap. */
#include <ctype.h>
#include <pthread.h>
#include <string.h>
#include "gguf_internal.h"

typedef struct {
  int id;
  const char *name;
  int64_t block_elements, block_bytes;
} gguf_type_row;

/* From ggml's type traits (ggml.h ids; block_elements, sizeof(block)). Ids 4, 5, 31-33 and 36-38 were
 * removed from ggml and are unknown here too. Q8_1 is 36 bytes (two halves d, s and 32 int8). */
static const gguf_type_row other_types[] = {
  { 7, "Q5_1", 32, 24 },       { 9, "Q8_1", 32, 36 },
  { 10, "Q2_K", 256, 84 },     { 11, "Q3_K", 256, 110 },    { 16, "IQ2_XXS", 256, 66 },
  { 17, "IQ2_XS", 256, 74 },   { 18, "IQ3_XXS", 256, 98 },  { 19, "IQ1_S", 256, 50 },
  { 20, "IQ4_NL", 32, 18 },    { 21, "IQ3_S", 256, 110 },   { 22, "IQ2_S", 256, 82 },
  { 23, "IQ4_XS", 256, 136 },  { 24, "I8", 1, 1 },          { 25, "I16", 1, 2 },
  { 26, "I32", 1, 4 },         { 27, "I64", 1, 8 },         { 28, "F64", 1, 8 },
  { 29, "IQ1_M", 256, 56 },    { 34, "TQ1_0", 256, 54 },    { 35, "TQ2_0", 256, 66 },
  { 39, "MXFP4", 32, 17 },     { 40, "NVFP4", 64, 36 },     { 41, "Q1_0", 128, 18 },
};
#define N_OTHER ((int)(sizeof other_types / sizeof other_types[0]))

/* Upper-case GGUF spelling of the contracted qtypes' names ("q4_k" -> "Q4_K"), built once. */
#define MAX_TYPE_ID 64
static char upper_names[MAX_TYPE_ID][16];
static pthread_once_t upper_once = PTHREAD_ONCE_INIT;

static void make_upper_names(void) {
  for (int id = 0; id < MAX_TYPE_ID; id++) {
    const qmoe_qtype_info *q = qmoe_qtype_by_id(id);
    if (!q) continue;
    size_t i = 0;
    for (; q->name[i] && i + 1 < sizeof upper_names[id]; i++) upper_names[id][i] = (char)toupper((unsigned char)q->name[i]);
    upper_names[id][i] = 0;
  }
}

static int lookup(int ggml_type, const char **name, int64_t *block_elements, int64_t *block_bytes) {
  if (ggml_type >= 0 && ggml_type < MAX_TYPE_ID) {
    const qmoe_qtype_info *q = qmoe_qtype_by_id(ggml_type);
    if (q) {
      pthread_once(&upper_once, make_upper_names);
      if (name) *name = upper_names[ggml_type];
      if (block_elements) *block_elements = q->block_elements;
      if (block_bytes) *block_bytes = q->block_bytes;
      return 0;
    }
  }
  for (int i = 0; i < N_OTHER; i++) {
    if (other_types[i].id == ggml_type) {
      if (name) *name = other_types[i].name;
      if (block_elements) *block_elements = other_types[i].block_elements;
      if (block_bytes) *block_bytes = other_types[i].block_bytes;
      return 0;
    }
  }
  return -1;
}

int qmoe_gguf_type_size(int ggml_type, const char **name, int64_t *block_elements, int64_t *block_bytes) {
  if (lookup(ggml_type, name, block_elements, block_bytes) == 0) return 0;
  qmoe_set_error("GGML type id %d is unknown (not in the GGUF spec's type list)", ggml_type);
  return QMOE_EUNSUPPORTED;
}

/* Compares type names ignoring case and underscores: "q6k", "q6_k" and "Q6_K" are the same. */
static int same_type_name(const char *a, const char *b) {
  for (;;) {
    while (*a == '_') a++;
    while (*b == '_') b++;
    if (!*a || !*b) return *a == *b;
    if (tolower((unsigned char)*a) != tolower((unsigned char)*b)) return 0;
    a++, b++;
  }
}

int qmoe_gguf_type_by_name(const char *name) {
  for (int id = 0; id < MAX_TYPE_ID; id++) {
    const char *n;
    if (lookup(id, &n, NULL, NULL) == 0 && same_type_name(n, name)) return id;
  }
  return -1;
}

/* For the overlap test: the ids this file's table knows. */
int qmoe_gguf__other_type_count(void) { return N_OTHER; }
int qmoe_gguf__other_type_id(int i) { return i >= 0 && i < N_OTHER ? other_types[i].id : -1; }
