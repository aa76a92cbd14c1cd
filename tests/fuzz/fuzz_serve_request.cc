// libFuzzer target: `ember serve`'s predict request handling, end to end in
// this process: a tiny model is trained-free but real (a checkpoint of a
// small job, exported to a bundle, loaded by serving::Predictor) and served
// by a serving::HttpServer on 127.0.0.1; each input is the body of a
// POST /v1/models/fuzz:predict sent over one keep-alive connection. The
// server must answer every request with 200 or a 4xx (a 5xx or no answer
// within 10 s aborts) and never crash. The model's columns: label, user
// (SPARSE), item (SPARSE), hist (SEQUENCE, ","), tags (MULTI_SPARSE, "|"),
// price (DENSE).
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "glog/logging.h"
#include "google/protobuf/text_format.h"
#include "httplib.h"
#include "models/model.h"
#include "proto/keys.h"
#include "serving/http_server.h"
#include "serving/predictor.h"
#include "storage/export.h"
#include "storage/test_checkpoint.h"
#include "tests/fuzz/fuzz_util.h"

namespace ember::fuzz {
namespace {

constexpr char kConfig[] = R"pb(
  name: "fuzz"
  tables { name: "user" dim: 4 optimizer { kind: ADAGRAD } }
  tables { name: "item" dim: 4 optimizer { kind: ADAGRAD } admission { default_value: 0.25 } }
  data {
    train: "unused"
    columns { name: "label" type: LABEL }
    columns { name: "user" type: SPARSE table: "user" slot: 1 }
    columns { name: "item" type: SPARSE table: "item" slot: 2 }
    columns { name: "hist" type: SEQUENCE table: "item" slot: 2 separator: "," max_len: 8 }
    columns { name: "tags" type: MULTI_SPARSE table: "item" slot: 3 separator: "|" }
    columns { name: "price" type: DENSE }
  }
  model { kind: EMBEDDING_MLP hidden: 8 seed: 3 }
  cluster { num_logical_shards: 4 }
)pb";

struct Rig {
  ScratchDir scratch;
  std::unique_ptr<serving::Predictor> predictor;
  std::unique_ptr<serving::HttpServer> server;
  std::unique_ptr<httplib::Client> client;

  Rig() {
    proto::JobConfig config;
    CHECK(google::protobuf::TextFormat::ParseFromString(kConfig, &config));
    absl::StatusOr<std::unique_ptr<models::Model>> model = models::Model::Create(config);
    CHECK(model.ok()) << model.status();
    storage::testing::CheckpointWriter state(config, (*model)->dense_size());
    for (int u = 0; u < 20; ++u) state.Set(0, proto::Hash64(1, std::to_string(u)), 0.05f * u);
    for (int i = 0; i < 20; ++i) state.Set(1, proto::Hash64(2, std::to_string(i)), -0.03f * i);
    storage::ExportOptions o;
    o.checkpoint_dir = state.Save(scratch.path() + "/ckpt", 1);
    o.out_root = scratch.path() + "/export";
    absl::StatusOr<proto::ExportManifest> exported = storage::ExportCheckpoint(o);
    CHECK(exported.ok()) << exported.status();
    absl::StatusOr<std::unique_ptr<serving::Predictor>> p = serving::Predictor::Load(o.out_root);
    CHECK(p.ok()) << p.status();
    predictor = std::move(*p);
    serving::HttpServerOptions so;
    so.threads = 2;
    so.max_instances = 1000;
    absl::StatusOr<std::unique_ptr<serving::HttpServer>> s = serving::HttpServer::Start(so, predictor.get());
    CHECK(s.ok()) << s.status();
    server = std::move(*s);
    client = std::make_unique<httplib::Client>("127.0.0.1", server->port());
    client->set_keep_alive(true);
    client->set_tcp_nodelay(true);  // else Nagle + delayed ACKs: 40 ms a request
    client->set_read_timeout(10, 0);
  }
};

Rig& TheRig() {
  static Rig* rig = new Rig();  // never destroyed: libFuzzer may exit from any thread
  return *rig;
}

}  // namespace
}  // namespace ember::fuzz

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  ember::fuzz::TheRig();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  ember::fuzz::Rig& rig = ember::fuzz::TheRig();
  const std::string body(reinterpret_cast<const char*>(data), size);
  httplib::Result res = rig.client->Post("/v1/models/fuzz:predict", body, "application/json");
  if (!res) LOG(FATAL) << "no answer from the server: " << httplib::to_string(res.error());
  if (res->status >= 500) LOG(FATAL) << "status " << res->status << ": " << res->body;
  return 0;
}
