// A data set's directory, shared by gen-data and the converters: which files
// are ours, meta.txt (who wrote the set, written last), the rules for taking
// over an output directory, and the writer of the train/valid/test splits.
//
// Layout: DIR/<split>/part-NNNNN.tsv[.gz] for split in train, valid, test;
// DIR/job.conf (convert only); DIR/meta.txt, key=value lines whose first is
// `source=gen-data` or `source=convert <format>` (docs/log_schema.md).
//
// Safety: a tool replaces only a data set that a tool wrote (as meta.txt
// says), only when asked (--overwrite), and never a file a trainer would
// read that it did not write; everything else in DIR stays untouched.
#ifndef EMBER_DATASETS_DATA_DIR_H_
#define EMBER_DATASETS_DATA_DIR_H_

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "datasets/text_io.h"

namespace ember::datasets {

inline constexpr std::string_view kMetaFile = "meta.txt";
inline constexpr std::string_view kJobConfFile = "job.conf";
// Every split directory either tool may write.
inline constexpr std::string_view kSplitDirs[] = {"train", "valid", "test"};

// The tools that write data sets, as meta.txt's source= names them.
enum class DataTool { kGenData, kConvert };

// Whether `name` is a data file name of ours: part-<digits>.tsv or
// part-<digits>.tsv.gz.
bool IsDataFileName(std::string_view name);

// What an output directory holds, judged from its meta.txt (or, for sets
// written before meta.txt had a source= line: gen-data's format= and
// oracle_auc= keys, or convert's job.conf header).
struct DataDirContents {
  enum Kind {
    kNothing,  // absent, empty, or holding only empty split directories
    kGenData,  // a set written by gen-data
    kConvert,  // a set written by convert
    kForeign,  // anything else: files we did not write, or an incomplete set
  };
  Kind kind = kNothing;
  // For messages, e.g. "a data set written by `ember convert criteo`".
  std::string description;
};

// Reads `dir` without changing it. FailedPrecondition when `dir` exists and
// is not a directory; Internal naming the path on an I/O error.
absl::StatusOr<DataDirContents> InspectDataDir(const std::string& dir);

// Makes `out_dir` ready for `tool` to write a new set with the split
// directories `splits`. Allowed: an absent or empty directory; with
// `overwrite`, one holding a set `tool` may replace (gen-data: a gen-data
// set; convert: a gen-data or convert set), whose meta.txt (first, so that
// an interrupted run never looks complete), job.conf and split data files
// are then deleted. Refused with FailedPrecondition naming the directory,
// what it holds and what to do: anything else, and, in a set that would be
// replaced, any file in a split directory that is not one of our data files
// (a trainer reads them all) or a job.conf convert did not write. Nothing is
// deleted when it refuses. Appends to `created` the directories it created
// (out_dir first), for RemoveCreated.
absl::Status PrepareOutputDir(const std::string& out_dir, DataTool tool, bool overwrite,
                              const std::vector<std::string_view>& splits,
                              std::vector<std::string>* created);

// Undoes a failed run: removes each of `files` that exists, then each of
// `dirs` (last first) if empty. Best effort; logs what it cannot remove.
// Pass only paths this run created.
void RemoveCreated(const std::vector<std::string>& files, const std::vector<std::string>& dirs);

// Writes out_dir/meta.txt atomically (through meta.txt.tmp): `source=` then
// `source`, then each (key, value) as key=value, one per line. Write it last.
absl::Status WriteMeta(const std::string& out_dir, std::string_view source,
                       const std::vector<std::pair<std::string, std::string>>& keys);

// meta.txt's source= value for a set written by `tool` (format: convert's).
std::string MetaSource(DataTool tool, std::string_view format = "");

// One out_dir/<split>/part-00000.tsv per split, written line by line through
// a buffer. Not thread-safe.
class SplitWriter {
 public:
  // Creates the files; the split directories must exist.
  static absl::StatusOr<std::unique_ptr<SplitWriter>> Open(
      const std::string& out_dir, const std::vector<std::string_view>& splits);

  // Appends `line` and a newline to split number `split` (index into the
  // `splits` given to Open). Internal naming the file on a write error.
  absl::Status Line(size_t split, std::string_view line);
  // Flushes and closes every file.
  absl::Status Close();

  uint64_t rows(size_t split) const { return files_[split].rows; }
  // The data files, in split order.
  std::vector<std::string> paths() const;

 private:
  struct File {
    std::unique_ptr<OutputFile> out;
    std::string buf;
    uint64_t rows = 0;
  };
  absl::Status Flush(File& f);
  std::vector<File> files_;
};

}  // namespace ember::datasets

#endif  // EMBER_DATASETS_DATA_DIR_H_
