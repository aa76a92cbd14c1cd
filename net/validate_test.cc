#include "net/validate.h"

#include "gtest/gtest.h"

namespace ember::net {
namespace {

Message Pull(size_t keys_claimed, size_t keys_sent) {
  Message m;
  m.header.set_command(proto::PULL);
  m.header.set_num_keys(keys_claimed);
  m.frames.push_back(Frame::FromVector(std::vector<uint64_t>(keys_sent)));
  return m;
}

TEST(ValidateTest, AcceptsWellFormedPull) {
  Message m = Pull(10, 10);
  EXPECT_TRUE(ValidateMessage(m).ok());
}

TEST(ValidateTest, WrongFrameCount) {
  Message m = Pull(10, 10);
  m.frames.push_back(Frame::Copy("x", 1));
  WireCheck c = ValidateMessage(m);
  EXPECT_EQ(c.code, proto::BAD_FRAMES);
  EXPECT_NE(c.why.find("expected 1"), std::string::npos) << c.why;
}

TEST(ValidateTest, TruncatedKeys) {
  Message m = Pull(10, 9);
  EXPECT_EQ(ValidateMessage(m).code, proto::BAD_SIZE);
  Message odd;
  odd.header.set_command(proto::PULL);
  odd.header.set_num_keys(1);
  odd.frames.push_back(Frame::Copy("1234567", 7));
  EXPECT_EQ(ValidateMessage(odd).code, proto::BAD_SIZE);
}

// Found by tests/fuzz/fuzz_wire: a request with `error` set skipped every
// check, and the server read 40 keys from a 2-key frame.
TEST(ValidateTest, RequestWithErrorFieldIsStillChecked) {
  Message m = Pull(40, 2);
  m.header.set_error(proto::UNKNOWN_TABLE);
  EXPECT_EQ(ValidateMessage(m).code, proto::BAD_SIZE);
  // An error reply carries no frames, whatever its header says.
  Message reply = Pull(40, 0);
  reply.frames.clear();
  reply.header.set_is_reply(true);
  reply.header.set_error(proto::UNKNOWN_TABLE);
  EXPECT_TRUE(ValidateMessage(reply).ok());
}

TEST(ValidateTest, PushGradientSizeMustMatchDim) {
  Message m;
  m.header.set_command(proto::PUSH);
  m.header.set_num_keys(4);
  m.header.set_dim(8);
  m.frames.push_back(Frame::FromVector(std::vector<uint64_t>(4)));
  m.frames.push_back(Frame::FromVector(std::vector<float>(31)));
  EXPECT_EQ(ValidateMessage(m).code, proto::BAD_SIZE);
  m.frames[1] = Frame::FromVector(std::vector<float>(32));
  EXPECT_TRUE(ValidateMessage(m).ok());
}

TEST(ValidateTest, HugeClaimsDoNotOverflow) {
  Message m = Pull(uint64_t{1} << 62, 0);
  EXPECT_EQ(ValidateMessage(m).code, proto::BAD_SIZE);
}

TEST(ValidateTest, ControlPayloadMustMatch) {
  Message m;
  m.header.set_command(proto::REGISTER);
  EXPECT_EQ(ValidateMessage(m).code, proto::BAD_REQUEST);
  m.header.mutable_register_request();
  EXPECT_TRUE(ValidateMessage(m).ok());
  Message u;
  u.header.set_command(static_cast<proto::Command>(999));
  EXPECT_EQ(ValidateMessage(u).code, proto::UNKNOWN_COMMAND);
}

}  // namespace
}  // namespace ember::net
