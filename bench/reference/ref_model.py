"""The four model families of docs/models.md in PyTorch, and their optimizers.

- EMBEDDING_MLP: pooled embeddings + dense columns -> MLP -> logit.
- DIN: plus attention blocks (activation unit, weighted sum, no softmax).
- SIM: DIN whose blocks may search a long sequence (hard search is done at
  load time in ref_data.py; soft search here) and add time-gap embeddings.
- MMOE: experts, a softmax gate and a tower per task.

Parameters: one nn.Embedding (sparse gradients) per config table; dense
weights Glorot-uniform, biases 0, PReLU alphas 0.25, Dice alphas 0. Dice is
written out by hand: batch statistics with gradients in training, moving
averages (not trained) in evaluation.
"""

import math
from typing import List

import torch
import torch.nn.functional as F
from torch import nn

from ref_config import ConfigError, config_pb2


# ---------------------------------------------------------------------------
# Initialisation


def init_table(weight, init, generator):
    """Fills an embedding table per an InitializerConfig (ZERO, UNIFORM, NORMAL, TRUNCATED_NORMAL)."""
    kind = config_pb2().InitializerConfig.Kind.Name(init.kind)
    scale = float(init.scale)
    with torch.no_grad():
        if kind == "ZERO" or scale == 0:
            weight.zero_()
        elif kind == "UNIFORM":
            weight.uniform_(-scale, scale, generator=generator)
        elif kind == "NORMAL":
            weight.normal_(0.0, scale, generator=generator)
        else:  # TRUNCATED_NORMAL: N(0, scale^2) re-drawn beyond 2 sigma
            weight.normal_(0.0, scale, generator=generator)
            while True:
                bad = weight.abs() > 2 * scale
                n = int(bad.sum())
                if n == 0:
                    break
                weight[bad] = torch.empty(n).normal_(0.0, scale, generator=generator)


def _glorot_linear(fan_in, fan_out, generator):
    """nn.Linear with W ~ U(-a, a), a = sqrt(6 / (fan_in + fan_out)), and b = 0."""
    layer = nn.Linear(fan_in, fan_out)
    a = math.sqrt(6.0 / (fan_in + fan_out))
    with torch.no_grad():
        layer.weight.uniform_(-a, a, generator=generator)
        layer.bias.zero_()
    return layer


# ---------------------------------------------------------------------------
# Activations


class PReLU(nn.Module):
    """max(x, 0) + alpha * min(x, 0), alpha per unit, starting at 0.25."""

    def __init__(self, units):
        super().__init__()
        self.alpha = nn.Parameter(torch.full((units,), 0.25))

    def forward(self, x):
        return torch.clamp(x, min=0) + self.alpha * torch.clamp(x, max=0)


class Dice(nn.Module):
    """Dice: p x + (1 - p) alpha x, p = sigmoid((x - mean) / sqrt(var + eps)), per unit.

    Training: mean and var are the biased statistics of x over its rows
    (gradients flow through them), and the moving averages become
    momentum * avg + (1 - momentum) * batch. Evaluation uses the moving
    averages, which start at mean 0, var 1. alpha starts at 0.
    """

    def __init__(self, units, momentum, eps):
        super().__init__()
        self.alpha = nn.Parameter(torch.zeros(units))
        self.momentum = momentum
        self.eps = eps
        self.register_buffer("moving_mean", torch.zeros(units))
        self.register_buffer("moving_var", torch.ones(units))

    def forward(self, x):
        if self.training:
            mean = x.mean(dim=0)
            var = ((x - mean) ** 2).mean(dim=0)
            with torch.no_grad():
                m = self.momentum
                self.moving_mean.mul_(m).add_((1 - m) * mean.detach())
                self.moving_var.mul_(m).add_((1 - m) * var.detach())
        else:
            mean, var = self.moving_mean, self.moving_var
        p = torch.sigmoid((x - mean) * torch.rsqrt(var + self.eps))
        # p x + (1 - p) alpha x, with fewer passes over x.
        return x * (self.alpha + (1 - self.alpha) * p)


def _activation(act, units, model_cfg):
    name = config_pb2().Activation.Name(act)
    if name == "RELU":
        return nn.ReLU()
    if name == "SIGMOID":
        return nn.Sigmoid()
    if name == "PRELU":
        return PReLU(units)
    return Dice(units, float(model_cfg.dice_momentum), float(model_cfg.dice_epsilon))


class Mlp(nn.Module):
    """Dense + activation per hidden width, then a dense layer to `out` units.

    widths = (in, h1, ..., hn, out). The last layer is linear unless
    activate_last (MMoE experts: every width is an activated hidden layer).
    """

    def __init__(self, widths, act, model_cfg, generator, activate_last=False):
        super().__init__()
        layers = []
        for i in range(len(widths) - 1):
            layers.append(_glorot_linear(widths[i], widths[i + 1], generator))
            if i < len(widths) - 2 or activate_last:
                layers.append(_activation(act, widths[i + 1], model_cfg))
        self.layers = nn.Sequential(*layers)

    def forward(self, x):
        return self.layers(x)


# ---------------------------------------------------------------------------
# Attention


class AttentionBlock(nn.Module):
    """A DIN attention block (with SIM's search and time gaps when configured).

    For sample i with query q_i (d wide) and kept items k_r (plus gap
    embeddings g_r), the score is s_r = MLP_att([q_i, k_r, g_r, q_i - k_r,
    q_i * k_r]) and the output sum_r s_r [k_r, g_r]; no items give zeros.
    """

    def __init__(self, plan, gap_dim, model_cfg, generator):
        super().__init__()
        self.plan = plan
        self.dq = plan.query_dim
        self.dk = self.dq + gap_dim
        hidden = list(plan.hidden)
        # The unit is Mlp([3 dq + dk] + hidden + [1]); its first layer is kept
        # apart so that forward can evaluate it in parts.
        self.first = _glorot_linear(3 * self.dq + self.dk, hidden[0], generator)
        self.first_act = _activation(plan.activation, hidden[0], model_cfg)
        self.rest = Mlp(hidden + [1], plan.activation, model_cfg, generator)

    @property
    def out_dim(self):
        return self.dk

    def forward(self, q, block, tables, key_tables, gap_table):
        """q: [B, dq] query; block: ref_data.BlockBatch; tables: the nn.Embedding list.

        key_tables[j] is the table index of key column j, gap_table that of the
        gap rows (-1 without). Returns [B, dk].
        """
        b = q.shape[0]
        seg, keys, gaps = block.seg, block.keys, block.gaps
        if self.plan.search == "SOFT":
            seg, keys, gaps = self._soft_search(q, block, tables, key_tables)
        if seg.numel() == 0:
            return q.new_zeros(b, self.dk)
        k = torch.cat([F.embedding(rows, tables[t].weight, sparse=True) for rows, t in zip(keys, key_tables)], 1)
        kq = k
        if gaps is not None:
            k = torch.cat([k, F.embedding(gaps, tables[gap_table].weight, sparse=True)], 1)
        qr = q.index_select(0, seg)
        scores = self.rest(self.first_act(self._first_layer(q, qr, seg, k, kq)))
        return q.new_zeros(b, self.dk).index_add_(0, seg, scores * k)

    def _first_layer(self, q, qr, seg, k, kq):
        """The first dense layer on [q, k, q - k, q * k] (k including any gap columns).

        With W split by input rows into W_q, W_k, W_d, W_p, x W equals
        q (W_q + W_d) + k (W_k - W_d on its first dq rows) + (q * k) W_p:
        the q part once per sample, the rest per item. Same value and
        gradients as the dense layer on the concatenation, less work.
        """
        dq, dk = self.dq, self.dk
        w = self.first.weight.t()  # [3 dq + dk, h]
        w_q, w_k, w_d, w_p = w[:dq], w[dq:dq + dk], w[dq + dk:2 * dq + dk], w[2 * dq + dk:]
        if dk > dq:
            w_d_k = torch.cat([w_d, w_d.new_zeros(dk - dq, w_d.shape[1])], 0)
        else:
            w_d_k = w_d
        per_sample = torch.addmm(self.first.bias, q, w_q + w_d)
        per_item = torch.cat([k, qr * kq], 1) @ torch.cat([w_k - w_d_k, w_p], 0)
        return per_item + per_sample.index_select(0, seg)

    def _soft_search(self, q, block, tables, key_tables):
        """The top_k items per sample by <q, k_j> over all query/key column pairs.

        No gradient flows through the choice. Returns (seg, keys, gaps) of the
        kept items, in time order within each sample.
        """
        with torch.no_grad():
            seg = block.seg
            if seg.numel() == 0:
                return block.seg, block.keys, block.gaps
            k = torch.cat([F.embedding(rows, tables[t].weight.detach()) for rows, t in zip(block.keys, key_tables)], 1)
            score = (q.detach().index_select(0, seg) * k).sum(1)
            counts = block.offsets[1:] - block.offsets[:-1]
            width = int(counts.max())
            pos = torch.arange(seg.numel()) - block.offsets[:-1].index_select(0, seg)
            grid = torch.full((q.shape[0], width), -math.inf)
            grid[seg, pos] = score
            top, idx = grid.topk(min(self.plan.top_k, width), dim=1)
            keep = top > -math.inf
            flat = (block.offsets[:-1].unsqueeze(1) + idx)[keep]
            flat, _ = flat.sort()
        gaps = None if block.gaps is None else block.gaps[flat]
        return seg[flat], [k[flat] for k in block.keys], gaps


# ---------------------------------------------------------------------------
# Models


class EmberModel(nn.Module):
    """One model per job config: input layer + head (MLP, or MMoE's experts, gates and towers).

    forward(batch) returns logits [B, T], one column per task: every LABEL
    column for MMoE, the first LABEL column for the other kinds.
    """

    def __init__(self, job, plan, table_rows, seed):
        super().__init__()
        pb = config_pb2()
        self.plan = plan
        self.kind = pb.ModelConfig.Kind.Name(job.model.kind)
        cols = job.data.columns
        # Embedding tables: each from its own stream, so their values do not
        # depend on the other tables' sizes.
        self.tables = nn.ModuleList()
        for i, t in enumerate(job.tables):
            emb = nn.Embedding(max(table_rows[i], 1), t.dim, sparse=True)
            g = torch.Generator().manual_seed(seed * 1000003 + 7919 * (i + 1) + int(t.initializer.seed))
            init_table(emb.weight, t.initializer, g)
            self.tables.append(emb)
        self.pool_modes = ["mean" if cols[c].pooling == pb.ColumnConfig.MEAN else "sum" for c in plan.pooled]
        self.pooled_tables = [plan.column_table[c] for c in plan.pooled]
        self.pooled_pos = {c: i for i, c in enumerate(plan.pooled)}

        g = torch.Generator().manual_seed(seed)
        width = sum(job.tables[t].dim for t in self.pooled_tables)
        self.blocks = nn.ModuleList()
        for a in plan.attention:
            gap_dim = job.tables[a.gap_table].dim if a.gap_table >= 0 else 0
            block = AttentionBlock(a, gap_dim, job.model, g)
            width += block.out_dim
            self.blocks.append(block)
        width += len(plan.dense)
        if width == 0:
            raise ConfigError("the model has no inputs")
        tasks = len(plan.tasks)
        model_cfg = job.model
        if self.kind == "MMOE":
            m = model_cfg.mmoe
            expert_hidden = list(m.expert_hidden) or [64]
            tower_hidden = list(m.tower_hidden) or [32]
            if m.num_experts < 1:
                raise ConfigError("model.mmoe.num_experts: must be >= 1")
            self.task_weight = list(m.task_weight) or [1.0] * tasks
            if len(self.task_weight) != tasks:
                raise ConfigError("model.mmoe.task_weight: %d weights for %d tasks" % (len(self.task_weight), tasks))
            self.experts = nn.ModuleList(
                Mlp([width] + expert_hidden, model_cfg.activation, model_cfg, g, activate_last=True)
                for _ in range(m.num_experts))
            self.gates = nn.ModuleList(_glorot_linear(width, m.num_experts, g) for _ in range(tasks))
            self.towers = nn.ModuleList(
                Mlp([expert_hidden[-1]] + tower_hidden + [1], model_cfg.activation, model_cfg, g)
                for _ in range(tasks))
        else:
            self.task_weight = [1.0]
            self.mlp = Mlp([width] + list(model_cfg.hidden) + [1], model_cfg.activation, model_cfg, g)

    def embedding_parameters(self):
        """The embedding tables' weights, in config table order."""
        return [t.weight for t in self.tables]

    def dense_parameters(self):
        """Every trained parameter that is not an embedding table."""
        skip = {id(p) for p in self.embedding_parameters()}
        return [p for p in self.parameters() if id(p) not in skip]

    def forward(self, batch):
        parts = []
        for (rows, offsets), t, mode in zip(batch.pooled, self.pooled_tables, self.pool_modes):
            parts.append(F.embedding_bag(rows, self.tables[t].weight, offsets, mode=mode, sparse=True))
        attention = []
        for block, data in zip(self.blocks, batch.blocks):
            a = block.plan
            q = torch.cat([parts[self.pooled_pos[c]] for c in a.query], 1)
            key_tables = [self.plan.column_table[k] for k in a.keys]
            attention.append(block(q, data, self.tables, key_tables, a.gap_table))
        x = torch.cat(parts + attention + ([batch.dense] if batch.dense.shape[1] else []), 1)
        if self.kind != "MMOE":
            return self.mlp(x)
        experts = torch.stack([e(x) for e in self.experts], 1)  # [B, E, h]
        logits = []
        for gate, tower in zip(self.gates, self.towers):
            w = torch.softmax(gate(x), dim=1)  # [B, E]
            logits.append(tower((w.unsqueeze(2) * experts).sum(1)))
        return torch.cat(logits, 1)

    def loss(self, logits, labels):
        """sum_t task_weight_t * mean_i BCE(logit_{i,t}, label_{i,t})."""
        total = 0
        for t, w in enumerate(self.task_weight):
            total = total + w * F.binary_cross_entropy_with_logits(logits[:, t], labels[:, t])
        return total


# ---------------------------------------------------------------------------
# Optimizers


def make_optimizer(params, cfg, sparse):
    """A torch optimizer for `params` per an OptimizerConfig.

    ADAGRAD: acc starts at initial_accumulator, acc += g^2, w -= lr g /
    sqrt(acc) (torch adds eps 1e-10 to the root). SGD: w -= lr g. ADAM:
    torch.optim.Adam for dense parameters, SparseAdam for tables (its bias
    correction counts the table's steps, not each row's as ember's does).
    FTRL is not supported.
    """
    kind = config_pb2().OptimizerConfig.Kind.Name(cfg.kind)
    lr = float(cfg.learning_rate)
    if kind == "ADAGRAD":
        return torch.optim.Adagrad(params, lr=lr, initial_accumulator_value=float(cfg.initial_accumulator), eps=1e-10)
    if kind == "SGD":
        return torch.optim.SGD(params, lr=lr)
    if kind == "ADAM":
        betas = (float(cfg.beta1), float(cfg.beta2))
        if sparse:
            return torch.optim.SparseAdam(params, lr=lr, betas=betas, eps=float(cfg.epsilon))
        return torch.optim.Adam(params, lr=lr, betas=betas, eps=float(cfg.epsilon))
    raise ConfigError("optimizer kind %s is not supported by the reference" % kind)


def clip_gradients(params: List[torch.Tensor], clip):
    """Clips each gradient element to [-clip, clip] (sparse gradients after summing duplicates)."""
    for p in params:
        g = p.grad
        if g is None:
            continue
        if g.is_sparse:
            g = g.coalesce()
            p.grad = torch.sparse_coo_tensor(g.indices(), g.values().clamp(-clip, clip), g.shape)
        else:
            g.clamp_(-clip, clip)
