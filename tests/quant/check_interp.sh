# check_interp.sh: generated C decoders vs the reference interpreter on fresh random blocks of every qtype.
exec build/qmoe-lua tests/quant/interp_vs_c.lua "${QMOE_BIN:-build}"
