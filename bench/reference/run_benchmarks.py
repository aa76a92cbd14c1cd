#!/usr/bin/python3
"""Runs the reference on the example configs over several seeds and summarises.

  /usr/bin/python3 bench/reference/run_benchmarks.py --data_root /tmp/refdata --logs /tmp/refruns

expects DATA_ROOT/ml (`ember convert movielens`) and DATA_ROOT/census
(`ember convert census`). Each run's full output goes to LOGS/<run>.txt; the
summary (mean, sample standard deviation and range over the seeds) is printed
and written to LOGS/summary.txt.
"""

import argparse
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))

# (name, config, data subdirectory, metric keys to summarise)
RUNS = [
    ("movielens_baseline", "examples/movielens_baseline.conf", "ml", ["auc", "gauc_label", "logloss_label"]),
    ("movielens_din", "examples/movielens_din.conf", "ml", ["auc", "gauc_label", "logloss_label"]),
    ("census_mmoe", "examples/census_mmoe.conf", "census",
     ["auc_income", "auc_never_married", "logloss_income", "logloss_never_married"]),
]


def parse_output(text):
    out = {}
    for line in text.splitlines():
        if "=" in line:
            k, v = line.split("=", 1)
            out[k] = v
    return out


def describe(values):
    if not values:
        return "n/a"
    mean = statistics.fmean(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return "%.4f +- %.4f (%.4f .. %.4f)" % (mean, sd, min(values), max(values))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data_root", required=True)
    p.add_argument("--logs", required=True)
    p.add_argument("--seeds", default="1,2,3")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--only", default="", help="comma-separated run names (default: all)")
    a = p.parse_args()
    os.makedirs(a.logs, exist_ok=True)
    seeds = [int(s) for s in a.seeds.split(",")]
    only = set(a.only.split(",")) if a.only else None
    lines = []
    for name, config, sub, keys in RUNS:
        if only and name not in only:
            continue
        results = []
        for seed in seeds:
            cmd = ["/usr/bin/python3", os.path.join(HERE, "ember_ref.py"), "--config", os.path.join(REPO, config),
                   "--data_dir", os.path.join(a.data_root, sub), "--seed", str(seed), "--threads", str(a.threads)]
            load = os.getloadavg()[0]
            t0 = time.perf_counter()
            r = subprocess.run(cmd, capture_output=True, text=True)
            wall = time.perf_counter() - t0
            log = os.path.join(a.logs, "%s_seed%d.txt" % (name, seed))
            with open(log, "w") as f:
                f.write("$ %s\n%s%s" % (" ".join(cmd), r.stdout, r.stderr))
            if r.returncode != 0:
                print("%s seed %d failed, see %s" % (name, seed, log), file=sys.stderr)
                continue
            out = parse_output(r.stdout)
            out["process_wall_seconds"] = "%.1f" % wall
            out["loadavg_at_start"] = "%.2f" % load
            results.append(out)
            print("%s seed=%d %s samples/s=%s wall=%.1fs load=%.2f" % (
                name, seed, " ".join("%s=%s" % (k, out.get(k)) for k in keys),
                out.get("train_samples_per_sec"), wall, load), flush=True)
        lines.append("%s (%d seeds)" % (name, len(results)))
        for k in keys + ["train_samples_per_sec", "train_seconds", "process_wall_seconds"]:
            vals = [float(r[k]) for r in results if k in r]
            lines.append("  %-24s %s" % (k, describe(vals)))
    summary = "\n".join(lines) + "\n"
    print(summary)
    with open(os.path.join(a.logs, "summary.txt"), "w") as f:
        f.write(summary)


if __name__ == "__main__":
    main()
