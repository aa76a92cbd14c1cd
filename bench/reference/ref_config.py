"""Job config loading and the input plan of the PyTorch reference.

The job config is ember's protobuf text format (proto/config.proto). The
Python bindings are generated at run time with protoc into a temporary
directory, so nothing generated is kept in the repository.

The plan resolves the config's columns and model.attention blocks once, the
way models/plan.h does for the C++ models: which columns are pooled into the
MLP input, which feed attention blocks, where the times are. See
docs/models.md for the model definitions.
"""

import dataclasses
import importlib
import os
import subprocess
import sys
import tempfile
from typing import List, Optional

# The proto directory of the repository this file lives in (bench/reference/..).
_REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
PROTO_DIR = os.path.join(_REPO, "proto")

_config_pb2 = None


class ConfigError(Exception):
    """A job config the reference cannot run: the message names the field."""


def config_pb2():
    """Returns the generated config_pb2 module, running protoc on first use.

    Raises ConfigError if protoc or google.protobuf is missing.
    """
    global _config_pb2
    if _config_pb2 is not None:
        return _config_pb2
    try:
        import google.protobuf  # noqa: F401  (checked here for a clear message)
    except ImportError as e:
        raise ConfigError("google.protobuf is missing: apt-get install -y python3-protobuf") from e
    out = tempfile.mkdtemp(prefix="ember_ref_pb_")
    cmd = ["protoc", "--python_out=" + out, "-I", PROTO_DIR, os.path.join(PROTO_DIR, "config.proto")]
    try:
        subprocess.run(cmd, check=True, capture_output=True, text=True)
    except FileNotFoundError as e:
        raise ConfigError("protoc is not installed") from e
    except subprocess.CalledProcessError as e:
        raise ConfigError("protoc failed: " + e.stderr.strip()) from e
    sys.path.insert(0, out)
    _config_pb2 = importlib.import_module("config_pb2")
    return _config_pb2


def load_job_config(path):
    """Parses the protobuf text file `path` into a JobConfig message."""
    from google.protobuf import text_format

    pb = config_pb2()
    with open(path, "r", encoding="utf-8") as f:
        text = f.read()
    job = pb.JobConfig()
    try:
        text_format.Parse(text, job)
    except text_format.ParseError as e:
        raise ConfigError("%s: %s" % (path, e)) from e
    return job


def column_slot(job, index):
    """Key namespace of data.columns[index]: its slot, or 1 + index if unset (0)."""
    slot = job.data.columns[index].slot
    return slot if slot != 0 else index + 1


@dataclasses.dataclass
class AttentionPlan:
    """One resolved model.attention block (indices are data.columns indices)."""

    name: str
    query: List[int]  # SPARSE columns forming q
    keys: List[int]  # SEQUENCE columns, aligned with query
    dims: List[int]  # embedding width of query[j] / keys[j]
    hidden: List[int]  # activation unit widths
    activation: int  # proto Activation enum value
    last_n: int  # 0: all items
    search: Optional[str]  # None, "HARD" or "SOFT"
    top_k: int = 0
    match: int = -1  # HARD: index j into query/keys of the matched pair
    time: int = -1  # column index of the TIME column, -1 without gaps
    key_times: int = -1  # column index of the TIME_SEQUENCE column
    gap_table: int = -1  # JobConfig.tables index, -1 without gaps
    gap_unit: float = 86400.0
    gap_buckets: int = 16

    @property
    def query_dim(self):
        return sum(self.dims)


@dataclasses.dataclass
class InputPlan:
    """How the columns of a job config feed the model."""

    table_index: dict  # table name -> JobConfig.tables index
    column_table: List[int]  # per column: table index, -1 for non-sparse columns
    pooled: List[int]  # sparse columns pooled into the MLP input, config order
    dense: List[int]  # DENSE columns, config order
    labels: List[int]  # LABEL columns, config order (all are parsed)
    tasks: List[str]  # names of the trained tasks: every LABEL for MMOE, else the first
    attention: List[AttentionPlan]
    user_column: int  # column index of data.user_column, -1 if none


_SPARSE_TYPES = ("SPARSE", "MULTI_SPARSE", "SEQUENCE")


def type_name(column):
    """Name of a ColumnConfig's type ("SPARSE", "LABEL", ...)."""
    return config_pb2().ColumnConfig.Type.Name(column.type)


def plan_input(job):
    """Resolves `job` into an InputPlan.

    Raises ConfigError naming the field for: duplicate or unknown tables, a
    sparse column without a known table, attention blocks whose columns do not
    exist or have the wrong types (query SPARSE, keys SEQUENCE on the query's
    table and slot), a search without its match or time columns, blocks on a
    kind that does not take them: the checks of models/plan.cc.
    """
    pb = config_pb2()
    table_index = {}
    for i, t in enumerate(job.tables):
        if not t.name or t.name in table_index:
            raise ConfigError("tables[%d]: name must be unique and non-empty" % i)
        table_index[t.name] = i
    cols = job.data.columns
    if not cols:
        raise ConfigError("data.columns: at least one column is required")
    by_name = {}
    for i, c in enumerate(cols):
        by_name.setdefault(c.name, i)
    column_table = []
    labels, dense, sparse = [], [], []
    for i, c in enumerate(cols):
        kind = type_name(c)
        if kind in _SPARSE_TYPES:
            if c.table not in table_index:
                raise ConfigError("data.columns[%d] ('%s'): unknown table '%s'" % (i, c.name, c.table))
            if kind != "SPARSE" and (len(c.separator) != 1 or c.separator == "\t"):
                raise ConfigError("data.columns[%d] ('%s'): separator must be one character other than a tab"
                                  % (i, c.name))
            column_table.append(table_index[c.table])
            sparse.append(i)
        else:
            if kind == "TIME_SEQUENCE" and (len(c.separator) != 1 or c.separator == "\t"):
                raise ConfigError("data.columns[%d] ('%s'): separator must be one character other than a tab"
                                  % (i, c.name))
            column_table.append(-1)
            if kind == "LABEL":
                labels.append(i)
            elif kind == "DENSE":
                dense.append(i)
    if not labels:
        raise ConfigError("data.columns: at least one LABEL column is required")

    def find(name, want, field):
        if name not in by_name:
            raise ConfigError("%s: no column named '%s'" % (field, name))
        i = by_name[name]
        if type_name(cols[i]) not in want:
            raise ConfigError("%s: column '%s' is %s, not %s" % (field, name, type_name(cols[i]), "/".join(want)))
        return i

    attention = []
    kind = pb.ModelConfig.Kind.Name(job.model.kind)
    if kind == "EMBEDDING_MLP" and job.model.attention:
        raise ConfigError("model.attention: kind EMBEDDING_MLP has no attention blocks; use kind DIN")
    if kind in ("DIN", "SIM") and not job.model.attention:
        raise ConfigError("model.attention: kind DIN and SIM need at least one attention block")
    if kind != "MMOE" and job.model.HasField("mmoe"):
        raise ConfigError("model.mmoe: is only read by kind MMOE")
    for b, a in enumerate(job.model.attention):
        field = "model.attention[%d]" % b
        if not a.query or len(a.query) != len(a.keys):
            raise ConfigError(field + ": needs query columns and as many keys columns")
        query = [find(n, ("SPARSE",), field + ".query") for n in a.query]
        keys = [find(n, ("SEQUENCE",), field + ".keys") for n in a.keys]
        for q, k in zip(query, keys):
            if column_table[q] != column_table[k] or column_slot(job, q) != column_slot(job, k):
                raise ConfigError("%s: key column '%s' must share table and slot with query column '%s'"
                                  % (field, cols[k].name, cols[q].name))
        dims = [job.tables[column_table[q]].dim for q in query]
        plan = AttentionPlan(
            name=a.name or "attention%d" % b,
            query=query,
            keys=keys,
            dims=dims,
            hidden=list(a.hidden) or [80, 40],
            activation=a.activation,
            last_n=a.last_n,
            search=None,
        )
        if a.HasField("search"):
            s = a.search
            plan.search = pb.SearchConfig.Kind.Name(s.kind)
            plan.top_k = s.top_k
            if not 1 <= s.top_k <= 10000:
                raise ConfigError(field + ".search.top_k: must be in 1..10000")
            if a.last_n:
                raise ConfigError(field + ".last_n: a search block searches all items; drop last_n")
            if plan.search == "HARD":
                mq = find(s.match_query, ("SPARSE",), field + ".search.match_query")
                mk = find(s.match_key, ("SEQUENCE",), field + ".search.match_key")
                if mq not in query or keys[query.index(mq)] != mk:
                    raise ConfigError(field + ".search: match_query must be a query column and match_key "
                                      "the key column aligned with it")
                plan.match = query.index(mq)
            if bool(s.time) + bool(s.key_times) + bool(s.gap_table) not in (0, 3):
                raise ConfigError(field + ".search: time, key_times and gap_table go together (all or none)")
            if s.gap_table:
                if s.gap_table not in table_index:
                    raise ConfigError(field + ".search.gap_table: unknown table '%s'" % s.gap_table)
                plan.gap_table = table_index[s.gap_table]
                plan.time = find(s.time, ("TIME",), field + ".search.time")
                plan.key_times = find(s.key_times, ("TIME_SEQUENCE",), field + ".search.key_times")
                plan.gap_unit = s.gap_unit
                plan.gap_buckets = s.gap_buckets
                if not (0 < s.gap_unit < float("inf") and 1 <= s.gap_buckets <= 64):
                    raise ConfigError(field + ".search: gap_unit must be > 0 and gap_buckets in 1..64")
        attention.append(plan)
    searches = [a.search for a in attention if a.search]
    if kind == "SIM" and not searches:
        raise ConfigError("model.attention: kind SIM needs a block with a search")
    if kind == "DIN" and searches:
        raise ConfigError("model.kind: a block has a search; that is kind SIM")
    keys_used = {k for a in attention for k in a.keys}
    pooled = [i for i in sparse if i not in keys_used]
    for a in attention:
        for q in a.query:
            if q not in pooled:
                raise ConfigError("model.attention '%s': query column '%s' is used as keys elsewhere"
                                  % (a.name, cols[q].name))
    user_column = -1
    if job.data.user_column:
        user_column = find(job.data.user_column, _SPARSE_TYPES, "data.user_column")
    return InputPlan(
        table_index=table_index,
        column_table=column_table,
        pooled=pooled,
        dense=dense,
        labels=labels,
        # Only MMoE has a head per task; the other kinds train on the first label.
        tasks=[cols[i].name for i in (labels if kind == "MMOE" else labels[:1])],
        attention=attention,
        user_column=user_column,
    )
