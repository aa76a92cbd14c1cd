// EmbeddingMlp: config resolution, batch checks and initialisation; the math
// is in internal/embedding_mlp_core.h.
#include "models/embedding_mlp.h"

#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <utility>

#include "absl/memory/memory.h"
#include "absl/strings/str_cat.h"
#include "proto/config.h"

namespace ember::models {
namespace internal {
namespace {

absl::Status Invalid(const std::string& field, const std::string& why) {
  return absl::InvalidArgumentError(absl::StrCat("EmbeddingMlp: config field ", field, ": ", why));
}

absl::Status BadBatch(const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat("EmbeddingMlp: malformed batch: ", what));
}

}  // namespace

absl::StatusOr<ModelLayout> BuildLayout(const proto::JobConfig& config) {
  ModelLayout layout;
  for (int t = 0; t < config.tables_size(); ++t) {
    layout.table_dims.push_back(static_cast<Eigen::Index>(config.tables(t).dim()));
  }
  Eigen::Index input_dim = 0;
  const auto& columns = config.data().columns();
  for (int i = 0; i < columns.size(); ++i) {
    const proto::ColumnConfig& c = columns[i];
    switch (c.type()) {
      case proto::ColumnConfig::LABEL:
        ++layout.num_labels;
        break;
      case proto::ColumnConfig::SPARSE:
      case proto::ColumnConfig::MULTI_SPARSE:
      case proto::ColumnConfig::SEQUENCE: {
        const std::string field = absl::StrCat("data.columns[", i, "].table");
        if (c.table().empty()) return Invalid(field, "a sparse column needs a table");
        const int t = proto::FindTable(config, c.table());
        if (t < 0) return Invalid(field, absl::StrCat("unknown table '", c.table(), "'"));
        const uint32_t dim = config.tables(t).dim();
        if (dim < 1 || dim > 4096) {
          return Invalid(absl::StrCat("tables[", t, "].dim"), "must be in [1, 4096]");
        }
        SparseFeature f;
        f.column = i;
        f.table = t;
        f.dim = static_cast<Eigen::Index>(dim);
        f.pooling =
            c.pooling() == proto::ColumnConfig::MEAN ? PoolingMode::kMean : PoolingMode::kSum;
        f.input_offset = input_dim;
        input_dim += f.dim;
        layout.sparse.push_back(f);
        break;
      }
      case proto::ColumnConfig::DENSE:
        layout.dense_offsets.push_back(input_dim);
        layout.dense_columns.push_back(i);
        ++input_dim;
        break;
      case proto::ColumnConfig::IGNORE:
        break;
    }
  }
  if (layout.num_labels == 0) return Invalid("data.columns", "no LABEL column to train on");
  if (input_dim == 0)
    return Invalid("data.columns", "no SPARSE/MULTI_SPARSE/SEQUENCE/DENSE column");

  layout.widths.push_back(input_dim);
  const auto& hidden = config.model().hidden();
  for (int i = 0; i < hidden.size(); ++i) {
    if (hidden[i] < 1 || hidden[i] > 65536) {
      return Invalid(absl::StrCat("model.hidden[", i, "]"), "must be in [1, 65536]");
    }
    layout.widths.push_back(static_cast<Eigen::Index>(hidden[i]));
  }
  layout.widths.push_back(1);
  for (size_t l = 0; l + 1 < layout.widths.size(); ++l) {
    layout.num_params += DenseLayer<float>::NumParams(layout.widths[l], layout.widths[l + 1]);
  }
  layout.seed = config.model().seed();
  return layout;
}

absl::Status CheckBatch(const ModelLayout& layout, const Batch& batch) {
  if (batch.size < 0) return BadBatch(absl::StrCat("size ", batch.size, " < 0"));
  const size_t n = static_cast<size_t>(batch.size);
  if (batch.num_labels != layout.num_labels) {
    return BadBatch(absl::StrCat("num_labels ", batch.num_labels, ", the config has ",
                                 layout.num_labels, " LABEL columns"));
  }
  if (batch.labels.size() != n * batch.num_labels) {
    return BadBatch(absl::StrCat("labels has ", batch.labels.size(), " floats, expected ", n, " x ",
                                 batch.num_labels));
  }
  if (batch.num_dense != static_cast<int>(layout.dense_offsets.size())) {
    return BadBatch(absl::StrCat("num_dense ", batch.num_dense, ", the config has ",
                                 layout.dense_offsets.size(), " DENSE columns"));
  }
  if (batch.dense.size() != n * batch.num_dense) {
    return BadBatch(absl::StrCat("dense has ", batch.dense.size(), " floats, expected ", n, " x ",
                                 batch.num_dense));
  }
  if (batch.tables.size() != layout.table_dims.size()) {
    return BadBatch(
        absl::StrCat(batch.tables.size(), " tables, the config has ", layout.table_dims.size()));
  }
  if (batch.sparse.size() != layout.sparse.size()) {
    return BadBatch(absl::StrCat(batch.sparse.size(), " sparse columns, the config has ",
                                 layout.sparse.size()));
  }
  for (size_t k = 0; k < layout.sparse.size(); ++k) {
    const SparseFeature& f = layout.sparse[k];
    const SparseColumnBatch& s = batch.sparse[k];
    const std::string where = absl::StrCat("sparse[", k, "] (data.columns[", f.column, "])");
    if (s.column != f.column || s.table != f.table) {
      return BadBatch(absl::StrCat(where, ": column/table ", s.column, "/", s.table, ", expected ",
                                   f.column, "/", f.table));
    }
    if (s.offsets.size() != n + 1) {
      return BadBatch(absl::StrCat(where, ": ", s.offsets.size(), " offsets, expected ", n + 1));
    }
    if (s.offsets.front() != 0 || s.offsets.back() != s.rows.size()) {
      return BadBatch(
          absl::StrCat(where, ": offsets must run from 0 to rows.size() = ", s.rows.size()));
    }
    for (size_t i = 0; i < n; ++i) {
      if (s.offsets[i] > s.offsets[i + 1]) {
        return BadBatch(absl::StrCat(where, ": offsets decrease at sample ", i));
      }
    }
    const size_t num_keys = batch.tables[f.table].keys.size();
    for (size_t r = 0; r < s.rows.size(); ++r) {
      if (s.rows[r] >= num_keys) {
        return BadBatch(absl::StrCat(where, ": rows[", r, "] = ", s.rows[r], " >= ", num_keys,
                                     " keys of table ", f.table));
      }
    }
  }
  return absl::OkStatus();
}

void InitGlorot(const ModelLayout& layout, absl::Span<float> params) {
  DCHECK_EQ(params.size(), layout.num_params);
  // mt19937_64's output sequence is fixed by the standard; std distributions
  // are not, so the bits-to-uniform mapping is ours.
  std::mt19937_64 rng(layout.seed);
  size_t offset = 0;
  for (size_t l = 0; l + 1 < layout.widths.size(); ++l) {
    const size_t in = static_cast<size_t>(layout.widths[l]);
    const size_t out = static_cast<size_t>(layout.widths[l + 1]);
    const double limit = std::sqrt(6.0 / static_cast<double>(in + out));
    for (size_t i = 0; i < in * out; ++i) {
      const double u = static_cast<double>(rng() >> 11) * 0x1.0p-53;  // [0, 1)
      params[offset + i] = static_cast<float>((2 * u - 1) * limit);
    }
    offset += in * out;
    std::fill_n(params.begin() + offset, out, 0.0f);
    offset += out;
  }
}

}  // namespace internal

absl::StatusOr<std::unique_ptr<EmbeddingMlp>> EmbeddingMlp::Create(const proto::JobConfig& config) {
  absl::StatusOr<internal::ModelLayout> layout = internal::BuildLayout(config);
  if (!layout.ok()) return layout.status();
  // The constructor is private, so make_unique cannot reach it.
  return absl::WrapUnique(new EmbeddingMlp(*std::move(layout)));
}

EmbeddingMlp::EmbeddingMlp(internal::ModelLayout layout) : core_(std::move(layout)) {}

size_t EmbeddingMlp::num_params() const { return core_.layout().num_params; }

void EmbeddingMlp::InitParams(absl::Span<float> params) const {
  internal::InitGlorot(core_.layout(), params);
}

absl::Status EmbeddingMlp::CheckBatch(const Batch& batch) const {
  return internal::CheckBatch(core_.layout(), batch);
}

double EmbeddingMlp::TrainStep(const Batch& batch, absl::Span<const float> params,
                               absl::Span<const float* const> emb, absl::Span<float> grad,
                               absl::Span<float* const> emb_grad, absl::Span<float> predictions) {
  return core_.TrainStep(batch, params, emb, grad, emb_grad, predictions);
}

void EmbeddingMlp::Predict(const Batch& batch, absl::Span<const float> params,
                           absl::Span<const float* const> emb, absl::Span<float> predictions) {
  core_.Predict(batch, params, emb, predictions);
}

}  // namespace ember::models
