#!/usr/bin/python3
"""Unit tests of the PyTorch reference: /usr/bin/python3 bench/reference/test_ember_ref.py"""

import itertools
import math
import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from google.protobuf import text_format  # noqa: E402

import ref_config  # noqa: E402
import ref_data  # noqa: E402
import ref_metrics  # noqa: E402
import ref_model  # noqa: E402

_TABLES = """
tables { name: "a" dim: 4 optimizer { kind: ADAGRAD learning_rate: 0.1 initial_accumulator: 0.1 } }
tables { name: "b" dim: 3 }
tables { name: "gap" dim: 2 }
"""


def job_from_text(text):
    job = ref_config.config_pb2().JobConfig()
    text_format.Parse(text, job)
    return job


def brute_auc(scores, labels):
    pos = [s for s, y in zip(scores, labels) if y >= 0.5]
    neg = [s for s, y in zip(scores, labels) if y < 0.5]
    total = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return total / (len(pos) * len(neg))


class MetricsTest(unittest.TestCase):
    def test_auc_matches_pairwise_count_with_ties(self):
        rng = np.random.default_rng(3)
        for _ in range(20):
            s = rng.integers(0, 5, size=40).astype(np.float32)  # many ties
            y = (rng.random(40) < 0.4).astype(np.float32)
            if 0 < y.sum() < 40:
                self.assertAlmostEqual(ref_metrics.auc(s, y), brute_auc(s, y), places=12)

    def test_auc_nan_for_one_class(self):
        self.assertTrue(math.isnan(ref_metrics.auc([0.1, 0.2], [1, 1])))

    def test_gauc_weights_by_samples_and_skips_one_class_groups(self):
        # As models/metrics_test.cc: (4 * 1 + 2 * 0) / 6.
        scores = [0.1, 0.2, 0.3, 0.4, 0.9, 0.1, 0.5]
        labels = [0, 0, 1, 1, 0, 1, 1]
        groups = [1, 1, 1, 1, 2, 2, 3]
        self.assertAlmostEqual(ref_metrics.gauc(scores, labels, groups), 4.0 / 6.0)

    def test_logloss_clips(self):
        self.assertAlmostEqual(ref_metrics.logloss([1.0], [0.0]), -math.log(1e-7), places=6)
        self.assertAlmostEqual(ref_metrics.logloss([0.5, 0.5], [0, 1]), math.log(2))


class ParseTest(unittest.TestCase):
    def setUp(self):
        self.job = job_from_text(_TABLES + """
        data {
          columns { name: "y" type: LABEL }
          columns { name: "u" type: SPARSE table: "a" missing: "0" }
          columns { name: "tags" type: MULTI_SPARSE table: "b" separator: "|" max_len: 2 missing: "NA" }
          columns { name: "hist" type: SEQUENCE table: "a" max_len: 3 }
          columns { name: "x" type: DENSE missing: "" missing: "NA" }
          columns { name: "skip" type: IGNORE }
        }
        model { kind: EMBEDDING_MLP }
        """)
        self.plan = ref_config.plan_input(self.job)
        self.vocabs = [ref_data.TableVocab() for _ in self.job.tables]
        self.parser = ref_data.LineParser(self.job, self.plan, self.vocabs)

    def parse(self, line):
        return self.parser.parse(line.encode())

    def test_slots_default_to_column_position(self):
        self.assertEqual(ref_config.column_slot(self.job, 1), 2)
        # u=7 (slot 2) and hist value 7 (slot 4) are different rows of table a.
        _, _, sparse, _ = self.parse("1\t7\t\t7\t0\tz")
        self.assertNotEqual(sparse[1], sparse[3])

    def test_max_len_first_for_multi_sparse_last_for_sequence(self):
        labels, dense, sparse, _ = self.parse("1\t5\tp|q|NA|r\ta,,b,c,d\t2.5\tanything")
        va = self.vocabs[0].slot_map(4)
        vb = self.vocabs[1].slot_map(3)
        self.assertEqual(sparse[2], [vb[b"p"], vb[b"q"]])
        self.assertEqual(sparse[3], [va[b"b"], va[b"c"], va[b"d"]])
        self.assertEqual(labels, [1.0])
        self.assertEqual(dense, [2.5])

    def test_missing_values(self):
        _, dense, sparse, _ = self.parse("0\t0\tNA\t\tNA\t")
        self.assertEqual(sparse[1], [])
        self.assertEqual(sparse[2], [])
        self.assertEqual(sparse[3], [])
        self.assertEqual(dense, [0.0])

    def test_bad_lines(self):
        for line in ["", "1\t2", "2\ta\tb\tc\t1\tz", "\ta\tb\tc\t1\tz", "x\ta\tb\tc\t1\tz",
                     "1\ta\tb\tc\t1.5x\tz", "1\ta\tb\tc\t+-1\tz", "1\ta\tb\tc\t1e39\tz",
                     "1\ta\tb\tc\tinf\tz", "nan\ta\tb\tc\t1\tz", "1\ta\tb\tc\t 1\tz"]:
            with self.assertRaises(ref_data.BadLine, msg=line):
                self.parse(line)
        self.assertEqual(self.parse("0.25\ta\tb\tc\t-1.5e-3\tz")[:2], ([0.25], [-1.5e-3]))
        self.assertEqual(self.parse("1\ta\tb\tc\t+7\tz")[1], [7.0])


class SearchTest(unittest.TestCase):
    CONFIG = _TABLES + """
    data {
      columns { name: "y" type: LABEL }
      columns { name: "item" type: SPARSE table: "a" slot: 2 }
      columns { name: "cat" type: SPARSE table: "b" slot: 3 }
      columns { name: "t" type: TIME }
      columns { name: "hist_items" type: SEQUENCE table: "a" slot: 2 }
      columns { name: "hist_cats" type: SEQUENCE table: "b" slot: 3 }
      columns { name: "hist_times" type: TIME_SEQUENCE }
    }
    model {
      kind: SIM
      attention {
        query: "item" query: "cat" keys: "hist_items" keys: "hist_cats"
        search { kind: %s top_k: 2 match_query: "cat" match_key: "hist_cats"
                 time: "t" key_times: "hist_times" gap_table: "gap" gap_unit: 10 gap_buckets: 4 }
      }
      attention { query: "item" query: "cat" keys: "hist_items" keys: "hist_cats" last_n: 2 }
    }
    """

    def load(self, kind, lines):
        job = job_from_text(self.CONFIG % kind)
        plan = ref_config.plan_input(job)
        vocabs = [ref_data.TableVocab() for _ in job.tables]
        parser = ref_data.LineParser(job, plan, vocabs)
        builder = ref_data.DatasetBuilder(job, plan, vocabs)
        for line in lines:
            builder.add(*parser.parse(line.encode()))
        return job, plan, vocabs, builder.build()

    def test_gap_bucket(self):
        self.assertEqual([ref_data.gap_bucket(g, 10, 4) for g in (-5, 0, 9, 10, 29, 30, 69, 70, 10 ** 9)],
                         [0, 0, 0, 1, 1, 2, 2, 3, 3])

    def test_hard_search_keeps_newest_matches_with_gaps(self):
        line = "1\ti9\tc1\t100\ti1,i2,i3,i4,i5\tc1,c2,c1,c1,c2\t10,20,30,90,95"
        _, _, vocabs, ds = self.load("HARD", [line])
        items = vocabs[0].slot_map(2)
        gaps = vocabs[2].slot_map(ref_data.GAP_SLOT)
        offsets, keys, gap_rows = ds.blocks[0]
        self.assertEqual(list(offsets), [0, 2])
        self.assertEqual(list(keys[0]), [items[b"i3"], items[b"i4"]])  # newest two c1 items
        # gaps 70 and 10 with unit 10: buckets 3 and 1.
        self.assertEqual(list(gap_rows), [gaps[3], gaps[1]])
        # The short-term block: the newest two items.
        self.assertEqual(list(ds.blocks[1][1][0]), [items[b"i4"], items[b"i5"]])

    def test_misaligned_and_bad_time_lines_are_bad(self):
        job = job_from_text(self.CONFIG % "HARD")
        plan = ref_config.plan_input(job)
        vocabs = [ref_data.TableVocab() for _ in job.tables]
        parser = ref_data.LineParser(job, plan, vocabs)
        builder = ref_data.DatasetBuilder(job, plan, vocabs)
        for line in ["1\ti9\tc1\t100\ti1,i2\tc1\t10,20",  # 2 items, 1 category
                     "1\ti9\tc1\t100\ti1,i2\tc1,c2\t10",  # 2 items, 1 time
                     "1\ti9\tc1\t+100\ti1\tc1\t10",  # from_chars takes no '+'
                     "1\ti9\tc1\t\ti1\tc1\t10",  # no time
                     "1\ti9\tc1\t100\ti1,i2\tc1,c2\t10,,20"]:  # empty time piece
            with self.assertRaises(ref_data.BadLine, msg=line):
                builder.add(*parser.parse(line.encode()))
        builder.add(*parser.parse(b"1\ti9\tc1\t100\t\t\t"))  # no history at all
        self.assertEqual(builder.build().size, 1)

    def test_config_checks(self):
        bad = [self.CONFIG.replace("kind: SIM", "kind: DIN") % "HARD",  # a search is kind SIM
               self.CONFIG.replace("search { kind", "last_n: 3 search { kind") % "HARD",
               self.CONFIG.replace('gap_table: "gap"', "") % "HARD"]
        for text in bad:
            with self.assertRaises(ref_config.ConfigError):
                ref_config.plan_input(job_from_text(text))

    def test_soft_search_picks_largest_inner_products(self):
        line = "1\ti9\tc1\t100\ti1,i2,i3,i4\tc1,c2,c1,c1\t10,20,30,90"
        job, plan, vocabs, ds = self.load("SOFT", [line])
        model = ref_model.EmberModel(job, plan, [v.size for v in vocabs], seed=1)
        items = vocabs[0].slot_map(2)
        w = model.tables[0].weight
        with torch.no_grad():
            model.tables[1].weight.zero_()  # category term 0: the items decide
            w.zero_()
            w[items[b"i9"], 0] = 1.0
            for name, v in ((b"i1", 0.3), (b"i2", 0.9), (b"i3", -1.0), (b"i4", 0.5)):
                w[items[name], 0] = v
        batch = ref_data.make_batches(ds, 8)[0]
        q = torch.cat([w[[items[b"i9"]]], model.tables[1].weight[[vocabs[1].slot_map(3)[b"c1"]]]], 1)
        seg, keys, _ = model.blocks[0]._soft_search(q, batch.blocks[0], model.tables, [0, 1])
        self.assertEqual(sorted(keys[0].tolist()), sorted([items[b"i2"], items[b"i4"]]))
        self.assertEqual(seg.tolist(), [0, 0])


class LayerTest(unittest.TestCase):
    def test_dice_batch_statistics_and_moving_averages(self):
        d = ref_model.Dice(2, momentum=0.9, eps=1e-8)
        with torch.no_grad():
            d.alpha.fill_(0.5)
        x = torch.tensor([[1.0, -2.0], [3.0, 0.0], [-1.0, 4.0]], dtype=torch.float64, requires_grad=True)
        d.double()
        y = d(x)
        mean = x.detach().mean(0)
        var = x.detach().var(0, unbiased=False)
        p = torch.sigmoid((x.detach() - mean) / torch.sqrt(var + 1e-8))
        self.assertTrue(torch.allclose(y, p * x + (1 - p) * 0.5 * x))
        self.assertTrue(torch.allclose(d.moving_mean, 0.1 * mean))
        self.assertTrue(torch.allclose(d.moving_var, 0.9 + 0.1 * var))
        # Gradients flow through the batch statistics.
        self.assertTrue(torch.autograd.gradcheck(lambda t: d(t), (x,)))
        d.eval()
        p = torch.sigmoid((x.detach() - d.moving_mean) / torch.sqrt(d.moving_var + 1e-8))
        self.assertTrue(torch.allclose(d(x), p * x + (1 - p) * 0.5 * x))

    def test_activation_unit_first_layer_equals_dense_on_concatenation(self):
        pb = ref_config.config_pb2()
        model_cfg = pb.ModelConfig()
        plan = ref_config.AttentionPlan(name="a", query=[1], keys=[2], dims=[3], hidden=[5, 4],
                                        activation=pb.RELU, last_n=0, search=None)
        block = ref_model.AttentionBlock(plan, gap_dim=2, model_cfg=model_cfg,
                                         generator=torch.Generator().manual_seed(1)).double()
        q = torch.randn(2, 3, dtype=torch.float64)
        seg = torch.tensor([0, 0, 1])
        k = torch.randn(3, 5, dtype=torch.float64)  # 3 query-aligned columns + 2 gap columns
        qr = q[seg]
        got = block._first_layer(q, qr, seg, k, k[:, :3])
        want = block.first(torch.cat([qr, k, qr - k[:, :3], qr * k[:, :3]], 1))
        self.assertTrue(torch.allclose(got, want))
        g1 = torch.autograd.grad(got.sum(), block.first.weight)[0]
        g2 = torch.autograd.grad(block.first(torch.cat([qr, k, qr - k[:, :3], qr * k[:, :3]], 1)).sum(),
                                 block.first.weight)[0]
        self.assertTrue(torch.allclose(g1, g2))

    def test_sparse_adagrad_matches_ember_rule(self):
        cfg = ref_config.config_pb2().OptimizerConfig(kind=1, learning_rate=0.1, initial_accumulator=0.1)
        emb = torch.nn.Embedding(4, 2, sparse=True).double()
        with torch.no_grad():
            emb.weight.copy_(torch.arange(8, dtype=torch.float64).view(4, 2) / 10)
        w0 = emb.weight.detach().clone()
        opt = ref_model.make_optimizer([emb.weight], cfg, sparse=True)
        rows = torch.tensor([1, 3, 1])  # row 1 twice: its gradients add up
        (emb(rows) * torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], dtype=torch.float64)).sum().backward()
        opt.step()
        g = torch.zeros(4, 2, dtype=torch.float64)
        g[1] = torch.tensor([6.0, 8.0])
        g[3] = torch.tensor([3.0, 4.0])
        acc = 0.1 + g * g
        want = w0 - 0.1 * g / acc.sqrt()
        self.assertTrue(torch.allclose(emb.weight.detach(), want))


if __name__ == "__main__":
    unittest.main()
