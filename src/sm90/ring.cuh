// The ring-buffer convention of both sm90 kernels (the wide kernel's two KV stages, the small
// kernel's FP8 stages and its 25 sub-tile slots): use n = 0, 1, 2, ... of a ring of kSlots
// entries lands in slot n % kSlots; consumers wait for the slot's `full` barrier with the
// lap's phase (n / kSlots) & 1, the producer for its `empty` barrier with the other parity
// (the first lap finds every slot free, and the producers skip that wait).
#pragma once

#include <cstdint>

namespace flashmla::sm90 {

template <int kSlots>
struct Ring {
  __device__ static int slot(int n) { return n % kSlots; }
  __device__ static uint32_t phase(int n) { return (n / kSlots) & 1; }
  __device__ static uint32_t empty_phase(int n) { return ((n / kSlots) + 1) & 1; }
};

// The same walk kept incrementally, for a ring whose size is not a power of two (the small
// kernel's 25 sub-tile slots), where n % kSlots would cost a division at every use.
template <int kSlots>
struct RingCursor {
  int slot = 0;
  uint32_t phase = 0;
  __device__ void advance() {
    if (++slot == kSlots) {
      slot = 0;
      phase ^= 1;
    }
  }
};

}  // namespace flashmla::sm90
