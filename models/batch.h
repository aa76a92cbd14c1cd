// A parsed mini-batch as the model consumes it. The worker's BatchBuilder
// fills it; the model reads it. Embedding rows are addressed by their index
// in the table's unique-key list, which is also the order in which the
// worker's pulled rows sit in that table's contiguous buffer.
#ifndef EMBER_MODELS_BATCH_H_
#define EMBER_MODELS_BATCH_H_

#include <cstdint>
#include <string>
#include <vector>

namespace ember::models {

struct SparseColumnBatch {
  int column = 0;  // index in DataConfig.columns
  int table = 0;   // index in JobConfig.tables
  // CSR: sample i owns rows[offsets[i] .. offsets[i+1]); offsets has size+1
  // entries. A SPARSE column has at most one row per sample (none when the
  // value was missing).
  std::vector<uint32_t> offsets;
  std::vector<uint32_t> rows;  // indices into Batch::tables[table].keys
};

struct TableBatch {
  // Distinct keys of this table in the batch, ordered by (server rank,
  // logical shard) so that each server's keys form one contiguous range:
  // keys[server_begin[s] .. server_begin[s+1]) go to server s.
  std::vector<uint64_t> keys;
  std::vector<uint32_t> server_begin;  // num_servers + 1 entries
};

struct Batch {
  int size = 0;        // samples
  int num_labels = 0;  // LABEL columns, in config order
  int num_dense = 0;   // DENSE columns, in config order
  std::vector<float> labels;  // size x num_labels, row-major
  std::vector<float> dense;   // size x num_dense, row-major
  // One entry per SPARSE/MULTI_SPARSE/SEQUENCE column, in config order.
  std::vector<SparseColumnBatch> sparse;
  // One entry per table in JobConfig.tables (empty keys if unused).
  std::vector<TableBatch> tables;
  // Where the samples came from: the chunk id (a batch never spans chunks),
  // and whether it is the chunk's last batch.
  uint64_t chunk_id = 0;
  bool last_of_chunk = false;
  uint64_t bytes = 0;  // input bytes these samples occupied
  // The newest value of the first TIME column (unix seconds), 0 without one:
  // pushes carry it (Header.log_time) for expiry.after_days.
  uint64_t log_time = 0;
  // Where the chunk stands after this batch's last line: bytes of the chunk
  // consumed (decompressed, for gzip) and the file's next line number. A
  // resumed chunk starts there (see proto::ChunkPosition).
  uint64_t consumed = 0;
  uint64_t next_line = 0;
};

}  // namespace ember::models

#endif  // EMBER_MODELS_BATCH_H_
