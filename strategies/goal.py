"""GOAL: Graph Optimized neural Architecture Learning, as an NNI 3.0 multi-trial strategy.

Huang, Wu, Ding, Tang, Xu, Zong, Tan, Zhuang, "Differentiable Graph Optimization for Neural
Architecture Search" (ICLR 2021 submission, OpenReview ``NqWY3s0SILo``).
"""
from __future__ import annotations

import logging
import math
import threading
import time
from typing import Any, Iterable, Mapping

import numpy as np
import torch
from scipy.stats import kendalltau
from torch import nn

import nni_plugins.compat  # noqa: F401  (leaf module: NNI 3.0 fixes)
from nni.mutable.exception import SampleValidationError
from nni.nas.execution import ExecutionEngine
from nni.nas.execution.event import ModelEvent, ModelEventType
from nni.nas.space import ExecutableModelSpace
from nni.nas.strategy.base import Strategy

from search_spaces.graph import ArchGraph, GraphView, InvalidGraph, graph_view

from .metrics import scalar_metric

#: The notes' initial design size N0 by graph view: 10 on NB201, 20 on NB101 and NB301 (DARTS cells).
_DEFAULT_N_INIT = {"nb201": 10, "nb101": 20, "darts": 20}

__all__ = ["GOAL", "DirectedGNN"]

_logger = logging.getLogger(__name__)


class DirectedGNN(nn.Module):
    """Ensemble of dense directed GNNs scoring a batch of graphs ``(A, X)``; differentiable in ``A`` and ``X``.

    Layer: ``h' = ReLU(h W_self + b + (A^T h) W_fwd + (A h) W_bwd)`` (messages along and against
    the edges, as in GATES / BRP-NAS); padding nodes (all-zero rows of ``X``) are masked out.
    Readout: the mean over real nodes concatenated with the output node's embedding (the last
    position of the dense layout), then a 2-layer MLP to one score. The ``members`` networks are
    independent (separately initialised) but stored as stacked weights, so the whole ensemble runs
    as one batched computation.

    Parameters
    ----------
    num_labels
        Size of the node-label vocabulary (columns of ``X``).
    hidden
        Hidden width.
    num_layers
        Message-passing layers.
    members
        Ensemble size.
    generator
        Torch random generator for the initialisation (``nn.Linear``'s uniform rule).
    """

    def __init__(self, num_labels: int, hidden: int = 64, num_layers: int = 3, members: int = 1,
                 generator: torch.Generator | None = None):
        super().__init__()
        self.num_layers = num_layers

        def uniform(*shape: int, fan_in: int) -> nn.Parameter:
            bound = 1.0 / math.sqrt(fan_in)
            return nn.Parameter((torch.rand(members, *shape, generator=generator) * 2 - 1) * bound)

        self.embed_w = uniform(num_labels, hidden, fan_in=num_labels)
        self.embed_b = uniform(1, hidden, fan_in=num_labels)
        # rows [0:H) act on h (W_self), [H:2H) on A^T h (W_fwd), [2H:3H) on A h (W_bwd)
        self.layer_w = nn.ParameterList(uniform(3 * hidden, hidden, fan_in=hidden) for _ in range(num_layers))
        self.layer_b = nn.ParameterList(uniform(1, hidden, fan_in=hidden) for _ in range(num_layers))
        self.head_w1 = uniform(2 * hidden, hidden, fan_in=2 * hidden)
        self.head_b1 = uniform(1, hidden, fan_in=2 * hidden)
        self.head_w2 = uniform(hidden, 1, fan_in=hidden)
        self.head_b2 = uniform(1, 1, fan_in=hidden)

    def forward(self, A: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
        """Scores of shape ``(members, batch)`` for ``A: (batch, N, N)``, ``X: (batch, N, K)``."""
        E, H = self.embed_w.shape[0], self.embed_w.shape[-1]
        B, N, K = X.shape
        mask = (X.sum(-1, keepdim=True) > 0).to(X.dtype)                              # (B, N, 1)
        # node states are kept as (B, N, E*H) so that message passing is one bmm for all members
        h = torch.relu(X.reshape(B * N, K) @ self.embed_w.permute(1, 0, 2).reshape(K, E * H)
                       + self.embed_b.reshape(1, E * H)).reshape(B, N, E * H) * mask
        At = A.transpose(1, 2)
        for w, b in zip(self.layer_w, self.layer_b):
            msg = torch.cat([h.reshape(B, N, E, H), (At @ h).reshape(B, N, E, H), (A @ h).reshape(B, N, E, H)], -1)
            out = torch.bmm(msg.reshape(B * N, E, 3 * H).transpose(0, 1), w)               # (E, B*N, H)
            h = torch.relu(out + b).transpose(0, 1).reshape(B, N, E * H) * mask
        pooled = h.sum(1) / mask.sum(1).clamp(min=1)                                    # (B, E*H)
        z = torch.cat([pooled.reshape(B, E, H), h[:, -1].reshape(B, E, H)], -1).transpose(0, 1)  # (E, B, 2H)
        z = torch.relu(torch.bmm(z, self.head_w1) + self.head_b1)
        return (torch.bmm(z, self.head_w2) + self.head_b2).reshape(E, B)


def _pairwise_loss(scores: torch.Tensor, better: torch.Tensor, kind: str, margin: float) -> torch.Tensor:
    """Mean ranking loss over all pairs ``(i, j)`` with ``better[i, j] = 1`` (i.e. ``y_i > y_j``):
    BPR ``-log sigmoid(f_i - f_j)`` or hinge ``max(0, margin - (f_i - f_j))``.

    ``scores`` is ``(batch,)`` or ``(members, batch)``; the result has the leading shape of ``scores``
    without the batch dimension (one loss per ensemble member)."""
    diff = scores[..., :, None] - scores[..., None, :]
    per_pair = nn.functional.softplus(-diff) if kind == "bpr" else torch.relu(margin - diff)
    return (per_pair * better).sum(dim=(-1, -2)) / better.sum().clamp(min=1)


class _Adam:
    """Plain Adam over a fixed list of tensors (``torch.optim.Adam``'s per-step bookkeeping costs more
    than these tiny surrogate updates)."""

    def __init__(self, params: list[torch.Tensor], lr: float, weight_decay: float,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.params, self.lr, self.weight_decay, self.betas, self.eps = params, lr, weight_decay, betas, eps
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params]
        self.t = 0

    @torch.no_grad()
    def step(self, grads: tuple[torch.Tensor, ...]) -> None:
        self.t += 1
        b1, b2 = self.betas
        c1, c2 = 1 - b1 ** self.t, 1 - b2 ** self.t
        for p, g, m, v in zip(self.params, grads, self.m, self.v):
            if self.weight_decay:
                g = g + self.weight_decay * p
            m.mul_(b1).add_(g, alpha=1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            p.addcdiv_(m, (v / c2).sqrt_().add_(self.eps), value=-self.lr / c1)


class GOAL(Strategy):
    """GOAL: a differentiable GNN surrogate ranks architectures; proximal gradient ascent on the
    relaxed graph ``(A, X)`` proposes the next ones.

    From `Differentiable Graph Optimization for Neural Architecture Search
    <https://openreview.net/forum?id=NqWY3s0SILo>`__ (Huang et al., ICLR 2021 submission). The
    abstract fixes the algorithm's shape: architectures are explicit graphs, a differentiable GNN is
    trained to *rank* candidates, the gradient of its score with respect to the input graph drives
    the search, and proximal gradient descent copes with the discrete structure. The paper's full
    text and code were not available, so the details below are the project's reconstruction
    (``notes/goal_nasgem_tetlo.md`` §1, tagged [D] there):

    1. **Initial design [D].** ``n_init`` uniformly random valid architectures: by default the
       notes' N0, 10 on NB201 and 20 on NB101 and DARTS (NB301) cells, and 10 on any other space.
    2. **Surrogate [D].** A :class:`DirectedGNN` ensemble of ``ensemble`` members (dense, forward
       and backward messages, ``num_layers`` layers of width ``hidden``) on the padded adjacency ``A``
       and one-hot labels ``X`` of :mod:`search_spaces.graph`, trained with the pairwise BPR loss
       ``-log sigmoid(f_i - f_j)`` over every evaluated pair with ``y_i > y_j`` (``loss='hinge'``
       gives ``max(0, margin - (f_i - f_j))``), full batch, Adam (``lr``), ``epochs`` epochs per refit.
       Members are warm-started from the previous fit and re-initialised every ``reinit_every``
       refits (the notes: a full refit every 5 rounds; with the default ``batch_size`` of 1 a
       round is one result, so that is every 5 results rather than every 25-50). The loss only
       uses the order of the metrics, so no metric scaling is needed.
       Departure from the notes' sizes (hidden 64-128, ~200 epochs): the defaults are hidden 32 and
       100 warm-started epochs, which keeps the strategy well under 1 s per proposal at 150
       queries on a 2-core CPU; both are parameters.
    3. **Start points [D].** The ``top_k`` best evaluated architectures plus ``random_starts``
       random ones.
    4. **Proximal ascent [D], lazy / BinaryConnect style.** Relaxed ``Z = (Ã, X̃)`` start at the
       dense encoding of a start point; for ``ascent_steps`` steps: ``G = prox(Z)`` (the view's
       projection onto valid discrete graphs: per-node argmax of the label scores; NB101: threshold
       0.5, at most 9 edges, add the strongest edge that completes an input->output path if the
       output is unreachable, prune, reject a cell still over 9 edges; DARTS: best predecessor per
       op node, chosen for each of a node's two inputs on its own as NNI's DARTS cell samples them,
       where the notes take a node's top-2 incoming edges; NB201: fixed topology),
       ``g = ∇_{A,X} f(G)`` (ensemble mean, only the entries the space lets change, taken with ``G``
       laid out on the rows of ``Z`` its nodes came from, so a node that NB101's pruning removed
       gets no gradient and the others keep theirs),
       ``Z <- clip(Z + step_size * g / max|g|, 0, 1)``. Every valid, unseen ``G`` on the way is a
       candidate. Dividing by ``max|g|`` (so a step moves the largest coordinate by ``step_size``)
       is our choice: it makes ``step_size`` independent of the surrogate's output scale.
    5. **Acquisition [D].** Candidates are ranked by the ensemble's mean score and the best
       ``batch_size`` form the next batch; each slot is replaced by a random architecture with
       probability ``epsilon``; random architectures also fill in when ascent finds nothing new.
       Departure: the default ``batch_size`` is 1, below the notes' 5-10: the surrogate is
       refitted (warm-started) whenever a new result has arrived, and each free worker gets the
       best candidate of the latest fit (sequential model-based optimisation; with concurrency
       > 1 and no new result, the next-best candidate). Same query count, more adaptive; the
       refits are cheap enough (``docs/benchmarks.md``: Protocol A with B = 1, 2, 3).
    6. Repeat until the experiment's budget (``max_trial_number``) is spent.

    Departures and platform behaviour:

    - Proposals are deduplicated by graph key (:meth:`search_spaces.graph.ArchGraph.key`), so a
      query is one distinct architecture; failed trials stay deduplicated (never resubmitted).
    - Results may arrive out of order (concurrency > 1). Proposals never wait for a particular
      result: until ``n_init`` metrics exist, free workers get random architectures; afterwards a
      batch is computed from whatever has finished, and the surrogate is refitted whenever new
      metrics arrived. Failed trials (no metric) are logged and skipped.
    - Surrogate quality: before each refit, the current surrogate (not yet trained on them) scores
      the architectures that finished since the previous fit; Kendall's tau between those scores
      and their metrics, and over all such held-out predictions so far, are logged and appended to
      :attr:`surrogate_history` (for TensorBoard via ``nni_plugins``).
    - Determinism: numpy ``RandomState(seed)`` drives every random choice and seeds each network
      initialisation (through a forked torch RNG), so a given seed on a sequential engine yields the
      same proposals. :meth:`state_dict` holds history, dedup keys, queue, RNG state and surrogate
      weights; a resumed experiment continues without repeating finished trials. Trials still
      running at checkpoint time are proposed again first; on NNI's training services such a
      proposal joins the trial the resumed manager re-runs instead of training it a second time
      (``resumed_trials_rejoin_strategy`` in :mod:`nni_plugins.compat`), or, if that trial ended
      before the kill, receives its result (``trials_ended_after_checkpoint``), so no result is
      lost to the surrogate.
    - Any NNI model space works through :func:`search_spaces.graph.graph_view` (NB201, NB101, DARTS
      cells, and a generic decision-chain graph for other spaces).

    Parameters
    ----------
    n_init
        Random architectures evaluated before the surrogate is used; ``None`` (default): 10 on
        NB201, 20 on NB101 and DARTS cells, 10 elsewhere.
    batch_size
        Architectures proposed per round (B).
    top_k
        Best evaluated architectures used as ascent start points.
    random_starts
        Random start points added to the ``top_k``.
    ascent_steps
        Proximal gradient steps per start point (T).
    step_size
        Step size η of the ascent (in units of the largest gradient entry).
    epsilon
        Probability that a batch slot is a random architecture instead.
    hidden
        GNN hidden width.
    num_layers
        GNN message-passing layers.
    ensemble
        Number of GNNs averaged in the surrogate.
    epochs
        Training epochs per refit.
    lr
        Adam learning rate of the surrogate.
    weight_decay
        Adam weight decay of the surrogate.
    loss
        ``'bpr'`` (default) or ``'hinge'`` pairwise ranking loss.
    margin
        Margin of the hinge loss.
    reinit_every
        Re-initialise the surrogate every this many refits (warm-start in between).
    num_threads
        Torch intra-op threads while the strategy fits and ascends (restored afterwards); the
        surrogate's tensors are tiny, and on a shared CPU more threads cost several times more
        CPU time than they save. ``None`` leaves torch's setting alone.
    seed
        Random seed.
    """

    def __init__(self, *, n_init: int | None = None, batch_size: int = 1, top_k: int = 5, random_starts: int = 1,
                 ascent_steps: int = 30, step_size: float = 0.2, epsilon: float = 0.1, hidden: int = 32,
                 num_layers: int = 3, ensemble: int = 3, epochs: int = 100, lr: float = 1e-3,
                 weight_decay: float = 0.0, loss: str = "bpr", margin: float = 0.05, reinit_every: int = 5,
                 num_threads: int | None = 1, seed: int | None = None):
        super().__init__()
        for name, value, low in [("n_init", 10 if n_init is None else n_init, 1), ("batch_size", batch_size, 1),
                                 ("top_k", top_k, 0),
                                 ("random_starts", random_starts, 0), ("ascent_steps", ascent_steps, 1),
                                 ("hidden", hidden, 1), ("num_layers", num_layers, 1), ("ensemble", ensemble, 1),
                                 ("epochs", epochs, 1), ("reinit_every", reinit_every, 1),
                                 ("num_threads", 1 if num_threads is None else num_threads, 1)]:
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"GOAL: {name} must be an int, got {type(value).__name__} {value!r}")
            if value < low:
                raise ValueError(f"GOAL: {name} must be >= {low}, got {value}")
        if top_k + random_starts < 1:
            raise ValueError("GOAL: top_k + random_starts must be >= 1 (at least one ascent start point)")
        for name, value in [("step_size", step_size), ("lr", lr), ("margin", margin)]:
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
                raise ValueError(f"GOAL: {name} must be a positive number, got {value!r}")
        if not isinstance(epsilon, (int, float)) or not 0.0 <= epsilon <= 1.0:
            raise ValueError(f"GOAL: epsilon must be in [0, 1], got {epsilon!r}")
        if not isinstance(weight_decay, (int, float)) or weight_decay < 0:
            raise ValueError(f"GOAL: weight_decay must be >= 0, got {weight_decay!r}")
        if loss not in ("bpr", "hinge"):
            raise ValueError(f"GOAL: loss must be 'bpr' or 'hinge', got {loss!r}")
        self.n_init, self.batch_size, self.top_k, self.random_starts = n_init, batch_size, top_k, random_starts
        self.ascent_steps, self.step_size, self.epsilon = ascent_steps, float(step_size), float(epsilon)
        self.hidden, self.num_layers, self.ensemble, self.epochs = hidden, num_layers, ensemble, epochs
        self.lr, self.weight_decay, self.loss, self.margin = float(lr), float(weight_decay), loss, float(margin)
        self.reinit_every = reinit_every
        self.num_threads = num_threads
        self.seed = seed

        self._rng = np.random.RandomState(seed)
        self._lock = threading.RLock()
        self.view: GraphView | None = None
        self._num_init = n_init     # resolved against the space in _initialize when n_init is None
        # Evaluated architectures: (graph, sample, metric), in arrival order.
        self._history: list[tuple[ArchGraph, dict, float]] = []
        self._failed: list[dict] = []
        self._seen: set[str] = set()
        self._running: dict[str, ExecutableModelSpace] = {}
        self._queue: list[ArchGraph] = []
        self._model: DirectedGNN | None = None
        self._fitted_on = 0
        self._round = 0
        self._heldout_pred: list[float] = []
        self._heldout_true: list[float] = []
        #: One dict per surrogate refit: ``round``, ``num_train``, ``kendall_tau`` (architectures
        #: finished since the previous fit), ``kendall_tau_all`` (all held-out predictions so far),
        #: ``num_heldout``, ``train_loss``, ``fit_seconds``.
        self.surrogate_history: list[dict] = []
        #: Wall time spent inside the strategy's proposal code, and the number of proposals.
        self.proposal_seconds = 0.0
        self.num_proposals = 0

    def extra_repr(self) -> str:
        return (f"n_init={self.n_init}, batch_size={self.batch_size}, top_k={self.top_k}, "
                f"ascent_steps={self.ascent_steps}, step_size={self.step_size}, epsilon={self.epsilon}, "
                f"ensemble={self.ensemble}, loss={self.loss!r}")

    # ------------------------------------------------------------------------------------------------
    # NNI strategy hooks
    # ------------------------------------------------------------------------------------------------
    def _initialize(self, model_space: ExecutableModelSpace, engine: ExecutionEngine) -> ExecutableModelSpace:
        self.view = graph_view(model_space)
        self._num_init = self.n_init if self.n_init is not None else _DEFAULT_N_INIT.get(self.view.name, 10)
        _logger.info("GOAL uses the %s graph view (%d nodes, %d labels), %d random architectures first",
                     self.view.name, self.view.max_nodes, len(self.view.op_vocab), self._num_init)
        engine.register_model_event_callback(ModelEventType.TrainingEnd, self._training_end_callback)
        return model_space

    def _cleanup(self) -> None:
        self.engine.unregister_model_event_callback(ModelEventType.TrainingEnd, self._training_end_callback)

    def _run(self) -> None:
        while self.wait_for_resource():
            start = time.perf_counter()
            model = self._next_model()
            self.proposal_seconds += time.perf_counter() - start
            if model is None:
                _logger.warning("GOAL: no new architecture can be proposed (space exhausted?). Stop.")
                break
            self.num_proposals += 1
            self.engine.submit_models(model)
        self.engine.wait_models()

    def _training_end_callback(self, event: ModelEvent) -> None:
        sample = event.model.sample
        if sample is None or self.view is None:
            return
        try:
            graph = self.view.to_graph(sample)
        except ValueError:
            _logger.debug("GOAL: ignoring a model that is not from this space: %s", sample)
            return
        key = graph.key()
        with self._lock:
            if self._running.pop(key, None) is None:
                _logger.debug("GOAL: ignoring a model it did not submit: %s", sample)
                return
            metric = scalar_metric(event.model.metric)
            if metric is None:
                _logger.warning("GOAL: trial %s ended with status %s and no metric; skipped.", sample, event.status)
                self._failed.append(dict(sample))
                return
            self._history.append((graph, dict(sample), metric))
            _logger.info("GOAL: [%d] metric %.6g for %s", len(self._history), metric, sample)

    # ------------------------------------------------------------------------------------------------
    # Proposal
    # ------------------------------------------------------------------------------------------------
    def _next_model(self) -> ExecutableModelSpace | None:
        assert self.view is not None
        for _ in range(10 * (self.batch_size + 1)):
            with self._lock:
                if not self._queue:
                    self._queue = self._propose_batch()
                if not self._queue:
                    return None
                graph = self._queue.pop(0)
                key = graph.key()
                if key in self._seen:
                    continue
                self._seen.add(key)
                try:
                    sample = self.view.to_sample(graph)
                    model = self.model_space.freeze(sample)
                except (InvalidGraph, SampleValidationError) as err:
                    _logger.debug("GOAL: rejected invalid proposal %s: %s", graph, err)
                    continue
                self._running[key] = model
                return model
        return None

    def _random_graph(self) -> ArchGraph | None:
        assert self.view is not None
        for _ in range(1000):
            graph = self.view.to_graph(self.view.random_sample(self._rng))
            if graph.key() not in self._seen:
                return graph
        return None

    def _propose_batch(self) -> list[ArchGraph]:
        if len(self._history) < self._num_init:
            graph = self._random_graph()
            return [graph] if graph is not None else []
        previous = torch.get_num_threads()
        if self.num_threads is not None:
            torch.set_num_threads(self.num_threads)
        try:
            return self._surrogate_batch()
        finally:
            torch.set_num_threads(previous)

    def _surrogate_batch(self) -> list[ArchGraph]:
        if self._model is None or len(self._history) > self._fitted_on:
            self._fit()
        candidates = self._ascent()
        batch: list[ArchGraph] = []
        taken: set[str] = set()
        for graph in candidates:
            if len(batch) >= self.batch_size:
                break
            if self._rng.uniform() < self.epsilon:
                graph = self._random_graph()
                if graph is None:
                    continue
            if graph.key() not in taken:
                taken.add(graph.key())
                batch.append(graph)
        while len(batch) < self.batch_size:
            graph = self._random_graph()
            if graph is None:
                break
            if graph.key() not in taken:
                taken.add(graph.key())
                batch.append(graph)
        return batch

    # ------------------------------------------------------------------------------------------------
    # Surrogate
    # ------------------------------------------------------------------------------------------------
    def _new_model(self, seed: int | None = None) -> DirectedGNN:
        assert self.view is not None
        generator = torch.Generator().manual_seed(int(self._rng.randint(2 ** 31 - 1)) if seed is None else seed)
        return DirectedGNN(len(self.view.op_vocab), self.hidden, self.num_layers, self.ensemble, generator)

    def _encode(self, graphs: list[ArchGraph], positions: list[list[int]] | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        assert self.view is not None
        pairs = [self.view.encode(g, None if positions is None else positions[i]) for i, g in enumerate(graphs)]
        return (torch.from_numpy(np.stack([a for a, _ in pairs])),
                torch.from_numpy(np.stack([x for _, x in pairs])))

    def predict(self, graphs: list[ArchGraph]) -> np.ndarray:
        """Ensemble-mean surrogate score of each graph (higher = predicted better)."""
        if self._model is None:
            raise RuntimeError("GOAL: the surrogate has not been fitted yet")
        A, X = self._encode(graphs)
        with torch.no_grad():
            return self._model(A, X).mean(0).numpy()

    def _fit(self) -> None:
        start = time.perf_counter()
        graphs = [g for g, _, _ in self._history]
        y_np = np.array([m for _, _, m in self._history], dtype=np.float64)
        record: dict[str, Any] = {"round": self._round, "num_train": len(graphs)}
        if self._model is not None and len(graphs) > self._fitted_on:
            new = graphs[self._fitted_on:]
            pred = self.predict(new)
            self._heldout_pred.extend(pred.tolist())
            self._heldout_true.extend(y_np[self._fitted_on:].tolist())
            record["kendall_tau"] = _tau(pred, y_np[self._fitted_on:])
            record["kendall_tau_all"] = _tau(np.array(self._heldout_pred), np.array(self._heldout_true))
            record["num_heldout"] = len(new)
        if self._model is None or self._round % self.reinit_every == 0:
            self._model = self._new_model()
        A, X = self._encode(graphs)
        y = torch.from_numpy(y_np)
        better = (y[:, None] > y[None, :]).to(torch.float32)
        params = list(self._model.parameters())
        adam = _Adam(params, self.lr, self.weight_decay)
        for _ in range(self.epochs):
            scores = self._model(A, X)
            # members are independent: summing their losses trains each on its own loss
            loss = _pairwise_loss(scores, better, self.loss, self.margin).sum()
            grads = torch.autograd.grad(loss, params)
            adam.step(grads)
        self._fitted_on = len(graphs)
        self._round += 1
        record["train_loss"] = float(loss.detach()) / self.ensemble
        record["fit_seconds"] = time.perf_counter() - start
        self.surrogate_history.append(record)
        _logger.info("GOAL surrogate refit %d on %d archs: loss %.4f, held-out Kendall tau %s (all %s)",
                     record["round"], len(graphs), record["train_loss"],
                     _fmt(record.get("kendall_tau")), _fmt(record.get("kendall_tau_all")))

    # ------------------------------------------------------------------------------------------------
    # Proximal gradient ascent
    # ------------------------------------------------------------------------------------------------
    def _ascent(self) -> list[ArchGraph]:
        """Candidates (valid, unseen) visited by proximal ascent, best predicted first."""
        assert self.view is not None and self._model is not None
        order = sorted(range(len(self._history)), key=lambda i: -self._history[i][2])
        starts = [self._history[i][0] for i in order[:self.top_k]]
        for _ in range(self.random_starts):
            graph = self.view.to_graph(self.view.random_sample(self._rng))
            starts.append(graph)
        A0, X0 = self._encode(starts)
        ZA, ZX = A0.numpy().astype(np.float64), X0.numpy().astype(np.float64)
        layout = [self.view.default_positions(g.num_nodes) for g in starts]
        edge_mask = torch.from_numpy(self.view.edge_mask()).to(torch.float32)
        op_mask = torch.from_numpy(self.view.op_mask()).to(torch.float32)
        candidates: dict[str, ArchGraph] = {}
        for step in range(self.ascent_steps + 1):
            projected, positions = [], []
            for s in range(len(starts)):
                try:
                    graph, where = self.view.project_with_positions(ZA[s], ZX[s])
                except InvalidGraph:
                    graph, where = starts[s], layout[s]
                projected.append(graph)
                positions.append(where)
                key = graph.key()
                if key not in self._seen and key not in candidates:
                    candidates[key] = graph
            if step == self.ascent_steps:
                break
            A, X = self._encode(projected, positions)     # the gradient lands on the rows Z's nodes hold
            A.requires_grad_(True)
            X.requires_grad_(True)
            score = self._model(A, X).mean(0).sum()
            gA, gX = torch.autograd.grad(score, (A, X))
            gA, gX = gA * edge_mask, gX * op_mask
            scale = torch.maximum(gA.abs().amax(dim=(1, 2)), gX.abs().amax(dim=(1, 2))).clamp(min=1e-12)
            ZA = np.clip(ZA + self.step_size * (gA / scale[:, None, None]).numpy(), 0.0, 1.0)
            ZX = np.clip(ZX + self.step_size * (gX / scale[:, None, None]).numpy(), 0.0, 1.0)
        if not candidates:
            return []
        graphs = list(candidates.values())
        scores = self.predict(graphs)
        return [graphs[i] for i in np.argsort(-scores, kind="stable")]

    # ------------------------------------------------------------------------------------------------
    # Checkpointing
    # ------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        with self._lock:
            return {
                "history": [(dict(s), m) for _, s, m in self._history],
                "failed": [dict(s) for s in self._failed],
                "seen": sorted(self._seen),
                "running": [dict(m.sample) for m in self._running.values()],
                "queue": [(g.adjacency.tolist(), list(g.ops)) for g in self._queue],
                "random_state": self._rng.get_state(),
                "surrogate": None if self._model is None else
                {k: v.detach().clone() for k, v in self._model.state_dict().items()},
                "fitted_on": self._fitted_on,
                "round": self._round,
                "heldout": (list(self._heldout_pred), list(self._heldout_true)),
                "surrogate_history": [dict(r) for r in self.surrogate_history],
            }

    def load_state_dict(self, state_dict: dict) -> None:
        if self.view is None:
            raise RuntimeError("GOAL.load_state_dict must be called after initialize() (NasExperiment does this)")
        with self._lock:
            self._history = [(self.view.to_graph(s), dict(s), float(m)) for s, m in state_dict["history"]]
            self._failed = [dict(s) for s in state_dict["failed"]]
            running = [self.view.to_graph(s) for s in state_dict["running"]]
            if running:
                _logger.info("GOAL: %d trials were running at checkpoint time; they are proposed again first "
                             "(each joins the trial the resumed NNI manager re-runs, or receives its result if it "
                             "has ended).", len(running))
            self._seen = set(state_dict["seen"]) - {g.key() for g in running}
            self._running = {}
            self._queue = running + [ArchGraph(np.array(a), tuple(o)) for a, o in state_dict["queue"]]
            self._rng.set_state(state_dict["random_state"])
            if state_dict["surrogate"] is None:
                self._model = None
            else:
                self._model = self._new_model(seed=0)
                self._model.load_state_dict(state_dict["surrogate"])
            self._fitted_on = int(state_dict["fitted_on"])
            self._round = int(state_dict["round"])
            self._heldout_pred, self._heldout_true = (list(v) for v in state_dict["heldout"])
            self.surrogate_history = [dict(r) for r in state_dict["surrogate_history"]]

    @property
    def evaluated(self) -> list[tuple[dict, float]]:
        """``(sample, metric)`` of every finished trial with a metric, in arrival order."""
        return [(dict(s), m) for _, s, m in self._history]

    def import_results(self, results: Iterable[tuple[Mapping[str, Any], float | None]]) -> int:
        """Record trials this strategy did not submit (the nnictl tuner passes on those NNI hands it
        on ``nnictl resume`` and ``nnictl experiment import``). Each ``(sample, metric)`` joins the
        history the surrogate is fitted on and is never proposed again; a metric of ``None`` marks a
        trial still running elsewhere (re-run by a resumed experiment): it is not proposed, and its
        metric may be imported later. A sample with a metric already, or submitted by this strategy,
        is left alone; one outside the space is skipped with a warning. Call it after
        ``initialize``. Returns how many metrics were recorded."""
        if self.view is None:
            raise RuntimeError("GOAL.import_results must be called after initialize()")
        added = 0
        with self._lock:
            known = {graph.key() for graph, _, _ in self._history} | set(self._running)
            for sample, metric in results:
                try:
                    graph = self.view.to_graph(sample)
                except (KeyError, ValueError) as err:
                    _logger.warning("GOAL: imported result for %s skipped: %s", sample, err)
                    continue
                if graph.key() in known:
                    continue
                self._seen.add(graph.key())
                if metric is not None:
                    known.add(graph.key())
                    self._history.append((graph, dict(sample), float(metric)))
                    added += 1
        return added


def _tau(pred: np.ndarray, true: np.ndarray) -> float | None:
    if len(pred) < 2 or np.ptp(true) == 0 or np.ptp(pred) == 0:
        return None
    tau = kendalltau(pred, true).statistic
    return float(tau) if np.isfinite(tau) else None


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
