/* pv.h: the contract validator behind `pv validate` and the generator host's `require("pv")`: loads
 * quant, stage and model contracts into typed records (schema as data), then checks them across files. */
#ifndef QMOE_PV_H
#define QMOE_PV_H
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include "diag.h"
#include "yaml_tree.h"

/* ---- Running the validator ------------------------------------------------------------------------ */

typedef enum { PV_KIND_NONE = 0, PV_KIND_QUANT, PV_KIND_STAGE, PV_KIND_MODEL, PV_KIND_RECIPE } pv_kind;

typedef struct {
  const char *refs; /* contract root loaded for references only; NULL = the roots of the given paths */
  int no_refs;      /* resolve references among the given files only */
} pv_options;

typedef struct {
  diag_list diag;   /* diagnostics about the given files, sorted by file and position */
  size_t files;     /* contract files validated */
  int io_error;     /* a path could not be read, or a directory held no contracts (exit status 2) */
} pv_result;

/* Validates PATHS (files or directories; docs/contracts.md says how kinds and references are found).
 * Returns the exit status of `pv validate`: 0 valid, 1 invalid, 2 I/O error. RES must be zeroed. */
int pv_validate(const char *const *paths, size_t npaths, const pv_options *opt, pv_result *res);
/* Validates one in-memory file of a given kind on its own (no references outside it): the fuzz target. */
int pv_validate_buffer(const char *name, pv_kind kind, const char *text, size_t len, pv_result *res);
void pv_result_free(pv_result *res);
/* "file:line:col: error[CODE]: message" lines, then "N error(s), N warning(s)", then
 * "Contracts are valid." when there are no errors. */
void pv_print_text(const pv_result *res, FILE *out);
/* {"valid": bool, "files": N, "errors": N, "warnings": N, "diagnostics": [{file, line, col, severity, code,
 * message}, ...]} on one line per diagnostic. */
void pv_print_json(const pv_result *res, FILE *out);

/* Makes require("pv") return { validate = function(dir) -> ok, report_text }. */
struct lua_State;
void pv_register_lua(struct lua_State *L);

/* ---- Typed records -------------------------------------------------------------------------------- */
/* Every value remembers its YAML node (NULL when the key is absent), so every later check can name the
 * file position. Lists own their items (an array of the element type). */

typedef struct { const qy_node *node; const char *s; } pv_str;
typedef struct { const qy_node *node; int64_t v; } pv_int;
typedef struct { const qy_node *node; double v; } pv_num;
typedef struct { const qy_node *node; const char *s; int64_t v; int is_int; } pv_sym; /* name or int */
typedef struct { const qy_node *node; size_t n; void *items; } pv_list;
typedef struct { const qy_node *node; int all; pv_list list; } pv_all_or_list; /* `all` or a list */

/* What one qmoe_stage_call carries (QMOE_STAGE_MAX_* in runtime/stages/backend.h, which the tools may not include;
 * tests/unit/test_stage_table.c checks that the two agree). */
enum { PV_STAGE_MAX_PARAMS = 8, PV_STAGE_MAX_FPARAMS = 4, PV_STAGE_MAX_BUFS = 8 };

/* contracts/quant/<name>.yaml */
typedef struct { const qy_node *node; pv_str name, type; pv_int count, offset; } pv_quant_field;
typedef struct { const qy_node *node; pv_str name, expr; } pv_quant_let;
typedef struct { const qy_node *node; pv_list let; pv_str value; } pv_quant_decode;
typedef struct { const qy_node *node; pv_str bytes; pv_list values; pv_str source; } pv_quant_vector;
typedef struct { const qy_node *node; pv_str strategy; pv_num rmse_max, total_error_max; pv_str source; } pv_quant_quantizer;
typedef struct {
  const qy_node *node;
  pv_str name;
  pv_int ggml_type;
  pv_str description;
  pv_int block_elements, block_bytes;
  pv_list accumulators;  /* pv_str */
  pv_list fields;        /* pv_quant_field */
  pv_quant_decode decode;
  pv_list test_vectors;  /* pv_quant_vector (values: pv_num) */
  pv_quant_quantizer quantizer;
  pv_int file_type;
  pv_list aliases;       /* pv_str */
} pv_quant;

/* contracts/stages/<name>.yaml */
typedef struct { const qy_node *node; pv_str name, type, doc; pv_int min; } pv_stage_param;
typedef struct { const qy_node *node; pv_str check, error; } pv_stage_rule;
typedef struct { const qy_node *node; pv_str name, dtype; pv_list shape; pv_str doc, may_alias, indexes; } pv_stage_buffer;
typedef struct { const qy_node *node; pv_str name; pv_int min, max, step; } pv_stage_test_param;
typedef struct { const qy_node *node; pv_list buffers, params; /* pv_str */ } pv_stage_tokens;
typedef struct {
  const qy_node *node;
  pv_str name, trace, description;
  pv_list varies_by;        /* pv_str */
  pv_all_or_list qtypes;    /* pv_str */
  pv_list accumulators;     /* pv_str */
  pv_list params;           /* pv_stage_param */
  pv_list inputs, outputs;  /* pv_stage_buffer (shape: pv_sym) */
  pv_list falsifiers;       /* pv_str */
  pv_int order;
  pv_list requires;         /* pv_stage_rule */
  pv_str compare;           /* "tolerance" (default) or "exact" */
  pv_list test_params;      /* pv_stage_test_param */
  pv_stage_tokens tokens;   /* how a call for T tokens maps onto T one-token calls (absent: one token only) */
} pv_stage;

/* contracts/recipes/<name>.yaml */
typedef struct { const qy_node *node; pv_list tensors; pv_int dims; pv_str when, qtype, doc; } pv_recipe_rule;
typedef struct {
  const qy_node *node;
  pv_str name, description;
  pv_int file_type;
  pv_str source;
  pv_list rules; /* pv_recipe_rule (tensors: pv_str) */
} pv_recipe;

/* contracts/models/<id>.yaml */
typedef struct { const qy_node *node; pv_str id, version, status, title, description; pv_list references; } pv_model_meta;
typedef struct {
  const qy_node *node;
  pv_int hidden, layers, experts, experts_used, expert_ff, heads, kv_heads, head_dim, vocab;
  pv_num rms_eps;
} pv_model_dims;
typedef struct { const qy_node *node; pv_str id, name, formula; pv_list invariants; } pv_equation;
typedef struct { const qy_node *node; pv_str id, description; } pv_criterion;
typedef struct {
  const qy_node *node;
  pv_str metric, comparator;
  pv_num threshold;
  pv_str compares, runs_on;
  pv_list stages; /* pv_str */
  pv_str acc;
} pv_check;
typedef struct {
  const qy_node *node;
  pv_str id, rule, prediction, if_fails;
  pv_list criteria; /* pv_str */
  pv_check check;
} pv_falsifier;
typedef struct { const qy_node *node; pv_str id, name, status; pv_list falsifiers; pv_str notes; } pv_impl_stage;
typedef struct { const qy_node *node; pv_str version, date, kind, title, description; } pv_amendment;
/* A named point of the forward whose output `qmoe trace` can record (runtime: generated/c/trace_points.c). */
typedef struct { const qy_node *node; pv_str name, scope, elements, dtype, doc; } pv_trace_point;
typedef struct {
  const qy_node *node;
  pv_model_meta metadata;
  pv_model_dims dims;
  pv_list equations;             /* pv_equation */
  pv_list acceptance_criteria;   /* pv_criterion */
  pv_list falsification_tests;   /* pv_falsifier */
  pv_list implementation_stages; /* pv_impl_stage */
  pv_list amendment_history;     /* pv_amendment */
  pv_list trace_points;          /* pv_trace_point, in forward order */
} pv_model;

/* ---- Schema tables (pv_schema.c) ------------------------------------------------------------------ */

typedef enum { PV_T_INT, PV_T_NUM, PV_T_STR, PV_T_SYM, PV_T_REC, PV_T_LIST, PV_T_ALL_OR_LIST } pv_type;
typedef enum {
  PV_PAT_NONE, PV_PAT_NAME, PV_PAT_IDENT, PV_PAT_MODEL_ID, PV_PAT_FALSIFY, PV_PAT_AC, PV_PAT_EQ, PV_PAT_IMPL,
  PV_PAT_SEMVER, PV_PAT_DATE, PV_PAT_NONBLANK
} pv_pattern;
typedef enum { PV_R_NONE, PV_R_GT0, PV_R_GE0, PV_R_GE1 } pv_range;
enum { PV_REQ = 1, PV_NONEMPTY = 2, PV_UNIQUE = 4 };

typedef struct pv_record pv_record;
typedef struct {
  const char *name;
  pv_type type;
  unsigned flags;             /* PV_REQ, PV_NONEMPTY (lists), PV_UNIQUE (lists of names) */
  size_t off;                 /* where the value lives in the record struct */
  pv_type elem;               /* element type of PV_T_LIST / PV_T_ALL_OR_LIST */
  const pv_record *rec;       /* PV_T_REC, or the elements' record */
  const char *const *enums;   /* NULL-terminated: a string (or each list item) must be one of these */
  pv_pattern pat;             /* format of a string (or each list item) */
  pv_range range;             /* numbers (or each list item) */
  int64_t max;                /* ints (or a list's int items): upper bound when non-zero */
  size_t max_len;             /* strings: most bytes; lists: most items (0: no limit beyond yaml_tree's) */
  const char *doc;            /* one line for docs/contracts.md */
} pv_key;
struct pv_record {
  const char *name; /* for messages: "quant contract", "field", ... */
  size_t size;
  const pv_key *keys;
  size_t nkeys;
};

extern const pv_record pv_quant_record, pv_stage_record, pv_model_record, pv_recipe_record;
/* The key tables as Markdown (`pv schema`; docs/contracts.md holds a copy a test keeps current). */
void pv_print_schema(FILE *out);

typedef struct { int line, col; } pv_pos;
typedef struct {
  diag_list *diag;
  const char *file;
  const pv_pos *poison; /* nodes yaml_tree replaced after reporting them (huge scalars, aliases): skipped */
  size_t npoison;
} pv_walk_ctx;

/* Consumes mapping MAP through record R into OUT (a zeroed struct whose first member is the node):
 * unknown keys, missing required keys, wrong types, bad enum values, formats and ranges are reported;
 * only valid values are stored, so later checks see absent (node NULL) rather than wrong values.
 * WHAT names the value in messages (NULL: the file's top level). */
void pv_walk_record(pv_walk_ctx *c, const qy_node *map, const pv_record *r, void *out, const char *what);
void pv_free_record(const pv_record *r, void *rec);
const qy_node *pv_get(const qy_node *map, const char *key);

/* ---- One contract file and the set being validated (pv_run.c, pv_check.c) -------------------------- */

typedef struct {
  char *path;      /* as printed in messages */
  char *real;      /* realpath, to load a file once */
  char *stem;      /* file name without .yaml / .yml */
  pv_kind kind;
  int given;       /* 0: loaded from a contract root for references only; nothing in it is reported */
  int skip;        /* given explicitly but of unknown kind (reported): not checked */
  char *text;
  size_t len;
  qy_node *root;
  pv_pos *poison;
  size_t npoison;
  int loaded;      /* the record below was filled (the file parsed to a mapping) */
  union { pv_quant quant; pv_stage stage; pv_model model; pv_recipe recipe; } rec;
} pv_file;

typedef struct {
  pv_file **files;
  size_t n, cap;
  diag_list *diag;    /* where diagnostics about given files go */
  diag_list scratch;  /* diagnostics about reference-only files: dropped */
} pv_set;

/* Expression checks through the Lua module `expr` (pv_lua.c): opened once per run; when the module is
 * absent they are skipped, when it fails that is an error (E399). */
typedef struct pv_lua pv_lua;
pv_lua *pv_lua_open(void);
void pv_lua_check_quant(pv_lua *lua, pv_set *set, pv_file *f);
void pv_lua_check_recipe(pv_lua *lua, pv_set *set, pv_file *f); /* rules[].when conditions */
void pv_lua_close(pv_lua *lua);

/* Checks within one file that need more than one key (pv_check.c). */
void pv_check_file(pv_set *set, pv_file *f);
/* Checks across all files of SET: unique names and ids, references (pv_check.c). */
void pv_check_cross(pv_set *set);

/* ---- Helpers shared by the pv_*.c files (pv_util.c) ----------------------------------------------- */

typedef enum { PV_SC_NULL, PV_SC_BOOL, PV_SC_INT, PV_SC_FLOAT, PV_SC_STR, PV_SC_SEQ, PV_SC_MAP, PV_SC_BADNUM } pv_sclass;
/* What a YAML node is: plain scalars that read as ints (decimal without leading zeros, or 0x hex),
 * floats, true/false or null/~/empty are those; quoted and block scalars are strings. */
pv_sclass pv_classify(const qy_node *n, int64_t *iv, double *dv);
const char *pv_sclass_name(pv_sclass c); /* "an int", "a string", ... */
/* Damerau-Levenshtein (optimal string alignment) distance, capped at 64 characters per side. */
int pv_edit_distance(const char *a, const char *b);
/* The candidate nearest to WORD when it is a plausible typo, else NULL. */
const char *pv_suggest(const char *word, const char *const *cands, size_t n);
int pv_match(pv_pattern p, const char *s, size_t len);
const char *pv_pattern_hint(pv_pattern p);
/* Semantic versions: parse (0 ok) and compare by precedence (semver 2.0.0, build metadata ignored). */
int pv_semver_cmp(const char *a, const char *b);
/* User text for a message: escapes control bytes, truncates long text with "...". Returns BUF. */
const char *pv_quote(char *buf, size_t size, const char *s, size_t len);

#endif
