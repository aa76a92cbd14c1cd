// serving::HttpServer: `ember serve`'s HTTP front end over a Predictor, in the
// style of TensorFlow Serving's REST API (docs/serving.md), with /healthz,
// Prometheus /metrics and an optional watcher that applies newer bundles.
//
// Endpoints:
//   POST /v1/models/<name>[/versions/<v>]:predict  {"instances": [...]}
//        -> {"predictions": [...]}: per instance a number (one task) or an
//        object {task: score} (several). An instance is a log line (a JSON
//        string) or an object of column name -> string, number, null, or an
//        array of strings/numbers (joined with the column's separator).
//   GET  /v1/models/<name>[/versions/<v>]    version and state
//   GET  /v1/models/<name>[/versions/<v>]/metadata   tasks, columns, version
//   GET  /healthz                            200 "ok"
//   GET  /metrics                            Prometheus text format
// Every error is a 4xx/5xx with a JSON body {"error": "..."} naming what is
// wrong (for a bad instance, its index and the parser's reason); a request
// that fails never changes what the next one gets.
//
// Threads: a pool of `threads` request threads (one per open connection at a
// time: keep-alive connections hold theirs), plus the watcher when
// watch_root is set. Predictor calls are thread-safe and see one model each;
// the watcher's Update runs beside them, so no request waits for a swap.
#ifndef EMBER_SERVING_HTTP_SERVER_H_
#define EMBER_SERVING_HTTP_SERVER_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "serving/predictor.h"

namespace ember::serving {

struct HttpServerOptions {
  // Address to listen on. Default 127.0.0.1 (loopback only); "0.0.0.0" for all.
  std::string host = "127.0.0.1";
  // TCP port; 0 = any free port (see HttpServer::port()). 0..65535.
  int port = 0;
  // The <name> in /v1/models/<name>. Empty = the bundle's job name
  // (JobConfig.name, "ember" unless set).
  std::string model_name;
  // Request threads, i.e. connections served at once. 0 = max(8, 2 x cores).
  int threads = 0;
  // Largest request body in bytes; a larger one gets 413. Default 64 MiB.
  size_t max_body_bytes = size_t{64} << 20;
  // Most instances in one predict request; more get 400. Default 100000.
  size_t max_instances = 100000;
  // If not empty, an export root polled every watch_interval_ms by a watcher
  // thread that calls Predictor::UpdateFromRoot. A refused bundle is logged
  // (once per distinct reason, or once a minute) and counted in /metrics;
  // the current model stays. Interval 10..3600000 ms, default 1000.
  std::string watch_root;
  int watch_interval_ms = 1000;
};

class HttpServer {
 public:
  // Binds host:port and starts serving `predictor` (not owned; must outlive
  // the server) on its own threads, and the watcher if asked. Returns once
  // the socket listens; InvalidArgument for bad options, Unavailable naming
  // host:port if it cannot bind.
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<HttpServer>> Start(HttpServerOptions options,
                                                                       Predictor* predictor);
  // Stops, as Stop() does.
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // The port it listens on (the chosen one when options.port was 0).
  int port() const;
  const std::string& model_name() const;

  // Stops accepting, lets requests in progress finish, stops the watcher and
  // joins every thread. Idempotent; thread-safe.
  void Stop();

  // The /metrics text now (what GET /metrics answers).
  std::string MetricsText() const;

 private:
  class Impl;
  explicit HttpServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace ember::serving

#endif  // EMBER_SERVING_HTTP_SERVER_H_
