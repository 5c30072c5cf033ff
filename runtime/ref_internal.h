/* ref_internal.h: the CPU reference of every stage of docs/stages.md (runtime/ref_stages.c), used by the
 * CPU backend (backend_cpu.c) and by the tests as the independent reference of the GPU backends. */
#ifndef QMOE_REF_INTERNAL_H
#define QMOE_REF_INTERNAL_H
#include <stddef.h>
#include "backend.h"

/* Precision of one reference run. F32 and F64 are the two accumulators of docs/stages.md (what the CPU
 * backend runs for QMOE_ACC_F32 / QMOE_ACC_F64); LDBL is the oracle: every reduction, softmax, SwiGLU
 * and rotation in long double, rounded to f32 once at the end. Tests compare f64 variants with it. */
typedef enum { QMOE_REF_F32 = 0, QMOE_REF_F64 = 1, QMOE_REF_LDBL = 2 } qmoe_ref_prec;

/* The precision the CPU backend uses for a call's accumulator. */
qmoe_ref_prec qmoe_ref_prec_of(qmoe_acc acc);

/* Checks a call's stage, qtype, acc and params (ignoring c->buf and c->off) and gives the bytes each
 * buffer needs, in contract order; unused slots are 0. Returns 0, QMOE_EUNSUPPORTED for a qtype the stage
 * has no variant for (message names the stage, the tensor and the qtype), QMOE_EINVAL for bad params. */
int qmoe_ref_check(const qmoe_stage_call *c, size_t need[QMOE_STAGE_MAX_BUFS]);

/* Runs one stage on host memory: ptr[i] is buffer i (already offset by the caller), size[i] the bytes
 * available there. Checks the call (qmoe_ref_check), that every buffer is large enough and, where the
 * stage reads expert ids, that each lies in [0, E). Outputs may alias inputs where docs/stages.md allows
 * it (rope_neox y = x, add y = a). */
int qmoe_ref_run(const qmoe_stage_call *c, qmoe_ref_prec prec, void *const ptr[QMOE_STAGE_MAX_BUFS],
                 const size_t size[QMOE_STAGE_MAX_BUFS]);

/* Name of a GGUF type id for messages ("q4_k", or "ggml type 7" when qmoe has no codec for it). The
 * returned string is valid until the next call from this thread. */
const char *qmoe_ref_qtype_name(int ggml_type);

#endif
