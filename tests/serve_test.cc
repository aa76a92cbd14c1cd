// `ember serve` as a real process: trains a tiny job, exports it, starts the
// server and checks its answers against a Predictor's (`ember predict`'s code) on the same lines,
// its 4xx answers to bad requests (and that it keeps serving after each),
// /healthz, /metrics, the model status, and a clean stop on SIGTERM. The
// harness kills every process it started, even if the test fails.
#include <signal.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "httplib.h"
#include "nlohmann/json.hpp"
#include "serving/predictor.h"
#include "storage/export.h"
#include "tests/cluster_harness.h"

namespace ember::testing {
namespace {

using Json = nlohmann::json;
namespace fs = std::filesystem;

// The newest entry of `dir` whose name starts with `prefix`.
std::string Newest(const std::string& dir, const std::string& prefix) {
  std::string best;
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string name = e.path().filename().string();
    if (absl::StartsWith(name, prefix) && (best.empty() || name > best)) best = e.path().string();
  }
  return best;
}

std::vector<std::string> Lines(const std::string& text) {
  return absl::StrSplit(text, '\n', absl::SkipEmpty());
}

// The port of "serving <name> version <v> on http://127.0.0.1:<port>", or 0.
int WaitForServing(Process& p, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (absl::Now() < deadline && p.Running()) {
    for (const std::string& line : Lines(ReadFile(p.log()))) {
      const size_t at = line.find(" on http://127.0.0.1:");
      if (!absl::StartsWith(line, "serving ") || at == std::string::npos) continue;
      int port = 0;
      const std::string rest = line.substr(at + std::strlen(" on http://127.0.0.1:"));
      if (absl::SimpleAtoi(rest.substr(0, rest.find_first_not_of("0123456789")), &port)) return port;
    }
    absl::SleepFor(absl::Milliseconds(50));
  }
  return 0;
}

class ServeTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    tmp_ = new TempDir;
    const std::string dir = tmp_->path();
    const std::string data = dir + "/data";
    ASSERT_TRUE(GenerateData(data, {"--train_rows=4000", "--test_rows=200", "--train_files=1", "--test_files=1"}));
    {
      Cluster c(dir, SourceDir() + "/examples/local.conf", 1, 1,
                {"--data_dir=" + data, "--epochs=1", "--checkpoint_dir=" + dir + "/ckpt"});
      ASSERT_TRUE(c.WaitAll(absl::Minutes(5))) << ReadFile(c.scheduler().log());
      ASSERT_EQ(c.scheduler().Wait(absl::ZeroDuration()), 0) << ReadFile(c.scheduler().log());
    }
    const std::string ckpt = Newest(dir + "/ckpt", "ckpt-");
    ASSERT_FALSE(ckpt.empty());
    export_root_ = new std::string(dir + "/export");
    // In-process, as `ember export` does it.
    storage::ExportOptions eo;
    eo.checkpoint_dir = ckpt;
    eo.out_root = *export_root_;
    absl::StatusOr<proto::ExportManifest> m = storage::ExportCheckpoint(eo);
    ASSERT_TRUE(m.ok()) << m.status();
    // The test split's first lines, and what a Predictor (the code under
    // `ember predict`) makes of them.
    const std::string test_file = Newest(data + "/test", "");
    ASSERT_FALSE(test_file.empty());
    lines_ = new std::vector<std::string>(Lines(ReadFile(test_file)));
    lines_->resize(std::min<size_t>(lines_->size(), 50));
    ASSERT_EQ(lines_->size(), 50u);
    absl::StatusOr<std::unique_ptr<serving::Predictor>> predictor = serving::Predictor::Load(*export_root_);
    ASSERT_TRUE(predictor.ok()) << predictor.status();
    ASSERT_EQ((*predictor)->tasks().size(), 1u);
    std::vector<std::string_view> views(lines_->begin(), lines_->end());
    std::vector<float> scores;
    std::vector<serving::LineError> errors;
    (*predictor)->Predict(views, &scores, &errors);
    ASSERT_TRUE(errors.empty()) << errors[0].reason;
    expected_ = new std::vector<double>(scores.begin(), scores.end());
    ASSERT_EQ(expected_->size(), lines_->size());
  }
  static void TearDownTestSuite() {
    delete expected_;
    delete lines_;
    delete export_root_;
    delete tmp_;
  }

  // Starts `ember serve` on the export root with extra flags.
  void StartServer(const std::vector<std::string>& flags = {}) {
    std::vector<std::string> argv = {EmberBinary(), "serve", "--bundle=" + *export_root_, "--port=0",
                                     "--exit_with_parent"};
    argv.insert(argv.end(), flags.begin(), flags.end());
    // A log of its own: an earlier server's line names another port.
    static int servers = 0;
    server_ = std::make_unique<Process>(argv, absl::StrCat(tmp_->path(), "/serve", servers++, ".log"));
    const int port = WaitForServing(*server_, absl::Minutes(1));
    ASSERT_GT(port, 0) << ReadFile(server_->log());
    client_ = std::make_unique<httplib::Client>("127.0.0.1", port);
    client_->set_read_timeout(60, 0);
  }

  // POSTs `body` to /v1/models/<model>:predict.
  httplib::Result Predict(const std::string& body, const std::string& model = "local") {
    return client_->Post(absl::StrCat("/v1/models/", model, ":predict").c_str(), body, "application/json");
  }

  // A request of all lines as strings must give `ember predict`'s scores.
  void ExpectGoodAnswer() {
    Json req;
    req["instances"] = *lines_;
    auto r = Predict(req.dump());
    ASSERT_TRUE(r) << httplib::to_string(r.error());
    ASSERT_EQ(r->status, 200) << r->body;
    const Json j = Json::parse(r->body);
    ASSERT_EQ(j["predictions"].size(), lines_->size()) << r->body;
    for (size_t i = 0; i < lines_->size(); ++i) {
      ASSERT_TRUE(j["predictions"][i].is_number()) << r->body;
      // The server writes the float's shortest exact form.
      EXPECT_EQ(static_cast<float>(j["predictions"][i].get<double>()), (*expected_)[i]) << "line " << i;
    }
  }

  // A 4xx whose JSON error holds `reason`.
  void ExpectError(const httplib::Result& r, int status, const std::string& reason) {
    ASSERT_TRUE(r) << httplib::to_string(r.error());
    EXPECT_EQ(r->status, status) << r->body;
    std::printf("%d %s\n", r->status, r->body.c_str());
    Json j = Json::parse(r->body, nullptr, false);
    ASSERT_TRUE(j.is_object() && j.contains("error")) << r->body;
    EXPECT_TRUE(absl::StrContains(j["error"].get<std::string>(), reason)) << r->body << " lacks: " << reason;
  }

  static TempDir* tmp_;
  static std::string* export_root_;
  static std::vector<std::string>* lines_;
  static std::vector<double>* expected_;
  std::unique_ptr<Process> server_;
  std::unique_ptr<httplib::Client> client_;
};

TempDir* ServeTest::tmp_ = nullptr;
std::string* ServeTest::export_root_ = nullptr;
std::vector<std::string>* ServeTest::lines_ = nullptr;
std::vector<double>* ServeTest::expected_ = nullptr;

TEST_F(ServeTest, AnswersLikeEmberPredictAndStatusEndpoints) {
  ASSERT_NO_FATAL_FAILURE(StartServer());
  ASSERT_NO_FATAL_FAILURE(ExpectGoodAnswer());

  // The same lines as objects of column -> value, sequences as arrays,
  // numbers as numbers: the same scores, bit for bit.
  auto meta = client_->Get("/v1/models/local/metadata");
  ASSERT_TRUE(meta);
  ASSERT_EQ(meta->status, 200) << meta->body;
  const Json columns = Json::parse(meta->body)["metadata"]["columns"];
  ASSERT_GT(columns.size(), 0u);
  Json req;
  req["instances"] = Json::array();
  for (const std::string& line : *lines_) {
    std::vector<std::string> fields = absl::StrSplit(line, '\t');
    ASSERT_EQ(fields.size(), columns.size()) << line;
    Json inst = Json::object();
    for (size_t c = 0; c < fields.size(); ++c) {
      const std::string type = columns[c]["type"];
      const std::string name = columns[c]["name"];
      double number = 0;
      if (type == "LABEL") continue;
      if (columns[c].contains("separator")) {
        Json arr = Json::array();
        const std::string sep = columns[c]["separator"];
        for (absl::string_view piece : absl::StrSplit(fields[c], sep, absl::SkipEmpty())) {
          arr.push_back(std::string(piece));
        }
        inst[name] = arr;
      } else if (type == "DENSE" && absl::SimpleAtod(fields[c], &number) && absl::StrCat(number) == fields[c]) {
        inst[name] = number;
      } else {
        inst[name] = fields[c];
      }
    }
    req["instances"].push_back(inst);
  }
  auto by_columns = Predict(req.dump());
  ASSERT_TRUE(by_columns);
  ASSERT_EQ(by_columns->status, 200) << by_columns->body;
  Json as_lines;
  as_lines["instances"] = *lines_;
  auto by_lines = Predict(as_lines.dump());
  ASSERT_TRUE(by_lines);
  EXPECT_EQ(Json::parse(by_columns->body), Json::parse(by_lines->body));

  auto health = client_->Get("/healthz");
  ASSERT_TRUE(health);
  EXPECT_EQ(health->status, 200);
  EXPECT_EQ(health->body, "ok\n");

  auto status = client_->Get("/v1/models/local");
  ASSERT_TRUE(status);
  ASSERT_EQ(status->status, 200) << status->body;
  const Json s = Json::parse(status->body);
  EXPECT_EQ(s["model_version_status"][0]["state"], "AVAILABLE") << status->body;
  EXPECT_EQ(s["model_version_status"][0]["status"]["error_code"], "OK") << status->body;
  const std::string version = s["model_version_status"][0]["version"];
  auto pinned = client_->Post(absl::StrCat("/v1/models/local/versions/", version, ":predict").c_str(),
                              as_lines.dump(), "application/json");
  ASSERT_TRUE(pinned);
  EXPECT_EQ(pinned->status, 200) << pinned->body;
  ExpectError(client_->Post(absl::StrCat("/v1/models/local/versions/", version, "7:predict").c_str(),
                            as_lines.dump(), "application/json"),
              404, "not available");

  auto metrics = client_->Get("/metrics");
  ASSERT_TRUE(metrics);
  ASSERT_EQ(metrics->status, 200);
  EXPECT_TRUE(absl::StrContains(metrics->body, "ember_serve_requests_total{code=\"200\"}")) << metrics->body;
  EXPECT_TRUE(absl::StrContains(metrics->body, "ember_serve_requests_total{code=\"404\"} 1")) << metrics->body;
  EXPECT_TRUE(absl::StrContains(metrics->body, "ember_serve_instances_total 200\n")) << metrics->body;
  EXPECT_TRUE(absl::StrContains(metrics->body, "ember_serve_predict_latency_seconds_bucket{le=\"+Inf\"} 5\n"))
      << metrics->body;
  EXPECT_TRUE(absl::StrContains(metrics->body, "ember_serve_model_version{model=\"local\"} " + version + "\n"))
      << metrics->body;

  server_->Kill(SIGTERM);
  EXPECT_EQ(server_->Wait(absl::Seconds(30)), 0) << ReadFile(server_->log());
}

TEST_F(ServeTest, BadRequestsGetA4xxWithAReasonAndTheServerKeepsServing) {
  ASSERT_NO_FATAL_FAILURE(StartServer({"--max_body_bytes=200000", "--max_instances=1000"}));
  ExpectError(Predict("{\"instances\": [\"a\", "), 400, "malformed JSON");
  // A number beyond double's range is the client's error (it was a 500;
  // found by tests/fuzz/fuzz_serve_request).
  ExpectError(Predict("{\"instances\": [{\"item_id\": 5e308}]}"), 400, "malformed JSON");
  ASSERT_NO_FATAL_FAILURE(ExpectGoodAnswer());
  // A line with too few columns: the parser's reason, the instance named.
  Json bad;
  bad["instances"] = {(*lines_)[0], "1\tuser_1\tgroup_2"};
  ExpectError(Predict(bad.dump()), 400, "instances[1]: ");
  ASSERT_NO_FATAL_FAILURE(ExpectGoodAnswer());
  ExpectError(Predict(std::string(300000, ' ')), 413, "limit");
  ASSERT_NO_FATAL_FAILURE(ExpectGoodAnswer());
  Json good;
  good["instances"] = *lines_;
  ExpectError(Predict(good.dump(), "nosuchmodel"), 404, "model 'nosuchmodel' not found");
  ASSERT_NO_FATAL_FAILURE(ExpectGoodAnswer());
  ExpectError(Predict("{}"), 400, "missing \"instances\"");
  ExpectError(Predict("{\"instances\": []}"), 400, "empty");
  ExpectError(Predict("{\"inputs\": [\"x\"]}"), 400, "unknown key 'inputs'");
  ExpectError(Predict("[1, 2]"), 400, "expected {\"instances\"");
  ExpectError(Predict("{\"instances\": [1]}"), 400, "instances[0]: a number");
  ExpectError(Predict("{\"instances\": [{\"no_such_column\": \"1\"}]}"), 400, "no_such_column");
  ExpectError(Predict("{\"instances\": [{\"item_id\": true}]}"), 400, "instances[0].item_id: a boolean");
  Json many;
  many["instances"] = std::vector<std::string>(1001, (*lines_)[0]);
  ExpectError(Predict(many.dump()), 400, "at most 1000");
  ExpectError(client_->Get("/v2/nothing"), 404, "no such endpoint");
  ASSERT_NO_FATAL_FAILURE(ExpectGoodAnswer());
  EXPECT_TRUE(server_->Running());
}

// Live updates: a training job exports a base and then deltas (and a full
// bundle every third export) every second while `ember serve --watch` runs;
// a client asks all along. No request may fail, and the answers of each
// version served must equal those of a fresh full export of the checkpoint
// that version was made from.
TEST(ServeLiveTest, WatchAppliesTheExportsOfARunningJob) {
  TempDir tmp;
  const std::string dir = tmp.path(), data = dir + "/data", root = dir + "/export";
  ASSERT_TRUE(GenerateData(data, {"--train_rows=60000", "--test_rows=200", "--train_files=2", "--test_files=1"}));
  // Every checkpoint kept, so that each export's checkpoint can be exported
  // again at the end; a full bundle every third export.
  const std::string conf = dir + "/live.conf";
  WriteFile(conf, ReadFile(SourceDir() + "/examples/local.conf") +
                      "\ncheckpoint { keep: 1000 every_seconds: 0 }\nexport { full_every: 3 }\n");
  fs::create_directories(dir + "/job");
  Cluster c(dir + "/job", conf, 1, 1,
            {"--data_dir=" + data, "--epochs=2", "--checkpoint_dir=" + dir + "/ckpt", "--export_dir=" + root,
             "--export_every_seconds=1"},
            {{"--debug_step_delay_ms=40"}});
  const absl::Time deadline = absl::Now() + absl::Minutes(4);
  while (!fs::exists(root + "/1/MANIFEST") && absl::Now() < deadline && c.scheduler().Running()) {
    absl::SleepFor(absl::Milliseconds(50));
  }
  ASSERT_TRUE(fs::exists(root + "/1/MANIFEST")) << ReadFile(c.scheduler().log());
  Process server({EmberBinary(), "serve", "--bundle=" + root, "--port=0", "--watch", "--watch_interval_ms=50",
                  "--exit_with_parent"},
                 dir + "/serve.log");
  const int port = WaitForServing(server, absl::Minutes(1));
  ASSERT_GT(port, 0) << ReadFile(server.log());
  httplib::Client client("127.0.0.1", port);
  client.set_read_timeout(60, 0);

  std::vector<std::string> lines = Lines(ReadFile(Newest(data + "/test", "")));
  lines.resize(20);
  Json body;
  body["instances"] = lines;
  const std::string request = body.dump();
  std::map<uint64_t, std::vector<float>> answers;  // version -> scores
  int requests = 0, failures = 0, inconsistent = 0;
  std::string first_failure;
  // Until the job has ended and the server serves its last export.
  auto newest_export = [&] {
    uint64_t v = 0;
    for (const auto& e : storage::ListExports(root)) {
      if (e.complete) v = std::max(v, e.version);
    }
    return v;
  };
  const absl::Time end = absl::Now() + absl::Minutes(4);
  for (;;) {
    httplib::Result r = client.Post("/v1/models/local:predict", request, "application/json");
    ++requests;
    if (!r || r->status != 200) {
      ++failures;
      if (first_failure.empty()) first_failure = r ? r->body : httplib::to_string(r.error());
      continue;
    }
    const Json j = Json::parse(r->body);
    uint64_t version = 0;
    ASSERT_TRUE(absl::SimpleAtoi(j["model_version"].get<std::string>(), &version)) << r->body;
    std::vector<float> scores;
    for (const Json& p : j["predictions"]) scores.push_back(static_cast<float>(p.get<double>()));
    auto [it, added] = answers.emplace(version, scores);
    if (!added && it->second != scores) ++inconsistent;
    if (!c.scheduler().Running() && version == newest_export()) break;
    if (absl::Now() > end) break;
  }
  ASSERT_TRUE(c.WaitAll(absl::Minutes(1)));
  EXPECT_EQ(c.scheduler().Wait(absl::ZeroDuration()), 0) << ReadFile(c.scheduler().log());
  std::printf("%d requests, %zu versions served (newest export %llu), %d failed\n", requests, answers.size(),
              static_cast<unsigned long long>(newest_export()), failures);
  EXPECT_EQ(failures, 0) << first_failure;
  EXPECT_EQ(inconsistent, 0) << "a version answered the same request two ways";
  EXPECT_EQ(answers.rbegin()->first, newest_export()) << ReadFile(server.log());
  EXPECT_GE(answers.size(), 3u) << ReadFile(c.scheduler().log());

  // Each version served against a fresh full export of its checkpoint.
  int deltas = 0;
  std::vector<std::string_view> views(lines.begin(), lines.end());
  for (const auto& [version, scores] : answers) {
    absl::StatusOr<proto::ExportManifest> m = storage::ReadExportManifest(absl::StrCat(root, "/", version));
    ASSERT_TRUE(m.ok()) << m.status();
    if (m->base_version() != 0) ++deltas;
    storage::ExportOptions o;
    o.checkpoint_dir = m->checkpoint_dir();
    o.out_root = absl::StrCat(dir, "/fresh-", version);
    absl::StatusOr<proto::ExportManifest> fresh = storage::ExportCheckpoint(o);
    ASSERT_TRUE(fresh.ok()) << fresh.status();
    auto predictor = serving::Predictor::Load(o.out_root);
    ASSERT_TRUE(predictor.ok()) << predictor.status();
    std::vector<float> want;
    std::vector<serving::LineError> errors;
    (*predictor)->Predict(views, &want, &errors);
    EXPECT_EQ(scores, want) << "version " << version << " (base " << m->base_version() << ")";
  }
  EXPECT_GE(deltas, 1) << "no delta was served";
  server.Kill(SIGTERM);
  EXPECT_EQ(server.Wait(absl::Seconds(30)), 0) << ReadFile(server.log());
}

}  // namespace
}  // namespace ember::testing
