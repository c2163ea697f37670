"""NASGEM: Neural Architecture Search via Graph Embedding Method, as an NNI 3.0 multi-trial strategy.

Cheng, Zhang, Zhang, Li, Liang, Yan, Li, Chandra, Li, Chen. `NASGEM: Neural Architecture Search via
Graph Embedding Method <https://arxiv.org/abs/2007.04452>`__, AAAI 2021 (DOI 10.1609/aaai.v35i8.16872).
"""
from __future__ import annotations

import logging
import time

import numpy as np
import torch
from scipy.stats import kendalltau, norm, rankdata
from torch import nn

from nni.nas.execution import ExecutionEngine
from nni.nas.space import ExecutableModelSpace

from search_spaces.graph import ArchGraph

from ._checks import check_choice, check_flag
from .multitrial import Candidate, ModelBasedStrategy, Round, check_float, check_int
from .wl_kernel import WLSubtreeKernel

__all__ = ["NASGEM", "GINEncoder"]

_logger = logging.getLogger(__name__)

_IO_OPS = ("input", "output")


class _GINLayer(nn.Module):
    """Dense directed GIN layer: ``h' = MLP([(1 + eps) h + A^T h, A h])`` (predecessor and successor sums)."""

    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        self.eps = nn.Parameter(torch.zeros(1))
        self.mlp = nn.Sequential(nn.Linear(2 * d_in, d_out), nn.ReLU(), nn.Linear(d_out, d_out), nn.ReLU())

    def forward(self, h: torch.Tensor, adj: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        from_preds = adj.transpose(1, 2) @ h
        from_succs = adj @ h
        out = self.mlp(torch.cat([(1 + self.eps) * h + from_preds, from_succs], dim=-1))
        return out * mask.unsqueeze(-1)


class GINEncoder(nn.Module):
    """Graph isomorphism network (Xu et al., ICLR 2019) mapping an architecture DAG to ``z``.

    ``num_layers`` directed GIN layers over one-hot op features, sum pooling of every layer's node
    states (GIN's readout), and a linear map to ``embedding_dim``.

    Parameters
    ----------
    num_ops
        Size of the op vocabulary (width of the one-hot node features).
    hidden_dim
        Width of every GIN layer.
    num_layers
        Number of message-passing layers.
    embedding_dim
        Size of the embedding ``z``.
    """

    def __init__(self, num_ops: int, hidden_dim: int = 128, num_layers: int = 4, embedding_dim: int = 32):
        super().__init__()
        dims = [num_ops] + [hidden_dim] * num_layers
        self.layers = nn.ModuleList(_GINLayer(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.project = nn.Linear(num_ops + hidden_dim * num_layers, embedding_dim)

    def forward(self, x: torch.Tensor, adj: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = x
        pooled = [h.sum(1)]
        for layer in self.layers:
            h = layer(h, adj, mask)
            pooled.append(h.sum(1))
        return self.project(torch.cat(pooled, dim=-1))


class _Predictor(nn.Module):
    """MLP from an embedding to a (standardised) score."""

    def __init__(self, d_in: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, 1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).squeeze(-1)


class NASGEM(ModelBasedStrategy):
    """NASGEM: a graph encoder trained to reproduce a Weisfeiler-Lehman graph kernel embeds every cell,
    and a predictor on the embeddings picks the next cells from a large pool of sampled graphs.

    Before the first proposal, ``pretrain_size`` graphs are drawn from the space and a graph
    isomorphism network (:class:`GINEncoder`) is trained, without labels, so that the cosine
    similarity of two embeddings matches the normalised WL subtree kernel of the two graphs
    (:mod:`strategies.wl_kernel`): similar cells lie close together. After ``num_init`` random cells,
    each round fits an MLP predictor of the metric on the embeddings of the evaluated cells, scores a
    pool of up to ``pool_size`` graphs sampled from the space, and takes the ``batch_size`` best,
    skipping a cell too similar to one already taken ("bootstrap optimization": every candidate is a
    real, valid graph).

    **Many trials at once** (the diversity filter counts running cells). The cells of trials still
    running count as taken: a candidate whose embedding is too similar to a running cell's (cosine
    above ``diversity_threshold``) is skipped, as one too similar to a cell of the same batch is. So
    proposals made while results are outstanding spread over the space instead of piling up near the
    predictor's top, without a guess at the running cells' metrics (the predictor regresses on ranks,
    and a believed value would only repeat its own score). A background round (see
    ``background_fit``) ranks ``batch_size`` cells plus one per running trial, and comes after
    ``batch_size`` new results or when the ranked cells run short. The predictor is a small MLP on
    fixed embeddings: a round took about 1 s of CPU with 1,000 results (0.7 s with 100).

    Follows `NASGEM: Neural Architecture Search via Graph Embedding Method
    <https://arxiv.org/abs/2007.04452>`__ (Cheng, Zhang, Zhang, Li, Liang, Yan, Li, Chandra, Li,
    Chen, AAAI 2021). Only the paper's abstract and introduction were available, so the details are a
    reconstruction; ``docs/algorithms.md`` describes them, every departure and the two ablation arms
    (``encoding="onehot"``, ``wl_loss=False``).

    Works on any NNI model space through its graph view (:func:`search_spaces.graph.graph_view`),
    including :class:`search_spaces.wide_cell.WideCellSpace`. Proposals are never repeated, results
    may arrive in any order, failed trials are skipped, and :meth:`state_dict` resumes a search
    exactly, without repeating the pre-training (see
    :class:`strategies.multitrial.ModelBasedStrategy`). Each predictor fit appends to
    :attr:`model_history` a dict with ``num_evaluated``, ``num_heldout``, ``kendall_tau`` (of a fit
    on the other evaluated cells, on ``holdout_fraction`` of them) and ``seconds``.

    Parameters
    ----------
    num_init
        Random cells proposed before the predictor is used. ``None`` (default): 10, at most half the
        budget when it is known (see :class:`strategies.multitrial.ModelBasedStrategy`).
    batch_size
        Cells chosen per round.
    pool_size
        Largest number of sampled graphs scored per round.
    pool_refresh
        Fresh graphs sampled into the pool per round (the pool keeps the ``pool_size`` most recent
        distinct graphs, the pre-training graphs included).
    pretrain_size
        Graphs sampled for the encoder pre-training.
    wl_iterations
        WL iterations of the kernel.
    degree_labels
        Add (in-degree, out-degree) to the initial WL labels: ``True``, ``False`` or ``"auto"`` (when the
        space has at most one op besides input/output, as the wide cell).
    embedding_dim
        Size of the embedding.
    hidden_dim
        Width of the GIN layers.
    num_layers
        Number of GIN layers.
    encoder_steps
        Optimisation steps of the encoder pre-training.
    encoder_pairs
        Graph pairs per pre-training step.
    encoder_lr
        Adam learning rate of the encoder.
    wl_loss
        Pre-train the encoder with the WL loss. ``False``: no pre-training; encoder and predictor are
        trained together on the evaluated cells at every round. No effect with ``encoding="onehot"``.
    encoding
        ``"gnn"`` (default): cells are embedded by the GIN encoder; ``"onehot"``: no encoder, cells are
        the flattened upper triangle of their adjacency matrix and their one-hot op labels.
    predictor_hidden
        Width of the predictor's two hidden layers.
    predictor_epochs
        Full-batch Adam steps per predictor fit.
    predictor_lr
        Adam learning rate of the predictor.
    ensemble_size
        Number of predictor MLPs averaged.
    score_transform
        The predictor's regression targets: ``"rank"`` (the normal scores of the metrics' ranks, so
        only their order matters) or ``"standardize"`` (zero mean, unit variance).
    holdout_fraction
        Fraction of the evaluated cells held out to measure Kendall's tau at each fit.
    epsilon
        Probability that a slot of a batch gets a random pool member.
    diversity_threshold
        Largest cosine similarity allowed between two embeddings chosen in the same batch, or between a
        chosen one and a running trial's (1 disables).
    background_fit
        Where fits and rankings run: ``"auto"``, ``True`` or ``False`` (see
        :class:`strategies.multitrial.ModelBasedStrategy`).
    num_threads
        Torch intra-op threads while the strategy pre-trains, fits and scores (restored afterwards).
        ``None`` leaves torch's setting alone.
    seed
        Random seed (``None``: drawn from NumPy's global generator).

    Examples
    --------
    >>> from nni.nas.experiment import NasExperiment
    >>> from strategies import NASGEM
    >>> NasExperiment(model_space, evaluator, NASGEM(batch_size=5, seed=0)).run()
    """

    init_argument = "num_init"

    def __init__(self, *, num_init: int | None = None, batch_size: int = 10, pool_size: int = 10000,
                 pool_refresh: int = 1000, pretrain_size: int = 1000,
                 wl_iterations: int = 3, degree_labels: bool | str = "auto", embedding_dim: int = 32,
                 hidden_dim: int = 64, num_layers: int = 4, encoder_steps: int = 150, encoder_pairs: int = 128,
                 encoder_lr: float = 1e-3, wl_loss: bool = True, encoding: str = "gnn", predictor_hidden: int = 64,
                 predictor_epochs: int = 200, predictor_lr: float = 1e-3, ensemble_size: int = 1,
                 score_transform: str = "rank",
                 holdout_fraction: float = 0.2, epsilon: float = 0.1, diversity_threshold: float = 0.98,
                 background_fit: bool | str = "auto", num_threads: int | None = 1, seed: int | None = None):
        super().__init__(background_fit=background_fit, num_threads=num_threads, seed=seed)
        owner = type(self).__name__
        self.num_init = check_int(owner, "num_init", num_init, minimum=1, optional=True)
        self.batch_size = check_int(owner, "batch_size", batch_size, minimum=1)
        self.pool_size = check_int(owner, "pool_size", pool_size, minimum=1)
        self.pool_refresh = check_int(owner, "pool_refresh", pool_refresh)
        self.pretrain_size = check_int(owner, "pretrain_size", pretrain_size, minimum=2)
        self.wl_iterations = check_int(owner, "wl_iterations", wl_iterations)
        if not (isinstance(degree_labels, bool) or degree_labels == "auto"):
            raise ValueError(f"{owner}: degree_labels must be True, False or 'auto', got {degree_labels!r}")
        self.degree_labels = degree_labels
        self.embedding_dim = check_int(owner, "embedding_dim", embedding_dim, minimum=1)
        self.hidden_dim = check_int(owner, "hidden_dim", hidden_dim, minimum=1)
        self.num_layers = check_int(owner, "num_layers", num_layers, minimum=1)
        self.encoder_steps = check_int(owner, "encoder_steps", encoder_steps)
        self.encoder_pairs = check_int(owner, "encoder_pairs", encoder_pairs, minimum=1)
        self.encoder_lr = check_float(owner, "encoder_lr", encoder_lr, strict=True)
        check_flag(owner, "wl_loss", wl_loss)
        self.wl_loss = wl_loss
        check_choice(owner, "encoding", encoding, ("gnn", "onehot"))
        self.encoding = encoding
        self.predictor_hidden = check_int(owner, "predictor_hidden", predictor_hidden, minimum=1)
        self.predictor_epochs = check_int(owner, "predictor_epochs", predictor_epochs, minimum=1)
        self.predictor_lr = check_float(owner, "predictor_lr", predictor_lr, strict=True)
        self.ensemble_size = check_int(owner, "ensemble_size", ensemble_size, minimum=1)
        check_choice(owner, "score_transform", score_transform, ("rank", "standardize"))
        self.score_transform = score_transform
        self.holdout_fraction = check_float(owner, "holdout_fraction", holdout_fraction, maximum=0.5)
        self.epsilon = check_float(owner, "epsilon", epsilon, maximum=1)
        self.diversity_threshold = check_float(owner, "diversity_threshold", diversity_threshold, minimum=-1,
                                               maximum=1)

        self._vocab: dict[str, int] = {}
        self._encoder: GINEncoder | None = None
        self._encoder_ready = False
        self._embed_cache: dict[str, np.ndarray] = {}
        self._bank: dict[str, tuple[dict, ArchGraph]] = {}  # graph key -> (sample, graph), draw order
        self._predictor = None                              # the scorer of the last fit (see _fit_once)
        self.timing["pretrain"] = 0.0

    def extra_repr(self) -> str:
        return (f"num_init={self.num_init}, batch_size={self.batch_size}, pool_size={self.pool_size}, "
                f"wl_iterations={self.wl_iterations}, embedding_dim={self.embedding_dim}, wl_loss={self.wl_loss}, "
                f"encoding={self.encoding!r}, "
                f"score_transform={self.score_transform!r}, epsilon={self.epsilon}, "
                f"diversity_threshold={self.diversity_threshold}, seed={self.seed}")

    def _initialize(self, model_space: ExecutableModelSpace, engine: ExecutionEngine) -> ExecutableModelSpace:
        model_space = super()._initialize(model_space, engine)
        vocab = [op for op in self.view.op_vocab if op not in _IO_OPS]
        self._vocab = {op: i for i, op in enumerate(list(_IO_OPS) + vocab)}
        use_degrees = len(vocab) <= 1 if self.degree_labels == "auto" else self.degree_labels
        self._wl = WLSubtreeKernel(self.wl_iterations, degree_labels=bool(use_degrees))
        return model_space

    def _prepare(self, rng: np.random.RandomState | None = None) -> None:
        """Pre-train the encoder; the other arms draw the same bank of graphs, so pools have one size."""
        if self._pretrains and not self._encoder_ready:
            start = time.perf_counter()
            self._pretrain_encoder(rng)
            self.timing["pretrain"] += time.perf_counter() - start
        elif not self._bank:
            self._draw_pretrain_set(rng)

    # ------------------------------------------------------------------ proposals

    def _default_num_init(self) -> int:
        return 10

    def _initial_design(self) -> bool:
        """Random until ``num_init`` cells were submitted and ``min(num_init, max(2, num_init // 2))`` have a metric."""
        return (self._num_submitted < self._num_init
                or len(self._history) < min(self._num_init, max(2, self._num_init // 2)))

    def _round_size(self, num_results: int) -> int:
        return self.batch_size

    def _draw(self, count: int, rng: np.random.RandomState) -> list[ArchGraph]:
        """Draw ``count`` samples from the space (with ``rng``) into the bank; returns the graphs that
        were new to it.

        The bank keeps the ``pool_size`` most recently drawn distinct graphs (oldest dropped first).
        """
        new = []
        for _ in range(count):
            sample = self.view.random_sample(rng)
            graph = self.view.to_graph(sample)
            key = graph.key()
            if key in self._bank:
                continue
            self._bank[key] = (sample, graph)
            new.append(graph)
        while len(self._bank) > self.pool_size:
            del self._bank[next(iter(self._bank))]
        return new

    def _pool(self, seen: frozenset[str]) -> tuple[list[dict], list[ArchGraph], list[str]]:
        """The bank's cells not in ``seen``, as samples, graphs and keys."""
        samples, graphs, keys = [], [], []
        for key, (sample, graph) in self._bank.items():
            if key not in seen:
                samples.append(sample)
                graphs.append(graph)
                keys.append(key)
        return samples, graphs, keys

    def _fit(self, job: Round) -> None:
        """Add the round's ``pool_refresh`` fresh draws to the bank, then fit the predictor on every
        evaluated cell (none when the pool is empty). The draws come first in the round's random stream."""
        self._draw(self.pool_refresh, job.rng)
        self._predictor = None
        if not self._pool(job.seen)[0]:
            return
        graphs = [g for g, _, _ in job.history]
        y = np.array([m for _, _, m in job.history], dtype=np.float64)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(job.rng.randint(2**31)))
            self._predictor = self._fit_predictor(graphs, y, job.rng)

    def _propose(self, job: Round) -> list[Candidate]:
        """The pool's best-scored cells, filtered for diversity against each other and the running
        cells; a random cell when there is no pool."""
        pool_samples, pool_graphs, pool_keys = self._pool(job.seen)
        if self._predictor is None or not pool_samples:
            sample = self._random_unseen(job.rng, job.seen)
            return [] if sample is None else [sample]
        z_pool = self._embed(pool_graphs, pool_keys)
        with torch.no_grad():
            scores, z_pool = self._predictor(pool_graphs, z_pool)
            z_running = None
            if job.pending:
                z_running = self._predictor(job.pending, self._embed(job.pending, [g.key() for g in job.pending]))[1]
        return [pool_samples[i] for i in self._select(scores, z_pool, job.count, job.rng, z_running)]

    def _select(self, scores: np.ndarray, z: np.ndarray, count: int, rng: np.random.RandomState,
                z_running: np.ndarray | None = None) -> list[int]:
        """Up to ``count`` top-scored indices with the cosine-diversity filter (against the chosen ones
        and the running cells' embeddings ``z_running``); each slot random with probability epsilon."""
        def unit(v: np.ndarray) -> np.ndarray:
            return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)

        z = unit(z)
        taken_z = [] if z_running is None else list(unit(z_running))
        order = np.argsort(-scores, kind="stable")
        chosen: list[int] = []
        taken = np.zeros(len(scores), dtype=bool)
        cursor = 0
        for _ in range(min(count, len(scores))):
            if rng.random_sample() < self.epsilon:
                free = np.flatnonzero(~taken)
                pick = int(free[rng.randint(len(free))])
            else:
                pick = -1
                while cursor < len(order):
                    cand = int(order[cursor])
                    cursor += 1
                    if taken[cand]:
                        continue
                    if taken_z and float(np.max(np.asarray(taken_z) @ z[cand])) > self.diversity_threshold:
                        continue
                    pick = cand
                    break
                if pick < 0:
                    break
            taken[pick] = True
            chosen.append(pick)
            taken_z.append(z[pick])
        return chosen

    # ------------------------------------------------------------------ encoder and predictor

    @property
    def _pretrains(self) -> bool:
        """The WL-guided encoder (arm (c)): pre-trained once, then frozen."""
        return self.encoding == "gnn" and self.wl_loss

    def _new_encoder(self) -> GINEncoder:
        return GINEncoder(len(self._vocab), self.hidden_dim, self.num_layers, self.embedding_dim)

    def _tensorize(self, graphs: list[ArchGraph]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        n = max(self.view.max_nodes, max(len(g.ops) for g in graphs))
        x = np.zeros((len(graphs), n, len(self._vocab)), dtype=np.float32)
        adj = np.zeros((len(graphs), n, n), dtype=np.float32)
        mask = np.zeros((len(graphs), n), dtype=np.float32)
        for b, graph in enumerate(graphs):
            k = len(graph.ops)
            try:
                x[b, np.arange(k), [self._vocab[op] for op in graph.ops]] = 1.0
            except KeyError as err:
                raise ValueError(f"NASGEM: op {err.args[0]!r} is not in the graph view's vocabulary "
                                 f"{list(self._vocab)}") from None
            adj[b, :k, :k] = graph.adjacency
            mask[b, :k] = 1.0
        return torch.from_numpy(x), torch.from_numpy(adj), torch.from_numpy(mask)

    def _encode(self, encoder: GINEncoder, graphs: list[ArchGraph], chunk: int = 2048) -> torch.Tensor:
        parts = [encoder(*self._tensorize(graphs[i:i + chunk])) for i in range(0, len(graphs), chunk)]
        return torch.cat(parts) if parts else torch.zeros(0, self.embedding_dim)

    def _onehot(self, graphs: list[ArchGraph]) -> np.ndarray:
        """Arm (a)'s encoding: upper triangle of the dense adjacency and the one-hot labels, flattened."""
        upper = np.triu_indices(self.view.max_nodes, 1)
        rows = []
        for graph in graphs:
            A, X = self.view.encode(graph)
            rows.append(np.concatenate([A[upper], X.ravel()]))
        return np.asarray(rows, dtype=np.float32).reshape(len(graphs), -1)

    def _embed(self, graphs: list[ArchGraph], keys: list[str]) -> np.ndarray:
        """Fixed embeddings of ``graphs`` (cached by graph key): the frozen pre-trained encoder's, or
        arm (a)'s one-hot encoding; empty for arm (b), whose encoder is refitted with the predictor."""
        if self.encoding == "gnn" and not self._encoder_ready:
            return np.zeros((len(graphs), 0), dtype=np.float32)
        missing = [i for i, key in enumerate(keys) if key not in self._embed_cache]
        if missing:
            if self.encoding == "onehot":
                z = self._onehot([graphs[i] for i in missing])
            else:
                with torch.no_grad():
                    z = self._encode(self._encoder, [graphs[i] for i in missing]).numpy()
            for row, i in enumerate(missing):
                self._embed_cache[keys[i]] = z[row]
        return np.stack([self._embed_cache[key] for key in keys])

    def _draw_pretrain_set(self, rng: np.random.RandomState | None = None) -> list[ArchGraph]:
        """Up to ``pretrain_size`` distinct graphs drawn into the bank with ``rng`` (default: the
        strategy's own; three tries at the shortfall)."""
        rng = self._rng if rng is None else rng
        graphs: list[ArchGraph] = []
        for _ in range(3):
            graphs += self._draw(self.pretrain_size - len(graphs), rng)
            if len(graphs) >= self.pretrain_size:
                break
        return graphs

    def _pretrain_encoder(self, rng: np.random.RandomState | None = None) -> None:
        """Label-free pre-training: cos(z_G, z_G') regressed on the normalised WL kernel (MSE), drawing
        from ``rng`` (default: the strategy's own)."""
        rng = self._rng if rng is None else rng
        graphs = self._draw_pretrain_set(rng)
        if len(graphs) < 2:
            raise ValueError(f"NASGEM: the space has fewer than 2 distinct graphs ({self.view.name} view); "
                             "there is nothing to search")
        features = WLSubtreeKernel.normalize_rows(self._wl.features(graphs))
        kernel = np.asarray((features @ features.T).todense(), dtype=np.float32)
        num = len(graphs)
        neighbours = min(10, num - 1)
        np.fill_diagonal(kernel, -np.inf)
        nearest = np.argpartition(-kernel, neighbours - 1, axis=1)[:, :neighbours] if neighbours > 0 else None
        np.fill_diagonal(kernel, 1.0)
        x_all, adj_all, mask_all = self._tensorize(graphs)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(rng.randint(2**31)))
            encoder = self._new_encoder()
            optimizer = torch.optim.Adam(encoder.parameters(), lr=self.encoder_lr)
            half = self.encoder_pairs // 2
            for step in range(self.encoder_steps):
                first = rng.randint(num, size=self.encoder_pairs)
                second = rng.randint(num, size=self.encoder_pairs)
                if nearest is not None:
                    second[:half] = nearest[first[:half], rng.randint(neighbours, size=half)]
                used, inverse = np.unique(np.concatenate([first, second]), return_inverse=True)
                index = torch.from_numpy(used)
                z = encoder(x_all[index], adj_all[index], mask_all[index])
                za, zb = z[torch.from_numpy(inverse[:len(first)])], z[torch.from_numpy(inverse[len(first):])]
                target = torch.from_numpy(kernel[first, second])
                loss = ((nn.functional.cosine_similarity(za, zb, dim=-1) - target) ** 2).mean()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                if step % 100 == 0 or step == self.encoder_steps - 1:
                    _logger.info("NASGEM: encoder step %d/%d, WL loss %.5f", step + 1, self.encoder_steps, loss.item())
        encoder.eval()
        self._encoder = encoder
        self._encoder_ready = True
        self._embed_cache = {}
        self.encoder_loss = float(loss.item()) if self.encoder_steps else float("nan")

    def _fit_once(self, graphs: list[ArchGraph], y: np.ndarray):
        """Fit the predictor (and, for arm (b), a fresh encoder) on ``graphs``; returns a scorer."""
        target = torch.from_numpy(self._targets(y).astype(np.float32))
        encoders: list[GINEncoder | None] = []
        heads: list[_Predictor] = []
        fixed = self.encoding == "onehot" or self.wl_loss
        if fixed:
            z_train = torch.from_numpy(self._embed(graphs, [g.key() for g in graphs]))
        else:
            tensors = self._tensorize(graphs)
        for _ in range(self.ensemble_size):
            head = _Predictor(z_train.shape[1] if fixed else self.embedding_dim, self.predictor_hidden)
            params = list(head.parameters())
            encoder = None
            if not fixed:
                encoder = self._new_encoder()
                params += list(encoder.parameters())
            optimizer = torch.optim.Adam(params, lr=self.predictor_lr)
            for _ in range(self.predictor_epochs):
                z = z_train if encoder is None else encoder(*tensors)
                loss = ((head(z) - target) ** 2).mean()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            heads.append(head.eval())
            encoders.append(encoder.eval() if encoder is not None else None)

        def predict(pool_graphs: list[ArchGraph], z_pool: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            """Mean score of the ensemble, and the embeddings (of the first member's encoder) used."""
            outs, first = [], None
            for encoder, head in zip(encoders, heads):
                z = torch.from_numpy(z_pool) if encoder is None else self._encode(encoder, pool_graphs)
                first = z.numpy() if first is None else first
                outs.append(head(z).numpy())
            return np.mean(outs, axis=0), first
        return predict

    def _targets(self, y: np.ndarray) -> np.ndarray:
        """Regression targets of the metrics ``y`` (see ``score_transform``)."""
        if self.score_transform == "rank":
            return norm.ppf((rankdata(y) - 0.5) / len(y))
        return (y - y.mean()) / (float(y.std()) or 1.0)


    def _fit_predictor(self, graphs: list[ArchGraph], y: np.ndarray, rng: np.random.RandomState):
        """Measure Kendall's tau on a held-out split (drawn with ``rng``), then fit on every evaluated
        cell; returns the scorer."""
        start = time.perf_counter()
        num_heldout = int(round(self.holdout_fraction * len(y)))
        tau = float("nan")
        if num_heldout >= 2 and len(y) - num_heldout >= 2:
            perm = rng.permutation(len(y))
            held, train = perm[:num_heldout], perm[num_heldout:]
            predict = self._fit_once([graphs[i] for i in train], y[train])
            held_graphs = [graphs[i] for i in held]
            with torch.no_grad():
                pred, _ = predict(held_graphs, self._embed(held_graphs, [g.key() for g in held_graphs]))
            tau = float(kendalltau(pred, y[held]).statistic)
        predict = self._fit_once(graphs, y)
        entry = {"num_evaluated": float(len(y)), "num_heldout": float(num_heldout), "kendall_tau": tau,
                 "seconds": time.perf_counter() - start}
        self.model_history.append(entry)
        _logger.info("NASGEM: predictor refit on %d cells; Kendall tau %.3f on %d held out", len(y), tau, num_heldout)
        return predict

    # ------------------------------------------------------------------ checkpoints

    def _model_state(self) -> dict:
        return {
            "bank": [dict(s) for s, _ in self._bank.values()],
            "encoder": None if not self._encoder_ready else
            {k: v.detach().clone() for k, v in self._encoder.state_dict().items()},
        }

    def _load_model_state(self, state: dict) -> None:
        self._bank = {}
        for sample in state["bank"]:
            graph = self.view.to_graph(sample)
            self._bank[graph.key()] = (dict(sample), graph)
        self._embed_cache = {}
        self._predictor = None
        if state["encoder"] is not None:
            self._encoder = self._new_encoder()
            self._encoder.load_state_dict(state["encoder"])
            self._encoder_ready = True
