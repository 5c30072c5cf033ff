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
