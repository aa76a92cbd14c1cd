// storage_bench: the servers' storage tier. Pull+push throughput of a table
// three times the size of its memory budget against the same table with no
// budget, and checkpoint write and restore speeds against the disk's
// sequential write speed measured in the same run. Figures go to stdout as
// key=value lines; bench/README.md says what each key means.
#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/time.h"
#include "bench/bench_util.h"
#include "bench/multiget_ceiling.h"
#include "gflags/gflags.h"
#include "glog/logging.h"
#include "net/client.h"
#include "net/memory.h"
#include "net/transport.h"
#include "proto/checkpoint.pb.h"
#include "proto/config.pb.h"
#include "proto/keys.h"
#include "proto/wire.pb.h"
#include "ps/checkpoint_coordinator.h"
#include "ps/routing.h"
#include "ps/server.h"
#include "storage/checkpoint_files.h"
#include "storage/sparse_table.h"

DEFINE_uint64(keys, 4'000'000,
              "Distinct keys in the table. Key i is Mix64(i); the fill pushes each once.");
DEFINE_int32(servers, 1, "Server processes; logical shard s belongs to server s mod --servers.");
DEFINE_int32(dim, 16, "Embedding dim of the one table (Adagrad).");
DEFINE_int32(batch_keys, 50'000, "Distinct keys per batch, in the fill and in the measurement.");
DEFINE_int32(batches, 40, "Measured batches; each is a PULL then a PUSH of its keys.");
DEFINE_int32(warmup_batches, 10,
             "Untimed batches before the measured ones, drawn the same way, so that the hot keys "
             "are back in memory after the fill.");
DEFINE_double(zipf_s, 1.1, "Zipf exponent s of the batches' keys: P(rank k) ~ k^-s.");
DEFINE_uint64(seed, 1, "Seed of the batches and gradients.");
DEFINE_uint64(budget_bytes, 0,
              "Memory budget per server (storage.memory_budget_bytes) of the budgeted run. 0: the "
              "unbudgeted table's size (table_bytes) / (--budget_factor x --servers).");
DEFINE_double(budget_factor, 3, "Table size over total budget when --budget_bytes is 0.");
DEFINE_bool(skip_nobudget, false,
            "Run only the budgeted configuration (needs --budget_bytes); no ratio is printed.");
DEFINE_bool(budget_checkpoint, true, "Also save and restore the budgeted table.");
DEFINE_string(work_dir, "/tmp",
              "Where the run's directory storage_bench.XXXXXX (spill, checkpoints, disk probe "
              "file) is created. Needs about 3x the table's size free.");
DEFINE_bool(keep, false, "Keep the run's directory (removed at exit otherwise).");
DEFINE_uint64(disk_probe_bytes, uint64_t{1} << 30,
              "Bytes written (1 MiB writes, then fdatasync) to measure the disk's sequential write "
              "bandwidth.");
DEFINE_int32(disk_probe_repeats, 5, "Disk probes; their median is the disk's bandwidth.");
DEFINE_int32(server_threads, 2, "Server request handler threads (cluster.server_threads).");
DEFINE_int32(logical_shards, 1024, "Logical shards (cluster.num_logical_shards).");
DEFINE_int32(timeout_s, 600, "Seconds a PULL, PUSH or STATS may wait for its reply.");
DEFINE_int32(checkpoint_timeout_s, 7200, "Seconds a checkpoint save or restore may take.");

namespace ember::bench {
namespace {

using Clock = std::chrono::steady_clock;

constexpr uint32_t kTable = 0;
// Each server's dense slice: the server insists on one; a few floats will do.
constexpr uint32_t kDenseFloatsPerServer = 16;
// As worker::PsClient: a server's share of a batch goes in messages of at
// most this many keys.
constexpr uint32_t kMaxKeysPerMessage = 262144;
constexpr int32_t kClientNodeId = 1000;
constexpr double kMB = 1e6;  // every MB in the output is 10^6 bytes

// ---------------------------------------------------------------------------
// /proc and the file system.

// Bytes allocated on disk under `dir`, as du counts them (st_blocks). Files
// that vanish during the walk (RocksDB compacting) are skipped.
uint64_t DiskUsage(const std::string& dir) {
  namespace fs = std::filesystem;
  uint64_t total = 0;
  std::error_code ec;
  for (fs::recursive_directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    struct stat st;
    if (lstat(it->path().c_str(), &st) == 0 && S_ISREG(st.st_mode)) {
      total += static_cast<uint64_t>(st.st_blocks) * 512;
    }
  }
  return total;
}

// Drops the page-cache pages of every file under `dir`, so that a restore
// reads from the disk. Checkpoint files are fdatasync'ed when written, so
// their pages are clean and the advice takes them.
void DropFromPageCache(const std::string& dir) {
  namespace fs = std::filesystem;
  std::error_code ec;
  for (fs::recursive_directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    if (!it->is_regular_file(ec)) continue;
    const int fd = open(it->path().c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) continue;
    fdatasync(fd);
    posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    close(fd);
  }
}

// Sequential write bandwidth of the disk under `dir`, bytes/s: `bytes` of
// random data in 1 MiB write()s, then fdatasync, timed from open to the end
// of the fdatasync. The ceiling checkpoint writes and restores are compared
// with.
absl::StatusOr<double> DiskWriteBytesPerSec(const std::string& dir, uint64_t bytes) {
  constexpr size_t kChunk = size_t{1} << 20;
  std::vector<uint64_t> chunk(kChunk / sizeof(uint64_t));
  std::mt19937_64 rng(FLAGS_seed);
  for (uint64_t& w : chunk) w = rng();  // incompressible, in case the file system compresses
  const std::string path = dir + "/disk_probe";
  const Clock::time_point t0 = Clock::now();
  const int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return absl::InternalError(absl::StrCat(path, ": open: ", std::strerror(errno)));
  absl::Status st;
  for (uint64_t done = 0; done < bytes && st.ok();) {
    const size_t n = static_cast<size_t>(std::min<uint64_t>(kChunk, bytes - done));
    const char* p = reinterpret_cast<const char*>(chunk.data());
    size_t off = 0;
    while (off < n) {
      const ssize_t w = write(fd, p + off, n - off);
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) {
        st = absl::InternalError(absl::StrCat(path, ": write: ", std::strerror(errno)));
        break;
      }
      off += static_cast<size_t>(w);
    }
    done += n;
  }
  if (st.ok() && fdatasync(fd) != 0) {
    st = absl::InternalError(absl::StrCat(path, ": fdatasync: ", std::strerror(errno)));
  }
  const double seconds = Since(t0);
  posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);  // give the page cache back
  close(fd);
  unlink(path.c_str());
  if (!st.ok()) return st;
  return static_cast<double>(bytes) / seconds;
}

// ---------------------------------------------------------------------------
// Keys.

// Zipf rank r (1-based) -> key index, a bijection on [0, n): index =
// (r - 1) * a mod n with a coprime to n. The fill pushes indexes in order, so
// without it the hottest keys would be the oldest rows and the first evicted;
// with it hotness and fill order are unrelated.
class RankToIndex {
 public:
  explicit RankToIndex(uint64_t n) : n_(n) {
    a_ = std::max<uint64_t>(1, static_cast<uint64_t>(static_cast<double>(n) * 0.6180339887498949));
    while (std::gcd(a_, n_) != 1) ++a_;
  }
  uint64_t operator()(uint64_t rank) const {
    return static_cast<uint64_t>((static_cast<unsigned __int128>(rank - 1) * a_) % n_);
  }

 private:
  uint64_t n_, a_;
};

struct Batch {
  std::shared_ptr<const std::vector<uint64_t>> keys;  // grouped by (server, shard)
  std::vector<uint32_t> server_begin;                 // --servers + 1 offsets
};

// Keys [begin, end) of the universe, grouped: one batch of the fill.
Batch FillBatch(ps::KeyRouter& router, uint64_t begin, uint64_t end) {
  std::vector<uint64_t> keys(end - begin);
  for (uint64_t i = begin; i < end; ++i) keys[i - begin] = proto::Mix64(i);
  Batch b;
  auto grouped = std::make_shared<std::vector<uint64_t>>();
  router.Group(keys, grouped.get(), &b.server_begin, nullptr);
  b.keys = std::move(grouped);
  return b;
}

// `n` batches of --batch_keys distinct keys, ranks drawn from Zipf(--zipf_s)
// over the universe, each seeded on its own (batch b is the same whatever the
// thread count, and the same in every configuration). Drawn on every core
// before any timing. *distinct: distinct keys over batches [first_counted, n).
std::vector<Batch> MakeZipfBatches(const proto::ShardMap& map, int n, int first_counted,
                                   size_t* distinct) {
  const size_t batch_keys = FLAGS_batch_keys;
  const ZipfSampler zipf(FLAGS_keys, FLAGS_zipf_s);
  const RankToIndex index_of(FLAGS_keys);
  std::vector<Batch> batches(n);
  const int threads = std::max(1u, std::thread::hardware_concurrency());
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      ps::KeyRouter router(map, FLAGS_servers);
      absl::flat_hash_set<uint64_t> ranks;
      std::vector<uint64_t> keys;
      for (int b = t; b < n; b += threads) {
        std::mt19937_64 rng(FLAGS_seed * 1'000'003 + b);
        ranks.clear();
        while (ranks.size() < batch_keys) ranks.insert(zipf(rng));
        keys.clear();
        for (uint64_t r : ranks) keys.push_back(proto::Mix64(index_of(r)));
        auto grouped = std::make_shared<std::vector<uint64_t>>();
        router.Group(keys, grouped.get(), &batches[b].server_begin, nullptr);
        batches[b].keys = std::move(grouped);
      }
    });
  }
  for (std::thread& t : pool) t.join();
  absl::flat_hash_set<uint64_t> all;
  for (int b = first_counted; b < n; ++b) {
    all.insert(batches[b].keys->begin(), batches[b].keys->end());
  }
  *distinct = all.size();
  return batches;
}

// ---------------------------------------------------------------------------
// Server processes.

proto::JobConfig MakeConfig(uint64_t budget_bytes, const std::string& dir) {
  proto::JobConfig config;
  proto::TableConfig* t = config.add_tables();
  t->set_name("t");
  t->set_dim(FLAGS_dim);
  t->mutable_optimizer()->set_kind(proto::OptimizerConfig::ADAGRAD);
  config.mutable_cluster()->set_num_logical_shards(FLAGS_logical_shards);
  config.mutable_cluster()->set_server_threads(FLAGS_server_threads);
  config.mutable_model()->mutable_dense_optimizer()->set_kind(proto::OptimizerConfig::SGD);
  proto::StorageConfig* s = config.mutable_storage();
  s->set_memory_budget_bytes(budget_bytes);
  s->set_spill_path(dir + "/spill");
  config.mutable_checkpoint()->set_dir(dir + "/ckpt");  // RunConfig saves there
  return config;
}

proto::ShardMap MakeShardMap() {
  proto::ShardMap map;
  map.set_num_logical_shards(FLAGS_logical_shards);
  for (int s = 0; s < FLAGS_logical_shards; ++s) map.add_server_rank(s % FLAGS_servers);
  return map;
}

// Table 0's storage counters, summed over servers.
struct TableStats {
  uint64_t resident_rows = 0, spilled_rows = 0, resident_bytes = 0, spilled_bytes = 0;
  uint64_t hits = 0, misses = 0, spill_reads = 0, evictions = 0;
};

// The servers of one configuration and the client that talks to them. The
// servers are forked first, while this process has no thread; the client
// (a ZeroMQ context and an I/O thread) is created after and destroyed before
// them, so the next configuration's fork finds the process single-threaded
// again, and the client never lingers on messages to a dead server.
class Cluster {
 public:
  static absl::StatusOr<std::unique_ptr<Cluster>> Start(const proto::JobConfig& config,
                                                        const proto::ShardMap& map) {
    auto self = std::unique_ptr<Cluster>(new Cluster());
    for (int r = 0; r < FLAGS_servers; ++r) {
      const uint32_t rank = static_cast<uint32_t>(r);
      ps::ServerOptions so;
      so.config = config;
      so.shard_map = map;
      so.rank = rank;
      so.node_id = static_cast<int32_t>(1 + rank);
      so.dense_offset = uint64_t{rank} * kDenseFloatsPerServer;
      so.dense_init.assign(kDenseFloatsPerServer, 0.0f);
      so.dense_total = uint64_t{kDenseFloatsPerServer} * FLAGS_servers;
      absl::StatusOr<std::unique_ptr<ServerProcess>> s = ServerProcess::Start(std::move(so));
      if (!s.ok()) return s.status();
      self->servers_.push_back(std::move(*s));
    }
    absl::StatusOr<std::unique_ptr<net::Transport>> transport =
        net::CreateTransport(net::TransportOptions{});
    if (!transport.ok()) return transport.status();
    self->client_ = net::Client::Create(std::move(*transport));
    for (const auto& s : self->servers_) {
      absl::StatusOr<net::PeerId> peer = self->client_->Connect(s->endpoint(), proto::SERVER);
      if (!peer.ok()) return peer.status();
      self->peers_.push_back(*peer);
    }
    ps::CheckpointCoordinatorOptions co;
    co.config = config;
    co.dense_total = uint64_t{kDenseFloatsPerServer} * FLAGS_servers;
    co.servers = self->peers_;
    co.node_id = kClientNodeId;
    co.timeout = absl::Seconds(FLAGS_checkpoint_timeout_s);
    self->coordinator_ =
        std::make_unique<ps::CheckpointCoordinator>(std::move(co), self->client_.get());
    return self;
  }

  ~Cluster() {
    coordinator_.reset();
    client_.reset();
    servers_.clear();
  }
  Cluster(const Cluster&) = delete;
  Cluster& operator=(const Cluster&) = delete;

  // PULL of the batch's keys from every server at once; the values go to
  // out[i * dim ...] for grouped key i, as worker::PsClient copies them.
  absl::Status Pull(const Batch& b, float* out) { return Sparse(proto::PULL, b, nullptr, out); }
  // PUSH of `grads` (dim floats per grouped key) to every server at once.
  absl::Status Push(const Batch& b, const std::shared_ptr<const std::vector<float>>& grads) {
    return Sparse(proto::PUSH, b, &grads, nullptr);
  }

  absl::StatusOr<TableStats> Stats() {
    absl::StatusOr<std::vector<proto::ServerStatsProto>> all = coordinator_->Stats();
    if (!all.ok()) return all.status();
    TableStats t;
    for (size_t r = 0; r < all->size(); ++r) {
      const proto::ServerStatsProto& s = (*all)[r];
      if (s.tables_size() <= static_cast<int>(kTable)) {
        return absl::InternalError(absl::StrCat("STATS of server ", r, " has no table ", kTable));
      }
      const proto::TableStatsProto& ts = s.tables(kTable);
      t.resident_rows += ts.resident_rows();
      t.spilled_rows += ts.spilled_rows();
      t.resident_bytes += ts.resident_bytes();
      t.spilled_bytes += ts.spilled_bytes();
      t.hits += ts.hits();
      t.misses += ts.misses();
      t.spill_reads += ts.spill_reads();
      t.evictions += ts.evictions();
    }
    return t;
  }

  ps::CheckpointCoordinator& coordinator() { return *coordinator_; }

  std::vector<pid_t> pids() const {
    std::vector<pid_t> p;
    for (const auto& s : servers_) p.push_back(s->pid());
    return p;
  }

  // Prints each server's peak RSS as server_peak_rss_mb_rank<r>_<config>.
  void PrintPeakRss(const std::string& config) const {
    for (size_t r = 0; r < servers_.size(); ++r) {
      Print(absl::StrCat("server_peak_rss_mb_rank", r, "_", config),
            PeakRssBytes(servers_[r]->pid()) / kMB);
    }
  }

 private:
  Cluster() = default;

  absl::Status Sparse(proto::Command command, const Batch& b,
                      const std::shared_ptr<const std::vector<float>>* grads, float* out) {
    const uint32_t dim = FLAGS_dim;
    struct Part {
      net::Client::CallId call;
      uint32_t server, begin, n;
    };
    std::vector<Part> parts;
    for (uint32_t s = 0; s < peers_.size(); ++s) {
      for (uint32_t a = b.server_begin[s], end = b.server_begin[s + 1]; a < end;) {
        const uint32_t n = std::min(kMaxKeysPerMessage, end - a);
        net::Message m;
        m.header.set_command(command);
        m.header.set_sender(kClientNodeId);
        m.header.set_table(kTable);
        m.header.set_dim(dim);
        m.header.set_num_keys(n);
        m.frames.push_back(
            net::Frame::Borrow(b.keys, b.keys->data() + a, size_t{n} * sizeof(uint64_t)));
        if (grads != nullptr) {
          m.frames.push_back(net::Frame::Borrow(*grads, (*grads)->data() + size_t{a} * dim,
                                                size_t{n} * dim * sizeof(float)));
        }
        parts.push_back({client_->Start(peers_[s], std::move(m)), s, a, n});
        a += n;
      }
    }
    absl::Status first;
    for (const Part& p : parts) {
      absl::StatusOr<net::Message> r = client_->Wait(p.call, absl::Seconds(FLAGS_timeout_s));
      if (!r.ok()) {
        if (first.ok()) {
          first = absl::Status(r.status().code(),
                               absl::StrCat(proto::Command_Name(command), " to server ", p.server,
                                            ": ", r.status().message()));
        }
        continue;
      }
      if (out == nullptr) continue;
      const size_t bytes = size_t{p.n} * dim * sizeof(float);
      if (r->frames.size() != 1 || r->frames[0].size() != bytes) {
        if (first.ok()) {
          first = absl::InternalError(
              absl::StrCat("PULL reply from server ", p.server, " has the wrong size"));
        }
        continue;
      }
      std::memcpy(out + size_t{p.begin} * dim, r->frames[0].data(), bytes);
    }
    return first;
  }

  std::vector<std::unique_ptr<ServerProcess>> servers_;
  std::unique_ptr<net::Client> client_;
  std::vector<net::PeerId> peers_;
  std::unique_ptr<ps::CheckpointCoordinator> coordinator_;
};

// Cores the client and the servers kept busy together over a phase: near
// nproc means the phase was CPU-bound, well below means it waited (on the
// disk, on latency). Logs to stderr the phase's length, each server's
// resident memory now and at its peak so far (which places a server's peak
// in a phase), and its CLOCK_MONOTONIC interval, so that a profile (perf
// record -k CLOCK_MONOTONIC) can be cut to one phase.
class CpuMeter {
 public:
  explicit CpuMeter(std::vector<pid_t> servers) : servers_(servers), pids_(std::move(servers)) {
    pids_.push_back(getpid());
    for (pid_t p : pids_) cpu0_ += CpuSeconds(p);
  }
  double Finish(const std::string& phase) const {
    double cpu = 0;
    for (pid_t p : pids_) cpu += CpuSeconds(p);
    const double seconds = Since(t0_);
    const double cores = (cpu - cpu0_) / seconds;
    std::string rss;
    for (pid_t p : servers_) {
      absl::StrAppend(&rss, rss.empty() ? "" : ", ",
                      static_cast<int64_t>(StatusBytes(p, "VmRSS") / kMB), "/",
                      static_cast<int64_t>(PeakRssBytes(p) / kMB));
    }
    std::fprintf(stderr,
                 "# phase %s: %.2f s, cores %.2f, server rss/peak MB %s, monotonic %.6f,%.6f\n",
                 phase.c_str(), seconds, cores, rss.c_str(), mono0_, MonotonicSeconds());
    return cores;
  }

 private:
  std::vector<pid_t> servers_;
  std::vector<pid_t> pids_;
  Clock::time_point t0_ = Clock::now();
  double mono0_ = MonotonicSeconds();
  double cpu0_ = 0;
};

// ---------------------------------------------------------------------------
// The run.

// What every configuration shares.
struct Run {
  std::string dir;  // the run's directory
  proto::ShardMap map;
  std::vector<Batch> batches;                       // --warmup_batches, then --batches
  std::shared_ptr<const std::vector<float>> grads;  // --batch_keys x dim, reused by every push
  double disk_bytes_per_sec = 0;
  double peak_spill_disk = 0;
  double peak_checkpoint_disk = 0;
};

struct ConfigResult {
  double keys_per_sec = 0;
  uint64_t table_bytes = 0;   // keys x the server's charge per resident row
  std::vector<float> values;  // the first measured batch pulled after the measurement
  uint64_t misses = 0;        // budgeted: row lookups that missed memory during the measure
};

// Pushes every key of the universe once, creating the rows.
absl::Status Fill(Run& run, Cluster& cluster, const std::string& name, bool budgeted) {
  const uint64_t n = FLAGS_keys;
  const uint64_t step = static_cast<uint64_t>(FLAGS_batch_keys);
  ps::KeyRouter router(run.map, FLAGS_servers);
  CpuMeter cpu(cluster.pids());
  const Clock::time_point t0 = Clock::now();
  Clock::time_point last_report = t0;
  for (uint64_t begin = 0; begin < n; begin += step) {
    const uint64_t end = std::min(n, begin + step);
    // Generated batch by batch: the large run's 200M keys never sit in memory.
    const Batch b = FillBatch(router, begin, end);
    if (absl::Status st = cluster.Push(b, run.grads); !st.ok()) return st;
    if (Since(last_report) >= 30) {
      last_report = Clock::now();
      if (budgeted) {
        run.peak_spill_disk = std::max<double>(run.peak_spill_disk, DiskUsage(run.dir + "/spill"));
      }
      std::fprintf(stderr, "# %s fill: %llu of %llu keys, %.0f keys/s\n", name.c_str(),
                   static_cast<unsigned long long>(end), static_cast<unsigned long long>(n),
                   static_cast<double>(end) / Since(t0));
    }
  }
  const double seconds = Since(t0);
  Print(name + "_fill_keys_per_sec", static_cast<double>(n) / seconds);
  Print(name + "_fill_cpu_cores", cpu.Finish(name + "_fill"));
  return absl::OkStatus();
}

// One batch as a worker's step has it: PULL of its keys, then PUSH of their
// gradients.
absl::Status Step(Run& run, Cluster& cluster, const Batch& b, float* out) {
  if (absl::Status st = cluster.Pull(b, out); !st.ok()) return st;
  return cluster.Push(b, run.grads);
}

// The untimed warm-up batches.
absl::Status Warmup(Run& run, Cluster& cluster, const std::string& name) {
  std::vector<float> out(size_t{static_cast<uint32_t>(FLAGS_batch_keys)} * FLAGS_dim, 0.0f);
  CpuMeter cpu(cluster.pids());
  for (int i = 0; i < FLAGS_warmup_batches; ++i) {
    if (absl::Status st = Step(run, cluster, run.batches[i], out.data()); !st.ok()) return st;
  }
  cpu.Finish(name + "_warmup");
  return absl::OkStatus();
}

// The measured batches, one at a time. Returns pull+push keys per second.
absl::StatusOr<double> Measure(Run& run, Cluster& cluster, const std::string& name) {
  std::vector<float> out(size_t{static_cast<uint32_t>(FLAGS_batch_keys)} * FLAGS_dim, 0.0f);
  CpuMeter cpu(cluster.pids());
  const Clock::time_point t0 = Clock::now();
  for (size_t i = FLAGS_warmup_batches; i < run.batches.size(); ++i) {
    if (absl::Status st = Step(run, cluster, run.batches[i], out.data()); !st.ok()) return st;
  }
  const double seconds = Since(t0);
  Print(name + "_cpu_cores", cpu.Finish(name + "_measure"));
  // Not a figure, but a pull that returned nothing would flatter every figure.
  if (std::all_of(out.begin(), out.end(), [](float v) { return v == 0.0f; })) {
    return absl::InternalError(absl::StrCat(name, ": the last pull returned only zeros"));
  }
  return 2.0 * FLAGS_batch_keys * FLAGS_batches / seconds;
}

void WarnIfOverBudget(const std::string& when, uint64_t resident_bytes, uint64_t budget) {
  if (resident_bytes > 1.1 * budget * FLAGS_servers) {
    std::fprintf(stderr, "# WARNING: %s: %llu resident bytes, over a budget of %llu x %d servers\n",
                 when.c_str(), static_cast<unsigned long long>(resident_bytes),
                 static_cast<unsigned long long>(budget), FLAGS_servers);
  }
}

uint64_t ManifestBytes(const proto::CheckpointManifest& m) {
  uint64_t bytes = 0;
  for (const proto::CheckpointFile& f : m.files()) bytes += f.size();
  return bytes;
}

// One configuration on fresh servers: fill, measure, and (if `checkpoint`)
// save, then restore onto fresh servers of the same configuration.
absl::StatusOr<ConfigResult> RunConfig(Run& run, const std::string& name, uint64_t budget,
                                       bool checkpoint) {
  const proto::JobConfig config = MakeConfig(budget, run.dir);
  const std::string ckpt_root = config.checkpoint().dir();
  // Checkpoint figures of the budgeted configuration carry its prefix; the
  // unbudgeted ones are the headline figures and carry none.
  const std::string prefix = name == "nobudget" ? "" : name + "_";
  const bool budgeted = budget > 0;
  const size_t value_floats = size_t{static_cast<uint32_t>(FLAGS_batch_keys)} * FLAGS_dim;
  const Batch& probe = run.batches[FLAGS_warmup_batches];  // the first measured batch
  ConfigResult result;
  std::string ckpt_dir;
  uint64_t ckpt_bytes = 0;
  double write_bps = 0;
  {
    absl::StatusOr<std::unique_ptr<Cluster>> cluster = Cluster::Start(config, run.map);
    if (!cluster.ok()) return cluster.status();
    Cluster& c = **cluster;
    if (absl::Status st = Fill(run, c, name, budgeted); !st.ok()) return st;
    absl::StatusOr<TableStats> filled = c.Stats();
    if (!filled.ok()) return filled.status();
    // STATS's resident figures are gauges each handler thread refreshes
    // every 16th request, so right after the fill they can miss the last
    // batches' rows. The table's size is every key at the server's own
    // charge per row.
    if (filled->resident_rows > 0) {
      result.table_bytes = static_cast<uint64_t>(static_cast<double>(filled->resident_bytes) /
                                                 filled->resident_rows * FLAGS_keys);
    }
    Print(name + "_resident_rows", filled->resident_rows);
    Print(name + "_resident_bytes", filled->resident_bytes);
    if (budgeted) {
      Print(name + "_spilled_rows", filled->spilled_rows);
      Print(name + "_spilled_bytes", filled->spilled_bytes);
      WarnIfOverBudget(name + " after the fill", filled->resident_bytes, budget);
    }

    if (absl::Status st = Warmup(run, c, name); !st.ok()) return st;
    absl::StatusOr<TableStats> before = c.Stats();  // the warm-up stays out of the counters
    if (!before.ok()) return before.status();
    absl::StatusOr<double> rate = Measure(run, c, name);
    if (!rate.ok()) return rate.status();
    absl::StatusOr<TableStats> after = c.Stats();
    if (!after.ok()) return after.status();
    result.keys_per_sec = *rate;
    Print(name + "_keys_per_sec", *rate);
    if (budgeted) {
      const uint64_t hits = after->hits - before->hits;
      const uint64_t misses = after->misses - before->misses;
      result.misses = misses;
      Print(name + "_hit_rate",
            hits + misses > 0 ? static_cast<double>(hits) / (hits + misses) : 0);
      Print(name + "_misses_per_batch", static_cast<double>(misses) / FLAGS_batches);
      Print(name + "_spill_reads_per_batch",
            static_cast<double>(after->spill_reads - before->spill_reads) / FLAGS_batches);
      Print(name + "_evictions_per_batch",
            static_cast<double>(after->evictions - before->evictions) / FLAGS_batches);
      Print(name + "_measured_resident_bytes", after->resident_bytes);
      WarnIfOverBudget(name + " after the measure", after->resident_bytes, budget);
      run.peak_spill_disk = std::max<double>(run.peak_spill_disk, DiskUsage(run.dir + "/spill"));
    }

    result.values.assign(value_floats, 0.0f);
    if (absl::Status st = c.Pull(probe, result.values.data()); !st.ok()) return st;

    if (checkpoint) {
      std::filesystem::create_directories(ckpt_root);
      CpuMeter cpu(c.pids());
      const Clock::time_point t0 = Clock::now();
      absl::StatusOr<proto::CheckpointManifest> manifest =
          c.coordinator().Save(ckpt_root, /*incremental=*/false, /*sweep=*/false);
      if (!manifest.ok()) return manifest.status();
      const double seconds = Since(t0);
      cpu.Finish(name + "_checkpoint_write");
      ckpt_dir = ckpt_root + "/" + storage::CheckpointDirName(manifest->id());
      ckpt_bytes = ManifestBytes(*manifest);
      write_bps = ckpt_bytes / seconds;
      Print(prefix + "checkpoint_bytes", ckpt_bytes);
      Print(prefix + "checkpoint_write_mb_per_sec", write_bps / kMB);
      Print(prefix + "checkpoint_write_ratio", write_bps / run.disk_bytes_per_sec);
      run.peak_checkpoint_disk = std::max<double>(run.peak_checkpoint_disk, DiskUsage(ckpt_root));
    }
    c.PrintPeakRss(name);
  }
  if (!checkpoint) return result;

  DropFromPageCache(ckpt_dir);
  absl::StatusOr<std::unique_ptr<Cluster>> cluster = Cluster::Start(config, run.map);
  if (!cluster.ok()) return cluster.status();
  Cluster& c = **cluster;
  CpuMeter cpu(c.pids());
  const Clock::time_point t0 = Clock::now();
  absl::StatusOr<uint64_t> rows = c.coordinator().Restore(ckpt_dir);
  if (!rows.ok()) return rows.status();
  const double seconds = Since(t0);
  cpu.Finish(name + "_restore");
  const double read_bps = ckpt_bytes / seconds;
  Print(prefix + "restored_rows", *rows);
  Print(prefix + "restore_mb_per_sec", read_bps / kMB);
  Print(prefix + "restore_ratio", read_bps / run.disk_bytes_per_sec);
  if (*rows != FLAGS_keys) {
    std::fprintf(stderr, "# WARNING: %s: restored %llu rows of %llu\n", name.c_str(),
                 static_cast<unsigned long long>(*rows),
                 static_cast<unsigned long long>(FLAGS_keys));
  }
  // A restore that loaded other values would make its speed meaningless.
  std::vector<float> restored(value_floats, 0.0f);
  if (absl::Status st = c.Pull(probe, restored.data()); !st.ok()) return st;
  const bool same = restored == result.values;
  Print(prefix + "restore_values_equal", same ? 1 : 0);
  if (!same) {
    std::fprintf(stderr, "# WARNING: %s: values pulled after the restore differ from before\n",
                 name.c_str());
  }
  c.PrintPeakRss(name + "_restore");
  cluster->reset();
  if (!FLAGS_keep) std::filesystem::remove_all(ckpt_dir);
  return result;
}

// The miss path against RocksDB's own ceiling. The budgeted measure took
// longer than the unbudgeted one over the same batches; that extra time is
// what its misses cost (reads, evictions, write-backs), so the miss path
// serves misses / extra seconds rows/s. The ceiling is SpillStore::MultiGet
// of as many random existing keys, in calls of the measure's average misses
// per handler request, from as many threads as the servers have handlers,
// on a RocksDB of the table's rows opened with the tier's options.
absl::Status PrintMissPathCeiling(Run& run, const ConfigResult& nobudget, const ConfigResult& budgeted) {
  const double keys = 2.0 * FLAGS_batch_keys * FLAGS_batches;
  const double extra_seconds = keys / budgeted.keys_per_sec - keys / nobudget.keys_per_sec;
  // Each measured batch is a PULL and a PUSH, each split over every handler.
  const double requests = 2.0 * FLAGS_batches * FLAGS_servers * FLAGS_server_threads;
  MultiGetCeilingOptions o;
  o.dir = run.dir + "/multiget_ceiling";
  o.rows = FLAGS_keys;
  o.row_bytes = storage::TableSpec(MakeConfig(0, run.dir).tables(kTable)).row_bytes();
  o.logical_shards = static_cast<uint32_t>(FLAGS_logical_shards);
  o.block_cache_bytes = MakeConfig(0, run.dir).storage().block_cache_bytes();
  o.lookups = std::max<uint64_t>(budgeted.misses, 1);
  o.keys_per_call = std::max<size_t>(1, static_cast<size_t>(budgeted.misses / requests));
  o.threads = FLAGS_servers * FLAGS_server_threads;
  o.seed = FLAGS_seed;
  absl::StatusOr<double> ceiling = MultiGetCeilingRowsPerSec(o);
  if (!ceiling.ok()) return ceiling.status();
  const double miss_path = extra_seconds > 0 ? budgeted.misses / extra_seconds : 0;
  Print("multiget_keys_per_call", static_cast<double>(o.keys_per_call));
  Print("multiget_ceiling_rows_per_sec", *ceiling);
  Print("miss_path_rows_per_sec", miss_path);
  Print("miss_path_multiget_ratio", miss_path / *ceiling);
  return absl::OkStatus();
}

absl::Status RunAll(Run& run) {
  // Drawn on every core while no server exists: the pool's threads are gone
  // before the first fork.
  size_t distinct = 0;
  {
    const Clock::time_point t0 = Clock::now();
    run.batches = MakeZipfBatches(run.map, FLAGS_warmup_batches + FLAGS_batches,
                                  FLAGS_warmup_batches, &distinct);
    std::fprintf(stderr, "# %zu batches drawn in %.1f s\n", run.batches.size(), Since(t0));
  }
  {
    std::vector<float> grads(size_t{static_cast<uint32_t>(FLAGS_batch_keys)} * FLAGS_dim);
    std::mt19937_64 rng(FLAGS_seed + 1);
    std::uniform_real_distribution<float> u(-0.05f, 0.05f);
    for (float& g : grads) g = u(rng);
    run.grads = std::make_shared<const std::vector<float>>(std::move(grads));
  }
  Print("keys", static_cast<double>(FLAGS_keys));
  Print("measured_distinct_keys", static_cast<double>(distinct));

  // The median of a few. This VM's disk is bimodal: consecutive 1 GiB writes
  // run at ~400 or ~1600 MB/s (the host caches), so neither the best nor
  // one probe is "the disk".
  std::vector<double> probes;
  for (int i = 0; i < FLAGS_disk_probe_repeats; ++i) {
    absl::StatusOr<double> disk = DiskWriteBytesPerSec(run.dir, FLAGS_disk_probe_bytes);
    if (!disk.ok()) return disk.status();
    std::fprintf(stderr, "# disk probe %d: %.0f MB/s\n", i + 1, *disk / kMB);
    probes.push_back(*disk);
  }
  std::sort(probes.begin(), probes.end());
  const size_t m = probes.size();
  run.disk_bytes_per_sec = m % 2 ? probes[m / 2] : (probes[m / 2 - 1] + probes[m / 2]) / 2;
  Print("disk_write_mb_per_sec", run.disk_bytes_per_sec / kMB);
  Print("disk_write_best_mb_per_sec", probes.back() / kMB);
  Print("disk_write_worst_mb_per_sec", probes.front() / kMB);

  ConfigResult nobudget;
  if (!FLAGS_skip_nobudget) {
    absl::StatusOr<ConfigResult> r = RunConfig(run, "nobudget", 0, /*checkpoint=*/true);
    if (!r.ok()) return r.status();
    nobudget = std::move(*r);
    if (nobudget.table_bytes == 0) {
      // Rows of 32 B metadata + dim weights + dim Adagrad accumulators, plus
      // 16 B of index (storage::ResidentRowCost).
      nobudget.table_bytes = FLAGS_keys * (sizeof(storage::RowMeta) + 8 * uint64_t(FLAGS_dim) + 16);
      std::fprintf(stderr,
                   "# WARNING: STATS reported no resident rows; table_bytes is the "
                   "estimate keys x (32 + 8 x dim + 16)\n");
    }
    Print("table_bytes", nobudget.table_bytes);
  }
  uint64_t budget = FLAGS_budget_bytes;
  if (budget == 0) {
    budget = static_cast<uint64_t>(nobudget.table_bytes / (FLAGS_budget_factor * FLAGS_servers));
  }
  Print("budget_bytes_per_server", budget);
  if (!FLAGS_skip_nobudget) {
    Print("table_over_budget",
          nobudget.table_bytes / (static_cast<double>(budget) * FLAGS_servers));
  }
  absl::StatusOr<ConfigResult> budgeted = RunConfig(run, "budget", budget, FLAGS_budget_checkpoint);
  if (!budgeted.ok()) return budgeted.status();
  if (!FLAGS_skip_nobudget) {
    Print("budget_throughput_ratio", budgeted->keys_per_sec / nobudget.keys_per_sec);
    // Both tables saw the same pushes, so a row that went through RocksDB
    // must come back with the same bits.
    const bool same = budgeted->values == nobudget.values;
    Print("budget_values_equal", same ? 1 : 0);
    if (!same) {
      std::fprintf(stderr, "# WARNING: the budgeted table's values differ from the unbudgeted's\n");
    }
    if (absl::Status st = PrintMissPathCeiling(run, nobudget, *budgeted); !st.ok()) return st;
  }
  Print("spill_disk_mb", run.peak_spill_disk / kMB);
  Print("checkpoint_disk_mb", run.peak_checkpoint_disk / kMB);
  Print("client_peak_rss_mb", PeakRssBytes(getpid()) / kMB);
  return absl::OkStatus();
}

int Main() {
  if (FLAGS_keys < 2 * uint64_t(std::max(FLAGS_batch_keys, 1)) || FLAGS_batch_keys < 1 ||
      FLAGS_batches < 1 || FLAGS_warmup_batches < 0 || FLAGS_servers < 1 ||
      FLAGS_logical_shards < FLAGS_servers || FLAGS_server_threads < 1 || FLAGS_dim < 1 ||
      FLAGS_dim > 4096 || FLAGS_zipf_s <= 0 || FLAGS_budget_factor <= 0 ||
      FLAGS_disk_probe_bytes < (1 << 20) || FLAGS_disk_probe_repeats < 1 || FLAGS_timeout_s < 1 ||
      FLAGS_checkpoint_timeout_s < 1) {
    // Drawing a batch of distinct keys from barely more keys than it holds
    // would take forever (the rare keys have to come up too), hence the 2x.
    std::fprintf(
        stderr,
        "storage_bench: need --keys >= 2 x --batch_keys >= 2, --batches >= 1, "
        "--warmup_batches >= 0, --logical_shards >= --servers >= 1, --server_threads >= 1, "
        "1 <= --dim <= 4096, --zipf_s > 0, --budget_factor > 0, --disk_probe_bytes >= 1 "
        "MiB, --disk_probe_repeats >= 1, timeouts >= 1\n");
    return 2;
  }
  if (FLAGS_skip_nobudget && FLAGS_budget_bytes == 0) {
    std::fprintf(stderr, "storage_bench: --skip_nobudget needs --budget_bytes\n");
    return 2;
  }
  // A directory of our own, so that removing it can never take anything else.
  std::string tmpl = FLAGS_work_dir + "/storage_bench.XXXXXX";
  if (mkdtemp(tmpl.data()) == nullptr) {
    std::fprintf(stderr, "storage_bench: mkdtemp %s: %s\n", tmpl.c_str(), std::strerror(errno));
    return 1;
  }
  Run run;
  run.dir = tmpl;
  run.map = MakeShardMap();

  std::printf(
      "# storage_bench: nproc=%u cpu=\"%s\" keys=%llu servers=%d dim=%d batch_keys=%d batches=%d "
      "warmup_batches=%d zipf_s=%g logical_shards=%d server_threads=%d work_dir=%s\n",
      std::thread::hardware_concurrency(), CpuModel().c_str(),
      static_cast<unsigned long long>(FLAGS_keys), FLAGS_servers, FLAGS_dim, FLAGS_batch_keys,
      FLAGS_batches, FLAGS_warmup_batches, FLAGS_zipf_s, FLAGS_logical_shards, FLAGS_server_threads,
      run.dir.c_str());
  std::fflush(stdout);
  // Every server is killed and reaped inside RunAll, whichever way it returns.
  const absl::Status st = RunAll(run);
  if (FLAGS_keep) {
    std::fprintf(stderr, "# kept %s\n", run.dir.c_str());
  } else {
    std::error_code ec;
    std::filesystem::remove_all(run.dir, ec);
  }
  if (!st.ok()) {
    std::fprintf(stderr, "storage_bench: %s\n", st.ToString().c_str());
    return 1;
  }
  return 0;
}

}  // namespace
}  // namespace ember::bench

int main(int argc, char** argv) {
  FLAGS_logtostderr = true;  // a bench's log belongs next to its figures; --nologtostderr overrides
  gflags::SetUsageMessage(
      "storage_bench: pull+push with a memory budget, checkpoint write and restore "
      "(see bench/README.md)");
  gflags::ParseCommandLineFlags(&argc, &argv, true);
  google::InitGoogleLogging(argv[0]);
  // As `ember server` does; the forked servers inherit it.
  ember::net::TuneAllocatorForMessages();
  return ember::bench::Main();
}
