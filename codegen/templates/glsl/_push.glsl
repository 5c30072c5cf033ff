struct QmoeParams {
  uint p[8];
  uint o[8];
  float ff[4];
  uvec2 fd[4];
  uint x[4];
  uint grid[4];
};
layout(std430, binding = 8) readonly restrict buffer QmoeParamTable { QmoeParams qmoe_params[]; };
layout(push_constant) uniform QmoeSlot { uint i; } qmoe_slot;
#define pc qmoe_params[qmoe_slot.i]
// Specialization constant 1 (runtime/vulkan/vk.c, QMOE_VK_EMPTY): true makes the shader return at its first
// instruction, to measure what dispatches and barriers cost without the work (docs/vulkan.md). The template's
// main() is renamed qmoe_main and called from this one.
layout(constant_id = 1) const bool QMOE_EMPTY = false;
void qmoe_main();
void main() {
  if (!QMOE_EMPTY) qmoe_main();
}
#define main qmoe_main
