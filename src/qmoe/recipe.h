/* recipe.h: llama.cpp's Q4_K_M recipe (which qtype each tensor of a model gets), shared by `qmoe quantize`
 * and `qmoe make-model` so the two cannot disagree. */
#ifndef QMOE_RECIPE_H
#define QMOE_RECIPE_H
#include <stdint.h>

/* "blk.N.REST" -> N and *rest = REST; -1 if the name is not a layer tensor. */
int64_t cli_layer_of(const char *name, const char **rest);
/* 1 when layer i of n gets the larger type (llama.cpp's use_more_bits). */
int cli_recipe_more_bits(int64_t i, int64_t n);
/* The GGML type the Q4_K_M recipe gives tensor NAME of N_DIMS dimensions in a model of N_LAYERS layers:
 * F32 for 1-D tensors and the MoE router (blk.N.ffn_gate_inp), Q6_K for output.weight and for
 * blk.i.{ffn_down_exps,ffn_down,attn_v} when cli_recipe_more_bits(i, n_layers), Q4_K otherwise. */
int cli_recipe_q4_k_m(const char *name, int n_dims, int64_t n_layers);

#endif
