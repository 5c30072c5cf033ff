/* luaenv.c: Lua state with embedded codegen modules and a `yaml` binding over yaml_tree. */
#include "luaenv.h"
#include <errno.h>
#include <lauxlib.h>
#include <lualib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Written by configure.lua from src/lib/lua/*.lua and codegen/lib/*.lua. */
struct qmoe_lua_module { const char *name; const char *path; const char *src; size_t len; };
extern const struct qmoe_lua_module qmoe_lua_modules[];
extern const size_t qmoe_lua_module_count;

static int searcher(lua_State *L) {
  const char *name = luaL_checkstring(L, 1);
  for (size_t i = 0; i < qmoe_lua_module_count; i++) {
    if (strcmp(qmoe_lua_modules[i].name, name) == 0) {
      char chunk[256];
      snprintf(chunk, sizeof chunk, "@%s", qmoe_lua_modules[i].path);
      if (luaL_loadbuffer(L, qmoe_lua_modules[i].src, qmoe_lua_modules[i].len, chunk) != LUA_OK)
        return lua_error(L);
      lua_pushstring(L, chunk + 1);
      return 2;
    }
  }
  lua_pushfstring(L, "no embedded module '%s'", name);
  return 1;
}

/* Registry table: table -> {line, col, keys = {key -> {line, col}}}, weak keys. */
static const char POS_KEY = 'p';

static void record_pos(lua_State *L, int tbl, const qy_node *n) {
  lua_rawgetp(L, LUA_REGISTRYINDEX, &POS_KEY);
  lua_pushvalue(L, tbl);
  lua_createtable(L, 0, 3);
  lua_pushinteger(L, n->line); lua_setfield(L, -2, "line");
  lua_pushinteger(L, n->col); lua_setfield(L, -2, "col");
  lua_settable(L, -3);
  lua_pop(L, 1);
}

static int parse_number(lua_State *L, const qy_node *n) {
  if (n->style != QY_PLAIN || n->len == 0) return 0;
  const char *s = n->str;
  if (!strcmp(s, "true")) { lua_pushboolean(L, 1); return 1; }
  if (!strcmp(s, "false")) { lua_pushboolean(L, 0); return 1; }
  if (!strcmp(s, "null") || !strcmp(s, "~")) { lua_pushnil(L); return 1; }
  char *end;
  errno = 0;
  long long v = strtoll(s, &end, 0);
  if (*end == 0 && errno == 0 && (s[0] != '0' || s[1] == 0 || s[1] == 'x' || s[1] == 'X')) {
    if (n->tag == QY_TAG_FLOAT) lua_pushnumber(L, (lua_Number)v); /* !!float 128: the float 128.0 */
    else lua_pushinteger(L, v);
    return 1;
  }
  double d = strtod(s, &end);
  if (*end == 0 && end != s && strpbrk(s, "0123456789")) { lua_pushnumber(L, d); return 1; }
  return 0;
}

void luaenv_push_node(lua_State *L, const qy_node *n) {
  luaL_checkstack(L, 8, "yaml nesting");
  switch (n->kind) {
  case QY_SCALAR:
    if (!parse_number(L, n)) lua_pushlstring(L, n->str ? n->str : "", n->len);
    return;
  case QY_SEQ:
    lua_createtable(L, (int)n->n, 0);
    for (size_t i = 0; i < n->n; i++) {
      luaenv_push_node(L, n->items[i]);
      lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    record_pos(L, lua_gettop(L), n);
    return;
  case QY_MAP:
    lua_createtable(L, 0, (int)n->n);
    for (size_t i = 0; i < n->n; i++) {
      const qy_node *k = n->items[2 * i];
      if (k->kind != QY_SCALAR) continue;
      lua_pushlstring(L, k->str, k->len);
      luaenv_push_node(L, n->items[2 * i + 1]);
      lua_settable(L, -3);
    }
    record_pos(L, lua_gettop(L), n);
    /* Key positions, for messages that point at a key. */
    lua_rawgetp(L, LUA_REGISTRYINDEX, &POS_KEY);
    lua_pushvalue(L, -2);
    lua_gettable(L, -2);
    lua_createtable(L, 0, (int)n->n);
    for (size_t i = 0; i < n->n; i++) {
      const qy_node *k = n->items[2 * i];
      if (k->kind != QY_SCALAR) continue;
      lua_createtable(L, 0, 2);
      lua_pushinteger(L, n->items[2 * i + 1]->line); lua_setfield(L, -2, "line");
      lua_pushinteger(L, n->items[2 * i + 1]->col); lua_setfield(L, -2, "col");
      lua_setfield(L, -2, k->str);
    }
    lua_setfield(L, -2, "keys");
    lua_pop(L, 2);
    return;
  }
}

/* yaml.load(path) -> tree | nil, "file:line:col: error[..]: ..." lines */
static int l_yaml_load(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  diag_list d = {0};
  qy_node *root = NULL;
  int rc = qy_load_file(path, &root, &d);
  if (rc != 0) {
    char *buf = NULL;
    size_t len = 0;
    FILE *m = open_memstream(&buf, &len);
    diag_print_text(&d, m);
    fclose(m);
    lua_pushnil(L);
    lua_pushlstring(L, buf, len);
    free(buf);
    qy_free(root);
    diag_free(&d);
    return 2;
  }
  luaenv_push_node(L, root);
  qy_free(root);
  diag_free(&d);
  return 1;
}

/* yaml.pos(tbl [, key]) -> line, col (of the table, or of the value under KEY) */
static int l_yaml_pos(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_settop(L, 2); /* KEY absent reads as nil: index 2 must not alias the registry table pushed below */
  lua_rawgetp(L, LUA_REGISTRYINDEX, &POS_KEY);
  lua_pushvalue(L, 1);
  lua_gettable(L, -2);
  if (lua_isnil(L, -1)) return 0;
  if (!lua_isnoneornil(L, 2)) {
    lua_getfield(L, -1, "keys");
    lua_pushvalue(L, 2);
    lua_gettable(L, -2);
    if (lua_isnil(L, -1)) return 0;
  }
  lua_getfield(L, -1, "line");
  lua_getfield(L, -2, "col");
  return 2;
}

lua_State *luaenv_new(void) {
  lua_State *L = luaL_newstate();
  if (!L) {
    fprintf(stderr, "qmoe: cannot create a Lua state (out of memory)\n");
    abort();
  }
  luaL_openlibs(L);
  lua_newtable(L);
  lua_newtable(L);
  lua_pushstring(L, "k");
  lua_setfield(L, -2, "__mode");
  lua_setmetatable(L, -2);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &POS_KEY);
  /* Embedded modules are searched before the filesystem, so every tool sees the same code. */
  lua_getglobal(L, "package");
  lua_getfield(L, -1, "searchers");
  lua_Integer len = (lua_Integer)lua_rawlen(L, -1);
  for (lua_Integer i = len; i >= 2; i--) {
    lua_rawgeti(L, -1, i);
    lua_rawseti(L, -2, i + 1);
  }
  lua_pushcfunction(L, searcher);
  lua_rawseti(L, -2, 2);
  lua_pop(L, 2);
  static const luaL_Reg yaml_fns[] = { { "load", l_yaml_load }, { "pos", l_yaml_pos }, { NULL, NULL } };
  luaL_newlib(L, yaml_fns);
  lua_pushvalue(L, -1);
  lua_setglobal(L, "yaml");
  lua_getglobal(L, "package");
  lua_getfield(L, -1, "loaded");
  lua_pushvalue(L, -3);
  lua_setfield(L, -2, "yaml");
  lua_pop(L, 3);
  return L;
}

static int traceback(lua_State *L) {
  const char *msg = lua_tostring(L, 1);
  luaL_traceback(L, L, msg ? msg : "(error object is not a string)", 1);
  return 1;
}

int luaenv_dofile(lua_State *L, const char *path, int argc, char **argv) {
  lua_pushcfunction(L, traceback);
  int base = lua_gettop(L);
  lua_createtable(L, argc, 1);
  lua_pushstring(L, path);
  lua_rawseti(L, -2, 0);
  for (int i = 0; i < argc; i++) {
    lua_pushstring(L, argv[i]);
    lua_rawseti(L, -2, i + 1);
  }
  lua_setglobal(L, "arg");
  if (luaL_loadfile(L, path) != LUA_OK) {
    fprintf(stderr, "%s\n", lua_tostring(L, -1));
    lua_settop(L, base - 1);
    return -1;
  }
  luaL_checkstack(L, argc + 1, "too many arguments"); /* C code gets only LUA_MINSTACK (20) free slots */
  for (int i = 0; i < argc; i++) lua_pushstring(L, argv[i]);
  if (lua_pcall(L, argc, 0, base) != LUA_OK) {
    fprintf(stderr, "%s\n", lua_tostring(L, -1));
    lua_settop(L, base - 1);
    return -1;
  }
  lua_settop(L, base - 1);
  return 0;
}
