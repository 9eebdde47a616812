"""KSR: Knowledge-enhanced Sequential Recommender, the model in plain torch.

Huang, Zhao, Dou, Wen, Chang. "Improving Sequential Recommendation with Knowledge-Enhanced
Memory Networks." SIGIR 2018. Follows RecBole 1.2.1's KSR; the differences are listed in
docs/recbole-differences.md.

This file is the reference: the paper's equations, step by step, torch only. The fast paths of
kernels/ have the signatures of `kv_memory`, `cross_entropy`, a GRU layer and nn.Dropout; KSR(...,
memory=, ce=, gru_layer=, dropout=) takes them (kernels/__init__.py's table), and tests prove them
equal to this file.

Reading order (parts first, the whole model last):
  1. memory_write   - the erase/add write of every item into V (one slot per relation a)
  2. read_attention, memory_read - w = softmax(gamma s . r_a), m = sum_a w_a v_a
  3. kv_memory      - the key-value memory: write, then read
  4. GRU            - the sequence encoder h_t (RecBole's bias-free nn.GRU)
  5. KSR            - p_u = W_u [h_t ; m_t], q_i = W_i [x_i ; e_i], scores p_u . q_i, CE or BPR

Shapes: B batch, L steps, N items, D embedding_size, K kg_embedding_size, H hidden_size,
R relations (memory slots). `kg_seq` (B, L, K) is the KG vector e_i of the item at each step;
`item_kg` (N + 1, K) is the table of every item's e_i.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


# ----------------------------------------------------------------------------
# 1-3. The key-value memory. Keys are the relation vectors r_a (constant); value v_a is the
# user's preference for attribute a, written once per item.

def memory_write(kg_seq, lengths, relations, all_steps=False):
    """The paper's erase/add write, step by step from V = 0.

    kg_seq    (B, L, K)  KG vector e_i of the item at each step (0 at padding)
    lengths   (B,)       valid steps per row, 1..L; steps >= length are padding
    relations (R, K)     relation vectors r_a, the memory keys
    Returns V (B, R, K), the memory after each row's last valid step, or with all_steps=True
    (B, L, R, K), the memory after every step (0 at padding steps).

    For each valid step t and every relation a:
        E_a = e_i + r_a                    the item's attribute vector for relation a
        z_a = sigmoid(v_a . E_a)           how much to overwrite
        v_a <- (1 - z_a) v_a + z_a E_a     erase, then add
    """
    B, L, K = kg_seq.shape
    V = kg_seq.new_zeros(B, relations.shape[0], K)  # (B, R, K)
    states = []
    for t in range(L):
        E = kg_seq[:, t, None, :] + relations[None]  # (B, R, K) attribute vectors
        z = torch.sigmoid((V * E).sum(-1, keepdim=True))  # (B, R, 1) gate
        valid = (t < lengths)[:, None, None]  # padding steps leave V unchanged
        V = torch.where(valid, (1 - z) * V + z * E, V)
        if all_steps:
            states.append(V * valid)
    return torch.stack(states, dim=1) if all_steps else V  # (B, L, R, K) or (B, R, K)


def read_attention(relations, query, gamma):
    """w = softmax(gamma * s . r_a) over relations a: query s (..., K) -> w (..., R)."""
    return torch.softmax(gamma * query @ relations.T, dim=-1)


def memory_read(V, relations, query, gamma):
    """Read: m = sum_a w_a v_a. V (..., R, K), relations (R, K), query s (..., K) -> m (..., K)."""
    w = read_attention(relations, query, gamma)  # (..., R)
    return (w.unsqueeze(-1) * V).sum(-2)  # (..., R, 1) * (..., R, K), summed over a


def kv_memory(kg_seq, lengths, relations, query, gamma, all_steps=False):
    """KSR's memory: memory_write, then memory_read; the tests' oracle, and every fast memory's signature.

    query (B, K):    all_steps=False, m (B, K), read after each row's last valid step
          (B, L, K): all_steps=True,  m (B, L, K), read after every step (0 at padding, where V is 0)
    gamma: the attention's sharpness.
    """
    if query.dim() != (3 if all_steps else 2):
        raise ValueError(f"kv_memory: all_steps={all_steps} needs a query of shape {'(B, L, K)' if all_steps else '(B, K)'}, "
                         f"got {tuple(query.shape)}")
    return memory_read(memory_write(kg_seq, lengths, relations, all_steps), relations, query, gamma)


# ----------------------------------------------------------------------------
# 4. The sequence encoder

class GRU(nn.Module):
    """RecBole's encoder: nn.GRU(D -> H, num_layers, bias=False, batch_first).

    forward(x (B, L, D), lengths (B,), all_steps) -> h (B, H) at each row's last valid step, or with
    all_steps=True (B, L, H) after every step (unspecified at padding: it comes after the valid steps,
    so it never changes h at one). layer: None runs nn.GRU itself; a fast path computes the same one
    layer at a time with its weights, layer(x, weight_ih, weight_hh, lengths) -> (B, L, H).
    """

    def __init__(self, input_size, hidden_size, num_layers, layer=None):
        super().__init__()
        self.gru = nn.GRU(input_size, hidden_size, num_layers, bias=False, batch_first=True)
        self.layer = layer

    def forward(self, x, lengths, all_steps=False):
        if self.layer is None:
            out = self.gru(x)[0]  # (B, L, H)
        else:
            out = x
            for k in range(self.gru.num_layers):
                out = self.layer(out, getattr(self.gru, f"weight_ih_l{k}"), getattr(self.gru, f"weight_hh_l{k}"), lengths)
        return out if all_steps else out[torch.arange(x.shape[0], device=x.device), lengths - 1]


# ----------------------------------------------------------------------------
# 5. The model

def all_scores(p, q):
    """Scores p_u . q_i of every item: p (n, D) users, q (N + 1, D) every item's q_i -> (n, N + 1);
    the padding item 0 gets -inf, never a candidate."""
    scores = p @ q.T
    scores[:, 0] = float("-inf")
    return scores


def cross_entropy(p, q, targets):
    """CE over all real items: softmax of p . q_i over i = 1..N, mean over the targets (n,)."""
    return F.cross_entropy(all_scores(p, q), targets)


class KSR(nn.Module):
    """GRU + knowledge-enhanced key-value memory.

    n_items      number of items; ids 1..n_items, 0 is padding
    item_kg      (n_items + 1, K) pretrained KG vector e_i of each item (TransE), row 0 zero
    relation_kg  (R, K) pretrained relation vectors r_a: the memory keys, kept constant
    no_memory    a plain GRU4Rec: p_u = W h_t, q_i = x_i (the baseline)
    item_vectors (n_items + 1, D) pretrained x_i, frozen (the authors': BPR-MF), or None: learned
    pad_slot     one more memory slot whose key is the zero vector, as RecBole's memory has
                 (its padding relation keeps a zero vector); it holds e_i itself
    memory, ce, gru_layer, dropout   kv_memory, cross_entropy, nn.GRU (None) and nn.Dropout, or the
                 same functions from kernels/ (train.build_model: kernels/__init__.py's table)
    The other options are RecBole's (KSR.yaml), their defaults in options.py.
    """

    def __init__(self, n_items, item_kg, relation_kg, *, embedding_size, hidden_size, num_layers, dropout_prob,
                 gamma, loss_type, freeze_kg, no_memory, pad_slot, item_vectors=None, memory=kv_memory,
                 ce=cross_entropy, gru_layer=None, dropout=nn.Dropout):
        super().__init__()
        if loss_type not in ("CE", "BPR"):
            raise ValueError(f"loss_type must be CE or BPR, not {loss_type!r}")
        item_kg = torch.as_tensor(item_kg, dtype=torch.float32)
        K = item_kg.shape[1]
        self.n_items, self.gamma, self.loss_type, self.no_memory = n_items, gamma, loss_type, no_memory
        self.memory, self.ce = memory, ce
        self.item_embedding = nn.Embedding(n_items + 1, embedding_size, padding_idx=0)  # x_i
        self.emb_dropout = dropout(dropout_prob)
        self.gru = GRU(embedding_size, hidden_size, num_layers, gru_layer)
        if no_memory:
            self.dense_layer_u = nn.Linear(hidden_size, embedding_size)
        else:
            self.entity_embedding = nn.Embedding(n_items + 1, K, padding_idx=0)  # e_i
            relations = torch.as_tensor(relation_kg, dtype=torch.float32)
            if pad_slot:  # RecBole keeps its padding relation, whose vector is zero: one more slot, key 0
                relations = torch.cat([relations.new_zeros(1, K), relations])
            self.register_buffer("relations", relations)  # r_a (R, K), constant
            self.read_query = nn.Linear(hidden_size, K)  # s_t = W_s h_t
            self.dense_layer_u = nn.Linear(hidden_size + K, embedding_size)  # W_u
            self.dense_layer_i = nn.Linear(embedding_size + K, embedding_size)  # W_i
        # RecBole's initialisation: xavier-normal embeddings, xavier-uniform GRU weights
        nn.init.xavier_normal_(self.item_embedding.weight)
        for w in self.gru.parameters():
            nn.init.xavier_uniform_(w)
        if item_vectors is not None:
            self.item_embedding.weight = nn.Parameter(torch.as_tensor(item_vectors, dtype=torch.float32), requires_grad=False)
        if not no_memory:
            self.entity_embedding.weight.data.copy_(item_kg)
            self.entity_embedding.weight.requires_grad_(not freeze_kg)

    def forward(self, item_seq, lengths, targets=None, negatives=None, all_steps=False):
        """User representations p_u (B, D) of item_seq (B, L) with `lengths` valid steps, or
        with all_steps=True p_u after every step (B, L, D) (--train_mode sequence); and, given
        targets ((B,), or (B, L) with 0 for none) the loss (KSR.loss), else None."""
        x = self.emb_dropout(self.item_embedding(item_seq))  # (B, L, D)
        h = self.gru(x, lengths, all_steps)  # h_t: (B, H), or (B, L, H)
        if self.no_memory:
            p = self.dense_layer_u(h)
        else:
            s = self.read_query(h)  # s_t = W_s h_t: (B, K), or (B, L, K)
            m = self.memory(self.entity_embedding(item_seq), lengths, self.relations, s, self.gamma, all_steps)  # m_t
            p = self.dense_layer_u(torch.cat([h, m], dim=-1))  # p_u = W_u [h_t ; m_t]
        return p, (None if targets is None else self.loss(p, targets, negatives))

    def item_representations(self, items=None):
        """q_i = W_i [x_i ; e_i] for `items` (any shape), or for all items (N + 1, D)."""
        if self.no_memory:
            return self.item_embedding.weight if items is None else self.item_embedding(items)
        if items is None:
            return self.dense_layer_i(torch.cat([self.item_embedding.weight, self.entity_embedding.weight], -1))
        return self.dense_layer_i(torch.cat([self.item_embedding(items), self.entity_embedding(items)], -1))

    def full_scores(self, p):
        """Scores p_u . q_i of every item for users p (B, D) -> (B, N + 1); padding gets -inf."""
        return all_scores(p, self.item_representations())

    def loss(self, p, targets, negatives=None):
        """The mean loss over every position with a target: p (..., D), targets (...), (B,) or (B, L)
        with 0 for none. CE: softmax over all real items. BPR: -log sigmoid(p.q_pos - p.q_neg), one
        negative per target (sample_negatives)."""
        keep = (targets > 0).reshape(-1).nonzero().squeeze(1)  # the positions with a target
        # p[targets > 0] as index_select: its backward is an index_add, cheaper on the CPU than a mask's
        p, targets = p.reshape(-1, p.shape[-1]).index_select(0, keep), targets.reshape(-1)[keep]  # (n, D), (n,)
        if self.loss_type == "CE":
            return self.ce(p, self.item_representations(), targets)
        pos = (p * self.item_representations(targets)).sum(-1)
        neg = (p * self.item_representations(negatives.reshape(-1)[keep])).sum(-1)
        return -F.logsigmoid(pos - neg).mean()


def sample_negatives(targets, n_items, generator=None):
    """One uniform negative per target from 1..n_items, never the target itself."""
    neg = torch.randint(1, n_items, targets.shape, generator=generator, device=targets.device)  # 1..n_items-1
    return neg + (neg >= targets).long()  # skip the target: uniform over the other n_items-1 items
