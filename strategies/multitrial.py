"""The base of the model-based multi-trial strategies (:class:`strategies.GOAL`, :class:`strategies.NASGEM`).

:class:`ModelBasedStrategy` keeps everything such a strategy needs besides its model: the
submission loop, the bookkeeping of trials (running, finished, failed, proposed again after a
resume), deduplication by graph, checkpoints and imported results, and where the model's rounds
run (on the thread that answers NNI, or in the background). A subclass supplies the model (how it is
fitted on finished trials) and the proposals (what it suggests from the fitted model).
"""
from __future__ import annotations

import contextlib
import inspect
import itertools
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Mapping, Union

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

__all__ = ["ModelBasedStrategy", "Candidate", "Round", "check_int", "check_float", "trial_budget"]

_logger = logging.getLogger(__name__)

#: A proposal: a sample of the space, or a graph (submitted as the view's ``to_sample`` of it).
Candidate = Union[ArchGraph, dict]

#: Random draws, and consecutive rejected proposals, after which a strategy stops looking.
MAX_TRIES = 1000


#: Largest seed (``numpy.random.RandomState`` takes 32-bit seeds).
MAX_SEED = 2 ** 32 - 1

#: Seconds between two looks at the engine while no worker is free (NNI's own loop waits 1 s).
POLL_SECONDS = 0.01


@dataclass(frozen=True)
class Round:
    """What one round of the model works on, taken under the lock when the round is asked for.

    Attributes
    ----------
    history
        The finished trials with a metric, as ``(graph, sample, metric)``, in arrival order.
    pending
        Graphs of the trials submitted and not finished: proposals made without their results, which
        a pending-aware subclass treats as known (see GOAL's and NASGEM's batch rules).
    seen
        Keys of every graph proposed or imported: no candidate may be one of them.
    count
        Number of candidates wanted.
    rng
        The random stream of the round: the strategy's own in a round on the proposing thread, the
        background thread's own otherwise, so that neither draws from the other's.
    """

    history: list[tuple[ArchGraph, dict, float]]
    pending: list[ArchGraph]
    seen: frozenset[str]
    count: int
    rng: np.random.RandomState


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
    - **Rounds of the model.** A round fits the model on the finished trials (when the subclass finds
      it due) and ranks candidates; proposals take the ranked candidates in order (the *queue*). With
      ``background_fit`` (below) rounds run on a background thread and a proposal is answered from the
      queue at once: results that arrive during a round wait for the next one. A free worker is
      noticed within :data:`POLL_SECONDS` (NNI's own loop looks once a second).
    - **Many trials at once.** Every round sees the trials still running (:class:`Round`'s
      ``pending``), so that proposals made before their results come back differ usefully (each
      subclass documents its batch rule), and a background round ranks enough candidates for every
      running trial's worker.
    - **Determinism.** One ``numpy.random.RandomState(seed)`` drives every random choice of the
      proposing thread and of its rounds, so a seed gives the same proposals for the same results;
      background rounds draw from a second stream seeded from ``seed``. Background rounds are
      deterministic too when nothing can happen while they run (:meth:`wait_idle`, which Protocol C
      of the benchmark calls before its simulated clock moves).
    - **Checked arguments.** The constructor checks every argument's type and range; the error names
      the strategy, the argument, the value and what is accepted (``GOAL: top_k must be >= 0, got
      -1``). An unknown keyword raises ``TypeError: GOAL() got an unexpected keyword
      argument 'x'``, listing the accepted ones.

    A subclass implements the model and its proposals through these hooks:

    - :meth:`_default_num_init`: the initial design size when the user gives none (the argument
      :attr:`init_argument` of the subclass is ``None``);
    - :meth:`_initial_design`: whether the next proposal is random (before the model is used; the
      initial design size in force is :attr:`_num_init`);
    - :meth:`_round_size`: how many proposals one round serves, given the number of results;
    - :meth:`_fit`: refit the model on a :class:`Round`'s finished trials (or decide that it is not due);
    - :meth:`_propose`: the round's ranked candidates from the current model;
    - :meth:`_model_state` / :meth:`_load_model_state`: the model's part of a checkpoint;

    and may override :meth:`_prepare` (work before the first proposal) and :meth:`_random_candidate`.
    The model hooks run outside the lock, on a :class:`Round` (a snapshot), so results keep arriving
    while the model works; ``_fit`` changes only the model and ``_propose`` only reads it, and only one
    round runs at a time. The strategy's torch work (``_prepare``, ``_fit``, ``_propose``) runs on
    ``num_threads`` threads.

    Parameters
    ----------
    background_fit
        Where rounds run. ``"auto"`` (default): a proposal takes the next queued candidate. When no
        other trial is running, a proposal that finds nothing queued runs a round on the proposing
        thread, so one trial at a time (NNI's ``SequentialExecutionEngine``, ``trial_concurrency``
        1) proposes exactly as a synchronous strategy: every proposal sees every result, as waiting
        costs nothing when no other trial runs. With other trials running, a proposal never waits
        for the model: a free worker is answered in milliseconds from the last round (which misses
        only the results that arrived since), or, when nothing is queued (the first model round),
        with a random architecture, and the round runs in the background after the proposal (when
        due). ``True``: rounds always run in the background, as with other trials running; a
        result starts the next round when it arrives, and :meth:`_prepare` (NASGEM's encoder
        pre-training) runs in the background too, while the initial design is proposed. The
        nnictl tuners use it, so that NNI's parameter requests never wait. ``False``: rounds always
        run on the proposing thread (deterministic whatever the engine's timing).
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

    def __init__(self, *, background_fit: bool | str = "auto", num_threads: int | None = 1, seed: int | None = None):
        super().__init__()
        owner = type(self).__name__
        if not (isinstance(background_fit, bool) or background_fit == "auto"):
            raise ValueError(f"{owner}: background_fit must be True, False or 'auto', got {background_fit!r}")
        self.background_fit = background_fit
        self.num_threads = check_int(owner, "num_threads", num_threads, minimum=1, optional=True)
        self.seed = check_int(owner, "seed", seed, maximum=MAX_SEED, optional=True)
        self.view: GraphView | None = None
        self.budget: int | None = None                         # trials in all, when the engine tells
        self._num_init = 0                                     # initial design size in force
        self._rng = np.random.RandomState(seed)
        self._background_rng = np.random.RandomState(None if seed is None else [seed, 1])
        self._lock = threading.RLock()
        self._model_lock = threading.Lock()                    # one round at a time
        self._planner = _Planner(self._background_round)       # the background thread, started on demand
        self._round_at = 0                                     # results when the last round was asked for
        # Finished trials with a metric, in arrival order: (graph, sample, metric).
        self._history: list[tuple[ArchGraph, dict, float]] = []
        self._failed: list[dict] = []                          # samples of trials without a metric
        self._seen: set[str] = set()                           # graph keys proposed (or imported) once
        # Submitted and not finished. Holding the model matters: NNI's training-service engine keeps
        # only weak references and drops the events of collected models.
        self._running: dict[str, ExecutableModelSpace] = {}
        self._resubmit: list[dict] = []                        # running at checkpoint time: proposed first
        self._queue: list[Candidate] = []                      # the model's last batch, not yet submitted
        self._deferred: Round | None = None                    # a round to start once the proposal is submitted
        self._num_submitted = 0                                # distinct trials submitted or imported
        #: One dict per refit of the model, describing its quality (``num_evaluated`` architectures
        #: fitted on, Kendall's tau on architectures it was not fitted on, ...; see the subclass).
        self.model_history: list[dict] = []
        #: Wall-clock seconds in the strategy: ``proposals`` (all proposal work on the proposing
        #: thread), ``rounds`` (fits and model proposals, on either thread), ``background`` (the part
        #: of ``rounds`` run in the background); and ``cpu``, the CPU seconds of the strategy's own
        #: work on every thread (proposals, rounds, ``_prepare``; ``time.thread_time``).
        self.timing: dict[str, float] = {"proposals": 0.0, "rounds": 0.0, "background": 0.0, "cpu": 0.0}
        #: Proposals that were random because nothing was queued while other trials ran (see
        #: ``background_fit``).
        self.random_fallbacks = 0

    # ------------------------------------------------------------------------------------------------
    # Hooks of a subclass
    # ------------------------------------------------------------------------------------------------
    def _prepare(self, rng: np.random.RandomState | None = None) -> None:
        """Work done once before the first model round (nothing by default), drawing from ``rng``
        (default: the strategy's own). With ``background_fit=True`` it runs in the background, on
        the background rounds' stream, while the initial design is proposed."""

    def _default_num_init(self) -> int:
        """The initial design size when the user gives none (called once the view is known)."""
        raise NotImplementedError

    def _initial_design(self) -> bool:
        """Whether the next proposal is a random architecture rather than the model's (called under the lock)."""
        raise NotImplementedError

    def _round_size(self, num_results: int) -> int:
        """Proposals one round serves when ``num_results`` trials have finished: a synchronous round
        ranks this many candidates, and a background round is due once this many new results have
        arrived (it ranks this many plus one per running trial)."""
        raise NotImplementedError

    def _fit(self, job: Round) -> None:
        """Refit the model on ``job.history``, the finished trials as ``(graph, sample, metric)``.

        It touches only the model, and draws only from ``job.rng``."""
        raise NotImplementedError

    def _propose(self, job: Round) -> list[Candidate]:
        """Up to ``job.count`` candidates, best first, none in ``job.seen``, from the current model;
        an empty list ends the search. Draws only from ``job.rng``."""
        raise NotImplementedError

    def _model_state(self) -> dict:
        """The model's part of :meth:`state_dict`."""
        raise NotImplementedError

    def _load_model_state(self, state: dict) -> None:
        """Restore what :meth:`_model_state` returned."""
        raise NotImplementedError

    def _random_candidate(self, rng: np.random.RandomState | None = None,
                          seen: frozenset[str] | set[str] | None = None) -> Candidate | None:
        """A random architecture not in ``seen`` (default: never proposed), drawn from ``rng`` (default:
        the strategy's own); ``None`` when none is found."""
        return self._random_unseen(rng, seen)

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
        self._planner.stop()
        self.engine.unregister_model_event_callback(ModelEventType.TrainingEnd, self._training_end_callback)

    def wait_for_resource(self) -> bool:
        """NNI's wait for a free worker (``False`` once the budget is spent), looking every
        :data:`POLL_SECONDS` instead of every second, so that a free worker gets its proposal at once."""
        while not self.engine.idle_worker_available():
            if not self.engine.budget_available():
                return False
            time.sleep(POLL_SECONDS)
        return self.engine.budget_available()

    def wait_idle(self) -> None:
        """Return once no background round is running or asked for (at once without ``background_fit``).

        A simulation of long trials calls it before moving its clock
        (:class:`nni_plugins.simulated.SimulatedExecutionEngine`'s ``before_advance``)."""
        self._planner.wait_idle()

    def _run(self) -> None:
        if self.background_fit is True:
            self._planner.start(self._background_prepare)
        else:
            cpu = time.thread_time()
            with self._torch_threads():
                self._prepare(self._rng)
            self.timing["cpu"] += time.thread_time() - cpu
        while self.wait_for_resource():
            start, cpu = time.perf_counter(), time.thread_time()
            model = self._next_model(defer_round=True)
            self.timing["proposals"] += time.perf_counter() - start
            self.timing["cpu"] += time.thread_time() - cpu
            if model is None:
                _logger.warning("%s: no new architecture can be proposed (space exhausted?); stopping.",
                                type(self).__name__)
                break
            _logger.debug("%s: proposal %d: %s", type(self).__name__, self._num_submitted, model.sample)
            self.engine.submit_models(model)
            job, self._deferred = self._deferred, None
            if job is not None:
                self._planner.submit(job)
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
            job = self._background_job() if self.background_fit is True else None
        if job is not None:    # the next round starts now, not at the next proposal
            self._planner.submit(job)

    # ------------------------------------------------------------------------------------------------
    # Proposals
    # ------------------------------------------------------------------------------------------------
    def _next_model(self, defer_round: bool = False) -> ExecutableModelSpace | None:
        """The next architecture, frozen and recorded as running; ``None`` when none can be found.
        Asks for a background round afterwards when one is due (see ``background_fit``); with
        ``defer_round``, the round is left in ``_deferred`` for the caller to start once the model
        is submitted, so that the round's thread does not slow the submission down."""
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
                job = self._background_job()
            if job is not None and defer_round:
                self._deferred = job
            elif job is not None:
                self._planner.submit(job)
            return model
        return None

    def _next_candidate(self) -> Candidate | None:
        """Trials to propose again first, then the initial design, then the queue, then a new round
        on this thread (or, in the background mode in force, a random architecture)."""
        with self._lock:
            self._planner.raise_error(type(self).__name__)
            if self._resubmit:
                return self._resubmit.pop(0)
            initial = self._initial_design()
            if not initial and self._queue:
                return self._queue.pop(0)
            if not initial and (self.background_fit is True or (self.background_fit == "auto" and self._running)):
                self.random_fallbacks += 1      # never wait for a round: _next_model asks for one
                initial = True
        if initial:
            return self._random_candidate()
        self._planner.wait_idle()
        with self._model_lock:
            with self._lock:
                if self._queue:         # filled by the background round just waited for
                    return self._queue.pop(0)
                job = self._snapshot(self._round_size(len(self._history)), self._rng)
            batch = self._run_round(job)
        with self._lock:
            self._queue = batch
            return self._queue.pop(0) if self._queue else None

    def _snapshot(self, count: int, rng: np.random.RandomState) -> Round:
        """A :class:`Round` of the current trials (called under the lock)."""
        self._round_at = len(self._history)
        pending = [self.view.to_graph(model.sample) for model in self._running.values()]
        return Round(list(self._history), pending, frozenset(self._seen), count, rng)

    def _run_round(self, job: Round) -> list[Candidate]:
        """Fit, then propose (called holding the model lock)."""
        start = time.perf_counter()
        with self._torch_threads():
            self._fit(job)
            batch = self._propose(job)
        self.timing["rounds"] += time.perf_counter() - start
        return batch

    def _background_job(self) -> Round | None:
        """After a proposal (under the lock): the round to run in the background, if one is due.

        Only in the background mode in force (``True``, or ``"auto"`` with other trials running), after
        the initial design, when ``_round_size`` new results have arrived since the last round or the
        queue holds fewer candidates than there are running trials."""
        others = len(self._running) > 1
        if not (self.background_fit is True or (self.background_fit == "auto" and others)) or self._initial_design():
            return None
        num_results = len(self._history)
        size = self._round_size(num_results)
        queued = sum(self._key(c) not in self._seen for c in self._queue)
        if num_results - self._round_at < size and queued >= len(self._running):
            return None
        return self._snapshot(size + len(self._running), self._background_rng)

    def _background_round(self, job: Round) -> None:
        """Run ``job`` on the background thread and make its candidates the queue."""
        start, cpu = time.perf_counter(), time.thread_time()
        with self._model_lock:
            batch = self._run_round(job)
            with self._lock:
                self._queue = [c for c in batch if self._key(c) not in self._seen]
        self.timing["background"] += time.perf_counter() - start
        self.timing["cpu"] += time.thread_time() - cpu

    def _background_prepare(self) -> None:
        """``_prepare`` on the background thread, before its first round."""
        cpu = time.thread_time()
        with self._model_lock, self._torch_threads():
            self._prepare(self._background_rng)
        self.timing["cpu"] += time.thread_time() - cpu

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

    def _random_unseen(self, rng: np.random.RandomState | None = None,
                       seen: frozenset[str] | set[str] | None = None) -> dict | None:
        """A random sample (from ``rng``, default the strategy's own) whose graph is not in ``seen``
        (default: never proposed); ``None`` after :data:`MAX_TRIES` draws."""
        rng = self._rng if rng is None else rng
        seen = self._seen if seen is None else seen
        for _ in range(MAX_TRIES):
            sample = self.view.random_sample(rng)
            if self.view.to_graph(sample).key() not in seen:
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
        with self._model_lock, self._lock:
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
        with self._model_lock, self._lock:
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


class _Planner:
    """The background thread of a strategy's rounds: runs the latest round asked for (a newer request
    replaces one not yet started), one at a time; an error is kept and raised on the proposing thread."""

    def __init__(self, work: Callable[[Round], None]):
        self._work = work
        self._cv = threading.Condition()
        self._job: Round | None = None
        self._busy = False
        self._stopped = False
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None

    def start(self, first: Callable[[], None]) -> None:
        """Start the thread with ``first``, which runs before any round (``wait_idle`` waits for it)."""
        with self._cv:
            self._busy = True
            self._thread = threading.Thread(target=self._loop, args=(first,), name="model-rounds", daemon=True)
            self._thread.start()

    def submit(self, job: Round) -> None:
        with self._cv:
            if self._stopped:
                return
            self._job = job
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="model-rounds", daemon=True)
                self._thread.start()
            self._cv.notify_all()

    def wait_idle(self) -> None:
        with self._cv:
            self._cv.wait_for(lambda: not self._busy and self._job is None)

    def raise_error(self, owner: str) -> None:
        if self._error is not None:
            raise RuntimeError(f"{owner}: a background round of the model failed: {self._error!r}") from self._error

    def stop(self) -> None:
        with self._cv:
            self._stopped = True
            self._job = None
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join()

    def _loop(self, first: Callable[[], None] | None = None) -> None:
        if first is not None:
            self._guarded(first)
        while True:
            with self._cv:
                self._cv.wait_for(lambda: self._job is not None or self._stopped)
                if self._stopped:
                    return
                job, self._job, self._busy = self._job, None, True
            self._guarded(self._work, job)

    def _guarded(self, work: Callable[..., None], *args: Any) -> None:
        """Run ``work(*args)`` (while ``_busy``), keeping an error, then mark the thread idle."""
        try:
            work(*args)
        except Exception as err:   # surfaced by the next proposal
            _logger.exception("A background round of the model failed")
            self._error = err
        finally:
            with self._cv:
                self._busy = False
                self._cv.notify_all()
