// The scalar-templated core of models::Model: layout resolved from the
// config, initialisation, and forward/backward over a Batch for every model
// kind (docs/models.md). Model wraps the float instantiation; the tests run
// the double one against finite differences.
#ifndef EMBER_MODELS_INTERNAL_MODEL_CORE_H_
#define EMBER_MODELS_INTERNAL_MODEL_CORE_H_

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "Eigen/Core"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/types/span.h"
#include "glog/logging.h"
#include "models/batch.h"
#include "models/layers.h"
#include "models/nn.h"
#include "models/plan.h"
#include "proto/config.pb.h"

namespace ember::models::internal {

inline Act ToAct(proto::Activation a) {
  switch (a) {
    case proto::SIGMOID:
      return Act::kSigmoid;
    case proto::PRELU:
      return Act::kPrelu;
    case proto::DICE:
      return Act::kDice;
    case proto::RELU:
      break;
  }
  return Act::kRelu;
}

// Everything the core needs from the config, resolved once.
struct CoreLayout {
  InputPlan plan;
  std::vector<Eigen::Index> table_dims;
  struct Pooled {
    int sparse = 0;  // sparse index
    int table = 0;
    Eigen::Index dim = 0;
    PoolingMode pooling = PoolingMode::kSum;
    Eigen::Index offset = 0;  // in the input
  };
  std::vector<Pooled> pooled;
  std::vector<Eigen::Index> block_offset;  // input offset of each attention block's output
  Eigen::Index dense_offset = 0;           // input offset of the first DENSE column
  int num_dense = 0;
  Eigen::Index input_dim = 0;
  proto::ModelConfig model;  // kind, widths, activation, mmoe, dice settings, seed
  std::vector<float> task_weight;

  int num_tasks() const { return static_cast<int>(plan.tasks.size()); }
};

[[nodiscard]] absl::StatusOr<CoreLayout> BuildCoreLayout(const proto::JobConfig& config);
[[nodiscard]] absl::Status CheckBatch(const CoreLayout& layout, const Batch& batch);

// Writes the initial dense vector; see Model::InitDense. Needs the block
// shapes only, so it works on the float core's description for any T.
template <typename T>
class ModelCore {
 public:
  explicit ModelCore(CoreLayout layout) : layout_(std::move(layout)) {
    const proto::ModelConfig& m = layout_.model;
    const T eps = static_cast<T>(m.dice_epsilon());
    size_t p = 0, s = 0;
    for (const AttentionPlan& a : layout_.plan.attention) {
      std::vector<Eigen::Index> hidden(a.hidden.begin(), a.hidden.end());
      units_.emplace_back(a.query_dim, a.key_dim(), hidden, ToAct(a.activation), p, s, eps);
      unit_specs_.push_back({Widths(3 * a.query_dim + a.key_dim(), a.hidden, 1), a.activation, false, p, s});
      p += units_.back().num_params();
      s += units_.back().num_state();
    }
    const Act act = ToAct(m.activation());
    const std::vector<int> hidden(m.hidden().begin(), m.hidden().end());
    if (m.kind() != proto::ModelConfig::MMOE) {
      AddMlp(Widths(layout_.input_dim, hidden, 1), act, m.activation(), false, &p, &s, &head_);
    } else {
      const proto::MmoeConfig& e = m.mmoe();
      std::vector<int> eh(e.expert_hidden().begin(), e.expert_hidden().end());
      if (eh.empty()) eh = {64};
      std::vector<int> th(e.tower_hidden().begin(), e.tower_hidden().end());
      if (th.empty()) th = {32};
      expert_width_ = eh.back();
      const int num_experts = static_cast<int>(e.num_experts());
      for (int i = 0; i < num_experts; ++i) {
        AddMlp(Widths(layout_.input_dim, std::vector<int>(eh.begin(), eh.end() - 1), eh.back()), act,
               m.activation(), true, &p, &s, &experts_);
      }
      for (int t = 0; t < layout_.num_tasks(); ++t) {
        gates_.emplace_back(layout_.input_dim, num_experts, p);
        gate_offsets_.push_back(p);
        p += gates_.back().num_params();
      }
      for (int t = 0; t < layout_.num_tasks(); ++t) {
        AddMlp(Widths(expert_width_, th, 1), act, m.activation(), false, &p, &s, &towers_);
      }
    }
    num_params_ = p;
    num_state_ = s;
    blocks_.resize(units_.size());
    task_weight_.assign(layout_.task_weight.begin(), layout_.task_weight.end());
  }
  ModelCore(const ModelCore&) = delete;
  ModelCore& operator=(const ModelCore&) = delete;

  const CoreLayout& layout() const { return layout_; }
  size_t num_params() const { return num_params_; }
  size_t num_state() const { return num_state_; }

  // params (num_params) then state (num_state).
  void InitDense(absl::Span<T> dense) const {
    DCHECK_EQ(dense.size(), num_params_ + num_state_);
    // mt19937_64's sequence is fixed by the standard; std distributions are
    // not, so the bits-to-uniform mapping is ours. One stream over every
    // weight matrix in parameter order.
    std::mt19937_64 rng(layout_.model.seed());
    auto glorot = [&](size_t offset, size_t in, size_t out) {
      const double limit = std::sqrt(6.0 / static_cast<double>(in + out));
      for (size_t i = 0; i < in * out; ++i) {
        const double u = static_cast<double>(rng() >> 11) * 0x1.0p-53;  // [0, 1)
        dense[offset + i] = static_cast<T>((2 * u - 1) * limit);
      }
      std::fill_n(dense.begin() + offset + in * out, out, T(0));  // bias
    };
    std::vector<const MlpSpec*> in_order;
    for (const MlpSpec& u : unit_specs_) in_order.push_back(&u);
    for (const MlpSpec& h : head_) in_order.push_back(&h);
    for (const MlpSpec& h : experts_) in_order.push_back(&h);
    size_t gate_after = in_order.size();
    for (const MlpSpec& h : towers_) in_order.push_back(&h);
    for (size_t k = 0; k <= in_order.size(); ++k) {
      if (k == gate_after) {
        for (const DenseLayer<T>& g : gates_) glorot(g.offset(), g.in_dim(), g.out_dim());
      }
      if (k == in_order.size()) break;
      const MlpSpec& spec = *in_order[k];
      size_t p = spec.param_offset;
      size_t s = num_params_ + spec.state_offset;
      for (size_t l = 0; l + 1 < spec.widths.size(); ++l) {
        const size_t in = spec.widths[l], out = spec.widths[l + 1];
        glorot(p, in, out);
        p += in * out + out;
        const bool activated = l + 2 < spec.widths.size() || spec.activate_last;
        if (!activated) continue;
        if (spec.act == proto::PRELU || spec.act == proto::DICE) {
          std::fill_n(dense.begin() + p, out, spec.act == proto::PRELU ? T(0.25) : T(0));
          p += out;
        }
        if (spec.act == proto::DICE) {
          std::fill_n(dense.begin() + s, out, T(0));    // mean
          std::fill_n(dense.begin() + s + out, out, T(1));  // var
          s += 2 * out;
        }
      }
    }
  }

  // See Model::TrainStep; the batch must pass CheckBatch.
  void TrainStep(const Batch& batch, absl::Span<const T> dense, absl::Span<const T* const> emb,
                 absl::Span<T> dense_grad, absl::Span<T* const> emb_grad,
                 absl::Span<T> predictions, absl::Span<double> task_loss) {
    DCHECK_EQ(dense.size(), num_params_ + num_state_);
    DCHECK_EQ(dense_grad.size(), dense.size());
    const absl::Span<const T> params = dense.subspan(0, num_params_);
    const absl::Span<const T> state = dense.subspan(num_params_);
    const absl::Span<T> grad = dense_grad.subspan(0, num_params_);
    const absl::Span<T> stats = dense_grad.subspan(num_params_);
    for (size_t t = 0; t < emb_grad.size(); ++t) {
      const size_t n = batch.tables[t].keys.size() * static_cast<size_t>(layout_.table_dims[t]);
      if (n != 0) std::fill_n(emb_grad[t], n, T(0));
    }
    std::fill(dense_grad.begin(), dense_grad.end(), T(0));
    std::fill(task_loss.begin(), task_loss.end(), 0.0);
    // With no rows the statistics equal the averages, so the push is zero.
    std::copy(state.begin(), state.end(), stats.begin());
    const Eigen::Index b = batch.size;
    if (b == 0) return;
    Forward(Mode::kTrain, batch, params, state, emb, stats);
    WritePredictions(predictions);

    const int tasks = layout_.num_tasks();
    Fit(labels_, b, tasks);
    for (Eigen::Index i = 0; i < b; ++i) {
      for (int t = 0; t < tasks; ++t) labels_(i, t) = static_cast<T>(batch.labels[i * batch.num_labels + t]);
    }
    Fit(dlogits_, b, tasks);
    MultiTaskBce<T>(R(logits_), R(labels_), task_weight_, R(dlogits_), task_loss);

    // The head: dX.
    Fit(dx_, b, layout_.input_dim);
    HeadBackward(params, grad);

    // Pooled columns scatter into their rows; dense-column gradients drop.
    for (const CoreLayout::Pooled& f : layout_.pooled) {
      const SparseColumnBatch& s = batch.sparse[f.sparse];
      if (s.rows.empty()) continue;
      PoolBackward<T>(f.pooling, s.offsets, s.rows, R(dx_).middleCols(f.offset, f.dim),
                      TableMap(batch, emb_grad, f.table));
    }
    for (size_t k = 0; k < units_.size(); ++k) BlockBackward(k, batch, params, emb_grad, grad);

    // State part: batch statistic - pulled average.
    for (size_t i = 0; i < num_state_; ++i) stats[i] -= state[i];
  }

  void Predict(const Batch& batch, absl::Span<const T> dense, absl::Span<const T* const> emb,
               absl::Span<T> predictions) {
    if (batch.size == 0) return;
    const absl::Span<const T> params = dense.subspan(0, num_params_);
    const absl::Span<const T> state = dense.subspan(num_params_);
    scratch_stats_.resize(num_state_);
    Forward(Mode::kEval, batch, params, state, emb, absl::MakeSpan(scratch_stats_));
    WritePredictions(predictions);
  }

 private:
  struct MlpSpec {
    std::vector<Eigen::Index> widths;
    proto::Activation act;
    bool activate_last;
    size_t param_offset, state_offset;
  };
  // An attention block's per-batch values.
  struct BlockScratch {
    RowMatrix<T> q, dq;  // batch rows
    // Attended rows, a different count every batch: grow-only buffers.
    Scratch<T> k, dk, scores, dscores;
    Eigen::Index rows = 0;
    std::vector<uint32_t> segments;  // of the attended items
    std::vector<uint32_t> item;      // attended row -> row of the block's views
    typename ActivationUnit<T>::Cache cache;
    std::vector<std::pair<T, uint32_t>> ranked;  // soft search scratch
  };

  static std::vector<Eigen::Index> Widths(Eigen::Index in, const std::vector<int>& hidden,
                                          Eigen::Index out) {
    std::vector<Eigen::Index> w{in};
    for (int h : hidden) w.push_back(h);
    w.push_back(out);
    return w;
  }

  void AddMlp(std::vector<Eigen::Index> widths, Act act, proto::Activation pact, bool activate_last,
              size_t* p, size_t* s, std::vector<MlpSpec>* specs) {
    mlps_.push_back(std::make_unique<Mlp<T>>(widths, act, activate_last, *p, *s,
                                             static_cast<T>(layout_.model.dice_epsilon())));
    mlp_caches_.push_back(std::make_unique<typename Mlp<T>::Cache>());
    specs->push_back({std::move(widths), pact, activate_last, *p, *s});
    *p += mlps_.back()->num_params();
    *s += mlps_.back()->num_state();
  }

  Eigen::Map<const RowMatrix<T>> Table(const Batch& batch, absl::Span<const T* const> emb, int t) const {
    return Eigen::Map<const RowMatrix<T>>(emb[t], static_cast<Eigen::Index>(batch.tables[t].keys.size()),
                                          layout_.table_dims[t]);
  }
  Eigen::Map<RowMatrix<T>> TableMap(const Batch& batch, absl::Span<T* const> g, int t) const {
    return Eigen::Map<RowMatrix<T>>(g[t], static_cast<Eigen::Index>(batch.tables[t].keys.size()),
                                    layout_.table_dims[t]);
  }

  void Forward(Mode mode, const Batch& batch, absl::Span<const T> params, absl::Span<const T> state,
               absl::Span<const T* const> emb, absl::Span<T> stats) {
    const Eigen::Index b = batch.size;
    b_ = b;
    Fit(x_, b, layout_.input_dim);
    for (const CoreLayout::Pooled& f : layout_.pooled) {
      const SparseColumnBatch& s = batch.sparse[f.sparse];
      PoolForward<T>(f.pooling, s.offsets, s.rows, Table(batch, emb, f.table),
                     R(x_).middleCols(f.offset, f.dim));
    }
    for (size_t k = 0; k < units_.size(); ++k) BlockForward(mode, k, batch, params, state, emb, stats);
    for (int j = 0; j < layout_.num_dense; ++j) {
      for (Eigen::Index i = 0; i < b; ++i) {
        x_(i, layout_.dense_offset + j) = static_cast<T>(batch.dense[i * batch.num_dense + j]);
      }
    }
    HeadForward(mode, params, state, stats);
  }

  void BlockForward(Mode mode, size_t k, const Batch& batch, absl::Span<const T> params,
                    absl::Span<const T> state, absl::Span<const T* const> emb, absl::Span<T> stats) {
    const AttentionPlan& a = layout_.plan.attention[k];
    BlockScratch& s = blocks_[k];
    const Eigen::Index b = batch.size;
    // The query: the candidate's embeddings, side by side.
    Fit(s.q, b, a.query_dim);
    Eigen::Index off = 0;
    for (size_t j = 0; j < a.query.size(); ++j) {
      const SparseColumnBatch& col = batch.sparse[a.query[j]];
      PoolForward<T>(PoolingMode::kSum, col.offsets, col.rows, Table(batch, emb, col.table),
                     R(s.q).middleCols(off, a.dims[j]));
      off += a.dims[j];
    }
    // The attended items: all the views' rows, or the soft search's top_k.
    const SparseColumnBatch& v0 = batch.sparse[a.first_view];
    s.segments.assign(1, 0);
    s.item.clear();
    if (a.search && a.search_kind == proto::SearchConfig::SOFT) {
      // Score = <q, k> over the query's columns (item and category): the
      // category term makes same-category items rank high once its
      // embeddings have grown apart.
      for (Eigen::Index i = 0; i < b; ++i) {
        s.ranked.clear();
        for (uint32_t r = v0.offsets[i]; r < v0.offsets[i + 1]; ++r) {
          T dot = 0;
          Eigen::Index qoff = 0;
          for (size_t j = 0; j < a.keys.size(); ++j) {
            const SparseColumnBatch& view = batch.sparse[a.first_view + j];
            dot += Table(batch, emb, view.table).row(view.rows[r]).dot(s.q.row(i).segment(qoff, a.dims[j]));
            qoff += a.dims[j];
          }
          s.ranked.emplace_back(-dot, r);
        }
        if (s.ranked.size() > a.top_k) {
          std::nth_element(s.ranked.begin(), s.ranked.begin() + a.top_k, s.ranked.end());
          s.ranked.resize(a.top_k);
        }
        // Back in time order.
        std::sort(s.ranked.begin(), s.ranked.end(),
                  [](const auto& x, const auto& y) { return x.second < y.second; });
        for (const auto& [score, r] : s.ranked) s.item.push_back(r);
        s.segments.push_back(static_cast<uint32_t>(s.item.size()));
      }
    } else {
      s.segments.assign(v0.offsets.begin(), v0.offsets.end());
      s.item.resize(v0.rows.size());
      for (size_t r = 0; r < s.item.size(); ++r) s.item[r] = static_cast<uint32_t>(r);
    }
    const Eigen::Index rows = static_cast<Eigen::Index>(s.item.size());
    s.rows = rows;
    Eigen::Map<RowMatrix<T>> keys = s.k.View(rows, a.key_dim());
    off = 0;
    for (int v = 0; v < a.num_views(); ++v) {
      const SparseColumnBatch& view = batch.sparse[a.first_view + v];
      const Eigen::Index d = v < static_cast<int>(a.dims.size()) ? a.dims[v] : a.gap_dim;
      const auto table = Table(batch, emb, view.table);
      for (Eigen::Index r = 0; r < rows; ++r) keys.row(r).segment(off, d) = table.row(view.rows[s.item[r]]);
      off += d;
    }
    Eigen::Map<ColVector<T>> scores(s.scores.View(rows, 1).data(), rows);
    units_[k].Forward(mode, params, state, R(s.q), keys, s.segments, scores, &s.cache, stats);
    AttentionPoolForward<T>(scores, keys, s.segments, R(x_).middleCols(layout_.block_offset[k], a.key_dim()));
  }

  void BlockBackward(size_t k, const Batch& batch, absl::Span<const T> params,
                     absl::Span<T* const> emb_grad, absl::Span<T> grad) {
    const AttentionPlan& a = layout_.plan.attention[k];
    BlockScratch& s = blocks_[k];
    const Eigen::Index rows = s.rows;
    const Eigen::Map<RowMatrix<T>> keys = s.k.View(rows, a.key_dim());
    Eigen::Map<RowMatrix<T>> dk = s.dk.View(rows, a.key_dim());
    dk.setZero();
    Fit(s.dq, batch.size, a.query_dim);
    R(s.dq).setZero();
    const Eigen::Map<ColVector<T>> scores(s.scores.View(rows, 1).data(), rows);
    Eigen::Map<ColVector<T>> dscores(s.dscores.View(rows, 1).data(), rows);
    AttentionPoolBackward<T>(scores, keys, s.segments, R(dx_).middleCols(layout_.block_offset[k], a.key_dim()),
                             dscores, dk);
    units_[k].Backward(params, R(s.q), keys, s.segments, dscores, &s.cache, grad, R(s.dq), dk);
    Eigen::Index off = 0;
    for (int v = 0; v < a.num_views(); ++v) {
      const SparseColumnBatch& view = batch.sparse[a.first_view + v];
      const Eigen::Index d = v < static_cast<int>(a.dims.size()) ? a.dims[v] : a.gap_dim;
      auto table = TableMap(batch, emb_grad, view.table);
      for (Eigen::Index r = 0; r < rows; ++r) table.row(view.rows[s.item[r]]) += dk.row(r).segment(off, d);
      off += d;
    }
    off = 0;
    for (size_t j = 0; j < a.query.size(); ++j) {
      const SparseColumnBatch& col = batch.sparse[a.query[j]];
      if (!col.rows.empty()) {
        PoolBackward<T>(PoolingMode::kSum, col.offsets, col.rows, R(s.dq).middleCols(off, a.dims[j]),
                        TableMap(batch, emb_grad, col.table));
      }
      off += a.dims[j];
    }
  }

  // x_ -> logits_ (b x tasks).
  void HeadForward(Mode mode, absl::Span<const T> params, absl::Span<const T> state, absl::Span<T> stats) {
    const Eigen::Index b = b_;
    Fit(logits_, b, layout_.num_tasks());
    if (experts_.empty()) {
      R(logits_) = mlps_[0]->Forward(mode, params, state, R(x_), mlp_caches_[0].get(), stats);
      return;
    }
    const Eigen::Index e = static_cast<Eigen::Index>(experts_.size());
    const Eigen::Index h = expert_width_;
    Fit(expert_out_, b, e * h);
    for (Eigen::Index i = 0; i < e; ++i) {
      R(expert_out_).middleCols(i * h, h) = mlps_[i]->Forward(mode, params, state, R(x_), mlp_caches_[i].get(), stats);
    }
    const int tasks = layout_.num_tasks();
    gates_out_.resize(tasks);
    mix_.resize(tasks);
    for (int t = 0; t < tasks; ++t) {
      Fit(gates_out_[t], b, e);
      gates_[t].Forward(params, R(x_), R(gates_out_[t]));
      SoftmaxForward<T>(R(gates_out_[t]), R(gates_out_[t]));
      Fit(mix_[t], b, h);
      MixtureForward<T>(R(gates_out_[t]), R(expert_out_), R(mix_[t]));
      const size_t m = e + t;
      R(logits_).col(t) = mlps_[m]->Forward(mode, params, state, R(mix_[t]), mlp_caches_[m].get(), stats).col(0);
    }
  }

  // dlogits_ -> dx_, writing the head's parameter gradients.
  void HeadBackward(absl::Span<const T> params, absl::Span<T> grad) {
    const Eigen::Index b = b_;
    if (experts_.empty()) {
      MatrixRef<T> dx(R(dx_));
      mlps_[0]->Backward(params, R(x_), R(dlogits_), mlp_caches_[0].get(), grad, &dx);
      return;
    }
    const Eigen::Index e = static_cast<Eigen::Index>(experts_.size());
    const Eigen::Index h = expert_width_;
    Fit(dexpert_, b, e * h);
    R(dexpert_).setZero();
    R(dx_).setZero();
    const int tasks = layout_.num_tasks();
    for (int t = 0; t < tasks; ++t) {
      const size_t m = e + t;
      Fit(dmix_, b, h);
      MatrixRef<T> dmix(R(dmix_));
      Fit(dlogit_col_, b, 1);
      R(dlogit_col_) = R(dlogits_).col(t);
      mlps_[m]->Backward(params, R(mix_[t]), R(dlogit_col_), mlp_caches_[m].get(), grad, &dmix);
      Fit(dgate_, b, e);
      MixtureBackward<T>(R(gates_out_[t]), R(expert_out_), R(dmix_), R(dgate_), R(dexpert_));
      SoftmaxBackward<T>(R(gates_out_[t]), R(dgate_), R(dgate_));
      gates_[t].ParamGradient(R(x_), R(dgate_), grad);
      Fit(tmp_dx_, b, layout_.input_dim);
      gates_[t].InputGradient(params, R(dgate_), R(tmp_dx_));
      R(dx_) += R(tmp_dx_);
    }
    for (Eigen::Index i = 0; i < e; ++i) {
      Fit(tmp_dx_, b, layout_.input_dim);
      MatrixRef<T> tdx(R(tmp_dx_));
      Fit(dexpert_slice_, b, h);
      R(dexpert_slice_) = R(dexpert_).middleCols(i * h, h);
      mlps_[i]->Backward(params, R(x_), R(dexpert_slice_), mlp_caches_[i].get(), grad, &tdx);
      R(dx_) += R(tmp_dx_);
    }
  }

  void WritePredictions(absl::Span<T> predictions) {
    DCHECK_GE(predictions.size(), static_cast<size_t>(b_ * logits_.cols()));
    Eigen::Map<RowMatrix<T>> out(predictions.data(), b_, logits_.cols());
    SigmoidForward<T>(R(logits_), out);
  }

  const CoreLayout layout_;
  std::vector<ActivationUnit<T>> units_;
  std::vector<MlpSpec> unit_specs_;
  // mlps_: the MLP head, or the experts then the towers.
  std::vector<std::unique_ptr<Mlp<T>>> mlps_;
  std::vector<std::unique_ptr<typename Mlp<T>::Cache>> mlp_caches_;
  std::vector<MlpSpec> head_, experts_, towers_;
  std::vector<DenseLayer<T>> gates_;
  std::vector<size_t> gate_offsets_;
  Eigen::Index expert_width_ = 0;
  size_t num_params_ = 0, num_state_ = 0;

  // Grows `m` to at least `rows` rows of `cols` columns, never shrinking, so
  // a shorter batch (a chunk's last) reuses the buffer; use R(m) for the
  // current batch's rows.
  static void Fit(RowMatrix<T>& m, Eigen::Index rows, Eigen::Index cols) {
    if (m.rows() < rows || m.cols() != cols) m.resize(std::max(rows, m.cols() == cols ? m.rows() : 0), cols);
  }
  // The current batch's rows of a Fit buffer (contiguous: row-major).
  auto R(RowMatrix<T>& m) const { return m.topRows(b_); }

  // Scratch, reused batch to batch.
  Eigen::Index b_ = 0;  // rows of the batch in flight
  std::vector<BlockScratch> blocks_;
  RowMatrix<T> x_, dx_, tmp_dx_, logits_, dlogits_, labels_, expert_out_, dexpert_, dmix_, dgate_;
  RowMatrix<T> dlogit_col_, dexpert_slice_;
  std::vector<RowMatrix<T>> gates_out_, mix_;
  std::vector<T> scratch_stats_;
  std::vector<T> task_weight_;  // layout_.task_weight in T, for MultiTaskBce
};

}  // namespace ember::models::internal

#endif  // EMBER_MODELS_INTERNAL_MODEL_CORE_H_
