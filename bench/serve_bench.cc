// serve_bench: serving speed of a DIN bundle (bench/configs/din_gen.conf),
// in-process (serving::Predictor) against training on the same batches, and
// over HTTP through a real `ember serve` on loopback with closed-loop
// clients. One key=value figure per line; see bench/README.md.
#include <signal.h>
#include <spawn.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "bench/bench_util.h"
#include "gflags/gflags.h"
#include "glog/logging.h"
#include "httplib.h"
#include "models/model.h"
#include "nlohmann/json.hpp"
#include "serving/predictor.h"
#include "storage/export.h"
#include "worker/batch_builder.h"

DEFINE_string(ember, EMBER_BINARY, "The ember binary (trains the model and runs `ember serve`).");
DEFINE_string(config, EMBER_SOURCE_DIR "/bench/configs/din_gen.conf", "Job config of the model.");
DEFINE_string(work_dir, "/tmp", "Where the temporary directory (data, checkpoint, bundle) goes; removed at the end.");
DEFINE_uint64(train_rows, 50000, "Rows the model is trained on (one epoch).");
DEFINE_uint64(test_rows, 5120, "Rows scored (the test split).");
DEFINE_double(seconds, 3, "Seconds each measurement runs.");
DEFINE_int32(clients, 4, "Concurrent closed-loop HTTP clients (threads, one keep-alive connection each).");
DEFINE_int32(batch, 256, "The large batch (instances per request / Predict call).");

namespace ember::bench {
namespace {

using Json = nlohmann::json;

// Starts `argv` with stdout+stderr to `log`, dying with us.
pid_t Spawn(const std::vector<std::string>& argv, const std::string& log) {
  const pid_t pid = fork();
  PCHECK(pid >= 0);
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    FILE* f = std::fopen(log.c_str(), "a");
    if (f != nullptr) {
      dup2(fileno(f), 1);
      dup2(fileno(f), 2);
    }
    std::vector<char*> args;
    for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    execv(args[0], args.data());
    _exit(127);
  }
  return pid;
}

int WaitExit(pid_t pid) {
  int status = 0;
  waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

std::string ReadAll(const std::string& path) {
  std::ifstream in(path);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// A free TCP port on 127.0.0.1 (bound and released; the race is small).
int FreePort() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  PCHECK(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0);
  PCHECK(getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0);
  close(fd);
  return ntohs(addr.sin_port);
}

void Fail(const std::string& what) {
  std::fprintf(stderr, "serve_bench: %s\n", what.c_str());
  std::exit(1);
}

// Latencies (ms) of closed-loop clients, each sending requests of `batch`
// lines for `seconds`.
struct HttpRun {
  double requests_per_sec = 0, samples_per_sec = 0, p50_ms = 0, p99_ms = 0;
  uint64_t failed = 0;
};

HttpRun RunHttp(int port, const std::string& model, const std::vector<std::string>& lines, int batch, int clients,
                double seconds) {
  // Pre-built bodies, as a client would hold them.
  std::vector<std::string> bodies;
  for (size_t start = 0; start + batch <= lines.size() && bodies.size() < 64; start += batch) {
    Json j;
    j["instances"] = std::vector<std::string>(lines.begin() + start, lines.begin() + start + batch);
    bodies.push_back(j.dump());
  }
  const std::string path = absl::StrCat("/v1/models/", model, ":predict");
  std::vector<std::vector<double>> lat(clients);
  std::atomic<uint64_t> failed{0};
  std::vector<std::thread> threads;
  const auto t0 = Clock::now();
  for (int c = 0; c < clients; ++c) {
    threads.emplace_back([&, c] {
      httplib::Client client("127.0.0.1", port);
      client.set_keep_alive(true);
      client.set_tcp_nodelay(true);
      size_t i = c;
      while (Since(t0) < seconds) {
        const auto s = Clock::now();
        auto r = client.Post(path.c_str(), bodies[i++ % bodies.size()], "application/json");
        if (!r || r->status != 200) {
          failed.fetch_add(1);
          continue;
        }
        lat[c].push_back(Since(s) * 1e3);
      }
    });
  }
  for (auto& t : threads) t.join();
  const double elapsed = Since(t0);
  std::vector<double> all;
  for (auto& v : lat) all.insert(all.end(), v.begin(), v.end());
  std::sort(all.begin(), all.end());
  HttpRun r;
  r.failed = failed.load();
  if (all.empty()) return r;
  r.requests_per_sec = all.size() / elapsed;
  r.samples_per_sec = r.requests_per_sec * batch;
  r.p50_ms = all[all.size() / 2];
  r.p99_ms = all[std::min(all.size() - 1, all.size() * 99 / 100)];
  return r;
}

// Predictor samples/s: `threads` threads calling Predict on `batch` lines
// each, closed loop.
double InProcess(const serving::Predictor& p, const std::vector<std::string>& lines, int batch, int threads,
                 double seconds) {
  const std::vector<std::string_view> views(lines.begin(), lines.end());
  std::atomic<uint64_t> samples{0};
  std::vector<std::thread> pool;
  const auto t0 = Clock::now();
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      std::vector<float> scores;
      std::vector<serving::LineError> errors;
      size_t at = t * batch;
      uint64_t n = 0;
      while (Since(t0) < seconds) {
        if (at + batch > views.size()) at = 0;
        p.Predict(absl::MakeConstSpan(views).subspan(at, batch), &scores, &errors);
        if (!errors.empty()) Fail("Predict: " + errors[0].reason);
        at += batch;
        n += batch;
      }
      samples.fetch_add(n);
    });
  }
  for (auto& t : pool) t.join();
  return samples.load() / Since(t0);
}

// Training samples/s on the same lines in batches of `batch`, one thread:
// parse and build the batch (BatchBuilder) and Model::TrainStep, on embedding
// rows of the right shape (no parameter server: no pull, push or optimizer).
double Training(const proto::JobConfig& config, const std::vector<std::string>& lines, int batch, double seconds) {
  auto model = models::Model::Create(config);
  if (!model.ok()) Fail(std::string(model.status().message()));
  proto::ShardMap shard_map;
  shard_map.set_num_logical_shards(1);
  shard_map.add_server_rank(0);
  auto builder = worker::BatchBuilder::Create(config, shard_map, 1);
  if (!builder.ok()) Fail(std::string(builder.status().message()));
  std::vector<float> dense((*model)->dense_size()), dense_grad(dense.size());
  (*model)->InitDense(absl::MakeSpan(dense));
  const int tables = config.tables_size();
  std::vector<std::vector<float>> emb(tables), emb_grad(tables);
  std::vector<const float*> emb_ptr(tables);
  std::vector<float*> grad_ptr(tables);
  std::vector<float> predictions;
  std::vector<double> loss((*model)->tasks().size());
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> u(-0.05f, 0.05f);
  models::Batch b;
  uint64_t samples = 0;
  size_t at = 0;
  const auto t0 = Clock::now();
  while (Since(t0) < seconds) {
    if (at + batch > lines.size()) at = 0;
    for (int i = 0; i < batch; ++i) {
      if (absl::Status st = (*builder)->AddLine(lines[at + i]); !st.ok()) Fail(std::string(st.message()));
    }
    at += batch;
    (*builder)->Finish(&b);
    for (int t = 0; t < tables; ++t) {
      const size_t n = b.tables[t].keys.size() * config.tables(t).dim();
      if (emb[t].size() < n) {
        emb[t].resize(n);
        for (float& v : emb[t]) v = u(rng);
      }
      emb_grad[t].resize(std::max(emb_grad[t].size(), n));
      emb_ptr[t] = n > 0 ? emb[t].data() : nullptr;
      grad_ptr[t] = n > 0 ? emb_grad[t].data() : nullptr;
    }
    predictions.resize(static_cast<size_t>(b.size) * loss.size());
    (*model)->TrainStep(b, dense, emb_ptr, absl::MakeSpan(dense_grad), grad_ptr, absl::MakeSpan(predictions),
                        absl::MakeSpan(loss));
    samples += b.size;
  }
  return samples / Since(t0);
}

int Main() {
  char tmpl[4096];
  std::snprintf(tmpl, sizeof(tmpl), "%s/serve_bench.XXXXXX", FLAGS_work_dir.c_str());
  if (mkdtemp(tmpl) == nullptr) Fail(absl::StrCat("cannot make a directory in ", FLAGS_work_dir));
  const std::string dir = tmpl;
  struct Cleanup {
    std::string dir;
    ~Cleanup() { std::filesystem::remove_all(dir); }
  } cleanup{dir};

  // 1. Data (50-item histories, as din_gen.conf expects), a one-epoch job
  // with a checkpoint at its end, and a bundle from it.
  const std::string data = dir + "/data";
  if (WaitExit(Spawn({FLAGS_ember, "gen-data", "--out=" + data, absl::StrCat("--train_rows=", FLAGS_train_rows),
                      absl::StrCat("--test_rows=", FLAGS_test_rows), "--train_files=1", "--test_files=1",
                      "--gen_options=min_history=50,max_history=50"},
                     dir + "/gen.log")) != 0) {
    Fail("gen-data failed: " + ReadAll(dir + "/gen.log"));
  }
  const int sport = FreePort();
  const std::string endpoint = absl::StrCat("tcp://127.0.0.1:", sport);
  const pid_t sched = Spawn({FLAGS_ember, "scheduler", "--config=" + FLAGS_config, absl::StrCat("--port=", sport),
                             "--num_servers=1", "--num_workers=1", "--epochs=1", "--data_dir=" + data,
                             "--checkpoint_dir=" + dir + "/ckpt"},
                            dir + "/scheduler.log");
  const pid_t server = Spawn({FLAGS_ember, "server", "--scheduler=" + endpoint}, dir + "/server.log");
  const pid_t worker = Spawn({FLAGS_ember, "worker", "--scheduler=" + endpoint}, dir + "/worker.log");
  const int sched_rc = WaitExit(sched);
  if (sched_rc != 0) {  // the nodes would wait minutes for a scheduler
    kill(server, SIGKILL);
    kill(worker, SIGKILL);
  }
  WaitExit(server);
  WaitExit(worker);
  if (sched_rc != 0) Fail("training failed: " + ReadAll(dir + "/scheduler.log"));
  std::string ckpt;
  for (const auto& e : std::filesystem::directory_iterator(dir + "/ckpt")) {
    if (e.path().filename().string().rfind("ckpt-", 0) == 0 && e.path().string() > ckpt) ckpt = e.path().string();
  }
  storage::ExportOptions eo;
  eo.checkpoint_dir = ckpt;
  eo.out_root = dir + "/export";
  if (auto m = storage::ExportCheckpoint(eo); !m.ok()) Fail(std::string(m.status().message()));
  auto predictor = serving::Predictor::Load(eo.out_root);
  if (!predictor.ok()) Fail(std::string(predictor.status().message()));

  std::vector<std::string> lines;
  for (const auto& e : std::filesystem::directory_iterator(data + "/test")) {
    for (absl::string_view l : absl::StrSplit(ReadAll(e.path().string()), '\n', absl::SkipEmpty())) {
      lines.emplace_back(l);
    }
  }
  if (lines.size() < static_cast<size_t>(FLAGS_batch)) Fail("fewer test lines than --batch");
  Print("lines", lines.size());

  // 2. In-process: one thread (against training's one thread), and as many
  // threads as the HTTP clients (what the server is compared with).
  const double inproc1 = InProcess(**predictor, lines, 1, 1, FLAGS_seconds);
  const double inproc_big_mt = InProcess(**predictor, lines, FLAGS_batch, FLAGS_clients, FLAGS_seconds);
  // The ratio's two sides alternate, five rounds of a fifth of --seconds
  // each, and each keeps its best round: a burst of load from another
  // process on this shared machine then hurts neither side more.
  double inproc_big = 0, train_big = 0;
  for (int round = 0; round < 5; ++round) {
    inproc_big = std::max(inproc_big, InProcess(**predictor, lines, FLAGS_batch, 1, FLAGS_seconds / 5));
    train_big = std::max(train_big, Training((*predictor)->config(), lines, FLAGS_batch, FLAGS_seconds / 5));
  }
  Print("cores", std::thread::hardware_concurrency());
  Print("inproc_batch1_samples_per_sec", inproc1);
  Print(absl::StrCat("inproc_batch", FLAGS_batch, "_samples_per_sec"), inproc_big);
  Print(absl::StrCat("inproc_batch", FLAGS_batch, "_threads", FLAGS_clients, "_samples_per_sec"), inproc_big_mt);
  Print(absl::StrCat("train_batch", FLAGS_batch, "_samples_per_sec"), train_big);
  Print("infer_train_ratio", inproc_big / train_big);

  // 3. `ember serve` on loopback.
  const std::string serve_log = dir + "/serve.log";
  const pid_t serve = Spawn({FLAGS_ember, "serve", "--bundle=" + eo.out_root, "--port=0",
                             absl::StrCat("--threads=", 2 * FLAGS_clients)},
                            serve_log);
  int port = 0;
  for (int i = 0; i < 600 && port == 0; ++i) {
    for (absl::string_view l : absl::StrSplit(ReadAll(serve_log), '\n')) {
      const size_t at = l.find("on http://127.0.0.1:");
      if (l.rfind("serving ", 0) != 0 || at == absl::string_view::npos) continue;
      std::string rest(l.substr(at + std::strlen("on http://127.0.0.1:")));
      rest = rest.substr(0, rest.find_first_not_of("0123456789"));
      if (!absl::SimpleAtoi(rest, &port)) port = 0;
    }
    if (port == 0) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  if (port == 0) {
    kill(serve, SIGKILL);
    WaitExit(serve);
    Fail("ember serve did not start: " + ReadAll(serve_log));
  }
  const std::string model = (*predictor)->config().name();
  const HttpRun h1 = RunHttp(port, model, lines, 1, FLAGS_clients, FLAGS_seconds);
  const HttpRun hb = RunHttp(port, model, lines, FLAGS_batch, FLAGS_clients, FLAGS_seconds);
  kill(serve, SIGTERM);
  const int serve_rc = WaitExit(serve);
  Print("http_clients", FLAGS_clients);
  Print("http_batch1_qps", h1.requests_per_sec);
  Print("http_batch1_p50_ms", h1.p50_ms);
  Print("http_batch1_p99_ms", h1.p99_ms);
  Print(absl::StrCat("http_batch", FLAGS_batch, "_samples_per_sec"), hb.samples_per_sec);
  Print(absl::StrCat("http_batch", FLAGS_batch, "_p50_ms"), hb.p50_ms);
  Print(absl::StrCat("http_batch", FLAGS_batch, "_p99_ms"), hb.p99_ms);
  Print(absl::StrCat("http_batch", FLAGS_batch, "_vs_inproc"), hb.samples_per_sec / inproc_big_mt);
  Print("http_failed_requests", h1.failed + hb.failed);
  if (h1.failed + hb.failed > 0 || serve_rc != 0) Fail("requests failed or ember serve exited badly: " + ReadAll(serve_log));
  return 0;
}

}  // namespace
}  // namespace ember::bench

int main(int argc, char** argv) {
  gflags::ParseCommandLineFlags(&argc, &argv, true);
  google::InitGoogleLogging(argv[0]);
  return ember::bench::Main();
}
