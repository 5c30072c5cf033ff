/* gguf_types.c: names and block sizes of GGML type ids, so the GGUF reader can size every tensor.
 * Contracted formats (the ones qmoe decodes) come from the generated qtype table in generated/c — their
 * numbers are never repeated here. The generated table of the GGUF spec's other types holds the ones qmoe
 * can read past and copy but not decode; tests/unit/test_gguf_types.c checks the two never overlap. */
#include <ctype.h>
#include <pthread.h>
#include <string.h>
#include "gguf_internal.h"
#include "qtypes.h"

/* The other GGUF types come generated (generated/c/qtypes.c, from codegen/lib/ggml_types.lua less every type
 * a contract lists), so adding a contract needs no edit here. */
#define N_OTHER qmoe_ggml_other_type_count
#define other_types qmoe_ggml_other_types

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
