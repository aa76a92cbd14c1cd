// Process-wide allocator settings for nodes that move large messages. Call
// once from main, before any thread starts; libraries never call it.
#ifndef EMBER_NET_MEMORY_H_
#define EMBER_NET_MEMORY_H_

namespace ember::net {

// Serves allocations below 32 MiB from the heap and stops glibc from handing
// freed heap memory back to the kernel. Message buffers (key frames, reply
// values) are then reused instead of being mapped, faulted in (~12 us per 4 KiB
// page on our VMs) and unmapped on every request. The price: a process's
// resident memory does not shrink after a peak. Measured with bench/ps_bench:
// the 10M-key pull went from 31-33M to 38-43M keys/s.
void TuneAllocatorForMessages();

}  // namespace ember::net

#endif  // EMBER_NET_MEMORY_H_
