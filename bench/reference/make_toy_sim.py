#!/usr/bin/python3
"""Writes a small synthetic long-interest click log for testing the SIM path.

Column layout of examples/long_interest_sim.conf (and long_interest_din.conf):
label, user_id, item_id, item_cat, timestamp, hist_items, hist_cats,
hist_times (Unix seconds, oldest first, aligned with the history).

The click depends on an OLD interest: each user has a few favourite
categories that appear only in the old part of the history, never in the
newest `--recent` items. DIN over the last 50 items cannot see it; SIM's
hard search by category finds it. This is a smoke test, not ember's
gen-data mode (which replaces it for real runs):

  /usr/bin/python3 bench/reference/make_toy_sim.py --out /tmp/refdata/toy_sim
  /usr/bin/python3 bench/reference/ember_ref.py --config examples/long_interest_sim.conf \\
      --data_dir /tmp/refdata/toy_sim

Writes OUT/train/part-00000.tsv, OUT/test/part-00000.tsv and OUT/meta.txt
(oracle_auc: the AUC of the true click probabilities on the test split).
"""

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ref_metrics  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--train", type=int, default=16000, help="training samples")
    p.add_argument("--test", type=int, default=4000, help="test samples")
    p.add_argument("--history", type=int, default=300, help="history length")
    p.add_argument("--recent", type=int, default=60, help="newest items without the old interest")
    p.add_argument("--users", type=int, default=400)
    p.add_argument("--items", type=int, default=4000)
    p.add_argument("--cats", type=int, default=40)
    p.add_argument("--seed", type=int, default=1)
    a = p.parse_args()
    rng = np.random.default_rng(a.seed)
    favourite = [rng.choice(a.cats, 3, replace=False) for _ in range(a.users)]

    def item_of_cat(cats):
        # Items are i with i % cats == c.
        return cats + a.cats * rng.integers(0, a.items // a.cats, size=np.shape(cats))

    def other_cats(fav, n):
        c = rng.integers(0, a.cats - len(fav), size=n)
        for f in sorted(fav):  # skip the favourites
            c = c + (c >= f)
        return c

    def write(path, n):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        probs, labels = [], []
        with open(path, "w") as f:
            for _ in range(n):
                u = int(rng.integers(a.users))
                fav = favourite[u]
                now = 1_500_000_000 + int(rng.integers(0, 10_000_000))
                old = a.history - a.recent
                cats = other_cats(fav, a.history)
                use_fav = rng.random(old) < 0.25
                cats[:old][use_fav] = rng.choice(fav, int(use_fav.sum()))
                items = item_of_cat(cats)
                gaps = np.sort(rng.integers(60, 400 * 86400, size=a.history))[::-1]
                times = now - gaps
                interest = rng.random() < 0.4
                cat = int(rng.choice(fav)) if interest else int(other_cats(fav, 1)[0])
                item = int(item_of_cat(np.array(cat)))
                p_click = 1.0 / (1.0 + np.exp(-(-1.0 + 2.5 * interest + 0.5 * rng.normal())))
                label = int(rng.random() < p_click)
                probs.append(p_click)
                labels.append(label)
                f.write("%d\tu%d\ti%d\tc%d\t%d\t%s\t%s\t%s\n" % (
                    label, u, item, cat, now,
                    ",".join("i%d" % x for x in items),
                    ",".join("c%d" % x for x in cats),
                    ",".join(str(t) for t in times)))
        return np.array(probs, np.float32), np.array(labels, np.float32)

    write(os.path.join(a.out, "train", "part-00000.tsv"), a.train)
    p_test, y_test = write(os.path.join(a.out, "test", "part-00000.tsv"), a.test)
    with open(os.path.join(a.out, "meta.txt"), "w") as f:
        f.write("oracle_auc=%.6f\n" % ref_metrics.auc(p_test, y_test))
    print("wrote %s (%d train, %d test rows)" % (a.out, a.train, a.test))


if __name__ == "__main__":
    main()
