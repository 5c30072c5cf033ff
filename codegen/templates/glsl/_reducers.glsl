shared ${T} red[${WG}];
${T} wg_sum(${T} v) {
  v = subgroupAdd(v);
  if (subgroupElect()) red[gl_SubgroupID] = v;
  barrier();
  ${T} s = red[0];
  for (uint i = 1u; i < gl_NumSubgroups; i++) s += red[i];
  barrier();
  return s;
}
${T} wg_max(${T} v) {
  v = subgroupMax(v);
  if (subgroupElect()) red[gl_SubgroupID] = v;
  barrier();
  ${T} s = red[0];
  for (uint i = 1u; i < gl_NumSubgroups; i++) s = max(s, red[i]);
  barrier();
  return s;
}
