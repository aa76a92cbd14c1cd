// Frame: one raw ZeroMQ frame's bytes with shared, type-erased ownership, so
// that key and value arrays travel between a transport and user code without
// copies. A frame built from a std::vector keeps the vector alive; a received
// frame keeps the transport's message alive.
#ifndef EMBER_NET_FRAME_H_
#define EMBER_NET_FRAME_H_

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <type_traits>
#include <utility>
#include <vector>

#include "absl/types/span.h"

namespace ember::net {

class Frame {
 public:
  Frame() = default;

  // Takes ownership of `v`; the bytes are not copied.
  template <typename T>
  static Frame FromVector(std::vector<T>&& v) {
    static_assert(std::is_trivially_copyable_v<T>);
    auto owner = std::make_shared<std::vector<T>>(std::move(v));
    return Frame(owner, owner->data(), owner->size() * sizeof(T));
  }
  // Copies `size` bytes.
  static Frame Copy(const void* data, size_t size);
  // Refers to [data, data + size), kept valid by `owner` (shares its ownership).
  static Frame Borrow(std::shared_ptr<const void> owner, const void* data, size_t size) {
    return Frame(std::move(owner), data, size);
  }

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::shared_ptr<const void>& owner() const { return owner_; }

  // Number of whole T in the frame; meaningful only when size() % sizeof(T) == 0.
  template <typename T>
  size_t count() const {
    return size_ / sizeof(T);
  }
  // The bytes as an array of T. Requires size() % sizeof(T) == 0 (validate
  // first) and aligned data; Align<T>() makes the data aligned.
  template <typename T>
  absl::Span<const T> As() const {
    return absl::Span<const T>(reinterpret_cast<const T*>(data_), size_ / sizeof(T));
  }
  // Ensures data() is aligned for T, copying the bytes only if it is not
  // (ZeroMQ may hand small frames at any address).
  template <typename T>
  void Align() {
    if (reinterpret_cast<uintptr_t>(data_) % alignof(T) != 0) {
      std::vector<T> copy((size_ + sizeof(T) - 1) / sizeof(T));
      std::memcpy(copy.data(), data_, size_);
      const size_t n = size_;
      *this = FromVector(std::move(copy));
      size_ = n;
    }
  }

 private:
  Frame(std::shared_ptr<const void> owner, const void* data, size_t size)
      : owner_(std::move(owner)), data_(static_cast<const uint8_t*>(data)), size_(size) {}

  std::shared_ptr<const void> owner_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

inline Frame Frame::Copy(const void* data, size_t size) {
  std::vector<uint8_t> v(size);
  if (size > 0) std::memcpy(v.data(), data, size);
  return FromVector(std::move(v));
}

}  // namespace ember::net

#endif  // EMBER_NET_FRAME_H_
