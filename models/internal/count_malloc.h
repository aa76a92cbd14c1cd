// Counts heap allocations in a test binary by interposing malloc, which
// every other allocator path (operator new, Eigen's aligned_malloc) ends in on
// glibc. Include it in exactly one file of a test binary of its own, so that
// no other test runs under the interposer. Under a sanitizer (which owns
// malloc) nothing is counted: check EMBER_COUNT_MALLOC.
#ifndef EMBER_MODELS_INTERNAL_COUNT_MALLOC_H_
#define EMBER_MODELS_INTERNAL_COUNT_MALLOC_H_

#include <atomic>
#include <cstddef>
#include <cstdlib>  // glibc's features.h: __GLIBC__

#if defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer) || \
    __has_feature(memory_sanitizer)
#define EMBER_SANITIZER_MALLOC 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define EMBER_SANITIZER_MALLOC 1
#endif
#if defined(__GLIBC__) && !defined(EMBER_SANITIZER_MALLOC)
#define EMBER_COUNT_MALLOC 1
#endif

// Calls of malloc so far (0 forever without EMBER_COUNT_MALLOC).
inline std::atomic<long> g_mallocs{0};

#ifdef EMBER_COUNT_MALLOC
extern "C" void* __libc_malloc(size_t size);
extern "C" void* malloc(size_t size) {
  g_mallocs.fetch_add(1, std::memory_order_relaxed);
  return __libc_malloc(size);
}
#endif

#endif  // EMBER_MODELS_INTERNAL_COUNT_MALLOC_H_
