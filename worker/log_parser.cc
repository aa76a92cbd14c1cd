// Log line parsing: split on tabs with memchr, numbers with std::from_chars,
// keys hashed straight from views into the line. Strings are built only for
// error messages.
#include "worker/log_parser.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "proto/config.h"
#include "proto/keys.h"

namespace ember::worker {
namespace {

using proto::ColumnConfig;

// Parses all of `s` as a decimal float ("1", "-0.5", "3e-2", "inf", "nan").
// A leading '+' is accepted, whitespace is not. A value too large for a float
// becomes +-inf and a value too small 0 or a denormal, as strtof does.
bool ParseFloat(std::string_view s, float* out) {
  const char* b = s.data();
  const char* e = b + s.size();
  if (b != e && *b == '+') {
    ++b;
    // from_chars would otherwise take the "-1" of "+-1".
    if (b != e && *b == '-') return false;
  }
  if (b == e) return false;
  float v;
  std::from_chars_result r = std::from_chars(b, e, v);
  if (r.ptr != e) return false;
  if (r.ec == std::errc()) {
    *out = v;
    return true;
  }
  if (r.ec != std::errc::result_out_of_range) return false;
  // from_chars reports overflow and underflow alike and leaves `v` unset;
  // strtof tells them apart. Rare, so the copy for the terminator is fine.
  std::string copy(b, e);
  *out = std::strtof(copy.c_str(), nullptr);
  return true;
}

// A value as error messages show it: quoted, escaped, and cut short.
std::string Quote(std::string_view value) {
  constexpr size_t kMax = 40;
  // Debian's absl has its own string_view type, not an alias of std's.
  const absl::string_view shown(value.data(), std::min(value.size(), kMax));
  if (value.size() <= kMax) return absl::StrCat("'", absl::CHexEscape(shown), "'");
  return absl::StrCat("'", absl::CHexEscape(shown), "...' (", value.size(), " bytes)");
}

}  // namespace

absl::StatusOr<LogParser> LogParser::Create(const proto::JobConfig& config) {
  const proto::DataConfig& data = config.data();
  if (data.columns_size() == 0) {
    return absl::InvalidArgumentError("data.columns: at least one column is required");
  }
  LogParser parser;
  for (int i = 0; i < data.columns_size(); ++i) {
    const ColumnConfig& cc = data.columns(i);
    Column c;
    c.type = cc.type();
    c.name = cc.name();
    c.number = i + 1;
    c.slot = proto::ColumnSlot(config, i);
    c.max_len = cc.max_len();
    c.missing.assign(cc.missing().begin(), cc.missing().end());
    switch (cc.type()) {
      case ColumnConfig::LABEL:
        ++parser.num_labels_;
        break;
      case ColumnConfig::DENSE:
        ++parser.num_dense_;
        break;
      case ColumnConfig::SPARSE:
      case ColumnConfig::MULTI_SPARSE:
      case ColumnConfig::SEQUENCE: {
        const int table = proto::FindTable(config, cc.table());
        if (table < 0) {
          return absl::InvalidArgumentError(absl::StrCat("data.columns[", i, "] ('", cc.name(),
                                                         "'): unknown table '", cc.table(), "'"));
        }
        if (cc.type() != ColumnConfig::SPARSE) {
          if (cc.separator().size() != 1 || cc.separator()[0] == '\t') {
            return absl::InvalidArgumentError(
                absl::StrCat("data.columns[", i, "] ('", cc.name(),
                             "'): separator must be one character other than a tab"));
          }
          c.separator = cc.separator()[0];
        }
        parser.sparse_.push_back(SparseColumn{i, table});
        break;
      }
      case ColumnConfig::TIME_SEQUENCE:
        if (cc.separator().size() != 1 || cc.separator()[0] == '\t') {
          return absl::InvalidArgumentError(
              absl::StrCat("data.columns[", i, "] ('", cc.name(),
                           "'): separator must be one character other than a tab"));
        }
        c.separator = cc.separator()[0];
        ++parser.num_times_;
        break;
      case ColumnConfig::TIME:
        ++parser.num_times_;
        break;
      case ColumnConfig::IGNORE:
        break;
    }
    parser.columns_.push_back(std::move(c));
  }
  return parser;
}

bool LogParser::IsMissing(const Column& c, std::string_view value) const {
  for (const std::string& m : c.missing) {
    if (m == value) return true;
  }
  return false;
}

absl::Status LogParser::ParseLabel(const Column& c, std::string_view value, float* out) const {
  // Nearly every label is a bare 0 or 1.
  if (value.size() == 1 && (value[0] == '0' || value[0] == '1')) {
    *out = static_cast<float>(value[0] - '0');
    return absl::OkStatus();
  }
  if (value.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("column '", c.name, "' (#", c.number, "): empty value"));
  }
  // The model has no notion of an unknown label, so a line without one
  // cannot be trained on.
  if (IsMissing(c, value)) {
    return absl::InvalidArgumentError(
        absl::StrCat("column '", c.name, "' (#", c.number, "): missing label ", Quote(value)));
  }
  float v;
  if (!ParseFloat(value, &v)) {
    return absl::InvalidArgumentError(absl::StrCat("column '", c.name, "' (#", c.number,
                                                   "): ", Quote(value), " is not a number"));
  }
  if (!(v >= 0.0f && v <= 1.0f)) {  // also rejects NaN
    return absl::InvalidArgumentError(absl::StrCat("column '", c.name, "' (#", c.number,
                                                   "): label ", Quote(value), " is not in [0, 1]"));
  }
  *out = v;
  return absl::OkStatus();
}

absl::Status LogParser::ParseDense(const Column& c, std::string_view value, float* out) const {
  if (IsMissing(c, value)) {
    *out = 0.0f;
    return absl::OkStatus();
  }
  if (value.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("column '", c.name, "' (#", c.number, "): empty value"));
  }
  float v;
  if (!ParseFloat(value, &v)) {
    return absl::InvalidArgumentError(absl::StrCat("column '", c.name, "' (#", c.number,
                                                   "): ", Quote(value), " is not a number"));
  }
  if (!std::isfinite(v)) {
    return absl::InvalidArgumentError(absl::StrCat("column '", c.name, "' (#", c.number,
                                                   "): ", Quote(value), " is not a finite float"));
  }
  *out = v;
  return absl::OkStatus();
}

void LogParser::AppendKeys(const Column& c, std::string_view value,
                           std::vector<uint64_t>* keys) const {
  if (value.empty() || IsMissing(c, value)) return;
  if (c.type == ColumnConfig::SPARSE) {
    keys->push_back(proto::Hash64(c.slot, value));
    return;
  }
  const char sep = c.separator;
  uint32_t kept = 0;
  if (c.type == ColumnConfig::SEQUENCE && c.max_len != 0) {
    // Keep the newest max_len values: walk from the end so that a long
    // history costs only max_len hashes, then restore time order.
    const size_t first = keys->size();
    const char* begin = value.data();
    const char* piece_end = begin + value.size();
    while (true) {
      const char* s = piece_end;
      while (s != begin && s[-1] != sep) --s;
      const char* piece_begin = s;
      s = s != begin ? s - 1 : nullptr;
      std::string_view piece(piece_begin, piece_end - piece_begin);
      if (!piece.empty() && !IsMissing(c, piece)) {
        keys->push_back(proto::Hash64(c.slot, piece));
        if (++kept == c.max_len) break;
      }
      if (s == nullptr) break;
      piece_end = s;
    }
    std::reverse(keys->begin() + first, keys->end());
    return;
  }
  // MULTI_SPARSE keeps the first max_len values; an uncapped SEQUENCE keeps all.
  const char* p = value.data();
  const char* end = p + value.size();
  while (true) {
    const char* s = p;
    while (s != end && *s != sep) ++s;
    const char* piece_end = s;
    if (s == end) s = nullptr;
    std::string_view piece(p, piece_end - p);
    if (!piece.empty() && !IsMissing(c, piece)) {
      keys->push_back(proto::Hash64(c.slot, piece));
      if (++kept == c.max_len) break;  // never true for max_len 0
    }
    if (s == nullptr) break;
    p = s + 1;
  }
}

absl::Status LogParser::AppendTimes(const Column& c, std::string_view value,
                                    std::vector<int64_t>* times) const {
  auto parse = [&](std::string_view piece) -> absl::Status {
    int64_t v = 0;
    const char* b = piece.data();
    const char* e = b + piece.size();
    std::from_chars_result r = std::from_chars(b, e, v);
    if (piece.empty() || r.ec != std::errc() || r.ptr != e) {
      return absl::InvalidArgumentError(absl::StrCat("column '", c.name, "' (#", c.number, "): ",
                                                     Quote(piece), " is not an integer time"));
    }
    times->push_back(v);
    return absl::OkStatus();
  };
  if (c.type == ColumnConfig::TIME) return parse(value);
  // TIME_SEQUENCE: every piece is a time (no missing pieces: the times must
  // stay aligned with the sequence they describe); keep the last max_len.
  if (value.empty()) return absl::OkStatus();
  const size_t first = times->size();
  const char* p = value.data();
  const char* end = p + value.size();
  while (true) {
    const char* s = static_cast<const char*>(std::memchr(p, c.separator, end - p));
    const char* piece_end = s != nullptr ? s : end;
    absl::Status st = parse(std::string_view(p, piece_end - p));
    if (!st.ok()) return st;
    if (s == nullptr) break;
    p = s + 1;
  }
  const size_t n = times->size() - first;
  if (c.max_len != 0 && n > c.max_len) {
    times->erase(times->begin() + first, times->begin() + (first + n - c.max_len));
  }
  return absl::OkStatus();
}

absl::Status LogParser::Parse(std::string_view line, ParsedLine* out) const {
  if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
  if (line.empty()) return absl::InvalidArgumentError("empty line");
  const size_t tabs = static_cast<size_t>(std::count(line.begin(), line.end(), '\t'));
  if (tabs + 1 != columns_.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("expected ", columns_.size(), " columns, got ", tabs + 1));
  }

  out->labels.resize(num_labels_);
  out->dense.resize(num_dense_);
  out->keys.clear();
  out->key_begin.resize(sparse_.size() + 1);
  out->times.clear();
  out->time_begin.resize(num_times_ + 1);
  out->raw.resize(columns_.size());
  std::string_view* raw = out->raw.data();
  uint32_t* time_begin = out->time_begin.data();
  float* label = out->labels.data();
  float* dense = out->dense.data();
  uint32_t* key_begin = out->key_begin.data();

  const char* p = line.data();
  const char* end = p + line.size();
  for (const Column& c : columns_) {
    // The count above guarantees a tab after every column but the last.
    const char* tab = static_cast<const char*>(std::memchr(p, '\t', end - p));
    const char* field_end = tab != nullptr ? tab : end;
    const std::string_view value(p, field_end - p);
    p = tab != nullptr ? tab + 1 : end;
    *raw++ = value;
    switch (c.type) {
      case ColumnConfig::LABEL: {
        absl::Status st = ParseLabel(c, value, label++);
        if (!st.ok()) return st;
        break;
      }
      case ColumnConfig::DENSE: {
        absl::Status st = ParseDense(c, value, dense++);
        if (!st.ok()) return st;
        break;
      }
      case ColumnConfig::SPARSE:
      case ColumnConfig::MULTI_SPARSE:
      case ColumnConfig::SEQUENCE:
        *key_begin++ = static_cast<uint32_t>(out->keys.size());
        if (!c.positional) AppendKeys(c, value, &out->keys);
        break;
      case ColumnConfig::TIME:
      case ColumnConfig::TIME_SEQUENCE: {
        *time_begin++ = static_cast<uint32_t>(out->times.size());
        if (c.positional) break;
        absl::Status st = AppendTimes(c, value, &out->times);
        if (!st.ok()) return st;
        break;
      }
      case ColumnConfig::IGNORE:
        break;
    }
  }
  *key_begin = static_cast<uint32_t>(out->keys.size());
  *time_begin = static_cast<uint32_t>(out->times.size());
  return absl::OkStatus();
}

}  // namespace ember::worker
