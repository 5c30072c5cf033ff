/* yaml_tree.h: loads one YAML document into a tree whose every node remembers its file position.
 * Strict by design: duplicate keys, aliases, non-scalar keys, deep nesting and huge scalars are errors. */
#ifndef QMOE_YAML_TREE_H
#define QMOE_YAML_TREE_H
#include <stddef.h>
#include "diag.h"

typedef enum { QY_SCALAR = 1, QY_SEQ = 2, QY_MAP = 3 } qy_kind;
typedef enum { QY_PLAIN = 0, QY_QUOTED = 1, QY_BLOCK = 2 } qy_style;
/* An explicit YAML tag, honored: !!str (and the non-specific !) makes a scalar a string (style QY_QUOTED);
 * !!int, !!bool, !!null make it plain and must match its text; !!float makes an int-looking scalar a float.
 * !!seq and !!map must match the node. Any other tag (!!binary, !!timestamp, !local, ...) is error Y012. */
typedef enum { QY_TAG_NONE = 0, QY_TAG_STR, QY_TAG_INT, QY_TAG_FLOAT, QY_TAG_BOOL, QY_TAG_NULL, QY_TAG_SEQ, QY_TAG_MAP } qy_tag;

typedef struct qy_node qy_node;
struct qy_node {
  qy_kind kind;
  int line, col;      /* 1-based start of the node */
  qy_style style;     /* scalars only */
  qy_tag tag;         /* explicit tag, if any */
  char *str;          /* scalar text, NUL-terminated (may contain NUL if quoted with \0) */
  size_t len;         /* scalar length in bytes */
  size_t n;           /* sequence: items; mapping: pairs */
  qy_node **items;    /* sequence: items[i]; mapping: items[2i] key, items[2i+1] value */
  size_t cap;         /* allocated slots in items (internal) */
};

enum {
  QY_MAX_DEPTH = 64,
  QY_MAX_SCALAR = 1 << 20,        /* 1 MiB */
  QY_MAX_FILE = 64 << 20,         /* 64 MiB */
  QY_MAX_NODES = 1 << 20,
  QY_MAX_MAP_KEYS = 4096,
};

/* Loads PATH (one document). Returns 0 on success; on failure returns -1 with errors in DIAG and
 * *OUT NULL. Duplicate keys are reported as errors but loading continues (the first key wins),
 * so a caller can report every error; in that case the function still returns -1 and *OUT is set. */
int qy_load_file(const char *path, qy_node **out, diag_list *diag);
int qy_load_string(const char *name, const char *text, size_t len, qy_node **out, diag_list *diag);
void qy_free(qy_node *n);

/* Mapping lookup by key text; NULL when absent or when MAP is not a mapping. */
const qy_node *qy_get(const qy_node *map, const char *key);
const char *qy_kind_name(qy_kind k);

#endif
