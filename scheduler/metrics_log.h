// MetricsLog: the scheduler's --metrics_file, JSON lines a person can plot
// (launch/plot.py) or load into anything. One object per event: "progress"
// ticks, "eval", "epoch", "checkpoint", "reset", "recovery", "final". The
// fields are listed in docs/operations.md; an undefined figure (NaN) is left
// out, never written as NaN.
//
// Thread safety: one thread at a time.
#ifndef EMBER_SCHEDULER_METRICS_LOG_H_
#define EMBER_SCHEDULER_METRICS_LOG_H_

#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace ember::scheduler {

// One JSON object, built field by field.
class JsonObject {
 public:
  JsonObject& Add(const std::string& key, const std::string& value);
  JsonObject& Add(const std::string& key, const char* value) { return Add(key, std::string(value)); }
  // Left out when not finite.
  JsonObject& Add(const std::string& key, double value);
  JsonObject& Add(const std::string& key, uint64_t value);
  JsonObject& Add(const std::string& key, const JsonObject& value);
  bool empty() const { return body_.empty(); }
  std::string str() const { return "{" + body_ + "}"; }

 private:
  void Key(const std::string& key);
  std::string body_;
};

// `s` as a JSON string literal, quotes included.
std::string JsonQuote(const std::string& s);

class MetricsLog {
 public:
  // Appends to `path` (created if absent): a resumed job continues its file.
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<MetricsLog>> Open(const std::string& path);
  ~MetricsLog();
  // Writes one line and flushes it. Write errors are logged once.
  void Write(const JsonObject& event);

 private:
  MetricsLog(std::string path, FILE* f) : path_(std::move(path)), f_(f) {}
  std::string path_;
  FILE* f_;
  bool failed_ = false;
};

}  // namespace ember::scheduler

#endif  // EMBER_SCHEDULER_METRICS_LOG_H_
