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
};

/* Last error message of this thread (never NULL). Set by every function that fails. */
const char *qmoe_last_error(void);
void qmoe_set_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));


/* ---- quant formats (owner: quant codec; contracts/quant/*.yaml -> generated/c/qtypes.c) ---------- */
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

#endif
