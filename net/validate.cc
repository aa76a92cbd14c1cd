#include "net/validate.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace ember::net {
namespace {

WireCheck Bad(proto::ErrorCode code, std::string why) { return WireCheck{code, std::move(why)}; }

WireCheck ExpectFrames(const Message& m, size_t n) {
  if (m.frames.size() != n) {
    return Bad(proto::BAD_FRAMES, absl::StrCat(proto::Command_Name(m.header.command()),
                                               m.header.is_reply() ? " reply" : "", ": expected ", n,
                                               " data frames, got ", m.frames.size()));
  }
  return {};
}

WireCheck ExpectSize(const Message& m, size_t frame, uint64_t elements, uint64_t width, const char* what) {
  // A header count so large that the byte size overflows matches no frame.
  const bool overflow = width != 0 && elements > UINT64_MAX / width;
  const uint64_t want = overflow ? UINT64_MAX : elements * width;
  if (overflow || m.frames[frame].size() != want) {
    return Bad(proto::BAD_SIZE, absl::StrCat(proto::Command_Name(m.header.command()), ": ", what,
                                             " frame has ", m.frames[frame].size(), " bytes, header implies ",
                                             want));
  }
  return {};
}

WireCheck ExpectPayload(const Message& m, proto::Header::PayloadCase want) {
  if (m.header.payload_case() != want) {
    return Bad(proto::BAD_REQUEST, absl::StrCat(proto::Command_Name(m.header.command()),
                                                ": missing or wrong control payload"));
  }
  return {};
}

WireCheck Check(Message& m) {
  const proto::Header& h = m.header;
  // Error replies carry no frames worth checking. Only replies: a request
  // that sets `error` is checked like any other (it used to skip every
  // check, so a PULL naming 40 keys with a 2-key frame reached the server).
  if (h.is_reply() && h.error() != proto::OK) return {};
  if (h.num_keys() > kMaxElements || h.dense_length() > kMaxElements || h.dim() > 65536) {
    return Bad(proto::BAD_SIZE, absl::StrCat(proto::Command_Name(h.command()), ": num_keys ", h.num_keys(),
                                             ", dim ", h.dim(), " or dense_length ", h.dense_length(),
                                             " out of range"));
  }
  const bool reply = h.is_reply();
  WireCheck c;
  switch (h.command()) {
    case proto::PULL:
      if (!(c = ExpectFrames(m, 1)).ok()) return c;
      if (!reply) return ExpectSize(m, 0, h.num_keys(), sizeof(uint64_t), "keys");
      return ExpectSize(m, 0, h.num_keys() * h.dim(), sizeof(float), "values");
    case proto::PUSH:
      if (reply) return ExpectFrames(m, 0);
      if (!(c = ExpectFrames(m, 2)).ok()) return c;
      if (!(c = ExpectSize(m, 0, h.num_keys(), sizeof(uint64_t), "keys")).ok()) return c;
      return ExpectSize(m, 1, h.num_keys() * h.dim(), sizeof(float), "gradients");
    case proto::DENSE_PULL:
      if (!reply) return ExpectFrames(m, 0);
      if (!(c = ExpectFrames(m, 1)).ok()) return c;
      return ExpectSize(m, 0, h.dense_length(), sizeof(float), "values");
    case proto::DENSE_PUSH:
      if (reply) return ExpectFrames(m, 0);
      if (!(c = ExpectFrames(m, 1)).ok()) return c;
      return ExpectSize(m, 0, h.dense_length(), sizeof(float), "gradients");
    case proto::PHASE_DONE:
      if (reply) {
        if (!(c = ExpectFrames(m, 0)).ok()) return c;
        return ExpectPayload(m, proto::Header::kPhaseDoneReply);
      }
      if (!(c = ExpectPayload(m, proto::Header::kPhaseDone)).ok()) return c;
      if (m.frames.empty()) return {};
      if (!(c = ExpectFrames(m, 3)).ok()) return c;
      if (h.phase_done().num_tasks() > 64) return Bad(proto::BAD_REQUEST, "phase_done.num_tasks is above 64");
      {
        // num_samples is checked against the users frame first, so it is
        // below 2^61 and the product cannot overflow.
        if (!(c = ExpectSize(m, 2, h.phase_done().num_samples(), sizeof(uint64_t), "users")).ok()) return c;
        const uint64_t values = h.phase_done().num_samples() * std::max<uint32_t>(1, h.phase_done().num_tasks());
        if (!(c = ExpectSize(m, 0, values, sizeof(float), "scores")).ok()) return c;
        return ExpectSize(m, 1, values, sizeof(float), "labels");
      }
    case proto::REGISTER:
      if (!(c = ExpectFrames(m, 0)).ok()) return c;
      return ExpectPayload(m, reply ? proto::Header::kRegisterReply : proto::Header::kRegisterRequest);
    case proto::GET_CHUNK:
      if (!(c = ExpectFrames(m, 0)).ok()) return c;
      return ExpectPayload(m, reply ? proto::Header::kChunkReply : proto::Header::kChunkRequest);
    case proto::BARRIER:
      if (!(c = ExpectFrames(m, 0)).ok()) return c;
      return reply ? WireCheck{} : ExpectPayload(m, proto::Header::kBarrier);
    case proto::REPORT_METRICS:
      if (!(c = ExpectFrames(m, 0)).ok()) return c;
      return reply ? WireCheck{} : ExpectPayload(m, proto::Header::kMetrics);
    case proto::PAUSE:
      if (!(c = ExpectFrames(m, 0)).ok()) return c;
      return reply ? WireCheck{} : ExpectPayload(m, proto::Header::kPause);
    case proto::PAUSED:
      if (!(c = ExpectFrames(m, 0)).ok()) return c;
      return ExpectPayload(m, reply ? proto::Header::kPausedReply : proto::Header::kPaused);
    case proto::SHUTDOWN:
    case proto::HEARTBEAT:
    case proto::PING:
      return ExpectFrames(m, 0);
    case proto::SAVE:
      if (!(c = ExpectFrames(m, 0)).ok()) return c;
      return ExpectPayload(m, reply ? proto::Header::kSaveReply : proto::Header::kSave);
    case proto::RESTORE:
      if (!(c = ExpectFrames(m, 0)).ok()) return c;
      return ExpectPayload(m, reply ? proto::Header::kRestoreReply : proto::Header::kRestore);
    case proto::LIST_CHECKPOINTS:
      if (!(c = ExpectFrames(m, 0)).ok()) return c;
      return ExpectPayload(m, reply ? proto::Header::kListReply : proto::Header::kList);
    case proto::RESET_TABLE:
      if (!(c = ExpectFrames(m, 0)).ok()) return c;
      return ExpectPayload(m, reply ? proto::Header::kResetReply : proto::Header::kReset);
    case proto::SWEEP:
      if (!(c = ExpectFrames(m, 0)).ok()) return c;
      return reply ? ExpectPayload(m, proto::Header::kSweepReply) : WireCheck{};
    case proto::STATS:
      if (!(c = ExpectFrames(m, 0)).ok()) return c;
      return reply ? ExpectPayload(m, proto::Header::kStatsReply) : WireCheck{};
    default:
      return Bad(proto::UNKNOWN_COMMAND, absl::StrCat("unknown command ", static_cast<int>(h.command())));
  }
}

}  // namespace

WireCheck ValidateMessage(Message& m) {
  WireCheck c = Check(m);
  if (!c.ok()) return c;
  for (Frame& f : m.frames) f.Align<uint64_t>();
  return c;
}

Message MakeReply(const Message& request) {
  Message r;
  r.peer = request.peer;
  r.header.set_command(request.header.command());
  r.header.set_is_reply(true);
  r.header.set_request_id(request.header.request_id());
  return r;
}

Message MakeErrorReply(const Message& request, proto::ErrorCode code, const std::string& why) {
  Message r = MakeReply(request);
  r.header.set_error(code);
  r.header.set_error_message(why);
  return r;
}

}  // namespace ember::net
