// DivergenceWatch: each rule fires when it should and not before.
#include "scheduler/divergence.h"

#include <cmath>
#include <limits>

#include "gtest/gtest.h"

namespace ember::scheduler {
namespace {

proto::DivergenceConfig Config() {
  proto::DivergenceConfig c;
  c.set_loss_ratio(3);
  c.set_loss_reports(2);
  c.set_auc_margin(0.01);
  c.set_stuck_seconds(10);
  return c;
}

TEST(DivergenceWatchTest, HealthyTrainingNeverFires) {
  DivergenceWatch w(Config());
  double loss = 0.69;
  for (int s = 0; s < 100; ++s) {
    loss = 0.5 + 0.19 * std::exp(-s / 20.0);
    EXPECT_EQ(w.Observe(loss, 0.5 + 0.003 * s < 0.8 ? 0.52 + 0.003 * s : 0.8, s), "") << s;
  }
}

TEST(DivergenceWatchTest, ANonFiniteLossFiresAtOnce) {
  DivergenceWatch w(Config());
  EXPECT_EQ(w.Observe(0.69, NAN, 1), "");
  const std::string why = w.Observe(std::numeric_limits<double>::quiet_NaN(), NAN, 2);
  EXPECT_NE(why.find("nan"), std::string::npos) << why;
  EXPECT_EQ(w.Observe(0.5, 0.7, 3), why) << "a verdict stays";
  DivergenceWatch inf(Config());
  EXPECT_NE(inf.Observe(INFINITY, NAN, 1), "");
}

TEST(DivergenceWatchTest, ALossFarAboveTheStartFiresAfterEnoughReports) {
  DivergenceWatch w(Config());
  EXPECT_EQ(w.Observe(0.7, NAN, 1), "");
  EXPECT_EQ(w.Observe(2.5, NAN, 2), "") << "one report above 3 x ln 2 is not enough";
  EXPECT_EQ(w.Observe(1.0, NAN, 3), "") << "and the count restarts below it";
  EXPECT_EQ(w.Observe(2.2, NAN, 4), "");
  const std::string why = w.Observe(2.3, NAN, 5);
  EXPECT_NE(why.find("the start's 0.6931"), std::string::npos) << why;
}

// 32 workers pushing their first steps together (issue 14): the first report
// is already far above a starting model's ln 2, and the start is ln 2.
TEST(DivergenceWatchTest, ALossAboveLn2TimesTheRatioFromTheFirstReportFires) {
  proto::DivergenceConfig c = Config();
  c.set_loss_reports(3);
  DivergenceWatch w(c);
  EXPECT_EQ(w.Observe(2.64, 0.52, 1), "");
  EXPECT_EQ(w.Observe(7.30, 0.51, 2), "");
  const std::string why = w.Observe(2.66, 0.50, 3);
  EXPECT_NE(why.find("the start's 0.6931"), std::string::npos) << why;
}

TEST(DivergenceWatchTest, AnAucStuckAtOneHalfFiresAfterStuckSeconds) {
  DivergenceWatch w(Config());
  EXPECT_EQ(w.Observe(0.65, 0.505, 0), "");
  EXPECT_EQ(w.Observe(0.65, 0.498, 5), "");
  EXPECT_EQ(w.Observe(0.65, 0.53, 8), "") << "out of the margin: the clock restarts";
  EXPECT_EQ(w.Observe(0.65, 0.50, 9), "");
  EXPECT_EQ(w.Observe(0.65, 0.50, 18), "");
  EXPECT_EQ(w.Observe(0.65, NAN, 18.5), "") << "undefined is not stuck: the clock restarts";
  EXPECT_EQ(w.Observe(0.65, 0.50, 19), "");
  EXPECT_EQ(w.Observe(0.65, 0.501, 28), "");
  const std::string why = w.Observe(0.645, 0.5002, 29);
  EXPECT_NE(why.find("train AUC"), std::string::npos) << why;
}

TEST(DivergenceWatchTest, DisabledNeverFires) {
  proto::DivergenceConfig c = Config();
  c.set_enabled(false);
  DivergenceWatch w(c);
  EXPECT_EQ(w.Observe(NAN, 0.5, 100), "");
}

}  // namespace
}  // namespace ember::scheduler
