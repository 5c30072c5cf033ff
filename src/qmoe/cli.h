/* cli.h: what the `qmoe` subcommands share: the command record, messages, row ranges, near-match
 * suggestions, progress on stderr, output helpers and the model options. cmd.h lists the commands. */
#ifndef QMOE_CLI_H
#define QMOE_CLI_H
#include <stdint.h>
#include <stdio.h>
#include "qmoe.h"

typedef struct {
  const char *name;
  const char *summary; /* one line for `qmoe --help` */
  const char *usage;   /* the text of `qmoe NAME --help`; its first line starts "usage: " */
  int (*run)(int argc, char **argv); /* argv[0] is the subcommand name; returns 0 ok, 1 error, 2 usage */
} qmoe_command;

/* "qmoe CMD: error: MESSAGE" on stderr; returns 1 (the exit status for a failed command). */
int cli_error(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* "qmoe CMD: MESSAGE" and the usage line on stderr; returns 2. */
int cli_usage_error(const qmoe_command *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Parses a non-negative decimal integer (the whole string); 0 or -1. */
int cli_parse_i64(const char *s, int64_t *out);
/* Parses a row range: "A..B" (rows A to B-1), "A" (row A), "A.." (A to the end), "..B" (0 to B-1), against
 * n_rows. On error writes a message to why and returns -1. */
int cli_parse_rows(const char *s, int64_t n_rows, int64_t *first, int64_t *end, char *why, size_t cap);
/* "no tensor 'x' in FILE; did you mean: a, b?" (or the tensor count when nothing is near). */
void cli_tensor_not_found(const qmoe_gguf *f, const char *name, char *msg, size_t cap);

/* Progress on stderr: a redrawn bar when stderr is a terminal, else a line every 10% (or 30 s). */
typedef struct {
  const char *cmd;
  int tty;
  uint64_t total;
  int last_pct;
  double last_time, start_time;
} cli_progress;
void cli_progress_start(cli_progress *p, const char *cmd, uint64_t total);
void cli_progress_update(cli_progress *p, uint64_t done, const char *label);
void cli_progress_end(cli_progress *p);

/* Writes n floats little-endian; 0 or -1 (the error in qmoe_last_error()). */
int cli_write_f32le(qmoe_out *o, const float *x, int64_t n);
/* "qmoe CMD: error: IN: <the writer's message>", with a hint for names that are not UTF-8; returns 1. */
int cli_writer_error(const char *cmd, const char *in);
/* A repeated option is an error: returns 2 (after the usage message) when *seen is set, else sets it to opt
 * and returns 0. Options that mean the same (-j, --threads) share one *seen. */
int cli_once(const qmoe_command *c, const char **seen, const char *opt);

/* ---- model commands (model_cli.c) ---- */
#define QMOE_DEFAULT_MODEL "build/models/tiny.gguf" /* `ninja` builds it (qmoe make-model --preset tiny) */
struct qmoe_backend;
/* An option: NAME (and ALT, e.g. "-m"), with or without a value; value is NULL until given ("1" for a flag). */
typedef struct { const char *name, *alt; int takes_value; const char *value; } cli_opt;
/* Fills the table from argv[1..]; a repeated, unknown or valueless option is a usage error (returns 2). */
int cli_parse_opts(const qmoe_command *c, int argc, char **argv, cli_opt *o, int n);
/* "1,2,3" -> ids (malloc'd); 0 or 1 (error printed). */
int cli_parse_ids(const char *cmd, const char *s, int32_t **ids, size_t *n);
int cli_parse_acc(const char *cmd, const char *s, int *acc);                  /* NULL: f32 */
int cli_parse_count(const char *cmd, const char *opt, const char *s, int64_t lo, int64_t hi, int64_t *out);
/* Checks PATH (before opening any device), opens BACKEND and loads the model with a KV cache of N_CTX tokens
 * (0: the smaller of 4096 and the model's context, grown to NEED_CTX when that fits); reports its memory on
 * stderr unless QUIET. 0 or 1 (error printed). */
int cli_open_model(const char *cmd, const char *path, const char *backend, int64_t n_ctx, int64_t need_ctx, int acc,
                   int quiet, struct qmoe_backend **be, qmoe_model **m);
void cli_close_model(struct qmoe_backend *be, qmoe_model *m);
double cli_now(void); /* monotonic seconds */
/* The prompt as token ids: TEXT encoded with the tokenizer stored in PATH (wrapped in its ChatML template
 * when CHAT), or IDS ("1,2,3"). 0 or 1 (error printed). */
int cli_prompt_ids(const char *cmd, const char *path, const char *text, const char *ids, int chat, int32_t **out,
                   size_t *n);
/* The tokenizer stored in PATH, or NULL (no tokenizer.ggml.tokens key; *err set when one is there but broken). */
qmoe_tokenizer *cli_tokenizer(const char *path, char *err, size_t cap);
/* Writes S[0..n) as a JSON string (quotes included); invalid UTF-8 bytes become U+FFFD. */
void cli_json_string(FILE *fp, const char *s, size_t n);

#endif
