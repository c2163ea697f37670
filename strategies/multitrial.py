"""The base of the model-based multi-trial strategies (:class:`strategies.GOAL`, :class:`strategies.NASGEM`).

:class:`ModelBasedStrategy` keeps everything such a strategy needs besides its model: the
submission loop, the bookkeeping of trials (running, finished, failed, proposed again after a
resume), deduplication by graph, checkpoints and imported results. A subclass supplies the model
(how it is fitted on finished trials) and the proposals (what it suggests from the fitted model).
"""
from __future__ import annotations

import contextlib
import inspect
import itertools
import logging
import threading
import time
from typing import Any, Iterable, Iterator, Mapping, Union

import numpy as np
import torch

import nni_compat  # noqa: F401  (the NNI 3.0 fixes, bottom layer)
from nni.mutable.exception import SampleValidationError
from nni.nas.execution import ExecutionEngine, SequentialExecutionEngine, TrainingServiceExecutionEngine
from nni.nas.execution.engine import Middleware
from nni.nas.execution.event import ModelEvent, ModelEventType
from nni.nas.space import ExecutableModelSpace
from nni.nas.strategy.base import Strategy

from search_spaces.graph import ArchGraph, GraphView, InvalidGraph, graph_view

from ._checks import check_number, unexpected_keyword
from .metrics import ranked_models, scalar_metric

__all__ = ["ModelBasedStrategy", "Candidate", "check_int", "check_float", "trial_budget"]

_logger = logging.getLogger(__name__)

#: A proposal: a sample of the space, or a graph (submitted as the view's ``to_sample`` of it).
Candidate = Union[ArchGraph, dict]

#: Random draws, and consecutive rejected proposals, after which a strategy stops looking.
MAX_TRIES = 1000


#: Largest seed (``numpy.random.RandomState`` takes 32-bit seeds).
MAX_SEED = 2 ** 32 - 1


def check_int(owner: str, name: str, value: Any, **spec: Any) -> int | None:
    """``value`` as an ``int`` after :func:`strategies._checks.check_number` (``spec``: its range and
    ``optional``), which raises an error naming ``owner``, ``name``, the value and the accepted range."""
    check_number(owner, name, value, integer=True, **spec)
    return None if value is None else int(value)


def check_float(owner: str, name: str, value: Any, **spec: Any) -> float:
    """``value`` as a ``float`` after :func:`strategies._checks.check_number` (``spec``: its range)."""
    check_number(owner, name, value, **spec)
    return float(value)


def trial_budget(engine: ExecutionEngine) -> int | None:
    """The number of trials ``engine`` (under its middlewares) runs in all, when it tells: the
    ``max_model_count`` of a ``SequentialExecutionEngine``, the experiment's ``max_trial_number`` on
    NNI's training services; ``None`` otherwise (no limit, or an engine that does not know it, as the
    nnictl tuner's, whose budget only NNI's manager knows)."""
    while isinstance(engine, Middleware):
        engine = engine.engine
    if isinstance(engine, SequentialExecutionEngine):
        budget = engine.max_model_count
    elif isinstance(engine, TrainingServiceExecutionEngine):
        budget = engine.nodejs_binding.config.max_trial_number
    else:
        return None
    return budget if isinstance(budget, int) and budget > 0 else None


def _dump_candidate(candidate: Candidate) -> dict:
    if isinstance(candidate, ArchGraph):
        return {"graph": (candidate.adjacency.tolist(), list(candidate.ops))}
    return {"sample": dict(candidate)}


def _load_candidate(entry: Mapping[str, Any]) -> Candidate:
    if "graph" in entry:
        adjacency, ops = entry["graph"]
        return ArchGraph(np.array(adjacency), tuple(ops))
    return dict(entry["sample"])


class ModelBasedStrategy(Strategy):
    """Base class of multi-trial strategies that fit a model on finished trials and propose from it.

    The strategy sees every architecture through the graph view of the space
    (:func:`search_spaces.graph.graph_view`) and behaves as follows:

    - **One query, one architecture.** Proposals are deduplicated by graph
      (:meth:`search_spaces.graph.ArchGraph.key`): a graph proposed once, or imported, is never
      proposed again. A proposal the space rejects (``InvalidGraph``, ``SampleValidationError``) is
      skipped and the next one is tried.
    - **Results in any order.** Proposals never wait for a particular trial: each round of the model
      uses whatever has finished. A trial that ends without a metric, or whose metric (a dict's
      ``'default'``) is not a finite number (NaN, ``±inf``), is logged once as a warning naming its
      sample and value, recorded as failed and never proposed again: it never joins the history the
      model is fitted on, and :meth:`list_models` (hence ``export_top_models``) never lists it.
    - **Initial design and budget.** The first ``n_init`` architectures (the subclass's argument) are
      random; the model proposes the others. When the engine tells the budget (:func:`trial_budget`:
      the experiment's ``max_trial_number``, a ``SequentialExecutionEngine``'s ``max_model_count``)
      and the initial design is more than half of it, a default initial design is shrunk to
      ``max(2, budget // 2)`` with a warning, so that the model proposes the rest; one given
      explicitly is kept, with a warning that the model gets few trials or none. With an unknown
      budget, or one at least twice the initial design, nothing changes. The size in force is part of
      the checkpoint, so a resumed search keeps it.
    - **Checkpoints.** :meth:`state_dict` holds the finished, failed, running and proposed trials, the
      pending proposals, the random state and the model's state, so a resumed experiment
      (``NasExperiment.resume``) goes on without repeating finished trials. Trials still running at
      checkpoint time are proposed again first; on NNI's training services such a proposal joins the
      trial the resumed manager re-runs (or receives its result if that trial has ended).
    - **Imported results.** :meth:`import_results` adds trials the strategy did not submit.
    - **Determinism.** One ``numpy.random.RandomState(seed)`` drives every random choice, so a seed
      gives the same proposals for the same results.
    - **Checked arguments.** The constructor checks every argument's type and range; the error names
      the strategy, the argument, the value and what is accepted (``GOAL: top_k must be >= 0, got
      -1``). An unknown keyword raises ``TypeError: GOAL() got an unexpected keyword
      argument 'x'``, listing the accepted ones.

    A subclass implements the model and its proposals through these hooks:

    - :meth:`_default_num_init`: the initial design size when the user gives none (the argument
      :attr:`init_argument` of the subclass is ``None``);
    - :meth:`_initial_design`: whether the next proposal is random (before the model is used; the
      initial design size in force is :attr:`_num_init`);
    - :meth:`_fit`: refit the model on the finished trials;
    - :meth:`_propose`: the next batch of candidates from the current model;
    - :meth:`_model_state` / :meth:`_load_model_state`: the model's part of a checkpoint;

    and may override :meth:`_prepare` (work before the first proposal) and :meth:`_random_candidate`.
    The model hooks run outside the lock, on a snapshot of the finished trials, so results keep
    arriving while the model works; ``_fit`` changes only the model and ``_propose`` only reads it.
    The strategy's torch work (``_prepare``, ``_fit``, ``_propose``) runs on ``num_threads`` threads.

    Parameters
    ----------
    num_threads
        Torch intra-op threads while the strategy fits its model and proposes (restored afterwards).
        The models are small: on a shared CPU, more threads cost more time than they save. ``None``
        leaves torch's setting alone.
    seed
        Random seed in ``[0, 2**32 - 1]`` (``None``: drawn from NumPy's global generator).
    """

    #: The subclass's argument (an attribute) giving the initial design size; ``None``: the default.
    init_argument = "n_init"

    def __new__(cls, *args: Any, **kwargs: Any):
        accepted = [p.name for p in inspect.signature(cls.__init__).parameters.values()
                    if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self"]
        for name in kwargs:
            if name not in accepted:
                raise unexpected_keyword(cls.__name__, name, accepted)
        return super().__new__(cls)

    def __init__(self, *, num_threads: int | None = 1, seed: int | None = None):
        super().__init__()
        owner = type(self).__name__
        self.num_threads = check_int(owner, "num_threads", num_threads, minimum=1, optional=True)
        self.seed = check_int(owner, "seed", seed, maximum=MAX_SEED, optional=True)
        self.view: GraphView | None = None
        self.budget: int | None = None                         # trials in all, when the engine tells
        self._num_init = 0                                     # initial design size in force
        self._rng = np.random.RandomState(seed)
        self._lock = threading.RLock()
        # Finished trials with a metric, in arrival order: (graph, sample, metric).
        self._history: list[tuple[ArchGraph, dict, float]] = []
        self._failed: list[dict] = []                          # samples of trials without a metric
        self._seen: set[str] = set()                           # graph keys proposed (or imported) once
        # Submitted and not finished. Holding the model matters: NNI's training-service engine keeps
        # only weak references and drops the events of collected models.
        self._running: dict[str, ExecutableModelSpace] = {}
        self._resubmit: list[dict] = []                        # running at checkpoint time: proposed first
        self._queue: list[Candidate] = []                      # the model's last batch, not yet submitted
        self._num_submitted = 0                                # distinct trials submitted or imported
        #: One dict per refit of the model, describing its quality (``num_evaluated`` architectures
        #: fitted on, Kendall's tau on architectures it was not fitted on, ...; see the subclass).
        self.model_history: list[dict] = []
        #: Wall-clock seconds in the strategy: ``proposals`` (all proposal work), ``rounds`` (fits and
        #: model proposals).
        self.timing: dict[str, float] = {"proposals": 0.0, "rounds": 0.0}

    # ------------------------------------------------------------------------------------------------
    # Hooks of a subclass
    # ------------------------------------------------------------------------------------------------
    def _prepare(self) -> None:
        """Work done once before the first proposal (nothing by default)."""

    def _default_num_init(self) -> int:
        """The initial design size when the user gives none (called once the view is known)."""
        raise NotImplementedError

    def _initial_design(self) -> bool:
        """Whether the next proposal is a random architecture rather than the model's (called under the lock)."""
        raise NotImplementedError

    def _fit(self, history: list[tuple[ArchGraph, dict, float]]) -> None:
        """Refit the model on ``history``, the finished trials as ``(graph, sample, metric)``.

        It touches only the model, so that it could run apart from the proposals."""
        raise NotImplementedError

    def _propose(self, history: list[tuple[ArchGraph, dict, float]]) -> list[Candidate]:
        """The next candidates, best first, from the current model; an empty list ends the search.
        Candidates already proposed are skipped when submitted."""
        raise NotImplementedError

    def _model_state(self) -> dict:
        """The model's part of :meth:`state_dict`."""
        raise NotImplementedError

    def _load_model_state(self, state: dict) -> None:
        """Restore what :meth:`_model_state` returned."""
        raise NotImplementedError

    def _random_candidate(self) -> Candidate | None:
        """A random architecture never proposed (``None`` when none is found)."""
        return self._random_unseen()

    # ------------------------------------------------------------------------------------------------
    # NNI strategy hooks
    # ------------------------------------------------------------------------------------------------
    def _initialize(self, model_space: ExecutableModelSpace, engine: ExecutionEngine) -> ExecutableModelSpace:
        self.view = graph_view(model_space)
        self.budget = trial_budget(engine)
        self._num_init = self._fit_initial_design(getattr(self, self.init_argument))
        engine.register_model_event_callback(ModelEventType.TrainingEnd, self._training_end_callback)
        return model_space

    def _fit_initial_design(self, requested: int | None) -> int:
        """The initial design size in force: ``requested``, or the default shrunk to fit the budget
        (see the class documentation); warns when it is more than half the budget."""
        size = self._default_num_init() if requested is None else requested
        cap = max(2, self.budget // 2) if self.budget is not None else size
        if size <= cap:
            return size
        name, arg = type(self).__name__, self.init_argument
        if requested is not None:
            _logger.warning("%s: %s=%d random architectures first leave the model %d of the budget of %d trials; "
                            "kept as given (by default the initial design is at most half the budget).",
                            name, arg, size, max(0, self.budget - size), self.budget)
            return size
        _logger.warning("%s: a budget of %d trials is too small for the default %s=%d random architectures first "
                        "(the model would propose %d); %s shrunk to %d (half the budget, at least 2), so that the "
                        "model proposes the rest. Give %s to choose.", name, self.budget, arg, size,
                        max(0, self.budget - size), arg, cap, arg)
        return cap

    def _cleanup(self) -> None:
        self.engine.unregister_model_event_callback(ModelEventType.TrainingEnd, self._training_end_callback)

    def _run(self) -> None:
        with self._torch_threads():
            self._prepare()
        while self.wait_for_resource():
            start = time.perf_counter()
            model = self._next_model()
            self.timing["proposals"] += time.perf_counter() - start
            if model is None:
                _logger.warning("%s: no new architecture can be proposed (space exhausted?); stopping.",
                                type(self).__name__)
                break
            _logger.debug("%s: proposal %d: %s", type(self).__name__, self._num_submitted, model.sample)
            self.engine.submit_models(model)
        self.engine.wait_models()

    def _training_end_callback(self, event: ModelEvent) -> None:
        """Learn from a finished trial: its metric joins the history, or it is recorded as failed."""
        name, sample = type(self).__name__, event.model.sample
        try:
            graph = self.view.to_graph(sample)
        except (KeyError, TypeError, ValueError):
            _logger.warning("%s: ignoring a model that is not from this space: %s", name, sample)
            return
        with self._lock:
            if self._running.pop(graph.key(), None) is None:
                _logger.warning("%s: ignoring a model it did not submit: %s", name, sample)
                return
            metric = scalar_metric(event.model.metric)
            if metric is None:
                if event.model.metric is None:
                    _logger.warning("%s: trial %s ended with status %s and no metric; recorded as failed.",
                                    name, sample, event.status)
                else:
                    _logger.warning("%s: trial %s ended with metric %r, not a finite number; recorded as failed.",
                                    name, sample, event.model.metric)
                self._failed.append(dict(sample))
                return
            self._history.append((graph, dict(sample), metric))
            _logger.info("%s: [%d] metric %.6g for %s", name, len(self._history), metric, sample)

    # ------------------------------------------------------------------------------------------------
    # Proposals
    # ------------------------------------------------------------------------------------------------
    def _next_model(self) -> ExecutableModelSpace | None:
        """The next architecture, frozen and recorded as running; ``None`` when none can be found."""
        for _ in range(MAX_TRIES):
            candidate = self._next_candidate()
            if candidate is None:
                return None
            with self._lock:
                key = self._key(candidate)
                if key in self._seen:
                    continue
                self._seen.add(key)
            try:
                sample = self.view.to_sample(candidate) if isinstance(candidate, ArchGraph) else candidate
                model = self.model_space.freeze(sample)
            except (InvalidGraph, SampleValidationError) as err:
                _logger.debug("%s: rejected invalid proposal %s: %s", type(self).__name__, candidate, err)
                continue
            with self._lock:
                self._running[key] = model
                self._num_submitted += 1
            return model
        return None

    def _next_candidate(self) -> Candidate | None:
        """Trials to propose again first, then the initial design, then the model's batches."""
        with self._lock:
            if self._resubmit:
                return self._resubmit.pop(0)
            initial = self._initial_design()
            if not initial and self._queue:
                return self._queue.pop(0)
        if initial:
            return self._random_candidate()
        start = time.perf_counter()
        batch = self._next_batch()
        self.timing["rounds"] += time.perf_counter() - start
        with self._lock:
            self._queue = batch
            return self._queue.pop(0) if self._queue else None

    def _next_batch(self) -> list[Candidate]:
        """One round of the model: fit on the finished trials, then propose."""
        with self._lock:
            history = list(self._history)
        with self._torch_threads():
            self._fit(history)
            return self._propose(history)

    @contextlib.contextmanager
    def _torch_threads(self) -> Iterator[None]:
        """Run the block on ``num_threads`` torch threads, restoring the setting after."""
        if self.num_threads is None:
            yield
            return
        previous = torch.get_num_threads()
        torch.set_num_threads(self.num_threads)
        try:
            yield
        finally:
            torch.set_num_threads(previous)

    def _random_unseen(self) -> dict | None:
        """A random sample whose graph was never proposed (``None`` after :data:`MAX_TRIES` draws)."""
        for _ in range(MAX_TRIES):
            sample = self.view.random_sample(self._rng)
            if self.view.to_graph(sample).key() not in self._seen:
                return sample
        return None

    def _key(self, candidate: Candidate) -> str:
        graph = candidate if isinstance(candidate, ArchGraph) else self.view.to_graph(candidate)
        return graph.key()

    # ------------------------------------------------------------------------------------------------
    # Results, imports and checkpoints
    # ------------------------------------------------------------------------------------------------
    @property
    def evaluated(self) -> list[tuple[dict, float]]:
        """``(sample, metric)`` of every finished trial with a metric, in arrival order."""
        with self._lock:
            return [(dict(s), m) for _, s, m in self._history]

    def import_results(self, results: Iterable[tuple[Mapping[str, Any], float | None]]) -> int:
        """Record trials this strategy did not submit (the nnictl tuner passes on those NNI hands it
        on ``nnictl resume`` and ``nnictl experiment import``).

        Each ``(sample, metric)`` joins the history the model is fitted on, counts towards the initial
        design and is never proposed again; a metric of ``None`` marks a trial still running elsewhere
        (re-run by a resumed experiment): it is not proposed, and its metric may be imported later. A
        metric that is not a finite number (NaN, ``±inf``; a dict's ``'default'``) marks a failed trial,
        with a warning. A sample with a metric already, or submitted by this strategy, is left alone;
        one outside the space is skipped with a warning. Call it after ``initialize``. Returns how
        many metrics were recorded."""
        name = type(self).__name__
        if self.view is None:
            raise RuntimeError(f"{name}.import_results must be called after initialize()")
        added = 0
        with self._lock:
            known = {graph.key() for graph, _, _ in self._history} | set(self._running)
            for sample, metric in results:
                try:
                    graph = self.view.to_graph(sample)
                except (KeyError, ValueError) as err:
                    _logger.warning("%s: imported result for %s skipped: %s", name, sample, err)
                    continue
                key = graph.key()
                if key in known:
                    continue
                if key not in self._seen:
                    self._seen.add(key)
                    self._num_submitted += 1
                if metric is None:
                    continue
                value = scalar_metric(metric)
                if value is None:
                    _logger.warning("%s: imported result for %s has metric %r, not a finite number; recorded as "
                                    "failed.", name, sample, metric)
                    self._failed.append(dict(sample))
                    continue
                known.add(key)
                self._history.append((graph, dict(sample), value))
                added += 1
        return added

    def list_models(self, sort: bool = True, limit: int | None = None) -> Iterator[ExecutableModelSpace]:
        """NNI's listing of the engine's models, except that ``sort`` ranks the trained models by
        :func:`strategies.metrics.scalar_metric` (:func:`strategies.metrics.ranked_models`): a trial
        whose metric is NaN or infinite is left out, so it is never exported as the best."""
        models = super().list_models(sort=False)
        yield from itertools.islice(ranked_models(models) if sort else models, limit)

    def state_dict(self) -> dict:
        with self._lock:
            return {
                "history": [(dict(s), m) for _, s, m in self._history],
                "failed": [dict(s) for s in self._failed],
                "seen": sorted(self._seen),
                "running": [dict(m.sample) for m in self._running.values()] + [dict(s) for s in self._resubmit],
                "queue": [_dump_candidate(c) for c in self._queue],
                "num_submitted": self._num_submitted,
                "num_init": self._num_init,
                "random_state": self._rng.get_state(),
                "model_history": [dict(r) for r in self.model_history],
                "model": self._model_state(),
            }

    def load_state_dict(self, state_dict: dict) -> None:
        name = type(self).__name__
        if self.view is None:
            raise RuntimeError(f"{name}.load_state_dict must be called after initialize() (NasExperiment does this)")
        with self._lock:
            self._history = [(self.view.to_graph(s), dict(s), float(m)) for s, m in state_dict["history"]]
            self._failed = [dict(s) for s in state_dict["failed"]]
            running = [dict(s) for s in state_dict["running"]]
            if running:
                _logger.info("%s: %d trials were running at checkpoint time; they are proposed again first "
                             "(each joins the trial the resumed NNI manager re-runs, or receives its result if it "
                             "has ended).", name, len(running))
            self._seen = set(state_dict["seen"]) - {self._key(s) for s in running}
            self._running = {}
            self._resubmit = running
            self._queue = [_load_candidate(c) for c in state_dict["queue"]]
            self._num_submitted = int(state_dict["num_submitted"]) - len(running)
            self._num_init = int(state_dict.get("num_init", self._num_init))   # absent from older checkpoints
            self._rng.set_state(state_dict["random_state"])
            self.model_history = [dict(r) for r in state_dict["model_history"]]
            self._load_model_state(state_dict["model"])
