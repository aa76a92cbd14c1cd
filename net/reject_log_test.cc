#include "net/reject_log.h"

#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "glog/logging.h"
#include "gtest/gtest.h"

namespace ember::net {
namespace {

class Capture : public google::LogSink {
 public:
  void send(google::LogSeverity, const char*, const char*, int, const struct ::tm*, const char* message,
            size_t message_len) override {
    absl::MutexLock l(&mu);
    lines.emplace_back(message, message_len);
  }
  absl::Mutex mu;
  std::vector<std::string> lines;
};

TEST(RejectLogTest, LogsTheBurstThenCountsTheRestAndSaysHowManyWereLeftOut) {
  Capture sink;
  google::AddLogSink(&sink);
  {
    RejectLog log(absl::Milliseconds(200), 3);
    for (int i = 0; i < 100; ++i) log.Warn("bad frame");
    EXPECT_EQ(log.total(), 100u);
    {
      absl::MutexLock l(&sink.mu);
      EXPECT_EQ(sink.lines.size(), 3u);
    }
    absl::SleepFor(absl::Milliseconds(250));
    log.Warn("bad frame");
    EXPECT_EQ(log.total(), 101u);
  }
  google::RemoveLogSink(&sink);
  absl::MutexLock l(&sink.mu);
  ASSERT_EQ(sink.lines.size(), 4u);
  EXPECT_EQ(sink.lines[0], "bad frame");
  EXPECT_EQ(sink.lines[3], "bad frame (and 97 more rejections not logged)");
}

}  // namespace
}  // namespace ember::net
