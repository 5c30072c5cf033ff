/* qmoe.h: the public interface of libqmoe — quant formats, GGUF I/O, and the CPU, Vulkan and CUDA
 * backends of the Qwen3-MoE forward. Functions return 0 or a negative QMOE_E* code. */
#ifndef QMOE_H
#define QMOE_H
#include <stddef.h>
#include <stdint.h>

enum {
  QMOE_OK = 0,
  QMOE_EINVAL = -1,    /* bad argument */
  QMOE_EIO = -2,       /* file could not be read or written */
  QMOE_EFORMAT = -3,   /* malformed or hostile input file */
  QMOE_EUNSUPPORTED = -4, /* a qtype, feature or device qmoe has no support for */
  QMOE_ENODEV = -5,    /* no driver or device for the requested backend */
  QMOE_EDEVICE = -6,   /* a driver/compiler call failed */
  QMOE_ENOMEM = -7,    /* host memory ran out */
};

/* Last error message of this thread (never NULL). Set by every function that fails. */
const char *qmoe_last_error(void);
void qmoe_set_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* The library's host allocator: calloc(1, N) (at least 1 byte), or NULL with the error "WHO: out of host
 * memory allocating N bytes" set, which the caller returns as QMOE_ENOMEM. The library never aborts. */
void *qmoe_alloc(size_t n, const char *who);


/* ---- quant formats (owner: quant codec; contracts/quant/<q>.yaml -> generated/c/qtypes.c) -------- */
/* Rows are n elements, n a multiple of the qtype's block_elements, stored as n / block_elements blocks
 * of block_bytes raw GGUF bytes. Decoded values are exactly those the quant contract defines. */
typedef int (*qmoe_dequant_row_fn)(const void *src, float *dst, int64_t n);          /* 0 or QMOE_EINVAL */
typedef float (*qmoe_dot_f32_fn)(const void *row, const float *x, int64_t n);   /* f32 accumulation */
typedef double (*qmoe_dot_f64_fn)(const void *row, const float *x, int64_t n);  /* Σ (double)w·(double)x */
typedef int (*qmoe_quantize_row_fn)(const float *src, void *dst, int64_t n);    /* 0 or QMOE_E* */
enum { QMOE_ACC_BIT_F32 = 1u << 0, QMOE_ACC_BIT_F64 = 1u << 1 }; /* bits of acc_mask (QMOE_ACC_F32/F64 are backend.h's qmoe_acc) */
typedef struct {
  const char *name;      /* contract name: "q6_k" */
  int ggml_type;         /* GGUF/ggml type id */
  int block_elements;
  int block_bytes;
  unsigned acc_mask;     /* QMOE_ACC_BIT_* the contract lists */
  qmoe_dequant_row_fn dequant_row;
  qmoe_dot_f32_fn dot_f32;       /* n not a multiple of block_elements: returns NAN, sets the error */
  qmoe_dot_f64_fn dot_f64;
  qmoe_quantize_row_fn quantize_row;
} qmoe_qtype_info;
const qmoe_qtype_info *qmoe_qtype_by_id(int ggml_type);         /* NULL if unknown (error set) */
const qmoe_qtype_info *qmoe_qtype_by_name(const char *name);    /* "q6k", "q6_k", "Q6_K"; NULL if unknown */
size_t qmoe_qtype_count(void);
const qmoe_qtype_info *qmoe_qtype_at(size_t i);                 /* NULL if i >= count */
int64_t qmoe_qtype_row_bytes(const qmoe_qtype_info *qt, int64_t n); /* -1 if n not a multiple of block_elements */
/* Reference quantizer (round-to-nearest-even for f32/f16/bf16; llama.cpp-like searches for k-quants). */
int qmoe_quantize_row(int ggml_type, const float *src, void *dst, int64_t n);
/* ---- end quant formats ---------------------------------------------------------------------------- */

/* ==== GGUF I/O (runtime/gguf*.c; docs/gguf.md) ==================================================== */
/* Metadata value types, as numbered by the GGUF spec. */
enum {
  QMOE_GGUF_U8 = 0, QMOE_GGUF_I8 = 1, QMOE_GGUF_U16 = 2, QMOE_GGUF_I16 = 3, QMOE_GGUF_U32 = 4,
  QMOE_GGUF_I32 = 5, QMOE_GGUF_F32 = 6, QMOE_GGUF_BOOL = 7, QMOE_GGUF_STRING = 8, QMOE_GGUF_ARRAY = 9,
  QMOE_GGUF_U64 = 10, QMOE_GGUF_I64 = 11, QMOE_GGUF_F64 = 12,
};

typedef struct qmoe_gguf qmoe_gguf; /* an open, fully validated GGUF file (read-only mapping) */

/* A metadata value; it points into the open file and lives as long as it. Scalars: data holds the
 * little-endian bytes (maybe unaligned), count 1. Strings: data = the bytes (not NUL-terminated),
 * count = length. Arrays: elem_type, count elements, data = the first element's encoding. */
typedef struct {
  int type;          /* QMOE_GGUF_* */
  int elem_type;     /* arrays: element type; otherwise -1 */
  uint64_t count;
  const void *data;
  uint64_t size;     /* bytes at data: the scalar, the string, or all array elements */
  uint64_t offset;   /* file offset of data (for messages) */
} qmoe_gguf_value;

typedef struct {
  const char *name;      /* NUL-terminated */
  int type;              /* GGML type id */
  const char *type_name; /* "Q4_K", "F32", ... */
  int n_dims;            /* 1..4 */
  int64_t ne[4];         /* elements per dimension, innermost first; unused dims are 1 */
  int64_t n_elements;
  int64_t n_rows;        /* ne[1]·ne[2]·ne[3] */
  uint64_t row_bytes;    /* bytes of one row of ne[0] elements */
  uint64_t offset;       /* offset in the data section */
  uint64_t file_offset;  /* absolute offset in the file */
  uint64_t nbytes;
  uint64_t info_offset;  /* file offset of this tensor's entry in the header (for messages) */
  const void *data;      /* in the mapping; aligned to general.alignment relative to the file start */
} qmoe_gguf_tensor;

/* Opens and validates a GGUF v2/v3 file (mmap). Any malformed or hostile input gives QMOE_EFORMAT with a
 * message naming the file, the byte offset and the key or tensor. */
int qmoe_gguf_open(const char *path, qmoe_gguf **out);
/* The same over bytes in memory (kept, not copied: they must outlive the handle); name is for messages. */
int qmoe_gguf_open_memory(const void *data, size_t size, const char *name, qmoe_gguf **out);
void qmoe_gguf_close(qmoe_gguf *f);

const char *qmoe_gguf_path(const qmoe_gguf *f);
uint32_t qmoe_gguf_version(const qmoe_gguf *f);
uint64_t qmoe_gguf_alignment(const qmoe_gguf *f);
uint64_t qmoe_gguf_data_offset(const qmoe_gguf *f);
uint64_t qmoe_gguf_file_size(const qmoe_gguf *f);

/* Metadata, in file order. qmoe_gguf_find_key returns the index, or -1 (no error set) when absent. */
int64_t qmoe_gguf_kv_count(const qmoe_gguf *f);
const char *qmoe_gguf_kv_key(const qmoe_gguf *f, int64_t i);
const qmoe_gguf_value *qmoe_gguf_kv_value(const qmoe_gguf *f, int64_t i);
int64_t qmoe_gguf_find_key(const qmoe_gguf *f, const char *key);
const char *qmoe_gguf_type_name_of_value(int vtype); /* "u32", "string", "array", ...; "?" if unknown */

/* Typed getters by key: QMOE_EFORMAT when the key is missing or its type does not fit (the message names
 * the file, key, offset and both types). Integer getters accept any integer type whose value fits. */
int qmoe_gguf_get_u32(const qmoe_gguf *f, const char *key, uint32_t *out);
int qmoe_gguf_get_u64(const qmoe_gguf *f, const char *key, uint64_t *out);
int qmoe_gguf_get_i64(const qmoe_gguf *f, const char *key, int64_t *out);
int qmoe_gguf_get_f32(const qmoe_gguf *f, const char *key, float *out);    /* f32 only */
int qmoe_gguf_get_f64(const qmoe_gguf *f, const char *key, double *out);   /* f32 or f64 */
int qmoe_gguf_get_bool(const qmoe_gguf *f, const char *key, int *out);
/* *s points into the file and is not NUL-terminated. */
int qmoe_gguf_get_str(const qmoe_gguf *f, const char *key, const char **s, uint64_t *len);
/* elem_type -1 accepts any element type. */
int qmoe_gguf_get_array(const qmoe_gguf *f, const char *key, int elem_type, qmoe_gguf_value *out);

/* Value conversions (same rules as the getters; messages name the value's offset). */
int qmoe_gguf_value_u64(const qmoe_gguf_value *v, uint64_t *out);
int qmoe_gguf_value_i64(const qmoe_gguf_value *v, int64_t *out);
int qmoe_gguf_value_f64(const qmoe_gguf_value *v, double *out);
/* Element i of an array of fixed-size elements (O(1)), or of strings/arrays (O(i): use the iterator). */
int qmoe_gguf_array_get(const qmoe_gguf_value *arr, uint64_t i, qmoe_gguf_value *out);
/* The first n elements of an array as an array value of its own (n ≤ count). */
int qmoe_gguf_array_prefix(const qmoe_gguf_value *arr, uint64_t n, qmoe_gguf_value *out);
typedef struct { qmoe_gguf_value arr; uint64_t index, pos; } qmoe_gguf_iter;
void qmoe_gguf_iter_init(qmoe_gguf_iter *it, const qmoe_gguf_value *arr);
int qmoe_gguf_iter_next(qmoe_gguf_iter *it, qmoe_gguf_value *elem); /* 1: *elem set; 0: end */

/* Tensors, in file order. qmoe_gguf_find_tensor returns NULL (no error set) when absent. */
int64_t qmoe_gguf_tensor_count(const qmoe_gguf *f);
const qmoe_gguf_tensor *qmoe_gguf_tensor_at(const qmoe_gguf *f, int64_t i);
const qmoe_gguf_tensor *qmoe_gguf_find_tensor(const qmoe_gguf *f, const char *name);

/* GGML type ids: name and block size. Contracted formats come from the generated qtype table; the others
 * (types qmoe cannot decode) from runtime/gguf_types.c. 0, or QMOE_EUNSUPPORTED for an unknown id. */
int qmoe_gguf_type_size(int ggml_type, const char **name, int64_t *block_elements, int64_t *block_bytes);
/* GGML type id by GGUF name ("Q4_K", case-insensitive, '_' optional); -1 if unknown. */
int qmoe_gguf_type_by_name(const char *name);

/* Writer: builds a GGUF v3 file. Keys keep the order they were first set; setting a key again replaces
 * its value. Setting general.alignment (u32, power of two) changes the alignment used. */
typedef struct qmoe_gguf_writer qmoe_gguf_writer;
qmoe_gguf_writer *qmoe_gguf_writer_new(void);
void qmoe_gguf_writer_free(qmoe_gguf_writer *w);
int qmoe_gguf_writer_set_u8(qmoe_gguf_writer *w, const char *key, uint8_t v);
int qmoe_gguf_writer_set_i8(qmoe_gguf_writer *w, const char *key, int8_t v);
int qmoe_gguf_writer_set_u16(qmoe_gguf_writer *w, const char *key, uint16_t v);
int qmoe_gguf_writer_set_i16(qmoe_gguf_writer *w, const char *key, int16_t v);
int qmoe_gguf_writer_set_u32(qmoe_gguf_writer *w, const char *key, uint32_t v);
int qmoe_gguf_writer_set_i32(qmoe_gguf_writer *w, const char *key, int32_t v);
int qmoe_gguf_writer_set_u64(qmoe_gguf_writer *w, const char *key, uint64_t v);
int qmoe_gguf_writer_set_i64(qmoe_gguf_writer *w, const char *key, int64_t v);
int qmoe_gguf_writer_set_f32(qmoe_gguf_writer *w, const char *key, float v);
int qmoe_gguf_writer_set_f64(qmoe_gguf_writer *w, const char *key, double v);
int qmoe_gguf_writer_set_bool(qmoe_gguf_writer *w, const char *key, int v);
int qmoe_gguf_writer_set_str(qmoe_gguf_writer *w, const char *key, const char *s, uint64_t len);
/* An array of fixed-size elements given in host layout (uint32_t[] for U32, int8_t 0/1 for BOOL, ...). */
int qmoe_gguf_writer_set_array(qmoe_gguf_writer *w, const char *key, int elem_type, const void *elems, uint64_t count);
int qmoe_gguf_writer_set_str_array(qmoe_gguf_writer *w, const char *key, const char *const *strs, uint64_t count);
/* Any value read from a file (nested arrays included). */
int qmoe_gguf_writer_set_value(qmoe_gguf_writer *w, const char *key, const qmoe_gguf_value *v);
int qmoe_gguf_writer_remove(qmoe_gguf_writer *w, const char *key); /* 0 whether or not it was set */
/* Declares a tensor (data section order = call order). data may be NULL when the bytes are streamed
 * with qmoe_gguf_writer_append(); otherwise it must stay valid until qmoe_gguf_writer_write returns. */
int qmoe_gguf_writer_add_tensor(qmoe_gguf_writer *w, const char *name, int ggml_type, int n_dims,
                                const int64_t *ne, const void *data);
/* Writes the whole file (every tensor declared with data) to path, atomically (temp file + rename). */
int qmoe_gguf_writer_write(qmoe_gguf_writer *w, const char *path);
/* Streaming: begin writes the header; append the tensors' bytes in declaration order, in chunks of any
 * size; finish checks every byte was given, pads, and renames the temp file into place. */
int qmoe_gguf_writer_begin(qmoe_gguf_writer *w, const char *path);
int qmoe_gguf_writer_append(qmoe_gguf_writer *w, const void *bytes, uint64_t n);
int qmoe_gguf_writer_finish(qmoe_gguf_writer *w);
/* ==== end GGUF I/O ================================================================================ */

#endif
