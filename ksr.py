"""KSR: Knowledge-enhanced Sequential Recommender, in plain torch.

Huang, Zhao, Dou, Wen, Chang. "Improving Sequential Recommendation with Knowledge-Enhanced
Memory Networks." SIGIR 2018. Follows RecBole 1.2.1's KSR (what RecBole users run); the
differences are listed in the README.

Reading order (parts first, the whole model last):
  1. memory_read      - the read: attention over relations, m = sum_a w_a v_a
  2. kv_memory        - the key-value memory (erase/add write + read), step by step: the reference
  3. memory_write     - the same write without autograd, only on active rows (frozen KG),
     MemoryWriteFunction - and with a hand-written backward (trainable KG)
  4. GRU              - the sequence encoder h_t; a packed fast path beside nn.GRU
  5. KSR              - embeddings, p_u = W_u [h ; m], q_i = W_i [item ; e_i], scores, losses

Shapes: B batch, L steps, E embedding_size, K kg_embedding_size, H hidden_size,
R relations, N items (+1 for the padding item 0).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


# ----------------------------------------------------------------------------
# 1-3. The key-value memory. Keys are the relation vectors r_a (constant), values
# V_a are the user's preference for attribute a, written once per item.

def memory_read(V, relations, query, gamma):
    """Read: w = softmax(gamma * q . r_a) over relations a, m = sum_a w_a V_a.

    V (..., R, K), relations (R, K), query (..., K) -> m (..., K).
    """
    w = torch.softmax(gamma * query @ relations.T, dim=-1)  # (..., R) attention over relations
    return (w.unsqueeze(-2) @ V).squeeze(-2)  # (..., 1, R) @ (..., R, K)


def kv_memory(item_kg, lengths, relations, query, gamma):
    """KSR's memory, written step by step: the readable reference.

    item_kg   (B, L, K)  KG vector e_i of the item at each step (0 at padding)
    lengths   (B,)       valid steps per row, 1..L; steps >= length are padding
    relations (R, K)     relation vectors r_a, the memory keys
    query     (B, K)     -> m (B, K), read after each row's last valid step
              (B, L, K)  -> m (B, L, K), read after every step (zeros at padding steps)
    gamma     float      attention sharpness

    Write, for each valid step t and every relation a (the paper's erase/add write):
        E_a = e_t + r_a                    the item's attribute vector for relation a
        z_a = sigmoid(V_a . E_a)           how much to overwrite
        V_a <- (1 - z_a) V_a + z_a E_a     erase, then add
    V starts at zero.
    """
    B, L, K = item_kg.shape
    V = item_kg.new_zeros(B, relations.shape[0], K)  # (B, R, K)
    reads = []
    for t in range(L):
        E = item_kg[:, t, None, :] + relations[None]  # (B, R, K) attribute vectors
        z = torch.sigmoid((V * E).sum(-1, keepdim=True))  # (B, R, 1) gate
        valid = (t < lengths)[:, None, None]  # padding steps leave V unchanged
        V = torch.where(valid, (1 - z) * V + z * E, V)
        if query.dim() == 3:
            reads.append(memory_read(V, relations, query[:, t], gamma) * valid[:, :, 0])
    if query.dim() == 3:
        return torch.stack(reads, dim=1)  # (B, L, K)
    return memory_read(V, relations, query, gamma)


def _by_length(item_kg, lengths):
    """Rows sorted by length (longest first), time-major, and how many are active per step:
    the rows still active at step t are then the first active[t] rows."""
    L = item_kg.shape[1]
    order = torch.argsort(lengths, descending=True)
    x = item_kg[order].transpose(0, 1)  # (L, B, K)
    active = (lengths[order][None, :] > torch.arange(L, device=lengths.device)[:, None]).sum(1).tolist()
    return order, x, active


@torch.no_grad()
def memory_write(item_kg, lengths, relations, all_steps=False):
    """The final memory V (B, R, K) of kv_memory's write, without autograd; with
    all_steps=True the memory after every step, (B, L, R, K) (0 at padding steps).

    With a frozen KG (the default) nothing in the write is trained, so there is nothing
    to differentiate: we sort rows by length and update only the rows still active at
    step t, in place. Same numbers as the reference, a fraction of the work.
    """
    B, L, K = item_kg.shape
    order, x, active = _by_length(item_kg, lengths)
    V = item_kg.new_zeros(B, relations.shape[0], K)
    states = item_kg.new_zeros(B, L, relations.shape[0], K) if all_steps else None
    for t in range(L):
        n = active[t]
        if n == 0:
            break
        Vn = V[:n]  # a view: the in-place update below writes V
        E = x[t, :n, None, :] + relations  # (n, R, K)
        z = torch.sigmoid((Vn * E).sum(-1, keepdim=True))  # (n, R, 1)
        Vn.add_(z * (E - Vn))  # (1 - z) V + z E
        if all_steps:
            states[order[:n], t] = Vn
    if all_steps:
        return states
    out = torch.empty_like(V)
    out[order] = V
    return out


class MemoryWriteFunction(torch.autograd.Function):
    """memory_write with a hand-written backward, for a trainable KG (freeze_kg False).

    Autograd through kv_memory records ~10 (B, R, K) tensors per step and masks every
    row at every step. Here rows are sorted by length, only active rows are touched, and
    the backward is written out. Per valid step t (s = V.E, all per relation a):
        V' = V + z (E - V),  z = sigmoid(s),  E = e_t + r_a
        dz = dV' . (E - V)            ds = dz z (1 - z)
        dV = dV' (1 - z) + ds E       de_t = sum_a (dV' z + ds V)
    Stores the memory before every valid step: sum(lengths) * R * K floats.
    """

    @staticmethod
    def forward(ctx, item_kg, lengths, relations):
        B, L, K = item_kg.shape
        order, x, active = _by_length(item_kg, lengths)
        x = x.contiguous()  # kept for backward
        V = item_kg.new_zeros(B, relations.shape[0], K)
        history = []  # V before step t, active rows
        for t in range(L):
            n = active[t]
            if n == 0:
                break
            Vn = V[:n]
            history.append(Vn.clone())
            E = x[t, :n, None, :] + relations  # (n, R, K)
            z = torch.sigmoid((Vn * E).sum(-1, keepdim=True))  # (n, R, 1)
            Vn.add_(z * (E - Vn))
        ctx.save_for_backward(x, relations, order)
        ctx.history = history
        out = torch.empty_like(V)
        out[order] = V
        return out

    @staticmethod
    def backward(ctx, dV_out):
        x, relations, order = ctx.saved_tensors
        dV = dV_out[order].contiguous()  # (B, R, K), sorted rows
        dx = torch.zeros_like(x)  # (L, B, K)
        for t in reversed(range(len(ctx.history))):
            Vp = ctx.history[t]  # (n, R, K) memory before step t
            n = Vp.shape[0]
            E = x[t, :n, None, :] + relations
            z = torch.sigmoid((Vp * E).sum(-1, keepdim=True))
            dVn = dV[:n]
            ds = (dVn * (E - Vp)).sum(-1, keepdim=True) * z * (1 - z)
            dx[t, :n] = (dVn * z + ds * Vp).sum(1)  # dE summed over relations: E = e_t + r_a
            dVn.mul_(1 - z).add_(ds * E)  # in place: dV[:n] becomes dL/dV before step t
        d_item_kg = torch.empty_like(dx.transpose(0, 1))
        d_item_kg[order] = dx.transpose(0, 1)
        return d_item_kg, None, None


# ----------------------------------------------------------------------------
# 4. The GRU encoder. nn.GRU runs every row for all L steps, padding included; about a
# fifth of RecBole's prefix samples are shorter than 50 and their padding costs as much
# as real steps. The packed GRU sorts rows by length and runs each step only on the rows
# still active, in a packed layout (like nn.utils.rnn.PackedSequence: step t's active rows
# are one contiguous block, no padding anywhere), with a hand-written backward: per step
# one small matmul forward and one backward; the weight gradients are single large
# matmuls at the end.

class PackedGRUFunction(torch.autograd.Function):
    """One bias-free GRU layer (PyTorch's gate order r, z, n) over a packed sequence.

    x (T, E): the active rows of step 0, then of step 1, ...; rows sorted by length so
    the rows active at step t are the first active[t] rows of step t-1; T = sum(active).
    Returns h (T, H), the hidden state of every active row at every step.
        r = sigmoid(W_ir x + W_hr h)    z = sigmoid(W_iz x + W_hz h)
        c = tanh(W_in x + r * (W_hn h))  h' = (1 - z) c + z h
    """

    @staticmethod
    def forward(ctx, x, w_ih, w_hh, active):
        H = w_hh.shape[1]
        T = x.shape[0]
        gi = x @ w_ih.T  # (T, 3H): all input projections in one matmul
        out = x.new_empty(T, H)
        gates = x.new_empty(T, 3 * H)  # r, z, c per step, kept for backward
        ghn = x.new_empty(T, H)        # W_hn h, kept for backward
        h = x.new_zeros(active[0], H)
        off = 0
        for n in active:
            hp = h[:n]
            gh = hp @ w_hh.T  # (n, 3H)
            g = gi[off:off + n]
            rz = torch.sigmoid(g[:, :2 * H] + gh[:, :2 * H])
            r, z = rz[:, :H], rz[:, H:]
            c = torch.tanh(g[:, 2 * H:] + r * gh[:, 2 * H:])
            h = torch.addcmul(c, z, hp - c, out=out[off:off + n])  # (1 - z) c + z h, written in place
            gates[off:off + n, :2 * H] = rz
            gates[off:off + n, 2 * H:] = c
            ghn[off:off + n] = gh[:, 2 * H:]
            off += n
        ctx.save_for_backward(x, w_ih, w_hh, out, gates, ghn)
        ctx.active = active
        return out

    @staticmethod
    def backward(ctx, dout):
        x, w_ih, w_hh, out, gates, ghn = ctx.saved_tensors
        active = ctx.active
        H = w_hh.shape[1]
        offs = [0]
        for n in active:
            offs.append(offs[-1] + n)
        dg = torch.empty_like(gates)   # gradient of the gate pre-activations, input side
        dgh = torch.empty_like(gates)  # gradient of W_hh h, recurrent side
        dh = x.new_zeros(active[0], H)  # dL/dh_t coming from step t+1 (0 for rows ending at t)
        for t in reversed(range(len(active))):
            n, off = active[t], offs[t]
            d = dout[off:off + n] + dh[:n]  # dL/dh_t
            rz, c = gates[off:off + n, :2 * H], gates[off:off + n, 2 * H:]
            r, z = rz[:, :H], rz[:, H:]
            hp = out[offs[t - 1]:offs[t - 1] + n] if t > 0 else x.new_zeros(n, H)
            dc = d * (1 - z) * (1 - c * c)  # through h' = (1-z) c + z h and c = tanh(.)
            drz = torch.cat([dc * ghn[off:off + n], d * (hp - c)], 1) * rz * (1 - rz)
            dg[off:off + n, :2 * H] = drz
            dg[off:off + n, 2 * H:] = dc
            dgh[off:off + n, :2 * H] = drz
            dgh[off:off + n, 2 * H:] = dc * r
            dh[:n] = d * z + dgh[off:off + n] @ w_hh  # dL/dh_{t-1} for the n active rows
        # h_{t-1} for every packed row: the first active[t] rows of step t-1 (0 at t = 0)
        hprev = torch.cat([x.new_zeros(active[0], H)] + [out[offs[t - 1]:offs[t - 1] + active[t]] for t in range(1, len(active))])
        dw_hh = dgh.T @ hprev
        dw_ih = dg.T @ x
        dx = dg @ w_ih
        return dx, dw_ih, dw_hh, None


class GRU(nn.Module):
    """RecBole's encoder: nn.GRU(E -> H, num_layers, bias=False, batch_first).

    forward(x (B, L, E), lengths (B,)) -> h (B, H) at each row's last valid step, or with
    all_steps=True (B, L, H) at every step (values at padding steps are unspecified).
    `dropout` (a module) is applied to the inputs.
    packed=False runs the plain nn.GRU over all L steps: the reference.
    """

    def __init__(self, input_size, hidden_size, num_layers, packed=True):
        super().__init__()
        self.gru = nn.GRU(input_size, hidden_size, num_layers, bias=False, batch_first=True)
        self.packed = packed

    def forward(self, x, lengths, all_steps=False, dropout=None):
        B = x.shape[0]
        rows = torch.arange(B, device=x.device)
        if not self.packed:
            out = self.gru(x if dropout is None else dropout(x))[0]
            return out if all_steps else out[rows, lengths - 1]
        order = torch.argsort(lengths, descending=True, stable=True)
        L = int(lengths.max())
        mask = lengths[order][None, :] > torch.arange(L, device=x.device)[:, None]  # (L, B) active
        active = mask.sum(1).tolist()
        t_idx, r_idx = mask.nonzero(as_tuple=True)  # packed position -> (step, sorted row)
        h = x[order[r_idx], t_idx]  # (T, E) packed input
        if dropout is not None:  # on the valid steps only: padding is never read
            h = dropout(h)
        for layer in range(self.gru.num_layers):
            h = PackedGRUFunction.apply(h, getattr(self.gru, f"weight_ih_l{layer}"),
                                        getattr(self.gru, f"weight_hh_l{layer}"), active)  # (T, H)
        if all_steps:
            out = h.new_zeros(B, x.shape[1], h.shape[1])
            out[order[r_idx], t_idx] = h
            return out
        offs = torch.tensor([0] + active, device=x.device).cumsum(0)
        rank = torch.empty_like(order)
        rank[order] = rows  # position of each row among the sorted rows
        return h[offs[lengths - 1] + rank]


# ----------------------------------------------------------------------------
# 5. The model

class KSR(nn.Module):
    """GRU + knowledge-enhanced key-value memory.

    n_items      number of items; ids 1..n_items, 0 is padding
    item_kg      (n_items + 1, K) pretrained KG vector of each item (TransE), row 0 zero
    relation_kg  (R, K) pretrained relation vectors: the memory keys, kept constant
    no_memory    a plain GRU4Rec: p_u = W h, q_i = item embedding (the baseline)
    memory_backend  "torch" (the code above) or "triton" (kernels/, the fused kernel)
    pad_slot     one more memory slot whose key is the zero vector, as RecBole's memory has
                 (its padding relation keeps a zero vector); it holds e_i itself, and its
                 attention logit is always 0
    """

    def __init__(self, n_items, item_kg, relation_kg, embedding_size=64, hidden_size=128, num_layers=1,
                 dropout_prob=0.1, gamma=10.0, loss_type="CE", freeze_kg=True, no_memory=False, packed_gru=True,
                 memory_backend="torch", pad_slot=False):
        super().__init__()
        if loss_type not in ("CE", "BPR"):
            raise ValueError(f"loss_type must be CE or BPR, not {loss_type!r}")
        if memory_backend not in ("torch", "triton"):
            raise ValueError(f"memory_backend must be torch or triton, not {memory_backend!r}")
        self.fused_memory = None
        if memory_backend == "triton" and not no_memory:
            import kernels  # the optional fused kernel: kernels/kv_memory.py
            if kernels.available():
                raise RuntimeError(f"memory_backend triton: {kernels.available()}")
            self.fused_memory = kernels.kv_memory
        item_kg = torch.as_tensor(item_kg, dtype=torch.float32)
        K = item_kg.shape[1]
        self.n_items, self.gamma, self.loss_type, self.no_memory = n_items, gamma, loss_type, no_memory
        self.item_embedding = nn.Embedding(n_items + 1, embedding_size, padding_idx=0)
        self.emb_dropout = nn.Dropout(dropout_prob)
        self.gru = GRU(embedding_size, hidden_size, num_layers, packed=packed_gru)
        if no_memory:
            self.dense_layer_u = nn.Linear(hidden_size, embedding_size)
        else:
            self.entity_embedding = nn.Embedding(n_items + 1, K, padding_idx=0)
            relations = torch.as_tensor(relation_kg, dtype=torch.float32)
            if pad_slot:  # RecBole keeps its padding relation, whose vector is zero: one more slot, key 0
                relations = torch.cat([relations.new_zeros(1, K), relations])
            self.register_buffer("relations", relations)  # (R, K), constant
            self.dense = nn.Linear(hidden_size, K)  # h -> read query
            self.dense_layer_u = nn.Linear(hidden_size + K, embedding_size)
            self.dense_layer_i = nn.Linear(embedding_size + K, embedding_size)
        # RecBole's initialisation: xavier-normal embeddings, xavier-uniform GRU weights
        nn.init.xavier_normal_(self.item_embedding.weight)
        for name, w in self.gru.named_parameters():
            nn.init.xavier_uniform_(w)
        if not no_memory:
            self.entity_embedding.weight.data.copy_(item_kg)
            self.entity_embedding.weight.requires_grad_(not freeze_kg)

    @property
    def frozen_kg(self):
        return not self.no_memory and not self.entity_embedding.weight.requires_grad

    def write_memory(self, item_seq, lengths, all_steps=False):
        """The memory V (B, R, K) after writing item_seq, or (B, L, R, K) after every
        step; frozen KG only (no autograd)."""
        return memory_write(self.entity_embedding(item_seq), lengths, self.relations, all_steps)

    def memory(self, item_seq, lengths, query, V=None):
        """m_t: the memory written with the sequence's items, read with `query` (B, K),
        or after every step with `query` (B, L, K)."""
        if V is None and self.fused_memory is not None:  # --memory_backend triton: write + read in one kernel
            return self.fused_memory(self.entity_embedding(item_seq), lengths, self.relations, query, self.gamma)
        if V is None and self.frozen_kg:  # the write has no gradient
            V = self.write_memory(item_seq, lengths, all_steps=query.dim() == 3)
        if V is None and query.dim() == 2:  # trainable KG: the same write with a hand-written backward
            V = MemoryWriteFunction.apply(self.entity_embedding(item_seq), lengths, self.relations)
        if V is not None:
            return memory_read(V, self.relations, query, self.gamma)
        return kv_memory(self.entity_embedding(item_seq), lengths, self.relations, query, self.gamma)

    def forward(self, item_seq, lengths, V=None, all_steps=False):
        """User representations p_u (B, E) for item_seq (B, L) with `lengths` valid steps,
        or with all_steps=True p_u after every step (B, L, E) (--train_mode sequence).

        V: the memory after writing item_seq ((B, L, R, K) with all_steps), when already
        known. With a frozen KG it depends on no trained weight, so train.py writes it once
        per sample, not once per epoch (write_memory).
        """
        x = self.item_embedding(item_seq)  # (B, L, E)
        h = self.gru(x, lengths, all_steps, dropout=self.emb_dropout)  # (B, H) at the last valid step, or (B, L, H)
        if self.no_memory:
            return self.dense_layer_u(h)
        m = self.memory(item_seq, lengths, self.dense(h), V)  # (B, K) or (B, L, K)
        return self.dense_layer_u(torch.cat([h, m], dim=-1))  # p_u = W_u [h ; m]

    @torch.no_grad()
    def explain(self, item_seq, lengths):
        """Split p_u into a sequence term and one term per memory slot (call in eval mode).

        p_u = W_u [h ; m] + b = (W_h h + b) + sum_a w_a (W_m V_a), with W_u = [W_h | W_m], so
        every item's score p_u . q_i is the sequence term's score plus one score per relation.
        Returns p_seq (B, E), p_rel (B, R, E) (their sum over a plus p_seq is p_u), the read
        attention w (B, R) after the last step, and w after every step (B, L, R), 0 at padding.
        """
        x = self.item_embedding(item_seq)
        h_all = self.gru(x, lengths, all_steps=True)  # (B, L, H)
        w_steps = torch.softmax(self.gamma * self.dense(h_all) @ self.relations.T, dim=-1)  # the attention of each step's read
        steps = torch.arange(item_seq.shape[1], device=item_seq.device)
        w_steps = w_steps * (steps[None, :] < lengths[:, None])[..., None]
        rows = torch.arange(item_seq.shape[0], device=item_seq.device)
        h, w = h_all[rows, lengths - 1], w_steps[rows, lengths - 1]  # (B, H), (B, R)
        V = memory_write(self.entity_embedding(item_seq), lengths, self.relations)  # (B, R, K)
        W_h, W_m = self.dense_layer_u.weight.split([h.shape[1], V.shape[2]], dim=1)
        p_seq = h @ W_h.T + self.dense_layer_u.bias
        p_rel = w[..., None] * (V @ W_m.T)  # (B, R, E): w_a W_m V_a
        return p_seq, p_rel, w, w_steps

    def item_representations(self, items=None):
        """q_i = W_i [item_emb_i ; e_i] for `items` (any shape), or all items (N + 1, E)."""
        if self.no_memory:
            return self.item_embedding.weight if items is None else self.item_embedding(items)
        if items is None:
            return self.dense_layer_i(torch.cat([self.item_embedding.weight, self.entity_embedding.weight], -1))
        return self.dense_layer_i(torch.cat([self.item_embedding(items), self.entity_embedding(items)], -1))

    def full_scores(self, p):
        """Scores of every item for users p (B, E) -> (B, N + 1); the padding item gets -inf."""
        scores = p @ self.item_representations().T
        scores[:, 0] = float("-inf")
        return scores

    def loss(self, p, targets, negatives=None):
        """CE: softmax over all items (padding excluded). BPR: -log sigmoid(s_pos - s_neg).

        p (B, E) with targets (B,), or p (B, L, E) with targets (B, L) where 0 marks steps
        without a target: the loss is the mean over the steps that have one."""
        if targets.dim() == 2:
            keep = targets > 0
            p, targets = p[keep], targets[keep]
            negatives = negatives[keep] if negatives is not None else None
        if self.loss_type == "CE":
            return F.cross_entropy(self.full_scores(p), targets)
        pos = (p * self.item_representations(targets)).sum(-1)
        neg = (p * self.item_representations(negatives)).sum(-1)
        return -F.logsigmoid(pos - neg).mean()


def sample_negatives(targets, n_items, generator=None):
    """One uniform negative per target from 1..n_items, never the target itself."""
    neg = torch.randint(1, n_items, targets.shape, generator=generator, device=targets.device)  # 1..n_items-1
    return neg + (neg >= targets).long()  # skip the target: uniform over the other n_items-1 items
