// ps_bench: throughput of the parameter server alone. One server process and
// one worker process (PsClient) talk over tcp://127.0.0.1, and a raw ZeroMQ
// stream of the same message sizes, measured in the same run, gives the
// ceiling each figure is compared with. Figures go to stdout as key=value
// lines; bench/README.md says what each key means.
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>
#include <zmq.hpp>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/notification.h"
#include "bench/bench_util.h"
#include "gflags/gflags.h"
#include "net/memory.h"
#include "glog/logging.h"
#include "net/transport.h"
#include "proto/config.pb.h"
#include "proto/keys.h"
#include "proto/wire.pb.h"
#include "ps/routing.h"
#include "ps/server.h"
#include "worker/ps_client.h"

DEFINE_string(patterns, "pslite,zipf,curve",
              "Comma-separated patterns to run: pslite, zipf, curve (the zipf passes on a plain server and on a "
              "CURVE one, alternated).");
DEFINE_int32(curve_rounds, 3, "curve pattern: timed pull and push passes per server, alternated; the best counts.");
DEFINE_uint64(pslite_keys, 10'000'000,
              "ps-lite pattern: distinct keys in the one push and the one pull.");
DEFINE_int32(pslite_rounds, 4,
             "ps-lite pattern: push+pull rounds. Round 1's push creates the rows; later pushes "
             "update them.");
DEFINE_string(zipf_dims, "16,64", "Realistic pattern: embedding dims to run, one table each.");
DEFINE_int32(zipf_batch_keys, 50'000, "Realistic pattern: distinct keys per batch.");
DEFINE_int32(zipf_batches, 200,
             "Realistic pattern: batches per pass (pull, push, pull again) and dim.");
DEFINE_uint64(zipf_ids, 50'000'000, "Realistic pattern: number of possible feature ids.");
DEFINE_double(zipf_exponent, 1.05, "Realistic pattern: Zipf exponent s, P(id k) ~ k^-s.");
DEFINE_int32(inflight, 4,
             "Realistic pattern: requests kept outstanding, as a worker's pipeline does.");
DEFINE_int32(server_threads, 2, "Server request handler threads (cluster.server_threads).");
DEFINE_int32(logical_shards, 1024, "Logical shards (cluster.num_logical_shards).");
DEFINE_uint64(loopback_bytes, 1'000'000'000,
              "Bytes streamed by each loopback ceiling measurement.");
DEFINE_int32(loopback_min_messages, 8, "Fewest messages in a loopback measurement.");
DEFINE_int32(loopback_repeats, 3,
             "Loopback measurements per message size; the best is the ceiling.");
DEFINE_int32(gather_threads, 2,
             "Threads of the random-gather ceiling of the Zipf pulls (the machine's two cores).");
DEFINE_int32(gather_repeats, 3, "Gather ceiling measurements per dim; the best is the ceiling.");
DEFINE_uint64(seed, 1, "Seed of the key streams.");
DEFINE_int32(timeout_s, 300,
             "Seconds a request may wait for its reply (generous for runs under valgrind).");

namespace ember::bench {
namespace {

// Keys are Hash64(slot, id) of the id's eight bytes, as a worker hashes raw
// feature values; each pattern uses its own slot.
uint64_t KeyOf(uint32_t slot, uint64_t id) {
  char bytes[8];
  std::memcpy(bytes, &id, 8);
  return proto::Hash64(slot, std::string_view(bytes, 8));
}

// ---------------------------------------------------------------------------
// The server process.

proto::JobConfig MakeConfig(const std::vector<uint32_t>& zipf_dims) {
  proto::JobConfig config;
  auto add_table = [&config](const std::string& name, uint32_t dim) {
    proto::TableConfig* t = config.add_tables();
    t->set_name(name);
    t->set_dim(dim);
    t->mutable_optimizer()->set_kind(proto::OptimizerConfig::ADAGRAD);
  };
  add_table("pslite", 1);                                              // table 0
  for (uint32_t d : zipf_dims) add_table(absl::StrCat("zipf", d), d);  // tables 1..
  config.mutable_cluster()->set_num_logical_shards(FLAGS_logical_shards);
  config.mutable_cluster()->set_server_threads(FLAGS_server_threads);
  config.mutable_model()->mutable_dense_optimizer()->set_kind(proto::OptimizerConfig::SGD);
  return config;
}

proto::ShardMap OneServerMap(uint32_t shards) {
  proto::ShardMap map;
  map.set_num_logical_shards(shards);
  for (uint32_t s = 0; s < shards; ++s) map.add_server_rank(0);
  return map;
}

// ---------------------------------------------------------------------------
// The loopback ceiling.

void NoFree(void*, void*) {}

// Bytes/s that one ZeroMQ PUSH->PULL stream over tcp 127.0.0.1 moves in
// messages of `size` bytes: what any reply of that size could reach on this
// machine now. Like the transport it sends without copying, receives into
// ZeroMQ's own buffers and uses 4 MB socket buffers; each end has its own
// context (so its own I/O thread), as the server and the worker do. Unlike a
// pull it carries no request, no header and no copy into the caller's array.
absl::StatusOr<double> LoopbackBytesPerSec(size_t size) {
  const uint64_t count =
      std::max<uint64_t>({1, static_cast<uint64_t>(std::max(0, FLAGS_loopback_min_messages)),
                          FLAGS_loopback_bytes / size});
  // Connection set-up and the first buffer growth stay out of the timing.
  constexpr uint64_t kWarmup = 2;
  try {
    zmq::context_t rx_ctx(1), tx_ctx(1);
    zmq::socket_t rx(rx_ctx, zmq::socket_type::pull);
    zmq::socket_t tx(tx_ctx, zmq::socket_type::push);
    for (zmq::socket_t* s : {&rx, &tx}) {
      s->set(zmq::sockopt::sndbuf, 4 << 20);
      s->set(zmq::sockopt::rcvbuf, 4 << 20);
      s->set(zmq::sockopt::linger, 0);
    }
    rx.bind("tcp://127.0.0.1:*");
    tx.connect(rx.get(zmq::sockopt::last_endpoint));
    std::vector<uint8_t> payload(size, 1);
    absl::Notification warm;
    Clock::time_point end;
    std::thread receiver([&] {
      zmq::message_t m;
      for (uint64_t i = 0; i < kWarmup + count; ++i) {
        (void)rx.recv(m);
        if (i + 1 == kWarmup) warm.Notify();
      }
      end = Clock::now();
    });
    auto send = [&] {
      zmq::message_t m(payload.data(), size, &NoFree);
      tx.send(m, zmq::send_flags::none);
    };
    for (uint64_t i = 0; i < kWarmup; ++i) send();
    // The clock starts on this side once the warm-up has arrived: a receiver
    // that starts late (a busy machine) must not see a queue built up
    // before its clock started.
    warm.WaitForNotification();
    const Clock::time_point start = Clock::now();
    for (uint64_t i = 0; i < count; ++i) send();
    receiver.join();
    return static_cast<double>(size) * count / std::chrono::duration<double>(end - start).count();
  } catch (const zmq::error_t& e) {
    return absl::InternalError(absl::StrCat("loopback stream: ", e.what()));
  }
}

// Measures each message size once per run, just before the pattern that needs
// it, so the ceiling sees the same machine load as the pattern.
class Ceilings {
 public:
  absl::StatusOr<double> Get(size_t size) {
    auto it = cache_.find(size);
    if (it != cache_.end()) return it->second;
    // The best of a few: a ceiling, and a busy machine only ever lowers it,
    // so the ratios err against ember.
    double best = 0;
    for (int i = 0; i < FLAGS_loopback_repeats; ++i) {
      absl::StatusOr<double> bps = LoopbackBytesPerSec(size);
      if (!bps.ok()) return bps.status();
      best = std::max(best, *bps);
    }
    Print(absl::StrCat("zmq_loopback_bytes_per_sec_", size), best);
    cache_[size] = best;
    return best;
  }

 private:
  std::map<size_t, double> cache_;
};

// Cores that the worker and the server processes kept busy together over a
// phase. Near nproc means the phase was CPU-bound (the figure is what this
// machine's cores can do); well below means it waited (on one thread, on
// latency). It also logs the phase's CLOCK_MONOTONIC interval, so that a
// profile (perf record -k CLOCK_MONOTONIC) can be cut to one phase.
class CpuMeter {
 public:
  explicit CpuMeter(pid_t server) : server_(server) { Restart(); }
  void Restart() {
    t0_ = Clock::now();
    mono0_ = MonotonicSeconds();
    cpu0_ = Cpu();
  }
  double cpu_seconds() const { return Cpu() - cpu0_; }
  // Logs "# phase <name>: <start>,<end>" to stderr; returns the cores used.
  double Finish(const std::string& phase) const {
    const double cores = cpu_seconds() / Since(t0_);
    std::fprintf(stderr, "# phase %s: monotonic %.6f,%.6f cores %.2f\n", phase.c_str(), mono0_,
                 MonotonicSeconds(), cores);
    return cores;
  }

 private:
  double Cpu() const { return CpuSeconds(getpid()) + CpuSeconds(server_); }
  pid_t server_;
  Clock::time_point t0_;
  double mono0_ = 0;
  double cpu0_ = 0;
};

// What every pattern runs against.
struct Context {
  worker::PsClient& ps;
  const proto::ShardMap& map;
  Ceilings& ceilings;
  pid_t server_pid;
};

// ---------------------------------------------------------------------------
// Pattern 1: ps-lite's test_kv_app_benchmark.

// One push, then one pull, of N distinct keys with one float each, each as
// ONE call: KeyRouter grouping + PsClient call + Wait, the way a caller with
// an unordered key list would use ember. Round 1's push creates the rows.
absl::Status RunPsLite(Context& ctx) {
  constexpr uint32_t kTable = 0;
  worker::PsClient& ps = ctx.ps;
  const size_t n = FLAGS_pslite_keys;
  if (n == 0 || FLAGS_pslite_rounds < 1)
    return absl::InvalidArgumentError("--pslite_keys and --pslite_rounds >= 1");
  absl::StatusOr<double> ceiling = ctx.ceilings.Get(n * sizeof(float));
  if (!ceiling.ok()) return ceiling.status();

  std::vector<uint64_t> keys(n);
  for (size_t i = 0; i < n; ++i) keys[i] = KeyOf(1, FLAGS_seed * 0x100000000ULL + i);
  auto grads = std::make_shared<std::vector<float>>(n);
  for (size_t i = 0; i < n; ++i) (*grads)[i] = (i % 2 ? 0.01f : -0.01f);
  std::vector<float> out(n, 0.0f);  // written once so page faults stay out of the timing
  ps::KeyRouter router(ctx.map, ps.num_servers());
  std::vector<uint32_t> server_begin;
  auto grouped = std::make_shared<std::vector<uint64_t>>();
  // A worker reuses its buffers; one untimed grouping sizes and faults them.
  router.Group(keys, grouped.get(), &server_begin, nullptr);

  std::vector<double> group_s, push_s, pull_s;
  double create_cores = 0, pull_cpu = 0;
  // The buffer is reusable once the transport has dropped its frames; if a
  // free callback is still pending, take a new one (rare, and counted in).
  auto group = [&] {
    const Clock::time_point t0 = Clock::now();
    if (grouped.use_count() > 1) {
      std::fprintf(stderr, "# pslite: key buffer still held by the transport; using a new one\n");
      grouped = std::make_shared<std::vector<uint64_t>>();
    }
    router.Group(keys, grouped.get(), &server_begin, nullptr);
    group_s.push_back(Since(t0));
  };
  for (int round = 0; round < FLAGS_pslite_rounds; ++round) {
    CpuMeter cpu(ctx.server_pid);
    Clock::time_point t0 = Clock::now();
    group();
    worker::PsClient::Ticket push = ps.Push(kTable, grouped, server_begin, grads);
    if (absl::Status st = ps.Wait(push); !st.ok()) return st;
    push_s.push_back(Since(t0));
    const double push_cores = cpu.Finish(absl::StrCat("pslite_push_round", round + 1));
    if (round == 0) create_cores = push_cores;

    cpu.Restart();
    t0 = Clock::now();
    group();
    worker::PsClient::Ticket pull = ps.Pull(kTable, grouped, server_begin, out.data());
    if (absl::Status st = ps.Wait(pull); !st.ok()) return st;
    pull_s.push_back(Since(t0));
    pull_cpu += cpu.cpu_seconds();
    cpu.Finish(absl::StrCat("pslite_pull_round", round + 1));
    std::fprintf(stderr, "# pslite round %d: push %.3f s, pull %.3f s\n", round + 1, push_s.back(),
                 pull_s.back());
  }
  // Not a figure, but a pull that returned nothing would flatter every figure.
  if (std::all_of(out.begin(), out.end(), [](float v) { return v == 0.0f; })) {
    return absl::InternalError("pslite pull returned only zeros");
  }

  const double n_d = static_cast<double>(n);
  Print("pslite_keys", n_d);
  Print("pslite_push_create_keys_per_sec", n_d / push_s[0]);
  Print("pslite_push_create_cpu_cores", create_cores);
  if (push_s.size() > 1) {
    Print("pslite_push_keys_per_sec",
          n_d / Median(std::vector<double>(push_s.begin() + 1, push_s.end())));
  }
  const double pull_rate = n_d / Median(pull_s);
  Print("pslite_pull_keys_per_sec", pull_rate);
  Print("pslite_pull_best_keys_per_sec", n_d / *std::min_element(pull_s.begin(), pull_s.end()));
  Print("pslite_pull_bytes_per_sec", pull_rate * sizeof(float));
  double pull_wall = 0;
  for (double t : pull_s) pull_wall += t;
  Print("pslite_pull_cpu_cores", pull_cpu / pull_wall);
  Print("pslite_group_keys_per_sec", n_d / Median(group_s));
  Print("pslite_pull_bandwidth_ratio", pull_rate * sizeof(float) / *ceiling);
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------
// Pattern 2: realistic batches.

struct Batch {
  std::shared_ptr<const std::vector<uint64_t>> keys;  // grouped by (server, shard)
  std::vector<uint32_t> server_begin;
};

// Batches of `batch_keys` distinct keys, each drawn from Zipf over the ids
// and grouped as the worker's BatchBuilder does on its reader thread, which
// is why the grouping is done here, untimed. Generated on every core before
// the timing, so that drawing costs nothing during it. *distinct counts the
// distinct keys over all batches (the rows the server ends up holding).
std::vector<Batch> MakeZipfBatches(const proto::ShardMap& map, size_t* distinct) {
  const int n = FLAGS_zipf_batches;
  const size_t batch_keys = FLAGS_zipf_batch_keys;
  const ZipfSampler zipf(FLAGS_zipf_ids, FLAGS_zipf_exponent);
  std::vector<Batch> batches(n);
  const int threads = std::max(1u, std::thread::hardware_concurrency());
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      ps::KeyRouter router(map, 1);
      absl::flat_hash_set<uint64_t> ids;
      std::vector<uint64_t> keys;
      for (int b = t; b < n; b += threads) {
        // Seeded per batch, so batch b is the same whatever the thread count.
        std::mt19937_64 rng(FLAGS_seed * 1'000'003 + b);
        ids.clear();
        while (ids.size() < batch_keys) ids.insert(zipf(rng));
        keys.clear();
        for (uint64_t id : ids) keys.push_back(KeyOf(2, id));
        auto grouped = std::make_shared<std::vector<uint64_t>>();
        router.Group(keys, grouped.get(), &batches[b].server_begin, nullptr);
        batches[b].keys = std::move(grouped);
      }
    });
  }
  for (std::thread& t : pool) t.join();
  absl::flat_hash_set<uint64_t> all;
  for (const Batch& b : batches) all.insert(b.keys->begin(), b.keys->end());
  *distinct = all.size();
  return batches;
}

// The gather ceiling of a Zipf pull: the keys/s at which --gather_threads
// threads copy the rows of the batches' keys (`dim` floats each) out of a
// plain array holding one row per distinct key, into one reply buffer per
// batch. This is the memory work of a pull with nothing else: no hash lookup,
// no network, no request. The rows are numbered in order of first
// appearance, as a server's slabs fill in first-touch order, and the keys are
// the batches' own (the same Zipf stream, in the same order), so the cache
// sees the hot rows a pull sees. Thread t takes batches t, t + threads, ...
// Measured --gather_repeats times; the best is kept (a busy machine only
// lowers it, so the ratio errs against ember).
class GatherCeiling {
 public:
  explicit GatherCeiling(const std::vector<Batch>& batches) {
    absl::flat_hash_map<uint64_t, uint32_t> row_of;
    rows_.resize(batches.size());
    for (size_t b = 0; b < batches.size(); ++b) {
      rows_[b].reserve(batches[b].keys->size());
      for (uint64_t k : *batches[b].keys) {
        const auto [it, added] = row_of.try_emplace(k, static_cast<uint32_t>(row_of.size()));
        rows_[b].push_back(it->second);
      }
    }
    distinct_ = row_of.size();
  }

  double KeysPerSec(uint32_t dim) const {
    const int threads = std::max(1, FLAGS_gather_threads);
    // Aligned to a cache line, so that a row of 16 floats is one line: the
    // server's rows are not aligned, so this errs against ember.
    const size_t floats = distinct_ * dim;
    std::unique_ptr<float, decltype(&std::free)> table(
        static_cast<float*>(std::aligned_alloc(64, (floats * sizeof(float) + 63) / 64 * 64)),
        &std::free);
    CHECK(table != nullptr);
    for (size_t i = 0; i < floats; ++i) table.get()[i] = static_cast<float>(i % 1024);
    size_t max_batch = 0, keys = 0;
    for (const auto& r : rows_) {
      max_batch = std::max(max_batch, r.size());
      keys += r.size();
    }
    std::vector<std::vector<float>> out(threads, std::vector<float>(max_batch * dim, 0.0f));
    std::vector<double> check(threads, 0);
    double best = 0;
    for (int rep = 0; rep < std::max(1, FLAGS_gather_repeats); ++rep) {
      std::vector<std::thread> pool;
      const Clock::time_point t0 = Clock::now();
      for (int t = 0; t < threads; ++t) {
        pool.emplace_back([&, t] {
          float* o = out[t].data();
          for (size_t b = t; b < rows_.size(); b += threads) {
            const std::vector<uint32_t>& r = rows_[b];
            for (size_t j = 0; j < r.size(); ++j) {
              std::memcpy(o + j * dim, table.get() + size_t{r[j]} * dim, dim * sizeof(float));
            }
            check[t] += o[(r.size() - 1) * dim];  // keeps the copies
          }
        });
      }
      for (std::thread& th : pool) th.join();
      best = std::max(best, static_cast<double>(keys) / Since(t0));
    }
    if (check[0] < 0) std::fprintf(stderr, "# gather: %g\n", check[0]);
    return best;
  }

 private:
  std::vector<std::vector<uint32_t>> rows_;  // per batch: row numbers of its keys
  size_t distinct_ = 0;
};

// Runs ops 0..n-1 with up to FLAGS_inflight outstanding, waiting for the
// oldest before starting the next, as a worker's pipeline does. `start(i,
// slot)` starts op i; `slot` (i mod inflight) is free for its buffers.
// Returns the seconds from the first start to the last Wait.
template <typename StartFn>
absl::StatusOr<double> RunPipelined(worker::PsClient& ps, int n, StartFn start) {
  std::deque<worker::PsClient::Ticket> q;
  const size_t depth = std::max(1, FLAGS_inflight);
  const Clock::time_point t0 = Clock::now();
  for (int i = 0; i < n; ++i) {
    if (q.size() == depth) {
      if (absl::Status st = ps.Wait(q.front()); !st.ok()) return st;
      q.pop_front();
    }
    q.push_back(start(i, static_cast<size_t>(i) % depth));
  }
  for (worker::PsClient::Ticket& t : q) {
    if (absl::Status st = ps.Wait(t); !st.ok()) return st;
  }
  return Since(t0);
}

// Three passes over the batches, each with FLAGS_inflight requests
// outstanding: pull all (the first touch of a key creates its row, as a
// worker's first pull of a new id does), push all (every row exists by then,
// as in training, where a batch's pull precedes its push), pull all again
// (rows exist: the steady state of a long run, whose batches are mostly ids
// seen before).
absl::Status RunZipfDim(Context& ctx, uint32_t table, uint32_t dim,
                        const std::vector<Batch>& batches, const GatherCeiling& gather) {
  worker::PsClient& ps = ctx.ps;
  const size_t batch_keys = FLAGS_zipf_batch_keys;
  const size_t row_floats = batch_keys * dim;
  absl::StatusOr<double> ceiling = ctx.ceilings.Get(row_floats * sizeof(float));
  if (!ceiling.ok()) return ceiling.status();

  const size_t depth = std::max(1, FLAGS_inflight);
  std::vector<std::vector<float>> out(depth, std::vector<float>(row_floats, 0.0f));
  const int n = static_cast<int>(batches.size());
  auto pull = [&](int i, size_t slot) {
    return ps.Pull(table, batches[i].keys, batches[i].server_begin, out[slot].data());
  };
  CpuMeter cpu(ctx.server_pid);
  absl::StatusOr<double> first_pull_s = RunPipelined(ps, n, pull);
  if (!first_pull_s.ok()) return first_pull_s.status();
  const double first_pull_cores = cpu.Finish(absl::StrCat("zipf", dim, "_pull_first"));

  auto grads = std::make_shared<std::vector<float>>(row_floats);
  for (size_t i = 0; i < row_floats; ++i) (*grads)[i] = (i % 3 == 0 ? 0.02f : -0.01f);
  cpu.Restart();
  absl::StatusOr<double> push_s = RunPipelined(ps, n, [&](int i, size_t) {
    return ps.Push(table, batches[i].keys, batches[i].server_begin, grads);
  });
  if (!push_s.ok()) return push_s.status();
  const double push_cores = cpu.Finish(absl::StrCat("zipf", dim, "_push"));

  cpu.Restart();
  absl::StatusOr<double> pull_s = RunPipelined(ps, n, pull);
  if (!pull_s.ok()) return pull_s.status();
  const double pull_cores = cpu.Finish(absl::StrCat("zipf", dim, "_pull"));
  std::fprintf(stderr, "# zipf%u: %d batches, first pull %.3f s, push %.3f s, pull %.3f s\n", dim,
               n, *first_pull_s, *push_s, *pull_s);

  const double keys = static_cast<double>(batch_keys) * n;
  const double bytes = keys * dim * sizeof(float);
  const std::string prefix = absl::StrCat("zipf", dim, "_");
  Print(prefix + "pull_first_keys_per_sec", keys / *first_pull_s);
  Print(prefix + "pull_first_bandwidth_ratio", bytes / *first_pull_s / *ceiling);
  Print(prefix + "pull_first_cpu_cores", first_pull_cores);
  Print(prefix + "push_keys_per_sec", keys / *push_s);
  Print(prefix + "push_cpu_cores", push_cores);
  Print(prefix + "pull_keys_per_sec", keys / *pull_s);
  Print(prefix + "pull_bytes_per_sec", bytes / *pull_s);
  // Measured after the passes, so that the server's table is already whole
  // (as in the pull pass) when this process allocates the plain one.
  const double gather_rate = gather.KeysPerSec(dim);
  Print(prefix + "gather_keys_per_sec", gather_rate);
  Print(prefix + "pull_gather_ratio", keys / *pull_s / gather_rate);
  Print(prefix + "pull_cpu_cores", pull_cores);
  return absl::OkStatus();
}

absl::Status RunZipf(Context& ctx, const std::vector<uint32_t>& dims) {
  // Drawing a batch of distinct ids from barely more ids than the batch holds
  // would take forever (the rare ids have to come up too), hence the 2x.
  if (FLAGS_zipf_batches < 1 || FLAGS_zipf_batch_keys < 1 ||
      FLAGS_zipf_ids < 2 * uint64_t(FLAGS_zipf_batch_keys) || FLAGS_zipf_exponent <= 0) {
    return absl::InvalidArgumentError(
        "need --zipf_batches >= 1, --zipf_batch_keys >= 1, --zipf_ids >= 2 * --zipf_batch_keys, "
        "--zipf_exponent > 0");
  }
  const Clock::time_point t0 = Clock::now();
  size_t distinct = 0;
  const std::vector<Batch> batches = MakeZipfBatches(ctx.map, &distinct);
  std::fprintf(stderr, "# zipf: %zu batches generated in %.1f s\n", batches.size(), Since(t0));
  Print("zipf_batches", batches.size());
  Print("zipf_batch_keys", FLAGS_zipf_batch_keys);
  Print("zipf_distinct_keys", static_cast<double>(distinct));
  const GatherCeiling gather(batches);
  // The same key stream for every dim: each dim has its own table, so each
  // starts empty and sees the same first-touch pattern.
  for (size_t i = 0; i < dims.size(); ++i) {
    if (absl::Status st = RunZipfDim(ctx, static_cast<uint32_t>(1 + i), dims[i], batches, gather);
        !st.ok()) {
      return st;
    }
  }
  return absl::OkStatus();
}

// Pattern 3: what CURVE costs (docs/security.md). The same Zipf batches go
// to two servers of the same config, one plain and one whose links are
// encrypted and authenticated; after a pass that creates every row, pull
// and push passes alternate between the two, so both see the same machine
// noise, and the best pass of each counts.
absl::Status RunCurve(Context& plain, Context& curve, uint32_t table, uint32_t dim) {
  size_t distinct = 0;
  const std::vector<Batch> batches = MakeZipfBatches(plain.map, &distinct);
  const size_t row_floats = FLAGS_zipf_batch_keys * dim;
  const size_t depth = std::max(1, FLAGS_inflight);
  std::vector<std::vector<float>> out(depth, std::vector<float>(row_floats, 0.0f));
  auto grads = std::make_shared<std::vector<float>>(row_floats, 0.001f);
  const int n = static_cast<int>(batches.size());
  auto pass = [&](worker::PsClient& ps, bool push) {
    return RunPipelined(ps, n, [&](int i, size_t slot) {
      return push ? ps.Push(table, batches[i].keys, batches[i].server_begin, grads)
                  : ps.Pull(table, batches[i].keys, batches[i].server_begin, out[slot].data());
    });
  };
  for (Context* c : {&plain, &curve}) {
    if (absl::StatusOr<double> s = pass(c->ps, false); !s.ok()) return s.status();
  }
  double best[2][2] = {{1e30, 1e30}, {1e30, 1e30}};  // [curve][push]
  for (int r = 0; r < std::max(1, FLAGS_curve_rounds); ++r) {
    for (int push = 0; push < 2; ++push) {
      for (int k = 0; k < 2; ++k) {
        absl::StatusOr<double> s = pass(k ? curve.ps : plain.ps, push);
        if (!s.ok()) return s.status();
        best[k][push] = std::min(best[k][push], *s);
      }
    }
  }
  const double keys = static_cast<double>(FLAGS_zipf_batch_keys) * n;
  std::fprintf(stderr, "# curve: dim %u, %d batches, best pull %.3f s plain / %.3f s curve, push %.3f / %.3f s\n",
               dim, n, best[0][0], best[1][0], best[0][1], best[1][1]);
  Print("curve_plain_pull_keys_per_sec", keys / best[0][0]);
  Print("curve_pull_keys_per_sec", keys / best[1][0]);
  Print("curve_plain_push_keys_per_sec", keys / best[0][1]);
  Print("curve_push_keys_per_sec", keys / best[1][1]);
  Print("curve_pull_ratio", best[0][0] / best[1][0]);
  Print("curve_push_ratio", best[0][1] / best[1][1]);
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------

int Main() {
  bool want_pslite = false, want_zipf = false, want_curve = false;
  for (absl::string_view p : absl::StrSplit(FLAGS_patterns, ',', absl::SkipEmpty())) {
    if (p == "pslite") {
      want_pslite = true;
    } else if (p == "zipf") {
      want_zipf = true;
    } else if (p == "curve") {
      want_curve = true;
    } else {
      std::fprintf(stderr, "ps_bench: unknown pattern '%s' in --patterns\n",
                   std::string(p).c_str());
      return 2;
    }
  }
  std::vector<uint32_t> dims;
  for (absl::string_view d : absl::StrSplit(FLAGS_zipf_dims, ',', absl::SkipEmpty())) {
    uint32_t dim;
    if (!absl::SimpleAtoi(d, &dim) || dim < 1 || dim > 4096) {
      std::fprintf(stderr, "ps_bench: bad dim '%s' in --zipf_dims\n", std::string(d).c_str());
      return 2;
    }
    dims.push_back(dim);
  }
  if (FLAGS_logical_shards < 1 || FLAGS_server_threads < 1) {
    std::fprintf(stderr, "ps_bench: need --logical_shards >= 1 and --server_threads >= 1\n");
    return 2;
  }

  const proto::JobConfig config = MakeConfig(dims);
  const proto::ShardMap map = OneServerMap(FLAGS_logical_shards);
  // Before any thread or ZeroMQ context exists in this process; see ServerProcess.
  ps::ServerOptions so;
  so.config = config;
  so.shard_map = map;
  so.rank = 0;
  so.node_id = 1;
  so.dense_offset = 0;
  so.dense_init = {0.0f};  // the server insists on a dense slice; one float will do
  // CURVE keys for the second server and this process, made in memory.
  net::SecurityOptions server_keys, client_keys;
  std::unique_ptr<ServerProcess> curve_server;
  if (want_curve) {
    absl::StatusOr<net::KeyPair> s = net::GenerateKeyPair(), c = net::GenerateKeyPair();
    if (!s.ok() || !c.ok()) {
      std::fprintf(stderr, "ps_bench: %s\n", (s.ok() ? c.status() : s.status()).ToString().c_str());
      return 1;
    }
    server_keys.authorized = {{s->public_key, proto::SERVER}, {c->public_key, proto::WORKER}};
    client_keys.authorized = server_keys.authorized;
    server_keys.self = *s;
    client_keys.self = *c;
    absl::StatusOr<std::unique_ptr<ServerProcess>> cs = ServerProcess::Start(so, server_keys);
    if (!cs.ok()) {
      std::fprintf(stderr, "ps_bench: %s\n", cs.status().ToString().c_str());
      return 1;
    }
    curve_server = std::move(*cs);
  }
  absl::StatusOr<std::unique_ptr<ServerProcess>> server = ServerProcess::Start(std::move(so));
  if (!server.ok()) {
    std::fprintf(stderr, "ps_bench: %s\n", server.status().ToString().c_str());
    return 1;
  }

  std::printf(
      "# ps_bench: nproc=%u cpu=\"%s\" server_threads=%d logical_shards=%d inflight=%d "
      "zipf_ids=%llu zipf_exponent=%g\n",
      std::thread::hardware_concurrency(), CpuModel().c_str(), FLAGS_server_threads,
      FLAGS_logical_shards, FLAGS_inflight, static_cast<unsigned long long>(FLAGS_zipf_ids),
      FLAGS_zipf_exponent);
  absl::Status st;
  {
    auto client = [&](const std::string& endpoint,
                      const net::SecurityOptions& keys) -> absl::StatusOr<std::unique_ptr<worker::PsClient>> {
      proto::ClusterInfo cluster;
      proto::NodeInfo* node = cluster.add_nodes();
      node->set_id(1);
      node->set_role(proto::SERVER);
      node->set_rank(0);
      node->set_endpoint(endpoint);
      *cluster.mutable_shard_map() = map;
      cluster.mutable_dense()->set_total(1);
      cluster.mutable_dense()->add_offset(0);
      cluster.mutable_dense()->add_offset(1);
      *cluster.mutable_config() = config;
      worker::PsClientOptions po;
      po.cluster = cluster;
      po.node_id = 2;
      po.timeout = absl::Seconds(FLAGS_timeout_s);
      net::TransportOptions to;
      to.security = keys;
      absl::StatusOr<std::unique_ptr<net::Transport>> transport = net::CreateTransport(to);
      if (!transport.ok()) return transport.status();
      return worker::PsClient::Create(po, std::move(*transport));
    };
    absl::StatusOr<std::unique_ptr<worker::PsClient>> ps = client((*server)->endpoint(), {});
    Ceilings ceilings;
    if (!ps.ok()) st = ps.status();
    if (st.ok()) {
      Context ctx{**ps, map, ceilings, (*server)->pid()};
      if (want_pslite) st = RunPsLite(ctx);
      if (st.ok() && want_zipf) st = RunZipf(ctx, dims);
      if (st.ok()) Print("server_peak_rss_bytes", PeakRssBytes(ctx.server_pid));
      if (st.ok() && want_curve) {
        absl::StatusOr<std::unique_ptr<worker::PsClient>> cps = client(curve_server->endpoint(), client_keys);
        if (!cps.ok()) st = cps.status();
        if (st.ok()) {
          Context cctx{**cps, map, ceilings, curve_server->pid()};
          st = RunCurve(ctx, cctx, 1, dims.empty() ? 16 : dims[0]);
        }
      }
    }
    // The client goes first: its transport would otherwise linger on
    // messages to a server that is already dead.
  }
  (*server)->Kill();
  if (curve_server) curve_server->Kill();
  if (!st.ok()) {
    std::fprintf(stderr, "ps_bench: %s\n", st.ToString().c_str());
    return 1;
  }
  return 0;
}

}  // namespace
}  // namespace ember::bench

int main(int argc, char** argv) {
  FLAGS_logtostderr = true;  // a bench's log belongs next to its figures; --nologtostderr overrides
  gflags::SetUsageMessage(
      "ps_bench: parameter-server throughput on loopback (see bench/README.md)");
  gflags::ParseCommandLineFlags(&argc, &argv, true);
  google::InitGoogleLogging(argv[0]);
  // As `ember server` and `ember worker` do; the forked server inherits it.
  ember::net::TuneAllocatorForMessages();
  return ember::bench::Main();
}
