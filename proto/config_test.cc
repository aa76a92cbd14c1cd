#include "proto/config.h"

#include "gtest/gtest.h"

namespace ember::proto {
namespace {

const char kGood[] = R"(
tables { name: "item" dim: 8 }
data {
  train: "/tmp/x"
  columns { name: "label" type: LABEL }
  columns { name: "item" type: SPARSE table: "item" }
}
)";

TEST(ConfigTest, ParsesAndValidates) {
  auto c = ParseJobConfig(kGood, "good.conf");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_TRUE(ValidateJobConfig(*c).ok());
  EXPECT_EQ(c->cluster().num_logical_shards(), 1024u);
  EXPECT_EQ(FindTable(*c, "item"), 0);
  EXPECT_EQ(ColumnSlot(*c, 1), 2u);
}

TEST(ConfigTest, SyntaxErrorNamesFileAndLine) {
  auto c = ParseJobConfig("tables { name: \"a\" \n dimm: 3 }", "bad.conf");
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("bad.conf:2"), std::string::npos) << c.status();
}

TEST(ConfigTest, ValidationNamesField) {
  auto c = ParseJobConfig(kGood, "x");
  ASSERT_TRUE(c.ok());
  c->mutable_data()->mutable_columns(1)->set_table("nope");
  auto st = ValidateJobConfig(*c);
  EXPECT_NE(st.message().find("data.columns[1].table"), std::string::npos) << st;
  c = ParseJobConfig(kGood, "x");
  c->mutable_tables(0)->mutable_optimizer()->set_learning_rate(-1);
  st = ValidateJobConfig(*c);
  EXPECT_NE(st.message().find("tables[0].optimizer.learning_rate"), std::string::npos) << st;
  c = ParseJobConfig(kGood, "x");
  c->mutable_data()->set_user_column("label");
  st = ValidateJobConfig(*c);
  EXPECT_NE(st.message().find("data.user_column: column 'label' must be SPARSE"), std::string::npos) << st;
  c->mutable_data()->set_user_column("nobody");
  EXPECT_FALSE(ValidateJobConfig(*c).ok());
  c->mutable_data()->set_user_column("item");
  EXPECT_TRUE(ValidateJobConfig(*c).ok());
  c = ParseJobConfig(kGood, "x");
  c->mutable_cluster()->set_heartbeat_timeout_ms(10);
  EXPECT_FALSE(ValidateJobConfig(*c).ok());
}

// The resident ceiling must hold the memory budget; the message names both.
TEST(ConfigTest, ResidentCeilingBelowTheBudgetIsRefused) {
  auto c = ParseJobConfig(std::string(kGood) + R"(storage { memory_budget_bytes: 1000000 max_resident_bytes: 999999 })",
                          "x");
  ASSERT_TRUE(c.ok()) << c.status();
  absl::Status st = ValidateJobConfig(*c);
  EXPECT_NE(st.message().find("storage.max_resident_bytes"), std::string::npos) << st;
  EXPECT_NE(st.message().find("storage.memory_budget_bytes"), std::string::npos) << st;
  c->mutable_storage()->set_max_resident_bytes(1000000);
  EXPECT_TRUE(ValidateJobConfig(*c).ok());
  c->mutable_storage()->set_max_resident_bytes(0);  // derived at server start
  EXPECT_TRUE(ValidateJobConfig(*c).ok());
  c->mutable_storage()->set_memory_budget_bytes(0);
  c->mutable_storage()->set_max_resident_bytes(4096);
  EXPECT_TRUE(ValidateJobConfig(*c).ok());
}

TEST(ConfigTest, StorageFieldsAreValidated) {
  auto c = ParseJobConfig(std::string(kGood) + R"(storage { memory_budget_bytes: 1000000 } checkpoint { keep: 2 })",
                          "x");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_TRUE(ValidateJobConfig(*c).ok());
  c->mutable_tables(0)->mutable_admission()->set_sketch_width(3000);
  auto st = ValidateJobConfig(*c);
  EXPECT_NE(st.message().find("tables[0].admission.sketch_width"), std::string::npos) << st;
  c->mutable_tables(0)->mutable_admission()->set_sketch_width(4096);
  c->mutable_tables(0)->mutable_admission()->set_probability(0);
  st = ValidateJobConfig(*c);
  EXPECT_NE(st.message().find("tables[0].admission.probability"), std::string::npos) << st;
  c->mutable_tables(0)->mutable_admission()->set_probability(1);
  c->mutable_storage()->set_spill_path("");
  st = ValidateJobConfig(*c);
  EXPECT_NE(st.message().find("storage.spill_path"), std::string::npos) << st;
  c->mutable_storage()->set_spill_path("/tmp/s");
  c->mutable_checkpoint()->set_keep(0);
  st = ValidateJobConfig(*c);
  EXPECT_NE(st.message().find("checkpoint.keep"), std::string::npos) << st;
  c->mutable_checkpoint()->set_keep(2);
  c->mutable_checkpoint()->set_full_every(0);
  st = ValidateJobConfig(*c);
  EXPECT_NE(st.message().find("checkpoint.full_every"), std::string::npos) << st;
  c->mutable_checkpoint()->set_full_every(3);
  c->mutable_train()->set_epochs(3);
  c->mutable_tables(0)->mutable_reset()->add_before_epochs(1);
  st = ValidateJobConfig(*c);
  EXPECT_NE(st.message().find("tables[0].reset.before_epochs[0]"), std::string::npos) << st;
  c->mutable_tables(0)->mutable_reset()->set_before_epochs(0, 3);
  EXPECT_TRUE(ValidateJobConfig(*c).ok());
  c->mutable_tables(0)->mutable_reset()->set_before_epochs(0, 4);
  st = ValidateJobConfig(*c);
  EXPECT_NE(st.message().find("must be an epoch in [2, train.epochs=3]"), std::string::npos) << st;
}

TEST(ConfigTest, BadLineBudgetNamesTheFieldAndTheFirstCauses) {
  DataConfig d;
  d.set_max_bad_lines(10);
  d.set_max_bad_fraction(0.01);
  const std::vector<std::string> first = {"a.tsv:1: expected 10 columns, got 11", "a.tsv:2: x", "a.tsv:3: y",
                                          "a.tsv:4: z"};
  EXPECT_TRUE(CheckBadLineBudget(d, 10, 0, first).ok());  // at the budget is within it
  absl::Status st = CheckBadLineBudget(d, 11, 0, first);
  EXPECT_EQ(st.code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(st.message().find("data.max_bad_lines=10"), std::string::npos) << st;
  EXPECT_NE(st.message().find("a.tsv:1: expected 10 columns, got 11"), std::string::npos) << st;
  EXPECT_NE(st.message().find("a.tsv:3: y"), std::string::npos) << st;
  EXPECT_EQ(st.message().find("a.tsv:4"), std::string::npos) << st;  // three at most
  // The fraction: 20 bad lines are within max_bad_lines=100 but above 1%,
  // which applies from 1000 lines on.
  d.set_max_bad_lines(100);
  EXPECT_TRUE(CheckBadLineBudget(d, 20, 999, {}).ok());
  st = CheckBadLineBudget(d, 20, 1000, {});
  EXPECT_NE(st.message().find("data.max_bad_fraction"), std::string::npos) << st;
  EXPECT_NE(st.message().find("workers' logs"), std::string::npos) << st;
}

}  // namespace
}  // namespace ember::proto
