#include "models/plan.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "proto/config.h"

namespace ember::models {
namespace {

absl::Status Invalid(const std::string& field, const std::string& why) {
  return absl::InvalidArgumentError(absl::StrCat("config field ", field, ": ", why));
}

bool IsSparse(proto::ColumnConfig::Type t) {
  return t == proto::ColumnConfig::SPARSE || t == proto::ColumnConfig::MULTI_SPARSE ||
         t == proto::ColumnConfig::SEQUENCE;
}
bool IsTime(proto::ColumnConfig::Type t) {
  return t == proto::ColumnConfig::TIME || t == proto::ColumnConfig::TIME_SEQUENCE;
}

int FindColumn(const proto::JobConfig& config, const std::string& name) {
  const auto& cols = config.data().columns();
  for (int i = 0; i < cols.size(); ++i) {
    if (cols[i].name() == name) return i;
  }
  return -1;
}

}  // namespace

uint32_t GapBucket(int64_t gap, double unit, uint32_t buckets) {
  if (gap <= 0 || buckets <= 1) return 0;
  const double b = std::floor(std::log2(1.0 + static_cast<double>(gap) / unit));
  if (!(b > 0)) return 0;
  return b >= buckets - 1 ? buckets - 1 : static_cast<uint32_t>(b);
}

absl::StatusOr<InputPlan> PlanInput(const proto::JobConfig& config) {
  InputPlan plan;
  const auto& cols = config.data().columns();
  std::vector<int> sparse_of(cols.size(), -1), time_of(cols.size(), -1);
  for (int i = 0; i < cols.size(); ++i) {
    const proto::ColumnConfig& c = cols[i];
    if (c.type() == proto::ColumnConfig::LABEL) plan.tasks.push_back(c.name());
    if (IsTime(c.type())) {
      time_of[i] = static_cast<int>(plan.time_column.size());
      plan.time_column.push_back(i);
    }
    if (!IsSparse(c.type())) continue;
    const int t = proto::FindTable(config, c.table());
    if (t < 0) {
      return Invalid(absl::StrCat("data.columns[", i, "].table"),
                     absl::StrCat("unknown table '", c.table(), "'"));
    }
    sparse_of[i] = static_cast<int>(plan.sparse_column.size());
    plan.sparse_column.push_back(i);
    plan.sparse_table.push_back(t);
  }
  plan.attention_only.assign(plan.sparse_column.size(), false);
  plan.num_views = static_cast<int>(plan.sparse_column.size());

  const proto::ModelConfig& m = config.model();
  if (m.kind() == proto::ModelConfig::EMBEDDING_MLP && m.attention_size() > 0) {
    return Invalid("model.attention", "kind EMBEDDING_MLP has no attention blocks; use kind DIN");
  }
  if ((m.kind() == proto::ModelConfig::DIN || m.kind() == proto::ModelConfig::SIM) &&
      m.attention_size() == 0) {
    return Invalid("model.attention", "kind DIN and SIM need at least one attention block");
  }
  bool any_search = false;
  for (int b = 0; b < m.attention_size(); ++b) {
    const proto::AttentionConfig& a = m.attention(b);
    const std::string f = absl::StrCat("model.attention[", b, "]");
    AttentionPlan p;
    p.name = a.name().empty() ? absl::StrCat("attention", b) : a.name();
    if (a.query_size() == 0) return Invalid(f + ".query", "names no column");
    if (a.keys_size() != a.query_size()) {
      return Invalid(f + ".keys", absl::StrCat("has ", a.keys_size(), " columns, query has ",
                                               a.query_size(), "; they pair up"));
    }
    for (int j = 0; j < a.query_size(); ++j) {
      const std::string fq = absl::StrCat(f, ".query[", j, "]");
      const std::string fk = absl::StrCat(f, ".keys[", j, "]");
      const int qc = FindColumn(config, a.query(j));
      const int kc = FindColumn(config, a.keys(j));
      if (qc < 0) return Invalid(fq, absl::StrCat("no column named '", a.query(j), "'"));
      if (kc < 0) return Invalid(fk, absl::StrCat("no column named '", a.keys(j), "'"));
      if (cols[qc].type() != proto::ColumnConfig::SPARSE) {
        return Invalid(fq, absl::StrCat("column '", a.query(j), "' must be SPARSE"));
      }
      if (cols[kc].type() != proto::ColumnConfig::SEQUENCE) {
        return Invalid(fk, absl::StrCat("column '", a.keys(j), "' must be a SEQUENCE"));
      }
      if (cols[qc].table() != cols[kc].table() ||
          proto::ColumnSlot(config, qc) != proto::ColumnSlot(config, kc)) {
        return Invalid(fk, absl::StrCat("column '", a.keys(j), "' must use the table and slot of '",
                                        a.query(j), "', so that equal values share a row"));
      }
      if (cols[kc].missing_size() > 0) {
        return Invalid(absl::StrCat("data.columns[", kc, "].missing"),
                       "not allowed on an attention key column: every piece is an item, so that the "
                       "block's columns stay aligned");
      }
      p.query.push_back(sparse_of[qc]);
      p.keys.push_back(sparse_of[kc]);
      const uint32_t dim = config.tables(plan.sparse_table[sparse_of[qc]]).dim();
      p.dims.push_back(static_cast<int>(dim));
      p.query_dim += static_cast<int>(dim);
    }
    for (int j = 0; j < a.hidden_size(); ++j) {
      if (a.hidden(j) < 1 || a.hidden(j) > 65536) {
        return Invalid(absl::StrCat(f, ".hidden[", j, "]"), "must be in [1, 65536]");
      }
      p.hidden.push_back(static_cast<int>(a.hidden(j)));
    }
    if (p.hidden.empty()) p.hidden = {80, 40};
    p.activation = a.activation();
    p.last_n = a.last_n();
    if (a.has_search()) {
      const proto::SearchConfig& s = a.search();
      const std::string fs = f + ".search";
      any_search = true;
      p.search = true;
      p.search_kind = s.kind();
      p.top_k = s.top_k();
      if (p.top_k < 1 || p.top_k > 10000) return Invalid(fs + ".top_k", "must be in [1, 10000]");
      if (a.last_n() != 0) return Invalid(f + ".last_n", "a search block searches all items; drop last_n");
      if (s.kind() == proto::SearchConfig::HARD) {
        for (int j = 0; j < a.query_size(); ++j) {
          if (a.query(j) == s.match_query()) p.match = j;
        }
        if (p.match < 0) {
          return Invalid(fs + ".match_query",
                         absl::StrCat("'", s.match_query(), "' is not one of the block's query columns"));
        }
        if (s.match_key() != a.keys(p.match)) {
          return Invalid(fs + ".match_key", absl::StrCat("must be '", a.keys(p.match),
                                                         "', the key column paired with '",
                                                         s.match_query(), "'"));
        }
      }
      const int n_time = !s.time().empty() + !s.key_times().empty() + !s.gap_table().empty();
      if (n_time != 0 && n_time != 3) {
        return Invalid(fs, "time, key_times and gap_table go together (all or none)");
      }
      if (n_time == 3) {
        const int tc = FindColumn(config, s.time());
        const int kt = FindColumn(config, s.key_times());
        if (tc < 0 || cols[tc].type() != proto::ColumnConfig::TIME) {
          return Invalid(fs + ".time", absl::StrCat("'", s.time(), "' is not a TIME column"));
        }
        if (kt < 0 || cols[kt].type() != proto::ColumnConfig::TIME_SEQUENCE) {
          return Invalid(fs + ".key_times",
                         absl::StrCat("'", s.key_times(), "' is not a TIME_SEQUENCE column"));
        }
        p.time = time_of[tc];
        p.key_times = time_of[kt];
        p.gap_table = proto::FindTable(config, s.gap_table());
        if (p.gap_table < 0) {
          return Invalid(fs + ".gap_table", absl::StrCat("unknown table '", s.gap_table(), "'"));
        }
        p.gap_dim = static_cast<int>(config.tables(p.gap_table).dim());
        if (!(s.gap_unit() > 0) || !std::isfinite(s.gap_unit())) {
          return Invalid(fs + ".gap_unit", "must be a positive number");
        }
        if (s.gap_buckets() < 1 || s.gap_buckets() > 64) {
          return Invalid(fs + ".gap_buckets", "must be in [1, 64]");
        }
        p.gap_unit = s.gap_unit();
        p.gap_buckets = s.gap_buckets();
      }
    }
    for (int k : p.keys) plan.attention_only[k] = true;
    p.first_view = plan.num_views;
    plan.num_views += p.num_views();
    plan.attention.push_back(std::move(p));
  }
  if (m.kind() == proto::ModelConfig::SIM && !any_search) {
    return Invalid("model.attention", "kind SIM needs a block with a search");
  }
  if (m.kind() == proto::ModelConfig::DIN && any_search) {
    return Invalid("model.kind", "a block has a search; that is kind SIM");
  }
  // A key column read by attention must not also be a query (it would be
  // pooled and attended at once); the checks above already require keys to be
  // SEQUENCE and queries SPARSE, so this cannot happen.
  return plan;
}

}  // namespace ember::models
