#!/usr/bin/python3
"""PyTorch reference implementation of ember's models (docs/models.md).

Trains the model of an ember job config on the same log files, in the same
order, and prints the same metrics, one key=value per line:

  /usr/bin/python3 bench/reference/ember_ref.py --config examples/movielens_din.conf \\
      --data_dir /tmp/refdata/ml [--seed N] [--epochs N] [--threads N] [--max_train_rows N]

See bench/reference/README.md for the output keys. This is a standalone
tool, not part of ember's build.
"""

import argparse
import ctypes
import ctypes.util
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# Idle OpenMP threads sleep instead of spinning: on a shared machine (2 cores,
# builds running beside us) a spinning thread that loses its core makes every
# parallel op wait for a time slice, 5-10x slower. Must be set before torch
# loads libgomp; an OMP_WAIT_POLICY from the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

import ref_config  # noqa: E402
import ref_data  # noqa: E402
import ref_metrics  # noqa: E402
import ref_model  # noqa: E402


def tune_malloc():
    """Makes glibc keep freed memory for reuse instead of returning it to the OS.

    Each batch allocates tensors of a few MB; by default glibc serves them
    with fresh mmaps and unmaps them on free, so every batch pays the page
    faults again, which in a VM costs more than the arithmetic (a 1M-float
    multiply: 18 ms instead of 2 ms). ember's C++ models reuse their scratch
    buffers; this is the closest equivalent. No-op where mallopt is missing.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        m_trim_threshold, m_mmap_threshold = -1, -3
        libc.mallopt(m_mmap_threshold, 32 << 20)  # glibc's largest allowed value
        libc.mallopt(m_trim_threshold, 1 << 40)
    except (OSError, AttributeError):
        pass


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", required=True, help="ember job config (protobuf text)")
    p.add_argument("--data_dir", default="", help="directory that data.train / data.test are relative to")
    p.add_argument("--seed", type=int, default=None, help="initialisation seed (default: model.seed)")
    p.add_argument("--epochs", type=int, default=None, help="overrides train.epochs")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    p.add_argument("--max_train_rows", type=int, default=0, help="read only the first N good training lines")
    return p.parse_args(argv)


def emit(key, value):
    """Prints one key=value output line (floats with 6 decimals)."""
    if isinstance(value, float):
        value = "nan" if math.isnan(value) else "%.6f" % value
    print("%s=%s" % (key, value), flush=True)


def evaluate(model, batches, ds, tasks, user_column):
    """Predicts the test split in eval mode; returns {key: value} of the per-task metrics."""
    model.eval()
    probs = []
    with torch.no_grad():
        for b in batches:
            probs.append(torch.sigmoid(model(b)).numpy())
    model.train()
    p = np.concatenate(probs, 0) if probs else np.zeros((0, len(tasks)), np.float32)
    out = {}
    for t, name in enumerate(tasks):
        y = ds.labels[:, t]
        out["auc_" + name] = ref_metrics.auc(p[:, t], y)
        out["gauc_" + name] = ref_metrics.gauc(p[:, t], y, ds.users) if user_column >= 0 else float("nan")
        out["logloss_" + name] = ref_metrics.logloss(p[:, t], y)
    out["auc"] = out["auc_" + tasks[0]]
    return out


def read_meta(path):
    """key=value pairs of a gen-data meta file ({} if absent)."""
    meta = {}
    if path and os.path.isfile(path):
        with open(path) as f:
            for line in f:
                if "=" in line:
                    k, v = line.strip().split("=", 1)
                    meta[k] = v
    return meta


def main(argv):
    args = parse_args(argv)
    wall0 = time.perf_counter()
    tune_malloc()
    torch.set_num_threads(max(1, args.threads))
    job = ref_config.load_job_config(args.config)
    plan = ref_config.plan_input(job)
    data = job.data
    epochs = args.epochs if args.epochs is not None else job.train.epochs
    seed = args.seed if args.seed is not None else job.model.seed
    batch_size = data.batch_size
    if not 1 <= batch_size <= 1048576:
        raise ref_config.ConfigError("data.batch_size: must be in 1..1048576")

    # Load: parse everything into tensors before any training.
    load0 = time.perf_counter()
    vocabs = [ref_data.TableVocab() for _ in job.tables]
    parser = ref_data.LineParser(job, plan, vocabs)
    stats = ref_data.LoadStats()
    train_files = ref_data.list_files(data.train, args.data_dir)
    train = ref_data.load_split(train_files, parser, ref_data.DatasetBuilder(job, plan, vocabs), stats,
                                max_rows=args.max_train_rows, log_limit=data.log_bad_lines_limit)
    test = None
    if data.test:
        test_files = ref_data.list_files(data.test, args.data_dir)
        test = ref_data.load_split(test_files, parser, ref_data.DatasetBuilder(job, plan, vocabs), stats,
                                   log_limit=data.log_bad_lines_limit)
    if stats.bad > data.max_bad_lines or (stats.lines >= 1000 and stats.bad > data.max_bad_fraction * stats.lines):
        raise ref_config.ConfigError("%d of %d lines are bad, beyond data.max_bad_lines / max_bad_fraction"
                                     % (stats.bad, stats.lines))
    train_batches = ref_data.make_batches(train, batch_size)
    test_batches = ref_data.make_batches(test, batch_size) if test is not None else []
    load_seconds = time.perf_counter() - load0

    model = ref_model.EmberModel(job, plan, [v.size for v in vocabs], seed)
    optimizers = [ref_model.make_optimizer([p], t.optimizer, sparse=True)
                  for p, t in zip(model.embedding_parameters(), job.tables)]
    optimizers.append(ref_model.make_optimizer(model.dense_parameters(), job.model.dense_optimizer, sparse=False))
    clips = [(p, t.optimizer.grad_clip) for p, t in zip(model.embedding_parameters(), job.tables)]
    clips += [(p, job.model.dense_optimizer.grad_clip) for p in model.dense_parameters()]
    clips = [(p, c) for p, c in clips if c > 0]

    emit("model", model.kind)
    emit("seed", seed)
    emit("epochs", epochs)
    emit("train_rows", train.size)
    emit("test_rows", test.size if test is not None else 0)
    emit("bad_lines", stats.bad)
    for t, n in enumerate(v.size for v in vocabs):
        emit("rows_" + job.tables[t].name, n)
    emit("load_seconds", load_seconds)

    train_seconds = 0.0
    trained = 0
    metrics = None
    model.train()
    for epoch in range(1, epochs + 1):
        loss_sum = 0.0
        t0 = time.perf_counter()
        for b in train_batches:
            for opt in optimizers:
                opt.zero_grad(set_to_none=True)
            loss = model.loss(model(b), b.labels)
            loss.backward()
            for p, c in clips:
                ref_model.clip_gradients([p], c)
            for opt in optimizers:
                opt.step()
            loss_sum += float(loss) * b.size
        train_seconds += time.perf_counter() - t0
        trained += train.size
        emit("epoch%d_train_loss" % epoch, loss_sum / max(train.size, 1))
        if test is not None and (job.train.eval_every_epoch or epoch == epochs):
            metrics = evaluate(model, test_batches, test, plan.tasks, plan.user_column)
            if job.train.eval_every_epoch:
                for k, v in metrics.items():
                    emit("epoch%d_%s" % (epoch, k), v)

    if metrics is not None:
        for name in plan.tasks:
            for k in ("auc_", "gauc_", "logloss_"):
                emit(k + name, metrics[k + name])
        emit("auc", metrics["auc"])
        meta = read_meta(os.path.join(args.data_dir, data.meta) if data.meta and args.data_dir else data.meta)
        for k in ("oracle_auc", "recent_only_oracle_auc"):
            if k in meta:
                emit(k, float(meta[k]))
    emit("train_seconds", train_seconds)
    emit("train_samples_per_sec", trained / train_seconds if train_seconds > 0 else 0.0)
    emit("wall_seconds", time.perf_counter() - wall0)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except ref_config.ConfigError as e:
        print("ember_ref: %s" % e, file=sys.stderr)
        sys.exit(2)
