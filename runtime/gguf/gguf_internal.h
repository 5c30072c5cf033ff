/* gguf_internal.h: what runtime/gguf/gguf.c (reader), gguf_write.c (writer) and gguf_types.c (type sizes)
 * share: the open-file structure, little-endian byte helpers and the allocation policy. */
#ifndef QMOE_GGUF_INTERNAL_H
#define QMOE_GGUF_INTERNAL_H
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include "qmoe.h"

#define GGUF_MAGIC "GGUF"
#define GGUF_DEFAULT_ALIGNMENT 32u
/* Arrays may hold arrays; deeper nesting than this is refused (no real file nests more than 2). */
#define GGUF_MAX_ARRAY_DEPTH 8

/* Size in bytes of a fixed-size metadata value type; 0 for string, array and unknown types. */
size_t qmoe_gguf__scalar_size(int vtype);

/* A name and the index of its entry: kv and tensor lookups binary-search arrays of these. */
typedef struct {
  const char *name;
  int64_t index;
} qmoe_gguf__name_index;

/* One metadata entry of an open file. The key is a NUL-terminated copy; the value points into the file. */
typedef struct {
  char *key;
  uint64_t offset;          /* file offset of the entry (its key length field) */
  qmoe_gguf_value value;
} qmoe_gguf__kv;

struct qmoe_gguf {
  char *path;               /* as given to open (messages name it) */
  const uint8_t *base;      /* the whole file */
  uint64_t size;
  int mapped;               /* base came from mmap (munmap on close) */
  uint32_t version;
  uint64_t alignment;
  uint64_t data_offset;     /* start of the tensor data section */
  int64_t n_kv;
  qmoe_gguf__kv *kv;
  qmoe_gguf__name_index *kv_sorted; /* kv[] sorted by key */
  int64_t n_tensors;
  qmoe_gguf_tensor *tensors;
  qmoe_gguf__name_index *tensors_sorted; /* tensors[] sorted by name */
};

/* Little-endian loads and stores that never assume alignment. */
static inline uint16_t gguf_ld16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
static inline uint32_t gguf_ld32(const uint8_t *p) {
  return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}
static inline uint64_t gguf_ld64(const uint8_t *p) { return (uint64_t)gguf_ld32(p) | ((uint64_t)gguf_ld32(p + 4) << 32); }
static inline void gguf_st32(uint8_t *p, uint32_t v) {
  p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); p[2] = (uint8_t)(v >> 16); p[3] = (uint8_t)(v >> 24);
}
static inline void gguf_st64(uint8_t *p, uint64_t v) { gguf_st32(p, (uint32_t)v); gguf_st32(p + 4, (uint32_t)(v >> 32)); }

/* Allocation policy of the GGUF module: out of memory aborts with a message. Sizes are bounded by the
 * file being read (every count is checked against the bytes left before anything is allocated). */
void *qmoe_gguf__xrealloc(void *p, size_t n);
char *qmoe_gguf__xstrndup(const char *s, size_t n);

/* The GGUF spec's types that have no qmoe contract (runtime/gguf/gguf_types.c), for the overlap test. */
int qmoe_gguf__other_type_count(void);
int qmoe_gguf__other_type_id(int i);

#endif
