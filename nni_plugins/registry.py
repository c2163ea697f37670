"""One registry from strategy names (CLI, YAML, benchmark) to NNI strategy objects.

NNI's built-ins are listed next to ours; ours are looked up in :mod:`strategies` by class name, so
a strategy is available here as soon as it is exported from that package.
"""
from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import inspect
from dataclasses import dataclass
from typing import Any, Callable

__all__ = ["StrategySpec", "STRATEGIES", "strategy_spec", "make_strategy", "check_strategy_space",
           "available_strategies"]


@dataclass(frozen=True)
class StrategySpec:
    """How to build one registered strategy.

    ``target`` is ``"module:attr"``; ``kind`` is ``"multi-trial"`` or ``"one-shot"``;
    ``defaults`` are keyword arguments applied before the user's; ``seed_arg`` names the
    constructor argument that takes the seed (``None`` when the strategy has none);
    ``forwards_to`` names the class that receives the strategy's ``**kwargs`` when that is not a
    base class (NNI's ``TPE`` passes them to ``TpeTuner``).
    """

    name: str
    target: str
    kind: str
    description: str
    defaults: tuple[tuple[str, Any], ...] = ()
    seed_arg: str | None = None
    forwards_to: str | None = None  # "module:Class" that receives the strategy's **kwargs


    def load(self) -> Callable[..., Any]:
        module, _, attr = self.target.partition(":")
        try:
            return getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as err:
            raise ValueError(f"Strategy {self.name!r} ({self.target}) is not available: {err}") from err


def _spec(name, target, kind, description, seed_arg=None, forwards_to=None, **defaults) -> StrategySpec:
    return StrategySpec(name, target, kind, description, tuple(defaults.items()), seed_arg, forwards_to)


STRATEGIES: dict[str, StrategySpec] = {s.name: s for s in [
    # NNI 3.0 built-ins
    _spec("random", "nni.nas.strategy:Random", "multi-trial", "NNI random search (dedup on)",
          seed_arg="seed", dedup=True),
    _spec("rea", "nni.nas.strategy:RegularizedEvolution", "multi-trial",
          "NNI regularized evolution (population 20, sample 5, mutation 1/6)", seed_arg="seed",
          population_size=20, sample_size=5, mutation_prob=1 / 6, dedup=True),
    # NNI's TPE() minimises by default; every metric here is an accuracy, so it maximises.
    _spec("tpe", "nni.nas.strategy:TPE", "multi-trial", "NNI TPE via its HPO tuner (maximising)",
          seed_arg="seed", forwards_to="nni.algorithms.hpo.tpe_tuner:TpeTuner", optimize_mode="maximize"),
    _spec("darts", "nni.nas.strategy:DARTS", "one-shot", "NNI DARTS (first order)"),
    _spec("gumbel-darts", "nni.nas.strategy:GumbelDARTS", "one-shot", "NNI GumbelDARTS"),
    _spec("proxyless", "nni.nas.strategy:Proxyless", "one-shot", "NNI ProxylessNAS"),
    _spec("random-oneshot", "nni.nas.strategy:RandomOneShot", "one-shot", "NNI random one-shot (SPOS)"),
    # ours
    _spec("goal", "strategies:GOAL", "multi-trial", "GOAL: differentiable graph optimization", seed_arg="seed"),
    _spec("nasgem", "strategies:NASGEM", "multi-trial", "NASGEM: graph embedding method", seed_arg="seed"),
    _spec("gaea", "strategies:GAEA", "one-shot", "GAEA: geometry-aware exponentiated gradient"),
    _spec("drnas", "strategies:DrNAS", "one-shot", "DrNAS: Dirichlet NAS"),
    _spec("tetlo", "strategies:TETLO", "one-shot", "TETLO: transferability-encouraging tri-level"),
]}


def strategy_spec(name: str) -> StrategySpec:
    """The registered spec of ``name`` (case-insensitive); ``ValueError`` listing the names otherwise."""
    key = str(name).strip().lower()
    if key not in STRATEGIES:
        raise ValueError(f"Unknown strategy {name!r}; choose one of: {', '.join(STRATEGIES)}")
    return STRATEGIES[key]


_SEED = {"integer": True, "maximum": 2 ** 32 - 1, "optional": True}  # NumPy's RandomState takes 0..2**32-1
_DARTS = {"arc_learning_rate": {"strict": True}, "gradient_clip_val": {"strict": True, "optional": True},
          "log_prob_every_n_step": {"minimum": 1, "integer": True}, "warmup_epochs": {"integer": True}}
#: The numeric arguments of NNI's strategies, with their ranges (``strategies._checks.check_number``'s
#: keywords). Ours check their arguments in their constructors; NNI's accept nonsense (a negative
#: learning rate, a population of 0) and fail later, or never.
_NNI_NUMBERS: dict[str, dict[str, dict[str, Any]]] = {
    "random": {"seed": _SEED},
    "rea": {"population_size": {"minimum": 1, "integer": True}, "sample_size": {"minimum": 1, "integer": True},
            "mutation_prob": {"maximum": 1}, "seed": _SEED},
    "tpe": {"seed": _SEED},
    "darts": _DARTS, "gumbel-darts": _DARTS, "proxyless": _DARTS,
}
_NNI_FLAGS = {"random": ("dedup",), "rea": ("crossover", "dedup")}
#: NNI's TpeTuner's ``tpe_args`` (``nni.algorithms.hpo.tpe_tuner.TpeArguments``), with their ranges
_TPE_ARGS = {"n_startup_jobs": {"integer": True}, "n_ei_candidates": {"minimum": 1, "integer": True},
             "linear_forgetting": {"minimum": 1, "integer": True}, "prior_weight": {},
             "gamma": {"strict": True}}


def _check_nni_arguments(spec: StrategySpec, cls: type, args: dict[str, Any]) -> None:
    """Check (and where YAML cannot write the type NNI wants, convert in place) the arguments of one of
    NNI's strategies: ``TypeError`` for a wrong type, ``ValueError`` for a value out of range, naming the
    strategy class, the argument, the value and the accepted range, as our strategies' constructors do."""
    from strategies._checks import check_choice, check_flag, check_number

    owner = cls.__name__
    for arg, limits in _NNI_NUMBERS.get(spec.name, {}).items():
        if arg in args:
            check_number(owner, arg, args[arg], **limits)
    for arg in _NNI_FLAGS.get(spec.name, ()):
        if arg in args:
            check_flag(owner, arg, args[arg])
    if spec.name == "rea" and args["sample_size"] > args["population_size"]:
        raise ValueError(f"{owner}: sample_size must be <= population_size ({args['population_size']}), "
                         f"got {args['sample_size']}")
    if spec.name == "tpe":
        check_choice(owner, "optimize_mode", args.get("optimize_mode"), ("maximize", "minimize"))
        tpe_args = args.get("tpe_args")
        if tpe_args is not None:
            if not isinstance(tpe_args, dict):
                raise TypeError(f"{owner}: tpe_args must be a mapping of TPE's own arguments, got {tpe_args!r}")
            accepted = ("constant_liar_type", *_TPE_ARGS)
            for arg, value in tpe_args.items():
                if arg == "constant_liar_type":
                    if value is not None:
                        check_choice(owner, "tpe_args.constant_liar_type", value, ("best", "worst", "mean"))
                elif arg in _TPE_ARGS:
                    check_number(owner, f"tpe_args.{arg}", value, **_TPE_ARGS[arg])
                else:
                    raise ValueError(f"{owner}: unknown tpe_args key {arg!r}; it accepts {', '.join(accepted)}")
    if spec.name == "gumbel-darts" and "temperature" in args:
        args["temperature"] = _gumbel_temperature(owner, args["temperature"])
    sample_filter = args.get("filter")
    if spec.name == "random-oneshot" and sample_filter is not None and not (
            isinstance(sample_filter, dict) or callable(sample_filter)):
        raise TypeError(f"{owner}: filter must be a mapping of ProfilerFilter's arguments, a callable on a sample "
                        f"or None, got {sample_filter!r}")
    hooks = args.get("mutation_hooks")
    if hooks is not None and not (isinstance(hooks, (list, tuple)) and all(callable(h) for h in hooks)):
        raise TypeError(f"{owner}: mutation_hooks must be a list of callables or None, got {hooks!r}")


def _gumbel_temperature(owner: str, value: Any) -> Any:
    """GumbelDARTS' ``temperature`` as NNI takes it: a number, a pair ``(start, end)`` (a YAML list too)
    or ``{init, min}``, with start >= end > 0 (floats); NNI's own scheduler objects pass unchecked."""
    import numbers

    def positive(x: Any) -> bool:
        return isinstance(x, numbers.Real) and not isinstance(x, bool) and 0 < x < float("inf")

    pair = None
    if isinstance(value, (list, tuple)) and len(value) == 2:
        pair = tuple(value)
    elif isinstance(value, dict) and set(value) == {"init", "min"}:
        pair = (value["init"], value["min"])
    elif positive(value):
        return float(value)
    elif not isinstance(value, (numbers.Real, str, list, tuple, dict)) and value is not None:
        return value  # e.g. nni's LinearTemperatureScheduler
    if pair is None or not all(positive(x) for x in pair) or pair[0] < pair[1]:
        raise ValueError(f"{owner}: temperature must be a number > 0, a pair [start, end] or a mapping "
                         f"{{init: start, min: end}} with start >= end > 0, got {value!r}")
    return (float(pair[0]), float(pair[1]))


def make_strategy(name: str, seed: int | None = None, **kwargs: Any) -> Any:
    """A fresh strategy object for ``name``; ``seed`` goes to the strategy when it takes one.

    ``kwargs`` override the registered defaults. ``ValueError`` names the strategy and the argument for
    an argument the strategy does not accept or a value it cannot use (also for NNI's strategies, whose
    numeric arguments, flags and choices are checked here: learning rates > 0, ``sample_size <=
    population_size``, ...).
    """
    spec = strategy_spec(name)
    cls = spec.load()
    args = dict(spec.defaults)
    if seed is not None and spec.seed_arg:
        args[spec.seed_arg] = seed
    args.update(kwargs)
    known = _accepted_arguments(cls)
    if known is not None and spec.forwards_to:
        module, _, attr = spec.forwards_to.partition(":")
        forwarded = _accepted_arguments(getattr(importlib.import_module(module), attr))
        known = None if forwarded is None else known | forwarded
    unknown = sorted(set(args) - known) if known is not None else []
    if unknown:
        raise ValueError(f"Invalid arguments for strategy {spec.name!r}: {unknown}; it accepts {sorted(known)}")
    try:
        if not spec.target.startswith("strategies:"):
            _check_nni_arguments(spec, cls, args)
        return cls(**args)
    except TypeError as err:
        raise ValueError(f"Invalid arguments for strategy {spec.name!r}: {err}") from err


def check_strategy_space(name: str, space_name: str, space: Any) -> None:
    """Refuse, before anything runs, a model space that strategy ``name`` cannot search: NNI's
    strategies that search through an HPO tuner (``tpe``) hand it the space in NNI's HPO format
    (``Mutable.as_legacy_dict``), which has no multi-select choice (``InputChoice``,
    ``CategoricalMultiple``), and failed with ``NotImplementedError`` after the run had started.
    ``ValueError`` names the space, its first such choices and the strategies that can search it."""
    from nni.nas.strategy.hpo import HPOTunerStrategy

    spec = strategy_spec(name)
    if not issubclass(spec.load(), HPOTunerStrategy):
        return
    unsupported = []
    for label, mutable in space.simplify().items():
        try:
            mutable.as_legacy_dict()
        except NotImplementedError:
            unsupported.append(f"{label!r} ({type(mutable).__name__})")
    if unsupported:
        shown = ", ".join(unsupported[:3]) + (f" and {len(unsupported) - 3} more" if len(unsupported) > 3 else "")
        raise ValueError(f"strategy {spec.name!r} cannot search model space {space_name!r}: NNI's {spec.name.upper()} "
                         f"searches through its HPO tuner, whose search-space format has no multi-select choice, and "
                         f"the space has {len(unsupported)}: {shown}; use random, rea, goal or nasgem, or a space of "
                         "single choices (nasbench201)")


_NOT_ARGUMENTS = ("self", "model_space", "engine")  # NNI's Strategy.__init__: set by the experiment, not by users


def _accepted_arguments(cls: type) -> set[str] | None:
    """Named constructor arguments of ``cls`` and the bases its ``**kwargs`` are passed on to.

    NNI's strategies take ``**kwargs`` only to forward them to their base class (or to warn about
    deprecated names), so a misspelt argument would be silently dropped; following the
    ``__init__`` chain lets :func:`make_strategy` reject it. ``None``: cannot tell.
    """
    names: set[str] = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        try:
            params = inspect.signature(init).parameters.values()
        except (TypeError, ValueError):
            return None
        names.update(p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
                     and p.name not in _NOT_ARGUMENTS)
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            return names
    return names


def _installed(module: str) -> bool:
    """Whether ``module`` is installed, found without importing it or its packages (importing
    ``nni.nas.strategy`` imports torch and Lightning: seconds)."""
    parts = module.split(".")
    found = importlib.util.find_spec(parts[0])
    for end in range(2, len(parts) + 1):
        if found is None or found.submodule_search_locations is None:
            return False
        found = importlib.machinery.PathFinder.find_spec(".".join(parts[:end]), found.submodule_search_locations)
    return found is not None


def available_strategies(kind: str | None = None) -> list[str]:
    """Names whose implementation's module is installed, optionally of one ``kind``; importing it
    may still fail (:meth:`StrategySpec.load` says why)."""
    return [spec.name for spec in STRATEGIES.values()
            if (not kind or spec.kind == kind) and _installed(spec.target.partition(":")[0])]
