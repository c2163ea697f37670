"""Register the multi-trial strategies as ``nnictl`` tuners (``nni-plugins register`` / ``unregister``).

:func:`register` does what ``nnictl algo register --meta nni_plugins/data/nnictl_algorithms.yml``
does, through the same NNI functions (``read_reg_meta_list``, ``verify_algo_import`` of
``nni/tools/nnictl/algo_management.py`` and ``nni.tools.package_utils.register_algo_meta``): it
writes ``registered_algorithms.yml`` in NNI's config directory (``$NNI_CONFIG_DIR``, else
``<sys.prefix>/nni`` in a virtual environment, else ``~/.config/nni``), after checking that every
tuner class imports. Afterwards ``nnictl algo list`` shows ``GOAL`` and ``NASGEM`` and an
experiment may say ``tuner: {name: GOAL, classArgs: {...}}`` (see :mod:`nni_plugins.tuners`).

The registered classes are those of :mod:`nni_plugins_nnictl`, which connect to NNI's manager before
loading :mod:`nni_plugins.tuners`. Both functions are idempotent: registering again updates the
entries (also those of earlier versions, which registered ``nni_plugins.tuners`` directly),
unregistering names that are not registered does nothing. A name that NNI provides built in, or that
a different class holds in the registry, is refused with a ``ValueError`` (never overwritten or removed).
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path

__all__ = ["META_FILE", "register", "unregister", "registered", "registry_file"]

#: The meta file, in ``nnictl algo register --meta`` format.
META_FILE = Path(str(resources.files("nni_plugins") / "data" / "nnictl_algorithms.yml"))


def _metas():
    from nni.tools.nnictl.algo_management import read_reg_meta_list

    return read_reg_meta_list(str(META_FILE))


def registry_file() -> Path:
    """The ``registered_algorithms.yml`` NNI reads (honours ``$NNI_CONFIG_DIR``)."""
    from nni.runtime.config import get_config_file

    return Path(get_config_file("registered_algorithms.yml"))


#: Where earlier versions of this package registered the tuners (replaced or removed like the current ones).
_EARLIER_CLASSES = {"GOAL": "nni_plugins.tuners.GOALTuner", "NASGEM": "nni_plugins.tuners.NASGEMTuner"}


def _check_owner(meta, old) -> None:
    if old is None:
        return
    if old.is_builtin:
        raise ValueError(f"{meta.name!r} is an algorithm built into NNI and cannot be replaced")
    if old.class_name not in (meta.class_name, _EARLIER_CLASSES.get(meta.name)):
        raise ValueError(f"{meta.name!r} is already registered in {registry_file()} for another class "
                         f"({old.class_name}); run `nnictl algo unregister {meta.name}` first")


def register() -> list[str]:
    """Register the tuners ``GOAL`` and ``NASGEM`` with NNI's algorithm registry; their names."""
    from nni.tools import package_utils
    from nni.tools.nnictl.algo_management import verify_algo_import

    metas = _metas()
    for meta in metas:
        _check_owner(meta, package_utils.get_algo_meta(meta.name))
        verify_algo_import(meta)
    for meta in metas:
        package_utils.register_algo_meta(meta)
    return [meta.name for meta in metas]


def unregister() -> list[str]:
    """Remove this package's tuners from NNI's registry; the names that were removed."""
    from nni.tools import package_utils

    removed = []
    for meta in _metas():
        old = package_utils.get_algo_meta(meta.name)
        if old is None:
            continue
        _check_owner(meta, old)
        package_utils.unregister_algo_meta(old.name)
        removed.append(meta.name)
    return removed


def registered() -> dict[str, bool]:
    """``{name: registered with this package's class}`` for each of the tuners."""
    from nni.tools import package_utils

    out = {}
    for meta in _metas():
        old = package_utils.get_algo_meta(meta.name)
        out[meta.name] = old is not None and not old.is_builtin and old.class_name == meta.class_name
    return out
