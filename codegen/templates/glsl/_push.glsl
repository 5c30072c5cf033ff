layout(push_constant) uniform PC {
  uint p[8];
  uint o[8];
  float ff[4];
  uvec2 fd[4];
  uint x[4];
} pc;
