/* test_quant_vectors.c: the generated C decoders reproduce every contract test vector bit for bit
 * (vectors from gguf-py, via generated/tests/quant_vectors.h), and the qtype table answers lookups. */
#include <stdint.h>
#include "../harness.h"
#include "qmoe.h"
#include "../../generated/tests/quant_vectors.h"

static uint32_t bits_of(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }

static void test_vectors_decode_bit_exact(void) {
  REQUIRE(QMOE_QUANT_VECTOR_COUNT > 0, "no test vectors were generated");
  for (int v = 0; v < QMOE_QUANT_VECTOR_COUNT; v++) {
    const qmoe_quant_vector *tv = &qmoe_quant_vectors[v];
    const qmoe_qtype_info *qt = qmoe_qtype_by_id(tv->ggml_type);
    REQUIRE(qt, "%s: qmoe_qtype_by_id(%d) failed: %s", tv->qtype, tv->ggml_type, qmoe_last_error());
    CHECK(strcmp(qt->name, tv->qtype) == 0, "type %d is named %s in the table but %s in the vectors", tv->ggml_type, qt->name, tv->qtype);
    int nb = tv->nbytes / qt->block_bytes;
    REQUIRE(nb * qt->block_bytes == tv->nbytes && nb * qt->block_elements == tv->nvalues,
            "%s vector %d: %d bytes / %d values do not fit blocks of %d bytes / %d elements", tv->qtype, tv->index,
            tv->nbytes, tv->nvalues, qt->block_bytes, qt->block_elements);
    float *y = malloc(sizeof(float) * (size_t)tv->nvalues);
    REQUIRE(y, "out of memory");
    int rc = qt->dequant_row(tv->bytes, y, tv->nvalues);
    CHECK(rc == 0, "%s dequant_row: %d %s", tv->qtype, rc, qmoe_last_error());
    for (int i = 0; i < tv->nvalues && rc == 0; i++) {
      if (bits_of(y[i]) != tv->bits[i]) {
        float want;
        memcpy(&want, &tv->bits[i], 4);
        t_fail(__FILE__, __LINE__, "%s test_vectors[%d] element %d: decoded %.9g (0x%08x), contract says %.9g (0x%08x)",
               tv->qtype, tv->index, i, (double)y[i], bits_of(y[i]), (double)want, tv->bits[i]);
        break;
      }
    }
    free(y);
  }
}

static void test_every_qtype_has_vectors(void) {
  for (size_t i = 0; i < qmoe_qtype_count(); i++) {
    const qmoe_qtype_info *qt = qmoe_qtype_at(i);
    int n = 0;
    for (int v = 0; v < QMOE_QUANT_VECTOR_COUNT; v++) n += qmoe_quant_vectors[v].ggml_type == qt->ggml_type;
    CHECK(n >= 2, "%s has %d test vectors; the contract should list at least 2 blocks", qt->name, n);
  }
  CHECK(qmoe_qtype_at(qmoe_qtype_count()) == NULL, "qmoe_qtype_at(count) is not NULL");
}

static void test_lookup(void) {
  const qmoe_qtype_info *a = qmoe_qtype_by_name("q6_k"), *b = qmoe_qtype_by_name("Q6_K"), *c = qmoe_qtype_by_name("q6k");
  REQUIRE(a && a == b && a == c, "q6_k / Q6_K / q6k do not all find the same entry");
  CHECK(a->ggml_type == 14 && a->block_elements == 256 && a->block_bytes == 210, "q6_k entry: type %d, %d elements, %d bytes",
        a->ggml_type, a->block_elements, a->block_bytes);
  CHECK(qmoe_qtype_by_id(14) == a, "by_id(14) is not q6_k");
  CHECK(qmoe_qtype_by_name("q6_kk") == NULL, "q6_kk found");
  CHECK(strstr(qmoe_last_error(), "q6_kk") != NULL, "error does not name the unknown qtype: %s", qmoe_last_error());
  CHECK(qmoe_qtype_by_id(9999) == NULL && strstr(qmoe_last_error(), "9999"), "unknown id: %s", qmoe_last_error());
  CHECK(qmoe_qtype_row_bytes(a, 512) == 420, "row_bytes(q6_k, 512) = %lld", (long long)qmoe_qtype_row_bytes(a, 512));
  CHECK(qmoe_qtype_row_bytes(a, 100) == -1, "row_bytes(q6_k, 100) should be -1");
  for (size_t i = 0; i < qmoe_qtype_count(); i++) {
    const qmoe_qtype_info *qt = qmoe_qtype_at(i);
    CHECK(qmoe_qtype_by_name(qt->name) == qt && qmoe_qtype_by_id(qt->ggml_type) == qt, "%s: lookups disagree", qt->name);
    CHECK(qt->dequant_row && qt->quantize_row, "%s: missing functions", qt->name);
    CHECK(!(qt->acc_mask & QMOE_ACC_BIT_F32) == !qt->dot_f32 && !(qt->acc_mask & QMOE_ACC_BIT_F64) == !qt->dot_f64,
          "%s: acc_mask 0x%x does not match the dot functions", qt->name, qt->acc_mask);
  }
}

int main(void) {
  RUN(test_vectors_decode_bit_exact);
  RUN(test_every_qtype_has_vectors);
  RUN(test_lookup);
  return T_DONE();
}
