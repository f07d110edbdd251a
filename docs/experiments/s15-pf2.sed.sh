sed -i '0,/      next.advance(p, walk);/s//      next.advance(p, walk);\n      if (next.valid(p, walk)) next.advance(p, walk);/' src/sm90/decode_producers.cuh
grep -n "next.advance" src/sm90/decode_producers.cuh
true
