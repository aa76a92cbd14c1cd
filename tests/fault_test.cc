// Fault tests of whole jobs (issue 10): real `ember` processes on 127.0.0.1
// are stopped, killed and replaced mid-epoch, and each test checks the job's
// outcome (final AUC, samples per epoch, the chunk ledger, exit codes, no
// process left), never its wall time.
#include <signal.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "tests/cluster_harness.h"

namespace ember::testing {
namespace {

// Small and fast-failing: a node silent for 2 s is dead, progress every 0.2 s.
constexpr char kFastCluster[] = "heartbeat_interval_ms: 200 heartbeat_timeout_ms: 2000";
constexpr char kFastTrain[] = "report_interval_ms: 200";
constexpr absl::Duration kJobTimeout = absl::Minutes(3);

// `base` (a file under examples/) with each (block, text) pair's text
// inserted at the top of the top-level block `block {`, written to `path`.
std::string WriteConfig(const std::string& path, const std::string& base,
                        const std::vector<std::pair<std::string, std::string>>& inserts) {
  std::string text = ReadFile(SourceDir() + "/examples/" + base);
  for (const auto& [block, extra] : inserts) {
    const std::string open = "\n" + block + " {";
    EXPECT_NE(text.find(open), std::string::npos) << base << " has no block " << block;
    text = absl::StrReplaceAll(text, {{open, open + "\n  " + extra}});
  }
  WriteFile(path, text);
  return path;
}

// examples/local.conf with fast heartbeats and progress lines, plus `train`.
std::string FastLocalConfig(const std::string& path, const std::string& train = "") {
  return WriteConfig(path, "local.conf",
                     {{"cluster", kFastCluster}, {"train", absl::StrCat(kFastTrain, " ", train)}});
}

std::string Subdir(const std::string& parent, const std::string& name) {
  const std::string d = parent + "/" + name;
  std::filesystem::create_directories(d);
  return d;
}

bool Has(const std::string& log, const std::string& text) {
  return ReadFile(log).find(text) != std::string::npos;
}

std::vector<std::string> Lines(const std::string& log) {
  return absl::StrSplit(ReadFile(log), '\n', absl::SkipEmpty());
}

// Epoch (1-based) -> N of the scheduler's `epoch e/E trained: N samples` lines.
std::map<int, unsigned long long> EpochSamples(const std::string& log) {
  std::map<int, unsigned long long> out;
  for (const std::string& l : Lines(log)) {
    int e, total;
    unsigned long long n;
    if (std::sscanf(l.c_str(), "epoch %d/%d trained: %llu samples", &e, &total, &n) == 3)
      out[e] = n;
  }
  return out;
}

// The highest percentage of the `epoch e/E p% samples=...` progress lines of
// epoch `epoch`, 0 if none yet.
double Progress(const std::string& log, int epoch) {
  double best = 0;
  for (const std::string& l : Lines(log)) {
    int e, total;
    double p;
    if (std::sscanf(l.c_str(), "epoch %d/%d %lf%% samples=", &e, &total, &p) == 3 && e == epoch) {
      best = std::max(best, p);
    }
  }
  return best;
}

// Epoch -> test AUC of the `eval after epoch e: task=T auc=X` lines.
std::map<int, double> EvalAucs(const std::string& log) {
  std::map<int, double> out;
  for (const std::string& l : Lines(log)) {
    int e;
    double auc;
    if (std::sscanf(l.c_str(), "eval after epoch %d: task=%*s auc=%lf", &e, &auc) == 2)
      out[e] = auc;
  }
  return out;
}

// Polls `done` until it holds; gives up when `watched` exits or after
// `timeout`. Returns whether `done` held.
bool WaitUntil(const std::function<bool()>& done, Process& watched, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (absl::Now() < deadline) {
    if (done()) return true;
    if (!watched.Running()) return done();
    absl::SleepFor(absl::Milliseconds(50));
  }
  return done();
}

// Waits until epoch `epoch` is at least `percent` done, checkpoint number
// `checkpoint` (if > 0) has been written, and the job is still training.
bool WaitForProgress(Cluster& c, int epoch, double percent, int checkpoint = 0) {
  const std::string log = c.scheduler().log();
  const std::string ckpt = absl::StrCat("checkpoint ", checkpoint, " (");
  return WaitUntil(
      [&] {
        return Progress(log, epoch) >= percent && (checkpoint == 0 || Has(log, ckpt)) &&
               !EpochSamples(log).contains(epoch);
      },
      c.scheduler(), absl::Minutes(2));
}

// Every process of `c` exited with 0, but for `except` (a killed one).
void ExpectAllExitedZero(Cluster& c, const Process* except = nullptr) {
  EXPECT_EQ(c.scheduler().Wait(absl::ZeroDuration()), 0) << ReadFile(c.scheduler().log());
  for (auto& p : c.servers()) {
    if (p.get() != except) {
      EXPECT_EQ(p->Wait(absl::ZeroDuration()), 0) << p->log() << "\n" << ReadFile(p->log());
    }
  }
  for (auto& p : c.workers()) {
    if (p.get() != except) {
      EXPECT_EQ(p->Wait(absl::ZeroDuration()), 0) << p->log() << "\n" << ReadFile(p->log());
    }
  }
}

double Num(std::map<std::string, std::string>& r, const std::string& key) {
  EXPECT_TRUE(r.contains(key)) << "no " << key << " in the result file";
  return std::atof(r[key].c_str());
}

// The local data of gen-data, `rows` training rows, in dir/data.
std::string LocalData(const std::string& dir, int rows) {
  const std::string data = dir + "/data";
  EXPECT_TRUE(GenerateData(
      data, {absl::StrCat("--train_rows=", rows), absl::StrCat("--test_rows=", rows / 10)}));
  return data;
}

// The AUC of the same job without faults, on 2 servers and 2 workers, run in
// dir/clean. On test-sized data a job ends 0.015-0.02 below gen-data's
// oracle AUC (0.786 vs 0.802 for 500k rows, 2 epochs), so a fault's cost is
// measured against this, and the oracle only bounds it loosely.
double CleanAuc(const std::string& dir, const std::string& conf,
                const std::vector<std::string>& flags) {
  Cluster c(Subdir(dir, "clean"), conf, 2, 2, flags);
  EXPECT_TRUE(c.WaitAll(kJobTimeout)) << "processes left running";
  ExpectAllExitedZero(c);
  auto r = c.Result();
  return Num(r, "auc");
}

// The outcome of a job that lost a process: no worse than the clean one
// by more than 0.015. Better is no fault: with fewer workers for a while
// ASP's updates are less stale, and jobs that lost a worker ended up to
// 0.009 above the clean one in trial runs. The margin is ASP's own noise on a
// busy machine: clean jobs ranged over 0.7731-0.7837, and one run in 13 of
// ReplacementWorkerJoinsTheRunningJob ended 0.011 below its clean job (0.7674
// vs 0.7785, under ctest with other jobs on the 2 cores). A recovery that
// loses or corrupts the model falls far further.
void ExpectAucOfACleanJob(Cluster& c, double clean) {
  auto r = c.Result();
  const double auc = Num(r, "auc"), oracle = Num(r, "oracle_auc");
  std::printf("auc=%.4f clean_auc=%.4f oracle_auc=%.4f\n", auc, clean, oracle);
  EXPECT_GT(auc, clean - 0.015) << ReadFile(c.scheduler().log());
  EXPECT_GT(auc, oracle - 0.04);
}

// ---- 1. Resume equivalence ----

// Job A runs uninterrupted; job B, same config and seeds, is stopped by
// SIGTERM part-way through epoch 1 and resumed on one server instead of two
// (the rows are resharded). One worker: with two, ASP's interleaving alone
// spreads the final AUC of identical jobs over 0.007 (0.7736-0.7808 in ten
// runs), more than the bar; KilledSchedulersNodesExitAndTheJobResumes
// resumes on fewer workers. Both train every sample of every epoch exactly
// once, and end with the same AUC.
TEST(FaultTest, StoppedAndResumedJobMatchesAnUninterruptedOne) {
  constexpr int kRows = 600000;
  TempDir tmp;
  const std::string data = LocalData(tmp.path(), kRows);
  const std::string conf = FastLocalConfig(tmp.path() + "/job.conf");
  const std::string ckpt = tmp.path() + "/ckpt";
  const std::vector<std::string> flags = {"--data_dir=" + data, "--epochs=2"};

  Cluster a(Subdir(tmp.path(), "a"), conf, 2, 1, flags);
  ASSERT_TRUE(a.WaitAll(kJobTimeout)) << "processes left running";
  ExpectAllExitedZero(a);
  auto ra = a.Result();
  const double auc_a = Num(ra, "auc");
  EXPECT_EQ(EpochSamples(a.scheduler().log()),
            (std::map<int, unsigned long long>{{1, kRows}, {2, kRows}}))
      << ReadFile(a.scheduler().log());

  std::vector<std::string> bflags = flags;
  bflags.push_back("--checkpoint_dir=" + ckpt);
  {
    Cluster b(Subdir(tmp.path(), "b1"), conf, 2, 1, bflags);
    ASSERT_TRUE(WaitForProgress(b, 1, 30)) << ReadFile(b.scheduler().log());
    b.scheduler().Kill(SIGTERM);
    ASSERT_TRUE(b.WaitAll(absl::Minutes(1))) << "processes left running";
    ExpectAllExitedZero(b);
    const std::string log = b.scheduler().log();
    EXPECT_TRUE(Has(log, "stopped: checkpoint " + ckpt + "/ckpt-")) << ReadFile(log);
    EXPECT_TRUE(Has(log, "resume with the same command plus --resume")) << ReadFile(log);
    EXPECT_TRUE(EpochSamples(log).empty()) << "stopped after epoch 1 ended:\n" << ReadFile(log);
  }
  bflags.push_back("--resume");
  Cluster b(Subdir(tmp.path(), "b2"), conf, 1, 1, bflags);
  ASSERT_TRUE(b.WaitAll(kJobTimeout)) << "processes left running";
  ExpectAllExitedZero(b);
  const std::string log = b.scheduler().log();
  EXPECT_TRUE(Has(log, "resumed from " + ckpt + "/ckpt-")) << ReadFile(log);
  // The resumed run prints each epoch's total over both runs.
  EXPECT_EQ(EpochSamples(log), EpochSamples(a.scheduler().log())) << ReadFile(log);
  auto rb = b.Result();
  EXPECT_EQ(rb["samples"], ra["samples"]);
  const double auc_b = Num(rb, "auc");
  std::printf("uninterrupted auc=%.4f resumed auc=%.4f\n", auc_a, auc_b);
  EXPECT_NEAR(auc_b, auc_a, 0.005);
}

// ---- 2. A worker killed mid-epoch ----

// The scheduler declares it dead, puts its chunks back on the queue, and
// the other worker trains them: the epoch has every sample (those of the
// dead worker's unfinished chunks twice, as far as it got), and the model
// is as good as a clean one.
TEST(FaultTest, KilledWorkersChunksAreTrainedByTheSurvivor) {
  constexpr int kRows = 500000;
  TempDir tmp;
  const std::string data = LocalData(tmp.path(), kRows);
  const std::string conf = FastLocalConfig(tmp.path() + "/job.conf");
  const double clean = CleanAuc(tmp.path(), conf, {"--data_dir=" + data, "--epochs=2"});
  Cluster c(tmp.path(), conf, 2, 2, {"--data_dir=" + data, "--epochs=2"});
  ASSERT_TRUE(WaitForProgress(c, 1, 30)) << ReadFile(c.scheduler().log());
  Process& victim = *c.workers()[0];
  victim.Kill(SIGKILL);
  ASSERT_TRUE(c.WaitAll(kJobTimeout)) << "processes left running";
  EXPECT_EQ(victim.Wait(absl::ZeroDuration()), 128 + SIGKILL);
  ExpectAllExitedZero(c, &victim);
  const std::string log = c.scheduler().log();
  // Ranks follow registration order, so name the victim by its pid.
  EXPECT_TRUE(Has(log, absl::StrCat("pid ", victim.pid(), ") is dead: no heartbeat")))
      << ReadFile(log);
  EXPECT_TRUE(Has(log, "of its chunks go back on the queue")) << ReadFile(log);
  auto r = c.Result();
  EXPECT_GE(Num(r, "requeued_chunks"), 1);
  EXPECT_EQ(r["recoveries"], "1");  // the lost worker (its chunks requeued; no restore)
  std::map<int, unsigned long long> samples = EpochSamples(log);
  EXPECT_GE(samples[1], kRows) << ReadFile(log);
  EXPECT_LT(samples[1], 2ull * kRows) << ReadFile(log);
  EXPECT_EQ(samples[2], kRows) << ReadFile(log);
  std::printf("epoch 1 samples=%llu\n", samples[1]);
  ExpectAucOfACleanJob(c, clean);
}

// A new worker started after one was killed joins the running job and
// trains.
TEST(FaultTest, ReplacementWorkerJoinsTheRunningJob) {
  constexpr int kRows = 500000;
  TempDir tmp;
  const std::string data = LocalData(tmp.path(), kRows);
  const std::string conf = FastLocalConfig(tmp.path() + "/job.conf");
  const double clean = CleanAuc(tmp.path(), conf, {"--data_dir=" + data, "--epochs=2"});
  Cluster c(tmp.path(), conf, 2, 2, {"--data_dir=" + data, "--epochs=2"});
  ASSERT_TRUE(WaitForProgress(c, 1, 30)) << ReadFile(c.scheduler().log());
  Process& victim = *c.workers()[0];
  victim.Kill(SIGKILL);
  std::unique_ptr<Process> fresh =
      StartNode("worker", c.endpoint(), tmp.path() + "/worker-new.log");
  ASSERT_TRUE(c.WaitAll(kJobTimeout)) << "processes left running";
  EXPECT_EQ(fresh->Wait(absl::Seconds(30)), 0) << ReadFile(fresh->log());
  EXPECT_EQ(victim.Wait(absl::ZeroDuration()), 128 + SIGKILL);
  ExpectAllExitedZero(c, &victim);
  const std::string log = c.scheduler().log();
  EXPECT_TRUE(Has(log, absl::StrCat("pid ", victim.pid(), ") is dead: no heartbeat")))
      << ReadFile(log);
  EXPECT_TRUE(Has(log, absl::StrCat("pid ", fresh->pid(), ") joined"))) << ReadFile(log);
  // It got chunks: epoch 2 is shared by it and the survivor.
  unsigned long long trained = 0;
  for (const std::string& l : Lines(fresh->log())) {
    const size_t at = l.find("worker done: ");
    if (at != std::string::npos) trained = std::strtoull(l.c_str() + at + 13, nullptr, 10);
  }
  EXPECT_GT(trained, 0u) << ReadFile(fresh->log());
  auto r = c.Result();
  EXPECT_GE(Num(r, "requeued_chunks"), 1);
  std::map<int, unsigned long long> samples = EpochSamples(log);
  EXPECT_GE(samples[1], kRows) << ReadFile(log);
  EXPECT_EQ(samples[2], kRows) << ReadFile(log);
  ExpectAucOfACleanJob(c, clean);
}

// ---- 3. A server killed mid-epoch ----

// After a periodic checkpoint a server is killed and a replacement started:
// every server restores the checkpoint, the chunk ledger rolls back to it,
// and the epoch still trains each sample once (the rolled-back ones again,
// counted once).
TEST(FaultTest, KilledServerIsReplacedAndTheJobRollsBackToTheCheckpoint) {
  constexpr int kRows = 500000;
  TempDir tmp;
  const std::string data = LocalData(tmp.path(), kRows);
  const std::string conf = FastLocalConfig(tmp.path() + "/job.conf");
  const double clean = CleanAuc(tmp.path(), conf, {"--data_dir=" + data, "--epochs=2"});
  Cluster c(tmp.path(), conf, 2, 2,
            {"--data_dir=" + data, "--epochs=2", "--checkpoint_dir=" + tmp.path() + "/ckpt",
             "--checkpoint_every_seconds=1"});
  // Checkpoint 1 is the untrained model; 2 the first periodic one.
  ASSERT_TRUE(WaitForProgress(c, 1, 30, /*checkpoint=*/2)) << ReadFile(c.scheduler().log());
  Process& victim = *c.servers()[1];
  victim.Kill(SIGKILL);
  std::unique_ptr<Process> fresh =
      StartNode("server", c.endpoint(), tmp.path() + "/server-new.log");
  ASSERT_TRUE(c.WaitAll(kJobTimeout)) << "processes left running";
  EXPECT_EQ(fresh->Wait(absl::Seconds(30)), 0) << ReadFile(fresh->log());
  EXPECT_EQ(victim.Wait(absl::ZeroDuration()), 128 + SIGKILL);
  ExpectAllExitedZero(c, &victim);
  const std::string log = c.scheduler().log();
  EXPECT_TRUE(Has(log, absl::StrCat("pid ", victim.pid(), ") is dead: no heartbeat")))
      << ReadFile(log);
  EXPECT_TRUE(
      Has(log, absl::StrCat("pid ", fresh->pid(), ") registered to replace the lost server")))
      << ReadFile(log);
  EXPECT_TRUE(Has(log, "recovered from " + tmp.path() + "/ckpt/ckpt-")) << ReadFile(log);
  auto r = c.Result();
  EXPECT_EQ(r["recoveries"], "1");
  EXPECT_EQ(EpochSamples(log), (std::map<int, unsigned long long>{{1, kRows}, {2, kRows}}))
      << ReadFile(log);
  ExpectAucOfACleanJob(c, clean);
}

// ---- 4. The scheduler killed ----

// Servers and workers notice the silence and exit non-zero on their own
// (no orphans); a new cluster with --resume, on one worker instead of two,
// finishes the job.
TEST(FaultTest, KilledSchedulersNodesExitAndTheJobResumes) {
  constexpr int kRows = 500000;
  TempDir tmp;
  const std::string data = LocalData(tmp.path(), kRows);
  const std::string conf = FastLocalConfig(tmp.path() + "/job.conf");
  const std::vector<std::string> flags = {"--data_dir=" + data, "--epochs=2",
                                          "--checkpoint_dir=" + tmp.path() + "/ckpt",
                                          "--checkpoint_every_seconds=1"};
  const double clean = CleanAuc(tmp.path(), conf, {"--data_dir=" + data, "--epochs=2"});
  {
    Cluster c(Subdir(tmp.path(), "first"), conf, 2, 2, flags);
    ASSERT_TRUE(WaitForProgress(c, 1, 30, /*checkpoint=*/2)) << ReadFile(c.scheduler().log());
    c.scheduler().Kill(SIGKILL);
    EXPECT_EQ(c.scheduler().Wait(absl::Seconds(10)), 128 + SIGKILL);
    // The heartbeat timeout (2 s) plus a generous margin for a busy machine.
    for (auto* group : {&c.servers(), &c.workers()}) {
      for (auto& p : *group) {
        const int code = p->Wait(absl::Seconds(20));
        EXPECT_NE(code, -1) << p->log() << " still runs without its scheduler";
        EXPECT_NE(code, 0) << p->log() << "\n" << ReadFile(p->log());
      }
    }
  }
  std::vector<std::string> resume = flags;
  resume.push_back("--resume");
  Cluster c(Subdir(tmp.path(), "second"), conf, 2, 1, resume);
  ASSERT_TRUE(c.WaitAll(kJobTimeout)) << "processes left running";
  ExpectAllExitedZero(c);
  const std::string log = c.scheduler().log();
  EXPECT_TRUE(Has(log, "resumed from " + tmp.path() + "/ckpt/ckpt-")) << ReadFile(log);
  EXPECT_EQ(EpochSamples(log), (std::map<int, unsigned long long>{{1, kRows}, {2, kRows}}))
      << ReadFile(log);
  auto r = c.Result();
  ExpectAucOfACleanJob(c, clean);
}

// ---- 5. Stopping, and what --resume refuses ----

TEST(FaultTest, SigtermWithoutCheckpointDirStopsEveryoneCleanly) {
  TempDir tmp;
  const std::string data = LocalData(tmp.path(), 300000);
  const std::string conf = FastLocalConfig(tmp.path() + "/job.conf");
  Cluster c(tmp.path(), conf, 2, 2, {"--data_dir=" + data, "--epochs=2"});
  ASSERT_TRUE(WaitForProgress(c, 1, 10)) << ReadFile(c.scheduler().log());
  c.scheduler().Kill(SIGTERM);
  ASSERT_TRUE(c.WaitAll(absl::Minutes(1))) << "processes left running";
  ExpectAllExitedZero(c);
  const std::string log = c.scheduler().log();
  EXPECT_TRUE(
      Has(log, "stopped: nothing was saved (no checkpoint.dir), so the job cannot be resumed"))
      << ReadFile(log);
  EXPECT_FALSE(Has(log, "final:")) << ReadFile(log);
}

// Runs the scheduler alone with `flags`; it must fail before any node is
// needed. Returns its log.
std::string FailingScheduler(const std::string& log, const std::string& conf,
                             std::vector<std::string> flags) {
  std::vector<std::string> argv = {EmberBinary(), "scheduler", "--config=" + conf,
                                   absl::StrCat("--port=", FreePort())};
  argv.insert(argv.end(), flags.begin(), flags.end());
  Process p(argv, log);
  EXPECT_NE(p.Wait(absl::Seconds(60)), -1) << "the scheduler waits instead of failing:\n"
                                           << ReadFile(log);
  EXPECT_NE(p.Wait(absl::ZeroDuration()), 0) << ReadFile(log);
  return ReadFile(log);
}

TEST(FaultTest, ResumeNeedsACheckpointOfThisJobAndAFreshJobNeedsAnEmptyDir) {
  TempDir tmp;
  const std::string data = LocalData(tmp.path(), 50000);
  const std::string conf = FastLocalConfig(tmp.path() + "/job.conf");
  const std::string ckpt = tmp.path() + "/ckpt";
  {
    Cluster c(Subdir(tmp.path(), "job"), conf, 1, 1,
              {"--data_dir=" + data, "--epochs=1", "--checkpoint_dir=" + ckpt});
    ASSERT_TRUE(c.WaitAll(kJobTimeout)) << "processes left running";
    ExpectAllExitedZero(c);
  }
  const std::vector<std::string> flags = {"--data_dir=" + data, "--epochs=1",
                                          "--checkpoint_dir=" + ckpt};
  // A fresh job may not mix its checkpoints with another job's.
  std::string log = FailingScheduler(tmp.path() + "/fresh.log", conf, flags);
  EXPECT_TRUE(absl::StrContains(log, "checkpoint.dir " + ckpt + " already holds checkpoints"))
      << log;
  EXPECT_TRUE(absl::StrContains(log, "--resume")) << log;
  // Another config: table "user" with dim 16 instead of 8.
  const std::string other = tmp.path() + "/other.conf";
  WriteFile(other, absl::StrReplaceAll(ReadFile(conf),
                                       {{"name: \"user\"  # user_id and user_group\n  dim: 8",
                                         "name: \"user\"\n  dim: 16"}}));
  ASSERT_NE(ReadFile(other), ReadFile(conf));
  std::vector<std::string> resume = flags;
  resume.push_back("--resume");
  log = FailingScheduler(tmp.path() + "/other.log", other, resume);
  EXPECT_TRUE(absl::StrContains(log, "was written with another config")) << log;
  EXPECT_TRUE(absl::StrContains(log, "user dim 8 ADAGRAD vs user dim 16 ADAGRAD")) << log;
  EXPECT_TRUE(absl::StrContains(log, ckpt + "/ckpt-")) << log;
  // No checkpoint at all.
  const std::string empty = Subdir(tmp.path(), "empty");
  resume.push_back("--checkpoint_dir=" + empty);  // the last one counts
  log = FailingScheduler(tmp.path() + "/empty.log", conf, resume);
  EXPECT_TRUE(absl::StrContains(log, "--resume: " + empty + " holds no complete checkpoint"))
      << log;
}

// ---- 6. Bounded staleness ----

// Two workers, one slowed after every step: the fast one runs ahead exactly
// as far as SSP allows, never further.
void ExpectSspBound(int staleness) {
  constexpr int kRows = 100000;
  TempDir tmp;
  const std::string data = LocalData(tmp.path(), kRows);
  const std::string conf = WriteConfig(
      tmp.path() + "/job.conf", "local.conf",
      {{"cluster", kFastCluster}, {"train", absl::StrCat(kFastTrain, " staleness: ", staleness)}});
  WriteFile(conf, absl::StrReplaceAll(ReadFile(conf), {{"consistency: ASP", "consistency: SSP"}}));
  Cluster c(tmp.path(), conf, 2, 2, {"--data_dir=" + data, "--epochs=1"},
            {{"--debug_step_delay_ms=10"}, {}});
  ASSERT_TRUE(c.WaitAll(kJobTimeout)) << "processes left running";
  ExpectAllExitedZero(c);
  auto r = c.Result();
  std::printf("staleness=%d max_clock_gap=%s auc=%.4f oracle_auc=%.4f\n", staleness,
              r["max_clock_gap"].c_str(), Num(r, "auc"), Num(r, "oracle_auc"));
  // Never beyond the bound, and the straggler makes the fast worker reach it.
  EXPECT_EQ(r["max_clock_gap"], absl::StrCat(staleness));
  EXPECT_EQ(r["samples"], absl::StrCat(kRows));
  // One epoch of 100k rows is little data (see ClusterTest's BSP bar).
  EXPECT_GT(Num(r, "auc"), Num(r, "oracle_auc") - 0.08);
}

TEST(FaultTest, SspKeepsTheFastWorkerWithinTwoStepsOfTheStraggler) { ExpectSspBound(2); }
TEST(FaultTest, SspWithStalenessZeroIsLockstep) { ExpectSspBound(0); }

// ---- 7. Embedding reset before an epoch ----

// On the one-epoch data a second pass over the rare-id tables overfits:
// test AUC falls after epoch 2. Resetting those tables (`id`, `cross`)
// before epoch 2 keeps it from falling.
TEST(FaultTest, ResetBeforeEpochTwoKeepsTestAucFromFalling) {
  TempDir tmp;
  const std::string data = tmp.path() + "/data";
  ASSERT_TRUE(GenerateData(
      data, {"--gen_options=mode=one_epoch", "--train_rows=400000", "--test_rows=40000"}));
  const std::vector<std::string> flags = {"--data_dir=" + data, "--epochs=2"};
  const std::string plain = WriteConfig(tmp.path() + "/plain.conf", "one_epoch.conf",
                                        {{"cluster", kFastCluster}, {"train", kFastTrain}});
  const std::string reset = tmp.path() + "/reset.conf";
  WriteFile(reset, absl::StrReplaceAll(
                       ReadFile(plain),
                       {{"name: \"id\"", "name: \"id\" reset { before_epochs: 2 }"},
                        {"name: \"cross\"", "name: \"cross\" reset { before_epochs: 2 }"}}));
  std::map<int, double> without, with;
  {
    Cluster c(Subdir(tmp.path(), "plain"), plain, 2, 2, flags);
    ASSERT_TRUE(c.WaitAll(kJobTimeout)) << "processes left running";
    ExpectAllExitedZero(c);
    EXPECT_FALSE(Has(c.scheduler().log(), "reset before epoch"));
    without = EvalAucs(c.scheduler().log());
  }
  {
    Cluster c(Subdir(tmp.path(), "reset"), reset, 2, 2, flags);
    ASSERT_TRUE(c.WaitAll(kJobTimeout)) << "processes left running";
    ExpectAllExitedZero(c);
    EXPECT_TRUE(Has(c.scheduler().log(), "reset before epoch 2: tables id, cross"))
        << ReadFile(c.scheduler().log());
    with = EvalAucs(c.scheduler().log());
  }
  ASSERT_EQ(without.size(), 2u);
  ASSERT_EQ(with.size(), 2u);
  std::printf("test auc without reset %.4f -> %.4f, with reset %.4f -> %.4f\n", without[1],
              without[2], with[1], with[2]);
  EXPECT_LT(without[2], without[1] - 0.01);
  EXPECT_GT(with[2], with[1] - 0.005);
  EXPECT_GT(with[2], without[2] + 0.01);
}

}  // namespace
}  // namespace ember::testing
