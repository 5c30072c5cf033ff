/* pv_schema.c: the contract schema as data — one key table per record kind — and the one walker that
 * consumes a YAML mapping through a table into a typed record, strictly (a leftover key is an error). */
#include "pv.h"
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

/* ---- Enumerations --------------------------------------------------------------------------------- */

static const char *const FIELD_TYPES[] = { "u8", "i8", "u16", "i16", "f16", "bf16", "f32", NULL };
static const char *const ACCS[] = { "f32", "f64", "q8", NULL };
static const char *const VARIES[] = { "qtype", "acc", NULL };
static const char *const PARAM_TYPES[] = { "int", "float", NULL };
static const char *const DTYPES[] = { "f32", "i32", "qtype", NULL };
static const char *const MODEL_STATUS[] = { "DRAFT", "ACTIVE_ALGORITHM_LEVEL", "ACTIVE_RUNTIME", NULL };
static const char *const METRICS[] = { "nmse", "max_abs_rel", "cosine", "finite", "equal", "agreement", "abs_err",
                                       "sum_err", "tokens_per_s", "ratio_to_ceiling", "bytes", "present", NULL };
static const char *const COMPARATORS[] = { "<=", "<", ">=", ">", "==", NULL };
static const char *const RUNS_ON[] = { "ci", "gpu", NULL };
static const char *const IMPL_STATUS[] = { "PENDING", "SHIPPED", "PARTIALLY_DISCHARGED", "DISCHARGED", NULL };
static const char *const TRACE_SCOPES[] = { "layer", "model", NULL };
static const char *const TRACE_DTYPES[] = { "f32", "i32", NULL };
/* Quantizer strategies runtime/quant/quant.c implements (test_quant checks each contract's choice runs). */
static const char *const QUANT_STRATEGIES[] = { "generic", "ggml_q8_0", "ggml_q8_k", "kquant_q4_k", "kquant_q5_k",
                                                "kquant_q6_k", NULL };
static const char *const AMEND_KINDS[] = { "initial", "addition", "change", "fix", "removal", NULL };

/* Bounds that real formats stay far inside, and that keep the expression checker's work per file small
 * (it evaluates every let for every element of a block). */
enum { BLOCK_ELEMENTS_MAX = 1024, BLOCK_MAX = 4096, DIM_MAX = 2147483647, EXPR_MAX = 512 };

#define NKEYS(a) (sizeof(a) / sizeof((a)[0]))

/* ---- Quant contracts ------------------------------------------------------------------------------ */

static const pv_key QUANT_FIELD_KEYS[] = {
  { .name = "name", .type = PV_T_STR, .flags = PV_REQ, .off = offsetof(pv_quant_field, name), .pat = PV_PAT_IDENT,
    .doc = "field name, as the decode expressions read it" },
  { .name = "type", .type = PV_T_STR, .flags = PV_REQ, .off = offsetof(pv_quant_field, type), .enums = FIELD_TYPES,
    .doc = "element type (little-endian)" },
  { .name = "count", .type = PV_T_INT, .flags = PV_REQ, .off = offsetof(pv_quant_field, count), .range = PV_R_GE1,
    .max = BLOCK_MAX, .doc = "number of elements (1: a scalar field, read without an index)" },
  { .name = "offset", .type = PV_T_INT, .flags = PV_REQ, .off = offsetof(pv_quant_field, offset), .range = PV_R_GE0,
    .max = BLOCK_MAX, .doc = "byte offset in the block" },
};
static const pv_record QUANT_FIELD = { "field", sizeof(pv_quant_field), QUANT_FIELD_KEYS, NKEYS(QUANT_FIELD_KEYS) };

static const pv_key QUANT_LET_KEYS[] = {
  { .name = "name", .type = PV_T_STR, .flags = PV_REQ, .off = offsetof(pv_quant_let, name), .pat = PV_PAT_IDENT,
    .doc = "name later expressions use" },
  { .name = "expr", .type = PV_T_STR, .flags = PV_REQ, .off = offsetof(pv_quant_let, expr), .pat = PV_PAT_NONBLANK,
    .max_len = EXPR_MAX, .doc = "decode expression (docs/DEVELOPING.md)" },
};
static const pv_record QUANT_LET = { "decode.let entry", sizeof(pv_quant_let), QUANT_LET_KEYS, NKEYS(QUANT_LET_KEYS) };

static const pv_key QUANT_DECODE_KEYS[] = {
  { .name = "let", .type = PV_T_LIST, .off = offsetof(pv_quant_decode, let), .elem = PV_T_REC, .rec = &QUANT_LET,
    .max_len = 32, .doc = "named intermediate values, in order (default: none)" },
  { .name = "value", .type = PV_T_STR, .flags = PV_REQ, .off = offsetof(pv_quant_decode, value), .pat = PV_PAT_NONBLANK,
    .max_len = EXPR_MAX, .doc = "float expression: the decoded value of element i" },
};
static const pv_record QUANT_DECODE = { "decode", sizeof(pv_quant_decode), QUANT_DECODE_KEYS, NKEYS(QUANT_DECODE_KEYS) };

static const pv_key QUANT_VECTOR_KEYS[] = {
  { .name = "bytes", .type = PV_T_STR, .flags = PV_REQ, .off = offsetof(pv_quant_vector, bytes),
    .doc = "hex of n whole blocks (whitespace ignored)" },
  { .name = "values", .type = PV_T_LIST, .flags = PV_REQ | PV_NONEMPTY, .off = offsetof(pv_quant_vector, values),
    .elem = PV_T_NUM, .max_len = 65536, .doc = "the n x block_elements f32 values they decode to" },
  { .name = "source", .type = PV_T_STR, .off = offsetof(pv_quant_vector, source), .pat = PV_PAT_NONBLANK,
    .doc = "where the vector comes from" },
};
static const pv_record QUANT_VECTOR = { "test vector", sizeof(pv_quant_vector), QUANT_VECTOR_KEYS, NKEYS(QUANT_VECTOR_KEYS) };

static const pv_key QUANT_QUANTIZER_KEYS[] = {
  { .name = "strategy", .type = PV_T_STR, .off = offsetof(pv_quant_quantizer, strategy), .enums = QUANT_STRATEGIES,
    .doc = "generic (derived from the decode rule; default) or a named search in runtime/quant/quant.c" },
  { .name = "rmse_max", .type = PV_T_NUM, .flags = PV_REQ, .off = offsetof(pv_quant_quantizer, rmse_max),
    .range = PV_R_GT0, .doc = "round-trip RMSE / RMS(x) bound on N(0,1) rows of 4096, tested by test_quant" },
  { .name = "total_error_max", .type = PV_T_NUM, .off = offsetof(pv_quant_quantizer, total_error_max),
    .range = PV_R_GT0, .doc = "llama.cpp test-quantize-fns bound on sqrt(Σerr²)/n for 0.1 + 2cos(i) (default 0.002)" },
  { .name = "source", .type = PV_T_STR, .off = offsetof(pv_quant_quantizer, source),
    .pat = PV_PAT_NONBLANK, .doc = "where the bounds come from" },
};
static const pv_record QUANT_QUANTIZER = { "quantizer", sizeof(pv_quant_quantizer), QUANT_QUANTIZER_KEYS,
                                           NKEYS(QUANT_QUANTIZER_KEYS) };

static const pv_key QUANT_KEYS[] = {
  { .name = "name", .type = PV_T_STR, .flags = PV_REQ, .off = offsetof(pv_quant, name), .pat = PV_PAT_NAME,
    .doc = "quant name; equals the file name without .yaml" },
  { .name = "ggml_type", .type = PV_T_INT, .flags = PV_REQ, .off = offsetof(pv_quant, ggml_type), .range = PV_R_GE0,
    .max = 65535, .doc = "GGUF tensor type id; unique across quant contracts" },
  { .name = "description", .type = PV_T_STR, .off = offsetof(pv_quant, description), .pat = PV_PAT_NONBLANK,
    .doc = "what the format is" },
  { .name = "block_elements", .type = PV_T_INT, .flags = PV_REQ, .off = offsetof(pv_quant, block_elements),
    .range = PV_R_GE1, .max = BLOCK_ELEMENTS_MAX, .doc = "weights per block" },
  { .name = "block_bytes", .type = PV_T_INT, .flags = PV_REQ, .off = offsetof(pv_quant, block_bytes),
    .range = PV_R_GE1, .max = BLOCK_MAX, .doc = "bytes per block; the fields tile it exactly" },
  { .name = "accumulators", .type = PV_T_LIST, .flags = PV_REQ | PV_NONEMPTY | PV_UNIQUE,
    .off = offsetof(pv_quant, accumulators), .elem = PV_T_STR, .enums = ACCS,
    .max_len = 3, .doc = "accumulator variants kernels are generated for (q8: integer block formats only)" },
  { .name = "fields", .type = PV_T_LIST, .flags = PV_REQ | PV_NONEMPTY, .off = offsetof(pv_quant, fields),
    .elem = PV_T_REC, .rec = &QUANT_FIELD, .max_len = 256, .doc = "the block layout" },
  { .name = "decode", .type = PV_T_REC, .flags = PV_REQ, .off = offsetof(pv_quant, decode), .rec = &QUANT_DECODE,
    .doc = "how element i of a block decodes" },
  { .name = "test_vectors", .type = PV_T_LIST, .off = offsetof(pv_quant, test_vectors), .elem = PV_T_REC,
    .rec = &QUANT_VECTOR, .max_len = 64, .doc = "blocks with their decoded values (default: none)" },
  { .name = "quantizer", .type = PV_T_REC, .off = offsetof(pv_quant, quantizer), .rec = &QUANT_QUANTIZER,
    .doc = "the reference quantizer's strategy and the error bounds it must meet (test_quant fails a format without)" },
  { .name = "file_type", .type = PV_T_INT, .off = offsetof(pv_quant, file_type), .range = PV_R_GE0, .max = 65535,
    .doc = "llama.cpp general.file_type (LLAMA_FTYPE_*) of a file in this type (default: none)" },
  { .name = "aliases", .type = PV_T_LIST, .flags = PV_UNIQUE, .off = offsetof(pv_quant, aliases), .elem = PV_T_STR,
    .pat = PV_PAT_NONBLANK, .max_len = 16, .doc = "other names of the format (e.g. Q4_K); unique across quant contracts" },
};
const pv_record pv_quant_record = { "quant contract", sizeof(pv_quant), QUANT_KEYS, NKEYS(QUANT_KEYS) };

/* ---- Stage contracts ------------------------------------------------------------------------------ */

static const pv_key STAGE_PARAM_KEYS[] = {
  { .name = "name", .type = PV_T_STR, .flags = PV_REQ, .off = offsetof(pv_stage_param, name), .pat = PV_PAT_IDENT,
    .doc = "parameter name" },
  { .name = "type", .type = PV_T_STR, .flags = PV_REQ, .off = offsetof(pv_stage_param, type), .enums = PARAM_TYPES,
    .doc = "int (qmoe_stage_call.p[]) or float (.f[])" },
  { .name = "doc", .type = PV_T_STR, .flags = PV_REQ, .off = offsetof(pv_stage_param, doc), .pat = PV_PAT_NONBLANK,
    .doc = "what it means" },
  { .name = "min", .type = PV_T_INT, .off = offsetof(pv_stage_param, min), .range = PV_R_GE0, .max = 1,
    .doc = "int params: least valid value, 0 or 1 (default 1: a count)" },
};
static const pv_record STAGE_PARAM = { "param", sizeof(pv_stage_param), STAGE_PARAM_KEYS, NKEYS(STAGE_PARAM_KEYS) };

static const pv_key STAGE_BUFFER_KEYS[] = {
  { .name = "name", .type = PV_T_STR, .flags = PV_REQ, .off = offsetof(pv_stage_buffer, name), .pat = PV_PAT_IDENT,
    .doc = "buffer name" },
  { .name = "dtype", .type = PV_T_STR, .flags = PV_REQ, .off = offsetof(pv_stage_buffer, dtype), .enums = DTYPES,
    .doc = "element type; qtype: raw quantized blocks of the stage's qtype" },
  { .name = "shape", .type = PV_T_LIST, .flags = PV_REQ | PV_NONEMPTY, .off = offsetof(pv_stage_buffer, shape),
    .elem = PV_T_SYM, .range = PV_R_GE1, .max = DIM_MAX,
    .max_len = 4, .doc = "dimensions, outermost first (at most 4, as GGUF): int params of the stage or ints >= 1" },
  { .name = "doc", .type = PV_T_STR, .flags = PV_REQ, .off = offsetof(pv_stage_buffer, doc), .pat = PV_PAT_NONBLANK,
    .doc = "what it holds" },
  { .name = "may_alias", .type = PV_T_STR, .off = offsetof(pv_stage_buffer, may_alias), .pat = PV_PAT_IDENT,
    .doc = "outputs only: an input of the same shape this output may be (in place)" },
  { .name = "indexes", .type = PV_T_STR, .off = offsetof(pv_stage_buffer, indexes), .pat = PV_PAT_IDENT,
    .doc = "i32 inputs: each value indexes one of this int param's items (tests draw values in [0, param))" },
};
static const pv_record STAGE_BUFFER = { "buffer", sizeof(pv_stage_buffer), STAGE_BUFFER_KEYS, NKEYS(STAGE_BUFFER_KEYS) };

static const pv_key STAGE_RULE_KEYS[] = {
  { .name = "check", .type = PV_T_STR, .flags = PV_REQ, .off = offsetof(pv_stage_rule, check), .pat = PV_PAT_NONBLANK,
    .doc = "condition over the params every call must meet (C operators; see docs/stages.md)" },
  { .name = "error", .type = PV_T_STR, .flags = PV_REQ, .off = offsetof(pv_stage_rule, error), .pat = PV_PAT_NONBLANK,
    .doc = "message when it fails; {name} gives a param's value" },
};
static const pv_record STAGE_RULE = { "rule", sizeof(pv_stage_rule), STAGE_RULE_KEYS, NKEYS(STAGE_RULE_KEYS) };

static const pv_key STAGE_TEST_PARAM_KEYS[] = {
  { .name = "name", .type = PV_T_STR, .flags = PV_REQ, .off = offsetof(pv_stage_test_param, name), .pat = PV_PAT_IDENT,
    .doc = "an int param of the stage" },
  { .name = "min", .type = PV_T_INT, .flags = PV_REQ, .off = offsetof(pv_stage_test_param, min), .range = PV_R_GE0,
    .doc = "least value the parity test draws" },
  { .name = "max", .type = PV_T_INT, .flags = PV_REQ, .off = offsetof(pv_stage_test_param, max), .range = PV_R_GE0,
    .doc = "largest value the parity test draws" },
  { .name = "step", .type = PV_T_INT, .off = offsetof(pv_stage_test_param, step), .range = PV_R_GE0,
    .doc = "drawn values are multiples of it (default 1)" },
};
static const pv_record STAGE_TEST_PARAM = { "test param", sizeof(pv_stage_test_param), STAGE_TEST_PARAM_KEYS,
                                            NKEYS(STAGE_TEST_PARAM_KEYS) };
static const char *const COMPARES[] = { "tolerance", "exact", NULL };

static const pv_key STAGE_TOKENS_KEYS[] = {
  { .name = "buffers", .type = PV_T_LIST, .flags = PV_REQ | PV_NONEMPTY | PV_UNIQUE, .off = offsetof(pv_stage_tokens, buffers),
    .elem = PV_T_STR, .pat = PV_PAT_IDENT, .max_len = 8,
    .doc = "f32/i32 buffers with one slice per token: token t's is at t times the buffer's size" },
  { .name = "params", .type = PV_T_LIST, .flags = PV_UNIQUE, .off = offsetof(pv_stage_tokens, params),
    .elem = PV_T_STR, .pat = PV_PAT_IDENT, .max_len = 8,
    .doc = "int params that grow by 1 per token (a position, a cache length)" },
};
static const pv_record STAGE_TOKENS = { "tokens", sizeof(pv_stage_tokens), STAGE_TOKENS_KEYS, NKEYS(STAGE_TOKENS_KEYS) };

static const pv_key STAGE_KEYS[] = {
  { .name = "name", .type = PV_T_STR, .flags = PV_REQ, .off = offsetof(pv_stage, name), .pat = PV_PAT_NAME,
    .doc = "stage name; equals the file name without .yaml" },
  { .name = "trace", .type = PV_T_STR, .flags = PV_REQ, .off = offsetof(pv_stage, trace), .pat = PV_PAT_NAME,
    .doc = "name of the stage's tensors in traces (unique)" },
  { .name = "description", .type = PV_T_STR, .flags = PV_REQ, .off = offsetof(pv_stage, description),
    .pat = PV_PAT_NONBLANK, .doc = "what the stage computes" },
  { .name = "varies_by", .type = PV_T_LIST, .flags = PV_REQ | PV_UNIQUE, .off = offsetof(pv_stage, varies_by),
    .elem = PV_T_STR, .enums = VARIES, .max_len = 2, .doc = "variant axes: a subset of [qtype, acc], may be empty" },
  { .name = "qtypes", .type = PV_T_ALL_OR_LIST, .flags = PV_NONEMPTY | PV_UNIQUE, .off = offsetof(pv_stage, qtypes),
    .elem = PV_T_STR, .pat = PV_PAT_NAME, .max_len = 256, .doc = "when qtype varies: `all` or a list of quant names" },
  { .name = "accumulators", .type = PV_T_LIST, .flags = PV_NONEMPTY | PV_UNIQUE,
    .off = offsetof(pv_stage, accumulators), .elem = PV_T_STR, .enums = ACCS,
    .doc = "when acc varies: the accumulator precisions" },
  { .name = "params", .type = PV_T_LIST, .flags = PV_REQ | PV_NONEMPTY, .off = offsetof(pv_stage, params),
    .elem = PV_T_REC, .rec = &STAGE_PARAM, .max_len = 64, .doc = "scalar parameters, in call order" },
  { .name = "inputs", .type = PV_T_LIST, .flags = PV_REQ | PV_NONEMPTY, .off = offsetof(pv_stage, inputs),
    .elem = PV_T_REC, .rec = &STAGE_BUFFER, .max_len = 64, .doc = "input buffers, in call order" },
  { .name = "outputs", .type = PV_T_LIST, .flags = PV_REQ | PV_NONEMPTY, .off = offsetof(pv_stage, outputs),
    .elem = PV_T_REC, .rec = &STAGE_BUFFER, .max_len = 64, .doc = "output buffers, in call order after the inputs" },
  { .name = "falsifiers", .type = PV_T_LIST, .flags = PV_REQ | PV_UNIQUE, .off = offsetof(pv_stage, falsifiers),
    .elem = PV_T_STR, .pat = PV_PAT_FALSIFY, .max_len = 256, .doc = "falsification tests (model contracts) that hold it to account" },
  { .name = "order", .type = PV_T_INT, .off = offsetof(pv_stage, order), .range = PV_R_GE0, .max = 1000,
    .doc = "its qmoe_stage enum value (runtime/stages/backend.h); unique" },
  { .name = "requires", .type = PV_T_LIST, .off = offsetof(pv_stage, requires), .elem = PV_T_REC, .rec = &STAGE_RULE,
    .max_len = 64, .doc = "rules over the params, checked on every call (runtime/stages/stage_check.c)" },
  { .name = "compare", .type = PV_T_STR, .off = offsetof(pv_stage, compare), .enums = COMPARES,
    .doc = "how parity tests judge f32 outputs: within the falsifiers' tolerance (default) or bit for bit" },
  { .name = "test_params", .type = PV_T_LIST, .off = offsetof(pv_stage, test_params), .elem = PV_T_REC,
    .rec = &STAGE_TEST_PARAM, .max_len = 8, .doc = "shapes the generic parity test draws (stages it has no recipe for)" },
  { .name = "tokens", .type = PV_T_REC, .off = offsetof(pv_stage, tokens), .rec = &STAGE_TOKENS,
    .doc = "a call for T tokens is T one-token calls: these buffers advance by their size, these params by 1" },
};
const pv_record pv_stage_record = { "stage contract", sizeof(pv_stage), STAGE_KEYS, NKEYS(STAGE_KEYS) };

/* ---- Model contracts ------------------------------------------------------------------------------ */

static const pv_key MODEL_META_KEYS[] = {
  { .name = "id", .type = PV_T_STR, .flags = PV_REQ, .off = offsetof(pv_model_meta, id), .pat = PV_PAT_MODEL_ID,
    .doc = "contract id; equals the file name without .yaml" },
  { .name = "version", .type = PV_T_STR, .flags = PV_REQ, .off = offsetof(pv_model_meta, version),
    .pat = PV_PAT_SEMVER, .doc = "semantic version; equals the newest amendment's" },
  { .name = "status", .type = PV_T_STR, .flags = PV_REQ, .off = offsetof(pv_model_meta, status),
    .enums = MODEL_STATUS, .doc = "how far the contract is discharged" },
  { .name = "title", .type = PV_T_STR, .flags = PV_REQ, .off = offsetof(pv_model_meta, title), .pat = PV_PAT_NONBLANK,
    .doc = "one line" },
  { .name = "description", .type = PV_T_STR, .off = offsetof(pv_model_meta, description), .pat = PV_PAT_NONBLANK,
    .doc = "a paragraph" },
  { .name = "references", .type = PV_T_LIST, .flags = PV_REQ, .off = offsetof(pv_model_meta, references),
    .elem = PV_T_STR, .pat = PV_PAT_NONBLANK, .max_len = 256, .doc = "sources of the facts (papers, URLs, files)" },
};
static const pv_record MODEL_META = { "metadata", sizeof(pv_model_meta), MODEL_META_KEYS, NKEYS(MODEL_META_KEYS) };

#define DIM(field, what) \
  { .name = #field, .type = PV_T_INT, .flags = PV_REQ, .off = offsetof(pv_model_dims, field), .range = PV_R_GE1, \
    .max = DIM_MAX, .doc = what }
static const pv_key MODEL_DIMS_KEYS[] = {
  DIM(hidden, "embedding width (n_embd)"),
  DIM(layers, "decoder layers"),
  DIM(experts, "experts per MoE layer"),
  DIM(experts_used, "experts chosen per token (<= experts)"),
  DIM(expert_ff, "expert FFN width"),
  DIM(heads, "query heads"),
  DIM(kv_heads, "key/value heads (divides heads)"),
  DIM(head_dim, "dimension of one head"),
  DIM(vocab, "vocabulary size"),
  { .name = "rms_eps", .type = PV_T_NUM, .flags = PV_REQ, .off = offsetof(pv_model_dims, rms_eps),
    .range = PV_R_GT0, .doc = "RMSNorm epsilon" },
};
#undef DIM
static const pv_record MODEL_DIMS = { "dims", sizeof(pv_model_dims), MODEL_DIMS_KEYS, NKEYS(MODEL_DIMS_KEYS) };

static const pv_key EQUATION_KEYS[] = {
  { .name = "id", .type = PV_T_STR, .flags = PV_REQ, .off = offsetof(pv_equation, id), .pat = PV_PAT_EQ,
    .doc = "EQ-... (unique)" },
  { .name = "name", .type = PV_T_STR, .flags = PV_REQ, .off = offsetof(pv_equation, name), .pat = PV_PAT_NONBLANK,
    .doc = "short name" },
  { .name = "formula", .type = PV_T_STR, .flags = PV_REQ, .off = offsetof(pv_equation, formula),
    .pat = PV_PAT_NONBLANK, .doc = "the equation" },
  { .name = "invariants", .type = PV_T_LIST, .flags = PV_REQ, .off = offsetof(pv_equation, invariants),
    .elem = PV_T_STR, .pat = PV_PAT_NONBLANK, .max_len = 256, .doc = "properties any implementation keeps" },
};
static const pv_record EQUATION = { "equation", sizeof(pv_equation), EQUATION_KEYS, NKEYS(EQUATION_KEYS) };

static const pv_key CRITERION_KEYS[] = {
  { .name = "id", .type = PV_T_STR, .flags = PV_REQ, .off = offsetof(pv_criterion, id), .pat = PV_PAT_AC,
    .doc = "AC-... (unique)" },
  { .name = "description", .type = PV_T_STR, .flags = PV_REQ, .off = offsetof(pv_criterion, description),
    .pat = PV_PAT_NONBLANK, .doc = "what must hold" },
};
static const pv_record CRITERION = { "acceptance criterion", sizeof(pv_criterion), CRITERION_KEYS,
                                     NKEYS(CRITERION_KEYS) };

static const pv_key CHECK_KEYS[] = {
  { .name = "metric", .type = PV_T_STR, .flags = PV_REQ, .off = offsetof(pv_check, metric), .enums = METRICS,
    .doc = "what is measured" },
  { .name = "comparator", .type = PV_T_STR, .flags = PV_REQ, .off = offsetof(pv_check, comparator),
    .enums = COMPARATORS, .doc = "how the measurement must compare with the threshold (quote >= and >)" },
  { .name = "threshold", .type = PV_T_NUM, .flags = PV_REQ, .off = offsetof(pv_check, threshold),
    .doc = "the bound; its range depends on the metric" },
  { .name = "compares", .type = PV_T_STR, .flags = PV_REQ, .off = offsetof(pv_check, compares),
    .pat = PV_PAT_NONBLANK, .doc = "what is compared with what" },
  { .name = "runs_on", .type = PV_T_STR, .flags = PV_REQ, .off = offsetof(pv_check, runs_on), .enums = RUNS_ON,
    .doc = "ci (any machine) or gpu (needs a GPU)" },
  { .name = "stages", .type = PV_T_LIST, .flags = PV_UNIQUE, .off = offsetof(pv_check, stages), .elem = PV_T_STR,
    .pat = PV_PAT_NAME, .max_len = 256, .doc = "the stage contracts it applies to (default: all)" },
  { .name = "acc", .type = PV_T_STR, .off = offsetof(pv_check, acc), .enums = ACCS,
    .doc = "only this accumulator precision (default: each)" },
};
static const pv_record CHECK = { "check", sizeof(pv_check), CHECK_KEYS, NKEYS(CHECK_KEYS) };

static const pv_key FALSIFIER_KEYS[] = {
  { .name = "id", .type = PV_T_STR, .flags = PV_REQ, .off = offsetof(pv_falsifier, id), .pat = PV_PAT_FALSIFY,
    .doc = "FALSIFY-... (unique; generated tests use it)" },
  { .name = "rule", .type = PV_T_STR, .flags = PV_REQ, .off = offsetof(pv_falsifier, rule), .pat = PV_PAT_NONBLANK,
    .doc = "the claim" },
  { .name = "prediction", .type = PV_T_STR, .flags = PV_REQ, .off = offsetof(pv_falsifier, prediction),
    .pat = PV_PAT_NONBLANK, .doc = "what a run observes when the claim holds" },
  { .name = "if_fails", .type = PV_T_STR, .flags = PV_REQ, .off = offsetof(pv_falsifier, if_fails),
    .pat = PV_PAT_NONBLANK, .doc = "what to suspect when it does not" },
  { .name = "criteria", .type = PV_T_LIST, .flags = PV_REQ | PV_NONEMPTY | PV_UNIQUE,
    .off = offsetof(pv_falsifier, criteria), .elem = PV_T_STR, .pat = PV_PAT_AC,
    .max_len = 256, .doc = "acceptance criteria it tests" },
  { .name = "check", .type = PV_T_REC, .flags = PV_REQ, .off = offsetof(pv_falsifier, check), .rec = &CHECK,
    .doc = "the measurement" },
};
static const pv_record FALSIFIER = { "falsification test", sizeof(pv_falsifier), FALSIFIER_KEYS,
                                     NKEYS(FALSIFIER_KEYS) };

static const pv_key IMPL_KEYS[] = {
  { .name = "id", .type = PV_T_STR, .flags = PV_REQ, .off = offsetof(pv_impl_stage, id), .pat = PV_PAT_IMPL,
    .doc = "IMPL-... (unique)" },
  { .name = "name", .type = PV_T_STR, .flags = PV_REQ, .off = offsetof(pv_impl_stage, name), .pat = PV_PAT_NONBLANK,
    .doc = "short name" },
  { .name = "status", .type = PV_T_STR, .flags = PV_REQ, .off = offsetof(pv_impl_stage, status),
    .enums = IMPL_STATUS, .doc = "progress" },
  { .name = "falsifiers", .type = PV_T_LIST, .flags = PV_REQ | PV_UNIQUE, .off = offsetof(pv_impl_stage, falsifiers),
    .elem = PV_T_STR, .pat = PV_PAT_FALSIFY, .max_len = 4096, .doc = "falsification tests that discharge it" },
  { .name = "notes", .type = PV_T_STR, .off = offsetof(pv_impl_stage, notes), .pat = PV_PAT_NONBLANK,
    .doc = "free text" },
};
static const pv_record IMPL = { "implementation stage", sizeof(pv_impl_stage), IMPL_KEYS, NKEYS(IMPL_KEYS) };

static const pv_key AMEND_KEYS[] = {
  { .name = "version", .type = PV_T_STR, .flags = PV_REQ, .off = offsetof(pv_amendment, version),
    .pat = PV_PAT_SEMVER, .doc = "version it produced (strictly increasing)" },
  { .name = "date", .type = PV_T_STR, .flags = PV_REQ, .off = offsetof(pv_amendment, date), .pat = PV_PAT_DATE,
    .doc = "YYYY-MM-DD" },
  { .name = "kind", .type = PV_T_STR, .flags = PV_REQ, .off = offsetof(pv_amendment, kind), .enums = AMEND_KINDS,
    .doc = "kind of change" },
  { .name = "title", .type = PV_T_STR, .flags = PV_REQ, .off = offsetof(pv_amendment, title), .pat = PV_PAT_NONBLANK,
    .doc = "one line" },
  { .name = "description", .type = PV_T_STR, .flags = PV_REQ, .off = offsetof(pv_amendment, description),
    .pat = PV_PAT_NONBLANK, .doc = "what changed and why" },
};
static const pv_record AMEND = { "amendment", sizeof(pv_amendment), AMEND_KEYS, NKEYS(AMEND_KEYS) };

static const pv_key TRACE_POINT_KEYS[] = {
  { .name = "name", .type = PV_T_STR, .flags = PV_REQ, .off = offsetof(pv_trace_point, name), .pat = PV_PAT_IDENT,
    .doc = "trace name (unique): the tensor is blk.<L>.<name> (scope layer) or <name> (scope model)" },
  { .name = "scope", .type = PV_T_STR, .flags = PV_REQ, .off = offsetof(pv_trace_point, scope), .enums = TRACE_SCOPES,
    .doc = "layer: recorded per decoder layer; model: once per position" },
  { .name = "elements", .type = PV_T_STR, .flags = PV_REQ, .off = offsetof(pv_trace_point, elements),
    .pat = PV_PAT_NONBLANK, .doc = "elements per position: a dims key or a product of them (heads*head_dim)" },
  { .name = "dtype", .type = PV_T_STR, .flags = PV_REQ, .off = offsetof(pv_trace_point, dtype), .enums = TRACE_DTYPES,
    .doc = "element type of the recorded values" },
  { .name = "doc", .type = PV_T_STR, .flags = PV_REQ, .off = offsetof(pv_trace_point, doc), .pat = PV_PAT_NONBLANK,
    .doc = "which value of the forward it is" },
};
static const pv_record TRACE_POINT = { "trace point", sizeof(pv_trace_point), TRACE_POINT_KEYS,
                                       NKEYS(TRACE_POINT_KEYS) };

static const pv_key MODEL_KEYS[] = {
  { .name = "metadata", .type = PV_T_REC, .flags = PV_REQ, .off = offsetof(pv_model, metadata), .rec = &MODEL_META,
    .doc = "identity and status" },
  { .name = "dims", .type = PV_T_REC, .flags = PV_REQ, .off = offsetof(pv_model, dims), .rec = &MODEL_DIMS,
    .doc = "model dimensions" },
  { .name = "equations", .type = PV_T_LIST, .flags = PV_REQ | PV_NONEMPTY, .off = offsetof(pv_model, equations),
    .elem = PV_T_REC, .rec = &EQUATION, .max_len = 4096, .doc = "the math the stages implement" },
  { .name = "acceptance_criteria", .type = PV_T_LIST, .flags = PV_REQ | PV_NONEMPTY,
    .off = offsetof(pv_model, acceptance_criteria), .elem = PV_T_REC, .rec = &CRITERION,
    .max_len = 4096, .doc = "what must hold" },
  { .name = "falsification_tests", .type = PV_T_LIST, .flags = PV_REQ | PV_NONEMPTY,
    .off = offsetof(pv_model, falsification_tests), .elem = PV_T_REC, .rec = &FALSIFIER,
    .max_len = 4096, .doc = "measurements that would show a criterion false" },
  { .name = "implementation_stages", .type = PV_T_LIST, .flags = PV_REQ,
    .off = offsetof(pv_model, implementation_stages), .elem = PV_T_REC, .rec = &IMPL,
    .max_len = 4096, .doc = "delivery steps and the falsifiers that discharge them" },
  { .name = "amendment_history", .type = PV_T_LIST, .flags = PV_REQ | PV_NONEMPTY,
    .off = offsetof(pv_model, amendment_history), .elem = PV_T_REC, .rec = &AMEND,
    .max_len = 4096, .doc = "every version, oldest first" },
  { .name = "trace_points", .type = PV_T_LIST, .off = offsetof(pv_model, trace_points), .elem = PV_T_REC,
    .rec = &TRACE_POINT, .max_len = 256, .doc = "the forward's traceable values, in forward order" },
};
const pv_record pv_model_record = { "model contract", sizeof(pv_model), MODEL_KEYS, NKEYS(MODEL_KEYS) };

/* ---- Recipe contracts ----------------------------------------------------------------------------- */

static const pv_key RECIPE_RULE_KEYS[] = {
  { .name = "tensors", .type = PV_T_LIST, .flags = PV_REQ | PV_NONEMPTY | PV_UNIQUE, .off = offsetof(pv_recipe_rule, tensors),
    .elem = PV_T_STR, .pat = PV_PAT_NONBLANK, .max_len = 64,
    .doc = "tensor name patterns; `*` matches any run of characters (a layer tensor is blk.<i>.<rest>)" },
  { .name = "dims", .type = PV_T_INT, .off = offsetof(pv_recipe_rule, dims), .range = PV_R_GE1, .max = 4,
    .doc = "only tensors of this many dimensions (default: any)" },
  { .name = "when", .type = PV_T_STR, .off = offsetof(pv_recipe_rule, when), .pat = PV_PAT_NONBLANK, .max_len = EXPR_MAX,
    .doc = "condition in the decode expression language over i (layer) and n (layers); only layer tensors match" },
  { .name = "qtype", .type = PV_T_STR, .flags = PV_REQ, .off = offsetof(pv_recipe_rule, qtype), .pat = PV_PAT_NAME,
    .doc = "quant contract the matching tensors get" },
  { .name = "doc", .type = PV_T_STR, .off = offsetof(pv_recipe_rule, doc), .pat = PV_PAT_NONBLANK, .doc = "why" },
};
static const pv_record RECIPE_RULE = { "rule", sizeof(pv_recipe_rule), RECIPE_RULE_KEYS, NKEYS(RECIPE_RULE_KEYS) };

static const pv_key RECIPE_KEYS[] = {
  { .name = "name", .type = PV_T_STR, .flags = PV_REQ, .off = offsetof(pv_recipe, name), .pat = PV_PAT_NAME,
    .doc = "recipe name (`qmoe quantize IN OUT NAME`); equals the file name without .yaml" },
  { .name = "description", .type = PV_T_STR, .flags = PV_REQ, .off = offsetof(pv_recipe, description),
    .pat = PV_PAT_NONBLANK, .doc = "what it is" },
  { .name = "file_type", .type = PV_T_INT, .flags = PV_REQ, .off = offsetof(pv_recipe, file_type), .range = PV_R_GE0,
    .max = 65535, .doc = "llama.cpp general.file_type (LLAMA_FTYPE_*) of a file it writes" },
  { .name = "source", .type = PV_T_STR, .off = offsetof(pv_recipe, source), .pat = PV_PAT_NONBLANK,
    .doc = "where the recipe comes from" },
  { .name = "rules", .type = PV_T_LIST, .flags = PV_REQ | PV_NONEMPTY, .off = offsetof(pv_recipe, rules),
    .elem = PV_T_REC, .rec = &RECIPE_RULE, .max_len = 256, .doc = "in order; the first rule matching a tensor decides" },
};
const pv_record pv_recipe_record = { "recipe contract", sizeof(pv_recipe), RECIPE_KEYS, NKEYS(RECIPE_KEYS) };

/* ---- The walker ----------------------------------------------------------------------------------- */

/* Mapping lookup by exact key text (keys may hold NUL bytes; qy_get compares C strings). */
const qy_node *pv_get(const qy_node *map, const char *key) {
  if (!map || map->kind != QY_MAP) return NULL;
  size_t len = strlen(key);
  for (size_t i = 0; i < map->n; i++) {
    const qy_node *k = map->items[2 * i];
    if (k->kind == QY_SCALAR && k->len == len && !memcmp(k->str, key, len)) return map->items[2 * i + 1];
  }
  return NULL;
}

static size_t elem_size(const pv_key *k) {
  switch (k->elem) {
  case PV_T_INT: return sizeof(pv_int);
  case PV_T_NUM: return sizeof(pv_num);
  case PV_T_STR: return sizeof(pv_str);
  case PV_T_SYM: return sizeof(pv_sym);
  case PV_T_REC: return k->rec->size;
  default: return 0; /* lists of lists are not part of the schema */
  }
}

/* A node whose value yaml_tree replaced (oversized scalar, alias) was already reported: say nothing. */
static int poisoned(const pv_walk_ctx *c, const qy_node *n) {
  for (size_t i = 0; i < c->npoison; i++)
    if (c->poison[i].line == n->line && c->poison[i].col == n->col) return 1;
  return 0;
}

static const char *type_name(pv_type t) {
  switch (t) {
  case PV_T_INT: return "an int";
  case PV_T_NUM: return "a float";
  case PV_T_STR: return "a string";
  case PV_T_SYM: return "a name or an int";
  case PV_T_REC: return "a mapping";
  case PV_T_LIST: return "a list";
  case PV_T_ALL_OR_LIST: return "`all` or a list";
  }
  return "?";
}

static void wrong_type(pv_walk_ctx *c, const char *what, pv_type want, const qy_node *n, pv_sclass got) {
  char q[96];
  const char *hint = "";
  if (got == PV_SC_STR && n->style == QY_QUOTED && (want == PV_T_INT || want == PV_T_NUM)) {
    qy_node plain = *n;
    plain.style = QY_PLAIN;
    pv_sclass unq = pv_classify(&plain, NULL, NULL);
    if (unq == PV_SC_INT || (unq == PV_SC_FLOAT && want == PV_T_NUM))
      hint = n->tag == QY_TAG_STR ? "; remove the !!str tag" : "; remove the quotes";
  } else if (want == PV_T_STR && (got == PV_SC_INT || got == PV_SC_FLOAT || got == PV_SC_BOOL)) {
    hint = "; quote it if it is text";
  } else if (want == PV_T_INT && got == PV_SC_FLOAT) {
    hint = n->tag == QY_TAG_FLOAT ? "; remove the !!float tag" : "; write a whole number without a decimal point";
  }
  if (got == PV_SC_BADNUM) {
    diag_add(c->diag, DIAG_ERROR, c->file, n->line, n->col, "E103",
             "'%s' must be %s, got '%s': ints are decimal without leading zeros (or 0x hex) and fit in 64 bits, "
             "floats are finite", what, type_name(want), pv_quote(q, sizeof q, n->str, n->len));
  } else if (n->kind == QY_SCALAR && got != PV_SC_NULL) {
    diag_add(c->diag, DIAG_ERROR, c->file, n->line, n->col, "E103", "'%s' must be %s, got %s ('%s')%s", what,
             type_name(want), pv_sclass_name(got), pv_quote(q, sizeof q, n->str, n->len), hint);
  } else {
    diag_add(c->diag, DIAG_ERROR, c->file, n->line, n->col, "E103", "'%s' must be %s, got %s%s", what,
             type_name(want), pv_sclass_name(got), hint);
  }
}

/* Returns 1 when V is within the key's range (else reports it). */
static int check_int_range(pv_walk_ctx *c, const char *what, const pv_key *k, const qy_node *n, int64_t v) {
  int64_t lo = k->range == PV_R_GE1 ? 1 : k->range == PV_R_GE0 ? 0 : k->range == PV_R_GT0 ? 1 : INT64_MIN;
  if (v < lo) {
    diag_add(c->diag, DIAG_ERROR, c->file, n->line, n->col, "E106", "'%s' must be at least %lld, got %lld", what,
             (long long)lo, (long long)v);
    return 0;
  }
  if (k->max && v > k->max) {
    diag_add(c->diag, DIAG_ERROR, c->file, n->line, n->col, "E106", "'%s' must be at most %lld, got %lld", what,
             (long long)k->max, (long long)v);
    return 0;
  }
  return 1;
}

/* Returns 1 when the string is one of the key's enum values and matches its pattern (else reports it). */
static int check_string(pv_walk_ctx *c, const char *what, const pv_key *k, const qy_node *n) {
  char q[96];
  if (k->enums) {
    size_t ne = 0;
    while (k->enums[ne]) ne++;
    for (size_t i = 0; i < ne; i++)
      if (strlen(k->enums[i]) == n->len && !memcmp(k->enums[i], n->str, n->len)) return 1;
    char list[256] = "";
    for (size_t i = 0; i < ne; i++) {
      strncat(list, k->enums[i], sizeof list - strlen(list) - 1);
      if (i + 1 < ne) strncat(list, ", ", sizeof list - strlen(list) - 1);
    }
    const char *s = strlen(n->str) == n->len ? pv_suggest(n->str, k->enums, ne) : NULL;
    if (s)
      diag_add(c->diag, DIAG_ERROR, c->file, n->line, n->col, "E104", "'%s' is '%s', not one of: %s; did you mean '%s'?",
               what, pv_quote(q, sizeof q, n->str, n->len), list, s);
    else
      diag_add(c->diag, DIAG_ERROR, c->file, n->line, n->col, "E104", "'%s' is '%s', not one of: %s", what,
               pv_quote(q, sizeof q, n->str, n->len), list);
    return 0;
  }
  if (k->pat != PV_PAT_NONE && !pv_match(k->pat, n->str, n->len)) {
    if (k->pat == PV_PAT_NONBLANK)
      diag_add(c->diag, DIAG_ERROR, c->file, n->line, n->col, "E105", "'%s' is blank; write %s", what,
               pv_pattern_hint(k->pat));
    else
      diag_add(c->diag, DIAG_ERROR, c->file, n->line, n->col, "E105", "'%s' is '%s', not %s", what,
               pv_quote(q, sizeof q, n->str, n->len), pv_pattern_hint(k->pat));
    return 0;
  }
  return 1;
}

static void walk_list(pv_walk_ctx *c, const char *what, const pv_key *k, const qy_node *n, pv_list *out);

/* Reads node N as type WANT (the key's own type, or its list element type) into OUT. */
static void walk_value(pv_walk_ctx *c, const char *what, const pv_key *k, pv_type want, const qy_node *n, void *out) {
  if (poisoned(c, n)) return;
  int64_t iv = 0;
  double dv = 0;
  pv_sclass sc = pv_classify(n, &iv, &dv);
  switch (want) {
  case PV_T_INT: {
    if (sc != PV_SC_INT) { wrong_type(c, what, want, n, sc); return; }
    if (!check_int_range(c, what, k, n, iv)) return;
    pv_int *o = out;
    o->node = n;
    o->v = iv;
    return;
  }
  case PV_T_NUM: {
    if (sc != PV_SC_INT && sc != PV_SC_FLOAT) { wrong_type(c, what, want, n, sc); return; }
    char q[96];
    if (k->range == PV_R_GT0 && !(dv > 0)) {
      diag_add(c->diag, DIAG_ERROR, c->file, n->line, n->col, "E106", "'%s' must be greater than 0, got %s", what,
               pv_quote(q, sizeof q, n->str, n->len));
      return;
    }
    pv_num *o = out;
    o->node = n;
    o->v = dv;
    return;
  }
  case PV_T_STR: {
    if (sc != PV_SC_STR) { wrong_type(c, what, want, n, sc); return; }
    if (k->max_len && n->len > k->max_len && k->type == PV_T_STR) {
      diag_add(c->diag, DIAG_ERROR, c->file, n->line, n->col, "E106", "'%s' is %zu bytes long; at most %zu", what,
               n->len, k->max_len);
      return;
    }
    if (!check_string(c, what, k, n)) return;
    pv_str *o = out;
    o->node = n;
    o->s = n->str;
    return;
  }
  case PV_T_SYM: {
    pv_sym *o = out;
    if (sc == PV_SC_INT) {
      if (!check_int_range(c, what, k, n, iv)) return;
      o->node = n;
      o->v = iv;
      o->is_int = 1;
      return;
    }
    if (sc != PV_SC_STR) { wrong_type(c, what, want, n, sc); return; }
    if (!pv_match(PV_PAT_IDENT, n->str, n->len)) {
      char q[96];
      diag_add(c->diag, DIAG_ERROR, c->file, n->line, n->col, "E105", "'%s' is '%s', not an int or %s", what,
               pv_quote(q, sizeof q, n->str, n->len), pv_pattern_hint(PV_PAT_IDENT));
      return;
    }
    o->node = n;
    o->s = n->str;
    return;
  }
  case PV_T_REC:
    pv_walk_record(c, n, k->rec, out, what);
    return;
  case PV_T_LIST:
    if (sc != PV_SC_SEQ) { wrong_type(c, what, want, n, sc); return; }
    walk_list(c, what, k, n, out);
    return;
  case PV_T_ALL_OR_LIST: {
    pv_all_or_list *o = out;
    if (sc == PV_SC_STR && !strcmp(n->str, "all")) {
      o->node = n;
      o->all = 1;
      return;
    }
    if (sc != PV_SC_SEQ) { wrong_type(c, what, want, n, sc); return; }
    o->node = n;
    walk_list(c, what, k, n, &o->list);
    return;
  }
  }
}

static int cmp_str_node(const void *a, const void *b) {
  const qy_node *x = *(const qy_node *const *)a, *y = *(const qy_node *const *)b;
  size_t n = x->len < y->len ? x->len : y->len;
  int c = memcmp(x->str, y->str, n);
  if (c) return c;
  if (x->len != y->len) return x->len < y->len ? -1 : 1;
  if (x->line != y->line) return x->line < y->line ? -1 : 1;
  return x->col < y->col ? -1 : x->col > y->col;
}

static void walk_list(pv_walk_ctx *c, const char *what, const pv_key *k, const qy_node *n, pv_list *out) {
  size_t es = elem_size(k);
  if (k->max_len && n->n > k->max_len) {
    diag_add(c->diag, DIAG_ERROR, c->file, n->line, n->col, "E106", "'%s' has %zu items; at most %zu", what, n->n,
             k->max_len);
    return;
  }
  out->node = n;
  out->n = n->n;
  out->items = n->n && es ? xcalloc(n->n, es) : NULL;
  if (!es) out->n = 0;
  if ((k->flags & PV_NONEMPTY) && n->n == 0)
    diag_add(c->diag, DIAG_ERROR, c->file, n->line, n->col, "E107", "'%s' must not be empty", what);
  for (size_t i = 0; i < out->n; i++) {
    char item[128];
    snprintf(item, sizeof item, "%s[%zu]", what, i + 1);
    walk_value(c, item, k, k->elem, n->items[i], (char *)out->items + i * es);
  }
  if ((k->flags & PV_UNIQUE) && n->n > 1) {
    /* Sorted, so a long list costs n log n, not n^2. */
    const qy_node **sorted = xmalloc(n->n * sizeof *sorted);
    size_t m = 0;
    for (size_t i = 0; i < n->n; i++)
      if (n->items[i]->kind == QY_SCALAR) sorted[m++] = n->items[i];
    qsort(sorted, m, sizeof *sorted, cmp_str_node);
    for (size_t i = 1; i < m; i++) {
      const qy_node *a = sorted[i - 1], *b = sorted[i];
      if (a->len == b->len && !memcmp(a->str, b->str, a->len)) {
        char q[96];
        diag_add(c->diag, DIAG_ERROR, c->file, b->line, b->col, "E108",
                 "'%s' lists '%s' twice (also at line %d, column %d)", what, pv_quote(q, sizeof q, b->str, b->len),
                 a->line, a->col);
      }
    }
    free(sorted);
  }
}

void pv_walk_record(pv_walk_ctx *c, const qy_node *map, const pv_record *r, void *out, const char *what) {
  if (poisoned(c, map)) return;
  if (map->kind != QY_MAP) {
    pv_sclass sc = pv_classify(map, NULL, NULL);
    if (!what) {
      diag_add(c->diag, DIAG_ERROR, c->file, map->line, map->col, "E103",
               "a %s must be a mapping of keys to values, got %s", r->name, pv_sclass_name(sc));
    } else {
      wrong_type(c, what, PV_T_REC, map, sc);
    }
    return;
  }
  *(const qy_node **)out = map; /* every record struct starts with its node */
  const char *names[32];
  size_t nn = r->nkeys < 32 ? r->nkeys : 32;
  for (size_t i = 0; i < nn; i++) names[i] = r->keys[i].name;
  for (size_t i = 0; i < map->n; i++) {
    const qy_node *key = map->items[2 * i], *val = map->items[2 * i + 1];
    if (key->kind != QY_SCALAR) continue; /* yaml_tree reported it (Y008) */
    const pv_key *k = NULL;
    for (size_t j = 0; j < r->nkeys; j++)
      if (strlen(r->keys[j].name) == key->len && !memcmp(r->keys[j].name, key->str, key->len)) k = &r->keys[j];
    if (!k) {
      char q[96];
      const char *s = strlen(key->str) == key->len ? pv_suggest(key->str, names, nn) : NULL;
      if (s) {
        diag_add(c->diag, DIAG_ERROR, c->file, key->line, key->col, "E101", "unknown key '%s' in %s; did you mean '%s'?",
                 pv_quote(q, sizeof q, key->str, key->len), r->name, s);
      } else {
        char list[512] = "";
        for (size_t j = 0; j < nn; j++) {
          strncat(list, names[j], sizeof list - strlen(list) - 1);
          if (j + 1 < nn) strncat(list, ", ", sizeof list - strlen(list) - 1);
        }
        diag_add(c->diag, DIAG_ERROR, c->file, key->line, key->col, "E101", "unknown key '%s' in %s; the keys are: %s",
                 pv_quote(q, sizeof q, key->str, key->len), r->name, list);
      }
      continue;
    }
    /* Duplicate keys were reported by yaml_tree (Y002); the first one wins. */
    if (pv_get(map, k->name) != val) continue;
    walk_value(c, k->name, k, k->type, val, (char *)out + k->off);
  }
  for (size_t j = 0; j < r->nkeys; j++) {
    const pv_key *k = &r->keys[j];
    if ((k->flags & PV_REQ) && !pv_get(map, k->name))
      diag_add(c->diag, DIAG_ERROR, c->file, map->line, map->col, "E102", "missing required key '%s' in %s: %s",
               k->name, r->name, k->doc ? k->doc : "");
  }
}

static void free_value(const pv_key *k, pv_type t, void *v);

static void free_list(const pv_key *k, pv_list *l) {
  if (k->elem == PV_T_REC)
    for (size_t i = 0; i < l->n; i++) pv_free_record(k->rec, (char *)l->items + i * k->rec->size);
  free(l->items);
  l->items = NULL;
  l->n = 0;
}

static void free_value(const pv_key *k, pv_type t, void *v) {
  if (t == PV_T_REC) pv_free_record(k->rec, v);
  else if (t == PV_T_LIST) free_list(k, v);
  else if (t == PV_T_ALL_OR_LIST) free_list(k, &((pv_all_or_list *)v)->list);
}

void pv_free_record(const pv_record *r, void *rec) {
  for (size_t j = 0; j < r->nkeys; j++) free_value(&r->keys[j], r->keys[j].type, (char *)rec + r->keys[j].off);
}

/* ---- The schema as documentation (pv schema) ------------------------------------------------------ */

static void type_text(char *buf, size_t size, const pv_key *k, pv_type t) {
  switch (t) {
  case PV_T_INT: snprintf(buf, size, "int"); return;
  case PV_T_NUM: snprintf(buf, size, "float"); return;
  case PV_T_STR: snprintf(buf, size, "string"); return;
  case PV_T_SYM: snprintf(buf, size, "name or int"); return;
  case PV_T_REC: snprintf(buf, size, "mapping (%s)", k->rec->name); return;
  case PV_T_LIST:
  case PV_T_ALL_OR_LIST: {
    char el[128];
    type_text(el, sizeof el, k, k->elem);
    snprintf(buf, size, "%slist of %s", t == PV_T_ALL_OR_LIST ? "`all` or " : "", el);
    return;
  }
  }
  snprintf(buf, size, "?");
}

/* Markdown text: escapes the characters a table cell would read as emphasis or a column break. */
static void md(FILE *out, const char *s) {
  for (; *s; s++) {
    if (*s == '*' || *s == '_' || *s == '|') fputc('\\', out);
    fputc(*s, out);
  }
}

static void print_record(FILE *out, const pv_record *r, const pv_record **done, size_t *ndone) {
  for (size_t i = 0; i < *ndone; i++)
    if (done[i] == r) return;
  done[(*ndone)++] = r;
  fprintf(out, "\n**%s**\n\n| key | type | required | values | meaning |\n|---|---|---|---|---|\n", r->name);
  for (size_t j = 0; j < r->nkeys; j++) {
    const pv_key *k = &r->keys[j];
    char type[160], values[512] = "";
    type_text(type, sizeof type, k, k->type);
    size_t o = 0;
    if (k->enums) {
      for (size_t e = 0; k->enums[e] && o < sizeof values - 64; e++)
        o += (size_t)snprintf(values + o, sizeof values - o, "%s`%s`", e ? ", " : "", k->enums[e]);
    } else if (k->pat != PV_PAT_NONE) {
      o += (size_t)snprintf(values + o, sizeof values - o, "%s", pv_pattern_hint(k->pat));
    }
    const char *range = k->range == PV_R_GE1 ? ">= 1" : k->range == PV_R_GE0 ? ">= 0" : k->range == PV_R_GT0 ? "> 0" : "";
    if (*range) o += (size_t)snprintf(values + o, sizeof values - o, "%s%s", o ? "; " : "", range);
    if (k->max) o += (size_t)snprintf(values + o, sizeof values - o, "%s<= %lld", o ? ", " : "", (long long)k->max);
    if (k->max_len)
      o += (size_t)snprintf(values + o, sizeof values - o, "%sat most %zu %s", o ? "; " : "", k->max_len,
                            k->type == PV_T_STR ? "bytes" : "items");
    if (k->flags & PV_NONEMPTY) o += (size_t)snprintf(values + o, sizeof values - o, "%snot empty", o ? "; " : "");
    if (k->flags & PV_UNIQUE) o += (size_t)snprintf(values + o, sizeof values - o, "%sno repeats", o ? "; " : "");
    fprintf(out, "| `%s` | %s | %s | ", k->name, type, (k->flags & PV_REQ) ? "yes" : "no");
    if (k->enums) fputs(values, out); /* backquoted already */
    else md(out, values);
    fputs(" | ", out);
    md(out, k->doc ? k->doc : "");
    fputs(" |\n", out);
  }
  for (size_t j = 0; j < r->nkeys; j++)
    if (r->keys[j].rec) print_record(out, r->keys[j].rec, done, ndone);
}

void pv_print_schema(FILE *out) {
  const pv_record *done[64];
  size_t ndone = 0;
  const pv_record *tops[] = { &pv_quant_record, &pv_stage_record, &pv_model_record, &pv_recipe_record };
  for (size_t i = 0; i < sizeof tops / sizeof tops[0]; i++) print_record(out, tops[i], done, &ndone);
}
