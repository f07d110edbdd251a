# sed script for build_variant.sh (after s19-combpre.patch): the combine's preload at 4 chunks too
# (b <= 8-16: up to 36 partials a row, 9 a group).
set -e
sed -i "s/constexpr bool kPreload = kChunks == 16;/constexpr bool kPreload = kChunks >= 4;/" src/combine.cu
grep -q "kPreload = kChunks >= 4;" src/combine.cu
