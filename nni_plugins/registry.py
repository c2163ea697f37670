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

__all__ = ["StrategySpec", "STRATEGIES", "strategy_spec", "make_strategy", "available_strategies"]


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


def make_strategy(name: str, seed: int | None = None, **kwargs: Any) -> Any:
    """A fresh strategy object for ``name``; ``seed`` goes to the strategy when it takes one.

    ``kwargs`` override the registered defaults; an argument the strategy does not accept raises
    ``ValueError`` naming it.
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
        return cls(**args)
    except TypeError as err:
        raise ValueError(f"Invalid arguments for strategy {spec.name!r}: {err}") from err


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
        names.update(p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self")
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
