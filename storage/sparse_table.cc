#include "storage/sparse_table.h"

#include <sys/mman.h>

#include <bit>
#include <cstring>
#include <cstdlib>
#include <new>

#include "storage/initializer.h"

namespace ember::storage {
namespace {

constexpr uint32_t kFirstSlabShift = 6;  // 64 rows
// Slabs grow to 4K rows, then stay there: a bigger last slab over-allocates
// up to its size per shard (with 64K-row slabs, a 200M-key run held 2x its
// rows: 512 shards x ~66K rows each had each just allocated a 64K-row slab).
constexpr uint32_t kMaxDoublings = 6;
// Rows held by slabs 0..kMaxDoublings together: 64 * (2^(kMaxDoublings+1) - 1).
constexpr uint32_t kGrowthRows = (1u << kFirstSlabShift) * ((1u << (kMaxDoublings + 1)) - 1);
constexpr uint32_t kBigSlabShift = kFirstSlabShift + kMaxDoublings;

// Slab number and offset of a slot.
inline void Locate(uint32_t slot, uint32_t* slab, uint32_t* offset) {
  if (slot < kGrowthRows) {
    // Slab k starts at 64 * (2^k - 1).
    const uint32_t q = (slot >> kFirstSlabShift) + 1;
    const uint32_t k = 31 - std::countl_zero(q);
    *slab = k;
    *offset = slot - ((1u << kFirstSlabShift) * ((1u << k) - 1));
  } else {
    const uint32_t rest = slot - kGrowthRows;
    *slab = kMaxDoublings + 1 + (rest >> kBigSlabShift);
    *offset = rest & ((1u << kBigSlabShift) - 1);
  }
}

inline size_t SlabRows(uint32_t slab) {
  return size_t{1} << (kFirstSlabShift + std::min(slab, kMaxDoublings));
}

}  // namespace

namespace internal {

uint8_t* AllocatePopulated(size_t bytes) {
  constexpr size_t kPage = 4096;
  const size_t rounded = (bytes + kPage - 1) & ~(kPage - 1);
  if (rounded < 16 * kPage) {
    void* p = std::malloc(bytes);
    if (p == nullptr) throw std::bad_alloc();
    return static_cast<uint8_t*>(p);
  }
  void* p = std::aligned_alloc(kPage, rounded);
  if (p == nullptr) throw std::bad_alloc();
#ifdef MADV_POPULATE_WRITE
  (void)madvise(p, rounded, MADV_POPULATE_WRITE);
#endif
  return static_cast<uint8_t*>(p);
}

void FreePopulated(uint8_t* p) { std::free(p); }

}  // namespace internal

TableSpec::TableSpec(const proto::TableConfig& config)
    : config_(config), rule_(config.optimizer()), dim_(config.dim()) {
  state_floats_ = rule_.StateFloats(dim_);
  row_bytes_ = (sizeof(RowMeta) + (dim_ + state_floats_) * sizeof(float) + 7) & ~size_t{7};
}

void TableSpec::InitRow(uint64_t key, uint32_t generation, uint8_t* row) const {
  *Meta(row) = RowMeta{.key = key, .count = 0, .generation = generation, .last_push_seq = 0,
                       .flags = static_cast<uint16_t>(kRowLive | kRowDirty), .last_day = 0, .reserved = 0};
  if (row_bytes_ > sizeof(RowMeta) + (dim_ + state_floats_) * sizeof(float)) {
    // Padding: zero, so that files holding rows are deterministic.
    std::memset(State(row) + state_floats_, 0, row_bytes_ - sizeof(RowMeta) - (dim_ + state_floats_) * sizeof(float));
  }
  float* w = Weights(row);
  InitWeights(config_.initializer(), key, generation, w, dim_);
  rule_.InitState(w, State(row), dim_);
}

void ShardTable::FreeSlab::operator()(uint8_t* p) const { internal::FreePopulated(p); }

ShardTable::ShardTable(const TableSpec* spec) : spec_(spec) {}

uint8_t* ShardTable::RowAt(uint32_t slot) {
  uint32_t slab, offset;
  Locate(slot, &slab, &offset);
  return slabs_[slab].get() + size_t{offset} * spec_->row_bytes();
}

uint8_t* ShardTable::Find(uint64_t key) {
  auto it = index_.find(key);
  return it == index_.end() ? nullptr : RowAt(it->second);
}

uint8_t* ShardTable::FindOrCreate(uint64_t key, uint32_t generation, bool* created) {
  bool existed;
  uint8_t* row = Emplace(key, &existed);
  *created = !existed;
  if (!existed) spec_->InitRow(key, generation, row);
  return row;
}

uint8_t* ShardTable::Emplace(uint64_t key, bool* existed) {
  auto [it, inserted] = index_.try_emplace(key, 0);
  *existed = !inserted;
  if (!inserted) return RowAt(it->second);
  uint32_t slot;
  if (!free_slots_.empty()) {
    slot = free_slots_.back();
    free_slots_.pop_back();
  } else {
    slot = next_slot_++;
    uint32_t slab, offset;
    Locate(slot, &slab, &offset);
    if (slab >= slabs_.size()) {
      // Uninitialised: whoever emplaces a row writes all of it.
      slabs_.emplace_back(internal::AllocatePopulated(SlabRows(slab) * spec_->row_bytes()));
    }
  }
  it->second = slot;
  return RowAt(slot);
}

bool ShardTable::Erase(uint64_t key) {
  auto it = index_.find(key);
  if (it == index_.end()) return false;
  free_slots_.push_back(it->second);
  TableSpec::Meta(RowAt(it->second))->flags = 0;
  index_.erase(it);
  return true;
}

void ShardTable::Clear() {
  decltype(index_)().swap(index_);
  slabs_.clear();
  next_slot_ = 0;
  hand_ = 0;
  std::vector<uint32_t>().swap(free_slots_);
}

size_t ShardTable::MemoryBytes() const {
  size_t bytes = index_.capacity() * (sizeof(std::pair<uint64_t, uint32_t>) + 1);
  for (uint32_t k = 0; k < slabs_.size(); ++k) bytes += SlabRows(k) * spec_->row_bytes();
  return bytes + free_slots_.capacity() * sizeof(uint32_t);
}

}  // namespace ember::storage
