${BANNER}/* test_parity_${BACKEND}.c: backend "${BACKEND}" against the CPU reference for every stage × qtype × accumulator
 * of contracts/stages; the test itself is parity_body.h, shared by every backend.
${LABEL} */
#define BACKEND_NAME "${BACKEND}"
#define NO_DEVICE "${NODEV}"
/* 1 when the backend runs the CPU reference itself: FALSIFY-QTYPE-DISPATCH then demands bitwise equality
 * with the reference's path for the same accumulator (metric `equal`), not just the parity thresholds. */
#define BACKEND_IS_REFERENCE ${ISREF}
#include "../../tests/parity/parity_body.h"
