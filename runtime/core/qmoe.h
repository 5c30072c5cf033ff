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
/* Q8 of docs/q8.md, the input rounding of the q8 accumulator variants: per group of QMOE_Q8_GROUP elements,
 * y = round-to-nearest-even(x·2^-e)·2^e with e the smallest exponent that keeps every |q| <= 127 (at least
 * -126); a group holding an inf or NaN becomes NaN. n a multiple of the group: 0, else QMOE_EINVAL. y may be x. */
enum { QMOE_Q8_GROUP = 32 };
int qmoe_q8_quantize(const float *x, float *y, int64_t n);
enum { QMOE_ACC_BIT_F32 = 1u << 0, QMOE_ACC_BIT_F64 = 1u << 1, QMOE_ACC_BIT_Q8 = 1u << 2 }; /* bits of acc_mask: 1u << backend.h's qmoe_acc */
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
  const char *quantizer; /* contract quantizer.strategy: "generic" (derived from the decoder) or a named search */
  double rmse_max;       /* contract quantizer.rmse_max: round-trip RMSE / RMS(x) bound on N(0,1) rows of 4096 */
  double total_error_max; /* contract quantizer.total_error_max: llama.cpp test-quantize-fns bound */
  int file_type;         /* contract file_type: llama.cpp general.file_type of a file in this type; -1: none */
} qmoe_qtype_info;
const qmoe_qtype_info *qmoe_qtype_by_id(int ggml_type);         /* NULL if unknown (error set) */
const qmoe_qtype_info *qmoe_qtype_by_name(const char *name);    /* "q6k", "q6_k", "Q6_K"; NULL if unknown */
size_t qmoe_qtype_count(void);
const qmoe_qtype_info *qmoe_qtype_at(size_t i);                 /* NULL if i >= count */
int64_t qmoe_qtype_row_bytes(const qmoe_qtype_info *qt, int64_t n); /* -1 if n not a multiple of block_elements */
/* Checks an encoded row against the n floats it was made from, decoding it with qt->dequant_row into
 * scratch (n floats): QMOE_EINVAL, with a message naming the element and value, when an input is not
 * finite, a decoded value is not finite, or the largest |x| of a block that matters (at least 1/4096 of the
 * row's largest) decodes to zero or to less than half or more than 1.5 times itself. */
int qmoe_qtype_check_row(const qmoe_qtype_info *qt, const float *src, const void *enc, int64_t n, float *scratch);
/* Reference quantizer (round-to-nearest-even for f32/f16/bf16; llama.cpp-like searches for k-quants). */
int qmoe_quantize_row(int ggml_type, const float *src, void *dst, int64_t n);
/* N_ELEMENTS (a multiple of block_elements) worth of random valid blocks of a qtype: random bits with
 * moderate finite float fields, each block decoding to finite values not all zero; the same SEED gives the
 * same bytes. For tests that need inputs independent of a quantizer. 0 or QMOE_E*. */
int qmoe_quant_random_blocks(int ggml_type, uint64_t seed, void *dst, int64_t n_elements);
/* ---- end quant formats ---------------------------------------------------------------------------- */

/* ---- quantization recipes (contracts/recipes/<name>.yaml -> generated/c/recipes.c; runtime/quant/recipe.c) -- */
typedef struct qmoe_recipe qmoe_recipe;
size_t qmoe_recipe_count(void);
const qmoe_recipe *qmoe_recipe_at(size_t i);                     /* NULL if i >= count */
const qmoe_recipe *qmoe_recipe_by_name(const char *name);        /* "q4_k_m", "Q4_K_M", "q4km"; NULL if unknown */
const char *qmoe_recipe_name(const qmoe_recipe *r);
int qmoe_recipe_file_type(const qmoe_recipe *r);                 /* llama.cpp general.file_type */
/* The quant contract name the recipe gives tensor NAME of N_DIMS dims in a model of N_LAYERS layers (the first
 * matching rule's); NULL, error set, when no rule matches. */
const char *qmoe_recipe_qtype(const qmoe_recipe *r, const char *name, int n_dims, int64_t n_layers);

/* ==== GGUF I/O (runtime/gguf/; docs/gguf.md) ==================================================== */
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
 * (types qmoe cannot decode) from runtime/gguf/gguf_types.c. 0, or QMOE_EUNSUPPORTED for an unknown id. */
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
/* Inputs the output must not be (refused, naming both, when writing begins: same device and inode, through
 * symlinks and hard links). The path is copied. */
int qmoe_gguf_writer_add_input(qmoe_gguf_writer *w, const char *path);
/* Keys and tensor names must be valid UTF-8 (QMOE_EINVAL naming the byte otherwise) unless verbatim is set:
 * then they are copied as they are (for copying a file that already has such names). */
void qmoe_gguf_writer_set_verbatim_names(qmoe_gguf_writer *w, int verbatim);
/* Writes the whole file (every tensor declared with data) to path through qmoe_out (below): atomically,
 * never over one of its inputs. */
int qmoe_gguf_writer_write(qmoe_gguf_writer *w, const char *path);
/* Streaming: begin writes the header; append the tensors' bytes in declaration order, in chunks of any
 * size; finish checks every byte was given, pads, and renames the temp file into place. */
int qmoe_gguf_writer_begin(qmoe_gguf_writer *w, const char *path);
int qmoe_gguf_writer_append(qmoe_gguf_writer *w, const void *bytes, uint64_t n);
int qmoe_gguf_writer_finish(qmoe_gguf_writer *w);
/* Model hyperparameters: the counts a model needs, read from <arch>.* keys and checked before anything is
 * sized with them. Every problem (general.architecture missing; a count missing, not an integer, zero,
 * negative or larger than any real model's; head_count_kv not dividing head_count; expert_used_count >
 * expert_count; a blk.N tensor at N >= block_count; for qwen3moe also an odd key_length (NEOX RoPE) and a
 * missing or non-positive rope.freq_base / layer_norm_rms_epsilon) is a message naming the file, the key and
 * its offset, passed to report (may be NULL); returns 0, or QMOE_EFORMAT with the first problem as the error.
 * qwen3moe needs every field; other architectures need block_count, context_length, embedding_length and
 * head_count (zero expert counts mean a dense model). The model loader must call this. */
typedef struct {
  char arch[64];
  int64_t n_layer, n_ctx, n_embd, n_ff, n_head, n_head_kv, head_dim_k, head_dim_v;
  int64_t n_expert, n_expert_used, n_ff_exp;
  double rope_freq_base, rms_eps; /* qwen3moe only (0 for other architectures) */
} qmoe_hparams;
int qmoe_hparams_read(const qmoe_gguf *f, qmoe_hparams *hp, void (*report)(void *ctx, const char *msg), void *ctx);
/* ==== end GGUF I/O ================================================================================ */

/* ==== JSON and safetensors (runtime/hf/json.c, runtime/hf/safetensors.c; docs/convert.md) =============== */
/* A strict RFC 8259 parser: no comments, trailing commas, NaN or duplicate keys; strings are validated
 * UTF-8 and decoded (\u escapes, surrogate pairs). Errors are QMOE_EFORMAT "NAME:LINE:COL: what". */
enum { QMOE_JSON_NULL, QMOE_JSON_FALSE, QMOE_JSON_TRUE, QMOE_JSON_NUMBER, QMOE_JSON_STRING, QMOE_JSON_ARRAY,
       QMOE_JSON_OBJECT };
typedef struct qmoe_json qmoe_json;
struct qmoe_json {
  int type;            /* QMOE_JSON_* */
  int line, col;       /* where the value starts (1-based; columns count characters) */
  char *key;           /* members of an object: the decoded key (NUL-terminated), else NULL */
  size_t key_len;
  char *string;        /* strings: decoded UTF-8, NUL-terminated (may hold NULs: use len) */
  size_t len;
  double number;       /* numbers */
  int is_integer;      /* numbers written without fraction or exponent that fit int64 */
  int64_t integer;
  size_t count;        /* arrays and objects: the items (object members carry key), in file order */
  qmoe_json *items;
};
int qmoe_json_parse(const void *text, size_t len, const char *name, qmoe_json **out);
int qmoe_json_read_file(const char *path, qmoe_json **out);
void qmoe_json_free(qmoe_json *root);
const qmoe_json *qmoe_json_get(const qmoe_json *obj, const char *key); /* NULL if obj is not an object or lacks key */
const char *qmoe_json_type_name(int type);                           /* "a string", "an object", ... */

/* safetensors: an 8-byte little-endian header length, a JSON header {name: {dtype, shape, data_offsets},
 * "__metadata__": {...}}, then the data. Opening maps the file and checks every entry: known dtype, shape,
 * offsets inside the data, sizes that match dtype x shape, no two tensors overlapping. */
enum { QMOE_ST_F64, QMOE_ST_F32, QMOE_ST_F16, QMOE_ST_BF16, QMOE_ST_I64, QMOE_ST_I32, QMOE_ST_I16, QMOE_ST_I8,
       QMOE_ST_U64, QMOE_ST_U32, QMOE_ST_U16, QMOE_ST_U8, QMOE_ST_BOOL, QMOE_ST_F8_E4M3, QMOE_ST_F8_E5M2 };
typedef struct {
  const char *name;
  int dtype;             /* QMOE_ST_* */
  const char *dtype_name; /* "BF16" */
  int n_dims;            /* 0..8, outermost first as in the file */
  int64_t shape[8];
  int64_t n_elements;
  uint64_t nbytes;
  uint64_t file_offset;  /* absolute */
  const void *data;      /* in the mapping */
} qmoe_st_tensor;
typedef struct qmoe_safetensors qmoe_safetensors;
int qmoe_safetensors_open(const char *path, qmoe_safetensors **out);
void qmoe_safetensors_close(qmoe_safetensors *f);
int64_t qmoe_safetensors_count(const qmoe_safetensors *f);
const qmoe_st_tensor *qmoe_safetensors_at(const qmoe_safetensors *f, int64_t i);
const qmoe_st_tensor *qmoe_safetensors_find(const qmoe_safetensors *f, const char *name); /* NULL if absent */
const char *qmoe_safetensors_path(const qmoe_safetensors *f);
/* ==== end JSON and safetensors ==================================================================== */

/* ==== output files (runtime/core/output.c; docs/gguf.md "Output files") =============================== */
/* Every command that writes a user's file goes through this. */
typedef struct qmoe_out qmoe_out;
/* Opens path for writing. Refuses (QMOE_EINVAL, message naming both) when path resolves to the same file
 * (st_dev+st_ino, through symlinks and hard links) as any of inputs[0..n_inputs); "-" means stdout.
 * Checks the target directory exists and is writable and, when size_hint > 0, that free space suffices
 * (statvfs), before any work. Writes go to a temp file PATH.tmpPID in the target directory (a symlink at
 * PATH is followed: the file it points to is replaced) created with O_EXCL (mode 0666 minus the umask),
 * removed on any error, on qmoe_out_abort, and on SIGINT/SIGTERM/SIGHUP (then the signal is re-raised).
 * An existing target that is not a regular file (a character device such as /dev/null, a FIFO) is
 * written in place: never truncated, renamed over or removed. */
int qmoe_out_open(const char *path, const char *const *inputs, size_t n_inputs, uint64_t size_hint, qmoe_out **out);
/* Buffered; after an error only qmoe_out_abort is allowed. */
int qmoe_out_write(qmoe_out *o, const void *buf, size_t n);
/* Flush, fsync, rename over the target (only if the target is absent or a regular file), fsync the
 * directory; frees o. On error the temp file is removed and the target left as it was. */
int qmoe_out_commit(qmoe_out *o);
void qmoe_out_abort(qmoe_out *o); /* removes the temp file; frees o; never touches the target */

/* UTF-8: the length (1-4) of the valid UTF-8 sequence at s (n bytes available), or 0 if the bytes there are
 * not one (overlong forms, surrogates and code points past U+10FFFF are invalid). */
size_t qmoe_utf8_seq_len(const void *s, size_t n);
/* -1 when s[0..n) is valid UTF-8, else the offset of the first invalid byte. */
int64_t qmoe_utf8_check(const void *s, size_t n);
/* ==== end output files ============================================================================ */

/* ==== tokenizer (runtime/model/tokenizer.c; docs/tokenizer.md) ========================================== */
/* The byte-level BPE tokenizer stored in a GGUF file: tokenizer.ggml.model "gpt2" with the pre-tokenizer
 * "qwen2" (Qwen2/Qwen3's split regex), tokens, token_type and merges as llama.cpp's converter writes them.
 * It copies what it needs: the file may be closed after loading. */
typedef struct qmoe_tokenizer qmoe_tokenizer;
/* QMOE_EFORMAT naming the file and key for a missing, mistyped or inconsistent key (unknown merge parts,
 * duplicate or empty tokens, a byte with no token, ...); QMOE_EUNSUPPORTED for another model or pre. */
int qmoe_tokenizer_load(const qmoe_gguf *f, qmoe_tokenizer **out);
void qmoe_tokenizer_free(qmoe_tokenizer *t);
int64_t qmoe_tokenizer_n_vocab(const qmoe_tokenizer *t);
int32_t qmoe_tokenizer_eos(const qmoe_tokenizer *t);    /* tokenizer.ggml.eos_token_id, or -1 if none */
const char *qmoe_tokenizer_path(const qmoe_tokenizer *t);  /* the file it came from (for messages) */
/* The GGUF token type of id (1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte); -1 if
 * id is outside the vocabulary. */
int qmoe_tokenizer_token_type(const qmoe_tokenizer *t, int32_t id);
/* The id of the token whose stored string is exactly text[0..len) ("<|im_end|>"), or -1. */
int32_t qmoe_tokenizer_find(const qmoe_tokenizer *t, const char *text, size_t len);
/* Encodes text[0..len) (UTF-8; an invalid byte is a character of its own and round-trips). User-defined
 * tokens (type 4) are always matched in the text; control tokens (type 3, "<|im_start|>") only when
 * parse_special is non-zero, else they are split like any text. *ids is malloc'd (free it; never NULL on
 * success, even for n = 0). Ids equal Hugging Face tokenizers' encode(text, add_special_tokens=False). */
int qmoe_tokenizer_encode(const qmoe_tokenizer *t, const char *text, size_t len, int parse_special, int32_t **ids,
                          size_t *n);
/* The bytes of one token: the byte-level mapping undone for normal tokens (maybe part of a UTF-8
 * sequence), the literal text for control and user-defined ones. They live as long as t. */
int qmoe_tokenizer_token_bytes(const qmoe_tokenizer *t, int32_t id, const char **bytes, size_t *len);
/* Decodes ids into malloc'd bytes (NUL-terminated; *len excludes the NUL). special = 0 leaves control
 * tokens out. QMOE_EINVAL for an id outside the vocabulary. */
int qmoe_tokenizer_decode(const qmoe_tokenizer *t, const int32_t *ids, size_t n, int special, char **text, size_t *len);
/* Streaming decoder for generated tokens: push appends a token's bytes and returns the text that became
 * complete (the longest prefix with no cut UTF-8 sequence at its end, not returned before); bytes that can
 * never become valid UTF-8 are passed through, not held. The returned pointer lives until the next call.
 * flush returns what is still held (an unfinished sequence at the end of the stream). Fields are private. */
typedef struct qmoe_detok {
  const qmoe_tokenizer *t;
  char *buf;
  size_t len, cap, done;
} qmoe_detok;
void qmoe_detok_init(qmoe_detok *d, const qmoe_tokenizer *t);
int qmoe_detok_push(qmoe_detok *d, int32_t id, const char **text, size_t *len);
void qmoe_detok_flush(qmoe_detok *d, const char **text, size_t *len);
void qmoe_detok_free(qmoe_detok *d);
/* Chat: when the file's tokenizer.chat_template is ChatML (contains "<|im_start|>"), *text (malloc'd) is
 * "<|im_start|>system\n{system}<|im_end|>\n" (only when system is not NULL) followed by
 * "<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n", to encode with parse_special = 1. Any
 * other template, none, or no <|im_start|>/<|im_end|> control tokens: QMOE_EUNSUPPORTED naming the file. */
int qmoe_tokenizer_apply_chat(const qmoe_tokenizer *t, const char *system, const char *user, char **text);
/* For make-model: sets the tokenizer.ggml.* keys (model gpt2, pre qwen2, tokens, token_type, merges,
 * eos = <|im_end|>, padding = bos = <|endoftext|>, add_bos_token false) and a ChatML
 * tokenizer.chat_template, for a synthetic byte-level BPE vocabulary of exactly n_vocab tokens: the 256
 * byte tokens, n_vocab - 259 merged tokens (every merge's parts and result are tokens), then the control
 * tokens <|endoftext|>, <|im_start|>, <|im_end|> (the last three ids). Deterministic for a seed.
 * QMOE_EINVAL when n_vocab < 259. */
int qmoe_tokenizer_write_synthetic(qmoe_gguf_writer *w, int64_t n_vocab, uint64_t seed);
/* ==== end tokenizer =============================================================================== */

/* ==== Qwen3-MoE model (runtime/model/model.c, runtime/model/sample.c; docs/model.md) ============================= */
typedef struct qmoe_backend qmoe_backend; /* runtime/stages/backend.h */

/* The model's dimensions, read from the GGUF's qwen3moe.* keys (never defaulted) and its tensors. */
typedef struct {
  int64_t n_layers;      /* qwen3moe.block_count */
  int64_t n_embd;        /* qwen3moe.embedding_length */
  int64_t n_head;        /* qwen3moe.attention.head_count */
  int64_t n_head_kv;     /* qwen3moe.attention.head_count_kv */
  int64_t head_dim;      /* qwen3moe.attention.key_length (= value_length) */
  int64_t n_expert;      /* qwen3moe.expert_count */
  int64_t n_expert_used; /* qwen3moe.expert_used_count */
  int64_t expert_ff;     /* qwen3moe.expert_feed_forward_length */
  int64_t n_vocab;       /* rows of token_embd.weight (output.weight must agree) */
  int64_t n_ctx_train;   /* qwen3moe.context_length: the largest KV cache qmoe allows */
  double rope_theta;     /* qwen3moe.rope.freq_base */
  double rms_eps;        /* qwen3moe.attention.layer_norm_rms_epsilon */
} qmoe_model_config;

/* Bytes the model holds on its backend: weights as stored in the file (uploaded once), the f32 KV cache
 * (2 · layers · ctx · kv_heads · head_dim · 4) and the workspace (activation buffers, allocated once). */
typedef struct { uint64_t weights, kv_cache, workspace; } qmoe_model_memory;

typedef struct qmoe_model qmoe_model;

/* Reads the config of a qwen3moe GGUF and checks every tensor's presence, shape and qtype against it
 * (a MoE layer has the F32 router and the three expert tensors and no dense ffn_gate/up/down). Allocates
 * nothing. QMOE_EFORMAT/QMOE_EUNSUPPORTED with a message naming the file and the key or tensor. */
int qmoe_model_check(const qmoe_gguf *f, qmoe_model_config *cfg);
/* Opens PATH, checks it (qmoe_model_check), plans a KV cache of n_ctx tokens (1 ≤ n_ctx ≤ n_ctx_train),
 * then allocates on BE and uploads every weight once. Nothing is allocated before all checks pass; an
 * allocation failure frees everything and names the buffer and the total needed. */
int qmoe_model_load(const char *path, qmoe_backend *be, int64_t n_ctx, qmoe_model **out);
void qmoe_model_free(qmoe_model *m);
const qmoe_model_config *qmoe_model_config_of(const qmoe_model *m);
const qmoe_gguf *qmoe_model_gguf(const qmoe_model *m);
qmoe_backend *qmoe_model_backend(const qmoe_model *m);
int64_t qmoe_model_n_ctx(const qmoe_model *m);
void qmoe_model_memory_of(const qmoe_model *m, qmoe_model_memory *out);
/* Weight bytes one decoded token reads: every layer's attention, norms and router, K experts' gate, up
 * and down rows (each layer's own qtypes), the output norm, lm_head and one embedding row. */
uint64_t qmoe_model_bytes_per_token(const qmoe_model *m);
/* Accumulator of every stage that has variants (QMOE_ACC_F32 = 0, QMOE_ACC_F64 = 1, QMOE_ACC_Q8 = 2; default
 * f32). With q8 a row stage (matvec, moe_gate_up_swiglu, moe_down) whose weight qtype has a q8 variant runs
 * q8; every other stage runs f32 (docs/q8.md). */
int qmoe_model_set_acc(qmoe_model *m, int acc);

/* Tracing: after each stage whose trace point (generated/c/trace_points.h) and layer are selected, its
 * output is downloaded and handed to FN: DATA holds N f32 (or int32 for ids) values of position POS; LAYER
 * is -1 for points outside the layers. POINTS: QMOE_TP_COUNT flags; LAYERS: n_layers flags; FN NULL: off. */
typedef int (*qmoe_trace_fn)(void *user, int point, int64_t layer, int64_t pos, const void *data, int64_t n);
int qmoe_model_set_trace(qmoe_model *m, const unsigned char *points, const unsigned char *layers, qmoe_trace_fn fn,
                         void *user);

/* One position of the forward: embeds TOKEN, runs every layer at POS (the KV cache must hold positions
 * 0..pos-1 of this sequence), then the output norm and lm_head. Outputs: ARGMAX (the greedy token, computed
 * on the device, one download) and/or LOGITS (n_vocab floats, one download); both NULL (a prompt position
 * whose logits nobody needs): lm_head is skipped and nothing is waited for. */
int qmoe_model_step(qmoe_model *m, int32_t token, int64_t pos, int32_t *argmax, float *logits);
/* N tokens at positions pos0..pos0+N-1, read in chunks of qmoe_model_prefill_chunk() tokens per stage call
 * (the ids go to the device in one transfer), outputs at the last position as in qmoe_model_step. Every
 * token id and position is checked before any work. */
int qmoe_model_prefill(qmoe_model *m, const int32_t *tokens, int64_t n, int64_t pos0, int32_t *argmax,
                       float *logits);
/* Prefill reads a prompt CHUNK tokens per stage call (by the stage contracts' `tokens`, bit for bit the
 * one-position forward; only speed depends on it). The default is the backend's (CUDA 512, CPU 64, Vulkan 1)
 * or QMOE_PREFILL_CHUNK (1..4096) at load, capped by n_ctx; that is also the most set_prefill_chunk allows
 * (the activation buffers are sized for it). */
int64_t qmoe_model_prefill_chunk(const qmoe_model *m);
int qmoe_model_set_prefill_chunk(qmoe_model *m, int64_t n);
/* Waits for everything enqueued (for timing). */
int qmoe_model_sync(qmoe_model *m);
/* Sets rows 0..n-1 of every layer's K and V cache to zero (uploads from a zeroed host chunk), so that a
 * benchmark can decode at position n without computing a prompt of n tokens: attention then reads n
 * positions whose contents do not change its cost. 0 <= n <= the cache's size. */
int qmoe_model_zero_cache(qmoe_model *m, int64_t n);

/* The stage calls of one decode position at POS, in the order the forward makes them, handed to FN instead
 * of being run (for per-stage benchmarks): LABEL names the call — the stage, then the weight tensor's kind
 * where it has one ("matvec attn_q", "moe_down ffn_down_exps", "rmsnorm") —, LAYER its layer (-1 outside
 * the layers), WEIGHT_BYTES the bytes of weights it reads (K experts' slices for the expert stages), CALL
 * the call itself on the model's own buffers (struct qmoe_stage_call of backend.h; run it with
 * qmoe_model_backend(m)->run). The token embedded is whatever id the model's argmax buffer holds. FN
 * returning non-zero stops the walk with that code. Nothing runs on the device. */
typedef int (*qmoe_call_fn)(void *user, const char *label, int64_t layer, uint64_t weight_bytes, const void *call);
int qmoe_model_calls(qmoe_model *m, int64_t pos, qmoe_call_fn fn, void *user);

/* Sampling on the host from downloaded logits: temperature 0 is greedy (lowest index on ties); else
 * softmax(logits / temperature), keep the top_k most likely (0: all), then the smallest prefix whose
 * mass reaches top_p (1: all), renormalize and draw with the xorshift64* state *rng (seed it non-zero). */
typedef struct { double temperature; int64_t top_k; double top_p; } qmoe_sampler;
int qmoe_sample(const qmoe_sampler *s, const float *logits, int64_t n, uint64_t *rng, int32_t *out);
/* ==== end Qwen3-MoE model ========================================================================= */


#endif
