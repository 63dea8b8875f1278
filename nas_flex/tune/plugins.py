"""What a user registered reaches every trial: layers, backbones and datasets shipped with the trainable.

A user's ``@nas_flex.layers.register("my_conv")`` (or ``nas_flex.models.register`` / ``nas_flex.data.register``)
runs in the driver process; a trial runs in a Ray worker process, on this machine or another node, which never ran
the user's script. So the search collects the user's entries of the three registries (``collect``), hands them to
the trainable by value through Ray's object store (``tune.with_parameters``), and the trainable registers them in
its worker before it builds anything (``install``). Classes and functions defined in ``__main__`` are pickled by
value by Ray's cloudpickle; those of a user module that is not installed (a file beside the script, which a worker on
another node could not import) are marked for pickling by value too (``ship``). The user configures nothing in Ray.

Only Ray's object store carries them: nothing is written to or read back from the storage folder.
"""

from __future__ import annotations

import sys
import sysconfig
from pathlib import Path
from typing import Any

__all__ = ["collect", "ship", "install"]

#: the registries whose user entries travel, by key of the dict ``collect`` returns
_KINDS = ("layers", "backbones", "datasets")


def _registries() -> dict[str, Any]:
    from nas_flex.data import DATASETS
    from nas_flex.layers.registry import LAYERS
    from nas_flex.models import BACKBONES

    return {"layers": LAYERS, "backbones": BACKBONES, "datasets": DATASETS}


def collect() -> dict[str, dict[str, Any]]:
    """The entries a user registered in this process, per registry: {"layers": {name: class}, "backbones": {...},
    "datasets": {name: DatasetEntry}}. Built-in entries are not included (every worker has them)."""
    return {kind: registry.user_entries() for kind, registry in _registries().items()}


def _installed(path: str | None) -> bool:
    """Whether a module file lies in the interpreter's installed locations (importable on every node)."""
    if path is None:
        return True  # a built-in or namespace module
    where = Path(path).resolve()
    roots = {sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    return any(where.is_relative_to(Path(root).resolve()) for root in roots)


def _defining_objects(entry: Any) -> list[Any]:
    """The class or function behind a registry entry (a dataset entry holds its builder)."""
    builder = getattr(entry, "builder", None)
    return [entry] if builder is None else [builder] if callable(builder) else []


def ship(plugins: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Mark the user modules that define ``plugins`` for pickling by value, so a worker needs no copy of them.

    ``__main__`` is pickled by value anyway; nas_flex's own modules and installed packages are imported by name on
    the worker as usual. Returns ``plugins`` unchanged.
    """
    from ray import cloudpickle

    for entries in plugins.values():
        for entry in entries.values():
            for obj in _defining_objects(entry):
                name = getattr(obj, "__module__", None) or "__main__"
                top = name.split(".")[0]
                if name == "__main__" or top == "nas_flex" or top not in sys.modules:
                    continue
                if not _installed(getattr(sys.modules[top], "__file__", None)):
                    cloudpickle.register_pickle_by_value(sys.modules[top])
    return plugins


def install(plugins: dict[str, dict[str, Any]] | None) -> None:
    """Register the shipped ``plugins`` in this (worker) process before a trial builds its model and data.

    The driver's entry wins over one of the same name left by an earlier trial of this worker (a worker may run
    several trials; each brings its own unpickled copy). A name that is built-in here is refused as in the driver.
    """
    if not plugins:
        return
    registries = _registries()
    for kind in _KINDS:
        registry = registries[kind]
        for name, entry in (plugins.get(kind) or {}).items():
            registry.install(name, entry)
