// Model: config resolution and batch checks; the math is in
// internal/model_core.h.
#include "models/model.h"

#include <string>
#include <utility>

#include "absl/memory/memory.h"
#include "absl/strings/str_cat.h"
#include "models/internal/model_core.h"
#include "proto/config.h"

namespace ember::models {
namespace internal {
namespace {

absl::Status Invalid(const std::string& field, const std::string& why) {
  return absl::InvalidArgumentError(absl::StrCat("config field ", field, ": ", why));
}

absl::Status BadBatch(const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat("malformed batch: ", what));
}

}  // namespace

absl::StatusOr<CoreLayout> BuildCoreLayout(const proto::JobConfig& config) {
  CoreLayout layout;
  absl::StatusOr<InputPlan> plan = PlanInput(config);
  if (!plan.ok()) return plan.status();
  layout.plan = *std::move(plan);
  for (int t = 0; t < config.tables_size(); ++t) {
    const uint32_t dim = config.tables(t).dim();
    if (dim < 1 || dim > 4096) return Invalid(absl::StrCat("tables[", t, "].dim"), "must be in [1, 4096]");
    layout.table_dims.push_back(static_cast<Eigen::Index>(dim));
  }
  const auto& cols = config.data().columns();
  Eigen::Index offset = 0;
  for (size_t s = 0; s < layout.plan.sparse_column.size(); ++s) {
    if (layout.plan.attention_only[s]) continue;
    CoreLayout::Pooled f;
    f.sparse = static_cast<int>(s);
    f.table = layout.plan.sparse_table[s];
    f.dim = layout.table_dims[f.table];
    f.pooling = cols[layout.plan.sparse_column[s]].pooling() == proto::ColumnConfig::MEAN ? PoolingMode::kMean
                                                                                         : PoolingMode::kSum;
    f.offset = offset;
    offset += f.dim;
    layout.pooled.push_back(f);
  }
  for (const AttentionPlan& a : layout.plan.attention) {
    layout.block_offset.push_back(offset);
    offset += a.key_dim();
  }
  layout.dense_offset = offset;
  for (const proto::ColumnConfig& c : cols) {
    if (c.type() == proto::ColumnConfig::DENSE) ++layout.num_dense;
  }
  offset += layout.num_dense;
  layout.input_dim = offset;
  if (layout.plan.tasks.empty()) return Invalid("data.columns", "no LABEL column to train on");
  if (layout.input_dim == 0) return Invalid("data.columns", "no feature column");
  layout.model = config.model();
  const proto::ModelConfig& m = layout.model;
  for (int i = 0; i < m.hidden_size(); ++i) {
    if (m.hidden(i) < 1 || m.hidden(i) > 65536) {
      return Invalid(absl::StrCat("model.hidden[", i, "]"), "must be in [1, 65536]");
    }
  }
  layout.task_weight.assign(layout.plan.tasks.size(), 1.0f);
  if (m.kind() == proto::ModelConfig::MMOE) {
    const proto::MmoeConfig& e = m.mmoe();
    if (e.num_experts() < 1 || e.num_experts() > 1024) {
      return Invalid("model.mmoe.num_experts", "must be in [1, 1024]");
    }
    if (e.task_weight_size() != 0) {
      if (e.task_weight_size() != static_cast<int>(layout.plan.tasks.size())) {
        return Invalid("model.mmoe.task_weight",
                       absl::StrCat("has ", e.task_weight_size(), " weights for ", layout.plan.tasks.size(),
                                    " LABEL columns"));
      }
      layout.task_weight.assign(e.task_weight().begin(), e.task_weight().end());
    }
  } else {
    // Only MMoE has a head per task; the others train on the first label.
    layout.plan.tasks.resize(1);
    layout.task_weight.resize(1);
  }
  return layout;
}

absl::Status CheckBatch(const CoreLayout& layout, const Batch& batch) {
  if (batch.size < 0) return BadBatch(absl::StrCat("size ", batch.size, " < 0"));
  const size_t n = static_cast<size_t>(batch.size);
  if (batch.num_labels < layout.num_tasks()) {
    return BadBatch(absl::StrCat("num_labels ", batch.num_labels, ", the model has ", layout.num_tasks(),
                                 " tasks"));
  }
  if (batch.labels.size() != n * batch.num_labels) {
    return BadBatch(absl::StrCat("labels has ", batch.labels.size(), " floats, expected ", n, " x ",
                                 batch.num_labels));
  }
  if (batch.num_dense != layout.num_dense) {
    return BadBatch(absl::StrCat("num_dense ", batch.num_dense, ", the config has ", layout.num_dense,
                                 " DENSE columns"));
  }
  if (batch.dense.size() != n * batch.num_dense) {
    return BadBatch(absl::StrCat("dense has ", batch.dense.size(), " floats, expected ", n, " x ",
                                 batch.num_dense));
  }
  if (batch.tables.size() != layout.table_dims.size()) {
    return BadBatch(absl::StrCat(batch.tables.size(), " tables, the config has ", layout.table_dims.size()));
  }
  if (batch.sparse.size() != static_cast<size_t>(layout.plan.num_views)) {
    return BadBatch(absl::StrCat(batch.sparse.size(), " sparse entries, the plan has ", layout.plan.num_views));
  }
  const size_t num_sparse = layout.plan.sparse_column.size();
  std::vector<int> expect_table(layout.plan.num_views);
  for (size_t s = 0; s < num_sparse; ++s) expect_table[s] = layout.plan.sparse_table[s];
  for (const AttentionPlan& a : layout.plan.attention) {
    for (size_t j = 0; j < a.keys.size(); ++j) expect_table[a.first_view + j] = layout.plan.sparse_table[a.keys[j]];
    if (a.gap_table >= 0) expect_table[a.first_view + a.keys.size()] = a.gap_table;
  }
  for (size_t k = 0; k < batch.sparse.size(); ++k) {
    const SparseColumnBatch& s = batch.sparse[k];
    const std::string where = absl::StrCat("sparse[", k, "]");
    if (s.table != expect_table[k]) {
      return BadBatch(absl::StrCat(where, ": table ", s.table, ", expected ", expect_table[k]));
    }
    if (k < num_sparse && s.column != layout.plan.sparse_column[k]) {
      return BadBatch(absl::StrCat(where, ": column ", s.column, ", expected ", layout.plan.sparse_column[k]));
    }
    if (s.offsets.size() != n + 1) {
      return BadBatch(absl::StrCat(where, ": ", s.offsets.size(), " offsets, expected ", n + 1));
    }
    if (s.offsets.front() != 0 || s.offsets.back() != s.rows.size()) {
      return BadBatch(absl::StrCat(where, ": offsets must run from 0 to rows.size() = ", s.rows.size()));
    }
    for (size_t i = 0; i < n; ++i) {
      if (s.offsets[i] > s.offsets[i + 1]) return BadBatch(absl::StrCat(where, ": offsets decrease at sample ", i));
    }
    const size_t num_keys = batch.tables[s.table].keys.size();
    for (size_t r = 0; r < s.rows.size(); ++r) {
      if (s.rows[r] >= num_keys) {
        return BadBatch(absl::StrCat(where, ": rows[", r, "] = ", s.rows[r], " >= ", num_keys,
                                     " keys of table ", s.table));
      }
    }
  }
  for (const AttentionPlan& a : layout.plan.attention) {
    for (int v = 1; v < a.num_views(); ++v) {
      if (batch.sparse[a.first_view + v].offsets != batch.sparse[a.first_view].offsets) {
        return BadBatch(absl::StrCat("attention block '", a.name, "': view ", v, " is not aligned with view 0"));
      }
    }
    for (int q : a.query) {
      const SparseColumnBatch& s = batch.sparse[q];
      for (size_t i = 0; i < n; ++i) {
        if (s.offsets[i + 1] - s.offsets[i] > 1) {
          return BadBatch(absl::StrCat("attention block '", a.name, "': query sparse[", q, "] has ",
                                       s.offsets[i + 1] - s.offsets[i], " values at sample ", i));
        }
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace internal

absl::StatusOr<std::unique_ptr<Model>> Model::Create(const proto::JobConfig& config) {
  absl::StatusOr<internal::CoreLayout> layout = internal::BuildCoreLayout(config);
  if (!layout.ok()) return layout.status();
  return absl::WrapUnique(new Model(std::make_unique<internal::ModelCore<float>>(*std::move(layout))));
}

Model::Model(std::unique_ptr<internal::ModelCore<float>> core) : core_(std::move(core)) {}
Model::~Model() = default;

size_t Model::num_params() const { return core_->num_params(); }
size_t Model::num_state() const { return core_->num_state(); }
float Model::state_rate() const { return 1.0f - core_->layout().model.dice_momentum(); }
const std::vector<std::string>& Model::tasks() const { return core_->layout().plan.tasks; }
const InputPlan& Model::plan() const { return core_->layout().plan; }

void Model::InitDense(absl::Span<float> dense) const { core_->InitDense(dense); }

absl::Status Model::CheckBatch(const Batch& batch) const { return internal::CheckBatch(core_->layout(), batch); }

void Model::TrainStep(const Batch& batch, absl::Span<const float> dense, absl::Span<const float* const> emb,
                      absl::Span<float> dense_grad, absl::Span<float* const> emb_grad,
                      absl::Span<float> predictions, absl::Span<double> task_loss) {
  core_->TrainStep(batch, dense, emb, dense_grad, emb_grad, predictions, task_loss);
}

void Model::Predict(const Batch& batch, absl::Span<const float> dense, absl::Span<const float* const> emb,
                    absl::Span<float> predictions) {
  core_->Predict(batch, dense, emb, predictions);
}

}  // namespace ember::models
