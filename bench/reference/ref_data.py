"""Reading ember click logs into tensors for the PyTorch reference.

The parsing rules are those of docs/log_schema.md (worker/log_parser.cc):
tab-separated fields, one per data.columns entry; labels in [0, 1]; DENSE
finite floats with `missing` values as 0; sparse values taken byte for byte,
empty pieces and `missing` pieces dropped, MULTI_SPARSE keeping the first
max_len values and SEQUENCE the last. Lines that break a rule are skipped and
counted.

Every sparse value becomes a row of its column's table: a vocabulary per
table maps (slot, raw value) to a row number, assigned in order of first
appearance over train then test. This stands in for ember's hashed keys,
whose rows the servers create on first pull.

Everything that ember's worker does while parsing happens here too, before
training, so that the timed training loop sees only tensors: the items each
attention block attends to (last_n, SIM hard search) and their time-gap
buckets are selected per sample at load time. Only SIM's soft search, which
needs the current embeddings, selects during training (ref_model.py).
"""

import dataclasses
import glob
import gzip
import math
import os
import re
import sys
from array import array
from typing import List, Optional

import numpy as np
import torch

from ref_config import ConfigError, column_slot, type_name

# Decimal numbers as std::from_chars accepts them (optional sign, digits with
# optional fraction and exponent). "inf"/"nan" would parse in ember and then
# be rejected as not finite or out of range, so rejecting them here as "not a
# number" skips the same lines.
_FLOAT_RE = re.compile(rb"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
# Integer times as std::from_chars<int64_t> accepts them: no '+', no spaces.
_INT_RE = re.compile(rb"-?[0-9]+")
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1
# Smallest double that rounds to +inf as a float (FLT_MAX plus half an ulp).
_FLOAT_OVERFLOW = 3.4028235677973366e38
# Key of the gap-bucket rows in a gap table: a slot no column can have.
GAP_SLOT = "gap"


class BadLine(Exception):
    """A line that breaks a rule of docs/log_schema.md; the message says why."""


# ---------------------------------------------------------------------------
# Files


def list_files(spec, data_dir):
    """The files named by a data.train / data.test value, in reading order.

    `spec` is a directory (every regular file in it, sorted by name, names
    starting with '.' skipped), a glob, or a single file; a relative spec is
    taken relative to `data_dir`. Raises ConfigError if nothing matches.
    """
    path = spec if os.path.isabs(spec) or not data_dir else os.path.join(data_dir, spec)
    if os.path.isdir(path):
        names = sorted(n for n in os.listdir(path) if not n.startswith("."))
        files = [os.path.join(path, n) for n in names if os.path.isfile(os.path.join(path, n))]
    elif any(ch in path for ch in "*?["):
        files = sorted(p for p in glob.glob(path) if os.path.isfile(p))
    elif os.path.isfile(path):
        files = [path]
    else:
        raise ConfigError("data path '%s' does not exist" % path)
    return files


def read_lines(path):
    """Yields the lines of `path` (gzip if it ends in .gz) as bytes without '\\n' or a '\\r' before it."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        for line in f:
            if line.endswith(b"\n"):
                line = line[:-1]
            if line.endswith(b"\r"):
                line = line[:-1]
            yield line


# ---------------------------------------------------------------------------
# Vocabulary


class TableVocab:
    """Row numbers of one embedding table: one row per (slot, raw value).

    Rows are numbered 0, 1, ... in order of first lookup. `slot_map(slot)`
    returns a dict from raw value to row that creates missing rows.
    """

    def __init__(self):
        self.size = 0
        self._slots = {}

    def slot_map(self, slot):
        m = self._slots.get(slot)
        if m is None:
            m = self._slots[slot] = _SlotMap(self)
        return m


class _SlotMap(dict):
    __slots__ = ("owner",)

    def __init__(self, owner):
        super().__init__()
        self.owner = owner

    def __missing__(self, key):
        row = self.owner.size
        self.owner.size += 1
        self[key] = row
        return row


def gap_bucket(gap, unit, buckets):
    """min(floor(log2(1 + gap / unit)), buckets - 1) for a gap clamped at 0 (docs/models.md)."""
    gap = max(gap, 0)
    return min(int(math.floor(math.log2(1.0 + gap / unit))), buckets - 1)


# ---------------------------------------------------------------------------
# Parsing


def _parse_float(value):
    if not _FLOAT_RE.fullmatch(value):
        return None
    return float(value)


def _parse_time(value):
    if not _INT_RE.fullmatch(value):
        return None
    v = int(value)
    return v if _INT64_MIN <= v <= _INT64_MAX else None


class LineParser:
    """Parses one log line into labels, dense values, sparse rows and times.

    Sparse values are mapped to table rows through `vocabs` (one TableVocab
    per table), creating rows for new values. Every column is checked, so a
    line is bad exactly when ember's parser (worker/log_parser.cc) rejects
    it. TIME: the value must be an integer. TIME_SEQUENCE: an empty field has
    no times, otherwise every piece must be an integer (no missing or empty
    pieces: the times stay aligned with their sequence); the last max_len are
    kept.
    """

    def __init__(self, job, plan, vocabs):
        self.job = job
        self.plan = plan
        self.num_columns = len(job.data.columns)
        self.used_times = {a.key_times for a in plan.attention if a.key_times >= 0}
        self._columns = []
        for i, c in enumerate(job.data.columns):
            kind = type_name(c)
            missing = frozenset(m.encode() for m in c.missing)
            vmap = None
            if plan.column_table[i] >= 0:
                vmap = vocabs[plan.column_table[i]].slot_map(column_slot(job, i))
            sep = c.separator.encode() if len(c.separator) == 1 else b","
            self._columns.append((i, kind, c.name, missing, vmap, sep, c.max_len))

    def parse(self, line):
        """Returns (labels, dense, sparse, times) for one line, or raises BadLine.

        labels, dense: lists of floats in column order; sparse: dict column ->
        list of rows; times: dict column -> int (TIME) or list of ints
        (TIME_SEQUENCE; converted only for columns a SIM block reads).
        """
        if not line:
            raise BadLine("empty line")
        fields = line.split(b"\t")
        if len(fields) != self.num_columns:
            raise BadLine("expected %d columns, got %d" % (self.num_columns, len(fields)))
        labels, dense, sparse, times = [], [], {}, {}
        for (i, kind, name, missing, vmap, sep, max_len), v in zip(self._columns, fields):
            if kind == "LABEL":
                if v == b"0" or v == b"1":
                    labels.append(float(v == b"1"))
                    continue
                if not v or v in missing:
                    raise BadLine("column '%s' (#%d): empty or missing label" % (name, i + 1))
                x = _parse_float(v)
                if x is None:
                    raise BadLine("column '%s' (#%d): %r is not a number" % (name, i + 1, v))
                if not 0.0 <= x <= 1.0:
                    raise BadLine("column '%s' (#%d): label %r is not in [0, 1]" % (name, i + 1, v))
                labels.append(x)
            elif kind == "DENSE":
                if v in missing:
                    dense.append(0.0)
                    continue
                x = _parse_float(v) if v else None
                if x is None:
                    raise BadLine("column '%s' (#%d): %r is not a number" % (name, i + 1, v))
                if abs(x) >= _FLOAT_OVERFLOW:
                    raise BadLine("column '%s' (#%d): %r is not a finite float" % (name, i + 1, v))
                dense.append(x)
            elif kind == "SPARSE":
                sparse[i] = [] if not v or v in missing else [vmap[v]]
            elif kind == "MULTI_SPARSE" or kind == "SEQUENCE":
                if not v or v in missing:
                    sparse[i] = []
                    continue
                pieces = [p for p in v.split(sep) if p and p not in missing]
                if max_len and len(pieces) > max_len:
                    pieces = pieces[:max_len] if kind == "MULTI_SPARSE" else pieces[-max_len:]
                sparse[i] = [vmap[p] for p in pieces]
            elif kind == "TIME":
                t = _parse_time(v)
                if t is None:
                    raise BadLine("column '%s' (#%d): %r is not an integer time" % (name, i + 1, v))
                times[i] = t
            elif kind == "TIME_SEQUENCE":
                pieces = v.split(sep) if v else []
                ts = [_parse_time(p) for p in pieces]
                if None in ts:
                    raise BadLine("column '%s' (#%d): %r is not an integer time"
                                  % (name, i + 1, pieces[ts.index(None)]))
                if i in self.used_times:
                    times[i] = ts[-max_len:] if max_len and len(ts) > max_len else ts
            # IGNORE: nothing.
        return labels, dense, sparse, times


# ---------------------------------------------------------------------------
# Columnar storage


class _Csr:
    """Variable-length rows of ints, appended one sample at a time."""

    def __init__(self):
        self.values = array("q")
        self.offsets = array("q", [0])

    def append(self, row):
        self.values.extend(row)
        self.offsets.append(len(self.values))

    def numpy(self):
        return np.frombuffer(self.values, dtype=np.int64), np.frombuffer(self.offsets, dtype=np.int64)


class _BlockStore:
    """The items one attention block sees, per sample: aligned key rows and gap rows."""

    def __init__(self, plan):
        self.plan = plan
        self.offsets = array("q", [0])
        self.keys = [array("q") for _ in plan.keys]
        self.gaps = array("q")


@dataclasses.dataclass
class Dataset:
    """One split, column by column (numpy arrays, one entry or CSR row per sample)."""

    labels: np.ndarray  # float32 [N, T]
    dense: np.ndarray  # float32 [N, D]
    users: np.ndarray  # int64 [N]: row of the sample's first user value, -1 without one
    pooled: List[tuple]  # per plan.pooled column: (values, offsets)
    blocks: List[tuple]  # per attention block: (offsets, [values per key column], gap values or None)

    @property
    def size(self):
        return self.labels.shape[0]


class DatasetBuilder:
    """Accumulates parsed lines of one split and selects attention items.

    Per attention block and sample, as worker/batch_builder.cc: the key
    columns (and the block's TIME_SEQUENCE, with time gaps) must have equal
    lengths, else the line is bad. A HARD search keeps the newest top_k items
    whose match key equals the sample's match query; a SOFT search keeps all
    items (the model selects); other blocks keep the newest last_n (0: all).
    With a gap table, each kept item gets the row of its time-gap bucket.
    """

    def __init__(self, job, plan, vocabs):
        self.plan = plan
        self.plan_columns = job.data.columns
        self.labels = array("f")
        self.dense = array("f")
        self.users = array("q")
        self.pooled = [_Csr() for _ in plan.pooled]
        self.blocks = [_BlockStore(a) for a in plan.attention]
        self.gap_maps = [vocabs[a.gap_table].slot_map(GAP_SLOT) if a.gap_table >= 0 else None
                         for a in plan.attention]

    def add(self, labels, dense, sparse, times):
        """Appends one parsed line (LineParser.parse's result); BadLine if misaligned (nothing appended)."""
        selected = [self._select(store.plan, sparse, times) for store in self.blocks]
        self.labels.extend(labels)
        self.dense.extend(dense)
        if self.plan.user_column >= 0:
            u = sparse[self.plan.user_column]
            self.users.append(u[0] if u else -1)
        else:
            self.users.append(-1)
        for store, col in zip(self.pooled, self.plan.pooled):
            store.append(sparse[col])
        for store, gap_map, pos in zip(self.blocks, self.gap_maps, selected):
            a = store.plan
            for dst, k in zip(store.keys, a.keys):
                src = sparse[k]
                dst.extend(src[j] for j in pos)
            if gap_map is not None:
                now = times[a.time]
                kt = times[a.key_times]
                store.gaps.extend(gap_map[gap_bucket(now - kt[j], a.gap_unit, a.gap_buckets)] for j in pos)
            store.offsets.append(len(store.keys[0]))

    def _select(self, a, sparse, times):
        """Positions of the items block `a` keeps for one sample, oldest first."""
        cols = self.plan_columns
        n = len(sparse[a.keys[0]])
        for k in a.keys[1:]:
            if len(sparse[k]) != n:
                raise BadLine("columns '%s' and '%s' have %d and %d values; attention block '%s' needs them aligned"
                              % (cols[a.keys[0]].name, cols[k].name, n, len(sparse[k]), a.name))
        if a.gap_table >= 0 and len(times[a.key_times]) != n:
            raise BadLine("column '%s' has %d values but its times column has %d; attention block '%s' "
                          "needs them aligned" % (cols[a.keys[0]].name, n, len(times[a.key_times]), a.name))
        if a.search == "HARD":
            query = sparse[a.query[a.match]]
            if not query:
                return []
            want = query[0]
            have = sparse[a.keys[a.match]]
            return [j for j in range(n) if have[j] == want][-a.top_k:]
        start = n - a.last_n if a.last_n and n > a.last_n else 0
        return range(start, n)

    def build(self):
        """Returns the Dataset of everything added."""
        n = len(self.users)
        t = len(self.plan.labels)
        d = len(self.plan.dense)
        blocks = []
        for store in self.blocks:
            gaps = np.frombuffer(store.gaps, dtype=np.int64) if store.plan.gap_table >= 0 else None
            blocks.append((np.frombuffer(store.offsets, dtype=np.int64),
                           [np.frombuffer(k, dtype=np.int64) for k in store.keys], gaps))
        return Dataset(
            labels=np.frombuffer(self.labels, dtype=np.float32).reshape(n, t),
            dense=np.frombuffer(self.dense, dtype=np.float32).reshape(n, d),
            users=np.frombuffer(self.users, dtype=np.int64),
            pooled=[c.numpy() for c in self.pooled],
            blocks=blocks,
        )


@dataclasses.dataclass
class LoadStats:
    lines: int = 0
    bad: int = 0


def load_split(files, parser, builder, stats, max_rows=0, log_limit=20):
    """Parses `files` in order into `builder`; returns the Dataset.

    Bad lines are skipped, counted in `stats`, and the first `log_limit` of
    them are reported on stderr with file:line. With max_rows > 0, reading
    stops after that many good lines.
    """
    rows = 0
    for path in files:
        for number, line in enumerate(read_lines(path), 1):
            stats.lines += 1
            try:
                builder.add(*parser.parse(line))
            except BadLine as e:
                stats.bad += 1
                if stats.bad <= log_limit:
                    print("bad line %s:%d: %s (skipped)" % (path, number, e), file=sys.stderr)
                continue
            rows += 1
            if max_rows and rows >= max_rows:
                return builder.build()
    return builder.build()


# ---------------------------------------------------------------------------
# Batches


@dataclasses.dataclass
class BlockBatch:
    """The items of one attention block in a batch, packed (no padding).

    Item r belongs to sample seg[r]; keys[j][r] is its row in the j-th key
    column's table; gaps[r] its row in the gap table (None without gaps).
    offsets (B + 1) delimit each sample's items, in time order.
    """

    seg: torch.Tensor
    keys: List[torch.Tensor]
    gaps: Optional[torch.Tensor]
    offsets: torch.Tensor


@dataclasses.dataclass
class Batch:
    """One mini-batch as tensors, ready for the model."""

    size: int
    labels: torch.Tensor  # float32 [B, T]
    dense: torch.Tensor  # float32 [B, D]
    pooled: List[tuple]  # per plan.pooled column: (rows int64 [nnz], offsets int64 [B]) for embedding_bag
    blocks: List[BlockBatch]


def make_batches(ds, batch_size):
    """Cuts `ds` into consecutive batches of `batch_size` samples (the last may be smaller)."""
    out = []
    for lo in range(0, ds.size, batch_size):
        hi = min(lo + batch_size, ds.size)
        b = hi - lo
        pooled = []
        for values, offsets in ds.pooled:
            off = offsets[lo:hi + 1]
            pooled.append((torch.from_numpy(values[off[0]:off[-1]].copy()),
                           torch.from_numpy(off[:-1] - off[0])))
        blocks = []
        for offsets, keys, gaps in ds.blocks:
            off = offsets[lo:hi + 1]
            seg = np.repeat(np.arange(b, dtype=np.int64), np.diff(off))
            blocks.append(BlockBatch(
                seg=torch.from_numpy(seg),
                keys=[torch.from_numpy(k[off[0]:off[-1]].copy()) for k in keys],
                gaps=None if gaps is None else torch.from_numpy(gaps[off[0]:off[-1]].copy()),
                offsets=torch.from_numpy(off - off[0]),
            ))
        out.append(Batch(
            size=b,
            labels=torch.from_numpy(ds.labels[lo:hi].copy()),
            dense=torch.from_numpy(ds.dense[lo:hi].copy()),
            pooled=pooled,
            blocks=blocks,
        ))
    return out
