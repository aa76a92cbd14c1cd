// serving::Predictor: a bundle (storage::ExportedModel) behind a reader
// lock taken once per call, per-call contexts from a pool, and the models:: forward pass.
#include "serving/predictor.h"

#include <chrono>
#include <cmath>
#include <filesystem>
#include <limits>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "glog/logging.h"
#include "models/model.h"
#include "storage/checkpoint_files.h"
#include "storage/export.h"
#include "worker/batch_builder.h"

namespace ember::serving {
namespace {

namespace fs = std::filesystem;

int64_t NowUnixMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// The config the batch builder parses with: LABEL columns become IGNORE, so
// a request need not carry labels (the model still has one task per LABEL
// column of the real config).
proto::JobConfig ParseConfig(const proto::JobConfig& config) {
  proto::JobConfig c = config;
  for (proto::ColumnConfig& col : *c.mutable_data()->mutable_columns()) {
    if (col.type() == proto::ColumnConfig::LABEL) col.set_type(proto::ColumnConfig::IGNORE);
  }
  return c;
}

// What must not change between versions a predictor serves: the tables'
// layout (fingerprint), the columns and the model.
bool SameLayout(const storage::ExportedModel& a, const storage::ExportedModel& b) {
  return a.manifest().config_fingerprint() == b.manifest().config_fingerprint() &&
         a.config().data().SerializeAsString() == b.config().data().SerializeAsString() &&
         a.config().model().SerializeAsString() == b.config().model().SerializeAsString();
}


}  // namespace

class Predictor::Impl {
 public:
  // Per-call state, reused.
  struct Context {
    std::unique_ptr<models::Model> model;
    std::unique_ptr<worker::BatchBuilder> builder;
    models::Batch batch;
    std::vector<std::vector<float>> emb;
    std::vector<const float*> emb_ptr;
    std::vector<float> predictions;
    std::vector<uint32_t> good;  // indices of the lines in the batch
  };

  absl::Status Init(std::shared_ptr<const storage::ExportedModel> model, std::string dir) {
    config_ = model->config();
    parse_config_ = ParseConfig(config_);
    shard_map_.set_num_logical_shards(1);
    shard_map_.add_server_rank(0);
    absl::StatusOr<std::unique_ptr<Context>> ctx = NewContext();
    if (!ctx.ok()) return ctx.status();
    if ((*ctx)->model->dense_size() != model->dense().size()) {
      return absl::FailedPreconditionError(absl::StrCat(dir, ": the bundle has ", model->dense().size(),
                                                        " dense floats, its model needs ",
                                                        (*ctx)->model->dense_size()));
    }
    tasks_ = (*ctx)->model->tasks();
    for (int i = 0; i < config_.data().columns_size(); ++i) column_index_[config_.data().columns(i).name()] = i;
    free_.push_back(*std::move(ctx));
    Swap(std::move(model), std::move(dir));
    return absl::OkStatus();
  }

  absl::StatusOr<std::unique_ptr<Context>> NewContext() const {
    auto ctx = std::make_unique<Context>();
    absl::StatusOr<std::unique_ptr<models::Model>> model = models::Model::Create(config_);
    if (!model.ok()) return model.status();
    ctx->model = *std::move(model);
    absl::StatusOr<std::unique_ptr<worker::BatchBuilder>> builder =
        worker::BatchBuilder::Create(parse_config_, shard_map_, 1);
    if (!builder.ok()) return builder.status();
    ctx->builder = *std::move(builder);
    ctx->emb.resize(config_.tables_size());
    ctx->emb_ptr.resize(config_.tables_size());
    return ctx;
  }

  std::unique_ptr<Context> Acquire() const {
    {
      absl::MutexLock l(&pool_mu_);
      if (!free_.empty()) {
        std::unique_ptr<Context> c = std::move(free_.back());
        free_.pop_back();
        return c;
      }
    }
    absl::StatusOr<std::unique_ptr<Context>> c = NewContext();
    // Init built one from the same config, so this cannot fail.
    CHECK(c.ok()) << c.status();
    return *std::move(c);
  }
  void Release(std::unique_ptr<Context> c) const {
    absl::MutexLock l(&pool_mu_);
    free_.push_back(std::move(c));
  }

  std::shared_ptr<const storage::ExportedModel> Current() const {
    absl::ReaderMutexLock l(&model_mu_);
    return model_;
  }

  void Swap(std::shared_ptr<const storage::ExportedModel> model, std::string dir) {
    ModelVersion v;
    v.version = model->version();
    v.full_version = model->manifest().full_version();
    v.checkpoint_id = model->manifest().checkpoint_id();
    v.global_step = model->manifest().global_step();
    v.dir = std::move(dir);
    v.loaded_unix_ms = NowUnixMs();
    absl::MutexLock l(&model_mu_);
    model_ = std::move(model);
    version_ = std::move(v);
  }

  void Predict(absl::Span<const std::string_view> lines, std::vector<float>* scores,
               std::vector<LineError>* errors, uint64_t* version) const {
    const std::shared_ptr<const storage::ExportedModel> model = Current();
    if (version != nullptr) *version = model->version();
    std::unique_ptr<Context> ctx = Acquire();
    errors->clear();
    ctx->good.clear();
    worker::BatchBuilder& builder = *ctx->builder;
    builder.Clear();
    for (size_t i = 0; i < lines.size(); ++i) {
      absl::Status st = builder.AddLine(lines[i]);
      if (st.ok()) {
        ctx->good.push_back(static_cast<uint32_t>(i));
      } else {
        errors->push_back(LineError{i, std::string(st.message())});
      }
    }
    const size_t num_tasks = tasks_.size();
    scores->assign(lines.size() * num_tasks, std::numeric_limits<float>::quiet_NaN());
    if (ctx->good.empty()) {
      builder.Clear();
      Release(std::move(ctx));
      return;
    }
    models::Batch& batch = ctx->batch;
    builder.Finish(&batch);
    batch.num_labels = static_cast<int>(num_tasks);
    batch.labels.assign(static_cast<size_t>(batch.size) * num_tasks, 0.0f);
    for (size_t t = 0; t < ctx->emb.size(); ++t) {
      const std::vector<uint64_t>& keys = batch.tables[t].keys;
      const uint32_t dim = model->dim(t);
      std::vector<float>& emb = ctx->emb[t];
      emb.resize(keys.size() * dim);
      for (size_t k = 0; k < keys.size(); ++k) model->Lookup(t, keys[k], emb.data() + k * dim);
      ctx->emb_ptr[t] = keys.empty() ? nullptr : emb.data();
    }
    ctx->predictions.resize(static_cast<size_t>(batch.size) * num_tasks);
    ctx->model->Predict(batch, model->dense(), ctx->emb_ptr, absl::MakeSpan(ctx->predictions));
    for (size_t g = 0; g < ctx->good.size(); ++g) {
      for (size_t k = 0; k < num_tasks; ++k) {
        (*scores)[ctx->good[g] * num_tasks + k] = ctx->predictions[g * num_tasks + k];
      }
    }
    Release(std::move(ctx));
  }

  absl::Status LineFromColumns(absl::Span<const std::string_view> names, absl::Span<const std::string_view> values,
                               std::string* line) const {
    if (names.size() != values.size()) {
      return absl::InvalidArgumentError(absl::StrCat(names.size(), " column names for ", values.size(), " values"));
    }
    const int n = config_.data().columns_size();
    std::vector<int> value_of(n, -1);
    for (size_t i = 0; i < names.size(); ++i) {
      const absl::string_view name(names[i].data(), names[i].size());
      auto it = column_index_.find(name);
      if (it == column_index_.end()) {
        return absl::InvalidArgumentError(absl::StrCat("unknown column '", name, "'"));
      }
      if (value_of[it->second] >= 0) {
        return absl::InvalidArgumentError(absl::StrCat("column '", name, "' given twice"));
      }
      if (values[i].find_first_of("\t\n\r") != std::string_view::npos) {
        return absl::InvalidArgumentError(absl::StrCat("column '", name, "': a value may not hold a tab or newline"));
      }
      value_of[it->second] = static_cast<int>(i);
    }
    line->clear();
    for (int c = 0; c < n; ++c) {
      if (c > 0) line->push_back('\t');
      if (value_of[c] >= 0) line->append(values[value_of[c]]);
    }
    return absl::OkStatus();
  }

  // Checks that `next` can replace the current model, then swaps.
  absl::Status Adopt(std::shared_ptr<const storage::ExportedModel> next, const std::string& dir) {
    const std::shared_ptr<const storage::ExportedModel> cur = Current();
    if (!SameLayout(*cur, *next)) {
      return absl::FailedPreconditionError(absl::StrCat(dir, ": another model layout (tables, columns or model) than ",
                                                        "the version served, ", cur->version(),
                                                        "; start a new server for it"));
    }
    Swap(std::move(next), dir);
    return absl::OkStatus();
  }

  absl::Status Update(const std::string& dir) {
    absl::StatusOr<proto::ExportManifest> m = storage::ReadExportManifest(dir);
    if (!m.ok()) return m.status();
    const std::shared_ptr<const storage::ExportedModel> cur = Current();
    if (m->version() <= cur->version()) {
      return absl::FailedPreconditionError(absl::StrCat(dir, ": version ", m->version(),
                                                        " is not newer than the version served, ", cur->version()));
    }
    absl::StatusOr<std::shared_ptr<const storage::ExportedModel>> next =
        m->base_version() == cur->version() ? cur->ApplyDelta(dir) : storage::ExportedModel::Load(dir);
    if (!next.ok()) return next.status();
    return Adopt(*std::move(next), dir);
  }

  absl::StatusOr<bool> UpdateFromRoot(const std::string& root) {
    const std::vector<storage::ExportEntry> all = storage::ListExports(root);
    const uint64_t cur = Current()->version();
    const storage::ExportEntry* newest = nullptr;
    for (const auto& e : all) {
      if (e.complete && e.version > cur) newest = &e;
    }
    if (newest == nullptr) return false;
    // Deltas from the current version up to the newest, if the newest's
    // chain passes through it; else the newest's whole chain.
    absl::flat_hash_map<uint64_t, const storage::ExportEntry*> by_version;
    for (const auto& e : all) by_version[e.version] = &e;
    std::vector<const storage::ExportEntry*> steps;
    for (const storage::ExportEntry* e = newest; e != nullptr;) {
      if (e->version == cur) break;
      steps.push_back(e);
      if (e->base_version == 0 || e->base_version < cur) {
        steps.clear();
        break;
      }
      auto it = by_version.find(e->base_version);
      e = it == by_version.end() || !it->second->complete ? nullptr : it->second;
      if (e == nullptr) steps.clear();
    }
    if (steps.empty()) steps.push_back(newest);
    for (auto it = steps.rbegin(); it != steps.rend(); ++it) {
      // A bundle refused before is not read again (a watcher polls often and
      // a bundle may be large) unless its MANIFEST changed since.
      const std::string stamp = ManifestStamp((*it)->dir);
      auto refused = refused_.find((*it)->dir);
      if (refused != refused_.end() && refused->second.first == stamp) return refused->second.second;
      if (absl::Status st = Update((*it)->dir); !st.ok()) {
        refused_[(*it)->dir] = {stamp, st};
        return st;
      }
    }
    return true;
  }

  // Size and modification time of dir/MANIFEST, "" if it has none.
  static std::string ManifestStamp(const std::string& dir) {
    std::error_code ec;
    const fs::path m = fs::path(dir) / storage::kManifestName;
    const auto size = fs::file_size(m, ec);
    if (ec) return "";
    const auto time = fs::last_write_time(m, ec);
    if (ec) return "";
    return absl::StrCat(size, "@", time.time_since_epoch().count());
  }

  ModelVersion version() const {
    absl::ReaderMutexLock l(&model_mu_);
    return version_;
  }

  proto::JobConfig config_;
  proto::JobConfig parse_config_;
  proto::ShardMap shard_map_;
  std::vector<std::string> tasks_;
  absl::flat_hash_map<std::string, int> column_index_;

  mutable absl::Mutex model_mu_;
  std::shared_ptr<const storage::ExportedModel> model_ ABSL_GUARDED_BY(model_mu_);
  ModelVersion version_ ABSL_GUARDED_BY(model_mu_);

  absl::Mutex update_mu_;  // one Update or UpdateFromRoot at a time
  // Bundles UpdateFromRoot refused: dir -> (ManifestStamp, why).
  absl::flat_hash_map<std::string, std::pair<std::string, absl::Status>> refused_;

  mutable absl::Mutex pool_mu_;
  mutable std::vector<std::unique_ptr<Context>> free_ ABSL_GUARDED_BY(pool_mu_);
};

absl::StatusOr<std::unique_ptr<Predictor>> Predictor::Load(const std::string& dir) {
  std::string bundle = dir;
  if (!storage::IsExportBundle(dir)) {
    std::error_code ec;
    if (!fs::is_directory(dir, ec)) return absl::NotFoundError(absl::StrCat(dir, ": no such directory"));
    bundle.clear();
    for (const auto& e : storage::ListExports(dir)) {
      if (e.complete) bundle = e.dir;
    }
    if (bundle.empty()) {
      return absl::NotFoundError(absl::StrCat(dir, ": neither a bundle (no MANIFEST) nor an export root with a ",
                                              "complete bundle"));
    }
  }
  absl::StatusOr<std::shared_ptr<const storage::ExportedModel>> model = storage::ExportedModel::Load(bundle);
  if (!model.ok()) return model.status();
  auto impl = std::make_unique<Impl>();
  if (absl::Status st = impl->Init(*std::move(model), bundle); !st.ok()) return st;
  return std::unique_ptr<Predictor>(new Predictor(std::move(impl)));
}

Predictor::Predictor(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Predictor::~Predictor() = default;

const proto::JobConfig& Predictor::config() const { return impl_->config_; }
const std::vector<std::string>& Predictor::tasks() const { return impl_->tasks_; }
ModelVersion Predictor::version() const { return impl_->version(); }

void Predictor::Predict(absl::Span<const std::string_view> lines, std::vector<float>* scores,
                        std::vector<LineError>* errors, uint64_t* version) const {
  impl_->Predict(lines, scores, errors, version);
}

absl::Status Predictor::LineFromColumns(absl::Span<const std::string_view> names,
                                        absl::Span<const std::string_view> values, std::string* line) const {
  return impl_->LineFromColumns(names, values, line);
}

absl::Status Predictor::Update(const std::string& dir) {
  absl::MutexLock l(&impl_->update_mu_);
  return impl_->Update(dir);
}
absl::StatusOr<bool> Predictor::UpdateFromRoot(const std::string& root) {
  absl::MutexLock l(&impl_->update_mu_);
  return impl_->UpdateFromRoot(root);
}

}  // namespace ember::serving
