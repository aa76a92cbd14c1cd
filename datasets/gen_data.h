// `ember gen-data`: a synthetic click log drawn from a known click model, so
// that a trained model's test AUC can be compared with the best possible one.
//
// Every per-entity quantity (a user's bias, group, favourite topics, usual
// device; an item's bias and category) is a hash of (seed, entity id), and
// popularity is drawn by O(1) rejection-inversion Zipf sampling: memory does
// not grow with the number of users or items, so one can generate hundreds of
// millions of distinct keys. Labels are Bernoulli draws from the row's true
// click probability p, and the test split's (p, label) pairs give the exact
// "oracle" AUC and logloss written to meta.txt.
//
// Output, one sample per line, tab-separated, in kGenDataColumns order:
//   label      0 or 1
//   user_id    decimal id in [0, num_users); 0 is the most active user
//   user_group decimal id in [0, num_user_groups), a function of user_id
//   item_id    decimal id in [0, num_items); 0 is the most popular item
//   item_cat   decimal id in [0, num_categories) = item_id % num_categories
//   hist_items the user's behaviour sequence: item ids joined by ',', oldest
//              first, possibly empty (then the field is empty)
//   hist_cats  the categories of hist_items, same length and order
//   hour       hour of day, 0..23
//   device     "ios", "android" or "web"
//   dense_0    a float, about N(0, 1), 4 decimals
//   dense_1    a float in [0, 1], 4 decimals
//
// The click model. Categories form num_topics topics (topic = category %
// num_topics); each user likes topics_per_user topics. The history is drawn
// mostly from the liked topics (history_focus), the candidate item partly
// (candidate_focus), the rest from global item popularity. Then
//   logit = base_logit
//         + user_effect * z(user) + group_effect * z(user_group)
//         + item_effect * z(item) + category_effect * z(item_cat)
//         + hour_effect * sin(2 pi (hour + phase) / 24) + device_effect * z(device)
//         + dense_weight * dense_0 + dense_weight * (1 - 8 (dense_1 - 0.5)^2)
//         + interest_strength * min(n_topic, interest_cap) / interest_cap
//         + category_match_strength * min(n_cat, interest_cap) / interest_cap
//   p = 1 / (1 + exp(-logit)),  label ~ Bernoulli(p)
// where z(.) is a standard normal derived from a hash of (seed, entity), and
// n_topic (n_cat) counts the history items whose topic (category) equals the
// candidate's. n_topic is what a sum-pooled hist_cats embedding next to the
// candidate's category embedding can express exactly (few topics, well below
// the embedding width); n_cat is left at 0 by default because only attention
// over the sequence recovers it, which makes it the knob that shows what DIN
// buys.
//
// Mode long_interest (mode=long_interest) is a log for long-sequence models
// such as SIM: clicks depend on behaviour far older than the newest 50 items,
// which DIN over a short history cannot see. One line per sample, in
// kGenDataLongInterestColumns order:
//   label      0 or 1
//   user_id    the row's number over both splits (train rows first): every
//              sample has a user of its own, so no user_id embedding can
//              learn a user's interests
//   item_id    decimal id in [0, num_items)
//   item_cat   item_id % num_categories
//   timestamp  Unix seconds of the sample, in 2024's first 90 days
//   hist_items exactly long_history item ids joined by ',', oldest first
//   hist_cats  their categories, aligned
//   hist_times their Unix seconds, aligned: strictly increasing, all before
//              timestamp, the oldest a uniform 60 to 720 days before it
//              (sorted uniform ages: gaps of hours to about two years)
// Per sample, recent_interests distinct categories R are drawn, then
// deep_interests distinct categories D outside R, each with a count n_d
// uniform in [deep_min_items, deep_max_items]. The newest recent_window
// history items come from R only. The older ones (the "old part") hold n_d
// items of each deep category d at random positions, the rest from R. With
// probability deep_share the candidate's category is a uniform member of D,
// else a uniform category outside R and D, so it never occurs in the newest
// recent_window items, and neither its category nor those items tell whether
// it hit D: given them, the chance is exactly deep_share. Items within a
// category follow Zipf(item_zipf) popularity, as in the default mode. Then
//   logit = base_logit + item_effect * z(item) + category_effect * z(item_cat)
//         + interest_strength * min(n_old, interest_cap) / interest_cap
// where n_old counts the old-part items of the candidate's category (n_d for
// a deep hit, 0 otherwise). Besides oracle_auc, meta.txt then records
// recent_only_oracle_auc (and _logloss): the test AUC of
//   E[p | everything but the old part]
//     = deep_share * mean over n in [deep_min_items, deep_max_items] of
//         sigmoid(L + interest_strength * min(n, cap) / cap)
//     + (1 - deep_share) * sigmoid(L),  L the logit without the last term,
// computed exactly: the best any model blind to the old part (DIN over the
// newest 50 items, with recent_window >= 50) can score. The gap between the
// two AUCs is what a long-sequence model can win. The defaults
// (LongInterestDefaults: 200,000 + 20,000 rows, 20,000 items, 200
// categories, history 1000, interest_strength 2.5) give oracle_auc 0.809,
// recent_only_oracle_auc 0.615 and a positive rate of 0.300, in 19 KB lines
// (4.2 GB in all; plain files are faster to write than gzip here).
//
// Mode one_epoch (mode=one_epoch) is a log that overfits after one epoch, as
// production click logs do (the "one-epoch phenomenon", Zhang et al. 2022;
// MEDA, Fan et al. 2024): its signal lies in ids that recur (user groups,
// categories, their crosses, the hour), and beside them sit many rare ids and
// id crosses that a model can only memorise. A second pass over the same rows
// lets their embeddings, already fitted to those very rows once, carry the
// training labels into the MLP, and test AUC falls after the first epoch. One
// line per sample, in kGenDataOneEpochColumns order:
//   label      0 or 1
//   user_id    decimal id in [0, num_users), Zipf(user_zipf) activity
//   user_group hash(user) mod num_user_groups, as in the default mode
//   item_id    decimal id in [0, num_items), Zipf(item_zipf) popularity
//   item_cat   item_id % num_categories
//   hour       hour of day, 0..23
//   group_cat  the cross user_group "_" item_cat, e.g. "12_57": frequent
//   user_item  the cross user_id "_" item_id: nearly every value occurs once
//   user_cat   the cross user_id "_" item_cat: a few times at most
// Users, items and hours are drawn independently. Then
//   logit = base_logit
//         + user_effect * z(user) + group_effect * z(user_group)
//         + item_effect * z(item) + category_effect * z(item_cat)
//         + hour_effect * sin(2 pi (hour + phase) / 24)
//         + cross_effect * z(user_group, item_cat)
// with z(.) as in the default mode; the crosses of user_id add nothing of
// their own. OneEpochDefaults() holds the defaults and their figures.
#ifndef EMBER_DATASETS_GEN_DATA_H_
#define EMBER_DATASETS_GEN_DATA_H_

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "datasets/random.h"

namespace ember::datasets {

// Column names of the generated log, in file order.
inline constexpr std::array<std::string_view, 11> kGenDataColumns = {
    "label",     "user_id", "user_group", "item_id", "item_cat", "hist_items",
    "hist_cats", "hour",    "device",     "dense_0", "dense_1"};
// The same for mode long_interest.
inline constexpr std::array<std::string_view, 8> kGenDataLongInterestColumns = {
    "label",     "user_id",    "item_id",   "item_cat",
    "timestamp", "hist_items", "hist_cats", "hist_times"};

// The same for mode one_epoch.
inline constexpr std::array<std::string_view, 9> kGenDataOneEpochColumns = {
    "label", "user_id",   "user_group", "item_id", "item_cat",
    "hour",  "group_cat", "user_item",  "user_cat"};

// The values of GenDataOptions::mode.
inline constexpr std::string_view kGenDataDefaultMode = "default";
inline constexpr std::string_view kGenDataLongInterestMode = "long_interest";
inline constexpr std::string_view kGenDataOneEpochMode = "one_epoch";

// What to generate. Defaults make the local demo data set (examples/local.conf):
// 1.1M rows, oracle test AUC 0.800, positive rate 0.35. A single-process
// implementation of that config's model and optimizers reached a test AUC of
// 0.790 after two epochs: the defaults are tuned so that a sum-pooled
// embedding + MLP gets within 0.02 of the oracle in two epochs. Each field can
// also be set by name with SetGenDataOption; the names are the field names.
struct GenDataOptions {
  // Which log: "default" (the layout and click model above),
  // "long_interest" or "one_epoch" (see the end of the comment atop this
  // file). Setting it by name (SetGenDataOption) also switches every other
  // option that still holds the old mode's default to the new mode's
  // (LongInterestDefaults(), OneEpochDefaults()), so set it first: options set before it keep their
  // values unless they equal the old mode's default. Default "default".
  std::string mode = std::string(kGenDataDefaultMode);

  // ---- Output ----
  // Directory to write into: out_dir/train/part-NNNNN.tsv[.gz],
  // out_dir/test/part-NNNNN.tsv[.gz] and out_dir/meta.txt. Created if missing.
  // Required.
  std::string out_dir;
  // Seeds every hash and random stream. Same seed and options give
  // byte-identical files on a given platform. Any value. Default 1.
  uint64_t seed = 1;
  // Rows in the training split. 1..2^40. Default 1,000,000.
  uint64_t train_rows = 1000000;
  // Rows in the test split; 0 writes no test split (and no oracle metrics).
  // 0..2^40. Default 100,000.
  uint64_t test_rows = 100000;
  // Files per split; rows are spread evenly, each file generated from its own
  // random stream, so the output does not depend on `threads`.
  // 1..100000 and at most the split's rows. Defaults 4 and 2.
  uint32_t train_files = 4;
  uint32_t test_files = 2;
  // Generator threads, each writing whole files. 0 = one per hardware thread.
  // 0..1024. Default 0.
  uint32_t threads = 0;
  // Write .tsv.gz through zlib instead of .tsv. Default false.
  bool gzip = false;
  // zlib level when gzip: 1 (fastest) .. 9 (smallest). Default 1: the data is
  // synthetic and regenerable, so speed matters more than size.
  int gzip_level = 1;
  // What to do when out_dir is not empty. false: fail. true: replace a data
  // set gen-data wrote (meta.txt says source=gen-data, or is an older
  // gen-data meta.txt): delete its meta.txt and part files, and fail if its
  // split directories hold anything else, since a trainer reads every file
  // there. Anything else in out_dir (a converted set, a user's files) is
  // refused either way and left untouched (datasets/data_dir.h). The command
  // line flag is --overwrite. Default false.
  bool overwrite = false;
  // Count distinct users, items and categories seen (GenDataSummary, meta.txt)
  // with bitmaps of (num_users + num_items + num_categories) / 8 bytes.
  // Refused above 2^35 bits (4 GiB). Default true.
  bool count_distinct = true;

  // ---- Population ----
  // Users, drawn by Zipf(user_zipf) activity over ranks = ids. 1..2^40.
  // Default 10,000.
  uint64_t num_users = 10000;
  // User groups (an age band, a region): user_group = hash(user) mod this.
  // 1..2^32-1. Default 100.
  uint32_t num_user_groups = 100;
  // Items, drawn by Zipf(item_zipf) popularity. 1..2^40, >= num_categories.
  // Default 5,000.
  uint64_t num_items = 5000;
  // Item categories; category = item_id % num_categories. 1..2^24, <=
  // num_items. Default 100.
  uint32_t num_categories = 100;
  // Topics: groups of categories (topic = category % num_topics) that users
  // like. Keep it well below the category embedding width: a sum-pooled model
  // then represents the interest term exactly and learns it within two
  // epochs (8 topics, or 2 liked topics per user, take it several epochs).
  // 1..num_categories. Default 4.
  uint32_t num_topics = 4;
  // Zipf exponents of user activity and item popularity; 0 = uniform, 1 =
  // classic Zipf. 0..10. Defaults 0.8 and 1.0.
  double user_zipf = 0.8;
  double item_zipf = 1.0;
  // Topics each user likes (drawn by hash, may repeat). 1..64. Default 1.
  uint32_t topics_per_user = 1;
  // Behaviour sequence length, uniform in [min_history, max_history].
  // 0 <= min_history <= max_history <= 100000. Defaults 0 and 30.
  uint32_t min_history = 0;
  uint32_t max_history = 30;
  // Probability that a history item (the candidate item) comes from one of the
  // user's liked topics rather than from global popularity. [0, 1].
  // Defaults 0.8 and 0.5.
  double history_focus = 0.8;
  double candidate_focus = 0.5;

  // ---- Click model, in logit units (see the formula atop this file) ----
  // Intercept; sets the positive rate. [-30, 30]. Default -2.3.
  double base_logit = -2.3;
  // Standard deviations of the per-entity effects, and the hour-of-day
  // amplitude. [0, 10]. The user and item effects are small by default: most
  // users and items occur too rarely in 1M rows for any model to learn their
  // own bias, so larger values widen the gap to the oracle AUC rather than
  // adding learnable signal; groups and categories are frequent.
  double user_effect = 0.1;
  double group_effect = 0.5;
  double item_effect = 0.2;
  double category_effect = 0.5;
  double hour_effect = 0.4;
  double device_effect = 0.4;
  // Weight of the two dense features. [-10, 10]. Default 0.6.
  double dense_weight = 0.6;
  // Logit added when at least interest_cap history items share the
  // candidate's topic (linearly less for fewer). [-20, 20]. Default 2.0.
  double interest_strength = 2.0;
  // The same for the candidate's exact category. [-20, 20]. Default 0.
  double category_match_strength = 0.0;
  // History matches that saturate the interest terms. 1..100000. Default 4.
  uint32_t interest_cap = 4;

  // ---- Mode long_interest only ----
  // In that mode user ids are row numbers, and num_users, num_user_groups,
  // num_topics, user_zipf, topics_per_user, min_history, max_history,
  // history_focus, candidate_focus, user_effect, group_effect, hour_effect,
  // device_effect, dense_weight and category_match_strength are unused (and
  // not checked). interest_strength and interest_cap weigh the old-part
  // matches.
  // History length of every sample. recent_window + 2 * deep_interests *
  // deep_max_items .. 100000. Default 1000.
  uint32_t long_history = 1000;
  // The newest history items, drawn from the recent interests only; keep it
  // at least the short-term model's window (DIN's last_n). 1..100000.
  // Default 100.
  uint32_t recent_window = 100;
  // Categories of the recent interests. 1..64. Default 4.
  uint32_t recent_interests = 4;
  // Deep-interest categories, only in the old part. 1..64 and
  // recent_interests + deep_interests < num_categories. Default 3.
  uint32_t deep_interests = 3;
  // Old-part items of each deep category: uniform in [deep_min_items,
  // deep_max_items]. 1 <= deep_min_items <= deep_max_items <= 100000.
  // Defaults 1 and 16.
  uint32_t deep_min_items = 1;
  uint32_t deep_max_items = 16;
  // Probability that the candidate's category is a deep interest. [0, 1].
  // Default 0.5.
  double deep_share = 0.5;

  // ---- Mode one_epoch only ----
  // In that mode num_topics, topics_per_user, min_history, max_history,
  // history_focus, candidate_focus, device_effect, dense_weight,
  // interest_strength, category_match_strength, interest_cap and the options
  // of mode long_interest are unused (and not checked).
  // Standard deviation of the effect of each (user_group, item_cat) pair.
  // [0, 10]. Default 0 (OneEpochDefaults sets its own).
  double cross_effect = 0.0;
};

// The defaults of mode long_interest: GenDataOptions{} with mode =
// "long_interest", train_rows = 200,000, test_rows = 20,000, num_items =
// 20,000, num_categories = 200 and interest_strength = 2.5.
GenDataOptions LongInterestDefaults();

// The defaults of mode one_epoch: GenDataOptions{} with mode = "one_epoch",
// num_users = 200,000, user_zipf = 0.5, num_items = 100,000, item_zipf =
// 0.8, base_logit = -1.5, user_effect = 0.5, group_effect, item_effect,
// category_effect and hour_effect = 0.3, cross_effect = 0.8 (1,000,000 +
// 100,000 rows, 100 groups, 100 categories as in the default mode). They give
// oracle_auc 0.761 and a positive rate of 0.230 in 51 MB. In the training
// split 99.5% of the user_item values and 99.3% of the user_cat values occur
// at most twice (user_item: once), 44% of the users at most 3 times and 63%
// of the items at most 5 times, while each of the 10,000 group_cat pairs
// occurs about 100 times. examples/one_epoch.conf (Adam on every table) on 2
// servers and 2 workers scored test AUC 0.717, 0.674, 0.627, 0.602 after
// epochs 1 to 4.
GenDataOptions OneEpochDefaults();

// What GenerateData wrote and measured.
struct GenDataSummary {
  uint64_t train_rows = 0;
  uint64_t test_rows = 0;
  uint64_t train_positives = 0;
  uint64_t test_positives = 0;
  // Positives / rows over both splits.
  double positive_rate = 0;
  // Mean true click probability over both splits (close to positive_rate).
  double mean_click_probability = 0;
  // AUC and logloss of the true p against the drawn labels on the test split:
  // the best any model can score on it. NaN when test_rows == 0 (or, for the
  // AUC, when the test labels are all equal).
  double oracle_auc = 0;
  double oracle_logloss = 0;
  // Mode long_interest: the same for the best scores without the old part of
  // the history (recent_only_oracle_auc atop this file). NaN otherwise.
  double recent_only_oracle_auc = 0;
  double recent_only_oracle_logloss = 0;
  // Mean history length over both splits.
  double mean_history = 0;
  // Distinct ids seen over both splits (items: candidates and history); 0
  // when options.count_distinct is false.
  struct DistinctCounts {
    uint64_t users = 0, items = 0, categories = 0;
  } distinct;
  // Bytes written to the data files (compressed size when gzip).
  uint64_t bytes_written = 0;
  double seconds = 0;  // wall time of GenerateData
  // Every data file written, train files first, in order.
  std::vector<std::string> files;
};

// Checks every option against its documented range. On failure the message
// names the option, e.g. "gen-data option num_topics: must be in [1,
// num_categories = 100], got 200". Thread-safe; does not touch the disk.
[[nodiscard]] absl::Status ValidateGenDataOptions(const GenDataOptions& options);

// Validates `options`, then writes the train and test files and, last,
// out_dir/meta.txt (key=value lines: source=gen-data first, then format, columns, train_rows,
// test_rows, positive_rate, oracle_auc, oracle_logloss, the other GenDataSummary fields but seconds
// and files, and every option, seed included), so a meta.txt marks a complete data set. The
// recent_only_* figures are written in mode long_interest only, and of the options only those
// that options.mode uses (mode itself only when not "default"). The output is a
// function of the options only, not of `threads`. Blocks until done; uses up to `threads` threads.
// Memory: the test split's (p, label) pairs (8 bytes per test row), the distinct-id bitmaps and ~1
// MiB per thread. On failure returns InvalidArgument naming the bad option, FailedPrecondition
// naming an output directory it may not write into (what it holds, what to do; out_dir is then
// untouched), or an I/O error naming the failing path; the files this run wrote are then removed.
// `summary` may be null; on success it receives the figures above.
[[nodiscard]] absl::Status GenerateData(const GenDataOptions& options, GenDataSummary* summary);

// Sets the option whose field name is `name` from `value` (decimal numbers,
// "true"/"false"/"1"/"0" for booleans). Only parses: run
// ValidateGenDataOptions for ranges. InvalidArgument naming the option on an
// unknown name or an unparsable value; `options` is unchanged then.
[[nodiscard]] absl::Status SetGenDataOption(std::string_view name, std::string_view value,
                                            GenDataOptions* options);

// Every option that applies to options.mode as (field name, value text) in
// declaration order (mode first, when not "default"), as written to
// meta.txt; SetGenDataOption accepts each pair back unchanged.
std::vector<std::pair<std::string, std::string>> GenDataOptionValues(const GenDataOptions& options);

// The true click probability of one generated line (without its newline)
// under `options` (only the mode, population and click-model fields matter;
// use the options the file was generated with). Recomputes exactly the float the
// generator drew the label from. InvalidArgument when the line does not have
// the generated layout, its ids are out of range, or its derived columns
// (user_group, item_cat) disagree with `options`. Validates the options and
// builds the model on every call (microseconds): meant for tests and spot
// checks, not bulk scoring. Thread-safe.
[[nodiscard]] absl::StatusOr<float> ClickProbability(const GenDataOptions& options,
                                                     std::string_view line);

}  // namespace ember::datasets

#endif  // EMBER_DATASETS_GEN_DATA_H_
