#!/usr/bin/env python3
"""Learning curves (PNG) from the JSON-lines metrics file of `ember scheduler --metrics_file`.

usage: python3 launch/plot.py METRICS.jsonl [MORE.jsonl ...] -o curves.png
                              [--label NAME ...] [--x samples|elapsed|step]

Each file is one job and becomes one colour in every panel, so runs overlay
(e.g. with and without reset: `plot.py a.jsonl b.jsonl --label reset
--label no-reset -o cmp.png`). Panels: train loss and train AUC against x
(progress events), test AUC per task against epoch (eval events, markers; a
final event's figures as stars), samples/s against x; checkpoint (dotted),
recovery (dashed) and reset (dash-dot) events are vertical lines (incremental
checkpoints only while a run has at most 50).

One JSON object per line; fields that are absent are skipped, events of a kind
this script does not know are ignored. A line that is not JSON stops with
file:line, except a last line without its newline (a job still writing, or
killed mid-write), which is dropped with a warning. Needs Debian's
python3-matplotlib; when the python3 first on PATH (pyenv, a venv) lacks
matplotlib, runs itself again under /usr/bin/python3. Draws headless (Agg).
"""

import argparse
import bisect
import json
import math
import os
import sys

X_FIELDS = {
    "samples": "training samples",
    "elapsed": "seconds since the job started",
    "step": "global step",
}

# Vertical markers: event kind -> line style (the colour is the run's).
MARKER_STYLES = {"checkpoint": ":", "recovery": "--", "reset": "-."}

# More incremental checkpoints than this in one run are not drawn.
MAX_INCREMENTAL_MARKERS = 50

TASK_MARKERS = "os^Dvp<>h"


class PlotError(Exception):
    """A problem with the input or the output path, told to the user as is."""


def number(value):
    """value as a float when it is a finite JSON number, else None (booleans are not numbers)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


class Run:
    """The plottable figures of one metrics file."""

    def __init__(self, path, label):
        self.path = path
        self.label = label
        self.loss = []  # (x, loss)
        self.train_auc = []  # (x, auc)
        self.speed = []  # (x, samples/s)
        self.evals = {}  # task -> [(epoch, auc)]
        self.finals = {}  # task -> (epoch, auc)
        self.markers = []  # (kind, x, is_full_checkpoint)
        self.counts = {}  # event kind -> events read


def read_events(path):
    """The events of path as (line number, dict). Raises PlotError naming file:line."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.readlines()
    except FileNotFoundError:
        raise PlotError(f"{path}: no such file")
    except (OSError, UnicodeDecodeError) as e:
        raise PlotError(f"{path}: cannot read: {e}")
    events = []
    for i, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            event = json.loads(line)
        except json.JSONDecodeError as e:
            if i == len(lines) and not line.endswith("\n"):
                print(f"plot.py: warning: {path}:{i}: dropping an unfinished last line "
                      f"(job still writing, or killed mid-write)", file=sys.stderr)
                continue
            raise PlotError(f"{path}:{i}: not JSON ({e.msg} at column {e.colno}): {line.strip()[:80]}")
        if not isinstance(event, dict):
            raise PlotError(f"{path}:{i}: a JSON {type(event).__name__}, not an object")
        events.append((i, event))
    return events


def interpolate(points, t):
    """Piecewise-linear value at t of points [(t, value)] sorted by t, held at the ends; None
    without points. (Samples and steps stand still while a job recovers or checkpoints.)"""
    if not points:
        return None
    i = bisect.bisect_left(points, (t,))
    if i == 0:
        return points[0][1]
    if i == len(points):
        return points[-1][1]
    (t0, v0), (t1, v1) = points[i - 1], points[i]
    return v1 if t1 == t0 else v0 + (v1 - v0) * (t - t0) / (t1 - t0)


def load_run(path, label, x_field):
    run = Run(path, label)
    events = read_events(path)
    start = None  # first "time", for events that lack "elapsed"
    last_epoch = None
    pending = []  # (kind, elapsed, is_full) markers without x, placed once progress is known
    clock_to_x = []  # (elapsed, x) from events that have both
    for _, ev in events:
        kind = ev.get("event")
        kind = kind if isinstance(kind, str) else "(no event name)"
        run.counts[kind] = run.counts.get(kind, 0) + 1
        t = number(ev.get("time"))
        if start is None and t is not None:
            start = t
        elapsed = number(ev.get("elapsed"))
        if elapsed is None and t is not None:
            elapsed = t - start
        fields = dict(ev, elapsed=elapsed)
        x = number(fields.get(x_field))
        if x is not None and elapsed is not None:
            clock_to_x.append((elapsed, x))
        epoch = number(ev.get("epoch"))
        if epoch is not None:
            last_epoch = epoch

        if kind == "progress" and x is not None:
            for series, key in ((run.loss, "loss"), (run.train_auc, "train_auc"),
                                (run.speed, "samples_per_sec")):
                value = number(ev.get(key))
                if value is not None:
                    series.append((x, value))
        elif kind in ("eval", "final"):
            tasks = ev.get("tasks")
            if not isinstance(tasks, dict) or last_epoch is None:
                continue
            for task, figures in tasks.items():
                auc = number(figures.get("auc")) if isinstance(figures, dict) else None
                if auc is None:
                    continue
                if kind == "eval":
                    run.evals.setdefault(task, []).append((last_epoch, auc))
                else:
                    run.finals[task] = (last_epoch, auc)
        elif kind in MARKER_STYLES:
            info = ev.get("checkpoint")
            full = kind == "checkpoint" and isinstance(info, dict) and info.get("kind") == "full"
            if x is not None:
                run.markers.append((kind, x, full))
            elif elapsed is not None:
                pending.append((kind, elapsed, full))
    clock_to_x.sort()
    for kind, elapsed, full in pending:
        x = interpolate(clock_to_x, elapsed)
        if x is not None:
            run.markers.append((kind, x, full))
    if not (run.loss or run.train_auc or run.speed or run.evals or run.finals):
        seen = ", ".join(f"{n} {k}" for k, n in sorted(run.counts.items())) or "no events"
        raise PlotError(f"{path}: no plottable events ({seen}); want progress events with "
                        f"'{x_field}' and loss, train_auc or samples_per_sec, or eval events "
                        f"with an epoch and tasks.<name>.auc")
    return run


def default_labels(paths):
    """File names without .jsonl; the paths as given when two names collide."""
    names = [os.path.basename(p) for p in paths]
    names = [n[:-len(".jsonl")] if n.endswith(".jsonl") else n for n in names]
    return names if len(set(names)) == len(names) else list(paths)


def import_pyplot():
    """matplotlib.pyplot on the Agg backend. When this python3 lacks matplotlib, runs this
    script again under Debian's /usr/bin/python3 (once; Debian's python3-matplotlib is for it,
    and a pyenv or venv python3 first on PATH does not see it); PlotError if that lacks it too."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        return plt
    except ImportError as e:
        debian = "/usr/bin/python3"
        if (os.path.exists(debian) and os.path.realpath(sys.executable) != os.path.realpath(debian)
                and not os.environ.get("EMBER_PLOT_REEXEC")):
            os.environ["EMBER_PLOT_REEXEC"] = "1"
            os.execv(debian, [debian, os.path.abspath(__file__)] + sys.argv[1:])
        raise PlotError(f"needs matplotlib ({e}); on Debian: apt-get install python3-matplotlib, "
                        f"and run with /usr/bin/python3")


def draw(plt, runs, x_field, out):
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(2, 2, figsize=(13, 8.5))
    loss_ax, auc_ax, eval_ax, speed_ax = axes.flat
    colors = [f"C{i % 10}" for i in range(len(runs))]
    x_label = X_FIELDS[x_field]

    def curve(ax, run, color, points):
        if points:
            xs, ys = zip(*points)
            # A lone point has no line to show it.
            ax.plot(xs, ys, color=color, linewidth=1.2, marker="o" if len(xs) == 1 else None,
                    label=run.label)

    for run, color in zip(runs, colors):
        curve(loss_ax, run, color, run.loss)
        curve(auc_ax, run, color, run.train_auc)
        curve(speed_ax, run, color, run.speed)
        for j, (task, points) in enumerate(sorted(run.evals.items())):
            xs, ys = zip(*points)
            eval_ax.plot(xs, ys, color=color, marker=TASK_MARKERS[j % len(TASK_MARKERS)],
                         linewidth=1, label=f"{run.label}: {task}")
        for task, (epoch, auc) in sorted(run.finals.items()):
            eval_ax.plot([epoch], [auc], color=color, marker="*", markersize=12, linestyle="none")
        markers = run.markers
        incremental = sum(1 for kind, _, full in markers if kind == "checkpoint" and not full)
        if incremental > MAX_INCREMENTAL_MARKERS:
            # Hundreds of lines would hide the curves.
            print(f"{run.label}: {incremental} incremental checkpoints not drawn (only full ones)")
            markers = [m for m in markers if m[0] != "checkpoint" or m[2]]
        for ax in (loss_ax, auc_ax, speed_ax):
            for kind, x, full in markers:
                ax.axvline(x, color=color, linestyle=MARKER_STYLES[kind],
                           linewidth=1.4 if kind != "checkpoint" or full else 0.7,
                           alpha=0.8 if kind != "checkpoint" else 0.4)

    # One legend entry per marker kind that occurs, in grey (colour = run).
    kinds = {kind for run in runs for kind, _, _ in run.markers}
    marker_handles = [Line2D([], [], color="grey", linestyle=MARKER_STYLES[k], label=k)
                      for k in MARKER_STYLES if k in kinds]

    for ax, title, y_label, has_data in (
            (loss_ax, "train loss", "loss", any(r.loss for r in runs)),
            (auc_ax, "train AUC", "AUC", any(r.train_auc for r in runs)),
            (speed_ax, "throughput", "samples/s", any(r.speed for r in runs))):
        ax.set_title(title)
        ax.set_xlabel(x_label)
        ax.set_ylabel(y_label)
        ax.grid(alpha=0.3)
        if not has_data:
            ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", color="grey")
        handles, _ = ax.get_legend_handles_labels()
        if handles or marker_handles:
            ax.legend(handles=handles + marker_handles, fontsize="small")

    eval_ax.set_title("test AUC per task (star: final)")
    eval_ax.set_xlabel("epoch")
    eval_ax.set_ylabel("AUC")
    eval_ax.grid(alpha=0.3)
    epochs = sorted({e for r in runs for points in r.evals.values() for e, _ in points} |
                    {e for r in runs for e, _ in r.finals.values()})
    if 0 < len(epochs) <= 20:
        eval_ax.set_xticks(epochs)
        eval_ax.set_xlim(epochs[0] - 0.5, epochs[-1] + 0.5)
    else:
        eval_ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if any(r.evals or r.finals for r in runs):
        if any(r.evals for r in runs):
            eval_ax.legend(fontsize="small")
    else:
        eval_ax.text(0.5, 0.5, "no data", transform=eval_ax.transAxes, ha="center", color="grey")

    fig.tight_layout()
    try:
        fig.savefig(out, format="png", dpi=100)
    except OSError as e:
        raise PlotError(f"{out}: cannot write: {e}")
    finally:
        plt.close(fig)


def main(argv):
    parser = argparse.ArgumentParser(
        prog="plot.py", description="Learning curves (PNG) from ember metrics files (JSON lines).")
    parser.add_argument("files", nargs="+", metavar="METRICS.jsonl",
                        help="one file per run; several overlay in every panel")
    parser.add_argument("-o", "--output", required=True, metavar="PNG", help="the image to write")
    parser.add_argument("--label", action="append", default=[],
                        help="a run's name in the legends, once per file in order (default: file name)")
    parser.add_argument("--x", choices=sorted(X_FIELDS), default="samples",
                        help="x axis of the train and throughput panels (default: samples)")
    args = parser.parse_args(argv)
    if args.label and len(args.label) != len(args.files):
        parser.error(f"{len(args.label)} --label for {len(args.files)} files; give one per file or none")
    labels = args.label or default_labels(args.files)
    try:
        for path in args.files:
            if os.path.exists(args.output) and os.path.exists(path) and os.path.samefile(args.output, path):
                raise PlotError(f"-o {args.output} is an input file; refusing to overwrite it")
        plt = import_pyplot()
        runs = [load_run(path, label, args.x) for path, label in zip(args.files, labels)]
        draw(plt, runs, args.x, args.output)
    except PlotError as e:
        print(f"plot.py: error: {e}", file=sys.stderr)
        return 1
    for run in runs:
        kinds = ", ".join(f"{n} {k}" for k, n in sorted(run.counts.items()))
        print(f"{run.label}: {run.path}: {kinds}")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
