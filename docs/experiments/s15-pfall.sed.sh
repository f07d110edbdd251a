sed -i 's/m_tile == 0 \&\& gridDim.z > 1 \&\&/m_tile == 0 \&\&/' src/sm90/decode_kernel.cuh
grep -n "warm_l2 =" -A1 src/sm90/decode_kernel.cuh
true
