/* cmd_run.c: `qmoe run`: loads a qwen3moe GGUF on a backend, feeds the prompt through the KV cache once and
 * generates tokens (greedy on the device, or seeded sampling from downloaded logits), streaming them and
 * ending with prefill and decode tokens/s. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "backend.h"
#include "cmd.h"

static const char usage[] =
  "usage: qmoe run [-m FILE] [--backend cpu|vulkan|cuda] (-p TEXT | --tokens IDS) [-n N] [--acc f32|f64|q8]\n"
  "                [--temp T] [--top-k K] [--top-p P] [--seed S] [--chat] [--ctx N] [--ignore-eos] [--json]\n"
  "Runs a qwen3moe model: the prompt goes through the KV cache once (prefill), then N tokens are generated\n"
  "one at a time (decode) and printed as they come; the last lines on stderr give prefill and decode\n"
  "tokens/s. Greedy by default (the argmax is taken on the device: one download per token).\n"
  "  -m FILE          the model (default build/models/tiny.gguf)\n"
  "  --backend B      cpu (default), vulkan or cuda\n"
  "  -p TEXT          the prompt as text (needs the tokenizer in the file)\n"
  "  --tokens IDS     the prompt as token ids, comma-separated: 1,2,3\n"
  "  -n N             tokens to generate (default 32)\n"
  "  --acc A          accumulator variants of the stages: f32 (default), f64, or q8 (8-bit activations for\n"
  "                   the row stages of integer-quantized weights, every other stage f32; docs/q8.md)\n"
  "  --temp T         sampling temperature (default 0: greedy)\n"
  "  --top-k K        sample among the K most likely tokens (default 0: all)\n"
  "  --top-p P        ... and the smallest set with probability mass P (default 1)\n"
  "  --seed S         sampling seed (default 1)\n"
  "  --chat           wrap the prompt in the file's chat template (needs the tokenizer)\n"
  "  --ctx N          KV cache size in tokens (default: the model's context, at most 4096)\n"
  "  --ignore-eos     keep generating after the end-of-sequence token\n"
  "  --json           no streaming; one JSON object at the end: prompt_ids, ids, text,\n"
  "                   prefill_tokens_per_s, decode_tokens_per_s\n"
  "example: qmoe run -m build/models/tiny.gguf --tokens 1,2,3 -n 16 --backend vulkan\n";

enum { O_M, O_BACKEND, O_P, O_TOKENS, O_N, O_ACC, O_TEMP, O_TOPK, O_TOPP, O_SEED, O_CHAT, O_CTX, O_NOEOS, O_JSON, O_N_ };

static int parse_double(const char *s, double lo, double hi, double *out) {
  char *end;
  double v = strtod(s, &end);
  if (!*s || *end || !isfinite(v) || v < lo || v > hi) return -1;
  *out = v;
  return 0;
}

/* Streams one generated token: its text (complete UTF-8 only; control tokens left out) when there is a
 * tokenizer, else its id. */
static void emit(qmoe_detok *d, int32_t id, int first) {
  if (d) {
    const char *s;
    size_t n;
    if (qmoe_tokenizer_token_type(d->t, id) == 3) return; /* control tokens (<|im_end|>) are not text */
    if (qmoe_detok_push(d, id, &s, &n) == 0) fwrite(s, 1, n, stdout);
  } else {
    printf(first ? "%ld" : " %ld", (long)id);
  }
  fflush(stdout);
}

static void json_ids(const int32_t *v, size_t n) {
  putchar('[');
  for (size_t i = 0; i < n; i++) printf("%s%ld", i ? "," : "", (long)v[i]);
  putchar(']');
}

static void json_rate(double tokens, double secs) {
  if (tokens > 0 && secs > 0) printf("%.6g", tokens / secs);
  else printf("null");
}

static int run(int argc, char **argv) {
  cli_opt o[O_N_] = {
    [O_M] = { "-m", "--model", 1 }, [O_BACKEND] = { "--backend", NULL, 1 }, [O_P] = { "-p", "--prompt", 1 },
    [O_TOKENS] = { "--tokens", NULL, 1 }, [O_N] = { "-n", NULL, 1 }, [O_ACC] = { "--acc", NULL, 1 },
    [O_TEMP] = { "--temp", NULL, 1 }, [O_TOPK] = { "--top-k", NULL, 1 }, [O_TOPP] = { "--top-p", NULL, 1 },
    [O_SEED] = { "--seed", NULL, 1 }, [O_CHAT] = { "--chat", NULL, 0 }, [O_CTX] = { "--ctx", NULL, 1 },
    [O_NOEOS] = { "--ignore-eos", NULL, 0 }, [O_JSON] = { "--json", NULL, 0 },
  };
  int rc = cli_parse_opts(&cmd_run, argc, argv, o, O_N_);
  if (rc) return rc;
  const char *path = o[O_M].value ? o[O_M].value : QMOE_DEFAULT_MODEL;
  const char *backend = o[O_BACKEND].value ? o[O_BACKEND].value : "cpu";
  int json = o[O_JSON].value != NULL, acc;
  int64_t n_gen = 32, n_ctx = 0, top_k = 0, seed = 1;
  qmoe_sampler smp = { 0, 0, 1 };
  if (!o[O_P].value == !o[O_TOKENS].value) return cli_usage_error(&cmd_run, "give the prompt as -p TEXT or --tokens IDS");
  if (cli_parse_acc("run", o[O_ACC].value, &acc)) return 1;
  if (o[O_N].value && cli_parse_count("run", "-n", o[O_N].value, 1, 1 << 24, &n_gen)) return 1;
  if (o[O_CTX].value && cli_parse_count("run", "--ctx", o[O_CTX].value, 1, 1 << 24, &n_ctx)) return 1;
  if (o[O_TOPK].value && cli_parse_count("run", "--top-k", o[O_TOPK].value, 0, INT32_MAX, &top_k)) return 1;
  if (o[O_SEED].value && cli_parse_count("run", "--seed", o[O_SEED].value, 0, INT64_MAX, &seed)) return 1;
  if (o[O_TEMP].value && parse_double(o[O_TEMP].value, 0, 1e6, &smp.temperature))
    return cli_error("run", "--temp '%s': expected a number >= 0", o[O_TEMP].value);
  if (o[O_TOPP].value && (parse_double(o[O_TOPP].value, 0, 1, &smp.top_p) || smp.top_p <= 0))
    return cli_error("run", "--top-p '%s': expected a number in (0, 1]", o[O_TOPP].value);
  smp.top_k = top_k;
  int32_t *prompt = NULL, *gen = NULL;
  size_t n_prompt = 0;
  if (cli_prompt_ids("run", path, o[O_P].value, o[O_TOKENS].value, o[O_CHAT].value != NULL, &prompt, &n_prompt))
    return 1;
  /* Text out when the file has a tokenizer (ids otherwise). */
  char tok_err[1024];
  qmoe_tokenizer *tok = cli_tokenizer(path, tok_err, sizeof tok_err);
  if (!tok && tok_err[0]) fprintf(stderr, "qmoe run: warning: %s; printing token ids\n", tok_err);
  qmoe_detok detok;
  if (tok) qmoe_detok_init(&detok, tok);
  char *text = NULL;
  size_t text_len = 0;
  qmoe_backend *be = NULL;
  qmoe_model *m = NULL;
  float *logits = NULL;
  rc = 1;
  if (cli_open_model("run", path, backend, n_ctx, (int64_t)n_prompt + n_gen - 1, acc, json, &be, &m)) goto done;
  const qmoe_model_config *c = qmoe_model_config_of(m);
  for (size_t i = 0; i < n_prompt; i++)
    if (prompt[i] < 0 || prompt[i] >= c->n_vocab) {
      cli_error("run", "prompt token %ld (position %zu) is outside the vocabulary of %s (0..%lld)", (long)prompt[i], i,
                path, (long long)c->n_vocab - 1);
      goto done;
    }
  uint32_t eos_u = 0;
  int have_eos = 0;
  if (!o[O_NOEOS].value && tok && qmoe_tokenizer_eos(tok) >= 0) have_eos = 1, eos_u = (uint32_t)qmoe_tokenizer_eos(tok);
  else if (!o[O_NOEOS].value && qmoe_gguf_find_key(qmoe_model_gguf(m), "tokenizer.ggml.eos_token_id") >= 0)
    have_eos = qmoe_gguf_get_u32(qmoe_model_gguf(m), "tokenizer.ggml.eos_token_id", &eos_u) == 0;
  int greedy = smp.temperature == 0;
  uint64_t rng = (uint64_t)seed * 0x9E3779B97F4A7C15ull + 1;
  gen = malloc((size_t)n_gen * sizeof *gen);
  logits = greedy ? NULL : malloc((size_t)c->n_vocab * sizeof *logits);
  if (!gen || (!greedy && !logits)) {
    cli_error("run", "out of memory");
    goto done;
  }
  /* Prefill: every prompt position once, through the KV cache; only the last one computes the logits. */
  double t0 = cli_now();
  int32_t next = 0;
  if (qmoe_model_prefill(m, prompt, (int64_t)n_prompt, 0, greedy ? &next : NULL, greedy ? NULL : logits)) {
    cli_error("run", "prefill: %s", qmoe_last_error());
    goto done;
  }
  if (!greedy && qmoe_sample(&smp, logits, c->n_vocab, &rng, &next)) {
    cli_error("run", "%s", qmoe_last_error());
    goto done;
  }
  double t1 = cli_now();
  size_t n_out = 0;
  gen[n_out++] = next;
  if (!json) emit(tok ? &detok : NULL, next, 1);
  while ((int64_t)n_out < n_gen && !(have_eos && (uint32_t)next == eos_u)) {
    int64_t pos = (int64_t)n_prompt + (int64_t)n_out - 1;
    if (qmoe_model_step(m, next, pos, greedy ? &next : NULL, greedy ? NULL : logits) ||
        (!greedy && qmoe_sample(&smp, logits, c->n_vocab, &rng, &next))) {
      cli_error("run", "decode at position %lld: %s", (long long)pos, qmoe_last_error());
      goto done;
    }
    gen[n_out++] = next;
    if (!json) emit(tok ? &detok : NULL, next, 0);
  }
  double t2 = cli_now();
  if (json) {
    printf("{\"prompt_ids\":");
    json_ids(prompt, n_prompt);
    printf(",\"ids\":");
    json_ids(gen, n_out);
    printf(",\"text\":");
    if (tok && qmoe_tokenizer_decode(tok, gen, n_out, 0, &text, &text_len)) {
      cli_error("run", "%s", qmoe_last_error());
      goto done;
    }
    cli_json_string(stdout, text ? text : "", text_len);
    printf(",\"prefill_tokens_per_s\":");
    json_rate((double)n_prompt, t1 - t0);
    printf(",\"decode_tokens_per_s\":");
    json_rate((double)n_out - 1, t2 - t1);
    printf("}\n");
  } else {
    if (tok) {
      const char *rest;
      size_t rest_len;
      qmoe_detok_flush(&detok, &rest, &rest_len);
      fwrite(rest, 1, rest_len, stdout);
    }
    printf("\n");
    fflush(stdout); /* the text before the rates, also when both streams go to one file */
    fprintf(stderr, "qmoe run: prefill %zu tokens in %.3f s (%.2f tokens/s); decode %zu tokens in %.3f s "
            "(%.2f tokens/s); %s, acc %s\n", n_prompt, t1 - t0, n_prompt / (t1 - t0), n_out - 1, t2 - t1,
            n_out > 1 ? (double)(n_out - 1) / (t2 - t1) : 0.0, backend, qmoe_acc_name(acc));
  }
  rc = 0;
done:
  if (tok) qmoe_detok_free(&detok), qmoe_tokenizer_free(tok);
  free(text);
  free(prompt);
  free(gen);
  free(logits);
  cli_close_model(be, m);
  return rc;
}

const qmoe_command cmd_run = { "run", "generates tokens with a qwen3moe model on cpu, vulkan or cuda", usage, run };
