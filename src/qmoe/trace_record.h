/* trace_record.h: runs a model's prefill with trace hooks on one backend and writes the trace file
 * (docs/model.md's format, version 1), for `qmoe diff`'s run mode. */
#ifndef QMOE_TRACE_RECORD_H
#define QMOE_TRACE_RECORD_H
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include "trace_points.h"

/* Feeds IDS through MODEL_PATH on BACKEND with accumulator ACC (QMOE_ACC_*), recording every POINTS[p] != 0
 * trace point at layers [first, end) (end -1: all layers), and writes the trace to OUT (atomically).
 * Messages go to stderr as "qmoe CMD: error: ..."; unless QUIET, the model's memory and what was written
 * are reported there too. 0 or 1. */
int cli_trace_record(const char *cmd, const char *model_path, const char *backend, int acc, int64_t n_ctx,
                     const unsigned char points[QMOE_TP_COUNT], int64_t first, int64_t end, const int32_t *ids,
                     size_t n_ids, const char *out, int quiet);
/* The trace points, one line each: name, scope (layer or model), elements per position, what it is. */
void cli_trace_list_points(FILE *fp);
/* Parses a comma-separated list of trace point names ("all": every one) into POINTS; 0 or 1 (error printed,
 * with the valid names). */
int cli_trace_parse_points(const char *cmd, const char *list, unsigned char points[QMOE_TP_COUNT]);

#endif
