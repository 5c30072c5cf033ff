/* cmd_convert.c: `qmoe convert HF_DIR OUT.gguf`: a Qwen3-MoE Hugging Face checkpoint (config.json, safetensors
 * shards, tokenizer.json) -> a GGUF file with llama.cpp's qwen3moe names, metadata and tokenizer (docs/convert.md). */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include "cmd.h"

static const char usage[] =
  "usage: qmoe convert HF_DIR OUT.gguf [--type f32|f16|bf16]\n"
  "Converts a Qwen3-MoE Hugging Face checkpoint directory to GGUF with llama.cpp's qwen3moe tensor names and\n"
  "metadata keys. HF_DIR holds config.json, model.safetensors (or the shards listed in\n"
  "model.safetensors.index.json), tokenizer.json and, for the chat template, tokenizer_config.json or\n"
  "chat_template.jinja. Experts (mlp.experts.E.{gate,up,down}_proj) are stacked per layer into the 3-D\n"
  "ffn_{gate,up,down}_exps tensors. Safetensors dtypes BF16, F16 and F32 are read.\n"
  "  --type T  the type of the matrices: f32, f16 or bf16 (default: the checkpoint's dtype from config.json).\n"
  "            Norms and the MoE router are F32 whatever T is. Conversions round to nearest even; a value\n"
  "            the type cannot hold, or a non-finite weight, stops the command naming the tensor.\n"
  "The output is written to a temporary file and renamed into place when complete; it may not be one of\n"
  "the inputs. Progress goes to stderr.\n"
  "example: qmoe convert ./Qwen3-30B-A3B qwen3-30b-a3b-bf16.gguf --type bf16\n";

/* "qmoe convert: error: ..." on stderr; returns -1. */
static int fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int fail(const char *fmt, ...) {
  va_list ap;
  fprintf(stderr, "qmoe convert: error: ");
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputc('\n', stderr);
  return -1;
}

/* ---- config.json ------------------------------------------------------------------------------------ */

typedef struct {
  int64_t vocab, hidden, layers, ff, moe_ff, heads, kv_heads, head_dim, experts, used, ctx;
  double theta, eps;
  int tied;
  int dtype; /* ggml type of the checkpoint's dtype, -1 if not given */
} hf_config;

static int cfg_int(const char *path, const qmoe_json *cfg, const char *key, const char *alt, int64_t *out) {
  const qmoe_json *v = qmoe_json_get(cfg, key);
  if (!v && alt) v = qmoe_json_get(cfg, alt);
  if (!v) return alt ? fail("%s: missing key \"%s\" (or \"%s\")", path, key, alt) : fail("%s: missing key \"%s\"", path, key);
  if (v->type != QMOE_JSON_NUMBER || !v->is_integer || v->integer <= 0 || v->integer > ((int64_t)1 << 31))
    return fail("%s:%d:%d: \"%s\" must be a positive integer below 2^31, found %s", path, v->line, v->col, v->key,
               v->type == QMOE_JSON_NUMBER ? "a number out of range" : qmoe_json_type_name(v->type));
  *out = v->integer;
  return 0;
}

static int json_num(const char *path, const qmoe_json *v, const char *what, double *out) {
  if (v->type != QMOE_JSON_NUMBER || !(v->number > 0))
    return fail("%s:%d:%d: %s must be a positive number, found %s", path, v->line, v->col, what, qmoe_json_type_name(v->type));
  *out = v->number;
  return 0;
}

static int read_config(const char *dir, hf_config *c) {
  char path[4096];
  snprintf(path, sizeof path, "%s/config.json", dir);
  qmoe_json *cfg;
  if (qmoe_json_read_file(path, &cfg) != 0) return fail("%s", qmoe_last_error());
  int rc = -1;
  memset(c, 0, sizeof *c);
  c->dtype = -1;
  if (cfg->type != QMOE_JSON_OBJECT) {
    fail("%s: expected an object, found %s", path, qmoe_json_type_name(cfg->type));
    goto done;
  }
  /* The architecture first: everything else is read as Qwen3-MoE. */
  const qmoe_json *mt = qmoe_json_get(cfg, "model_type"), *ar = qmoe_json_get(cfg, "architectures");
  int is_moe = mt && mt->type == QMOE_JSON_STRING && !strcmp(mt->string, "qwen3_moe");
  if (!mt && ar && ar->type == QMOE_JSON_ARRAY)
    for (size_t i = 0; i < ar->count; i++)
      if (ar->items[i].type == QMOE_JSON_STRING && !strcmp(ar->items[i].string, "Qwen3MoeForCausalLM")) is_moe = 1;
  if (!is_moe) {
    fail("%s: model_type %s%s%s is not qwen3_moe: qmoe convert handles Qwen3-MoE checkpoints (Qwen3MoeForCausalLM) only",
        path, mt && mt->type == QMOE_JSON_STRING ? "\"" : "", mt ? (mt->type == QMOE_JSON_STRING ? mt->string : "(not a string)") : "(missing)",
        mt && mt->type == QMOE_JSON_STRING ? "\"" : "");
    goto done;
  }
  if (cfg_int(path, cfg, "vocab_size", NULL, &c->vocab) || cfg_int(path, cfg, "hidden_size", NULL, &c->hidden) ||
      cfg_int(path, cfg, "num_hidden_layers", NULL, &c->layers) || cfg_int(path, cfg, "intermediate_size", NULL, &c->ff) ||
      cfg_int(path, cfg, "moe_intermediate_size", NULL, &c->moe_ff) ||
      cfg_int(path, cfg, "num_attention_heads", NULL, &c->heads) ||
      cfg_int(path, cfg, "num_key_value_heads", NULL, &c->kv_heads) || cfg_int(path, cfg, "head_dim", NULL, &c->head_dim) ||
      cfg_int(path, cfg, "num_experts", "num_local_experts", &c->experts) ||
      cfg_int(path, cfg, "num_experts_per_tok", NULL, &c->used) ||
      cfg_int(path, cfg, "max_position_embeddings", NULL, &c->ctx))
    goto done;
  if (c->used > c->experts) {
    fail("%s: num_experts_per_tok %lld exceeds the expert count %lld", path, (long long)c->used, (long long)c->experts);
    goto done;
  }
  if (c->heads % c->kv_heads) {
    fail("%s: num_attention_heads %lld is not a multiple of num_key_value_heads %lld", path, (long long)c->heads,
        (long long)c->kv_heads);
    goto done;
  }
  const qmoe_json *eps = qmoe_json_get(cfg, "rms_norm_eps");
  if (!eps) {
    fail("%s: missing key \"rms_norm_eps\"", path);
    goto done;
  }
  if (json_num(path, eps, "\"rms_norm_eps\"", &c->eps)) goto done;
  /* RoPE: transformers 4.x writes rope_theta (and rope_scaling), 5.x rope_parameters {rope_theta, rope_type}. */
  const qmoe_json *th = qmoe_json_get(cfg, "rope_theta"), *rp = qmoe_json_get(cfg, "rope_parameters"),
                  *rs = qmoe_json_get(cfg, "rope_scaling");
  if (rp && rp->type == QMOE_JSON_OBJECT) {
    const qmoe_json *t2 = qmoe_json_get(rp, "rope_theta"), *ty = qmoe_json_get(rp, "rope_type");
    if (ty && !(ty->type == QMOE_JSON_STRING && !strcmp(ty->string, "default"))) {
      fail("%s:%d:%d: rope_parameters.rope_type %s is not supported (qwen3moe in qmoe uses plain RoPE: \"default\")", path,
          ty->line, ty->col, ty->type == QMOE_JSON_STRING ? ty->string : qmoe_json_type_name(ty->type));
      goto done;
    }
    if (t2) th = t2;
  } else if (rp && rp->type != QMOE_JSON_NULL) {
    fail("%s:%d:%d: \"rope_parameters\" must be an object, found %s", path, rp->line, rp->col, qmoe_json_type_name(rp->type));
    goto done;
  }
  if (rs && rs->type != QMOE_JSON_NULL) {
    const qmoe_json *ty = qmoe_json_get(rs, "rope_type");
    if (!ty) ty = qmoe_json_get(rs, "type");
    if (!(ty && ty->type == QMOE_JSON_STRING && !strcmp(ty->string, "default"))) {
      fail("%s:%d:%d: \"rope_scaling\" (%s) is not supported: qmoe converts models with plain RoPE only", path, rs->line,
          rs->col, ty && ty->type == QMOE_JSON_STRING ? ty->string : "set");
      goto done;
    }
  }
  if (!th) {
    fail("%s: missing the RoPE base: neither \"rope_theta\" nor \"rope_parameters\": {\"rope_theta\"}", path);
    goto done;
  }
  if (json_num(path, th, "the RoPE base rope_theta", &c->theta)) goto done;
  /* Properties llama.cpp's qwen3moe fixes: every layer MoE, top-k weights renormalized, no shared expert. */
  const qmoe_json *v;
  if ((v = qmoe_json_get(cfg, "norm_topk_prob")) && v->type != QMOE_JSON_TRUE) {
    fail("%s:%d:%d: norm_topk_prob must be true: GGUF qwen3moe always renormalizes the top-k router weights", path, v->line, v->col);
    goto done;
  }
  if ((v = qmoe_json_get(cfg, "decoder_sparse_step")) && !(v->type == QMOE_JSON_NUMBER && v->is_integer && v->integer == 1)) {
    fail("%s:%d:%d: decoder_sparse_step must be 1 (every layer MoE) for GGUF qwen3moe", path, v->line, v->col);
    goto done;
  }
  if ((v = qmoe_json_get(cfg, "mlp_only_layers")) && !(v->type == QMOE_JSON_NULL || (v->type == QMOE_JSON_ARRAY && v->count == 0))) {
    fail("%s:%d:%d: mlp_only_layers must be empty (dense layers are not part of GGUF qwen3moe)", path, v->line, v->col);
    goto done;
  }
  if ((v = qmoe_json_get(cfg, "hidden_act")) && !(v->type == QMOE_JSON_STRING && !strcmp(v->string, "silu"))) {
    fail("%s:%d:%d: hidden_act must be \"silu\" (SwiGLU experts)", path, v->line, v->col);
    goto done;
  }
  /* Qwen3MoeConfig's tie_word_embeddings is false when absent. */
  if ((v = qmoe_json_get(cfg, "tie_word_embeddings"))) {
    if (v->type != QMOE_JSON_TRUE && v->type != QMOE_JSON_FALSE) {
      fail("%s:%d:%d: tie_word_embeddings must be true or false", path, v->line, v->col);
      goto done;
    }
    c->tied = v->type == QMOE_JSON_TRUE;
  }
  if ((v = qmoe_json_get(cfg, "dtype")) || (v = qmoe_json_get(cfg, "torch_dtype"))) {
    if (v->type == QMOE_JSON_STRING) {
      if (!strcmp(v->string, "bfloat16")) c->dtype = 30;
      else if (!strcmp(v->string, "float16")) c->dtype = 1;
      else if (!strcmp(v->string, "float32")) c->dtype = 0;
    }
  }
  rc = 0;
done:
  qmoe_json_free(cfg);
  return rc;
}

/* ---- weights: one or more safetensors files ---------------------------------------------------------- */

typedef struct {
  int n;
  qmoe_safetensors **f;
  char **names;     /* file names inside HF_DIR */
  unsigned char **used;
} shards;

static void shards_free(shards *s) {
  for (int i = 0; i < s->n; i++) {
    qmoe_safetensors_close(s->f[i]);
    free(s->names[i]);
    free(s->used[i]);
  }
  free(s->f);
  free(s->names);
  free(s->used);
}

static int shard_index(shards *s, const char *dir, const char *name) {
  for (int i = 0; i < s->n; i++)
    if (!strcmp(s->names[i], name)) return i;
  char path[4096];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  qmoe_safetensors *f;
  if (qmoe_safetensors_open(path, &f) != 0) return fail("%s", qmoe_last_error());
  s->f = realloc(s->f, sizeof *s->f * (size_t)(s->n + 1));
  s->names = realloc(s->names, sizeof *s->names * (size_t)(s->n + 1));
  s->used = realloc(s->used, sizeof *s->used * (size_t)(s->n + 1));
  if (!s->f || !s->names || !s->used) abort();
  s->f[s->n] = f;
  s->names[s->n] = strdup(name);
  s->used[s->n] = calloc((size_t)qmoe_safetensors_count(f) + 1, 1);
  if (!s->names[s->n] || !s->used[s->n]) abort();
  return s->n++;
}

static int open_weights(const char *dir, shards *s) {
  char path[4096];
  snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
  struct stat st;
  if (stat(path, &st) != 0) {
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    if (stat(path, &st) != 0)
      return fail("%s: no model.safetensors and no model.safetensors.index.json: not a safetensors checkpoint", dir);
    return shard_index(s, dir, "model.safetensors") < 0 ? -1 : 0;
  }
  qmoe_json *idx;
  if (qmoe_json_read_file(path, &idx) != 0) return fail("%s", qmoe_last_error());
  int rc = -1;
  const qmoe_json *wm = qmoe_json_get(idx, "weight_map");
  if (!wm || wm->type != QMOE_JSON_OBJECT) {
    fail("%s: no \"weight_map\" object (tensor name -> shard file)", path);
    goto done;
  }
  for (size_t i = 0; i < wm->count; i++) {
    const qmoe_json *e = &wm->items[i];
    if (e->type != QMOE_JSON_STRING || !e->len || strchr(e->string, '/') || e->string[0] == '.' || strlen(e->string) != e->len) {
      fail("%s:%d:%d: weight_map[\"%s\"] must name a shard file in the checkpoint directory (no '/', not starting with '.')",
          path, e->line, e->col, e->key);
      goto done;
    }
    int k = shard_index(s, dir, e->string);
    if (k < 0) goto done;
    if (!qmoe_safetensors_find(s->f[k], e->key)) {
      fail("%s:%d:%d: weight_map puts tensor '%s' in %s, which does not hold it", path, e->line, e->col, e->key, e->string);
      goto done;
    }
  }
  if (s->n == 0) {
    fail("%s: the weight_map is empty", path);
    goto done;
  }
  rc = 0;
done:
  qmoe_json_free(idx);
  return rc;
}

static const qmoe_st_tensor *find_weight(shards *s, const char *name) {
  for (int i = 0; i < s->n; i++) {
    const qmoe_st_tensor *t = qmoe_safetensors_find(s->f[i], name);
    if (t) {
      s->used[i][t - qmoe_safetensors_at(s->f[i], 0)] = 1;
      return t;
    }
  }
  return NULL;
}

/* ---- the tensor plan ----------------------------------------------------------------------------------- */

enum { MAX_PIECES_INLINE = 1 };
typedef struct {
  char name[64];
  int type;                 /* output ggml type */
  int n_dims;
  int64_t ne[3];
  int n_src;                /* 1, or the expert count for stacked experts */
  const qmoe_st_tensor **src;
} out_tensor;

typedef struct {
  out_tensor *t;
  int n, cap;
} plan;

/* Finds HF tensor NAME with HF shape [d0, d1] (d1 = 0: 1-D [d0]) and checks it. */
static const qmoe_st_tensor *need(shards *s, const char *name, int64_t d0, int64_t d1) {
  const qmoe_st_tensor *t = find_weight(s, name);
  if (!t) {
    fail("tensor '%s' is missing from the checkpoint (expected shape [%lld%s%.0lld])", name, (long long)d0, d1 ? ", " : "",
        (long long)d1);
    return NULL;
  }
  int nd = d1 ? 2 : 1;
  if (t->n_dims != nd || t->shape[0] != d0 || (d1 && t->shape[1] != d1)) {
    char got[128] = "[";
    for (int i = 0; i < t->n_dims; i++)
      snprintf(got + strlen(got), sizeof got - strlen(got), "%s%lld", i ? ", " : "", (long long)t->shape[i]);
    strcat(got, "]");
    fail("tensor '%s' in %s has shape %s, expected [%lld%s%.0lld] from config.json", name, "the checkpoint", got, (long long)d0,
        d1 ? ", " : "", (long long)d1);
    return NULL;
  }
  if (t->dtype != QMOE_ST_BF16 && t->dtype != QMOE_ST_F16 && t->dtype != QMOE_ST_F32) {
    fail("tensor '%s' has dtype %s: qmoe convert reads BF16, F16 and F32", name, t->dtype_name);
    return NULL;
  }
  return t;
}

static out_tensor *add(plan *p, int type, int n_dims, int64_t ne0, int64_t ne1, int64_t ne2, int n_src, const char *fmt, ...)
  __attribute__((format(printf, 8, 9)));
static out_tensor *add(plan *p, int type, int n_dims, int64_t ne0, int64_t ne1, int64_t ne2, int n_src, const char *fmt, ...) {
  if (p->n == p->cap) {
    p->cap = p->cap ? p->cap * 2 : 64;
    p->t = realloc(p->t, sizeof *p->t * (size_t)p->cap);
    if (!p->t) abort();
  }
  out_tensor *t = &p->t[p->n++];
  memset(t, 0, sizeof *t);
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(t->name, sizeof t->name, fmt, ap);
  va_end(ap);
  t->type = type;
  t->n_dims = n_dims;
  t->ne[0] = ne0, t->ne[1] = ne1, t->ne[2] = ne2;
  t->n_src = n_src;
  t->src = calloc((size_t)n_src, sizeof *t->src);
  if (!t->src) abort();
  return t;
}

static int build_plan(const hf_config *c, shards *s, int mtype, plan *p) {
  const int F32 = 0;
  /* Before anything is sized from config.json: the checkpoint must hold at least the tensors it implies. */
  int64_t have = 0, want = 2 + c->layers * (9 + 3 * c->experts);
  for (int i = 0; i < s->n; i++) have += qmoe_safetensors_count(s->f[i]);
  if (have < want)
    return fail("config.json's %lld layers x %lld experts need at least %lld tensors, but the checkpoint holds %lld",
                (long long)c->layers, (long long)c->experts, (long long)want, (long long)have);
  int64_t H = c->hidden, V = c->vocab, Q = c->heads * c->head_dim, KV = c->kv_heads * c->head_dim, FF = c->moe_ff;
  out_tensor *t;
  char n[160];
  t = add(p, mtype, 2, H, V, 1, 1, "token_embd.weight");
  if (!(t->src[0] = need(s, "model.embed_tokens.weight", V, H))) return -1;
  for (int64_t l = 0; l < c->layers; l++) {
    struct { const char *gguf, *hf; int type; int64_t d0, d1; } simple[] = {
      { "attn_norm", "input_layernorm.weight", F32, H, 0 },
      { "attn_q", "self_attn.q_proj.weight", mtype, Q, H },
      { "attn_k", "self_attn.k_proj.weight", mtype, KV, H },
      { "attn_v", "self_attn.v_proj.weight", mtype, KV, H },
      { "attn_output", "self_attn.o_proj.weight", mtype, H, Q },
      { "attn_q_norm", "self_attn.q_norm.weight", F32, c->head_dim, 0 },
      { "attn_k_norm", "self_attn.k_norm.weight", F32, c->head_dim, 0 },
      { "ffn_norm", "post_attention_layernorm.weight", F32, H, 0 },
      { "ffn_gate_inp", "mlp.gate.weight", F32, c->experts, H },
    };
    for (size_t i = 0; i < sizeof simple / sizeof simple[0]; i++) {
      int nd = simple[i].d1 ? 2 : 1;
      t = add(p, simple[i].type, nd, nd == 2 ? simple[i].d1 : simple[i].d0, nd == 2 ? simple[i].d0 : 1, 1, 1, "blk.%lld.%s.weight",
              (long long)l, simple[i].gguf);
      snprintf(n, sizeof n, "model.layers.%lld.%s", (long long)l, simple[i].hf);
      if (!(t->src[0] = need(s, n, simple[i].d0, simple[i].d1))) return -1;
    }
    struct { const char *gguf, *hf; int64_t d0, d1; } exps[] = {
      { "ffn_gate_exps", "gate_proj", FF, H }, { "ffn_up_exps", "up_proj", FF, H }, { "ffn_down_exps", "down_proj", H, FF } };
    for (size_t i = 0; i < 3; i++) {
      t = add(p, mtype, 3, exps[i].d1, exps[i].d0, c->experts, (int)c->experts, "blk.%lld.%s.weight", (long long)l, exps[i].gguf);
      for (int64_t e = 0; e < c->experts; e++) {
        snprintf(n, sizeof n, "model.layers.%lld.mlp.experts.%lld.%s.weight", (long long)l, (long long)e, exps[i].hf);
        if (!(t->src[e] = need(s, n, exps[i].d0, exps[i].d1))) return -1;
      }
    }
  }
  t = add(p, F32, 1, H, 1, 1, 1, "output_norm.weight");
  if (!(t->src[0] = need(s, "model.norm.weight", H, 0))) return -1;
  t = add(p, mtype, 2, H, V, 1, 1, "output.weight");
  if (c->tied) {
    /* Tied embeddings: the output matrix is the embedding; written out so every reader finds output.weight. */
    if (find_weight(s, "lm_head.weight"))
      fprintf(stderr, "qmoe convert: note: tie_word_embeddings is true: lm_head.weight is ignored, output.weight is "
                      "model.embed_tokens.weight\n");
    if (!(t->src[0] = need(s, "model.embed_tokens.weight", V, H))) return -1;
  } else {
    if (!find_weight(s, "lm_head.weight"))
      return fail("tensor 'lm_head.weight' is missing and config.json does not say tie_word_embeddings: true");
    if (!(t->src[0] = need(s, "lm_head.weight", V, H))) return -1;
  }
  /* A tensor nobody maps means a model this converter does not understand (a shared expert, fused experts...). */
  for (int i = 0; i < s->n; i++)
    for (int64_t k = 0; k < qmoe_safetensors_count(s->f[i]); k++)
      if (!s->used[i][k])
        return fail("tensor '%s' in %s has no place in a GGUF qwen3moe model (the converter maps embed_tokens, norm, lm_head, "
                   "and per layer the attention, norms, mlp.gate and mlp.experts.E.{gate,up,down}_proj)",
                   qmoe_safetensors_at(s->f[i], k)->name, qmoe_safetensors_path(s->f[i]));
  return 0;
}

/* ---- tokenizer ----------------------------------------------------------------------------------------- */

typedef struct {
  char **tokens;
  int32_t *types;
  int64_t n;
  char **merges;
  int64_t n_merges;
  int64_t eos, pad, bos;  /* -1 if none */
  char *chat_template;
  int add_bos;             /* -1 unset */
} vocab;

static void vocab_free(vocab *v) {
  for (int64_t i = 0; i < v->n; i++) free(v->tokens[i]);
  for (int64_t i = 0; i < v->n_merges; i++) free(v->merges[i]);
  free(v->tokens);
  free(v->types);
  free(v->merges);
  free(v->chat_template);
}

/* Qwen2's pre-tokenizer split: the tokenizer qmoe implements for tokenizer.ggml.pre = "qwen2". */
static const char qwen2_regex[] =
  "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

static int check_pre_tokenizer(const char *path, const qmoe_json *tj) {
  const qmoe_json *pt = qmoe_json_get(tj, "pre_tokenizer");
  const qmoe_json *split = NULL, *bl = NULL;
  if (pt && qmoe_json_get(pt, "type") && qmoe_json_get(pt, "type")->type == QMOE_JSON_STRING &&
      !strcmp(qmoe_json_get(pt, "type")->string, "Sequence")) {
    const qmoe_json *seq = qmoe_json_get(pt, "pretokenizers");
    for (size_t i = 0; seq && seq->type == QMOE_JSON_ARRAY && i < seq->count; i++) {
      const qmoe_json *ty = qmoe_json_get(&seq->items[i], "type");
      if (!ty || ty->type != QMOE_JSON_STRING) continue;
      if (!strcmp(ty->string, "Split") && i == 0) split = &seq->items[i];
      if (!strcmp(ty->string, "ByteLevel") && i == 1) bl = &seq->items[i];
    }
    if (seq && seq->count != 2) split = NULL;
  }
  const qmoe_json *pat = split ? qmoe_json_get(split, "pattern") : NULL;
  const qmoe_json *re = pat ? qmoe_json_get(pat, "Regex") : NULL;
  if (!split || !bl || !re || re->type != QMOE_JSON_STRING || strcmp(re->string, qwen2_regex))
    return fail("%s%s%d:%d: pre_tokenizer is not Qwen2's (a Sequence of Split with Qwen2's regex, then ByteLevel): "
               "qmoe's tokenizer implements tokenizer.ggml.pre = \"qwen2\" only", path, ":", pt ? pt->line : 1, pt ? pt->col : 1);
  return 0;
}

static char *special_token_name(const qmoe_json *v) {
  if (!v) return NULL;
  if (v->type == QMOE_JSON_STRING) return v->string;
  if (v->type == QMOE_JSON_OBJECT) {
    const qmoe_json *c = qmoe_json_get(v, "content");
    if (c && c->type == QMOE_JSON_STRING) return c->string;
  }
  return NULL;
}

static int64_t token_id(const vocab *v, const char *s) {
  for (int64_t i = 0; i < v->n; i++)
    if (v->tokens[i] && !strcmp(v->tokens[i], s)) return i;
  return -1;
}

static char *read_text(const char *path, int *missing) {
  FILE *fp = fopen(path, "rb");
  *missing = !fp && errno == ENOENT;
  if (!fp) return NULL;
  size_t cap = 4096, n = 0;
  char *s = malloc(cap);
  for (size_t k; s && (k = fread(s + n, 1, cap - n - 1, fp)) > 0;) {
    n += k;
    if (n + 1 == cap) s = realloc(s, cap *= 2);
  }
  int bad = ferror(fp);
  fclose(fp);
  if (!s) abort();
  if (bad) return free(s), NULL;
  s[n] = 0;
  return s;
}

static int read_tokenizer(const char *dir, const hf_config *c, vocab *v) {
  char path[4096], cpath[4096];
  snprintf(path, sizeof path, "%s/tokenizer.json", dir);
  qmoe_json *tj = NULL, *tc = NULL, *cfg = NULL;
  int rc = -1;
  memset(v, 0, sizeof *v);
  v->eos = v->pad = v->bos = -1;
  v->add_bos = -1;
  if (qmoe_json_read_file(path, &tj) != 0) return fail("%s", qmoe_last_error());
  const qmoe_json *model = qmoe_json_get(tj, "model"), *mty = model ? qmoe_json_get(model, "type") : NULL;
  if (!model || !mty || mty->type != QMOE_JSON_STRING || strcmp(mty->string, "BPE")) {
    fail("%s: model.type is not \"BPE\": qmoe converts byte-level BPE tokenizers only", path);
    goto done;
  }
  if (check_pre_tokenizer(path, tj)) goto done;
  const qmoe_json *vj = qmoe_json_get(model, "vocab"), *mj = qmoe_json_get(model, "merges"),
                  *added = qmoe_json_get(tj, "added_tokens");
  if (!vj || vj->type != QMOE_JSON_OBJECT || !mj || mj->type != QMOE_JSON_ARRAY) {
    fail("%s: model.vocab (an object) or model.merges (an array) is missing", path);
    goto done;
  }
  v->n = c->vocab;
  v->tokens = calloc((size_t)v->n, sizeof *v->tokens);
  v->types = calloc((size_t)v->n, sizeof *v->types);
  if (!v->tokens || !v->types) abort();
  /* The base vocabulary, then the added tokens (which may repeat a base entry with the same id). */
  for (size_t i = 0; i < vj->count; i++) {
    const qmoe_json *e = &vj->items[i];
    if (e->type != QMOE_JSON_NUMBER || !e->is_integer || e->integer < 0 || e->integer >= v->n) {
      fail("%s:%d:%d: token \"%.80s\" has id %s outside the model's vocabulary of %lld (config.json vocab_size)", path, e->line,
          e->col, e->key, e->type == QMOE_JSON_NUMBER ? "" : "(not an integer)", (long long)v->n);
      goto done;
    }
    if (v->tokens[e->integer]) {
      fail("%s:%d:%d: id %lld is given to both \"%.80s\" and \"%.80s\"", path, e->line, e->col, (long long)e->integer,
          v->tokens[e->integer], e->key);
      goto done;
    }
    if (strlen(e->key) != e->key_len) {
      fail("%s:%d:%d: a token holds a NUL byte, which GGUF tokens cannot", path, e->line, e->col);
      goto done;
    }
    v->tokens[e->integer] = strdup(e->key);
    v->types[e->integer] = 1; /* normal */
  }
  for (size_t i = 0; added && added->type == QMOE_JSON_ARRAY && i < added->count; i++) {
    const qmoe_json *a = &added->items[i], *id = qmoe_json_get(a, "id"), *ct = qmoe_json_get(a, "content"),
                    *sp = qmoe_json_get(a, "special");
    if (!id || id->type != QMOE_JSON_NUMBER || !id->is_integer || id->integer < 0 || id->integer >= v->n || !ct ||
        ct->type != QMOE_JSON_STRING || strlen(ct->string) != ct->len) {
      fail("%s:%d:%d: added_tokens[%zu] needs an integer id below vocab_size %lld and a string content", path, a->line, a->col, i,
          (long long)v->n);
      goto done;
    }
    if (v->tokens[id->integer] && strcmp(v->tokens[id->integer], ct->string)) {
      fail("%s:%d:%d: added token \"%.80s\" takes id %lld, already \"%.80s\"", path, a->line, a->col, ct->string,
          (long long)id->integer, v->tokens[id->integer]);
      goto done;
    }
    if (!v->tokens[id->integer]) v->tokens[id->integer] = strdup(ct->string);
    v->types[id->integer] = sp && sp->type == QMOE_JSON_TRUE ? 3 : 4; /* control : user-defined */
  }
  /* Ids the tokenizer does not use (the embedding is padded past it): llama.cpp's "[PAD<id>]", type unused. */
  for (int64_t i = 0; i < v->n; i++) {
    if (v->tokens[i]) continue;
    char pad[32];
    snprintf(pad, sizeof pad, "[PAD%lld]", (long long)i);
    if (qmoe_json_get(vj, pad)) {
      fail("%s: id %lld is unused, and its placeholder name \"%s\" is already a token", path, (long long)i, pad);
      goto done;
    }
    v->tokens[i] = strdup(pad);
    v->types[i] = 5;
  }
  v->merges = calloc(mj->count ? mj->count : 1, sizeof *v->merges);
  if (!v->merges) abort();
  for (size_t i = 0; i < mj->count; i++) {
    const qmoe_json *m = &mj->items[i];
    char *s = NULL;
    if (m->type == QMOE_JSON_STRING) {
      const char *sp = strchr(m->string, ' ');
      if (strlen(m->string) == m->len && sp && sp != m->string && sp[1] && !strchr(sp + 1, ' ')) s = strdup(m->string);
    } else if (m->type == QMOE_JSON_ARRAY && m->count == 2 && m->items[0].type == QMOE_JSON_STRING &&
               m->items[1].type == QMOE_JSON_STRING && m->items[0].len && m->items[1].len &&
               !strchr(m->items[0].string, ' ') && !strchr(m->items[1].string, ' ') &&
               strlen(m->items[0].string) == m->items[0].len && strlen(m->items[1].string) == m->items[1].len) {
      s = malloc(m->items[0].len + m->items[1].len + 2);
      if (!s) abort();
      sprintf(s, "%s %s", m->items[0].string, m->items[1].string);
    }
    if (!s) {
      fail("%s:%d:%d: model.merges[%zu] must be \"a b\" or [\"a\", \"b\"] with two non-empty parts without spaces", path, m->line,
          m->col, i);
      goto done;
    }
    v->merges[v->n_merges++] = s;
  }

  /* Special tokens: tokenizer_config.json names them, config.json's *_token_id fills in the rest. */
  snprintf(cpath, sizeof cpath, "%s/tokenizer_config.json", dir);
  struct stat st;
  if (stat(cpath, &st) == 0) {
    if (qmoe_json_read_file(cpath, &tc) != 0) {
      fail("%s", qmoe_last_error());
      goto done;
    }
    struct { const char *key; int64_t *id; } sp[] = { { "eos_token", &v->eos }, { "pad_token", &v->pad }, { "bos_token", &v->bos } };
    for (int i = 0; i < 3; i++) {
      const qmoe_json *e = qmoe_json_get(tc, sp[i].key);
      const char *name = special_token_name(e);
      if (!name) continue;
      if ((*sp[i].id = token_id(v, name)) < 0) {
        fail("%s:%d:%d: %s \"%.80s\" is not a token of tokenizer.json", cpath, e->line, e->col, sp[i].key, name);
        goto done;
      }
    }
    const qmoe_json *ct = qmoe_json_get(tc, "chat_template");
    if (ct && ct->type == QMOE_JSON_STRING) {
      v->chat_template = strdup(ct->string);
    } else if (ct && ct->type == QMOE_JSON_ARRAY) { /* [{name, template}]: the "default" one */
      for (size_t i = 0; i < ct->count; i++) {
        const qmoe_json *nm = qmoe_json_get(&ct->items[i], "name"), *tp = qmoe_json_get(&ct->items[i], "template");
        if (nm && nm->type == QMOE_JSON_STRING && !strcmp(nm->string, "default") && tp && tp->type == QMOE_JSON_STRING)
          v->chat_template = strdup(tp->string);
      }
    }
    const qmoe_json *ab = qmoe_json_get(tc, "add_bos_token");
    if (ab && (ab->type == QMOE_JSON_TRUE || ab->type == QMOE_JSON_FALSE)) v->add_bos = ab->type == QMOE_JSON_TRUE;
  }
  if (!v->chat_template) { /* transformers 5 saves the template beside the config */
    char tpath[4096];
    int missing;
    snprintf(tpath, sizeof tpath, "%s/chat_template.jinja", dir);
    v->chat_template = read_text(tpath, &missing);
    if (!v->chat_template && !missing) {
      fail("%s: cannot read: %s", tpath, strerror(errno));
      goto done;
    }
  }
  snprintf(cpath, sizeof cpath, "%s/config.json", dir);
  if (qmoe_json_read_file(cpath, &cfg) != 0) {
    fail("%s", qmoe_last_error());
    goto done;
  }
  struct { const char *key; int64_t *id; } ids[] = { { "eos_token_id", &v->eos }, { "pad_token_id", &v->pad }, { "bos_token_id", &v->bos } };
  for (int i = 0; i < 3; i++) {
    const qmoe_json *e = qmoe_json_get(cfg, ids[i].key);
    if (*ids[i].id >= 0 || !e || e->type == QMOE_JSON_NULL) continue;
    if (e->type == QMOE_JSON_ARRAY && e->count > 0) e = &e->items[0]; /* a list of eos ids: the first */
    if (e->type != QMOE_JSON_NUMBER || !e->is_integer || e->integer < 0 || e->integer >= v->n) {
      fail("%s:%d:%d: %s must be a token id below vocab_size %lld", cpath, e->line, e->col, ids[i].key, (long long)v->n);
      goto done;
    }
    *ids[i].id = e->integer;
  }
  if (v->eos < 0) {
    fail("%s: no end-of-sequence token: neither tokenizer_config.json eos_token nor config.json eos_token_id", dir);
    goto done;
  }
  rc = 0;
done:
  qmoe_json_free(tj);
  qmoe_json_free(tc);
  qmoe_json_free(cfg);
  return rc;
}

/* ---- conversion ------------------------------------------------------------------------------------------ */

static int ggml_of_st(int dtype) { return dtype == QMOE_ST_F32 ? 0 : dtype == QMOE_ST_F16 ? 1 : 30; }

/* Decodes n elements of src from element e0 to f32 (exact), checks them, and encodes them as out->type. */
static int convert_chunk(const out_tensor *o, const qmoe_st_tensor *src, int64_t e0, int64_t n, float *tmp, void *dst) {
  const qmoe_qtype_info *in = qmoe_qtype_by_id(ggml_of_st(src->dtype));
  int esz = src->dtype == QMOE_ST_F32 ? 4 : 2;
  if (!in || in->dequant_row((const unsigned char *)src->data + e0 * esz, tmp, n) != 0)
    return fail("tensor '%s': %s", src->name, qmoe_last_error());
  for (int64_t i = 0; i < n; i++) {
    float x = tmp[i];
    uint32_t u;
    memcpy(&u, &x, 4);
    if (!isfinite(x)) return fail("tensor '%s' element %lld is %s: refusing to write a non-finite weight", src->name, (long long)(e0 + i), isnan(x) ? "NaN" : "infinite");
    if (o->type == 1 && fabsf(x) >= 65520.0f)
      return fail("tensor '%s' element %lld = %g is out of the f16 range (|x| <= 65504) for '%s': convert with --type bf16 or f32",
                 src->name, (long long)(e0 + i), (double)x, o->name);
    if (o->type == 30 && (u & 0x7FFFFFFFu) >= 0x7F7F8000u)
      return fail("tensor '%s' element %lld = %g rounds to infinity in bf16 for '%s': convert with --type f32", src->name,
                 (long long)(e0 + i), (double)x, o->name);
  }
  if (qmoe_quantize_row(o->type, tmp, dst, n) != 0) return fail("tensor '%s': %s", o->name, qmoe_last_error());
  return 0;
}

enum { CHUNK = 1 << 20 };

static int run(int argc, char **argv) {
  const char *dir = NULL, *out = NULL, *type = NULL;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--type")) {
      if (type) return cli_usage_error(&cmd_convert, "option --type given twice");
      if (i + 1 >= argc) return cli_usage_error(&cmd_convert, "--type needs f32, f16 or bf16");
      type = argv[++i];
      continue;
    }
    if (argv[i][0] == '-' && argv[i][1]) return cli_usage_error(&cmd_convert, "unknown option '%s'", argv[i]);
    if (!dir) dir = argv[i];
    else if (!out) out = argv[i];
    else return cli_usage_error(&cmd_convert, "unexpected argument '%s'", argv[i]);
  }
  if (!out) return cli_usage_error(&cmd_convert, "need HF_DIR and OUT.gguf");
  int mtype = -1;
  if (type) {
    if (!strcmp(type, "f32")) mtype = 0;
    else if (!strcmp(type, "f16")) mtype = 1;
    else if (!strcmp(type, "bf16")) mtype = 30;
    else return cli_usage_error(&cmd_convert, "--type '%s': choose f32, f16 or bf16", type);
  }
  struct stat st;
  if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) return cli_error("convert", "%s: not a directory (expected a Hugging Face checkpoint directory)", dir);

  hf_config c;
  shards s = { 0 };
  plan p = { 0 };
  vocab v = { 0 };
  qmoe_gguf_writer *w = NULL;
  float *tmp = NULL;
  unsigned char *buf = NULL;
  int rc = 1;
  if (read_config(dir, &c)) goto done;
  if (mtype < 0) {
    if (c.dtype < 0) {
      cli_error("convert", "%s/config.json gives no dtype (bfloat16, float16 or float32): choose one with --type", dir);
      goto done;
    }
    mtype = c.dtype;
  }
  /* Weights first: their shapes confirm config.json's sizes before the vocabulary is allocated. */
  if (open_weights(dir, &s)) goto done;
  if (build_plan(&c, &s, mtype, &p)) goto done;
  if (read_tokenizer(dir, &c, &v)) goto done;

  w = qmoe_gguf_writer_new();
  /* Never write over an input: the writer refuses an output that is one of these (through links too). */
  {
    char path[4096];
    const char *inputs[] = { "config.json", "tokenizer.json", "tokenizer_config.json", "model.safetensors.index.json",
                             "chat_template.jinja" };
    for (size_t i = 0; i < sizeof inputs / sizeof inputs[0]; i++) {
      snprintf(path, sizeof path, "%s/%s", dir, inputs[i]);
      if (stat(path, &st) == 0) qmoe_gguf_writer_add_input(w, path);
    }
    for (int i = 0; i < s.n; i++) qmoe_gguf_writer_add_input(w, qmoe_safetensors_path(s.f[i]));
  }
  const char *slash = dir + strlen(dir);
  while (slash > dir && slash[-1] == '/') slash--;
  const char *base = slash;
  while (base > dir && base[-1] != '/') base--;
  static const char arch[] = "qwen3moe";
  qmoe_gguf_writer_set_str(w, "general.architecture", arch, 8);
  qmoe_gguf_writer_set_str(w, "general.type", "model", 5);
  qmoe_gguf_writer_set_str(w, "general.name", base, (uint64_t)(slash - base));
  struct { const char *key; int64_t v; } u32s[] = {
    { "block_count", c.layers }, { "context_length", c.ctx }, { "embedding_length", c.hidden },
    { "feed_forward_length", c.ff }, { "attention.head_count", c.heads }, { "attention.head_count_kv", c.kv_heads },
    { "attention.key_length", c.head_dim }, { "attention.value_length", c.head_dim }, { "expert_count", c.experts },
    { "expert_used_count", c.used }, { "expert_feed_forward_length", c.moe_ff } };
  char key[128];
  for (size_t i = 0; i < sizeof u32s / sizeof u32s[0]; i++) {
    snprintf(key, sizeof key, "%s.%s", arch, u32s[i].key);
    qmoe_gguf_writer_set_u32(w, key, (uint32_t)u32s[i].v);
  }
  qmoe_gguf_writer_set_f32(w, "qwen3moe.rope.freq_base", (float)c.theta);
  qmoe_gguf_writer_set_f32(w, "qwen3moe.attention.layer_norm_rms_epsilon", (float)c.eps);
  qmoe_gguf_writer_set_u32(w, "general.file_type", mtype == 0 ? 0 : mtype == 1 ? 1 : 32); /* llama_ftype ALL_F32, MOSTLY_F16/BF16 */
  qmoe_gguf_writer_set_u32(w, "general.quantization_version", 2);
  qmoe_gguf_writer_set_str(w, "tokenizer.ggml.model", "gpt2", 4);
  qmoe_gguf_writer_set_str(w, "tokenizer.ggml.pre", "qwen2", 5);
  if (qmoe_gguf_writer_set_str_array(w, "tokenizer.ggml.tokens", (const char *const *)v.tokens, (uint64_t)v.n) ||
      qmoe_gguf_writer_set_array(w, "tokenizer.ggml.token_type", QMOE_GGUF_I32, v.types, (uint64_t)v.n) ||
      qmoe_gguf_writer_set_str_array(w, "tokenizer.ggml.merges", (const char *const *)v.merges, (uint64_t)v.n_merges)) {
    cli_error("convert", "%s", qmoe_last_error());
    goto done;
  }
  qmoe_gguf_writer_set_u32(w, "tokenizer.ggml.eos_token_id", (uint32_t)v.eos);
  if (v.pad >= 0) qmoe_gguf_writer_set_u32(w, "tokenizer.ggml.padding_token_id", (uint32_t)v.pad);
  if (v.bos >= 0) qmoe_gguf_writer_set_u32(w, "tokenizer.ggml.bos_token_id", (uint32_t)v.bos);
  if (v.add_bos >= 0) qmoe_gguf_writer_set_bool(w, "tokenizer.ggml.add_bos_token", v.add_bos);
  if (v.chat_template) qmoe_gguf_writer_set_str(w, "tokenizer.chat_template", v.chat_template, strlen(v.chat_template));

  uint64_t total = 0;
  for (int i = 0; i < p.n; i++) {
    if (qmoe_gguf_writer_add_tensor(w, p.t[i].name, p.t[i].type, p.t[i].n_dims, p.t[i].ne, NULL) != 0) {
      cli_error("convert", "%s", qmoe_last_error());
      goto done;
    }
    for (int k = 0; k < p.t[i].n_src; k++) total += p.t[i].src[k]->nbytes;
  }
  tmp = malloc(sizeof(float) * CHUNK);
  buf = malloc(4 * (size_t)CHUNK);
  if (!tmp || !buf) {
    cli_error("convert", "out of memory");
    goto done;
  }
  if (qmoe_gguf_writer_begin(w, out) != 0) {
    cli_error("convert", "%s", qmoe_last_error());
    goto done;
  }
  cli_progress prog;
  cli_progress_start(&prog, "convert", total);
  uint64_t done_bytes = 0;
  int osz[31] = { [0] = 4, [1] = 2, [30] = 2 };
  for (int i = 0; i < p.n; i++) {
    const out_tensor *o = &p.t[i];
    char label[128];
    snprintf(label, sizeof label, "%d/%d %s", i + 1, p.n, o->name);
    for (int k = 0; k < o->n_src; k++) {
      const qmoe_st_tensor *src = o->src[k];
      for (int64_t e0 = 0; e0 < src->n_elements; e0 += CHUNK) {
        int64_t n = src->n_elements - e0 < CHUNK ? src->n_elements - e0 : CHUNK;
        if (convert_chunk(o, src, e0, n, tmp, buf)) goto done;
        if (qmoe_gguf_writer_append(w, buf, (uint64_t)n * (uint64_t)osz[o->type]) != 0) {
          cli_error("convert", "%s", qmoe_last_error());
          goto done;
        }
        done_bytes += (uint64_t)n * (src->dtype == QMOE_ST_F32 ? 4u : 2u);
        cli_progress_update(&prog, done_bytes, label);
      }
    }
  }
  if (qmoe_gguf_writer_finish(w) != 0) {
    cli_error("convert", "%s", qmoe_last_error());
    goto done;
  }
  cli_progress_end(&prog);
  fprintf(stderr, "qmoe convert: wrote %s: %d tensors, %lld layers, %lld experts (top-%lld), vocabulary %lld\n", out, p.n,
          (long long)c.layers, (long long)c.experts, (long long)c.used, (long long)v.n);
  rc = 0;
done:
  qmoe_gguf_writer_free(w); /* removes the temp file if the output was not completed */
  for (int i = 0; i < p.n; i++) free(p.t[i].src);
  free(p.t);
  shards_free(&s);
  vocab_free(&v);
  free(tmp);
  free(buf);
  return rc;
}

const qmoe_command cmd_convert = { "convert", "convert a Qwen3-MoE Hugging Face checkpoint (safetensors) to GGUF", usage, run };
