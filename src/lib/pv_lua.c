/* pv_lua.c: pv and Lua, both ways — decode expressions are checked by the embedded module `expr`
 * (codegen/lib/expr.lua), and require("pv") gives generators pv.validate(dir). */
#include "pv.h"
#include <lauxlib.h>
#include <lua.h>
#include <stdlib.h>
#include <string.h>
#include "luaenv.h"

struct pv_lua {
  lua_State *L;
  int state;      /* 0: expr loaded; 1: module absent (checks skipped); 2: module failed to load */
  char *load_err; /* state 2: why */
  int ref;        /* registry reference to expr.check_quant */
  int ref_recipe; /* registry reference to expr.check_recipe */
};

pv_lua *pv_lua_open(void) {
  pv_lua *p = xcalloc(1, sizeof *p);
  p->L = luaenv_new();
  lua_State *L = p->L;
  lua_getglobal(L, "require");
  lua_pushstring(L, "expr");
  if (lua_pcall(L, 1, 1, 0) != LUA_OK) {
    const char *msg = lua_tostring(L, -1);
    msg = msg ? msg : "(error object is not a string)";
    /* Absent until its author lands it: then there is nothing to check with. A module that is there but
     * fails to load is an error, or broken expressions would pass unnoticed. */
    if (strstr(msg, "module 'expr' not found")) p->state = 1;
    else {
      p->state = 2;
      p->load_err = xstrdup(msg);
    }
    lua_pop(L, 1);
    return p;
  }
  if (lua_type(L, -1) != LUA_TTABLE || lua_getfield(L, -1, "check_quant") != LUA_TFUNCTION) {
    p->state = 2;
    p->load_err = xstrdup("the module has no function check_quant");
    lua_settop(L, 0);
    return p;
  }
  p->ref = luaL_ref(L, LUA_REGISTRYINDEX);
  if (lua_getfield(L, -1, "check_recipe") != LUA_TFUNCTION) {
    p->state = 2;
    p->load_err = xstrdup("the module has no function check_recipe");
    lua_settop(L, 0);
    return p;
  }
  p->ref_recipe = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_settop(L, 0);
  return p;
}

void pv_lua_close(pv_lua *p) {
  if (!p) return;
  lua_close(p->L);
  free(p->load_err);
  free(p);
}

/* The node PATH ("decode.let[3].expr", 1-based indices) names under ROOT; the deepest node reached when
 * the path does not resolve completely (*COMPLETE then 0). */
static const qy_node *resolve(const qy_node *root, const char *path, int *complete) {
  const qy_node *n = root;
  const char *p = path;
  *complete = 0;
  while (*p) {
    size_t len = strcspn(p, ".[");
    if (len) {
      const qy_node *next = NULL;
      if (n->kind == QY_MAP)
        for (size_t i = 0; i < n->n; i++) {
          const qy_node *k = n->items[2 * i];
          if (k->kind == QY_SCALAR && k->len == len && !memcmp(k->str, p, len)) {
            next = n->items[2 * i + 1];
            break;
          }
        }
      if (!next) return n;
      n = next;
      p += len;
    }
    while (*p == '[') {
      char *end;
      long idx = strtol(p + 1, &end, 10);
      if (*end != ']' || n->kind != QY_SEQ || idx < 1 || (size_t)idx > n->n) return n;
      n = n->items[idx - 1];
      p = end + 1;
    }
    if (*p == '.') p++;
    else if (*p) return n;
  }
  *complete = 1;
  return n;
}

/* Byte offset of 1-based (LINE, COL) in TEXT, COL counted in characters as libyaml counts them. */
static int text_offset(const char *text, size_t len, int line, int col, size_t *off) {
  size_t i = 0;
  for (int l = 1; l < line; l++) {
    const char *nl = memchr(text + i, '\n', len - i);
    if (!nl) return -1;
    i = (size_t)(nl - text) + 1;
  }
  for (int c = 1; c < col; c++) {
    if (i >= len || text[i] == '\n') return -1;
    i++;
    while (i < len && ((unsigned char)text[i] & 0xC0) == 0x80) i++;
  }
  *off = i;
  return 0;
}

static int utf8_chars(const char *s, size_t n) {
  int c = 0;
  for (size_t i = 0; i < n; i++)
    if (((unsigned char)s[i] & 0xC0) != 0x80) c++;
  return c;
}

/* Where column ECOL (1-based byte column inside scalar N's text) is in the file: exact when the scalar is
 * written verbatim on one line (plain, or quoted without escapes); otherwise 0, and the caller points at
 * the scalar's start. */
static int map_column(const pv_file *f, const qy_node *n, int ecol, int *line, int *col) {
  size_t off;
  if (n->kind != QY_SCALAR || n->style == QY_BLOCK || ecol < 1) return 0;
  if (!f->text || text_offset(f->text, f->len, n->line, n->col, &off) != 0) return 0;
  size_t q = n->style == QY_QUOTED ? 1 : 0;
  if (off + q + n->len + q > f->len) return 0;
  if (memchr(n->str, '\n', n->len) || memcmp(f->text + off + q, n->str, n->len) != 0) return 0;
  if (q && (f->text[off] != f->text[off + 1 + n->len] || (f->text[off] != '"' && f->text[off] != '\''))) return 0;
  size_t bytes = (size_t)ecol - 1 > n->len ? n->len : (size_t)ecol - 1;
  *line = n->line;
  *col = n->col + (int)q + utf8_chars(n->str, bytes);
  return 1;
}

static void add_expr_diag(pv_set *set, pv_file *f, const char *path, int ecol, const char *msg, const char *code) {
  int complete;
  const qy_node *n = resolve(f->root, path, &complete);
  int line = n->line, col = n->col;
  char where[64] = "";
  if (ecol > 0 && !(complete && map_column(f, n, ecol, &line, &col)))
    snprintf(where, sizeof where, " (column %d of the expression)", ecol);
  char q[128];
  diag_add(set->diag, DIAG_ERROR, f->path, line, col, code, "%s: %s%s", pv_quote(q, sizeof q, path, strlen(path)),
           msg, where);
}

static void run_check(pv_lua *p, pv_set *set, pv_file *f, int ref);
void pv_lua_check_quant(pv_lua *p, pv_set *set, pv_file *f) { run_check(p, set, f, p->ref); }
void pv_lua_check_recipe(pv_lua *p, pv_set *set, pv_file *f) { run_check(p, set, f, p->ref_recipe); }

/* Calls the checker REF on the file's tree and reports each {path, col, msg, code} it returns. */
static void run_check(pv_lua *p, pv_set *set, pv_file *f, int ref) {
  if (p->state == 1) return;
  if (p->state == 2) {
    diag_add(set->diag, DIAG_ERROR, f->path, 1, 1, "E399",
             "decode expressions cannot be checked: codegen/lib/expr.lua failed to load: %s", p->load_err);
    return;
  }
  lua_State *L = p->L;
  lua_rawgeti(L, LUA_REGISTRYINDEX, ref);
  luaenv_push_node(L, f->root);
  if (lua_pcall(L, 1, 1, 0) != LUA_OK) {
    const char *msg = lua_tostring(L, -1);
    diag_add(set->diag, DIAG_ERROR, f->path, 1, 1, "E399", "the expression checker failed: %s",
             msg ? msg : "(error object is not a string)");
    lua_settop(L, 0);
    return;
  }
  if (!lua_istable(L, -1)) {
    diag_add(set->diag, DIAG_ERROR, f->path, 1, 1, "E399", "the expression checker returned %s, not a list",
             luaL_typename(L, -1));
    lua_settop(L, 0);
    return;
  }
  lua_Integer n = luaL_len(L, -1);
  for (lua_Integer i = 1; i <= n; i++) {
    lua_rawgeti(L, -1, i);
    if (!lua_istable(L, -1)) {
      lua_pop(L, 1);
      continue;
    }
    lua_getfield(L, -1, "path");
    lua_getfield(L, -2, "col");
    lua_getfield(L, -3, "msg");
    lua_getfield(L, -4, "code");
    const char *path = lua_type(L, -4) == LUA_TSTRING ? lua_tostring(L, -4) : "";
    int ecol = lua_isinteger(L, -3) ? (int)lua_tointeger(L, -3) : 0;
    const char *msg = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : "invalid expression";
    const char *code = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "";
    if (!(strlen(code) == 4 && code[0] == 'E' && code[1] == '3')) code = "E301";
    add_expr_diag(set, f, path, ecol, msg, code);
    lua_pop(L, 5);
  }
  lua_settop(L, 0);
}

/* ---- require("pv") -------------------------------------------------------------------------------- */

/* pv.validate(dir) -> ok, report_text */
static int l_validate(lua_State *L) {
  const char *dir = luaL_checkstring(L, 1);
  pv_result res = { 0 };
  int rc = pv_validate(&dir, 1, NULL, &res);
  char *buf = NULL;
  size_t len = 0;
  FILE *m = open_memstream(&buf, &len);
  if (!m) {
    pv_result_free(&res);
    return luaL_error(L, "pv.validate: cannot allocate the report");
  }
  pv_print_text(&res, m);
  fclose(m);
  lua_pushboolean(L, rc == 0);
  lua_pushlstring(L, buf, len);
  free(buf);
  pv_result_free(&res);
  return 2;
}

static int l_open(lua_State *L) {
  static const luaL_Reg fns[] = { { "validate", l_validate }, { NULL, NULL } };
  luaL_newlib(L, fns);
  return 1;
}

void pv_register_lua(lua_State *L) {
  lua_getglobal(L, "package");
  lua_getfield(L, -1, "preload");
  lua_pushcfunction(L, l_open);
  lua_setfield(L, -2, "pv");
  lua_pop(L, 2);
}
