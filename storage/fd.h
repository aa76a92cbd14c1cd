// An owned POSIX file descriptor, closed when it goes out of scope: the one
// wrapper for raw descriptors (checkpoint files, cutting data files).
#ifndef EMBER_STORAGE_FD_H_
#define EMBER_STORAGE_FD_H_

#include <unistd.h>

#include <utility>

namespace ember::storage {

// Owns `fd`, or nothing if it is negative (so that `Fd fd(::open(...))`
// followed by a check of get() < 0 is safe). Move-only. Not thread-safe: one
// owner at a time, as with the descriptor itself.
class Fd {
 public:
  explicit Fd(int fd = -1) noexcept : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  Fd(Fd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  Fd& operator=(Fd&& other) noexcept {
    if (this != &other) {
      if (fd_ >= 0) ::close(fd_);
      fd_ = std::exchange(other.fd_, -1);
    }
    return *this;
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;

  // The descriptor, still owned; -1 if none.
  int get() const { return fd_; }
  // Closes now and returns close()'s result: 0, or -1 with errno set. Unlike
  // the destructor it reports the error close() may carry (a deferred write
  // error). Owns nothing afterwards; 0 if it owned nothing.
  int Close() {
    if (fd_ < 0) return 0;
    return ::close(std::exchange(fd_, -1));
  }

 private:
  int fd_;
};

}  // namespace ember::storage

#endif  // EMBER_STORAGE_FD_H_
