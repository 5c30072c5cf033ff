/* ref_internal.h: the CPU reference of every stage of docs/stages.md (runtime/cpu/ref_stages.c), used by the
 * CPU backend (backend_cpu.c) and by the tests as the independent reference of the GPU backends. */
#ifndef QMOE_REF_INTERNAL_H
#define QMOE_REF_INTERNAL_H
#include <stddef.h>
#include "backend.h"
#include "qmoe.h"

/* Precision of one reference run. F32 and F64 are the two accumulators of docs/stages.md (what the CPU
 * backend runs for QMOE_ACC_F32 / QMOE_ACC_F64); LDBL is the oracle: every reduction, softmax, SwiGLU
 * and rotation in long double, rounded to f32 once at the end. Tests compare f64 variants with it. */
typedef enum { QMOE_REF_F32 = 0, QMOE_REF_F64 = 1, QMOE_REF_LDBL = 2 } qmoe_ref_prec;

/* The precision the CPU backend uses for a call's accumulator. */
qmoe_ref_prec qmoe_ref_prec_of(qmoe_acc acc);

/* Runs one stage on host memory: ptr[i] is buffer i (already offset by the caller), size[i] the bytes
 * available there. Checks the call (qmoe_stage_check), that every buffer is large enough and, where the
 * stage reads expert ids, that each lies in [0, E). Outputs may alias inputs where docs/stages.md allows
 * it (rope_neox and qk_norm_rope y = x, add y = a). */
int qmoe_ref_run(const qmoe_stage_call *c, qmoe_ref_prec prec, void *const ptr[QMOE_STAGE_MAX_BUFS],
                 const size_t size[QMOE_STAGE_MAX_BUFS]);

/* One stage of the reference: c already checked (qmoe_stage_check) and its buffers large enough; Q is the
 * call's qtype (NULL for stages that do not vary by it), B the buffers in contract order. Each stage's is
 * qmoe_ref_<stage>() in ref_stages.c; generated/c/ref_table.c lists them by stage id. */
typedef int qmoe_ref_stage_fn(const qmoe_stage_call *c, qmoe_ref_prec prec, const qmoe_qtype_info *q, void *const *b);
extern qmoe_ref_stage_fn *const qmoe_ref_table[];

#endif
