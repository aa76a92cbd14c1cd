#include "ps/checkpoint_coordinator.h"

#include <filesystem>

#include "absl/strings/str_cat.h"
#include "glog/logging.h"
#include "storage/checkpoint_files.h"
#include "storage/shard_checkpoint.h"

namespace ember::ps {

CheckpointCoordinator::CheckpointCoordinator(CheckpointCoordinatorOptions options, net::Client* client)
    : opt_(std::move(options)), client_(client) {}

absl::StatusOr<std::vector<net::Message>> CheckpointCoordinator::Broadcast(const proto::Header& header) {
  std::vector<net::Client::CallId> calls;
  for (net::PeerId peer : opt_.servers) {
    net::Message m;
    m.header = header;
    m.header.set_sender(opt_.node_id);
    calls.push_back(client_->Start(peer, std::move(m)));
  }
  std::vector<net::Message> replies;
  absl::Status first;
  const absl::Time deadline = absl::Now() + opt_.timeout;
  for (size_t i = 0; i < calls.size(); ++i) {
    absl::StatusOr<net::Message> r;
    for (;;) {
      const net::Client::CallId id[] = {calls[i]};
      const absl::Duration left = deadline - absl::Now();
      absl::StatusOr<size_t> ready = client_->WaitAny(id, std::min(left, absl::Milliseconds(100)));
      if (ready.ok()) {
        r = client_->Wait(calls[i]);
        break;
      }
      if (opt_.cancelled && opt_.cancelled()) {
        for (size_t j = i; j < calls.size(); ++j) client_->Forget(calls[j]);
        return absl::CancelledError("cancelled while waiting for the servers");
      }
      if (absl::Now() >= deadline) {
        client_->Forget(calls[i]);
        r = absl::DeadlineExceededError(absl::StrCat("no reply within ", absl::FormatDuration(opt_.timeout)));
        break;
      }
    }
    if (!r.ok()) {
      if (first.ok()) first = absl::Status(r.status().code(), absl::StrCat("server ", i, ": ", r.status().message()));
      continue;
    }
    replies.push_back(std::move(*r));
  }
  if (!first.ok()) return first;
  return replies;
}

absl::StatusOr<proto::CheckpointManifest> CheckpointCoordinator::Save(const std::string& root, bool incremental,
                                                                     bool sweep,
                                                                     const proto::JobState* job_state) {
  if (opt_.config.checkpoint().dir().empty()) {
    return absl::FailedPreconditionError("checkpoint.dir is empty: the job has no checkpoint root");
  }
  std::error_code ec;
  std::filesystem::create_directories(root, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot create checkpoint root ", root, ": ", ec.message()));
  uint64_t last_id = 0, parent = 0;
  for (const proto::CheckpointSummary& c : storage::ListCheckpoints(root)) {
    last_id = std::max(last_id, c.id());
    if (c.complete()) parent = c.id();
  }
  const uint64_t id = last_id + 1;
  const std::string dir = (std::filesystem::path(root) / storage::CheckpointDirName(id)).string();
  std::filesystem::create_directories(dir, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot create ", dir, ": ", ec.message()));

  // Servers take the checkpoint's name relative to the job's root.
  absl::StatusOr<std::string> name = storage::NameUnderRoot(opt_.config.checkpoint().dir(), dir);
  if (!name.ok()) return name.status();
  proto::Header h;
  h.set_command(proto::SAVE);
  proto::SaveRequest* q = h.mutable_save();
  q->set_dir(*name);
  q->set_id(id);
  q->set_parent_id(incremental ? parent : 0);
  q->set_sweep(sweep);
  absl::StatusOr<std::vector<net::Message>> replies = Broadcast(h);
  if (!replies.ok()) {
    return absl::Status(replies.status().code(),
                        absl::StrCat("checkpoint ", dir, " not written: ", replies.status().message()));
  }
  std::vector<proto::CheckpointPart> parts;
  for (net::Message& r : *replies) parts.push_back(std::move(*r.header.mutable_save_reply()->mutable_part()));
  proto::CheckpointManifest manifest =
      storage::MergeParts(opt_.config, opt_.dense_total, id, incremental ? parent : 0,
                          job_state ? job_state->phase() / 2 : 0, parts);
  if (job_state) *manifest.mutable_job_state() = *job_state;
  if (absl::Status st = storage::WriteManifest(dir, manifest); !st.ok()) return st;
  if (absl::Status st = storage::PruneCheckpoints(root, std::max<uint32_t>(1, opt_.config.checkpoint().keep()));
      !st.ok()) {
    LOG(WARNING) << "pruning " << root << ": " << st;
  }
  return manifest;
}

absl::StatusOr<uint64_t> CheckpointCoordinator::Restore(const std::string& dir_or_root, uint64_t incarnation) {
  std::string dir = dir_or_root;
  if (!std::filesystem::exists(std::filesystem::path(dir) / storage::kManifestName) &&
      storage::CheckpointIdOf(std::filesystem::path(dir).filename().string()) == 0) {
    absl::StatusOr<std::string> latest = storage::LatestCheckpoint(dir);
    if (!latest.ok()) return latest.status();
    dir = *latest;
  }
  if (opt_.config.checkpoint().dir().empty()) {
    return absl::FailedPreconditionError("checkpoint.dir is empty: the job has no checkpoint root");
  }
  absl::StatusOr<std::string> name = storage::NameUnderRoot(opt_.config.checkpoint().dir(), dir);
  if (!name.ok()) return name.status();
  // Everyone verifies before anyone loads: a checkpoint that one server
  // refuses is loaded by none.
  for (bool verify_only : {true, false}) {
    proto::Header h;
    h.set_command(proto::RESTORE);
    h.mutable_restore()->set_dir(*name);
    h.mutable_restore()->set_verify_only(verify_only);
    h.mutable_restore()->set_incarnation(incarnation);
    absl::StatusOr<std::vector<net::Message>> replies = Broadcast(h);
    if (!replies.ok()) {
      return absl::Status(replies.status().code(),
                          absl::StrCat(verify_only ? "checkpoint refused: " : "restore failed: ",
                                       replies.status().message()));
    }
    if (!verify_only) {
      uint64_t rows = 0;
      for (const net::Message& r : *replies) rows += r.header.restore_reply().rows();
      return rows;
    }
  }
  return absl::InternalError("unreachable");
}

absl::StatusOr<uint32_t> CheckpointCoordinator::ResetTable(uint32_t table) {
  proto::Header h;
  h.set_command(proto::RESET_TABLE);
  h.mutable_reset()->set_table(table);
  absl::StatusOr<std::vector<net::Message>> replies = Broadcast(h);
  if (!replies.ok()) return replies.status();
  uint32_t generation = 0;
  for (const net::Message& r : *replies) generation = std::max(generation, r.header.reset_reply().generation());
  return generation;
}

absl::StatusOr<uint64_t> CheckpointCoordinator::Sweep() {
  proto::Header h;
  h.set_command(proto::SWEEP);
  absl::StatusOr<std::vector<net::Message>> replies = Broadcast(h);
  if (!replies.ok()) return replies.status();
  uint64_t n = 0;
  for (const net::Message& r : *replies) n += r.header.sweep_reply().removed();
  return n;
}

absl::StatusOr<std::vector<proto::ServerStatsProto>> CheckpointCoordinator::Stats() {
  proto::Header h;
  h.set_command(proto::STATS);
  absl::StatusOr<std::vector<net::Message>> replies = Broadcast(h);
  if (!replies.ok()) return replies.status();
  std::vector<proto::ServerStatsProto> v;
  for (const net::Message& r : *replies) v.push_back(r.header.stats_reply());
  return v;
}

}  // namespace ember::ps
