#include "storage/key_filter.h"

#include "proto/keys.h"

namespace ember::storage {
namespace {

constexpr size_t kBitsPerKey = 16;
constexpr size_t kWordsPerBlock = 8;  // one cache line
constexpr int kProbes = 6;
constexpr size_t kGrowth = 4;

// Keys may be sequential (tests, benches), so remix them first.
inline uint64_t Remix(uint64_t x) { return proto::Mix64(x); }

// The block of hash h among n: multiply-shift on the high half.
inline size_t BlockOf(uint64_t h, size_t n) { return static_cast<size_t>(((h >> 32) * n) >> 32); }

}  // namespace

KeyFilter::KeyFilter(size_t first_capacity)
    : first_capacity_(first_capacity < 1 ? 1 : first_capacity) {}

void KeyFilter::Add(uint64_t key) {
  if (layers_.empty() || layers_.back().count >= layers_.back().capacity) {
    Layer l;
    l.capacity = layers_.empty() ? first_capacity_ : layers_.back().capacity * kGrowth;
    l.blocks = (l.capacity * kBitsPerKey + 511) / 512;
    l.words.assign(l.blocks * kWordsPerBlock, 0);
    layers_.push_back(std::move(l));
  }
  Layer& l = layers_.back();
  const uint64_t h = Remix(key);
  uint64_t* block = l.words.data() + BlockOf(h, l.blocks) * kWordsPerBlock;
  // Probe bits from the low 54 bits of a second mix, 9 bits each.
  uint64_t bits = Remix(h);
  for (int i = 0; i < kProbes; ++i, bits >>= 9)
    block[(bits >> 6) & 7] |= uint64_t{1} << (bits & 63);
  ++l.count;
}

bool KeyFilter::Probe(const Layer& l, uint64_t h) {
  const uint64_t* block = l.words.data() + BlockOf(h, l.blocks) * kWordsPerBlock;
  uint64_t bits = Remix(h);
  for (int i = 0; i < kProbes; ++i, bits >>= 9) {
    if (!(block[(bits >> 6) & 7] & (uint64_t{1} << (bits & 63)))) return false;
  }
  return true;
}

bool KeyFilter::MayContain(uint64_t key) const {
  const uint64_t h = Remix(key);
  for (const Layer& l : layers_) {
    if (Probe(l, h)) return true;
  }
  return false;
}

size_t KeyFilter::MemoryBytes() const {
  size_t b = 0;
  for (const Layer& l : layers_) b += l.words.size() * sizeof(uint64_t);
  return b;
}

}  // namespace ember::storage
