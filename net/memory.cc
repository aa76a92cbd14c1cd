#include "net/memory.h"

#include <malloc.h>

namespace ember::net {

void TuneAllocatorForMessages() {
  mallopt(M_MMAP_THRESHOLD, 32 << 20);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
}

}  // namespace ember::net
