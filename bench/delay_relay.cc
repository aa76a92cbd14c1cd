// delay_relay: a TCP relay that holds every chunk of bytes for a fixed delay,
// for bench/net_bench on a kernel without the netem qdisc. Also an echo
// server and a round-trip probe, to show the delay a relay adds.
//
//   delay_relay --listen=A:P --target=B:Q --delay_ms=D   relay (the default mode)
//   delay_relay --mode=echo --listen=A:P                  echoes every byte back
//   delay_relay --mode=probe --target=A:P --count=N       N round trips of one
//                                                         byte; prints figures
//
// Relay: each accepted connection gets its own connection to --target, and
// bytes flow both ways. A chunk read from one side at time t is written to the
// other side at t + D (a queue of (deadline, bytes) per direction), so a
// request and its reply each gain D and a round trip 2D. No bandwidth limit is
// added: a direction reads as fast as its source sends, up to
// --max_queued_bytes held at once (then it stops reading until the queue
// drains, which TCP turns into back-pressure on the sender). A half-close (FIN)
// travels in order after the bytes before it, also delayed; an error (reset,
// failed connect) resets both sides at once. TCP_NODELAY on every socket, so
// the relay adds no coalescing of its own.
//
// One thread, epoll (level-triggered) and one timerfd armed 50 us after the
// earliest deadline (chunks of a burst leave together, in one writev), so a
// chunk is held D to D + about 0.1 ms, not epoll's millisecond steps. It runs
// until SIGTERM or SIGINT.
#include <arpa/inet.h>
#include <fcntl.h>
#include <malloc.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <memory>
#include <queue>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "gflags/gflags.h"

DEFINE_string(mode, "relay", "relay, echo or probe.");
DEFINE_string(listen, "", "ADDR:PORT to listen on (relay, echo); ADDR a numeric IPv4 address.");
DEFINE_string(
    target, "",
    "ADDR:PORT to connect to (relay: each connection's upstream; probe: where to probe).");
DEFINE_double(delay_ms, 0,
              "Milliseconds each chunk is held before it is written on (relay), >= 0.");
DEFINE_int64(max_queued_bytes, 64 << 20,
             "Bytes one direction of a connection may hold before it stops "
             "reading (relay).");
DEFINE_int32(count, 200, "Round trips (probe).");
DEFINE_string(prefix, "", "Prefix of the figure names the probe prints (probe).");

namespace {

using Nanos = int64_t;

Nanos Now() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return Nanos{ts.tv_sec} * 1000000000 + ts.tv_nsec;
}

[[noreturn]] void Die(const std::string& what) {
  std::fprintf(stderr, "delay_relay: error: %s\n", what.c_str());
  std::exit(1);
}

std::string Errno(const char* call) { return std::string(call) + ": " + std::strerror(errno); }

// "A.B.C.D:PORT" -> sockaddr; dies with the flag's name otherwise.
sockaddr_in ParseAddress(const std::string& flag, const std::string& text) {
  size_t colon = text.rfind(':');
  sockaddr_in a{};
  a.sin_family = AF_INET;
  char* end = nullptr;
  long port = colon == std::string::npos ? -1 : std::strtol(text.c_str() + colon + 1, &end, 10);
  if (colon == std::string::npos || *end != '\0' || port <= 0 || port > 65535 ||
      inet_pton(AF_INET, text.substr(0, colon).c_str(), &a.sin_addr) != 1) {
    Die("flag --" + flag + ": '" + text + "' is not IPv4-ADDR:PORT");
  }
  a.sin_port = htons(static_cast<uint16_t>(port));
  return a;
}

void SetNoDelay(int fd) {
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

int Listen(const sockaddr_in& addr) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) Die(Errno("socket"));
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (bind(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0)
    Die(Errno("bind --listen"));
  if (listen(fd, 1024) != 0) Die(Errno("listen"));
  return fd;
}

volatile sig_atomic_t g_stop = 0;
void OnSignal(int) { g_stop = 1; }

void InstallSignals() {
  struct sigaction sa {};
  sa.sa_handler = OnSignal;
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);
  signal(SIGPIPE, SIG_IGN);
}

// ---- relay ----

struct Chunk {
  Nanos deadline;
  std::unique_ptr<char[]> bytes;
  size_t size = 0;  // 0: the source's FIN
  size_t sent = 0;
};

// One direction of a connection: the bytes read from one side that wait to be
// written to the other.
struct Direction {
  std::deque<Chunk> queue;
  int64_t queued = 0;     // bytes in queue, not yet written
  bool read_eof = false;  // the source sent FIN (or can no longer be read)
  bool done = false;      // FIN passed on (or the destination is gone)
  bool blocked = false;   // a due chunk waits for the destination to drain
};

// side 0 = the accepted client, side 1 = the upstream (--target). dir[s]
// carries bytes read from fd[s] to fd[1 - s].
struct Conn {
  uint64_t id;
  int fd[2] = {-1, -1};
  uint32_t mask[2] = {0, 0};  // events registered with epoll; kGone when removed
  bool registered[2] = {false, false};
  bool connected = false;
  Direction dir[2];
};

constexpr uint32_t kGone = ~0u;

class Relay {
 public:
  Relay(const sockaddr_in& listen_addr, const sockaddr_in& target, Nanos delay, int64_t max_queued)
      : target_(target), delay_(delay), max_queued_(max_queued) {
    epoll_ = epoll_create1(EPOLL_CLOEXEC);
    timer_ = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    if (epoll_ < 0 || timer_ < 0) Die(Errno("epoll/timerfd"));
    listener_ = Listen(listen_addr);
    Add(listener_, EPOLLIN, kListenerTag);
    Add(timer_, EPOLLIN, kTimerTag);
  }

  void Run() {
    std::vector<epoll_event> events(256);
    while (!g_stop) {
      int n = epoll_wait(epoll_, events.data(), static_cast<int>(events.size()), 1000);
      if (n < 0) {
        if (errno == EINTR) continue;
        Die(Errno("epoll_wait"));
      }
      for (int i = 0; i < n; ++i) {
        uint64_t tag = events[i].data.u64;
        if (tag == kListenerTag) {
          Accept();
        } else if (tag == kTimerTag) {
          uint64_t expirations;
          (void)!read(timer_, &expirations, sizeof expirations);
          timer_armed_at_ = 0;
        } else {
          auto it = conns_.find(tag >> 1);
          if (it != conns_.end())
            OnEvent(it->second.get(), static_cast<int>(tag & 1), events[i].events);
        }
      }
      FlushDue();
    }
  }

 private:
  // epoll tags: a connection's are id << 1 | side, and ids start at 1.
  static constexpr uint64_t kListenerTag = 0;
  static constexpr uint64_t kTimerTag = 1;
  // The timer fires this long after the earliest deadline, so chunks read in
  // a burst leave in one wake-up (and one writev) rather than one each.
  static constexpr Nanos kSlack = 50'000;

  void Add(int fd, uint32_t events, uint64_t tag) {
    epoll_event ev{};
    ev.events = events;
    ev.data.u64 = tag;
    if (epoll_ctl(epoll_, EPOLL_CTL_ADD, fd, &ev) != 0) Die(Errno("epoll_ctl add"));
  }

  void Accept() {
    for (;;) {
      int client = accept4(listener_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (client < 0) {
        if (errno == EAGAIN || errno == EINTR) return;
        if (errno == EMFILE || errno == ENFILE) {
          std::fprintf(stderr, "delay_relay: accept: %s\n", std::strerror(errno));
          return;
        }
        if (errno == ECONNABORTED) continue;
        Die(Errno("accept"));
      }
      int up = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
      if (up < 0) {
        close(client);
        continue;
      }
      SetNoDelay(client);
      SetNoDelay(up);
      auto conn = std::make_unique<Conn>();
      conn->id = next_id_++;
      conn->fd[0] = client;
      conn->fd[1] = up;
      Conn* c = conn.get();
      conns_[c->id] = std::move(conn);
      int rc = connect(up, reinterpret_cast<const sockaddr*>(&target_), sizeof target_);
      if (rc == 0) c->connected = true;
      if (rc != 0 && errno != EINPROGRESS) {
        Abort(c);
        continue;
      }
      Update(c);
    }
  }

  void OnEvent(Conn* c, int s, uint32_t events) {
    if (s == 1 && !c->connected) {
      if (!(events & (EPOLLOUT | EPOLLERR | EPOLLHUP))) return;
      int err = 0;
      socklen_t len = sizeof err;
      getsockopt(c->fd[1], SOL_SOCKET, SO_ERROR, &err, &len);
      if (err != 0) return Abort(c);
      c->connected = true;
    }
    if (events & EPOLLERR) return Abort(c);
    if (events & (EPOLLIN | EPOLLHUP)) {
      if (!Read(c, s)) return Abort(c);
    }
    if ((events & EPOLLHUP) && c->dir[s].read_eof) {
      // fd[s] is closed both ways: nothing more can be written to it, and
      // level-triggered HUP would repeat, so stop watching it.
      Direction& back = c->dir[1 - s];
      back.queue.clear();
      back.queued = 0;
      back.done = true;
      back.blocked = false;
      epoll_ctl(epoll_, EPOLL_CTL_DEL, c->fd[s], nullptr);
      c->mask[s] = kGone;
    }
    if (events & EPOLLOUT) c->dir[1 - s].blocked = false;
    if (!Flush(c, 0) || !Flush(c, 1)) return Abort(c);
    Finish(c);
  }

  // Reads what fd[s] has into dir[s]'s queue. False on a read error.
  bool Read(Conn* c, int s) {
    Direction& d = c->dir[s];
    while (!d.read_eof && d.queued < max_queued_) {
      if (d.done) {  // the destination is gone: read and drop
        char sink[65536];
        ssize_t n = read(c->fd[s], sink, sizeof sink);
        if (n > 0) continue;
        if (n == 0) d.read_eof = true;
        if (n < 0 && errno != EAGAIN && errno != EINTR) return false;
        return true;
      }
      ssize_t n = read(c->fd[s], buffer_.get(), kBufferBytes);
      if (n < 0) {
        if (errno == EAGAIN) return true;
        if (errno == EINTR) continue;
        return false;
      }
      size_t skip = 0;
      if (n > 0 && delay_ == 0 && d.queue.empty() && c->connected && !d.blocked) {
        // Nothing to wait for: write straight from the buffer, queue the rest.
        ssize_t w = write(c->fd[1 - s], buffer_.get(), static_cast<size_t>(n));
        if (w < 0 && errno != EAGAIN && errno != EINTR) return false;
        skip = w > 0 ? static_cast<size_t>(w) : 0;
        if (skip < static_cast<size_t>(n))
          d.blocked = w >= 0 || errno == EAGAIN;  // a full socket buffer
        if (skip == static_cast<size_t>(n)) {
          if (static_cast<size_t>(n) < kBufferBytes) return true;
          continue;
        }
      }
      Nanos deadline = Now() + delay_;
      if (n == 0) d.read_eof = true;
      bool full = static_cast<size_t>(n) == kBufferBytes;
      n -= static_cast<ssize_t>(skip);
      d.queued += n;
      Chunk chunk{deadline, nullptr, static_cast<size_t>(n)};
      if (skip == 0 && static_cast<size_t>(n) >= kBufferBytes / 4) {
        // A large read keeps the buffer itself (no copy); it is held only D.
        chunk.bytes = std::move(buffer_);
        buffer_.reset(new char[kBufferBytes]);
      } else if (n > 0) {
        chunk.bytes.reset(new char[n]);
        std::memcpy(chunk.bytes.get(), buffer_.get() + skip, static_cast<size_t>(n));
      }
      d.queue.push_back(std::move(chunk));
      if (delay_ > 0) due_.push({deadline, c->id});
      if (!full) return true;  // drained for now
    }
    return true;
  }

  // Writes dir[s]'s due chunks to fd[1 - s], up to 64 in one writev. False
  // on a write error.
  bool Flush(Conn* c, int s) {
    Direction& d = c->dir[s];
    if (!c->connected || d.done || d.blocked) return true;
    int out = c->fd[1 - s];
    Nanos now = Now();
    while (!d.queue.empty() && d.queue.front().deadline <= now) {
      if (d.queue.front().size == 0) {  // FIN, in order after the bytes before it
        shutdown(out, SHUT_WR);
        d.done = true;
        d.queue.clear();
        return true;
      }
      iovec iov[64];
      int k = 0;
      for (const Chunk& ch : d.queue) {
        if (k == 64 || ch.deadline > now || ch.size == 0) break;
        iov[k++] = {ch.bytes.get() + ch.sent, ch.size - ch.sent};
      }
      ssize_t n = writev(out, iov, k);
      if (n < 0) {
        if (errno == EINTR) continue;
        if (errno == EAGAIN) {
          d.blocked = true;
          break;
        }
        return false;
      }
      d.queued -= n;
      for (size_t left = static_cast<size_t>(n); left > 0;) {
        Chunk& ch = d.queue.front();
        size_t rest = ch.size - ch.sent;
        if (left < rest) {
          ch.sent += left;
          break;
        }
        left -= rest;
        d.queue.pop_front();
      }
    }
    return true;
  }

  // Flushes every connection with a chunk that has come due, and arms the
  // timer at the next deadline.
  void FlushDue() {
    if (delay_ == 0) return;
    Nanos now = Now();
    while (!due_.empty() && due_.top().deadline <= now) {
      uint64_t id = due_.top().id;
      due_.pop();
      auto it = conns_.find(id);
      if (it == conns_.end()) continue;
      Conn* c = it->second.get();
      if (!Flush(c, 0) || !Flush(c, 1)) {
        Abort(c);
        continue;
      }
      Finish(c);
    }
    if (!due_.empty() && due_.top().deadline + kSlack != timer_armed_at_) {
      Nanos at = due_.top().deadline + kSlack;
      itimerspec spec{};
      spec.it_value.tv_sec = at / 1000000000;
      spec.it_value.tv_nsec = at % 1000000000;
      timerfd_settime(timer_, TFD_TIMER_ABSTIME, &spec, nullptr);
      timer_armed_at_ = at;
    }
  }

  // Closes a connection whose both directions are over; else re-registers
  // the events it waits for.
  void Finish(Conn* c) {
    if (c->dir[0].done && c->dir[1].done) {
      Close(c, false);
      return;
    }
    Update(c);
  }

  void Update(Conn* c) {
    for (int s = 0; s < 2; ++s) {
      if (c->mask[s] == kGone) continue;
      uint32_t want = 0;
      const Direction& in = c->dir[s];
      if (!in.read_eof && in.queued < max_queued_ && (s == 0 || c->connected)) want |= EPOLLIN;
      if (c->dir[1 - s].blocked || (s == 1 && !c->connected)) want |= EPOLLOUT;
      if (c->registered[s] && want == c->mask[s]) continue;
      epoll_event ev{};
      ev.events = want;
      ev.data.u64 = c->id << 1 | static_cast<uint64_t>(s);
      int op = c->registered[s] ? EPOLL_CTL_MOD : EPOLL_CTL_ADD;
      if (epoll_ctl(epoll_, op, c->fd[s], &ev) != 0) Die(Errno("epoll_ctl"));
      c->registered[s] = true;
      c->mask[s] = want;
    }
  }

  void Abort(Conn* c) { Close(c, true); }

  // With reset, both peers see a reset (SO_LINGER 0) rather than a FIN.
  void Close(Conn* c, bool reset) {
    for (int s = 0; s < 2; ++s) {
      if (c->fd[s] < 0) continue;
      if (reset) {
        linger l{1, 0};
        setsockopt(c->fd[s], SOL_SOCKET, SO_LINGER, &l, sizeof l);
      }
      close(c->fd[s]);  // also removes it from epoll
    }
    conns_.erase(c->id);
  }

  struct Due {
    Nanos deadline;
    uint64_t id;
    bool operator>(const Due& o) const { return deadline > o.deadline; }
  };

  sockaddr_in target_;
  Nanos delay_;
  int64_t max_queued_;
  int epoll_ = -1, timer_ = -1, listener_ = -1;
  Nanos timer_armed_at_ = 0;
  uint64_t next_id_ = 1;
  static constexpr size_t kBufferBytes = 256 * 1024;
  std::unique_ptr<char[]> buffer_{new char[kBufferBytes]};
  std::unordered_map<uint64_t, std::unique_ptr<Conn>> conns_;
  std::priority_queue<Due, std::vector<Due>, std::greater<Due>> due_;
};

// ---- echo and probe ----

// Echoes every connection's bytes back, a thread per connection.
void Echo(const sockaddr_in& addr) {
  int fd = Listen(addr);
  fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
  while (!g_stop) {
    int c = accept4(fd, nullptr, nullptr, SOCK_CLOEXEC);
    if (c < 0) continue;
    SetNoDelay(c);
    std::thread([c] {
      char buf[65536];
      for (;;) {
        ssize_t n = read(c, buf, sizeof buf);
        if (n <= 0) break;
        ssize_t off = 0;
        while (off < n) {
          ssize_t w = write(c, buf + off, static_cast<size_t>(n - off));
          if (w <= 0) break;
          off += w;
        }
        if (off < n) break;
      }
      close(c);
    }).detach();
  }
}

// --count round trips of one byte over one connection, after 5 to warm up;
// prints <prefix>rtt_ms_median= and <prefix>rtt_ms_min=.
int Probe(const sockaddr_in& addr) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) Die(Errno("socket"));
  if (connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0)
    Die(Errno("connect --target"));
  SetNoDelay(fd);
  std::vector<double> rtts;
  for (int i = 0; i < FLAGS_count + 5; ++i) {
    char b = static_cast<char>(i);
    Nanos t0 = Now();
    if (write(fd, &b, 1) != 1) Die(Errno("write"));
    char r;
    if (read(fd, &r, 1) != 1 || r != b) Die("probe: the echo did not come back");
    if (i >= 5) rtts.push_back(static_cast<double>(Now() - t0) / 1e6);
  }
  close(fd);
  std::sort(rtts.begin(), rtts.end());
  size_t n = rtts.size();
  double median = n % 2 ? rtts[n / 2] : (rtts[n / 2 - 1] + rtts[n / 2]) / 2;
  std::printf("%srtt_ms_median=%.4f\n%srtt_ms_min=%.4f\n", FLAGS_prefix.c_str(), median,
              FLAGS_prefix.c_str(), rtts.front());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  gflags::SetUsageMessage(
      "a TCP relay that delays every chunk; see the head of bench/delay_relay.cc");
  gflags::ParseCommandLineFlags(&argc, &argv, true);
  InstallSignals();
  // Chunks come and go by the thousand: keep them on the heap, not in mmaps.
  mallopt(M_MMAP_THRESHOLD, 64 << 20);
  mallopt(M_TRIM_THRESHOLD, 256 << 20);
  if (FLAGS_mode == "probe") {
    if (FLAGS_count < 1) Die("flag --count: must be >= 1");
    return Probe(ParseAddress("target", FLAGS_target));
  }
  sockaddr_in listen_addr = ParseAddress("listen", FLAGS_listen);
  if (FLAGS_mode == "echo") {
    Echo(listen_addr);
    return 0;
  }
  if (FLAGS_mode != "relay") Die("flag --mode: '" + FLAGS_mode + "' is not relay, echo or probe");
  if (!(FLAGS_delay_ms >= 0)) Die("flag --delay_ms: must be >= 0");
  if (FLAGS_max_queued_bytes < 1) Die("flag --max_queued_bytes: must be >= 1");
  Relay relay(listen_addr, ParseAddress("target", FLAGS_target),
              static_cast<Nanos>(FLAGS_delay_ms * 1e6), FLAGS_max_queued_bytes);
  std::printf("relaying %s -> %s with %g ms\n", FLAGS_listen.c_str(), FLAGS_target.c_str(),
              FLAGS_delay_ms);
  std::fflush(stdout);
  relay.Run();
  return 0;
}
