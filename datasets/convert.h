// `ember convert <format>`: turns public click-log and recommendation data sets
// (MovieLens, UCI census-income, Criteo, Avazu) into ember's tab-separated log
// (docs/log_schema.md) plus a matching job config, so that a user can train
// on real data with `ember local --config out_dir/job.conf --data_dir out_dir`.
//
// Output, for every format:
//   out_dir/train/part-00000.tsv   training rows
//   out_dir/valid/part-00000.tsv   validation rows (census only)
//   out_dir/test/part-00000.tsv    held-out rows
//   out_dir/job.conf               protobuf text (proto/config.proto) whose
//                                  data.columns describe the files above, with
//                                  relative paths train: "train", test: "test"
//   out_dir/meta.txt               key=value lines, the first
//                                  source=convert <format> (docs/log_schema.md);
//                                  no oracle_auc: real data has no oracle
// meta.txt is written last, so its presence marks a complete conversion.
//
// Formats and what each row becomes:
//   movielens  input is a directory holding ratings.csv and movies.csv
//              (ml-latest-small or any ml-latest/ml-25m style download).
//              Every rating is a sample: label rating >= 4, user, candidate
//              movie, its first genre (category), all its genres, and the
//              user's behaviour sequence: the movies rated strictly earlier
//              (older timestamp) and their categories, oldest first, capped to
//              the last max_history. Each user's last test_fraction of ratings
//              (by time; at least one for users with >= 2 ratings) are the
//              test split. Columns: label, user_id, item_id, item_cat,
//              item_genres, hist_items, hist_cats, timestamp, hist_timestamps
//              (the last two are IGNORE columns kept for inspection).
//              A rating of a movie missing from movies.csv is a bad line.
//   census     input is census-income.{data,test}[.gz] (42 comma-separated
//              columns, no header). Two labels: income (income_50k is
//              "50000+.") and never_married (marital_stat is "Never married");
//              neither is a feature, instance_weight is dropped. Seven
//              continuous columns are DENSE, the other 32 SPARSE in one table.
//              Rows are split by a hash of the row number: 80/10/10
//              train/valid/test by default.
//   criteo     input is the original TSV (label, I1-I13, C1-C26, no header) or
//              DeepCTR's CSV (header "label,I1,...,C26"), told apart by the
//              first line. I-columns become DENSE log(1 + max(x, 0)) (empty
//              stays empty; the config lists missing: "" so it reads as 0),
//              C-columns SPARSE. 90/10 train/test by row hash.
//   avazu      input is the CSV with header (id, click, hour, C1, ...). Label
//              click; every other column but id is SPARSE, plus hour_of_day
//              and weekday derived from hour (YYMMDDHH). 90/10 by row hash.
// Inputs whose name ends in .gz are read through zlib (any format).
#ifndef EMBER_DATASETS_CONVERT_H_
#define EMBER_DATASETS_CONVERT_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"

namespace ember::datasets {

// What to convert and where to. Each field can be given on the command line
// under its own name.
struct ConvertOptions {
  // "movielens", "census", "criteo" or "avazu". Required.
  std::string format;
  // movielens: a directory with ratings.csv and movies.csv; other formats: one
  // file, plain or .gz. Required.
  std::string input;
  // Directory to write into (layout atop this file). Created if missing.
  // Required.
  std::string out_dir;
  // movielens: longest behaviour sequence written, the newest values kept.
  // 1..100000. Default 50.
  uint32_t max_history = 50;
  // Share of held-out rows. movielens: of each user's ratings, by time;
  // census/criteo/avazu: of all rows, by row hash. A negative value means the
  // format's default: 0.2 for movielens, 0.1 otherwise. [0, 1) or negative.
  double test_fraction = -1;
  // census only: share of rows in the validation split, by row hash. Negative
  // = default 0.1. [0, 1), and test_fraction + valid_fraction < 1.
  double valid_fraction = -1;
  // Seeds the row hash of the split and the order of the movielens training
  // rows. The same seed and input give byte-identical output. Any value.
  // Default 1.
  uint64_t seed = 1;
  // movielens: write the training rows in a pseudo-random order (a hash of
  // seed and row) instead of grouped by user, so that a worker's mini-batches
  // mix users. Test rows stay grouped by user, in time order. Default true.
  bool shuffle_train = true;
  // Malformed input lines (wrong field count, unparsable number, bad label)
  // are skipped and counted; the conversion fails on the next one once this
  // many were skipped, so 0 fails on the first. Default 100.
  uint64_t max_bad_lines = 100;
  // What to do when out_dir is not empty. false: fail. true: replace a data
  // set convert or gen-data wrote (as its meta.txt says): delete its
  // meta.txt, job.conf and part files, and fail if its split directories
  // hold anything else, since a trainer reads every file there. A directory
  // holding files neither tool wrote is refused either way and left untouched
  // (datasets/data_dir.h). The command line flag is --overwrite. Default false.
  bool overwrite = false;
};

// What Convert read and wrote.
struct ConvertSummary {
  uint64_t train_rows = 0;
  uint64_t valid_rows = 0;
  uint64_t test_rows = 0;
  // Input lines (records) skipped as malformed, over all input files.
  uint64_t bad_lines = 0;
  // Up to 10 "file:line: reason" messages of skipped lines, first first.
  std::vector<std::string> bad_line_examples;
  // The LABEL columns of job.conf in order, and per label the number of rows
  // (over all splits) whose label is 1.
  std::vector<std::string> label_names;
  std::vector<uint64_t> label_positives;
  // Every file written: data files (train, valid, test), job.conf, meta.txt.
  std::vector<std::string> files;
};

// Checks every option against its documented range. InvalidArgument naming
// the option on failure. Does not touch the disk; thread-safe.
[[nodiscard]] absl::Status ValidateConvertOptions(const ConvertOptions& options);

// Validates `options`, reads the input and writes the layout atop this file,
// meta.txt last. Blocks until done; single-threaded; thread-compatible (two
// calls may run at once on different out_dirs). Memory: movielens keeps every
// rating (about 24 bytes each) and the movie table; the other formats stream
// line by line. On failure returns InvalidArgument for bad options or input
// (naming file:line for a malformed line once max_bad_lines is exceeded, e.g.
// "data/ratings.csv:1234: expected 4 fields, got 3"), NotFound for a missing
// input, FailedPrecondition for an output directory it may not write into
// (naming it, what it holds and what to do; it is then untouched), or an I/O
// error naming the path; the files this run wrote are then removed.
// `summary` may be null; on success it receives the figures above.
[[nodiscard]] absl::Status Convert(const ConvertOptions& options, ConvertSummary* summary);

}  // namespace ember::datasets

#endif  // EMBER_DATASETS_CONVERT_H_
