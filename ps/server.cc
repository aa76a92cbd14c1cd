#include "ps/server.h"

#include <cstring>
#include <deque>
#include <filesystem>
#include <functional>
#include <optional>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "glog/logging.h"
#include "net/reject_log.h"
#include "net/security.h"
#include "net/validate.h"
#include "ps/dense_update.h"
#include "ps/memory_ceiling.h"
#include "proto/keys.h"
#include "storage/checkpoint_files.h"
#include "storage/shard_checkpoint.h"
#include "storage/sparse_table.h"
#include "storage/spill_store.h"
#include "storage/tiered_store.h"

namespace ember::ps {
namespace {

using storage::ShardTable;
using storage::TableSpec;
using storage::TieredStore;

constexpr int16_t kNotMine = -1;

struct Park;

// A run of consecutive request keys that fall in one logical shard.
struct KeyRun {
  uint32_t shard;
  size_t begin, end;
};

// One PULL or PUSH, shared by its parts on the handler threads.
struct Request {
  net::Message msg;  // keeps the request's frames alive
  bool is_push = false;
  uint32_t table = 0;
  const uint64_t* keys = nullptr;
  size_t num_keys = 0;
  const float* grads = nullptr;
  float* out = nullptr;  // PULL: num_keys x dim, owned by reply's frame
  // PUSH: this push's number (push_seq_ after it); PULL: push_seq_ at dispatch.
  uint64_t push_seq = 0;
  uint32_t generation = 0;  // the table's reset generation at dispatch
  uint16_t log_day = 0;   // PUSH: day of the batch's newest log timestamp, 0 if none
  // PULL with Header.read_only: no row is created or changed; keys without
  // a live row of `generation` get `default_value` (admission.default_value).
  bool read_only = false;
  float default_value = 0;
  // Set on a park order instead of a PULL/PUSH (see Server::Impl::Park).
  std::shared_ptr<struct Park> park;
  // Grouped requests (keys sorted by shard, as ember's client sends them):
  // runs per handler. Otherwise every handler scans all keys for its shards.
  bool grouped = false;
  std::vector<std::vector<KeyRun>> runs_by_handler;
  std::atomic<int> remaining{0};
  net::Message reply;
  // An error reply that replaces `reply` (a handler's part failed).
  absl::Mutex error_mu;
  std::optional<net::Message> failed ABSL_GUARDED_BY(error_mu);
};

// Parks every handler thread: each one, on reaching this order in its
// queue, checks in and waits until the I/O thread releases it.
struct Park {
  absl::Mutex mu;
  size_t expected = 0;
  size_t arrived ABSL_GUARDED_BY(mu) = 0;
  bool released ABSL_GUARDED_BY(mu) = false;
  bool AllArrived() const ABSL_SHARED_LOCKS_REQUIRED(mu) { return arrived == expected; }
};

// Seeds of the count-min sketch's rows.
constexpr uint64_t kSketchSeeds[4] = {0x243f6a8885a308d3ULL, 0x13198a2e03707344ULL, 0xa4093822299f31d0ULL,
                                      0x082efa98ec4e6c89ULL};

}  // namespace

class Server::Impl {
 public:
  Impl(ServerOptions options, std::unique_ptr<net::Transport> transport)
      : opt_(std::move(options)),
        transport_(std::move(transport)) {
    authenticates_ = transport_->authenticates();
  }

  ~Impl() {
    if (admin_thread_.joinable()) {
      {
        absl::MutexLock l(&admin_mu_);
        admin_quit_ = true;
      }
      admin_thread_.join();  // after the operation it runs, if any
    }
    for (auto& h : handlers_) h->Push(nullptr);
    for (auto& h : handlers_) h->thread.join();
    // The tiers read the spill store: they go first, then the store (which
    // removes its directory), then the job's spill directory if now empty.
    handlers_.clear();
    if (spill_ != nullptr) {
      spill_.reset();
      std::error_code ec;
      if (!opt_.job_id.empty()) {
        std::filesystem::remove(std::filesystem::path(opt_.config.storage().spill_path()) / opt_.job_id, ec);
      }
    }
  }

  absl::Status Init() {
    incarnation_.store(opt_.incarnation);
    const uint32_t L = opt_.config.cluster().num_logical_shards();
    if (opt_.shard_map.server_rank_size() != static_cast<int>(L)) {
      return absl::InvalidArgumentError(absl::StrCat("shard map has ", opt_.shard_map.server_rank_size(),
                                                     " entries, cluster.num_logical_shards is ", L));
    }
    // A path component under storage.spill_path: never "..", never a "/".
    for (char c : opt_.job_id) {
      if (!absl::ascii_isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '_') {
        return absl::InvalidArgumentError(absl::StrCat("job id '", opt_.job_id, "': only [A-Za-z0-9_-] allowed"));
      }
    }
    const uint32_t threads = opt_.config.cluster().server_threads();
    shard_handler_.assign(L, kNotMine);
    int local = 0;
    for (uint32_t s = 0; s < L; ++s) {
      if (opt_.shard_map.server_rank(s) == opt_.rank) shard_handler_[s] = static_cast<int16_t>(local++ % threads);
    }
    if (local == 0) LOG(WARNING) << "server rank " << opt_.rank << " owns no logical shard";
    std::vector<const TableSpec*> specs;
    std::vector<std::string> names;
    for (const proto::TableConfig& t : opt_.config.tables()) {
      specs_.push_back(std::make_unique<TableSpec>(t));
      specs.push_back(specs_.back().get());
      names.push_back(t.name());
    }
    table_generation_ = std::vector<std::atomic<uint32_t>>(specs_.size());
    const proto::StorageConfig& sc = opt_.config.storage();
    const uint64_t budget = sc.memory_budget_bytes();
    if (budget > 0) {
      storage::SpillStoreOptions so;
      so.path = (std::filesystem::path(sc.spill_path()) / opt_.job_id / absl::StrCat("server-", opt_.rank)).string();
      so.tables = names;
      so.block_cache_bytes = sc.block_cache_bytes();
      absl::StatusOr<std::unique_ptr<storage::SpillStore>> spill = storage::SpillStore::Open(so);
      if (!spill.ok()) return spill.status();
      spill_ = std::move(*spill);
      LOG(INFO) << "server " << opt_.rank << ": memory budget " << budget << " bytes, RocksDB tier at " << so.path;
    }
    if (absl::Status st = ChooseCeiling(budget, threads); !st.ok()) return st;
    for (uint32_t i = 0; i < threads; ++i) {
      auto h = std::make_unique<Handler>();
      h->index = i;
      std::vector<uint32_t> mine;
      for (uint32_t s = 0; s < L; ++s) {
        if (shard_handler_[s] == static_cast<int16_t>(i)) mine.push_back(s);
      }
      h->store = std::make_unique<TieredStore>(specs, mine, L, budget / threads, spill_.get());
      h->sketch.resize(specs_.size());
      h->table_rows.reset(new std::atomic<uint64_t>[specs_.size()]());
      h->ceiling = ceiling_ / threads;
      handlers_.push_back(std::move(h));
    }
    for (size_t t = 0; t < specs_.size(); ++t) {
      const proto::TableConfig& tc = opt_.config.tables(t);
      general_.push_back(spill_ != nullptr || Admits(tc));
    }
    if (!opt_.config.checkpoint().dir().empty()) {
      // Resolved once: what the operator configured may hold symlinks; below
      // it nothing a request names may.
      absl::StatusOr<storage::CheckpointRoot> root = storage::CheckpointRoot::Open(opt_.config.checkpoint().dir());
      if (!root.ok()) {
        LOG(WARNING) << "server " << opt_.rank << ": no checkpoint root, SAVE and RESTORE will be refused: "
                     << root.status();
        root_error_ = std::string(root.status().message());
      } else {
        root_ = std::move(*root);
      }
    }
    if (opt_.dense_total == 0) opt_.dense_total = opt_.dense_offset + opt_.dense_init.size();
    for (auto& h : handlers_) h->thread = std::thread([this, hp = h.get()] { HandlerLoop(hp); });
    admin_thread_ = std::thread([this] { AdminLoop(); });
    // The slice's trainable prefix; the rest is model state.
    const size_t trained = opt_.dense_state_begin <= opt_.dense_offset
                               ? 0
                               : std::min<uint64_t>(opt_.dense_init.size(), opt_.dense_state_begin - opt_.dense_offset);
    dense_ = std::make_unique<DenseUpdater>(opt_.config.model().dense_optimizer(), opt_.config.train().dense_update(),
                                            opt_.config.cluster().num_workers(), opt_.dense_init, trained,
                                            opt_.dense_state_rate);
    return absl::OkStatus();
  }

  absl::Status Run() {
    net::Message m;
    while (!stop_.load()) {
      absl::StatusOr<bool> got = transport_->Recv(&m, absl::Milliseconds(500));
      if (!got.ok()) return got.status();
      if (*got) Handle(std::move(m));
      FinishAdmin();
    }
    return absl::OkStatus();
  }

  void Stop() {
    stop_.store(true);
    transport_->Wake();
  }

  ServerStats stats() const {
    ServerStats s;
    s.pulls = pulls_.load();
    s.pushes = pushes_.load();
    s.pulled_keys = pulled_keys_.load();
    s.pushed_keys = pushed_keys_.load();
    s.errors = errors_.load();
    for (const auto& h : handlers_) {
      s.rows += h->rows.load(std::memory_order_relaxed);
      s.memory_bytes += h->memory.load(std::memory_order_relaxed);
      for (uint32_t t = 0; t < specs_.size(); ++t) {
        s.resident_bytes +=
            h->table_rows[t].load(std::memory_order_relaxed) * storage::ResidentRowCost(*specs_[t]);
        const storage::TierCounters& c = h->store->counters(t);
        s.hits += c.hits.load(std::memory_order_relaxed);
        s.misses += c.misses.load(std::memory_order_relaxed);
        s.evictions += c.evictions.load(std::memory_order_relaxed);
      }
    }
    if (spill_) {
      for (uint32_t t = 0; t < specs_.size(); ++t) s.spilled_rows += spill_->EstimatedRows(t);
    }
    s.max_resident_bytes = ceiling_;
    return s;
  }

 private:
  struct Handler {
    uint32_t index = 0;
    std::thread thread;
    // This handler's logical shards of every table.
    std::unique_ptr<TieredStore> store;
    // Per table: count-min sketch for admission (allocated on first use).
    std::vector<std::vector<uint16_t>> sketch;
    // Scratch of the general path.
    std::vector<uint64_t> keys;
    std::vector<uint32_t> shards, positions;
    std::vector<uint8_t*> rows_buf;
    std::atomic<uint64_t> rows{0}, memory{0};
    uint64_t ceiling = 0;  // this handler's share of the resident ceiling, bytes
    std::unique_ptr<std::atomic<uint64_t>[]> table_rows;  // per table
    uint32_t gauge_tick = 0;
    absl::Mutex mu;
    std::deque<std::shared_ptr<Request>> queue ABSL_GUARDED_BY(mu);

    void Push(std::shared_ptr<Request> r) {
      absl::MutexLock l(&mu);
      queue.push_back(std::move(r));
    }
    std::shared_ptr<Request> Pop() {
      absl::MutexLock l(&mu);
      mu.Await(absl::Condition(
          +[](std::deque<std::shared_ptr<Request>>* q) { return !q->empty(); }, &queue));
      auto r = std::move(queue.front());
      queue.pop_front();
      return r;
    }
  };

  void Reply(net::Message reply) {
    absl::Status st = transport_->Send(std::move(reply));
    if (!st.ok()) LOG(WARNING) << "reply not sent: " << st;
  }

  void Fail(const net::Message& request, proto::ErrorCode code, const std::string& why) {
    errors_.fetch_add(1);
    rejects_.Warn(absl::StrCat("server ", opt_.rank, ": rejected ", proto::Command_Name(request.header.command()),
                               " from node ", request.header.sender(), ": ", why));
    net::Message r = net::MakeErrorReply(request, code, why);
    r.header.set_sender(opt_.node_id);
    Reply(std::move(r));
  }

  // I/O thread: validate, then answer or hand to the handlers.
  void Handle(net::Message m) {
    if (m.header.is_reply()) return;  // servers send no requests; ignore stray replies
    // Who may send this comes first: a peer without the right role learns
    // nothing about the server, not even what is wrong with its frames.
    if (authenticates_) {
      if (absl::Status a = net::Authorize(proto::SERVER, m.peer_role, m.header); !a.ok()) {
        return Fail(m, proto::UNAUTHORIZED, std::string(a.message()));
      }
    }
    net::WireCheck check = net::ValidateMessage(m);
    if (!check.ok()) return Fail(m, check.code, check.why);
    const proto::Command c = m.header.command();
    if (deferring_ && c != proto::PING && c != proto::LIST_CHECKPOINTS) {
      // A RESTORE is loading: what arrives now is handled, in order, once it
      // is done (and checked against the incarnation it leaves).
      deferred_.push_back(std::move(m));
      return;
    }
    if ((c == proto::PULL || c == proto::PUSH || c == proto::DENSE_PULL || c == proto::DENSE_PUSH) &&
        m.header.incarnation() != incarnation_.load()) {
      // Sent before a recovery rolled the model back (or after, by a worker
      // that has not heard of it): it must not read or touch the new state.
      return Fail(m, proto::STALE_INCARNATION,
                  absl::StrCat("incarnation ", m.header.incarnation(), " is not the server's ", incarnation_.load(),
                               " (the job recovered in between)"));
    }
    switch (c) {
      case proto::PULL:
      case proto::PUSH:
        if (m.header.num_keys() > opt_.config.cluster().max_keys_per_request()) {
          return Fail(m, proto::BAD_SIZE,
                      absl::StrCat(proto::Command_Name(c), " names ", m.header.num_keys(),
                                   " keys; cluster.max_keys_per_request is ",
                                   opt_.config.cluster().max_keys_per_request()));
        }
        return HandleSparse(std::move(m));
      case proto::DENSE_PULL:
        return HandleDensePull(m);
      case proto::DENSE_PUSH:
        return HandleDensePush(m);
      case proto::PING: {
        net::Message r = net::MakeReply(m);
        r.header.set_sender(opt_.node_id);
        return Reply(std::move(r));
      }
      case proto::SAVE:
      case proto::RESTORE:
      case proto::SWEEP:
      case proto::STATS:
        return HandleAdmin(std::move(m));
      case proto::LIST_CHECKPOINTS: {
        net::Message r = net::MakeReply(m);
        r.header.set_sender(opt_.node_id);
        absl::StatusOr<std::string> dir = ResolveCheckpointPath(m.header.list().root(), /*allow_root=*/true);
        if (!dir.ok()) return FailStatus(m, dir.status());
        for (auto& c : storage::ListCheckpoints(*dir)) {
          // Named as requests name them: relative to the checkpoint root.
          c.set_dir(std::filesystem::path(c.dir()).lexically_relative(root_.path()).generic_string());
          *r.header.mutable_list_reply()->add_checkpoints() = std::move(c);
        }
        return Reply(std::move(r));
      }
      case proto::RESET_TABLE:
        return HandleReset(m);
      default:
        return Fail(m, proto::UNKNOWN_COMMAND,
                    absl::StrCat("a server does not serve ", proto::Command_Name(m.header.command())));
    }
  }

  void HandleSparse(net::Message m) {
    const proto::Header& h = m.header;
    const bool is_push = h.command() == proto::PUSH;
    if (h.table() >= specs_.size()) {
      return Fail(m, proto::UNKNOWN_TABLE,
                  absl::StrCat("table ", h.table(), " does not exist (the job has ", specs_.size(), ")"));
    }
    const TableSpec& spec = *specs_[h.table()];
    if (h.dim() != spec.dim()) {
      return Fail(m, proto::BAD_SIZE,
                  absl::StrCat("table '", spec.config().name(), "' has dim ", spec.dim(), ", request says ", h.dim()));
    }
    if (is_push && h.read_only()) return Fail(m, proto::BAD_REQUEST, "read_only is for PULL, not PUSH");
    auto req = std::make_shared<Request>();
    req->is_push = is_push;
    req->read_only = h.read_only();
    req->default_value = spec.config().admission().default_value();
    req->table = h.table();
    req->num_keys = h.num_keys();
    req->keys = m.frames[0].As<uint64_t>().data();
    if (is_push) req->grads = m.frames[1].As<float>().data();

    // One pass: check every key is ours, and find the shard runs.
    const uint32_t L = static_cast<uint32_t>(shard_handler_.size());
    const size_t threads = handlers_.size();
    req->runs_by_handler.resize(threads);
    const size_t max_runs = req->num_keys / 8 + 64;
    size_t runs = 0;
    uint32_t prev = UINT32_MAX;
    bool grouped = true;
    for (size_t i = 0; i < req->num_keys; ++i) {
      const uint32_t s = proto::ShardOf(req->keys[i], L);
      if (s == prev) continue;
      const int16_t owner = shard_handler_[s];
      if (owner == kNotMine) {
        return Fail(m, proto::WRONG_SERVER,
                    absl::StrCat("key ", req->keys[i], " is in logical shard ", s, ", owned by server ",
                                 opt_.shard_map.server_rank(s), ", not ", opt_.rank));
      }
      if (grouped) {
        if (++runs > max_runs) {
          grouped = false;
          for (auto& r : req->runs_by_handler) r.clear();
        } else {
          req->runs_by_handler[owner].push_back(KeyRun{s, i, i});
        }
      }
      prev = s;
    }
    if (grouped) {
      // Each run ends where the next run (in key order) begins.
      std::vector<KeyRun*> all;
      for (auto& v : req->runs_by_handler)
        for (auto& r : v) all.push_back(&r);
      std::sort(all.begin(), all.end(), [](KeyRun* a, KeyRun* b) { return a->begin < b->begin; });
      for (size_t k = 0; k < all.size(); ++k) all[k]->end = k + 1 < all.size() ? all[k + 1]->begin : req->num_keys;
    }
    req->grouped = grouped;

    req->reply = net::MakeReply(m);
    req->reply.header.set_sender(opt_.node_id);
    req->reply.header.set_table(h.table());
    req->reply.header.set_num_keys(h.num_keys());
    req->reply.header.set_dim(h.dim());
    if (!is_push) {
      const size_t floats = req->num_keys * spec.dim();
      std::shared_ptr<float[]> out(new float[floats]);  // every float is written by a handler
      req->out = out.get();
      req->reply.frames.push_back(net::Frame::Borrow(out, out.get(), floats * sizeof(float)));
      pulls_.fetch_add(1, std::memory_order_relaxed);
      pulled_keys_.fetch_add(req->num_keys, std::memory_order_relaxed);
      req->push_seq = push_seq_.load(std::memory_order_relaxed);
    } else {
      req->push_seq = push_seq_.fetch_add(1, std::memory_order_relaxed) + 1;
      pushes_.fetch_add(1, std::memory_order_relaxed);
      pushed_keys_.fetch_add(req->num_keys, std::memory_order_relaxed);
      if (h.log_time() > 0) {
        req->log_day = static_cast<uint16_t>(std::min<uint64_t>(h.log_time() / 86400, UINT16_MAX));
        if (req->log_day > log_day_.load(std::memory_order_relaxed)) log_day_.store(req->log_day);
      }
    }
    req->generation = table_generation_[h.table()].load(std::memory_order_relaxed);
    req->msg = std::move(m);

    std::vector<Handler*> involved;
    for (size_t t = 0; t < threads; ++t) {
      if (!grouped || !req->runs_by_handler[t].empty()) involved.push_back(handlers_[t].get());
    }
    if (involved.empty()) return Reply(std::move(req->reply));  // no keys
    req->remaining.store(static_cast<int>(involved.size()));
    for (Handler* hd : involved) hd->Push(req);
  }

  void HandlerLoop(Handler* h) {
    for (;;) {
      std::shared_ptr<Request> req = h->Pop();
      if (!req) return;
      if (req->park != nullptr) {
        Park& p = *req->park;
        absl::MutexLock l(&p.mu);
        ++p.arrived;
        p.mu.Await(absl::Condition(&p.released));
        continue;
      }
      const TableSpec& spec = *specs_[req->table];
      if (std::string over = OverCeiling(h, *req, spec); !over.empty()) {
        FailPart(*req, proto::RESOURCE_EXHAUSTED, over);
      } else if (general_[req->table]) {
        absl::Status st = ProcessGeneral(h, *req, spec);
        if (!st.ok()) {
          // The RocksDB tier failed: answer with the error, keep serving.
          LOG(ERROR) << "server " << opt_.rank << ": " << st;
          errors_.fetch_add(1);
          net::Message r = net::MakeErrorReply(req->msg, proto::INTERNAL, std::string(st.message()));
          r.header.set_sender(opt_.node_id);
          absl::MutexLock l(&req->error_mu);
          req->failed = std::move(r);
        }
      } else {
        TieredStore& store = *h->store;
        size_t created = 0;
        if (req->grouped) {
          for (const KeyRun& r : req->runs_by_handler[h->index]) {
            created += Process(*req, spec, store.table(req->table, r.shard), r.begin, r.end);
          }
        } else {
          ForEachMine(*h, *req, [&](size_t i, uint32_t s) {
            created += Process(*req, spec, store.table(req->table, s), i, i + 1);
          });
        }
        store.ChargeCreated(req->table, created);
      }
      UpdateGauges(h);
      if (req->remaining.fetch_sub(1, std::memory_order_acq_rel) == 1) {
        absl::MutexLock l(&req->error_mu);
        transport_->Post(req->failed ? std::move(*req->failed) : std::move(req->reply));
      }
    }
  }

  static bool Admits(const proto::TableConfig& tc) {
    return tc.has_admission() && (tc.admission().min_count() > 1 || tc.admission().probability() < 1.0f);
  }

  // A push of a key without a row: count it, and say whether it is admitted
  // now.
  bool Admit(Handler* h, uint32_t t, uint64_t key, uint64_t push_seq) {
    const proto::AdmissionConfig& a = opt_.config.tables(t).admission();
    if (a.min_count() > 1) {
      std::vector<uint16_t>& sk = h->sketch[t];
      const uint64_t w = a.sketch_width();
      if (sk.empty()) sk.assign(4 * w, 0);
      uint32_t est = UINT32_MAX;
      for (int r = 0; r < 4; ++r) {
        uint16_t& c = sk[r * w + (proto::Mix64(key ^ kSketchSeeds[r]) & (w - 1))];
        if (c < UINT16_MAX) ++c;
        est = std::min<uint32_t>(est, c);
      }
      return est >= a.min_count();
    }
    // Probability: a hash of (key, push_seq) decides, so that a rerun repeats.
    const double u = static_cast<double>(proto::Mix64(key ^ proto::Mix64(push_seq)) >> 11) * 0x1.0p-53;
    return u < a.probability();
  }

  // Calls fn(i, shard) for every key i of `req` in a shard handler `h` owns.
  template <typename Fn>
  void ForEachMine(const Handler& h, const Request& req, Fn&& fn) const {
    if (req.grouped) {
      for (const KeyRun& r : req.runs_by_handler[h.index]) {
        for (size_t i = r.begin; i < r.end; ++i) fn(i, r.shard);
      }
      return;
    }
    const uint32_t L = static_cast<uint32_t>(shard_handler_.size());
    for (size_t i = 0; i < req.num_keys; ++i) {
      const uint32_t s = proto::ShardOf(req.keys[i], L);
      if (shard_handler_[s] == static_cast<int16_t>(h.index)) fn(i, s);
    }
  }

  // The resident ceiling: empty if the rows h's part of `req` may create fit
  // in h's share, else the refusal. Cheap unless the request is near the
  // ceiling: then its keys are looked up once more to count the new ones.
  std::string OverCeiling(Handler* h, const Request& req, const TableSpec& spec) {
    const uint32_t t = req.table;
    // A read-only pull creates nothing; under admission a pull creates nothing either.
    if (req.read_only || (!req.is_push && Admits(opt_.config.tables(t)))) return {};
    TieredStore& store = *h->store;
    const uint64_t cost = storage::ResidentRowCost(spec);
    const uint64_t resident = static_cast<uint64_t>(std::max<int64_t>(0, store.resident_bytes()));
    uint64_t keys = 0;  // h's keys of the request: exact when grouped, a bound otherwise
    if (req.grouped) {
      for (const KeyRun& r : req.runs_by_handler[h->index]) keys += r.end - r.begin;
    } else {
      keys = req.num_keys;
    }
    uint64_t fresh = keys;
    if (store.tiered()) {
      // Cold rows spill to make room: only the request's own rows, pinned
      // while it runs, must fit at once.
      if (keys * cost <= h->ceiling) return {};
      if (!req.grouped) {
        fresh = 0;
        ForEachMine(*h, req, [&](size_t, uint32_t) { ++fresh; });
        if (fresh * cost <= h->ceiling) return {};
      }
    } else {
      if (resident + keys * cost <= h->ceiling) return {};
      // Near the ceiling: count the keys without a row (a stale row is
      // re-drawn in place, a repeated new key counts twice: an over-estimate).
      fresh = 0;
      ForEachMine(*h, req, [&](size_t i, uint32_t s) { fresh += store.table(t, s).Find(req.keys[i]) == nullptr; });
      if (resident + fresh * cost <= h->ceiling) return {};
    }
    const std::string table = spec.config().name();
    std::string why = absl::StrCat(
        proto::Command_Name(req.msg.header.command()), " of table '", table, "'",
        store.tiered() ? " names " : " would create up to ", fresh, store.tiered() ? " keys, rows of " : " rows of ",
        cost, " bytes, on server ", opt_.rank, " handler ", h->index, ", which holds ", resident,
        " bytes of rows and may hold ", h->ceiling, ": storage.max_resident_bytes ", ceiling_, ceiling_how_, " over ",
        handlers_.size(), " handlers");
    if (store.tiered()) {
      absl::StrAppend(&why, " (with storage.memory_budget_bytes ", opt_.config.storage().memory_budget_bytes(),
                      " cold rows spill, but one request's rows must fit at once); raise "
                      "storage.max_resident_bytes or lower cluster.max_keys_per_request");
    } else {
      absl::StrAppend(&why, "; raise storage.max_resident_bytes, or set storage.memory_budget_bytes to spill cold "
                            "rows to disk");
    }
    return why;
  }

  // Makes the error reply of `req` (one handler's part failed); the first
  // failure of a request is the one answered and counted.
  void FailPart(Request& req, proto::ErrorCode code, const std::string& why) {
    absl::MutexLock l(&req.error_mu);
    if (req.failed) return;
    errors_.fetch_add(1);
    rejects_.Warn(absl::StrCat("server ", opt_.rank, ": refused ", proto::Command_Name(req.msg.header.command()),
                               " from node ", req.msg.header.sender(), ": ", why));
    net::Message r = net::MakeErrorReply(req.msg, code, why);
    r.header.set_sender(opt_.node_id);
    req.failed = std::move(r);
  }

  // Sets ceiling_ from storage.max_resident_bytes, or derives it from the
  // host's memory, and logs it.
  absl::Status ChooseCeiling(uint64_t budget, uint32_t threads) {
    const proto::StorageConfig& sc = opt_.config.storage();
    ceiling_ = sc.max_resident_bytes();
    if (ceiling_ > 0) {
      if (ceiling_ < budget) {
        return absl::InvalidArgumentError(absl::StrCat("storage.max_resident_bytes ", ceiling_,
                                                       " is below storage.memory_budget_bytes ", budget));
      }
    } else {
      const uint64_t host = opt_.host_memory_bytes > 0 ? opt_.host_memory_bytes : HostMemoryBytes();
      ceiling_ = DefaultMaxResidentBytes(host, opt_.servers_on_host);
      ceiling_how_ = absl::StrCat(" (0: derived, half of the host's ", host, " bytes over ", opt_.servers_on_host,
                                  " servers on this host)");
      if (host == 0) {
        LOG(WARNING) << "server " << opt_.rank << ": the host's memory is unknown; no resident ceiling "
                     << "(set storage.max_resident_bytes)";
        ceiling_ = UINT64_MAX;
      } else if (ceiling_ < budget) {
        LOG(WARNING) << "server " << opt_.rank << ": storage.memory_budget_bytes " << budget
                     << " is above this server's part of the host's memory (" << ceiling_
                     << " bytes); the ceiling is the budget";
        ceiling_ = budget;
      }
    }
    LOG(INFO) << "server " << opt_.rank << ": resident ceiling " << ceiling_ << " bytes" << ceiling_how_ << ", "
              << ceiling_ / threads << " per handler";
    return absl::OkStatus();
  }

  // PULL or PUSH through the TieredStore: budgeted tables and tables with
  // admission. All of this handler's keys of the request are resolved at
  // once (one RocksDB MultiGet for those not resident).
  absl::Status ProcessGeneral(Handler* h, Request& req, const TableSpec& spec) {
    h->keys.clear();
    h->shards.clear();
    h->positions.clear();
    auto add = [&](size_t i, uint32_t s) {
      h->keys.push_back(req.keys[i]);
      h->shards.push_back(s);
      h->positions.push_back(static_cast<uint32_t>(i));
    };
    ForEachMine(*h, req, add);
    const size_t n = h->keys.size();
    h->rows_buf.assign(n, nullptr);
    const uint32_t t = req.table;
    const bool admission = Admits(opt_.config.tables(t));
    auto create = [&](size_t j) {
      if (req.read_only) return false;
      if (!admission) return true;
      if (!req.is_push) return false;
      return Admit(h, t, h->keys[j], req.push_seq);
    };
    TieredStore& store = *h->store;
    absl::Status st = store.Resolve(t, h->keys.data(), h->shards.data(), n, req.generation, req.push_seq, create,
                                    h->rows_buf.data(), /*touch=*/!req.is_push, req.read_only);
    if (!st.ok()) return st;
    const uint32_t dim = spec.dim();
    uint64_t missing = 0;
    if (!req.is_push) {
      for (size_t j = 0; j < n; ++j) {
        float* out = req.out + size_t{h->positions[j]} * dim;
        if (h->rows_buf[j] != nullptr) {
          std::memcpy(out, TableSpec::Weights(h->rows_buf[j]), dim * sizeof(float));
        } else {
          std::fill(out, out + dim, req.default_value);
          // An evaluation's unseen keys are not refused admissions.
          if (!req.read_only) ++missing;
        }
      }
    } else {
      const storage::OptimizerRule& rule = spec.rule();
      for (size_t j = 0; j < n; ++j) {
        uint8_t* row = h->rows_buf[j];
        if (row == nullptr) {
          ++missing;
          continue;
        }
        rule.Apply(TableSpec::Weights(row), spec.State(row), req.grads + size_t{h->positions[j]} * dim, dim);
        storage::RowMeta* meta = TableSpec::Meta(row);
        ++meta->count;
        meta->last_push_seq = req.push_seq;
        if (req.log_day) meta->last_day = req.log_day;
        meta->flags |= storage::kRowDirty;
      }
    }
    store.Unpin(h->rows_buf.data(), n);
    if (missing) store.counters(t).not_admitted.fetch_add(missing, std::memory_order_relaxed);
    return absl::OkStatus();
  }

  // Pull or push keys [begin, end) of `req`, all in `table`. Each key costs
  // two dependent cache misses (index slot, then row), so the loop runs a
  // software pipeline: the index slot is prefetched kIndexAhead keys ahead and
  // the row is looked up (created if new) and prefetched kRowAhead keys ahead.
  // Rows never move and nothing is erased here, so early pointers stay valid;
  // rows are still created in key order. Measured on the zipf16 bench: push
  // 2.1-2.3x faster, repeat pull 1.35x. A read-only PULL runs the same
  // pipeline with Find: a missing or stale row reads as req.default_value.
  // Returns the rows created.
  static size_t Process(Request& req, const TableSpec& spec, ShardTable& table, size_t begin, size_t end) {
    constexpr size_t kIndexAhead = 16, kRowAhead = 8;
    const uint32_t dim = spec.dim();
    const size_t row_bytes = spec.row_bytes();
    uint8_t* rows[kRowAhead];
    size_t next_index = begin, next_row = begin, created_rows = 0;
    auto advance = [&](size_t i) {
      for (const size_t limit = std::min(end, i + kIndexAhead); next_index < limit; ++next_index) {
        table.PrefetchIndex(req.keys[next_index]);
      }
      for (const size_t limit = std::min(end, i + kRowAhead); next_row < limit; ++next_row) {
        if (req.read_only) {
          uint8_t* r = table.Find(req.keys[next_row]);
          if (r != nullptr) {
            for (size_t o = 0; o < row_bytes; o += 64) __builtin_prefetch(r + o, 0);
          }
          rows[next_row % kRowAhead] = r;
          continue;
        }
        bool created;
        uint8_t* r = table.FindOrCreate(req.keys[next_row], req.generation, &created);
        // A new row was just written (it is in cache); an existing one is
        // not read here, only prefetched: it is read kRowAhead keys later,
        // in row(). Reading its meta here stalled every key on a memory
        // miss (~60% of a zipf16 pull's handler samples).
        if (created) {
          TableSpec::Meta(r)->last_push_seq = req.push_seq;
          ++created_rows;
        }
        for (size_t o = 0; o < row_bytes; o += 64) __builtin_prefetch(r + o, 1);
        rows[next_row % kRowAhead] = r;
      }
    };
    // Key i's row, looked up by advance(i) or earlier; read-only: nullptr
    // if it has none of the request's generation.
    auto row_of = [&](size_t i) -> uint8_t* {
      uint8_t* r = rows[i % kRowAhead];
      if (req.read_only && (r == nullptr || TableSpec::Meta(r)->generation < req.generation)) return nullptr;
      if (TableSpec::Meta(r)->generation < req.generation) {
        // Stale since a RESET_TABLE: re-drawn on first touch.
        spec.InitRow(req.keys[i], req.generation, r);
        TableSpec::Meta(r)->last_push_seq = req.push_seq;
      }
      return r;
    };
    if (!req.is_push) {
      for (size_t i = begin; i < end; ++i) {
        advance(i);
        uint8_t* r = row_of(i);
        float* out = req.out + i * dim;
        if (r != nullptr) {
          std::memcpy(out, TableSpec::Weights(r), dim * sizeof(float));
        } else {
          std::fill(out, out + dim, req.default_value);
        }
      }
      return created_rows;
    }
    const storage::OptimizerRule& rule = spec.rule();
    for (size_t i = begin; i < end; ++i) {
      advance(i);
      uint8_t* row = row_of(i);
      rule.Apply(TableSpec::Weights(row), spec.State(row), req.grads + i * dim, dim);
      storage::RowMeta* meta = TableSpec::Meta(row);
      ++meta->count;
      meta->last_push_seq = req.push_seq;
      if (req.log_day) meta->last_day = req.log_day;
    }
    return created_rows;
  }

  void UpdateGauges(Handler* h, bool force = false) {
    // Every 16th request: a walk over this handler's shards (a few thousand).
    if (++h->gauge_tick % 16 != 1 && !force) return;
    uint64_t rows = 0, bytes = 0;
    TieredStore& store = *h->store;
    for (uint32_t t = 0; t < specs_.size(); ++t) {
      uint64_t table_rows = 0;
      for (uint32_t s : store.shards()) {
        table_rows += store.table(t, s).size();
        bytes += store.table(t, s).MemoryBytes();
      }
      h->table_rows[t].store(table_rows, std::memory_order_relaxed);
      rows += table_rows;
    }
    h->rows.store(rows, std::memory_order_relaxed);
    h->memory.store(bytes, std::memory_order_relaxed);
  }

  // ------------------------------------------------------------ storage

  // Orders every handler to park behind the requests already queued (see
  // Park); returns at once. The admin thread waits for all to arrive.
  std::shared_ptr<Park> OrderPark(std::vector<std::shared_ptr<Request>>* orders) {
    auto park = std::make_shared<Park>();
    park->expected = handlers_.size();
    for (auto& h : handlers_) {
      auto r = std::make_shared<Request>();
      r->park = park;
      orders->push_back(r);
      h->Push(std::move(r));
    }
    return park;
  }

  std::vector<TieredStore*> Stores() {
    std::vector<TieredStore*> v;
    for (auto& h : handlers_) v.push_back(h->store.get());
    return v;
  }

  std::vector<const TableSpec*> Specs() const {
    std::vector<const TableSpec*> v;
    for (const auto& s : specs_) v.push_back(s.get());
    return v;
  }

  // Applies the dense pushes of a partial round first, so that the copy
  // holds every push acknowledged before it.
  storage::DenseSlice CopyDense() {
    dense_->Flush();
    storage::DenseSlice d;
    d.offset = opt_.dense_offset;
    d.trained = dense_->trained();
    d.weights = dense_->weights();
    d.state = dense_->state();
    return d;
  }

  void FailStatus(const net::Message& m, const absl::Status& st) {
    proto::ErrorCode code = proto::INTERNAL;
    if (absl::IsInvalidArgument(st) || absl::IsNotFound(st) || absl::IsFailedPrecondition(st) ||
        absl::IsDataLoss(st) || absl::IsAlreadyExists(st)) {
      code = proto::BAD_REQUEST;
    }
    Fail(m, code, std::string(st.message()));
  }

  // The checkpoint `name` names below the job's checkpoint root (see
  // storage::CheckpointRoot): the one check of SAVE, RESTORE and LIST.
  absl::StatusOr<std::string> ResolveCheckpointPath(const std::string& name, bool allow_root = false) const {
    if (!root_.configured() && !root_error_.empty()) {
      return absl::FailedPreconditionError(absl::StrCat("the checkpoint root is unusable: ", root_error_));
    }
    return root_.Resolve(name, allow_root);
  }

  void HandleReset(const net::Message& m) {
    const uint32_t t = m.header.reset().table();
    if (t >= specs_.size()) {
      return Fail(m, proto::UNKNOWN_TABLE, absl::StrCat("RESET_TABLE: table ", t, " does not exist"));
    }
    // O(1): requests dispatched from now on carry the new generation, and every
    // row of an older one is re-drawn when they touch it.
    const uint32_t e = table_generation_[t].fetch_add(1) + 1;
    LOG(INFO) << "server " << opt_.rank << ": table '" << specs_[t]->config().name() << "' reset to generation " << e;
    net::Message r = net::MakeReply(m);
    r.header.set_sender(opt_.node_id);
    r.header.mutable_reset_reply()->set_generation(e);
    Reply(std::move(r));
  }

  // ------------------------------------------------------------ admin plane
  //
  // SAVE, RESTORE, SWEEP and STATS run on the admin thread, one at a time,
  // so that the I/O thread keeps answering (PING, LIST_CHECKPOINTS at once).
  // The I/O thread starts an operation: it orders every handler to park
  // behind the requests already queued and takes what must be taken at the
  // cut (a SAVE's dense copy, push counter, generations); sparse requests
  // that arrive later queue behind the park. The admin thread waits for the
  // handlers, does the work, releases them and hands the operation back; the
  // I/O thread finishes it (a RESTORE's dense reset and incarnation, the
  // reply) and starts the next one. Admin commands that arrive while one
  // runs wait in admin_queue_ (up to kMaxQueuedAdmin, then refused). While a
  // RESTORE runs (not a verify-only one) everything but PING and
  // LIST_CHECKPOINTS waits in deferred_ and is handled in order afterwards.
  static constexpr size_t kMaxQueuedAdmin = 16;

  struct AdminOp {
    net::Message request;
    std::shared_ptr<Park> park;
    std::vector<std::shared_ptr<Request>> park_orders;  // keep the orders alive
    std::function<void()> work;    // admin thread, handlers parked
    std::function<void()> finish;  // I/O thread, afterwards: replies
  };

  // I/O thread.
  void HandleAdmin(net::Message m) {
    const proto::Command c = m.header.command();
    if (c == proto::SAVE || c == proto::RESTORE) {
      // A bad path is refused at once, not after the operations ahead of it
      // (and checked again when the operation starts).
      absl::StatusOr<std::string> dir =
          ResolveCheckpointPath(c == proto::SAVE ? m.header.save().dir() : m.header.restore().dir());
      if (!dir.ok()) {
        return FailStatus(m, absl::Status(dir.status().code(),
                                          absl::StrCat(proto::Command_Name(c), ": ", dir.status().message())));
      }
    }
    if (admin_active_ != nullptr) {
      if (admin_queue_.size() >= kMaxQueuedAdmin) {
        return Fail(m, proto::BAD_REQUEST,
                    absl::StrCat(proto::Command_Name(m.header.command()), ": refused, ", admin_queue_.size(),
                                 " admin commands are already waiting behind a ",
                                 proto::Command_Name(admin_active_->request.header.command())));
      }
      admin_queue_.push_back(std::move(m));
      return;
    }
    auto op = std::make_shared<AdminOp>();
    op->request = std::move(m);
    bool started = false;
    switch (op->request.header.command()) {
      case proto::SAVE:
        started = StartSave(*op);
        break;
      case proto::RESTORE:
        started = StartRestore(*op);
        break;
      case proto::SWEEP:
        started = StartSweep(*op);
        break;
      default:
        started = StartStats(*op);
        break;
    }
    if (!started) return;  // refused before anything was parked
    op->park = OrderPark(&op->park_orders);
    admin_active_ = op;
    absl::MutexLock l(&admin_mu_);
    admin_next_ = std::move(op);
  }

  // I/O thread: finishes the operation the admin thread handed back, if
  // any, then starts the next queued one and replays what was deferred.
  void FinishAdmin() {
    std::shared_ptr<AdminOp> op;
    {
      absl::MutexLock l(&admin_mu_);
      op = std::move(admin_done_);
    }
    if (op == nullptr) return;
    admin_active_ = nullptr;
    deferring_ = false;
    op->finish();
    while (admin_active_ == nullptr && !admin_queue_.empty()) {
      net::Message next = std::move(admin_queue_.front());
      admin_queue_.pop_front();
      HandleAdmin(std::move(next));
    }
    // In arrival order; a RESTORE among them defers the rest again.
    std::deque<net::Message> deferred = std::move(deferred_);
    deferred_.clear();
    for (net::Message& m : deferred) Handle(std::move(m));
  }

  void AdminLoop() {
    for (;;) {
      std::shared_ptr<AdminOp> op;
      {
        absl::MutexLock l(&admin_mu_);
        admin_mu_.Await(absl::Condition(
            +[](Impl* i) ABSL_EXCLUSIVE_LOCKS_REQUIRED(i->admin_mu_) {
              return i->admin_next_ != nullptr || i->admin_quit_;
            },
            this));
        if (admin_next_ == nullptr) return;
        op = std::move(admin_next_);
      }
      {
        absl::MutexLock l(&op->park->mu);
        op->park->mu.Await(absl::Condition(op->park.get(), &Park::AllArrived));
      }
      op->work();
      {
        absl::MutexLock l(&op->park->mu);
        op->park->released = true;
      }
      {
        absl::MutexLock l(&admin_mu_);
        admin_done_ = std::move(op);
      }
      transport_->Wake();
    }
  }

  net::Message AdminReply(const net::Message& m) {
    net::Message r = net::MakeReply(m);
    r.header.set_sender(opt_.node_id);
    return r;
  }

  // The cut of a SAVE or SWEEP, taken on the I/O thread when it starts.
  struct Cut {
    uint64_t push_seq = 0;
    uint32_t day = 0;
    std::vector<uint32_t> generations;
  };
  Cut TakeCut() const {
    Cut c;
    c.push_seq = push_seq_.load();
    c.day = log_day_.load();
    for (const auto& e : table_generation_) c.generations.push_back(e.load());
    return c;
  }

  bool StartSave(AdminOp& op) {
    const net::Message& m = op.request;
    const proto::SaveRequest& q = m.header.save();
    absl::StatusOr<std::string> dir = ResolveCheckpointPath(q.dir());
    if (!dir.ok()) {
      FailStatus(m, absl::Status(dir.status().code(), absl::StrCat("SAVE: ", dir.status().message())));
      return false;
    }
    // The cut: the dense slice now (a partial round flushed), and the push
    // counter and generations now; pushes after this wait behind the park.
    auto dense = std::make_shared<storage::DenseSlice>(CopyDense());
    auto cut = std::make_shared<Cut>(TakeCut());
    auto result = std::make_shared<absl::StatusOr<proto::CheckpointPart>>();
    auto swept = std::make_shared<uint64_t>(0);
    op.work = [this, q, dir = *dir, dense, cut, result, swept] {
      if (q.sweep()) {
        absl::StatusOr<uint64_t> n = SweepParked(*cut);
        if (!n.ok()) {
          *result = n.status();
          return;
        }
        *swept = *n;
      }
      storage::SaveSource src;
      src.rank = opt_.rank;
      src.num_logical_shards = static_cast<uint32_t>(shard_handler_.size());
      src.specs = Specs();
      src.stores = Stores();
      src.generations = cut->generations;
      // Incremental only on the checkpoint this server is known clean against.
      src.delta = q.parent_id() != 0 && q.parent_id() == clean_since_id_;
      src.cut_push_seq = clean_cut_push_seq_;
      src.tombstones = &tombstones_;
      src.dense = dense.get();
      src.push_seq = cut->push_seq;
      src.bytes_per_sec = opt_.config.storage().checkpoint_bytes_per_sec();
      *result = storage::WriteCheckpointPart(dir, src);
      if (result->ok()) {
        clean_since_id_ = q.id();
        clean_cut_push_seq_ = cut->push_seq;
        tombstones_.clear();
      } else {
        clean_since_id_ = 0;  // the next checkpoint must be full
      }
    };
    op.finish = [this, &op, result, swept] {
      const net::Message& m = op.request;
      if (!result->ok()) return FailStatus(m, result->status());
      proto::CheckpointPart& part = **result;
      LOG(INFO) << "server " << opt_.rank << ": saved " << (part.delta() ? "incremental" : "full") << " checkpoint "
                << m.header.save().id() << " (" << part.bytes() << " bytes in " << part.seconds() << " s"
                << (*swept ? absl::StrCat(", swept ", *swept, " rows") : std::string()) << ")";
      net::Message r = AdminReply(m);
      *r.header.mutable_save_reply()->mutable_part() = std::move(part);
      Reply(std::move(r));
    };
    return true;
  }

  bool StartRestore(AdminOp& op) {
    const net::Message& m = op.request;
    const proto::RestoreRequest& q = m.header.restore();
    absl::StatusOr<std::string> dir = ResolveCheckpointPath(q.dir());
    if (!dir.ok()) {
      FailStatus(m, absl::Status(dir.status().code(), absl::StrCat("RESTORE: ", dir.status().message())));
      return false;
    }
    // A load replaces the model: nothing else runs until it is done.
    if (!q.verify_only()) deferring_ = true;
    struct Out {
      absl::Status status;
      uint64_t rows = 0, bytes = 0;
      storage::DenseSlice dense;
      std::vector<uint32_t> generations;
      uint64_t push_seq = 0;
    };
    auto out = std::make_shared<Out>();
    storage::RestoreTarget target;
    target.config = &opt_.config;
    target.dense_total = opt_.dense_total;
    target.specs = Specs();
    target.stores = Stores();
    target.dense_rule = &dense_->rule();
    target.dense_offset = opt_.dense_offset;
    target.dense_length = dense_->size();
    target.dense_trained = dense_->trained();
    target.root = &root_;
    op.work = [this, q, dir = *dir, target, out] {
      absl::StatusOr<storage::RestorePlan> plan = storage::RestorePlan::Make(dir, target);
      if (!plan.ok()) {
        out->status = plan.status();
        return;
      }
      if (out->status = plan->Verify(&out->rows, &out->bytes); !out->status.ok()) return;
      if (q.verify_only()) return;
      if (absl::Status st = plan->Apply(&out->dense, &out->rows); !st.ok()) {
        out->status = absl::InternalError(absl::StrCat("restore of ", q.dir(),
                                                       " failed after verification, server state is partial: ",
                                                       st.message()));
        return;
      }
      out->generations = plan->generations();
      // Data requests are deferred: the counter is not moving.
      out->push_seq = std::max(push_seq_.load(), plan->manifest().push_seq());
      clean_since_id_ = plan->manifest().id();
      clean_cut_push_seq_ = out->push_seq;
      tombstones_.clear();
    };
    op.finish = [this, &op, out] {
      const net::Message& m = op.request;
      const proto::RestoreRequest& q = m.header.restore();
      if (!out->status.ok()) return FailStatus(m, out->status);
      if (!q.verify_only()) {
        dense_->Reset(std::move(out->dense.weights), std::move(out->dense.state));
        for (size_t t = 0; t < table_generation_.size(); ++t) table_generation_[t].store(out->generations[t]);
        push_seq_.store(out->push_seq);
        incarnation_.store(q.incarnation());
        LOG(INFO) << "server " << opt_.rank << ": restored " << out->rows << " rows from " << q.dir();
      }
      net::Message r = AdminReply(m);
      r.header.mutable_restore_reply()->set_rows(out->rows);
      r.header.mutable_restore_reply()->set_bytes_read(out->bytes);
      Reply(std::move(r));
    };
    return true;
  }

  bool StartSweep(AdminOp& op) {
    auto cut = std::make_shared<Cut>(TakeCut());
    auto n = std::make_shared<absl::StatusOr<uint64_t>>();
    op.work = [this, cut, n] { *n = SweepParked(*cut); };
    op.finish = [this, &op, n] {
      if (!n->ok()) return FailStatus(op.request, n->status());
      net::Message r = AdminReply(op.request);
      r.header.mutable_sweep_reply()->set_removed(**n);
      Reply(std::move(r));
    };
    return true;
  }

  bool StartStats(AdminOp& op) {
    auto p = std::make_shared<proto::ServerStatsProto>();
    // Exact row counts: a walk of every shard while the handlers are parked.
    op.work = [this, p] {
      for (auto& h : handlers_) UpdateGauges(h.get(), /*force=*/true);
      *p = StatsProto();
    };
    op.finish = [this, &op, p] {
      net::Message r = AdminReply(op.request);
      *r.header.mutable_stats_reply() = std::move(*p);
      Reply(std::move(r));
    };
    return true;
  }

  // The expiry sweep (admin thread, handlers parked), judged at `cut`. Also
  // drops rows made stale by a reset. Returns the rows removed.
  absl::StatusOr<uint64_t> SweepParked(const Cut& cut) {
    const uint64_t now_push_seq = cut.push_seq;
    const uint32_t now_day = cut.day;
    uint64_t removed = 0;
    for (uint32_t t = 0; t < specs_.size(); ++t) {
      const proto::ExpiryConfig& x = opt_.config.tables(t).expiry();
      const uint32_t generation = cut.generations[t];
      auto expired = [&](const storage::RowMeta& r) { return storage::RowExpired(x, r, now_push_seq, now_day); };
      for (auto& h : handlers_) {
        TieredStore& store = *h->store;
        uint64_t expired_rows = 0;
        for (uint32_t s : store.shards()) {
          std::vector<uint64_t> gone;
          uint64_t stale = 0;
          if (absl::Status st = store.Sweep(t, s, generation, expired, &gone, &stale); !st.ok()) return st;
          removed += gone.size() + stale;
          expired_rows += gone.size();
          if (!gone.empty()) {
            auto& tomb = tombstones_[storage::TableShard(t, s)];
            tomb.insert(tomb.end(), gone.begin(), gone.end());
          }
        }
        store.counters(t).expired.fetch_add(expired_rows, std::memory_order_relaxed);
      }
    }
    for (auto& h : handlers_) UpdateGauges(h.get(), /*force=*/true);
    LOG(INFO) << "server " << opt_.rank << ": sweep removed " << removed << " rows";
    return removed;
  }

  proto::ServerStatsProto StatsProto() const {
    proto::ServerStatsProto p;
    p.set_pulls(pulls_.load());
    p.set_pushes(pushes_.load());
    p.set_pulled_keys(pulled_keys_.load());
    p.set_pushed_keys(pushed_keys_.load());
    p.set_errors(errors_.load());
    p.set_memory_budget_bytes(opt_.config.storage().memory_budget_bytes());
    p.set_max_resident_bytes(ceiling_);
    for (uint32_t t = 0; t < specs_.size(); ++t) {
      proto::TableStatsProto* ts = p.add_tables();
      ts->set_name(specs_[t]->config().name());
      ts->set_generation(table_generation_[t].load());
      const uint64_t cost = storage::ResidentRowCost(*specs_[t]);
      for (const auto& h : handlers_) {
        const storage::TierCounters& c = h->store->counters(t);
        const uint64_t rows = h->table_rows[t].load(std::memory_order_relaxed);
        ts->set_resident_rows(ts->resident_rows() + rows);
        ts->set_resident_bytes(ts->resident_bytes() + rows * cost);
        ts->set_hits(ts->hits() + c.hits.load(std::memory_order_relaxed));
        ts->set_misses(ts->misses() + c.misses.load(std::memory_order_relaxed));
        ts->set_spill_reads(ts->spill_reads() + c.spill_reads.load(std::memory_order_relaxed));
        ts->set_evictions(ts->evictions() + c.evictions.load(std::memory_order_relaxed));
        ts->set_not_admitted(ts->not_admitted() + c.not_admitted.load(std::memory_order_relaxed));
        ts->set_expired(ts->expired() + c.expired.load(std::memory_order_relaxed));
      }
      if (spill_) {
        ts->set_spilled_rows(spill_->EstimatedRows(t));
        ts->set_spilled_bytes(spill_->LiveBytes(t));
      }
    }
    return p;
  }

  bool DenseRange(const net::Message& m, bool whole) {
    const uint64_t begin = opt_.dense_offset, end = begin + dense_->size();
    const uint64_t a = m.header.dense_offset(), len = m.header.dense_length();
    const bool ok = whole ? (a == begin && len == dense_->size()) : (a >= begin && len <= end - a && a <= end);
    if (!ok) {
      Fail(m, proto::BAD_REQUEST,
           absl::StrCat(proto::Command_Name(m.header.command()), " range [", a, ", ", a + len, ") ",
                        whole ? "must equal" : "is outside", " this server's dense slice [", begin, ", ", end, ")"));
    }
    return ok;
  }

  void HandleDensePull(const net::Message& m) {
    if (!DenseRange(m, false)) return;
    // An evaluation's pull sees every push acknowledged before it.
    if (m.header.read_only()) dense_->Flush();
    const uint64_t a = m.header.dense_offset() - opt_.dense_offset;
    net::Message r = net::MakeReply(m);
    r.header.set_sender(opt_.node_id);
    r.header.set_dense_offset(m.header.dense_offset());
    r.header.set_dense_length(m.header.dense_length());
    r.header.set_dense_version(dense_->version());
    r.frames.push_back(net::Frame::Copy(dense_->weights().data() + a, m.header.dense_length() * sizeof(float)));
    Reply(std::move(r));
  }

  void HandleDensePush(const net::Message& m) {
    if (!DenseRange(m, true)) return;
    const float* g = m.frames[0].As<float>().data();
    const uint64_t tau = dense_->Push(g, m.header.dense_version());
    net::Message r = net::MakeReply(m);
    r.header.set_sender(opt_.node_id);
    r.header.set_dense_staleness(tau);
    Reply(std::move(r));
  }

  ServerOptions opt_;
  std::unique_ptr<net::Transport> transport_;
  std::vector<std::unique_ptr<TableSpec>> specs_;
  std::vector<int16_t> shard_handler_;  // handler of each logical shard, or kNotMine
  std::vector<std::unique_ptr<Handler>> handlers_;
  net::RejectLog rejects_;
  bool authenticates_ = false;  // the transport stamps every message with its sender's role
  std::unique_ptr<DenseUpdater> dense_;  // I/O thread only
  std::atomic<bool> stop_{false};
  std::atomic<uint64_t> push_seq_{0};
  std::atomic<uint64_t> incarnation_{0};  // see ServerOptions.incarnation
  std::atomic<uint16_t> log_day_{0};                 // newest log day pushed
  std::vector<std::atomic<uint32_t>> table_generation_;   // reset generation per table
  std::vector<bool> general_;                        // per table: through the TieredStore
  std::unique_ptr<storage::SpillStore> spill_;       // null without a budget
  uint64_t ceiling_ = 0;     // resident ceiling in force, bytes (set by Init)
  std::string ceiling_how_;  // how it was chosen, for messages ("" if configured)
  storage::CheckpointRoot root_;  // checkpoint.dir, resolved at Init; unset without one
  std::string root_error_;        // why checkpoint.dir could not be opened, if it could not
  // Admin plane (see HandleAdmin). I/O thread only:
  std::shared_ptr<AdminOp> admin_active_;   // started, not yet finished
  std::deque<net::Message> admin_queue_;    // admin commands waiting for it
  bool deferring_ = false;                  // a RESTORE is loading
  std::deque<net::Message> deferred_;       // what arrived meanwhile
  // Handed between the I/O thread and the admin thread:
  absl::Mutex admin_mu_;
  std::shared_ptr<AdminOp> admin_next_ ABSL_GUARDED_BY(admin_mu_);  // to run
  std::shared_ptr<AdminOp> admin_done_ ABSL_GUARDED_BY(admin_mu_);  // to finish
  bool admin_quit_ ABSL_GUARDED_BY(admin_mu_) = false;
  std::thread admin_thread_;
  // Admin thread only (one operation at a time, handed over under
  // admin_mu_): checkpoint bookkeeping.
  uint64_t clean_since_id_ = 0;   // rows changed after clean_cut_push_seq_ are new since this checkpoint
  uint64_t clean_cut_push_seq_ = 0;
  storage::Tombstones tombstones_;  // rows removed since that checkpoint
  std::atomic<uint64_t> pulls_{0}, pushes_{0}, pulled_keys_{0}, pushed_keys_{0}, errors_{0};
};

absl::StatusOr<std::unique_ptr<Server>> Server::Create(ServerOptions options,
                                                       std::unique_ptr<net::Transport> transport) {
  auto impl = std::make_unique<Impl>(std::move(options), std::move(transport));
  absl::Status st = impl->Init();
  if (!st.ok()) return st;
  return std::unique_ptr<Server>(new Server(std::move(impl)));
}

Server::Server(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Server::~Server() = default;
absl::Status Server::Run() { return impl_->Run(); }
void Server::Stop() { impl_->Stop(); }
ServerStats Server::stats() const { return impl_->stats(); }

}  // namespace ember::ps
