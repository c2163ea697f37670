"""The registry of named monkeypatches: each fix replaces NNI attributes through :func:`patch`,
which keeps the originals, so a fix can be undone for a process (:func:`revert`) or temporarily
(:func:`unpatched`).

A patch names its target by module and attribute path (``'nni.nas.utils.serializer:TorchSerializer.load'``)
and is installed when that module has been imported (:func:`when_imported`): at once when it already
has, else right after the module's code has run, before the import that loads it returns. Registering
the fixes therefore imports nothing of NNI, and no NNI module can be used unpatched."""
from __future__ import annotations

import contextlib
import importlib.abc
import sys
import threading
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Callable, Iterator


@dataclass
class _Patch:
    name: str
    module: str                  # the module that defines the attribute
    path: str                    # its attribute path in that module: "Class.attr" or "attr"
    make: Callable[[Any], Any]   # builds the replacement from the attribute it wraps
    builds: list = field(default_factory=list)   # (attribute wrapped, replacement built on it)

    def target(self, module: ModuleType) -> tuple[Any, str]:
        """``(owner, attr)``: the module or class whose attribute is replaced, and its name."""
        *owners, attr = self.path.split('.')
        owner: Any = module
        for name in owners:
            owner = getattr(owner, name)
        return owner, attr


_LOCK = threading.RLock()
_PATCHES: dict[str, list[_Patch]] = {}    # fix name -> its patches, installed or waiting for their module
_REVERTED: set[str] = set()
# Per installed attribute: (owner, NNI's raw attribute or None when inherited, its patches bottom to top).
_STACKS: dict[tuple[int, str], tuple[Any, Any, list[_Patch]]] = {}
_WAITING: dict[str, list[Callable[[ModuleType], None]]] = {}   # module name -> callbacks run once it is imported


class _RunAfterImport(importlib.abc.MetaPathFinder):
    """First finder on ``sys.meta_path``: for a module someone waits for (:func:`when_imported`) it
    takes the spec the other finders give and wraps its loader's ``exec_module``, so that the
    callbacks run right after the module's code."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname not in _WAITING:
            return None
        for finder in sys.meta_path:
            find = getattr(finder, 'find_spec', None) if finder is not self else None
            spec = find(fullname, path, target) if find is not None else None
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        if loader is not None and not isinstance(loader, type) and hasattr(loader, 'exec_module'):
            execute = loader.exec_module

            def exec_module(module: ModuleType) -> None:
                execute(module)
                _run_waiting(module)
            loader.exec_module = exec_module   # file loaders are made per module: this one loads only fullname
        return spec


_FINDER = _RunAfterImport()


def _run_waiting(module: ModuleType) -> None:
    with _LOCK:
        callbacks = _WAITING.pop(module.__name__, [])
    for callback in callbacks:
        callback(module)


def when_imported(name: str, callback: Callable[[ModuleType], None]) -> None:
    """Call ``callback(module)`` once module ``name`` has been imported: now when it already has, else
    right after its code has run (before the ``import`` that loads it returns). Callbacks of one
    module run in the order they were given."""
    with _LOCK:
        module = sys.modules.get(name)
        if module is None or name in _WAITING:
            _WAITING.setdefault(name, []).append(callback)
            if sys.meta_path[:1] != [_FINDER]:      # first, also before import hooks added since
                if _FINDER in sys.meta_path:
                    sys.meta_path.remove(_FINDER)
                sys.meta_path.insert(0, _FINDER)
            return
    callback(module)


def _raw(owner: Any, attr: str) -> Any:
    """The attribute as a patch wraps it (``owner.__dict__`` entry for classes, so classmethods stay)."""
    if isinstance(owner, type) and attr in owner.__dict__:
        return owner.__dict__[attr]
    return getattr(owner, attr)


def _rebuild(owner: Any, attr: str) -> None:
    """Install the active patches of one attribute over NNI's original, bottom to top. A patch is
    built once on each attribute it wraps, so undoing a fix below it rebuilds it on what is left
    (undoing one fix never drops another) and reinstalling gives back the same objects."""
    _, raw, stack = _STACKS[(id(owner), attr)]
    if raw is None:                                   # inherited: undoing every fix deletes the override
        if attr in owner.__dict__:
            delattr(owner, attr)
    else:
        setattr(owner, attr, raw)
    for patch in stack:
        if patch.name in _REVERTED:
            continue
        current = _raw(owner, attr)
        replacement = next((built for wrapped, built in patch.builds if wrapped is current), None)
        if replacement is None:
            replacement = patch.make(current)
            if isinstance(current, classmethod) and not isinstance(replacement, classmethod):
                replacement = classmethod(replacement)
            patch.builds.append((current, replacement))
        setattr(owner, attr, replacement)


def _install(patch: _Patch, module: ModuleType) -> None:
    with _LOCK:
        owner, attr = patch.target(module)
        key = (id(owner), attr)
        if key not in _STACKS:
            inherited = isinstance(owner, type) and attr not in owner.__dict__
            _STACKS[key] = (owner, None if inherited else _raw(owner, attr), [])
        _STACKS[key][2].append(patch)
        _rebuild(owner, attr)


def patch(name: str, target: str, make: Callable[[Any], Any]) -> None:
    """Replace the attribute ``target`` (``'module:Class.attr'`` or ``'module:attr'``) by
    ``make(original)`` once its module is imported, and remember both under fix ``name``. Patches of
    one attribute stack in the order they are made, whenever their module is imported."""
    module, _, path = target.partition(':')
    new = _Patch(name, module, path, make)
    with _LOCK:
        _PATCHES.setdefault(name, []).append(new)
    when_imported(module, lambda loaded: _install(new, loaded))


def _set_active(names: tuple[str, ...], active: bool) -> None:
    with _LOCK:
        for name in names:
            if name not in _PATCHES:
                raise ValueError(f'Unknown NNI compatibility fix {name!r}; known fixes: {patch_names()}')
        (_REVERTED.difference_update if active else _REVERTED.update)(names)
        for (_, attr), (owner, _, stack) in list(_STACKS.items()):
            if any(p.name in names for p in stack):
                _rebuild(owner, attr)


def patch_names() -> list[str]:
    """Names of the fixes registered by :func:`nni_compat.apply`: those whose NNI modules are imported
    (patched) and those still waiting for a module."""
    return list(_PATCHES)


def revert(*names: str) -> None:
    """Undo the named fixes for the rest of this process (all fixes if no name is given); a module
    imported later is left unpatched by them."""
    _set_active(names or tuple(_PATCHES), False)


@contextlib.contextmanager
def unpatched(*names: str) -> Iterator[None]:
    """Temporarily run NNI without the named fixes (all fixes if no name is given)."""
    names = names or tuple(_PATCHES)
    revert(*names)
    try:
        yield
    finally:
        _set_active(names, True)
