// HttpServer: cpp-httplib routes and nlohmann::json request parsing over a
// Predictor; responses are written by hand (floats in their shortest exact
// form), metrics are atomics read by /metrics.
#include "serving/http_server.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <charconv>
#include <chrono>
#include <exception>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "glog/logging.h"
#include "httplib.h"
#include "nlohmann/json.hpp"

namespace ember::serving {
namespace {

using Json = nlohmann::json;

// Upper bounds (seconds) of the predict latency histogram's buckets.
constexpr std::array<double, 16> kLatencyBuckets = {0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025,
                                                    0.05,   0.1,     0.25,   0.5,   1,     2.5,   5,     10};
constexpr int kMaxCode = 600;
// A refusal with the same reason as the last one logged is logged again
// after this long.
constexpr absl::Duration kRefusalLogInterval = absl::Minutes(1);

std::string ErrorJson(std::string_view message) {
  Json j;
  j["error"] = message;
  return j.dump(-1, ' ', false, Json::error_handler_t::replace);
}

void SetError(httplib::Response& res, int status, std::string_view message) {
  res.status = status;
  res.set_content(ErrorJson(message), "application/json");
}

std::string Quoted(std::string_view s) { return Json(s).dump(-1, ' ', false, Json::error_handler_t::replace); }

void AppendFloat(std::string* out, float v) {
  char buf[32];
  auto [end, ec] = std::to_chars(buf, buf + sizeof(buf), v);
  if (ec != std::errc() || !std::isfinite(v)) {
    out->append("null");  // JSON has no NaN; Predict returns NaN only for a bad line
    return;
  }
  out->append(buf, end);
}

// The text of a JSON scalar as a log field: strings as they are, numbers in
// their shortest exact form, null as empty (a missing value). False for any
// other kind.
bool ScalarText(const Json& v, std::string* out) {
  char buf[32];
  switch (v.type()) {
    case Json::value_t::string:
      out->append(v.get_ref<const std::string&>());
      return true;
    case Json::value_t::number_integer:
      out->append(std::to_string(v.get<int64_t>()));
      return true;
    case Json::value_t::number_unsigned:
      out->append(std::to_string(v.get<uint64_t>()));
      return true;
    case Json::value_t::number_float: {
      auto [end, ec] = std::to_chars(buf, buf + sizeof(buf), v.get<double>());
      if (ec != std::errc()) return false;
      out->append(buf, end);
      return true;
    }
    case Json::value_t::null:
      return true;
    default:
      return false;
  }
}

const char* JsonTypeName(const Json& v) { return v.type_name(); }

// Per request thread: reused across requests, so a warm server allocates
// little beyond the JSON document itself.
struct Scratch {
  std::vector<std::string> lines;
  std::vector<std::string_view> views;
  std::vector<std::string> values;
  std::vector<std::string_view> names, value_views;
  std::vector<float> scores;
  std::vector<LineError> errors;
  std::string out;
};

Scratch& ThreadScratch() {
  thread_local Scratch s;
  return s;
}

struct Metrics {
  std::array<std::atomic<uint64_t>, kMaxCode> requests_by_code{};
  std::atomic<uint64_t> instances{0};
  std::array<std::atomic<uint64_t>, kLatencyBuckets.size() + 1> latency_buckets{};  // last: +Inf
  std::atomic<uint64_t> latency_sum_ns{0};
  std::atomic<uint64_t> latency_count{0};
  std::atomic<uint64_t> watch_polls{0};
  std::atomic<uint64_t> updates_applied{0};
  std::atomic<uint64_t> updates_refused{0};
  std::atomic<int64_t> last_refusal_unix_ms{0};

  void ObserveLatency(std::chrono::nanoseconds d) {
    const double s = std::chrono::duration<double>(d).count();
    size_t b = std::lower_bound(kLatencyBuckets.begin(), kLatencyBuckets.end(), s) - kLatencyBuckets.begin();
    latency_buckets[b].fetch_add(1, std::memory_order_relaxed);
    latency_sum_ns.fetch_add(static_cast<uint64_t>(d.count()), std::memory_order_relaxed);
    latency_count.fetch_add(1, std::memory_order_relaxed);
  }
};

}  // namespace

class HttpServer::Impl {
 public:
  Impl(HttpServerOptions options, Predictor* predictor) : options_(std::move(options)), predictor_(predictor) {
    const proto::JobConfig& config = predictor_->config();
    if (options_.model_name.empty()) options_.model_name = config.name().empty() ? "ember" : config.name();
    for (const proto::ColumnConfig& c : config.data().columns()) separators_[c.name()] = c.separator();
    for (const std::string& t : predictor_->tasks()) quoted_tasks_.push_back(Quoted(t));
  }

  ~Impl() { Stop(); }

  absl::Status Start() {
    const int threads = options_.threads > 0
                            ? options_.threads
                            : std::max(8, 2 * static_cast<int>(std::thread::hardware_concurrency()));
    server_.new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
    server_.set_tcp_nodelay(true);
    server_.set_keep_alive_max_count(1u << 30);
    server_.set_payload_max_length(options_.max_body_bytes);
    server_.set_logger([this](const httplib::Request&, const httplib::Response& res) {
      const int code = std::clamp(res.status, 0, kMaxCode - 1);
      metrics_.requests_by_code[code].fetch_add(1, std::memory_order_relaxed);
    });
    // Answers httplib gives itself (no route, body over the limit, a bad
    // request line) get a JSON body too; ours already have one.
    server_.set_error_handler(httplib::Server::HandlerWithResponse([](const httplib::Request& req,
                                                                      httplib::Response& res) {
      if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
      std::string message;
      if (res.status == 404) {
        message = absl::StrCat("no such endpoint: ", req.method, " ", req.path);
      } else if (res.status == 413) {
        message = "request body over the server's limit (--max_body_bytes)";
      } else {
        message = absl::StrCat("HTTP status ", res.status);
      }
      res.set_content(ErrorJson(message), "application/json");
      return httplib::Server::HandlerResponse::Handled;
    }));
    server_.set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
      std::string what = "unknown exception";
      try {
        if (ep) std::rethrow_exception(ep);
      } catch (const std::exception& e) {
        what = e.what();
      } catch (...) {
      }
      LOG(ERROR) << "request handler threw: " << what;
      SetError(res, 500, absl::StrCat("internal error: ", what));
    });

    server_.Post(R"(/v1/models/([^/:]+)(?:/versions/([0-9]+))?:predict)",
                 [this](const httplib::Request& req, httplib::Response& res) {
                   Guard(res, [&] { HandlePredict(req, res); });
                 });
    server_.Get(R"(/v1/models/([^/:]+)(?:/versions/([0-9]+))?)",
                [this](const httplib::Request& req, httplib::Response& res) {
                  Guard(res, [&] { HandleStatus(req, res, false); });
                });
    server_.Get(R"(/v1/models/([^/:]+)(?:/versions/([0-9]+))?/metadata)",
                [this](const httplib::Request& req, httplib::Response& res) {
                  Guard(res, [&] { HandleStatus(req, res, true); });
                });
    server_.Get("/healthz", [](const httplib::Request&, httplib::Response& res) {
      res.set_content("ok\n", "text/plain");
    });
    server_.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
      Guard(res, [&] { res.set_content(MetricsText(), "text/plain; version=0.0.4"); });
    });

    if (options_.port == 0) {
      port_ = server_.bind_to_any_port(options_.host);
      if (port_ < 0) return absl::UnavailableError(absl::StrCat("cannot listen on ", options_.host, ": any port"));
    } else {
      if (!server_.bind_to_port(options_.host, options_.port)) {
        return absl::UnavailableError(absl::StrCat("cannot listen on ", options_.host, ":", options_.port));
      }
      port_ = options_.port;
    }
    listener_ = std::thread([this] {
      if (!server_.listen_after_bind()) LOG(ERROR) << "http listener on port " << port_ << " stopped with an error";
    });
    // listen_after_bind sets is_running before it accepts; connections made
    // earlier wait in the backlog, so this only keeps Start's promise.
    for (int i = 0; i < 5000 && !server_.is_running(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    if (!options_.watch_root.empty()) watcher_ = std::thread([this] { Watch(); });
    return absl::OkStatus();
  }

  void Stop() {
    {
      absl::MutexLock l(&mu_);
      if (stopped_) return;
      stopped_ = true;
    }
    server_.stop();
    if (listener_.joinable()) listener_.join();
    if (watcher_.joinable()) watcher_.join();
  }

  int port() const { return port_; }
  const std::string& model_name() const { return options_.model_name; }

  std::string MetricsText() const {
    std::string m;
    absl::StrAppend(&m, "# HELP ember_serve_requests_total HTTP requests answered, by status code.\n",
                    "# TYPE ember_serve_requests_total counter\n");
    uint64_t errors4 = 0, errors5 = 0;
    for (int code = 0; code < kMaxCode; ++code) {
      const uint64_t n = metrics_.requests_by_code[code].load(std::memory_order_relaxed);
      if (n == 0) continue;
      absl::StrAppend(&m, "ember_serve_requests_total{code=\"", code, "\"} ", n, "\n");
      if (code >= 400 && code < 500) errors4 += n;
      if (code >= 500) errors5 += n;
    }
    absl::StrAppend(&m, "# HELP ember_serve_errors_total Requests answered with an error status, by class.\n",
                    "# TYPE ember_serve_errors_total counter\n", "ember_serve_errors_total{class=\"4xx\"} ", errors4,
                    "\n", "ember_serve_errors_total{class=\"5xx\"} ", errors5, "\n");
    absl::StrAppend(&m, "# HELP ember_serve_instances_total Instances scored by successful predict requests.\n",
                    "# TYPE ember_serve_instances_total counter\n", "ember_serve_instances_total ",
                    metrics_.instances.load(std::memory_order_relaxed), "\n");
    absl::StrAppend(&m,
                    "# HELP ember_serve_predict_latency_seconds Time to handle a predict request (parse, score, "
                    "answer), any status.\n",
                    "# TYPE ember_serve_predict_latency_seconds histogram\n");
    uint64_t cumulative = 0;
    for (size_t b = 0; b <= kLatencyBuckets.size(); ++b) {
      cumulative += metrics_.latency_buckets[b].load(std::memory_order_relaxed);
      const std::string le = b < kLatencyBuckets.size() ? absl::StrCat(kLatencyBuckets[b]) : "+Inf";
      absl::StrAppend(&m, "ember_serve_predict_latency_seconds_bucket{le=\"", le, "\"} ", cumulative, "\n");
    }
    absl::StrAppend(&m, "ember_serve_predict_latency_seconds_sum ",
                    metrics_.latency_sum_ns.load(std::memory_order_relaxed) * 1e-9, "\n",
                    "ember_serve_predict_latency_seconds_count ",
                    metrics_.latency_count.load(std::memory_order_relaxed), "\n");
    const ModelVersion v = predictor_->version();
    absl::StrAppend(&m, "# HELP ember_serve_model_version The bundle version being served.\n",
                    "# TYPE ember_serve_model_version gauge\n", "ember_serve_model_version{model=\"",
                    options_.model_name, "\"} ", v.version, "\n",
                    "# HELP ember_serve_model_full_version The full bundle the served version's chain starts from.\n",
                    "# TYPE ember_serve_model_full_version gauge\n", "ember_serve_model_full_version{model=\"",
                    options_.model_name, "\"} ", v.full_version, "\n",
                    "# HELP ember_serve_model_global_step The training step the served version was exported at.\n",
                    "# TYPE ember_serve_model_global_step gauge\n", "ember_serve_model_global_step{model=\"",
                    options_.model_name, "\"} ", v.global_step, "\n",
                    "# HELP ember_serve_model_last_update_unix_seconds When the served version became current.\n",
                    "# TYPE ember_serve_model_last_update_unix_seconds gauge\n",
                    "ember_serve_model_last_update_unix_seconds{model=\"", options_.model_name, "\"} ",
                    static_cast<double>(v.loaded_unix_ms) / 1000.0, "\n");
    absl::StrAppend(&m, "# HELP ember_serve_watch_polls_total Polls of the export root (--watch).\n",
                    "# TYPE ember_serve_watch_polls_total counter\n", "ember_serve_watch_polls_total ",
                    metrics_.watch_polls.load(std::memory_order_relaxed), "\n",
                    "# HELP ember_serve_updates_applied_total Polls that moved to a newer version.\n",
                    "# TYPE ember_serve_updates_applied_total counter\n", "ember_serve_updates_applied_total ",
                    metrics_.updates_applied.load(std::memory_order_relaxed), "\n",
                    "# HELP ember_serve_updates_refused_total Polls whose newer bundle was refused (damaged, "
                    "incomplete or mismatched); the served version stayed.\n",
                    "# TYPE ember_serve_updates_refused_total counter\n", "ember_serve_updates_refused_total ",
                    metrics_.updates_refused.load(std::memory_order_relaxed), "\n",
                    "# HELP ember_serve_last_refusal_unix_seconds When the last refusal happened (0: never).\n",
                    "# TYPE ember_serve_last_refusal_unix_seconds gauge\n", "ember_serve_last_refusal_unix_seconds ",
                    static_cast<double>(metrics_.last_refusal_unix_ms.load(std::memory_order_relaxed)) / 1000.0,
                    "\n");
    return m;
  }

 private:
  // Runs a handler; an exception becomes a 500 with its message, never a crash.
  template <typename F>
  void Guard(httplib::Response& res, F&& f) {
    try {
      f();
    } catch (const std::exception& e) {
      LOG(ERROR) << "request handler threw: " << e.what();
      SetError(res, 500, absl::StrCat("internal error: ", e.what()));
    } catch (...) {
      LOG(ERROR) << "request handler threw a non-std exception";
      SetError(res, 500, "internal error");
    }
  }

  // Checks the <name> and optional <version> of the path; false after
  // answering 404.
  bool CheckModel(const httplib::Request& req, httplib::Response& res, ModelVersion* v) {
    const std::string name = req.matches.size() > 1 ? std::string(req.matches[1]) : "";
    if (name != options_.model_name) {
      SetError(res, 404, absl::StrCat("model '", name, "' not found; this server serves '", options_.model_name, "'"));
      return false;
    }
    *v = predictor_->version();
    if (req.matches.size() > 2 && req.matches[2].matched) {
      uint64_t want = 0;
      if (!absl::SimpleAtoi(std::string(req.matches[2]), &want) || want != v->version) {
        SetError(res, 404,
                 absl::StrCat("version ", std::string(req.matches[2]), " of model '", options_.model_name,
                              "' is not available; serving version ", v->version));
        return false;
      }
    }
    return true;
  }

  void HandleStatus(const httplib::Request& req, httplib::Response& res, bool metadata) {
    ModelVersion v;
    if (!CheckModel(req, res, &v)) return;
    Json j;
    if (!metadata) {
      j["model_version_status"] = Json::array(
          {{{"version", std::to_string(v.version)},
            {"state", "AVAILABLE"},
            {"status", {{"error_code", "OK"}, {"error_message", ""}}}}});
    } else {
      j["model_spec"] = {{"name", options_.model_name}, {"version", std::to_string(v.version)}};
      Json columns = Json::array();
      for (const proto::ColumnConfig& c : predictor_->config().data().columns()) {
        Json col = {{"name", c.name()}, {"type", proto::ColumnConfig::Type_Name(c.type())}};
        if (c.type() == proto::ColumnConfig::MULTI_SPARSE || c.type() == proto::ColumnConfig::SEQUENCE ||
            c.type() == proto::ColumnConfig::TIME_SEQUENCE) {
          col["separator"] = c.separator();
        }
        columns.push_back(std::move(col));
      }
      j["metadata"] = {{"tasks", predictor_->tasks()},
                       {"columns", std::move(columns)},
                       {"version", std::to_string(v.version)},
                       {"full_version", std::to_string(v.full_version)},
                       {"checkpoint_id", v.checkpoint_id},
                       {"global_step", v.global_step},
                       {"loaded_unix_ms", v.loaded_unix_ms}};
    }
    res.set_content(j.dump(-1, ' ', false, Json::error_handler_t::replace), "application/json");
  }

  void HandlePredict(const httplib::Request& req, httplib::Response& res) {
    const auto start = std::chrono::steady_clock::now();
    Predict(req, res);
    metrics_.ObserveLatency(std::chrono::steady_clock::now() - start);
  }

  // Makes the log line of object instance `i` in s->lines[i].
  bool LineFromObject(size_t i, const Json& inst, Scratch* s, httplib::Response& res) {
    const size_t n = inst.size();
    if (s->values.size() < n) s->values.resize(n);
    s->names.clear();
    s->value_views.clear();
    size_t k = 0;
    for (auto it = inst.begin(); it != inst.end(); ++it, ++k) {
      std::string& text = s->values[k];
      text.clear();
      const Json& v = it.value();
      if (v.is_array()) {
        auto sep = separators_.find(it.key());
        // An unknown column is named by LineFromColumns below.
        const std::string_view separator = sep == separators_.end() ? std::string_view(",") : sep->second;
        size_t e = 0;
        for (const Json& piece : v) {
          if (e++ > 0) text.append(separator);
          if (piece.is_null() || !ScalarText(piece, &text)) {
            SetError(res, 400,
                     absl::StrCat("instances[", i, "].", it.key(), "[", e - 1, "]: a ", JsonTypeName(piece),
                                  "; an array holds strings or numbers"));
            return false;
          }
        }
      } else if (!ScalarText(v, &text)) {
        SetError(res, 400,
                 absl::StrCat("instances[", i, "].", it.key(), ": a ", JsonTypeName(v),
                              "; a column's value is a string, a number, null or an array of strings/numbers"));
        return false;
      }
      s->names.push_back(it.key());
      s->value_views.push_back(text);
    }
    absl::Status st = predictor_->LineFromColumns(s->names, s->value_views, &s->lines[i]);
    if (!st.ok()) {
      SetError(res, 400, absl::StrCat("instances[", i, "]: ", st.message()));
      return false;
    }
    return true;
  }

  void Predict(const httplib::Request& req, httplib::Response& res) {
    ModelVersion v;
    if (!CheckModel(req, res, &v)) return;
    Json doc;
    try {
      doc = Json::parse(req.body);
    } catch (const Json::exception& e) {
      // parse_error, and out_of_range for a number beyond double's range
      // ("5e308"): the client's error either way, not a 500.
      SetError(res, 400, absl::StrCat("malformed JSON: ", e.what()));
      return;
    }
    if (!doc.is_object()) {
      SetError(res, 400, absl::StrCat("the body is a JSON ", doc.type_name(), "; expected {\"instances\": [...]}"));
      return;
    }
    const Json* instances = nullptr;
    for (auto it = doc.begin(); it != doc.end(); ++it) {
      if (it.key() == "instances") {
        instances = &it.value();
      } else if (it.key() != "signature_name") {
        SetError(res, 400,
                 absl::StrCat("unknown key '", it.key(), "' in the request; expected {\"instances\": [...]}"));
        return;
      }
    }
    if (instances == nullptr) {
      SetError(res, 400, "missing \"instances\"; expected {\"instances\": [...]}");
      return;
    }
    if (!instances->is_array()) {
      SetError(res, 400, absl::StrCat("\"instances\" is a ", instances->type_name(), "; expected an array"));
      return;
    }
    const size_t n = instances->size();
    if (n == 0) {
      SetError(res, 400, "\"instances\" is empty");
      return;
    }
    if (n > options_.max_instances) {
      SetError(res, 400,
               absl::StrCat(n, " instances; at most ", options_.max_instances, " per request (--max_instances)"));
      return;
    }
    Scratch& s = ThreadScratch();
    if (s.lines.size() < n) s.lines.resize(n);
    s.views.resize(n);
    for (size_t i = 0; i < n; ++i) {
      const Json& inst = (*instances)[i];
      if (inst.is_string()) {
        s.views[i] = inst.get_ref<const std::string&>();
      } else if (inst.is_object()) {
        if (!LineFromObject(i, inst, &s, res)) return;
        s.views[i] = s.lines[i];
      } else {
        SetError(res, 400,
                 absl::StrCat("instances[", i, "]: a ", inst.type_name(),
                              "; an instance is a log line (string) or an object of column name -> value"));
        return;
      }
    }
    uint64_t used = 0;
    predictor_->Predict(s.views, &s.scores, &s.errors, &used);
    if (req.matches[2].length() > 0 && used != v.version) {
      // A pinned version that --watch replaced between the check and the call.
      SetError(res, 404, absl::StrCat("version ", v.version, " of model '", options_.model_name,
                                      "' is no longer available; serving version ", used));
      return;
    }
    if (!s.errors.empty()) {
      const LineError& e = s.errors.front();
      std::string message = absl::StrCat("instances[", e.index, "]: ", e.reason);
      if (s.errors.size() > 1) absl::StrAppend(&message, " (and ", s.errors.size() - 1, " more bad instances)");
      SetError(res, 400, message);
      return;
    }
    const size_t tasks = quoted_tasks_.size();
    std::string& out = s.out;
    out.clear();
    out.append("{\"predictions\":[");
    for (size_t i = 0; i < n; ++i) {
      if (i > 0) out.push_back(',');
      if (tasks == 1) {
        AppendFloat(&out, s.scores[i]);
        continue;
      }
      out.push_back('{');
      for (size_t t = 0; t < tasks; ++t) {
        if (t > 0) out.push_back(',');
        out.append(quoted_tasks_[t]);
        out.push_back(':');
        AppendFloat(&out, s.scores[i * tasks + t]);
      }
      out.push_back('}');
    }
    // The version that scored the request (all of it), as a string like
    // TF Serving's model_spec.version; clients that do not know it ignore it.
    out.append("],\"model_version\":\"");
    out.append(std::to_string(used));
    out.append("\"}");
    res.set_content(out, "application/json");
    metrics_.instances.fetch_add(n, std::memory_order_relaxed);
  }

  void Watch() {
    std::string last_logged_reason;
    absl::Time last_log = absl::InfinitePast();
    const absl::Duration interval = absl::Milliseconds(std::clamp(options_.watch_interval_ms, 10, 3600000));
    while (true) {
      {
        absl::MutexLock l(&mu_);
        if (mu_.AwaitWithTimeout(absl::Condition(&stopped_), interval)) return;
      }
      metrics_.watch_polls.fetch_add(1, std::memory_order_relaxed);
      absl::StatusOr<bool> changed = predictor_->UpdateFromRoot(options_.watch_root);
      if (changed.ok()) {
        if (*changed) {
          metrics_.updates_applied.fetch_add(1, std::memory_order_relaxed);
          const ModelVersion v = predictor_->version();
          LOG(INFO) << "serving " << options_.model_name << " version " << v.version << " (full "
                    << v.full_version << ", checkpoint " << v.checkpoint_id << ", step " << v.global_step
                    << ") from " << v.dir;
          last_logged_reason.clear();
        }
        continue;
      }
      metrics_.updates_refused.fetch_add(1, std::memory_order_relaxed);
      metrics_.last_refusal_unix_ms.store(absl::ToUnixMillis(absl::Now()), std::memory_order_relaxed);
      const std::string reason(changed.status().message());
      if (reason != last_logged_reason || absl::Now() - last_log >= kRefusalLogInterval) {
        LOG(WARNING) << "refused an update from " << options_.watch_root << ": " << reason
                     << "; still serving version " << predictor_->version().version;
        last_logged_reason = reason;
        last_log = absl::Now();
      }
    }
  }

  HttpServerOptions options_;
  Predictor* const predictor_;
  absl::flat_hash_map<std::string, std::string> separators_;  // column -> separator
  std::vector<std::string> quoted_tasks_;                      // JSON strings
  httplib::Server server_;
  int port_ = -1;
  std::thread listener_, watcher_;
  Metrics metrics_;
  mutable absl::Mutex mu_;
  bool stopped_ ABSL_GUARDED_BY(mu_) = false;
};

absl::StatusOr<std::unique_ptr<HttpServer>> HttpServer::Start(HttpServerOptions options, Predictor* predictor) {
  if (predictor == nullptr) return absl::InvalidArgumentError("HttpServer: no predictor");
  if (options.port < 0 || options.port > 65535) return absl::InvalidArgumentError("port: must be in [0, 65535]");
  if (options.threads < 0) return absl::InvalidArgumentError("threads: must be >= 0");
  if (options.max_body_bytes == 0) return absl::InvalidArgumentError("max_body_bytes: must be > 0");
  if (options.max_instances == 0) return absl::InvalidArgumentError("max_instances: must be > 0");
  if (!options.watch_root.empty() && (options.watch_interval_ms < 10 || options.watch_interval_ms > 3600000)) {
    return absl::InvalidArgumentError("watch_interval_ms: must be in [10, 3600000]");
  }
  if (options.model_name.find_first_of("/:") != std::string::npos) {
    return absl::InvalidArgumentError("model_name: may not hold '/' or ':'");
  }
  auto impl = std::make_unique<Impl>(std::move(options), predictor);
  if (absl::Status st = impl->Start(); !st.ok()) return st;
  return std::unique_ptr<HttpServer>(new HttpServer(std::move(impl)));
}

HttpServer::HttpServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
HttpServer::~HttpServer() { Stop(); }
int HttpServer::port() const { return impl_->port(); }
const std::string& HttpServer::model_name() const { return impl_->model_name(); }
void HttpServer::Stop() { impl_->Stop(); }
std::string HttpServer::MetricsText() const { return impl_->MetricsText(); }

}  // namespace ember::serving
