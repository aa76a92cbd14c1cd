// Job config parsing and validation: every message names the field and why.
#include "proto/config.h"

#include <cmath>

#include <fstream>
#include <sstream>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "google/protobuf/io/tokenizer.h"
#include "google/protobuf/text_format.h"

namespace ember::proto {
namespace {

class CollectErrors : public google::protobuf::io::ErrorCollector {
 public:
  explicit CollectErrors(std::string source) : source_(std::move(source)) {}
  void AddError(int line, int column, const std::string& message) override {
    if (first_.empty()) first_ = absl::StrCat(source_, ":", line + 1, ":", column + 1, ": ", message);
  }
  void AddWarning(int line, int column, const std::string& message) override {}
  const std::string& first() const { return first_; }

 private:
  std::string source_;
  std::string first_;
};

absl::Status Invalid(const std::string& field, const std::string& why) {
  return absl::InvalidArgumentError(absl::StrCat("config field ", field, ": ", why));
}

absl::Status ValidateOptimizer(const OptimizerConfig& o, const std::string& f) {
  if (!(o.learning_rate() > 0)) return Invalid(f + ".learning_rate", "must be > 0");
  if (o.initial_accumulator() < 0) return Invalid(f + ".initial_accumulator", "must be >= 0");
  if (o.beta1() < 0 || o.beta1() >= 1) return Invalid(f + ".beta1", "must be in [0, 1)");
  if (o.beta2() < 0 || o.beta2() >= 1) return Invalid(f + ".beta2", "must be in [0, 1)");
  if (!(o.epsilon() > 0)) return Invalid(f + ".epsilon", "must be > 0");
  if (o.l1() < 0) return Invalid(f + ".l1", "must be >= 0");
  if (o.l2() < 0) return Invalid(f + ".l2", "must be >= 0");
  if (!(o.ftrl_beta() > 0)) return Invalid(f + ".ftrl_beta", "must be > 0");
  if (o.grad_clip() < 0) return Invalid(f + ".grad_clip", "must be >= 0 (0 = off)");
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<JobConfig> ParseJobConfig(const std::string& text, const std::string& source) {
  JobConfig config;
  google::protobuf::TextFormat::Parser parser;
  CollectErrors errors(source);
  parser.RecordErrorsTo(&errors);
  if (!parser.ParseFromString(text, &config)) {
    return absl::InvalidArgumentError(
        errors.first().empty() ? absl::StrCat(source, ": cannot parse job config") : errors.first());
  }
  return config;
}

absl::StatusOr<JobConfig> LoadJobConfig(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open config file ", path));
  std::stringstream buf;
  buf << in.rdbuf();
  absl::StatusOr<JobConfig> config = ParseJobConfig(buf.str(), path);
  if (!config.ok()) return config.status();
  absl::Status st = ValidateJobConfig(*config);
  if (!st.ok()) return absl::InvalidArgumentError(absl::StrCat(path, ": ", st.message()));
  return config;
}

int FindTable(const JobConfig& config, const std::string& name) {
  for (int i = 0; i < config.tables_size(); ++i) {
    if (config.tables(i).name() == name) return i;
  }
  return -1;
}

uint32_t ColumnSlot(const JobConfig& config, int index) {
  const ColumnConfig& c = config.data().columns(index);
  return c.slot() != 0 ? c.slot() : static_cast<uint32_t>(index + 1);
}

absl::Status ValidateJobConfig(const JobConfig& config) {
  if (config.tables_size() == 0) return Invalid("tables", "at least one table is required");
  absl::flat_hash_set<std::string> names;
  for (int i = 0; i < config.tables_size(); ++i) {
    const TableConfig& t = config.tables(i);
    const std::string f = absl::StrCat("tables[", i, "]");
    if (t.name().empty()) return Invalid(f + ".name", "must not be empty");
    if (!names.insert(t.name()).second) return Invalid(f + ".name", "duplicate table '" + t.name() + "'");
    if (t.dim() < 1 || t.dim() > 4096) return Invalid(f + ".dim", "must be in [1, 4096]");
    if (t.initializer().scale() < 0) return Invalid(f + ".initializer.scale", "must be >= 0");
    absl::Status st = ValidateOptimizer(t.optimizer(), f + ".optimizer");
    if (!st.ok()) return st;
    const AdmissionConfig& a = t.admission();
    if (a.min_count() > 65535) return Invalid(f + ".admission.min_count", "must be in [0, 65535]");
    if (!(a.probability() > 0 && a.probability() <= 1))
      return Invalid(f + ".admission.probability", "must be in (0, 1]");
    if (a.min_count() > 1 && a.probability() < 1)
      return Invalid(f + ".admission", "set min_count or probability, not both");
    const uint32_t w = a.sketch_width();
    if (w < 1024 || w > (1u << 28) || (w & (w - 1)) != 0)
      return Invalid(f + ".admission.sketch_width", "must be a power of two in [1024, 2^28]");
    for (int k = 0; k < t.reset().before_epochs_size(); ++k) {
      const uint32_t e = t.reset().before_epochs(k);
      if (e < 2 || e > config.train().epochs()) {
        return Invalid(absl::StrCat(f, ".reset.before_epochs[", k, "]"),
                       absl::StrCat("must be an epoch in [2, train.epochs=", config.train().epochs(),
                                    "] (epoch 1 starts fresh anyway)"));
      }
    }
  }
  const StorageConfig& sc = config.storage();
  if (sc.max_resident_bytes() > 0 && sc.max_resident_bytes() < sc.memory_budget_bytes()) {
    return Invalid("storage.max_resident_bytes",
                   absl::StrCat("is ", sc.max_resident_bytes(), ", below storage.memory_budget_bytes ",
                                sc.memory_budget_bytes(), ": the ceiling must hold the budget (raise it, or set 0 "
                                "to derive it from the host's memory)"));
  }
  if (sc.memory_budget_bytes() > 0 && sc.spill_path().empty())
    return Invalid("storage.spill_path", "a memory budget needs a directory for the RocksDB tier");
  const CheckpointConfig& ck = config.checkpoint();
  if (ck.keep() < 1) return Invalid("checkpoint.keep", "must be >= 1");
  if (ck.full_every() < 1) return Invalid("checkpoint.full_every", "must be >= 1 (1 = every checkpoint is full)");
  if (ck.replacement_timeout_ms() < 1000) return Invalid("checkpoint.replacement_timeout_ms", "must be >= 1000");
  const ExportConfig& ex = config.export_();
  if (!ex.dir().empty() && ck.dir().empty())
    return Invalid("export.dir", "exports are made from checkpoints: set checkpoint.dir too");
  if (ex.value_type() != "fp32" && ex.value_type() != "fp16")
    return Invalid("export.value_type", absl::StrCat("'", ex.value_type(), "': must be fp32 or fp16"));
  if (ex.full_every() < 1) return Invalid("export.full_every", "must be >= 1 (1 = every bundle is full)");
  const DivergenceConfig& dv = config.train().divergence();
  if (!(dv.loss_ratio() > 1.0)) return Invalid("train.divergence.loss_ratio", "must be > 1");
  if (dv.loss_reports() < 1) return Invalid("train.divergence.loss_reports", "must be >= 1");
  if (!(dv.auc_margin() >= 0 && dv.auc_margin() < 0.5)) {
    return Invalid("train.divergence.auc_margin", "must be in [0, 0.5)");
  }
  if (dv.stuck_seconds() < 1) return Invalid("train.divergence.stuck_seconds", "must be >= 1");
  if (config.train().staleness() > 1000000) return Invalid("train.staleness", "must be in [0, 1000000]");
  if (config.cluster().max_keys_per_request() < 1024) return Invalid("cluster.max_keys_per_request", "must be >= 1024");
  if (config.train().dense_update().average_pushes() > 1000000) {
    return Invalid("train.dense_update.average_pushes", "must be in [0, 1000000] (0 = the worker count)");
  }
  if (const double p = config.train().dense_update().lr_scale_power(); !(p >= 0 && p <= 1)) {
    return Invalid("train.dense_update.lr_scale_power", "must be in [0, 1]");
  }
  const DataConfig& d = config.data();
  if (d.train().empty()) return Invalid("data.train", "must name a directory, glob or file");
  if (d.columns_size() == 0) return Invalid("data.columns", "at least one column is required");
  int labels = 0, features = 0;
  absl::flat_hash_set<std::string> cols;
  for (int i = 0; i < d.columns_size(); ++i) {
    const ColumnConfig& c = d.columns(i);
    const std::string f = absl::StrCat("data.columns[", i, "]");
    if (c.name().empty()) return Invalid(f + ".name", "must not be empty");
    if (!cols.insert(c.name()).second) return Invalid(f + ".name", "duplicate column '" + c.name() + "'");
    switch (c.type()) {
      case ColumnConfig::LABEL:
        ++labels;
        break;
      case ColumnConfig::SPARSE:
      case ColumnConfig::MULTI_SPARSE:
      case ColumnConfig::SEQUENCE:
        ++features;
        if (c.table().empty()) return Invalid(f + ".table", "a sparse column needs a table");
        if (FindTable(config, c.table()) < 0)
          return Invalid(f + ".table", "unknown table '" + c.table() + "'");
        if (c.type() != ColumnConfig::SPARSE && c.separator().size() != 1)
          return Invalid(f + ".separator", "must be exactly one character");
        if (c.type() != ColumnConfig::SPARSE && (c.separator() == "\t" || c.separator() == "\n"))
          return Invalid(f + ".separator", "must not be a tab or newline");
        break;
      case ColumnConfig::DENSE:
        ++features;
        break;
      case ColumnConfig::TIME_SEQUENCE:
        if (c.separator().size() != 1 || c.separator() == "\t" || c.separator() == "\n")
          return Invalid(f + ".separator", "must be exactly one character, not a tab or newline");
        break;
      case ColumnConfig::TIME:
      case ColumnConfig::IGNORE:
        break;
    }
  }
  if (labels == 0) return Invalid("data.columns", "at least one LABEL column is required");
  if (features == 0) return Invalid("data.columns", "at least one feature column is required");
  if (!d.user_column().empty()) {
    bool found = false;
    for (const ColumnConfig& col : d.columns()) {
      if (col.name() == d.user_column()) {
        if (col.type() != ColumnConfig::SPARSE)
          return Invalid("data.user_column", "column '" + d.user_column() + "' must be SPARSE");
        found = true;
      }
    }
    if (!found) return Invalid("data.user_column", "no column named '" + d.user_column() + "'");
  }
  if (d.batch_size() < 1 || d.batch_size() > (1u << 20))
    return Invalid("data.batch_size", "must be in [1, 1048576]");
  if (d.chunk_bytes() < 4096) return Invalid("data.chunk_bytes", "must be >= 4096");
  if (d.max_bad_fraction() < 0 || d.max_bad_fraction() > 1)
    return Invalid("data.max_bad_fraction", "must be in [0, 1]");

  const ModelConfig& m = config.model();
  for (int i = 0; i < m.hidden_size(); ++i) {
    if (m.hidden(i) < 1 || m.hidden(i) > 65536)
      return Invalid(absl::StrCat("model.hidden[", i, "]"), "must be in [1, 65536]");
  }
  absl::Status st = ValidateOptimizer(m.dense_optimizer(), "model.dense_optimizer");
  if (!st.ok()) return st;
  if (!(m.dice_momentum() >= 0 && m.dice_momentum() < 1))
    return Invalid("model.dice_momentum", "must be in [0, 1)");
  if (!(m.dice_epsilon() > 0)) return Invalid("model.dice_epsilon", "must be > 0");
  if (m.kind() == ModelConfig::MMOE) {
    const MmoeConfig& e = m.mmoe();
    if (e.num_experts() < 1 || e.num_experts() > 1024)
      return Invalid("model.mmoe.num_experts", "must be in [1, 1024]");
    for (int i = 0; i < e.expert_hidden_size(); ++i) {
      if (e.expert_hidden(i) < 1 || e.expert_hidden(i) > 65536)
        return Invalid(absl::StrCat("model.mmoe.expert_hidden[", i, "]"), "must be in [1, 65536]");
    }
    for (int i = 0; i < e.tower_hidden_size(); ++i) {
      if (e.tower_hidden(i) < 1 || e.tower_hidden(i) > 65536)
        return Invalid(absl::StrCat("model.mmoe.tower_hidden[", i, "]"), "must be in [1, 65536]");
    }
    if (e.task_weight_size() != 0 && e.task_weight_size() != labels)
      return Invalid("model.mmoe.task_weight",
                     absl::StrCat("has ", e.task_weight_size(), " weights for ", labels, " LABEL columns"));
    for (int i = 0; i < e.task_weight_size(); ++i) {
      if (!(e.task_weight(i) >= 0) || !std::isfinite(e.task_weight(i)))
        return Invalid(absl::StrCat("model.mmoe.task_weight[", i, "]"), "must be a finite number >= 0");
    }
  } else if (m.has_mmoe()) {
    return Invalid("model.mmoe", "is only read by kind MMOE");
  }

  const ClusterConfig& c = config.cluster();
  if (c.num_servers() < 1 || c.num_servers() > 4096) return Invalid("cluster.num_servers", "must be in [1, 4096]");
  if (c.num_workers() < 1 || c.num_workers() > 65536) return Invalid("cluster.num_workers", "must be in [1, 65536]");
  if (c.num_logical_shards() < 1 || c.num_logical_shards() > (1u << 20))
    return Invalid("cluster.num_logical_shards", "must be in [1, 1048576]");
  if (c.num_logical_shards() < c.num_servers())
    return Invalid("cluster.num_logical_shards", "must be >= cluster.num_servers");
  if (c.server_threads() < 1 || c.server_threads() > 256)
    return Invalid("cluster.server_threads", "must be in [1, 256]");
  if (c.heartbeat_interval_ms() < 10) return Invalid("cluster.heartbeat_interval_ms", "must be >= 10");
  if (c.heartbeat_timeout_ms() <= c.heartbeat_interval_ms())
    return Invalid("cluster.heartbeat_timeout_ms", "must be > cluster.heartbeat_interval_ms");

  const TrainConfig& t = config.train();
  if (t.epochs() < 1 || t.epochs() > 100000) return Invalid("train.epochs", "must be in [1, 100000]");
  if (t.max_inflight_pushes() < 1 || t.max_inflight_pushes() > 64)
    return Invalid("train.max_inflight_pushes", "must be in [1, 64]");
  if (t.report_interval_ms() < 10) return Invalid("train.report_interval_ms", "must be >= 10");
  if (t.train_auc_window() < 100) return Invalid("train.train_auc_window", "must be >= 100");
  return absl::OkStatus();
}

absl::Status CheckBadLineBudget(const DataConfig& data, uint64_t bad, uint64_t lines,
                                absl::Span<const std::string> examples) {
  std::string why;
  if (bad > data.max_bad_lines()) {
    why = absl::StrCat(bad, " malformed lines (data.max_bad_lines=", data.max_bad_lines(), ")");
  } else if (lines >= 1000 && static_cast<double>(bad) / lines > data.max_bad_fraction()) {
    why = absl::StrCat(bad, " of ", lines, " lines malformed (data.max_bad_fraction=", data.max_bad_fraction(), ")");
  } else {
    return absl::OkStatus();
  }
  std::string first;
  for (size_t i = 0; i < examples.size() && i < 3; ++i) absl::StrAppend(&first, i == 0 ? "" : "; ", examples[i]);
  return absl::DataLossError(absl::StrCat("bad-line budget exceeded: ", why,
                                          first.empty() ? "; see the workers' logs for file:line"
                                                        : absl::StrCat("; first: ", first)));
}

}  // namespace ember::proto
