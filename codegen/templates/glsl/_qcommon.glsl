const uint BE = ${BE}u, BB = ${BB}u, G = ${G}u, IE = ${IE}u, IB = ${IB}u, U = ${U}u, SW = ${SW}u;
const uint KS = ${KS}u, R = ${R}u, WG = ${WG}u, NM = ${NM}u, XS = IE + 4u;
shared uint sw[NM * WG * SW];   // weight slots: an item's bytes, starting (its byte offset & 15) into the slot
shared float xs[KS * XS];       // activations of the tile's KS items; rows 16-byte aligned, 4 banks apart
shared ${T} part[NM * WG];        // per-invocation partial sums, reduced per row in a fixed order

void put_slot(uint s, uint u, uvec4 v) {
  uint at = s * SW + u * 4u;
  sw[at] = v.x; sw[at + 1u] = v.y; sw[at + 2u] = v.z; sw[at + 3u] = v.w;
}
