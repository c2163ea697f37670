"""The registry of named monkeypatches: each fix replaces NNI attributes through :func:`patch`,
which keeps the originals, so a fix can be undone for a process (:func:`revert`) or temporarily
(:func:`unpatched`)."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator


@dataclass
class _Patch:
    name: str
    owner: Any          # module or class whose attribute is replaced
    attr: str
    make: Callable[[Any], Any]   # builds the replacement from the attribute it wraps
    active: bool = True
    builds: list = field(default_factory=list)   # (attribute wrapped, replacement built on it)


_PATCHES: dict[str, list[_Patch]] = {}
# Per patched attribute: (owner, NNI's raw attribute or None when inherited, its patches bottom to top).
_STACKS: dict[tuple[int, str], tuple[Any, Any, list[_Patch]]] = {}


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
        if not patch.active:
            continue
        current = _raw(owner, attr)
        replacement = next((built for wrapped, built in patch.builds if wrapped is current), None)
        if replacement is None:
            replacement = patch.make(current)
            if isinstance(current, classmethod) and not isinstance(replacement, classmethod):
                replacement = classmethod(replacement)
            patch.builds.append((current, replacement))
        setattr(owner, attr, replacement)


def patch(name: str, owner: Any, attr: str, make: Callable[[Any], Any]) -> None:
    """Replace ``owner.attr`` by ``make(original)`` and remember both under fix ``name``. Patches of
    one attribute stack in the order they are made."""
    key = (id(owner), attr)
    if key not in _STACKS:
        inherited = isinstance(owner, type) and attr not in owner.__dict__
        _STACKS[key] = (owner, None if inherited else _raw(owner, attr), [])
    _STACKS[key][2].append(new := _Patch(name, owner, attr, make))
    _PATCHES.setdefault(name, []).append(new)
    _rebuild(owner, attr)


def _set_active(names: tuple[str, ...], active: bool) -> None:
    for name in names:
        if name not in _PATCHES:
            raise ValueError(f'Unknown NNI compatibility fix {name!r}; known fixes: {patch_names()}')
    touched = {}
    for name in names:
        for each in _PATCHES[name]:
            each.active = active
            touched[(id(each.owner), each.attr)] = (each.owner, each.attr)
    for owner, attr in touched.values():
        _rebuild(owner, attr)


def patch_names() -> list[str]:
    """Names of the fixes applied by :func:`nni_compat.apply`."""
    return list(_PATCHES)


def revert(*names: str) -> None:
    """Undo the named fixes for the rest of this process (all fixes if no name is given)."""
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
