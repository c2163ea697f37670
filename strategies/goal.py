"""GOAL: Graph Optimized neural Architecture Learning, as an NNI 3.0 multi-trial strategy.

Huang, Wu, Ding, Tang, Xu, Zong, Tan, Zhuang, `Differentiable Graph Optimization for Neural
Architecture Search <https://openreview.net/forum?id=NqWY3s0SILo>`__ (ICLR 2021 submission).
"""
from __future__ import annotations

import logging
import math
import time
from typing import Any

import numpy as np
import torch
from scipy.stats import kendalltau
from torch import nn

from nni.nas.execution import ExecutionEngine
from nni.nas.space import ExecutableModelSpace

from search_spaces.graph import ArchGraph, InvalidGraph

from ._checks import check_choice
from .multitrial import Candidate, ModelBasedStrategy, Round, check_float, check_int

#: Default initial design size by graph view (10 on any other view).
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


class GOAL(ModelBasedStrategy):
    """GOAL: a graph neural network ranks architectures, and gradient ascent on the architecture
    graph proposes the next ones.

    Every architecture is a graph: an adjacency matrix ``A`` and one-hot node labels ``X`` (the graph
    view of the space, :func:`search_spaces.graph.graph_view`). After ``n_init`` random architectures,
    an ensemble of differentiable GNNs (:class:`DirectedGNN`) is trained to rank the evaluated ones
    with a pairwise loss. From the ``top_k`` best evaluated architectures and ``random_starts`` random
    ones, GOAL follows the gradient of the predicted score with respect to the relaxed graph
    ``(A, X)``, projecting onto valid discrete graphs at every step (proximal gradient ascent). The
    valid new graphs met on the way are ranked by the surrogate, and the best ``batch_size`` are
    trained next; the surrogate is refitted whenever new results have arrived.

    **Many trials at once** (kriging believer, one start after another). While trials run without
    results, GOAL treats each as known at the metric its surrogate score believes: the metric found
    at the same rank among the evaluated architectures (quantile matching of scores to metrics, as
    the surrogate only ranks). Running architectures so compete with the evaluated ones for the
    ``top_k`` start points, so the next ascents go on from where the pending ones are instead of
    circling the incumbent again; they are never proposed again themselves. The ranked candidates
    take the best of each start's path in turn (starts ordered by their best candidate's score),
    then every start's second best, and so on, so that proposals made without new results come from
    different starts. With no trial running (one at a time) this is the plain best-first rule above,
    and the first candidate is the overall best either way.

    **Long searches.** Up to ``fit_size`` results, every fit trains on all of them. Beyond, each
    training step takes the ``fit_size // 4`` best results and a fresh random draw of the others, up
    to ``fit_size`` in all, so a fit costs the same with 1,000 results as with ``fit_size``; and a
    round serves ``ceil(refit_fraction * n)`` proposals (at least ``batch_size``), so that refits
    grow rarer as the history grows. The surrogate is warm-started (``reinit_every``).

    Follows `Differentiable Graph Optimization for Neural Architecture Search
    <https://openreview.net/forum?id=NqWY3s0SILo>`__ (Huang, Wu, Ding, Tang, Xu, Zong, Tan, Zhuang,
    ICLR 2021 submission). Only the paper's abstract was available, so the details (update rules,
    defaults) are a reconstruction; ``docs/algorithms.md`` describes them and every departure.

    Works on any NNI model space: NB201, NB101 and DARTS cells have their own graph views, other
    spaces are seen as a chain of decisions. Proposals are never repeated, results may arrive in any
    order, failed trials are skipped, and :meth:`state_dict` resumes a search exactly (see
    :class:`strategies.multitrial.ModelBasedStrategy`). Each surrogate fit appends to
    :attr:`model_history` a dict with ``round``, ``num_evaluated`` (architectures fitted on),
    ``kendall_tau`` (on the architectures finished since the previous fit, before the surrogate was
    trained on them) and ``num_heldout`` (their count), ``kendall_tau_all`` (all such held-out
    predictions so far) and ``num_heldout_all``, ``train_loss`` and ``seconds``.

    Parameters
    ----------
    n_init
        Random architectures evaluated before the surrogate is used. ``None`` (default): 10 on NB201,
        20 on NB101 and DARTS cells, 10 elsewhere, at most half the budget when it is known (see
        :class:`strategies.multitrial.ModelBasedStrategy`).
    batch_size
        Architectures proposed per surrogate round. With 1, every free worker gets the best
        candidate of a surrogate fitted on every result so far.
    top_k
        Best evaluated architectures used as start points of the ascent (``top_k + random_starts``
        must be at least 1).
    random_starts
        Random start points added to the ``top_k``.
    ascent_steps
        Proximal gradient steps per start point.
    step_size
        Step size of the ascent, in units of the largest gradient entry.
    epsilon
        Probability that a slot of a batch is a random architecture instead.
    hidden
        Hidden width of the GNNs.
    num_layers
        Message-passing layers of the GNNs.
    ensemble
        Number of GNNs averaged in the surrogate.
    epochs
        Training epochs per surrogate fit.
    lr
        Adam learning rate of the surrogate.
    weight_decay
        Adam weight decay of the surrogate.
    loss
        Pairwise ranking loss: ``'bpr'`` (``-log sigmoid(f_i - f_j)``) or ``'hinge'``
        (``max(0, margin - (f_i - f_j))``), over every evaluated pair with ``y_i > y_j``.
    margin
        Margin of the hinge loss.
    reinit_every
        The surrogate is warm-started from its previous fit, and re-initialised every this many fits.
    fit_size
        Largest number of evaluated architectures in one training step (see "Long searches").
    refit_fraction
        Beyond ``fit_size`` results, the proposals one fit serves, as a fraction of the results.
    background_fit
        Where fits and ascents run: ``"auto"``, ``True`` or ``False`` (see
        :class:`strategies.multitrial.ModelBasedStrategy`). The default proposes as a synchronous
        strategy when one trial runs at a time, and answers at once from the last round otherwise.
    num_threads
        Torch intra-op threads while the strategy fits and ascends (restored afterwards). ``None``
        leaves torch's setting alone.
    seed
        Random seed.

    Examples
    --------
    >>> from nni.nas.experiment import NasExperiment
    >>> from strategies import GOAL
    >>> experiment = NasExperiment(model_space, evaluator, GOAL(seed=0))
    >>> experiment.run()
    """

    def __init__(self, *, n_init: int | None = None, batch_size: int = 1, top_k: int = 5, random_starts: int = 1,
                 ascent_steps: int = 30, step_size: float = 0.2, epsilon: float = 0.1, hidden: int = 32,
                 num_layers: int = 3, ensemble: int = 3, epochs: int = 100, lr: float = 1e-3,
                 weight_decay: float = 0.0, loss: str = "bpr", margin: float = 0.05, reinit_every: int = 5,
                 fit_size: int = 100, refit_fraction: float = 0.03, background_fit: bool | str = "auto",
                 num_threads: int | None = 1, seed: int | None = None):
        super().__init__(background_fit=background_fit, num_threads=num_threads, seed=seed)
        owner = type(self).__name__
        self.n_init = check_int(owner, "n_init", n_init, minimum=1, optional=True)
        self.batch_size = check_int(owner, "batch_size", batch_size, minimum=1)
        self.top_k = check_int(owner, "top_k", top_k)
        self.random_starts = check_int(owner, "random_starts", random_starts)
        if top_k + random_starts < 1:
            raise ValueError(f"{owner}: top_k + random_starts must be >= 1 (at least one ascent start point), "
                             f"got top_k={top_k}, random_starts={random_starts}")
        self.ascent_steps = check_int(owner, "ascent_steps", ascent_steps, minimum=1)
        self.step_size = check_float(owner, "step_size", step_size, strict=True)
        self.epsilon = check_float(owner, "epsilon", epsilon, maximum=1)
        self.hidden = check_int(owner, "hidden", hidden, minimum=1)
        self.num_layers = check_int(owner, "num_layers", num_layers, minimum=1)
        self.ensemble = check_int(owner, "ensemble", ensemble, minimum=1)
        self.epochs = check_int(owner, "epochs", epochs, minimum=1)
        self.lr = check_float(owner, "lr", lr, strict=True)
        self.weight_decay = check_float(owner, "weight_decay", weight_decay)
        check_choice(owner, "loss", loss, ("bpr", "hinge"))
        self.loss = loss
        self.margin = check_float(owner, "margin", margin, strict=True)
        self.reinit_every = check_int(owner, "reinit_every", reinit_every, minimum=1)
        self.fit_size = check_int(owner, "fit_size", fit_size, minimum=4)
        self.refit_fraction = check_float(owner, "refit_fraction", refit_fraction, maximum=1)

        self._model: DirectedGNN | None = None
        self._fitted_on = 0             # history entries the surrogate was last fitted on
        self._round = 0
        self._heldout_pred: list[float] = []
        self._heldout_true: list[float] = []

    def extra_repr(self) -> str:
        return (f"n_init={self.n_init}, batch_size={self.batch_size}, top_k={self.top_k}, "
                f"ascent_steps={self.ascent_steps}, step_size={self.step_size}, epsilon={self.epsilon}, "
                f"ensemble={self.ensemble}, loss={self.loss!r}")

    def _initialize(self, model_space: ExecutableModelSpace, engine: ExecutionEngine) -> ExecutableModelSpace:
        model_space = super()._initialize(model_space, engine)
        _logger.info("GOAL uses the %s graph view (%d nodes, %d labels), %d random architectures first",
                     self.view.name, self.view.max_nodes, len(self.view.op_vocab), self._num_init)
        return model_space

    # ------------------------------------------------------------------------------------------------
    # Proposals
    # ------------------------------------------------------------------------------------------------
    def _default_num_init(self) -> int:
        return _DEFAULT_N_INIT.get(self.view.name, 10)

    def _initial_design(self) -> bool:
        """Random until ``n_init`` architectures have a metric."""
        return len(self._history) < self._num_init

    def _random_candidate(self, rng: np.random.RandomState | None = None,
                          seen: frozenset[str] | set[str] | None = None) -> ArchGraph | None:
        """GOAL proposes graphs, so a random proposal is submitted as the graph's own sample."""
        sample = self._random_unseen(rng, seen)
        return None if sample is None else self.view.to_graph(sample)

    def _round_size(self, num_results: int) -> int:
        """``batch_size``; beyond ``fit_size`` results, at least ``ceil(refit_fraction * num_results)``."""
        if num_results <= self.fit_size:
            return self.batch_size
        return max(self.batch_size, math.ceil(self.refit_fraction * num_results))

    def _propose(self, job: Round) -> list[Candidate]:
        """The ``job.count`` first ascent candidates, each slot random with probability ``epsilon``;
        random architectures fill in when the ascent finds too few."""
        batch: dict[str, ArchGraph] = {}      # by graph key, in the order taken
        for graph, _ in self._ascent(job):
            if len(batch) >= job.count:
                break
            if job.rng.uniform() < self.epsilon:
                graph = self._random_candidate(job.rng, job.seen)
                if graph is None:
                    continue
            batch.setdefault(graph.key(), graph)
        while len(batch) < job.count:
            graph = self._random_candidate(job.rng, job.seen)
            if graph is None:
                break
            batch.setdefault(graph.key(), graph)
        return list(batch.values())

    # ------------------------------------------------------------------------------------------------
    # Surrogate
    # ------------------------------------------------------------------------------------------------
    def _new_model(self, seed: int) -> DirectedGNN:
        generator = torch.Generator().manual_seed(seed)
        return DirectedGNN(len(self.view.op_vocab), self.hidden, self.num_layers, self.ensemble, generator)

    def _encode(self, graphs: list[ArchGraph], positions: list[list[int]] | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
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

    def _fit(self, job: Round) -> None:
        """Train the surrogate on the finished trials, unless nothing has finished since the last fit
        (every step on all of them, or on ``fit_size`` of them beyond; see "Long searches")."""
        history = job.history
        if self._model is not None and len(history) <= self._fitted_on:
            return
        start = time.perf_counter()
        graphs = [g for g, _, _ in history]
        y_np = np.array([m for _, _, m in history], dtype=np.float64)
        record: dict[str, Any] = {"round": self._round, "num_evaluated": len(graphs)}
        if self._model is not None:
            pred = self.predict(graphs[self._fitted_on:])
            self._heldout_pred.extend(pred.tolist())
            self._heldout_true.extend(y_np[self._fitted_on:].tolist())
            record["kendall_tau"] = _tau(pred, y_np[self._fitted_on:])
            record["kendall_tau_all"] = _tau(np.array(self._heldout_pred), np.array(self._heldout_true))
            record["num_heldout"] = len(graphs) - self._fitted_on
            record["num_heldout_all"] = len(self._heldout_true)
        if self._model is None or self._round % self.reinit_every == 0:
            self._model = self._new_model(int(job.rng.randint(2 ** 31 - 1)))
        A, X = self._encode(graphs)
        y = torch.from_numpy(y_np)
        better = (y[:, None] > y[None, :]).to(torch.float32)
        params = list(self._model.parameters())
        adam = _Adam(params, self.lr, self.weight_decay)
        best = np.argsort(-y_np, kind="stable")
        for _ in range(self.epochs):
            if len(graphs) <= self.fit_size:
                scores, pairs = self._model(A, X), better
            else:   # the fit_size // 4 best and a fresh draw of the others
                top = self.fit_size // 4
                rest = job.rng.choice(best[top:], self.fit_size - top, replace=False)
                index = torch.from_numpy(np.concatenate([best[:top], rest]))
                scores, pairs = self._model(A[index], X[index]), better[index][:, index]
            # members are independent: summing their losses trains each on its own loss
            loss = _pairwise_loss(scores, pairs, self.loss, self.margin).sum()
            grads = torch.autograd.grad(loss, params)
            adam.step(grads)
        self._fitted_on = len(graphs)
        self._round += 1
        record["train_loss"] = float(loss.detach()) / self.ensemble
        record["seconds"] = time.perf_counter() - start
        self.model_history.append(record)
        _logger.info("GOAL surrogate refit %d on %d archs: loss %.4f, held-out Kendall tau %s (all %s)",
                     record["round"], len(graphs), record["train_loss"],
                     _fmt(record.get("kendall_tau")), _fmt(record.get("kendall_tau_all")))

    # ------------------------------------------------------------------------------------------------
    # Proximal gradient ascent
    # ------------------------------------------------------------------------------------------------
    def _starts(self, job: Round) -> list[ArchGraph]:
        """Start points of the ascent: the ``top_k`` best architectures, running ones counted at
        their believed metric (:meth:`_believed`; an evaluated one first on a tie), then
        ``random_starts`` random ones."""
        ranked = [(metric, graph) for graph, _, metric in job.history]
        if job.pending and self.top_k:
            ranked += zip(self._believed(job).tolist(), job.pending)
        order = sorted(range(len(ranked)), key=lambda i: -ranked[i][0])
        starts = [ranked[i][1] for i in order[:self.top_k]]
        for _ in range(self.random_starts):
            starts.append(self.view.to_graph(self.view.random_sample(job.rng)))
        return starts

    def _believed(self, job: Round) -> np.ndarray:
        """Kriging believer for a ranking surrogate: each running architecture's metric is believed
        to be the one at its predicted score's rank among the evaluated architectures."""
        scores = np.sort(self.predict([graph for graph, _, _ in job.history]))
        metrics = np.sort([metric for _, _, metric in job.history])
        return np.interp(self.predict(job.pending), scores, metrics)

    def _ascent(self, job: Round) -> list[tuple[ArchGraph, int]]:
        """Candidates (valid, never proposed) visited by proximal ascent, each with the index (in
        :meth:`_starts`) of the start it is taken for. Best predicted first when no trial is running;
        otherwise in turns over the starts: each start's best predicted, starts ordered by it, then
        each one's second best, and so on."""
        starts = self._starts(job)
        A0, X0 = self._encode(starts)
        ZA, ZX = A0.numpy().astype(np.float64), X0.numpy().astype(np.float64)
        layout = [self.view.default_positions(g.num_nodes) for g in starts]
        edge_mask = torch.from_numpy(self.view.edge_mask()).to(torch.float32)
        op_mask = torch.from_numpy(self.view.op_mask()).to(torch.float32)
        candidates: dict[str, ArchGraph] = {}
        paths: list[list[str]] = [[] for _ in starts]       # per start, the candidates it met, in order
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
                if key not in job.seen and key not in paths[s]:
                    candidates.setdefault(key, graph)
                    paths[s].append(key)
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
        keys = list(candidates)
        score = dict(zip(keys, self.predict([candidates[k] for k in keys]).tolist()))
        ranks = {k: i for i, k in enumerate(sorted(keys, key=lambda k: -score[k]))}   # stable: met first wins
        turns = sorted(((sorted(path, key=ranks.__getitem__), s) for s, path in enumerate(paths) if path),
                       key=lambda entry: ranks[entry[0][0]])
        order: dict[str, int] = {}
        if not job.pending:
            for path, s in turns:
                for key in path:
                    order.setdefault(key, s)
            return [(candidates[k], order[k]) for k in sorted(order, key=ranks.__getitem__)]
        for turn in range(max(len(path) for path, _ in turns)):
            for path, s in turns:
                if turn < len(path):
                    order.setdefault(path[turn], s)
        return [(candidates[k], s) for k, s in order.items()]

    # ------------------------------------------------------------------------------------------------
    # Checkpointing
    # ------------------------------------------------------------------------------------------------
    def _model_state(self) -> dict:
        return {
            "surrogate": None if self._model is None else
            {k: v.detach().clone() for k, v in self._model.state_dict().items()},
            "fitted_on": self._fitted_on,
            "round": self._round,
            "heldout": (list(self._heldout_pred), list(self._heldout_true)),
        }

    def _load_model_state(self, state: dict) -> None:
        if state["surrogate"] is None:
            self._model = None
        else:
            self._model = self._new_model(0)
            self._model.load_state_dict(state["surrogate"])
        self._fitted_on = int(state["fitted_on"])
        self._round = int(state["round"])
        self._heldout_pred, self._heldout_true = (list(v) for v in state["heldout"])


def _tau(pred: np.ndarray, true: np.ndarray) -> float | None:
    if len(pred) < 2 or np.ptp(true) == 0 or np.ptp(pred) == 0:
        return None
    tau = kendalltau(pred, true).statistic
    return float(tau) if np.isfinite(tau) else None


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"

