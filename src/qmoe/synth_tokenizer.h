/* synth_tokenizer.h: a minimal synthetic byte-level BPE vocabulary for `qmoe make-model` (stand-in until
 * the tokenizer module's qmoe_tokenizer_write_synthetic is available on this branch). */
#ifndef QMOE_SYNTH_TOKENIZER_H
#define QMOE_SYNTH_TOKENIZER_H
#include <stdint.h>
#include "qmoe.h"

/* Sets tokenizer.ggml.{model,pre,tokens,token_type,merges,bos/eos/padding_token_id,add_bos_token} and
 * tokenizer.chat_template (ChatML): 256 byte tokens (GPT-2's byte-to-unicode spelling), seeded merges of
 * earlier tokens, then <|endoftext|>, <|im_start|>, <|im_end|>; n_vocab tokens in all (>= 259). 0 or QMOE_E*. */
int cli_synth_tokenizer(qmoe_gguf_writer *w, int64_t n_vocab, uint64_t seed);

#endif
