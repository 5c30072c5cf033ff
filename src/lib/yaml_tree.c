/* yaml_tree.c: libyaml events → qy_node tree, with positions, limits and strictness checks. */
#include "yaml_tree.h"
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

const char *qy_kind_name(qy_kind k) {
  switch (k) {
  case QY_SCALAR: return "scalar";
  case QY_SEQ: return "sequence";
  case QY_MAP: return "mapping";
  }
  return "?";
}

void qy_free(qy_node *n) {
  if (!n) return;
  /* Iterative would be safer, but depth is capped at QY_MAX_DEPTH. */
  size_t count = n->kind == QY_MAP ? 2 * n->n : n->n;
  for (size_t i = 0; i < count; i++) qy_free(n->items[i]);
  free(n->items);
  free(n->str);
  free(n);
}

const qy_node *qy_get(const qy_node *map, const char *key) {
  if (!map || map->kind != QY_MAP) return NULL;
  for (size_t i = 0; i < map->n; i++) {
    const qy_node *k = map->items[2 * i];
    if (k->kind == QY_SCALAR && strcmp(k->str, key) == 0) return map->items[2 * i + 1];
  }
  return NULL;
}

/* Stores CHILD at items[SLOT], growing the array geometrically. */
static void put_slot(qy_node *parent, size_t slot, qy_node *child) {
  if (slot >= parent->cap) {
    parent->cap = parent->cap ? parent->cap * 2 : 8;
    parent->items = xrealloc(parent->items, parent->cap * sizeof *parent->items);
  }
  parent->items[slot] = child;
}

typedef struct {
  qy_node *node;
  int pending_key;  /* mapping: 1 when a key has been pushed and its value is awaited */
} frame;

static qy_node *new_node(qy_kind kind, const yaml_mark_t *m) {
  qy_node *n = xcalloc(1, sizeof *n);
  n->kind = kind;
  n->line = (int)m->line + 1;
  n->col = (int)m->column + 1;
  return n;
}

static int is_digits(const char *s, int hex) {
  if (!*s) return 0;
  for (; *s; s++)
    if (!(*s >= '0' && *s <= '9') && !(hex && ((*s >= 'a' && *s <= 'f') || (*s >= 'A' && *s <= 'F')))) return 0;
  return 1;
}

/* The int and float syntax pv accepts (docs/contracts.md): decimal without leading zeros or 0x hex. */
static int int_text(const char *s) {
  if (*s == '-' || *s == '+') s++;
  if (s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) return is_digits(s + 2, 1);
  return is_digits(s, 0) && (s[0] != '0' || s[1] == 0);
}

static int float_text(const char *s) {
  if (int_text(s)) return 1;
  char *end;
  errno = 0;
  double v = strtod(s, &end);
  (void)v;
  return end != s && !*end && errno != ERANGE && strpbrk(s, "0123456789") && !strpbrk(s, "iInN");
}

/* Applies the explicit tag of a node (see yaml_tree.h); reports a tag it cannot honor. */
static void apply_tag(qy_node *n, const unsigned char *tag, const char *name, diag_list *diag) {
  if (!tag) return;
  const char *t = (const char *)tag, *core = "tag:yaml.org,2002:";
  const char *short_name = !strncmp(t, core, strlen(core)) ? t + strlen(core) : NULL;
  int ok = 1;
  if (n->kind != QY_SCALAR) {
    if (short_name && !strcmp(short_name, n->kind == QY_SEQ ? "seq" : "map")) n->tag = n->kind == QY_SEQ ? QY_TAG_SEQ : QY_TAG_MAP;
    else if (strcmp(t, "!")) ok = 0;
  } else if (!strcmp(t, "!") || (short_name && !strcmp(short_name, "str"))) {
    n->tag = QY_TAG_STR;
    if (n->style == QY_PLAIN) n->style = QY_QUOTED;
  } else if (short_name && (!strcmp(short_name, "int") || !strcmp(short_name, "float") || !strcmp(short_name, "bool") ||
                            !strcmp(short_name, "null"))) {
    const char *s = n->str;
    int match = 0;
    if (short_name[0] == 'i') match = int_text(s), n->tag = QY_TAG_INT;
    else if (short_name[0] == 'f') match = float_text(s), n->tag = QY_TAG_FLOAT;
    else if (short_name[0] == 'b') match = !strcmp(s, "true") || !strcmp(s, "false"), n->tag = QY_TAG_BOOL;
    else match = !*s || !strcmp(s, "~") || !strcmp(s, "null"), n->tag = QY_TAG_NULL;
    if (!match || strlen(s) != n->len) {
      char q[64];
      snprintf(q, sizeof q, "%.48s%s", s, strlen(s) > 48 ? "..." : "");
      diag_add(diag, DIAG_ERROR, name, n->line, n->col, "Y012", "'!!%s %s': the value does not match its tag", short_name, q);
    }
    n->style = QY_PLAIN;
  } else {
    ok = 0;
  }
  if (!ok)
    diag_add(diag, DIAG_ERROR, name, n->line, n->col, "Y012",
             "the tag '%s%.80s' is not supported on a %s (contracts use !!str, !!int, !!float, !!bool, !!null, !!seq, !!map or none)",
             short_name ? "!!" : "", short_name ? short_name : t, qy_kind_name(n->kind));
}

/* Attach CHILD to the frame on top of the stack; checks keys. Returns 0, or -1 if CHILD was dropped. */
static int attach(frame *top, qy_node *child, const char *name, diag_list *diag) {
  qy_node *p = top->node;
  if (p->kind == QY_SEQ) {
    put_slot(p, p->n, child);
    p->n++;
    return 0;
  }
  if (!top->pending_key) {
    if (child->kind != QY_SCALAR) {
      /* The caller pushes CHILD on the stack and its contents still arrive; keep it as the key and let
       * checkers see a non-scalar key (they look keys up by text, which it has none of). */
      diag_add(diag, DIAG_ERROR, name, child->line, child->col, "Y008",
               "a mapping key must be a scalar, not a %s", qy_kind_name(child->kind));
    } else {
      for (size_t i = 0; i < p->n; i++) {
        const qy_node *k = p->items[2 * i];
        if (k->kind == QY_SCALAR && k->len == child->len && memcmp(k->str, child->str, k->len) == 0) {
          diag_add(diag, DIAG_ERROR, name, child->line, child->col, "Y002",
                   "duplicate key '%s' (first defined at line %d, column %d); remove one of them", child->str,
                   k->line, k->col);
          break;
        }
      }
      if (p->n >= QY_MAX_MAP_KEYS) {
        diag_add(diag, DIAG_ERROR, name, child->line, child->col, "Y010",
                 "mapping has more than %d keys", QY_MAX_MAP_KEYS);
        qy_free(child);
        return -1;
      }
    }
    put_slot(p, 2 * p->n, child);
    top->pending_key = 1;
    return 0;
  }
  put_slot(p, 2 * p->n + 1, child);
  p->n++;
  top->pending_key = 0;
  return 0;
}

static int load(yaml_parser_t *parser, const char *name, qy_node **out, diag_list *diag) {
  frame stack[QY_MAX_DEPTH + 2];
  int depth = 0;
  size_t nodes = 0;
  qy_node *root = NULL;
  int docs = 0, failed = 0;
  size_t errors_before = diag->errors;
  *out = NULL;
  for (;;) {
    yaml_event_t ev;
    if (!yaml_parser_parse(parser, &ev)) {
      const yaml_mark_t *m = parser->problem_mark.line || parser->problem_mark.column ? &parser->problem_mark
                                                                                        : &parser->context_mark;
      yaml_mark_t rm = { 0, 0, 0 }; /* reader errors (bad UTF-8) carry a byte offset, not a mark */
      if (parser->error == YAML_READER_ERROR && parser->input.string.start) {
        const unsigned char *p = parser->input.string.start, *end = p + parser->problem_offset;
        for (; p < end && p < parser->input.string.end; p++) {
          if (*p == '\n') { rm.line++; rm.column = 0; } else if ((*p & 0xC0) != 0x80) rm.column++;
        }
        m = &rm;
      }
      diag_add(diag, DIAG_ERROR, name, (int)m->line + 1, (int)m->column + 1, "Y001", "malformed YAML: %s%s%s",
               parser->problem ? parser->problem : "syntax error", parser->context ? " " : "",
               parser->context ? parser->context : "");
      failed = 1;
      break;
    }
    int done = ev.type == YAML_STREAM_END_EVENT;
    qy_node *node = NULL;
    switch (ev.type) {
    case YAML_DOCUMENT_START_EVENT:
      if (++docs > 1) {
        diag_add(diag, DIAG_ERROR, name, (int)ev.start_mark.line + 1, (int)ev.start_mark.column + 1, "Y006",
                 "more than one YAML document in the file; a contract is one document");
        failed = 1;
        done = 1;
      }
      break;
    case YAML_ALIAS_EVENT:
      diag_add(diag, DIAG_ERROR, name, (int)ev.start_mark.line + 1, (int)ev.start_mark.column + 1, "Y005",
               "aliases (*%s) are not supported in contracts; write the value out", (const char *)ev.data.alias.anchor);
      node = new_node(QY_SCALAR, &ev.start_mark);
      node->str = xstrdup("");
      break;
    case YAML_SCALAR_EVENT:
      if (ev.data.scalar.length > QY_MAX_SCALAR) {
        diag_add(diag, DIAG_ERROR, name, (int)ev.start_mark.line + 1, (int)ev.start_mark.column + 1, "Y004",
                 "scalar of %zu bytes is larger than the %d-byte limit", (size_t)ev.data.scalar.length, QY_MAX_SCALAR);
        node = new_node(QY_SCALAR, &ev.start_mark);
        node->str = xstrdup("");
      } else {
        node = new_node(QY_SCALAR, &ev.start_mark);
        node->str = xstrndup((const char *)ev.data.scalar.value, ev.data.scalar.length);
        node->len = ev.data.scalar.length;
        yaml_scalar_style_t st = ev.data.scalar.style;
        node->style = st == YAML_PLAIN_SCALAR_STYLE ? QY_PLAIN
                    : (st == YAML_LITERAL_SCALAR_STYLE || st == YAML_FOLDED_SCALAR_STYLE) ? QY_BLOCK : QY_QUOTED;
      }
      apply_tag(node, ev.data.scalar.tag, name, diag);
      if (ev.data.scalar.anchor) {
        diag_add(diag, DIAG_ERROR, name, node->line, node->col, "Y005", "anchors (&%s) are not supported in contracts",
                 (const char *)ev.data.scalar.anchor);
      }
      break;
    case YAML_SEQUENCE_START_EVENT:
    case YAML_MAPPING_START_EVENT:
      node = new_node(ev.type == YAML_SEQUENCE_START_EVENT ? QY_SEQ : QY_MAP, &ev.start_mark);
      apply_tag(node, ev.type == YAML_SEQUENCE_START_EVENT ? ev.data.sequence_start.tag : ev.data.mapping_start.tag, name,
                diag);
      if (depth >= QY_MAX_DEPTH) {
        diag_add(diag, DIAG_ERROR, name, node->line, node->col, "Y003",
                 "nesting deeper than %d levels; contracts are shallow", QY_MAX_DEPTH);
        qy_free(node);
        node = NULL;
        failed = 1;
        done = 1;
      }
      break;
    default:
      break;
    }
    if (node && ++nodes > QY_MAX_NODES) {
      diag_add(diag, DIAG_ERROR, name, node->line, node->col, "Y011", "more than %d YAML nodes in one file", QY_MAX_NODES);
      qy_free(node);
      node = NULL;
      failed = done = 1;
    }
    if (node) {
      if (depth == 0) {
        if (root) qy_free(root);
        root = node;
      } else if (attach(&stack[depth - 1], node, name, diag) != 0) {
        node = NULL;
      }
      if (node && node->kind != QY_SCALAR) {
        stack[depth].node = node;
        stack[depth].pending_key = 0;
        depth++;
      }
    }
    if (ev.type == YAML_SEQUENCE_END_EVENT || ev.type == YAML_MAPPING_END_EVENT) {
      if (depth > 0) depth--;
    }
    yaml_event_delete(&ev);
    if (done) break;
  }
  if (failed) {
    /* A mapping cut short may hold a key whose value never came: free it, it is not counted in n. Deepest
     * first: a non-scalar key is itself an open frame above its mapping, and must be finished first. */
    for (int i = depth - 1; i >= 0; i--)
      if (stack[i].node->kind == QY_MAP && stack[i].pending_key) qy_free(stack[i].node->items[2 * stack[i].node->n]);
    qy_free(root);
    return -1;
  }
  if (!root) {
    diag_add(diag, DIAG_ERROR, name, 1, 1, "Y007", "empty file: expected a YAML mapping");
    return -1;
  }
  *out = root;
  return diag->errors > errors_before ? -1 : 0;
}

int qy_load_string(const char *name, const char *text, size_t len, qy_node **out, diag_list *diag) {
  yaml_parser_t parser;
  *out = NULL;
  if (!yaml_parser_initialize(&parser)) {
    diag_add(diag, DIAG_ERROR, name, 0, 0, "Y009", "cannot initialise the YAML parser");
    return -1;
  }
  if (memchr(text, 0, len)) {
    /* libyaml would stop at a NUL silently in some paths; report the first one precisely. */
    const char *z = memchr(text, 0, len);
    int line = 1, col = 1;
    for (const char *p = text; p < z; p++) {
      if (*p == '\n') { line++; col = 1; } else col++;
    }
    diag_add(diag, DIAG_ERROR, name, line, col, "Y001", "malformed YAML: NUL byte in the file (binary data?)");
    yaml_parser_delete(&parser);
    return -1;
  }
  yaml_parser_set_input_string(&parser, (const unsigned char *)text, len);
  int rc = load(&parser, name, out, diag);
  yaml_parser_delete(&parser);
  return rc;
}

int qy_load_file(const char *path, qy_node **out, diag_list *diag) {
  *out = NULL;
  FILE *f = fopen(path, "rb");
  if (!f) {
    diag_add(diag, DIAG_ERROR, path, 0, 0, "Y009", "cannot open: %s", strerror(errno));
    return -1;
  }
  char *buf = NULL;
  size_t len = 0, cap = 0;
  for (;;) {
    if (len == cap) {
      cap = cap ? cap * 2 : 65536;
      buf = xrealloc(buf, cap);
    }
    size_t got = fread(buf + len, 1, cap - len, f);
    len += got;
    if (len > QY_MAX_FILE) {
      diag_add(diag, DIAG_ERROR, path, 0, 0, "Y009", "file is larger than %d bytes; not a contract", QY_MAX_FILE);
      fclose(f);
      free(buf);
      return -1;
    }
    if (got == 0) break;
  }
  int err = ferror(f);
  fclose(f);
  if (err) {
    diag_add(diag, DIAG_ERROR, path, 0, 0, "Y009", "read error");
    free(buf);
    return -1;
  }
  int rc = qy_load_string(path, buf, len, out, diag);
  free(buf);
  return rc;
}
