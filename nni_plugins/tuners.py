"""GOAL and NASGEM as ``nnictl`` tuners (``tuner: {name: GOAL, classArgs: {...}}``).

The tuner faces do not re-implement the algorithms: each runs the NNI strategy of
:mod:`strategies` (in a background thread) against :class:`TunerEngine`, a small NNI
``ExecutionEngine`` that turns the strategy's ``submit_models`` into the parameters NNI's dispatcher
asks for through :meth:`~nni.tuner.Tuner.generate_parameters`, and turns
:meth:`~nni.tuner.Tuner.receive_trial_result` / :meth:`~nni.tuner.Tuner.trial_end` into the
``TrainingEnd`` events the strategy learns from. Results may arrive in any order; a trial that ends
without a final metric becomes a ``Failed`` model (the strategies skip it), so nothing stalls.
A parameter request never waits for the strategy's model: GOAL and NASGEM run with
``background_fit=True`` (their refits, and NASGEM's encoder pre-training, run in the background;
see :class:`StrategyTuner`), and once NNI has asked for parameters the strategy keeps one
proposal ready for the next request (:class:`TunerEngine`).

Search space. The tuner reads NNI's search-space JSON (``searchSpaceFile``) of ``choice``
parameters, nested choices included (options that are dicts with a ``_name`` and their own
``choice`` parameters, NNI's nested format)::

    {"block": {"_type": "choice", "_value": [
        {"_name": "conv", "kernel": {"_type": "choice", "_value": [3, 5]}},
        {"_name": "pool"}]},
     "width": {"_type": "choice", "_value": [16, 32]}}

Every ``choice`` becomes an ``nni.mutable.Categorical`` (nested ones are labelled
``block/conv/kernel``), and the strategy explores that space through a graph view of
:mod:`search_spaces.graph`, chosen with the class argument ``space``:

``auto`` (default)
    :func:`search_spaces.graph.graph_view` decides from the labels.
``nasbench201``
    The six NAS-Bench-201 edges ``0_1 ... 2_3`` (op names in either spelling); an error names the
    mismatch when the file is not that space.
``nasbench101``
    A NAS-Bench-101 cell: ``num_nodes`` (a ``choice`` of ints, at most 7) and ``op1 ... op<N-2>``
    (``choice`` of op names). JSON cannot express multi-select, so the tuner adds the edge choices
    itself exactly as NNI's hub ``NasBench101`` does (``input<i>`` = any subset of ``0 .. i-1``, at
    most ``max_num_edges`` edges, pruned cells); the trial receives ``input<i>`` as lists.
``generic``
    One node per choice in a chain (any space of ``choice`` parameters).

Trials receive parameters in NNI's own format: ``{"block": {"_name": "conv", "kernel": 3},
"width": 16}`` (the sub-choices of inactive options are left out). Two samples that differ only in
inactive sub-choices give the same parameters; the tuner then runs one trial and gives its metric
to both, so no trial is spent twice on one configuration (the search's TensorBoard log below counts
both queries).

Class arguments are validated in ``__init__`` (NNI's v2 experiment configs never call a
``classArgsValidator``): ``optimize_mode`` (``maximize``/``minimize``), ``space`` (above),
``max_num_edges`` (``nasbench101`` only), ``tensorboard_dir``, and any keyword argument of the
strategy's constructor (e.g. ``n_init``, ``seed``), checked by the strategy itself. An unknown name
is a ``ValueError`` listing the accepted ones.

TensorBoard. The strategy runs chained with :class:`nni_plugins.tensorboard.TrialMetricsLogger`
(each trial's metric and architecture, best-so-far, failed trials, surrogate quality), writing to
``tensorboard_dir``; by default ``<experiment dir>/tensorboard/tuner`` (next to NNI's ``log/``
directory of the experiment), open it with ``tensorboard --logdir``. The trials' own logs (in
``$NNI_OUTPUT_DIR/tensorboard``) are what the web portal's TensorBoard button shows.

Trial scripts should ``import nni_plugins`` before ``nni.get_next_parameter()``. With
``trialConcurrency > 1`` NNI 3.0's local training service hands queued parameters to whichever
trial asks first; the trial then reports its metric under the parameter it really ran (which this
tuner pairs correctly) but NNI's trial-end event, the web portal and ``nnictl experiment export``
name the parameter recorded for the trial. The import applies the project's fix
(``nni_compat``, ``trial_runs_own_parameter``): every trial runs its recorded parameter.
Without it the experiment ends as ERROR at the first trial that ran another trial's parameter,
with a message saying what to add (``nni_compat``, ``mispaired_trial_ends_experiment``).

Resume. ``nnictl resume`` starts a new tuner; NNI's manager hands it the finished trials of the
experiment (:meth:`StrategyTuner.import_data`, which ``nnictl experiment import`` uses as well) and
the trials it re-runs (:meth:`StrategyTuner.import_running`, through the project's fix
``resumed_trials_reach_tuner``). The strategy learns from the former, proposes neither again, and
records the re-run trials' metrics as they arrive, so no configuration is trained twice.

Register the tuners with ``nni-plugins register`` (see :mod:`nni_plugins.registration`). nnictl then
starts :mod:`nni_plugins_nnictl`'s classes, which load these after the dispatcher has connected.
"""
from __future__ import annotations

import inspect
import json
import logging
import math
import os
import sys
import threading
import time
from typing import Any, Callable, Iterable, Mapping

import nni
from nni.mutable import Categorical, CategoricalMultiple, SampleValidationError, label_scope
from nni.nas.benchmark.space import SlimBenchmarkSpace
from nni.nas.execution import ExecutionEngine
from nni.nas.execution.event import TrainingEndEvent
from nni.nas.space import ExecutableModelSpace, ModelStatus, RawFormatModelSpace
from nni.nas.strategy.base import Strategy
from nni.nas.strategy.middleware import Chain
from nni.tuner import Tuner

from search_spaces.graph import GenericView, NasBench101View, NasBench201View, register_graph_view

__all__ = ["GOALTuner", "NASGEMTuner", "StrategyTuner", "TunerEngine", "build_space", "SPACE_KINDS"]

_logger = logging.getLogger(__name__)

#: Python's thread switch interval (seconds) in a process that runs a tuner (see ``sys.setswitchinterval``).
SWITCH_INTERVAL = 0.001

#: Models the strategy keeps ready beyond the waiting parameter requests (see :class:`TunerEngine`).
LOOKAHEAD = 1

#: Seconds :meth:`TunerEngine.idle_worker_available` waits for a parameter request before answering no.
REQUEST_WAIT = 0.5

#: Calls of ``generate_parameters`` less than this many seconds after the previous answer are one
#: chain: NNI's dispatcher made them back to back (see :attr:`StrategyTuner.slot_seconds`).
CHAIN_GAP = 0.001

#: Values of the ``space`` class argument.
SPACE_KINDS = ("auto", "nasbench201", "nasbench101", "generic")


# ----------------------------------------------------------------------------------------------------
# Search-space JSON -> NNI mutable space
# ----------------------------------------------------------------------------------------------------
class JsonSpace(SlimBenchmarkSpace):
    """The mutables built from an NNI search-space JSON, plus how to turn a sample back into NNI
    parameters (:meth:`to_parameters`) and which graph view the strategies use (:attr:`graph_view_name`)."""

    graph_view_name: str = "auto"
    #: ``(key, label, options, children)`` per top-level parameter; ``children[i]`` is the list of
    #: entries under option ``i`` (a dict option); kept outside the mutable dict.
    _tree: list = []
    _list_labels: tuple[str, ...] = ()

    def to_parameters(self, sample: Mapping[str, Any]) -> dict:
        """NNI parameters (nested ``_name`` dicts, inactive sub-choices dropped) of a sample."""
        params = _tree_parameters(self._tree, sample)
        for label in self._list_labels:
            params[label] = [int(v) for v in sample[label]]
        return params

    def from_parameters(self, params: Any) -> dict:
        """The sample whose NNI parameters are ``params`` (the inverse of :meth:`to_parameters`; the
        sub-choices of inactive options take their first value). ``ValueError`` naming the parameter
        when ``params`` do not fit this space."""
        sample = _tree_sample(self._tree, params, "")
        for label in self._list_labels:
            value = params.get(label)
            if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
                raise ValueError(f"parameters: {label!r} must be a list of node indices, got {value!r}")
            sample[label] = list(value)
        extra = sorted(set(params) - {key for key, *_ in self._tree} - set(self._list_labels))
        if extra:
            raise ValueError(f"parameters: {extra} are not in the search space")
        try:
            self.validate(sample)
        except SampleValidationError as err:
            raise ValueError(f"parameters {params!r} are not a valid architecture of the space: {err}") from err
        return sample


def _tree_parameters(tree: list, sample: Mapping[str, Any]) -> dict:
    out: dict = {}
    for key, label, options, children in tree:
        value = sample[label]
        index = next(i for i, opt in enumerate(options)
                     if (opt["_name"] if isinstance(opt, dict) else opt) == value)
        option = options[index]
        if isinstance(option, dict):
            out[key] = {"_name": option["_name"], **_tree_parameters(children[index], sample)}
        else:
            out[key] = option
    return out


def _tree_sample(tree: list, params: Any, path: str) -> dict:
    if not isinstance(params, Mapping):
        raise ValueError(f"parameters{path and ' at ' + path}: expected a JSON object, got {params!r}")
    out: dict = {}
    for key, label, options, children in tree:
        where = f"{path}/{key}" if path else key
        if key not in params:
            raise ValueError(f"parameters: {where!r} is missing")
        value = params[key]
        name = value.get("_name") if isinstance(value, Mapping) else value
        index = next((i for i, opt in enumerate(options)
                      if (opt["_name"] if isinstance(opt, dict) else opt) == name
                      and isinstance(opt, dict) == isinstance(value, Mapping)), None)
        if index is None:
            raise ValueError(f"parameters: {where!r} = {value!r} is not one of its choices")
        out[label] = name
        for i, child in enumerate(children):
            active = i == index and isinstance(value, Mapping)
            out.update(_tree_sample(child, value, f"{where}/{name}") if active else _tree_defaults(child))
    return out


def _tree_defaults(tree: list) -> dict:
    """First option of every choice in ``tree`` (the value of an inactive sub-choice)."""
    out: dict = {}
    for _, label, options, children in tree:
        out[label] = options[0]["_name"] if isinstance(options[0], dict) else options[0]
        for child in children:
            out.update(_tree_defaults(child))
    return out


def _parse_choices(space: Mapping[str, Any], mutables: dict, path: str) -> list:
    if not isinstance(space, Mapping):
        raise ValueError(f"search space{path and ' at ' + path}: expected a JSON object of parameters, "
                         f"got {type(space).__name__}")
    tree = []
    for key, spec in space.items():
        where = f"{path}/{key}" if path else key
        if key == "_name":
            continue
        if not isinstance(key, str) or not key or "/" in key:
            raise ValueError(f"search space: parameter name {key!r} must be a non-empty string without '/'")
        if not isinstance(spec, Mapping) or "_type" not in spec or "_value" not in spec:
            raise ValueError(f"search space: parameter {where!r} must be {{'_type': ..., '_value': ...}}, got {spec!r}")
        if spec["_type"] != "choice":
            raise ValueError(f"search space: parameter {where!r} has _type {spec['_type']!r}; the GOAL/NASGEM tuners "
                             f"search architectures and accept only 'choice' (nested choices allowed)")
        options = spec["_value"]
        if not isinstance(options, list) or not options:
            raise ValueError(f"search space: 'choice' {where!r} needs a non-empty list as _value, got {options!r}")
        names, children = [], []
        for option in options:
            if isinstance(option, Mapping):
                if "_name" not in option:
                    raise ValueError(f"search space: option {dict(option)!r} of {where!r} is a dict without '_name' "
                                     f"(NNI's nested-choice format needs one)")
                with label_scope(key):
                    with label_scope(str(option["_name"])):
                        children.append(_parse_choices(option, mutables, f"{where}/{option['_name']}"))
                names.append(option["_name"])
            elif isinstance(option, (list, tuple)):
                raise ValueError(f"search space: option {option!r} of {where!r} is a list; use a string or number")
            else:
                children.append([])
                names.append(option)
        if len({json.dumps(n) for n in names}) != len(names):
            raise ValueError(f"search space: 'choice' {where!r} has duplicate options {names!r}")
        choice = Categorical(names, label=key)
        mutables[choice.label] = choice
        tree.append((key, choice.label, list(options), children))
    return tree


def build_space(search_space: Mapping[str, Any], kind: str = "auto", max_num_edges: int = 9) -> JsonSpace:
    """The :class:`JsonSpace` of an NNI search-space JSON for the graph view ``kind`` (see the module doc)."""
    if kind not in SPACE_KINDS:
        raise ValueError(f"space must be one of {list(SPACE_KINDS)}, got {kind!r}")
    if not isinstance(search_space, Mapping) or not search_space:
        raise ValueError("search space: expected a non-empty JSON object of 'choice' parameters")
    mutables: dict = {}
    tree = _parse_choices(search_space, mutables, "")
    list_labels: tuple[str, ...] = ()
    if kind == "nasbench101":
        mutables, list_labels = _nb101_mutables(mutables, tree, max_num_edges)
    space = JsonSpace(mutables)
    space._tree, space._list_labels, space.graph_view_name = tree, list_labels, kind
    if kind == "nasbench201":
        NasBench201View(space)  # raises ValueError naming the labels when the file is not NB201
    elif kind == "nasbench101":
        NasBench101View(space)
    return space


def _nb101_mutables(mutables: dict, tree: list, max_num_edges: int) -> tuple[dict, tuple[str, ...]]:
    from nni.nas.hub.pytorch.modules.nasbench101 import NasBench101CellConstraint

    if isinstance(max_num_edges, bool) or not isinstance(max_num_edges, int) or max_num_edges < 1:
        raise ValueError(f"max_num_edges must be a positive int, got {max_num_edges!r}")
    if any(children and any(children) for _, _, _, children in tree):
        raise ValueError("space 'nasbench101': nested choices are not allowed")
    num_nodes = mutables.get("num_nodes")
    if num_nodes is None or not all(isinstance(v, int) and not isinstance(v, bool) and 2 <= v <= 7
                                    for v in num_nodes.values):
        raise ValueError("space 'nasbench101': needs 'num_nodes', a choice of ints in 2..7 (input and output included)")
    max_nodes = max(num_nodes.values)
    op_labels = [f"op{i}" for i in range(1, max_nodes - 1)]
    expected = {"num_nodes", *op_labels}
    if set(mutables) != expected:
        raise ValueError(f"space 'nasbench101': expected exactly the parameters {sorted(expected)} "
                         f"(edges are added by the tuner), got {sorted(mutables)}")
    ops = [mutables[label] for label in op_labels]
    if any(list(op.values) != list(ops[0].values) for op in ops):
        raise ValueError("space 'nasbench101': every op<i> must offer the same op names in the same order")
    inputs = [CategoricalMultiple(list(range(i)), n_chosen=None, label=f"input{i}") for i in range(1, max_nodes)]
    constraint = NasBench101CellConstraint(max_num_edges, num_nodes, ops, inputs)
    out = dict(mutables)
    out.update({m.label: m for m in inputs})
    out[constraint.label] = constraint
    return out, tuple(m.label for m in inputs)


def _view_of(model_space: Any) -> str:
    inner = getattr(model_space, "model_space", model_space)
    return getattr(inner, "graph_view_name", "auto") if isinstance(inner, JsonSpace) else "auto"


_VIEWS: dict[str, Callable[[Any], Any]] = {"nasbench201": NasBench201View, "nasbench101": NasBench101View,
                                           "generic": GenericView}
register_graph_view(lambda space: _view_of(space) != "auto",
                    lambda space: _VIEWS[_view_of(space)](getattr(space, "model_space", space)))


# ----------------------------------------------------------------------------------------------------
# The engine a strategy runs against inside the tuner
# ----------------------------------------------------------------------------------------------------
class TunerEngine(ExecutionEngine):
    """An NNI execution engine driven by a tuner: submitted models wait in a queue until NNI's
    dispatcher asks for parameters; trial results become ``TrainingEnd`` events.

    The strategy may submit while a parameter request is waiting and, once NNI has asked for
    parameters a first time, :data:`LOOKAHEAD` more (:meth:`idle_worker_available`): a request
    then takes a model that is ready, without waiting for the strategy's thread, and the strategy
    proposes the next one while the trial runs. The number of outstanding trials is NNI's
    ``trialConcurrency`` plus the ready ones; the budget (``maxTrialNumber``/``maxExperimentDuration``)
    is enforced by NNI's manager, which simply stops asking. A ready model whose parameters were
    imported meanwhile (:meth:`import_result`) receives the imported result instead of being handed
    out.

    Parameters
    ----------
    to_parameters
        Turns a model's sample into the parameters handed to the trial.
    metric_sign
        ``1`` to maximise the reported metric, ``-1`` to minimise it (the strategies maximise).
    """

    def __init__(self, to_parameters: Callable[[Mapping[str, Any]], dict], metric_sign: int = 1) -> None:
        super().__init__()
        self._to_parameters = to_parameters
        self._sign = metric_sign
        self._cv = threading.Condition()
        self._queue: list[tuple[ExecutableModelSpace, dict, str]] = []
        self._requests = 0
        self._asked = False                                       # NNI has asked for parameters once
        self._closed = False
        self._models: list[ExecutableModelSpace] = []
        self._by_id: dict[int, tuple[ExecutableModelSpace, str]] = {}
        self._done: dict[str, Any] = {}                           # parameters key -> final metric (None: failed)
        self._waiting: dict[str, list[ExecutableModelSpace]] = {}  # key of a running trial -> duplicates

    # --- strategy side -------------------------------------------------------------------------
    def submit_models(self, *models: ExecutableModelSpace) -> None:
        for model in models:
            if not model.status.frozen() or model.status.completed():
                raise RuntimeError(f"Model must be frozen before submitting, but got {model}")
            params = self._to_parameters(model.sample)
            key = _params_key(params)
            with self._cv:
                self._models.append(model)
                if key in self._done:
                    # same NNI parameters as a finished trial: reuse its result (off this thread, as
                    # the strategy may hold a non-reentrant lock while submitting)
                    threading.Thread(target=self._finish, args=(model, self._done[key]), daemon=True).start()
                elif key in self._waiting:
                    self._waiting[key].append(model)
                else:
                    self._waiting[key] = []
                    self._queue.append((model, params, key))
                    self._cv.notify_all()

    def list_models(self, status: ModelStatus | None = None) -> Iterable[ExecutableModelSpace]:
        with self._cv:
            return [m for m in self._models if status is None or m.status == status]

    def idle_worker_available(self) -> bool:
        """Whether a parameter request waits for a model. Waits up to :data:`REQUEST_WAIT` seconds
        for one, so that a strategy polling this answers a request as soon as it comes."""
        with self._cv:
            return self._cv.wait_for(lambda: not self._closed and self._wanted() > len(self._queue), REQUEST_WAIT)

    def _wanted(self) -> int:
        return self._requests + (LOOKAHEAD if self._asked else 0)

    def budget_available(self) -> bool:
        return not self._closed

    def wait_models(self, *models: ExecutableModelSpace) -> None:
        """Returns at once: the trials finish under NNI's manager, whose dispatcher thread is the one
        that delivers their results, so waiting here could only deadlock."""

    def shutdown(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()

    def import_result(self, params: dict, value: Any) -> float | None:
        """The final ``value`` of a trial that ran ``params`` outside this engine: a model submitted
        later with the same parameters receives it instead of starting a trial. Returns the metric as
        the strategy sees it (sign applied), or ``None`` (nothing recorded) when ``value`` is not a
        number or a dict with a numeric ``'default'``."""
        metric = self._scalar(value)
        if metric is not None:
            key = _params_key(params)
            with self._cv:
                if self._done.get(key) is None:
                    self._done[key] = metric
        return metric

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state_dict: dict) -> None:
        pass

    # --- tuner side ----------------------------------------------------------------------------
    def next_parameters(self, parameter_id: int, strategy_alive: Callable[[], bool]) -> dict:
        """Block until the strategy submits a model; its parameters. Raises ``nni.NoMoreTrialError``
        once the strategy has stopped proposing."""
        with self._cv:
            self._requests += 1
            self._asked = True
            self._cv.notify_all()
            try:
                while True:
                    while not self._queue:
                        if self._closed or not strategy_alive():
                            raise nni.NoMoreTrialError("the strategy proposes no more architectures")
                        self._cv.wait(timeout=0.5)
                    model, params, key = self._queue.pop(0)
                    if key not in self._done:
                        break
                    # imported while it was ready: its result, off this thread (see submit_models)
                    for m in [model, *self._waiting.pop(key, [])]:
                        threading.Thread(target=self._finish, args=(m, self._done[key]), daemon=True).start()
                model.status = ModelStatus.Training
                self._by_id[parameter_id] = (model, key)
                return params
            finally:
                self._requests -= 1

    def report(self, parameter_id: int, value: Any) -> None:
        """Final metric of the trial of ``parameter_id``."""
        with self._cv:
            entry = self._by_id.get(parameter_id)
        if entry is None:
            _logger.warning("TunerEngine: result for unknown parameter id %s ignored", parameter_id)
            return
        if entry[0].status.completed():
            _logger.warning("TunerEngine: final metric %r of parameter id %s arrived after its trial had ended "
                            "(or reported already); ignored", value, parameter_id)
            return
        self._end(entry, self._scalar(value))

    def end(self, parameter_id: int, success: bool) -> None:
        """Trial end: a trial that reported no final metric counts as failed."""
        with self._cv:
            entry = self._by_id.get(parameter_id)
        if entry is not None and not entry[0].status.completed():
            if success:
                _logger.warning("TunerEngine: trial of parameter id %s succeeded without a final metric; "
                                "counted as failed", parameter_id)
            self._end(entry, None)

    def _scalar(self, value: Any) -> float | None:
        if isinstance(value, dict):
            value = value.get("default")
        try:
            value = float(value)
        except (TypeError, ValueError):
            return None
        return self._sign * value if math.isfinite(value) else None

    def _end(self, entry: tuple[ExecutableModelSpace, str], metric: float | None) -> None:
        model, key = entry
        with self._cv:
            if model.status.completed():
                return
            self._done[key] = metric
            duplicates = self._waiting.pop(key, [])
        for m in [model, *duplicates]:
            self._finish(m, metric)

    def _finish(self, model: ExecutableModelSpace, metric: float | None) -> None:
        if metric is None:
            model.status = ModelStatus.Failed
        else:
            model.metrics.final = metric
            model.status = ModelStatus.Trained
        self.dispatch_model_event(TrainingEndEvent(model, model.status))


def _params_key(params: dict) -> str:
    return json.dumps(params, sort_keys=True, default=str)


# ----------------------------------------------------------------------------------------------------
# Tuners
# ----------------------------------------------------------------------------------------------------
class StrategyTuner(Tuner):
    """An NNI tuner that runs a multi-trial NAS strategy of :mod:`strategies` (see the module doc).

    Parameters
    ----------
    strategy_class
        The ``nni.nas.strategy.base.Strategy`` subclass to run.
    optimize_mode
        ``'maximize'`` (default) or ``'minimize'`` the trials' final metric (a number, or a dict's
        ``'default'``).
    space
        Graph view: ``'auto'``, ``'nasbench201'``, ``'nasbench101'`` or ``'generic'``.
    max_num_edges
        Edge limit of a ``'nasbench101'`` cell (NAS-Bench-101: 9).
    tensorboard_dir
        Where the search's TensorBoard events go (module doc); ``None`` (default):
        ``<experiment dir>/tensorboard/tuner`` inside an NNI experiment, no logging elsewhere;
        ``""``: no logging.
    **strategy_args
        Keyword arguments of ``strategy_class`` (validated by it). A strategy that takes
        ``background_fit`` (GOAL, NASGEM) runs with ``background_fit=True`` unless it is given: its
        model is refitted in the background and a parameter request is answered from the last round
        at once (a random architecture when that round's candidates are used up), never after a
        refit; its results start the next round as they arrive.

    Starting the strategy (``update_search_space``) lowers Python's thread switch interval to
    :data:`SWITCH_INTERVAL` in the tuner's process (NNI's dispatcher), so that answering a request,
    which passes between the dispatcher's and the strategy's threads, does not wait behind the
    model's background thread.

    Every ``generate_parameters`` call logs, at INFO in ``dispatcher.log``, how long it waited for
    the strategy and how long its trial slot waited (``GOAL tuner: parameters of id 12 handed out
    in 1.3 ms (slot waited 4.0 ms)``): NNI asks for the parameters of several free slots one call
    after another, so a slot's wait counts from the first call of such a chain (calls less than
    :data:`CHAIN_GAP` seconds apart). The seconds go to :attr:`request_seconds` and
    :attr:`slot_seconds`.
    """

    def __init__(self, strategy_class: type[Strategy], optimize_mode: str = "maximize", space: str = "auto",
                 max_num_edges: int = 9, tensorboard_dir: str | None = None, **strategy_args: Any) -> None:
        name = strategy_class.__name__
        if optimize_mode not in ("maximize", "minimize"):
            raise ValueError(f"{name} tuner: optimize_mode must be 'maximize' or 'minimize', got {optimize_mode!r}")
        if space not in SPACE_KINDS:
            raise ValueError(f"{name} tuner: space must be one of {list(SPACE_KINDS)}, got {space!r}")
        if isinstance(max_num_edges, bool) or not isinstance(max_num_edges, int) or max_num_edges < 1:
            raise ValueError(f"{name} tuner: max_num_edges must be a positive int, got {max_num_edges!r}")
        if tensorboard_dir is not None and not isinstance(tensorboard_dir, str):
            raise ValueError(f"{name} tuner: tensorboard_dir must be a path string, got {tensorboard_dir!r}")
        accepted = [p for p in inspect.signature(strategy_class.__init__).parameters if p not in ("self", "args", "kwargs")]
        unknown = sorted(set(strategy_args) - set(accepted))
        if unknown:
            raise ValueError(f"{name} tuner: unknown class argument(s) {unknown}; accepted: "
                             f"{sorted(['optimize_mode', 'space', 'max_num_edges', 'tensorboard_dir', *accepted])}")
        if "background_fit" in accepted:
            strategy_args.setdefault("background_fit", True)   # a parameter request never waits for the model
        self.strategy: Strategy = strategy_class(**strategy_args)
        self.optimize_mode, self.space_kind, self.max_num_edges = optimize_mode, space, max_num_edges
        if tensorboard_dir is None and os.environ.get("NNI_LOG_DIRECTORY"):
            tensorboard_dir = os.path.join(os.path.dirname(os.path.abspath(os.environ["NNI_LOG_DIRECTORY"])),
                                           "tensorboard", "tuner")
        self.tensorboard_dir = tensorboard_dir or None
        self._space: JsonSpace | None = None
        self.model_space: RawFormatModelSpace | None = None
        self.engine: TunerEngine | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._logger: Any = None  # the TrialMetricsLogger, with a tensorboard_dir
        #: Seconds each ``generate_parameters`` call waited for the strategy's answer, in call order.
        self.request_seconds: list[float] = []
        #: Seconds each request's slot waited: from the first of the calls NNI made back to back (one
        #: request for several trials is one call per trial) to this call's answer.
        self.slot_seconds: list[float] = []
        self._chain_start = self._last_answer = -math.inf

    def update_search_space(self, search_space: dict) -> None:
        if self._thread is not None:
            raise ValueError(f"{type(self.strategy).__name__} tuner: the search space cannot be changed while "
                             f"the experiment runs (create a new experiment instead)")
        space = build_space(search_space, self.space_kind, self.max_num_edges)
        self._space = space
        self.model_space = RawFormatModelSpace(space, None)
        self.engine = TunerEngine(space.to_parameters, 1 if self.optimize_mode == "maximize" else -1)
        runner: Strategy = self.strategy
        if self.tensorboard_dir is not None:
            from .tensorboard import TrialMetricsLogger
            self._logger = TrialMetricsLogger(self.tensorboard_dir, strategy=self.strategy)
            runner = Chain(self.strategy, self._logger)
        runner.initialize(self.model_space, self.engine)
        self._runner = runner
        # the model's thread (a refit, NASGEM's pre-training) holds the GIL for up to the switch
        # interval (5 ms by default) each time a request needs another thread: switch faster
        sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL))
        self._thread = threading.Thread(target=self._run_strategy, name=f"{type(self.strategy).__name__}-strategy",
                                        daemon=True)
        self._thread.start()

    def _run_strategy(self) -> None:
        try:
            self._runner.run()
        except BaseException as err:  # surfaced to NNI by the next generate_parameters
            _logger.exception("%s strategy failed", type(self.strategy).__name__)
            self._error = err

    def generate_parameters(self, parameter_id: int, **kwargs: Any) -> dict:
        if self.engine is None or self._thread is None:
            raise RuntimeError("generate_parameters called before update_search_space")
        thread, start = self._thread, time.perf_counter()
        if start - self._last_answer > CHAIN_GAP:
            self._chain_start = start
        try:
            params = self.engine.next_parameters(parameter_id, thread.is_alive)
            self._last_answer = time.perf_counter()
            waited, slot = self._last_answer - start, self._last_answer - self._chain_start
            self.request_seconds.append(waited)
            self.slot_seconds.append(slot)
            _logger.info("%s tuner: parameters of id %s handed out in %.1f ms (slot waited %.1f ms)",
                         type(self.strategy).__name__, parameter_id, 1000 * waited, 1000 * slot)
            return params
        except nni.NoMoreTrialError:
            if self._error is not None:
                raise RuntimeError(f"{type(self.strategy).__name__} strategy failed: {self._error!r}") from self._error
            raise

    def receive_trial_result(self, parameter_id: int, parameters: dict, value: Any, **kwargs: Any) -> None:
        if kwargs.get("customized"):
            return
        assert self.engine is not None
        self.engine.report(parameter_id, value)

    def trial_end(self, parameter_id: int, success: bool, **kwargs: Any) -> None:
        if self.engine is not None:
            self.engine.end(parameter_id, success)

    def import_data(self, data: list[dict]) -> None:
        """Finished trials this tuner did not run. On ``nnictl resume`` NNI's manager hands over every
        finished trial of the experiment, and later the final metric of each trial it re-runs;
        ``nnictl experiment import`` hands over a user's records. Each ``{'parameter': ..., 'value':
        ...}`` joins the strategy's history (``import_results``), and the tuner never runs those
        parameters again. A record whose parameters do not fit the search space, or whose value is
        not a number (or a dict with a numeric ``'default'``), is skipped with a warning."""
        if self.engine is None or self._space is None:
            raise RuntimeError("import_data called before update_search_space")
        name = type(self.strategy).__name__
        results = []
        for entry in data:
            sample = self._imported_sample(entry.get("parameter") if isinstance(entry, Mapping) else None)
            if sample is None:
                continue
            metric = self.engine.import_result(self._space.to_parameters(sample), entry.get("value"))
            if metric is None:
                _logger.warning("%s tuner: imported record of %s skipped: its value %r is not a metric",
                                name, entry.get("parameter"), entry.get("value"))
                continue
            results.append((sample, metric))
        added = self.strategy.import_results(results)
        _logger.info("%s tuner: imported %d finished trials, %d of them new to the strategy", name, len(results), added)

    def import_running(self, parameters: list[dict]) -> None:
        """The parameters of the trials a resumed experiment re-runs (NNI's dispatcher hands them over
        through the ``resumed_trials_reach_tuner`` fix of :mod:`nni_compat`). The strategy
        does not propose them again; their final metrics arrive later through :meth:`import_data`.
        (A sample that differs from a re-run one only in an inactive sub-choice is a different
        architecture to the strategy and may still be handed out.) Parameters that do not fit the
        search space are skipped with a warning."""
        if self.engine is None or self._space is None:
            raise RuntimeError("import_running called before update_search_space")
        samples = [s for s in map(self._imported_sample, parameters) if s is not None]
        self.strategy.import_results([(sample, None) for sample in samples])
        _logger.info("%s tuner: %d trials re-run by the resumed experiment", type(self.strategy).__name__, len(samples))

    def _imported_sample(self, params: Any) -> dict | None:
        try:
            return self._space.from_parameters(params)
        except ValueError as err:
            _logger.warning("%s tuner: imported record skipped: %s", type(self.strategy).__name__, err)
            return None

    def _on_exit(self) -> None:
        if self.engine is not None:
            self.engine.shutdown()
        if self._logger is not None:  # the proposal kept ready for a request never ends
            self._logger.close()

    _on_error = _on_exit


def _tuner_doc(strategy: str) -> str:
    return f"""``{strategy}`` (:class:`strategies.{strategy}`) as an NNI tuner for ``nnictl create``.

    Parameters
    ----------
    optimize_mode
        ``'maximize'`` (default) or ``'minimize'`` the trials' final metric.
    space
        Graph view: ``'auto'``, ``'nasbench201'``, ``'nasbench101'`` or ``'generic'`` (module doc).
    max_num_edges
        Edge limit of a ``'nasbench101'`` cell (default 9).
    tensorboard_dir
        TensorBoard directory of the search (default ``<experiment dir>/tensorboard/tuner``).
    **strategy_args
        Keyword arguments of :class:`strategies.{strategy}`.
    """


class GOALTuner(StrategyTuner):
    __doc__ = _tuner_doc("GOAL")

    def __init__(self, optimize_mode: str = "maximize", space: str = "auto", max_num_edges: int = 9,
                 tensorboard_dir: str | None = None, **strategy_args: Any) -> None:
        from strategies import GOAL
        super().__init__(GOAL, optimize_mode, space, max_num_edges, tensorboard_dir, **strategy_args)


class NASGEMTuner(StrategyTuner):
    __doc__ = _tuner_doc("NASGEM")

    def __init__(self, optimize_mode: str = "maximize", space: str = "auto", max_num_edges: int = 9,
                 tensorboard_dir: str | None = None, **strategy_args: Any) -> None:
        from strategies import NASGEM
        super().__init__(NASGEM, optimize_mode, space, max_num_edges, tensorboard_dir, **strategy_args)
