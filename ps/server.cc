#include "ps/server.h"

#include <cstring>
#include <deque>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "glog/logging.h"
#include "net/validate.h"
#include "ps/keys.h"
#include "storage/sparse_table.h"

namespace ember::ps {
namespace {

using storage::ShardTable;
using storage::TableSpec;

constexpr int16_t kNotMine = -1;

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
  uint32_t step = 0;
  // Grouped requests (keys sorted by shard, as ember's client sends them):
  // runs per handler. Otherwise every handler scans all keys for its shards.
  bool grouped = false;
  std::vector<std::vector<KeyRun>> runs_by_handler;
  std::atomic<int> remaining{0};
  net::Message reply;
};

}  // namespace

class Server::Impl {
 public:
  Impl(ServerOptions options, std::unique_ptr<net::Transport> transport)
      : opt_(std::move(options)),
        transport_(std::move(transport)),
        dense_rule_(opt_.config.model().dense_optimizer()) {}

  ~Impl() {
    for (auto& h : handlers_) h->Push(nullptr);
    for (auto& h : handlers_) h->thread.join();
  }

  absl::Status Init() {
    const uint32_t L = opt_.config.cluster().num_logical_shards();
    if (opt_.shard_map.server_rank_size() != static_cast<int>(L)) {
      return absl::InvalidArgumentError(absl::StrCat("shard map has ", opt_.shard_map.server_rank_size(),
                                                     " entries, cluster.num_logical_shards is ", L));
    }
    const uint32_t threads = opt_.config.cluster().server_threads();
    shard_handler_.assign(L, kNotMine);
    int local = 0;
    for (uint32_t s = 0; s < L; ++s) {
      if (opt_.shard_map.server_rank(s) == opt_.rank) shard_handler_[s] = static_cast<int16_t>(local++ % threads);
    }
    if (local == 0) LOG(WARNING) << "server rank " << opt_.rank << " owns no logical shard";
    for (const proto::TableConfig& t : opt_.config.tables()) {
      specs_.push_back(std::make_unique<TableSpec>(t));
    }
    for (uint32_t i = 0; i < threads; ++i) {
      auto h = std::make_unique<Handler>();
      h->index = i;
      h->tables.resize(specs_.size());
      for (size_t t = 0; t < specs_.size(); ++t) {
        h->tables[t].resize(L);
        for (uint32_t s = 0; s < L; ++s) {
          if (shard_handler_[s] == static_cast<int16_t>(i)) h->tables[t][s] = std::make_unique<ShardTable>(specs_[t].get());
        }
      }
      handlers_.push_back(std::move(h));
    }
    for (auto& h : handlers_) h->thread = std::thread([this, hp = h.get()] { HandlerLoop(hp); });
    dense_w_ = opt_.dense_init;
    // The slice's trainable prefix; the rest is model state.
    dense_trained_ = opt_.dense_state_begin <= opt_.dense_offset
                         ? 0
                         : std::min<uint64_t>(dense_w_.size(), opt_.dense_state_begin - opt_.dense_offset);
    dense_state_.resize(dense_rule_.StateFloats(dense_trained_));
    dense_rule_.InitState(dense_w_.data(), dense_state_.data(), dense_trained_);
    return absl::OkStatus();
  }

  absl::Status Run() {
    net::Message m;
    while (!stop_.load()) {
      absl::StatusOr<bool> got = transport_->Recv(&m, absl::Milliseconds(500));
      if (!got.ok()) return got.status();
      if (*got) Handle(std::move(m));
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
    }
    return s;
  }

 private:
  struct Handler {
    uint32_t index = 0;
    std::thread thread;
    // tables[t][s]: shard s of table t if this handler owns it.
    std::vector<std::vector<std::unique_ptr<ShardTable>>> tables;
    std::atomic<uint64_t> rows{0}, memory{0};
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
    LOG(WARNING) << "rejected " << proto::Command_Name(request.header.command()) << " from node "
                 << request.header.sender() << ": " << why;
    net::Message r = net::MakeErrorReply(request, code, why);
    r.header.set_sender(opt_.node_id);
    Reply(std::move(r));
  }

  // I/O thread: validate, then answer or hand to the handlers.
  void Handle(net::Message m) {
    net::WireCheck check = net::ValidateMessage(m);
    if (!check.ok()) return Fail(m, check.code, check.why);
    if (m.header.is_reply()) return;  // servers send no requests; ignore stray replies
    switch (m.header.command()) {
      case proto::PULL:
      case proto::PUSH:
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
    auto req = std::make_shared<Request>();
    req->is_push = is_push;
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
      const uint32_t s = ShardOf(req->keys[i], L);
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
    } else {
      req->step = push_seq_.fetch_add(1, std::memory_order_relaxed) + 1;
      pushes_.fetch_add(1, std::memory_order_relaxed);
      pushed_keys_.fetch_add(req->num_keys, std::memory_order_relaxed);
    }
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
      auto& shards = h->tables[req->table];
      const TableSpec& spec = *specs_[req->table];
      if (req->grouped) {
        for (const KeyRun& r : req->runs_by_handler[h->index]) Process(*req, spec, *shards[r.shard], r.begin, r.end);
      } else {
        const uint32_t L = static_cast<uint32_t>(shard_handler_.size());
        for (size_t i = 0; i < req->num_keys; ++i) {
          const uint32_t s = ShardOf(req->keys[i], L);
          if (shard_handler_[s] == static_cast<int16_t>(h->index)) Process(*req, spec, *shards[s], i, i + 1);
        }
      }
      UpdateGauges(h);
      if (req->remaining.fetch_sub(1, std::memory_order_acq_rel) == 1) transport_->Post(std::move(req->reply));
    }
  }

  // Pull or push keys [begin, end) of `req`, all in `table`. Each key costs
  // two dependent cache misses (index slot, then row), so the loop runs a
  // software pipeline: the index slot is prefetched kIndexAhead keys ahead and
  // the row is looked up (created if new) and prefetched kRowAhead keys ahead.
  // Rows never move and nothing is erased here, so early pointers stay valid;
  // rows are still created in key order. Measured on the zipf16 bench: push
  // 2.1-2.3x faster, repeat pull 1.35x.
  static void Process(Request& req, const TableSpec& spec, ShardTable& table, size_t begin, size_t end) {
    constexpr size_t kIndexAhead = 16, kRowAhead = 8;
    const uint32_t dim = spec.dim();
    const size_t row_bytes = spec.row_bytes();
    uint8_t* rows[kRowAhead];
    size_t next_index = begin, next_row = begin;
    auto advance = [&](size_t i) {
      for (const size_t limit = std::min(end, i + kIndexAhead); next_index < limit; ++next_index) {
        table.PrefetchIndex(req.keys[next_index]);
      }
      for (const size_t limit = std::min(end, i + kRowAhead); next_row < limit; ++next_row) {
        bool created;
        uint8_t* r = table.FindOrCreate(req.keys[next_row], 0, &created);
        for (size_t o = 0; o < row_bytes; o += 64) __builtin_prefetch(r + o, 1);
        rows[next_row % kRowAhead] = r;
      }
    };
    if (!req.is_push) {
      for (size_t i = begin; i < end; ++i) {
        advance(i);
        std::memcpy(req.out + i * dim, TableSpec::Weights(rows[i % kRowAhead]), dim * sizeof(float));
      }
      return;
    }
    const storage::OptimizerRule& rule = spec.rule();
    for (size_t i = begin; i < end; ++i) {
      advance(i);
      uint8_t* row = rows[i % kRowAhead];
      rule.Apply(TableSpec::Weights(row), spec.State(row), req.grads + i * dim, dim);
      storage::RowMeta* meta = TableSpec::Meta(row);
      ++meta->count;
      meta->last_step = req.step;
    }
  }

  void UpdateGauges(Handler* h) {
    // Every 16th request: a walk over this handler's shards (a few thousand).
    if (++h->gauge_tick % 16 != 1) return;
    uint64_t rows = 0, bytes = 0;
    for (const auto& per_table : h->tables) {
      for (const auto& t : per_table) {
        if (t) {
          rows += t->size();
          bytes += t->MemoryBytes();
        }
      }
    }
    h->rows.store(rows, std::memory_order_relaxed);
    h->memory.store(bytes, std::memory_order_relaxed);
  }

  bool DenseRange(const net::Message& m, bool whole) {
    const uint64_t begin = opt_.dense_offset, end = begin + dense_w_.size();
    const uint64_t a = m.header.dense_offset(), len = m.header.dense_length();
    const bool ok = whole ? (a == begin && len == dense_w_.size()) : (a >= begin && len <= end - a && a <= end);
    if (!ok) {
      Fail(m, proto::BAD_REQUEST,
           absl::StrCat(proto::Command_Name(m.header.command()), " range [", a, ", ", a + len, ") ",
                        whole ? "must equal" : "is outside", " this server's dense slice [", begin, ", ", end, ")"));
    }
    return ok;
  }

  void HandleDensePull(const net::Message& m) {
    if (!DenseRange(m, false)) return;
    const uint64_t a = m.header.dense_offset() - opt_.dense_offset;
    net::Message r = net::MakeReply(m);
    r.header.set_sender(opt_.node_id);
    r.header.set_dense_offset(m.header.dense_offset());
    r.header.set_dense_length(m.header.dense_length());
    r.frames.push_back(net::Frame::Copy(dense_w_.data() + a, m.header.dense_length() * sizeof(float)));
    Reply(std::move(r));
  }

  void HandleDensePush(const net::Message& m) {
    if (!DenseRange(m, true)) return;
    const float* g = m.frames[0].As<float>().data();
    dense_rule_.Apply(dense_w_.data(), dense_state_.data(), g, dense_trained_);
    const float rate = opt_.dense_state_rate;
    for (size_t i = dense_trained_; i < dense_w_.size(); ++i) dense_w_[i] += rate * g[i];
    net::Message r = net::MakeReply(m);
    r.header.set_sender(opt_.node_id);
    Reply(std::move(r));
  }

  ServerOptions opt_;
  std::unique_ptr<net::Transport> transport_;
  std::vector<std::unique_ptr<TableSpec>> specs_;
  std::vector<int16_t> shard_handler_;  // handler of each logical shard, or kNotMine
  std::vector<std::unique_ptr<Handler>> handlers_;
  storage::OptimizerRule dense_rule_;
  std::vector<float> dense_w_, dense_state_;  // I/O thread only
  size_t dense_trained_ = 0;                  // dense_w_[0, dense_trained_) is optimized
  std::atomic<bool> stop_{false};
  std::atomic<uint32_t> push_seq_{0};
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
