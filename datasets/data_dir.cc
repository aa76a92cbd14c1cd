// Data-set directories: ownership from meta.txt, safe takeover of an output
// directory, meta.txt and the split writer (contracts in data_dir.h).
#include "datasets/data_dir.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "glog/logging.h"

namespace ember::datasets {
namespace {

namespace fs = std::filesystem;

constexpr size_t kFlushBytes = size_t{1} << 20;
// gen-data's format= value, and convert's job.conf header, in sets written
// before meta.txt had a source= line.
constexpr std::string_view kLegacyGenDataFormat = "format=ember-gen-data-1";
constexpr std::string_view kLegacyConvertMark = "(written by `ember convert";

std::string ReadSmallFile(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::string text(64 * 1024, '\0');
  in.read(text.data(), static_cast<std::streamsize>(text.size()));
  text.resize(static_cast<size_t>(in.gcount()));
  return text;
}

// The value of `key` in key=value lines, or nullopt-like "" with *found false.
std::string MetaValue(std::string_view text, std::string_view key, bool* found) {
  *found = false;
  std::istringstream in{std::string(text)};
  for (std::string line; std::getline(in, line);) {
    if (line.size() > key.size() && line.starts_with(key) && line[key.size()] == '=') {
      *found = true;
      return line.substr(key.size() + 1);
    }
  }
  return "";
}

std::string_view ToolName(DataTool tool) {
  return tool == DataTool::kGenData ? "gen-data" : "convert";
}

bool MayReplace(DataTool tool, DataDirContents::Kind kind) {
  return kind == DataDirContents::kGenData ||
         (tool == DataTool::kConvert && kind == DataDirContents::kConvert);
}

absl::Status Refuse(const fs::path& dir, std::string_view what) {
  return absl::FailedPreconditionError(absl::StrCat(dir.string(), Av(what)));
}

}  // namespace

bool IsDataFileName(std::string_view name) {
  if (!name.starts_with("part-")) return false;
  name.remove_prefix(5);
  if (name.ends_with(".gz")) name.remove_suffix(3);
  if (!name.ends_with(".tsv")) return false;
  name.remove_suffix(4);
  return !name.empty() &&
         std::all_of(name.begin(), name.end(), [](char c) { return c >= '0' && c <= '9'; });
}

std::string MetaSource(DataTool tool, std::string_view format) {
  return tool == DataTool::kGenData ? "gen-data" : absl::StrCat("convert ", Av(format));
}

absl::StatusOr<DataDirContents> InspectDataDir(const std::string& dir_name) {
  const fs::path dir(dir_name);
  DataDirContents c;
  std::error_code ec;
  if (!fs::exists(dir, ec)) return c;
  if (!fs::is_directory(dir, ec)) return Refuse(dir, " exists and is not a directory");
  std::vector<std::string> names;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    // Empty split directories hold no data (a failed run may leave them).
    std::error_code empty_ec;
    const bool is_split =
        std::find(std::begin(kSplitDirs), std::end(kSplitDirs), name) != std::end(kSplitDirs);
    if (is_split && it->is_directory() && fs::is_empty(it->path(), empty_ec)) continue;
    names.push_back(name);
  }
  if (ec) return absl::InternalError(absl::StrCat("cannot list ", dir_name, ": ", ec.message()));
  if (names.empty()) return c;
  std::sort(names.begin(), names.end());

  const fs::path meta = dir / kMetaFile;
  if (fs::is_regular_file(meta, ec)) {
    const std::string text = ReadSmallFile(meta);
    bool found = false;
    const std::string source = MetaValue(text, "source", &found);
    if (found && source == MetaSource(DataTool::kGenData)) {
      c.kind = DataDirContents::kGenData;
      c.description = "a data set written by `ember gen-data` (meta.txt: source=gen-data)";
      return c;
    }
    if (found && source.starts_with("convert ")) {
      c.kind = DataDirContents::kConvert;
      c.description = absl::StrCat("a data set written by `ember ", source,
                                   "` (meta.txt: source=", source, ")");
      return c;
    }
    bool has_oracle = false;
    MetaValue(text, "oracle_auc", &has_oracle);
    if (!found && has_oracle && text.starts_with(kLegacyGenDataFormat)) {
      c.kind = DataDirContents::kGenData;
      c.description = "a data set written by an older `ember gen-data` (meta.txt without source=)";
      return c;
    }
    c.kind = DataDirContents::kForeign;
    c.description = found ? absl::StrCat("a meta.txt with source=", source,
                                         ", which neither gen-data nor convert writes")
                          : "a meta.txt that neither gen-data nor convert wrote";
    return c;
  }
  const fs::path conf = dir / kJobConfFile;
  if (fs::is_regular_file(conf, ec) &&
      ReadSmallFile(conf).find(kLegacyConvertMark) != std::string::npos) {
    c.kind = DataDirContents::kConvert;
    c.description = "a data set written by an older `ember convert` (job.conf, no meta.txt)";
    return c;
  }
  c.kind = DataDirContents::kForeign;
  if (names.size() > 5) {
    names.resize(5);
    names.push_back("...");
  }
  c.description = absl::StrCat(
      "files that neither gen-data nor convert wrote, or an incomplete set without meta.txt (",
      absl::StrJoin(names, ", "), ")");
  return c;
}

absl::Status PrepareOutputDir(const std::string& out_dir, DataTool tool, bool overwrite,
                              const std::vector<std::string_view>& splits,
                              std::vector<std::string>* created) {
  const fs::path root(out_dir);
  absl::StatusOr<DataDirContents> contents = InspectDataDir(out_dir);
  if (!contents.ok()) return contents.status();
  const std::string_view name = ToolName(tool);
  if (contents->kind != DataDirContents::kNothing) {
    if (!MayReplace(tool, contents->kind)) {
      return Refuse(root, absl::StrCat(" holds ", contents->description, ", which ", Av(name),
                                       " will not replace, even with --overwrite; pick another "
                                       "--out, or remove it yourself"));
    }
    if (!overwrite) {
      return Refuse(root, absl::StrCat(" is not empty: it holds ", contents->description,
                                       "; pass --overwrite to replace it, or pick another --out"));
    }
  }

  // Collect the old set's files, refusing before anything is deleted.
  std::vector<fs::path> stale;
  std::error_code ec;
  if (contents->kind != DataDirContents::kNothing) {
    for (std::string_view f : {kMetaFile, std::string_view("meta.txt.tmp")}) {
      if (fs::exists(root / f, ec)) stale.push_back(root / f);  // meta.txt first
    }
    const fs::path conf = root / kJobConfFile;
    if (tool == DataTool::kConvert && fs::exists(conf, ec)) {
      if (contents->kind != DataDirContents::kConvert) {
        return Refuse(conf,
                      " was not written by convert, which would overwrite it; remove it "
                      "yourself or pick another --out");
      }
      stale.push_back(conf);
    }
    for (std::string_view sub : kSplitDirs) {
      const fs::path dir = root / sub;
      if (!fs::exists(dir, ec)) continue;
      if (!fs::is_directory(dir, ec)) return Refuse(dir, " exists and is not a directory");
      for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
        const std::string file = it->path().filename().string();
        if (!IsDataFileName(file) || !it->is_regular_file()) {
          return Refuse(dir, absl::StrCat(" holds ", file, ", which ", Av(name),
                                          " did not write and a trainer would read; remove it "
                                          "yourself or pick another --out"));
        }
        stale.push_back(it->path());
      }
      if (ec) {
        return absl::InternalError(absl::StrCat("cannot list ", dir.string(), ": ", ec.message()));
      }
    }
    LOG(INFO) << name << ": replacing " << contents->description << " in " << out_dir << " ("
              << stale.size() << " files)";
  }
  for (const fs::path& p : stale) {
    if (!fs::remove(p, ec) && ec) {
      return absl::InternalError(absl::StrCat("cannot remove ", p.string(), ": ", ec.message()));
    }
  }

  std::vector<fs::path> dirs = {root};
  for (std::string_view s : splits) dirs.push_back(root / s);
  for (const fs::path& d : dirs) {
    if (fs::create_directories(d, ec)) created->push_back(d.string());
    if (ec) {
      return absl::InternalError(absl::StrCat("cannot create ", d.string(), ": ", ec.message()));
    }
  }
  return absl::OkStatus();
}

void RemoveCreated(const std::vector<std::string>& files, const std::vector<std::string>& dirs) {
  std::error_code ec;
  for (const std::string& f : files) {
    if (!fs::remove(f, ec) && ec) LOG(WARNING) << "cannot remove " << f << ": " << ec.message();
  }
  for (auto it = dirs.rbegin(); it != dirs.rend(); ++it) {
    if (fs::is_empty(*it, ec)) fs::remove(*it, ec);
  }
}

absl::Status WriteMeta(const std::string& out_dir, std::string_view source,
                       const std::vector<std::pair<std::string, std::string>>& keys) {
  std::string text = absl::StrCat("source=", Av(source), "\n");
  for (const auto& [k, v] : keys) absl::StrAppend(&text, k, "=", v, "\n");
  return WriteFileAtomically((fs::path(out_dir) / kMetaFile).string(), text);
}

// ---------------------------------------------------------------------------
// SplitWriter.

absl::StatusOr<std::unique_ptr<SplitWriter>> SplitWriter::Open(
    const std::string& out_dir, const std::vector<std::string_view>& splits) {
  auto w = std::make_unique<SplitWriter>();
  for (std::string_view s : splits) {
    absl::StatusOr<std::unique_ptr<OutputFile>> f =
        OutputFile::Open((fs::path(out_dir) / s / "part-00000.tsv").string());
    if (!f.ok()) return f.status();
    File file;
    file.out = *std::move(f);
    w->files_.push_back(std::move(file));
  }
  return w;
}

absl::Status SplitWriter::Line(size_t split, std::string_view line) {
  File& f = files_[split];
  f.buf.append(line);
  f.buf.push_back('\n');
  ++f.rows;
  return f.buf.size() >= kFlushBytes ? Flush(f) : absl::OkStatus();
}

absl::Status SplitWriter::Flush(File& f) {
  absl::Status st = f.out->Write(f.buf);
  f.buf.clear();
  return st;
}

absl::Status SplitWriter::Close() {
  for (File& f : files_) {
    absl::Status st = Flush(f);
    if (!st.ok()) return st;
    absl::StatusOr<uint64_t> size = f.out->Close();
    if (!size.ok()) return size.status();
  }
  return absl::OkStatus();
}

std::vector<std::string> SplitWriter::paths() const {
  std::vector<std::string> out;
  for (const File& f : files_) out.push_back(f.out->path());
  return out;
}

}  // namespace ember::datasets
