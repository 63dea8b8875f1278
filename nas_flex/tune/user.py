"""A user's training function on its way to the Ray workers: checked in the driver, pickled by value.

cloudpickle pickles a function of ``__main__`` by value, but a function of any other module by reference (module
and name), which a worker can only load if it can import that module: a space file loaded by path, or a script's
helper module beside it, it cannot. ``pack`` pickles such modules by value (``cloudpickle.register_pickle_by_value``)
and the payload reaches the workers through Ray's object store (``tune.with_parameters``), never through the storage
folder, so nothing in the storage is unpickled.
"""

from __future__ import annotations

import sys
import sysconfig
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["pack", "unpack", "resolve_trainable", "check_resumed_trainable"]


def _installed_roots() -> list[Path]:
    paths = sysconfig.get_paths()
    return [Path(paths[k]).resolve() for k in ("stdlib", "platstdlib", "purelib", "platlib") if k in paths]


def _by_value(module_name: str | None) -> bool:
    """A module a worker may not be able to import: a space file, or any module outside the installed packages."""
    if not module_name or module_name == "__main__" or module_name.split(".")[0] == "nas_flex":
        return False  # cloudpickle pickles __main__ by value itself; nas_flex is installed wherever a trial runs
    module = sys.modules.get(module_name)
    if module is None:
        return False
    if getattr(module, "__nas_flex_space__", False):
        return True
    file = getattr(module, "__file__", None)
    if not file:
        return False
    where = Path(file).resolve()
    return not any(where.is_relative_to(root) for root in _installed_roots())


def pack(fn: Callable[..., Any]) -> bytes:
    """``fn`` pickled with cloudpickle, by value when its module is a user's (``_by_value``)."""
    import cloudpickle

    module = sys.modules.get(getattr(fn, "__module__", None) or "")
    register = module is not None and _by_value(module.__name__)
    if register:
        cloudpickle.register_pickle_by_value(module)
    try:
        return cloudpickle.dumps(fn)
    finally:
        if register:
            cloudpickle.unregister_pickle_by_value(module)


def unpack(payload: bytes) -> Callable[..., Any]:
    """The function ``pack`` pickled (in a Ray worker; the payload came from the driver through Ray)."""
    import cloudpickle

    return cloudpickle.loads(payload)


def resolve_trainable(trainable: Any, space: Any) -> bytes | None:
    """The packed training function of a search: ``trainable`` if given, else the space file's own module-level
    ``trainable`` (``SearchSpace.trainable``), else None (the built-in loop). Checked here, before Ray starts."""
    from nas_flex.train.context import check_trainable

    fn = trainable if trainable is not None else getattr(space, "trainable", None)
    if fn is None:
        return None
    check_trainable(fn)
    return pack(fn)


def check_resumed_trainable(experiment_file: Path, packed: bytes | None) -> None:
    """A resume runs the loop the experiment started with: its user's function again, or the built-in loop again
    (a checkpoint of one cannot continue in the other); else a one-line ``SearchSpaceError`` before Ray starts."""
    from nas_flex.errors import SearchSpaceError
    from nas_flex.tune.resume import read_json

    recorded = bool(read_json(experiment_file).get("trainable", False))
    if recorded != (packed is not None):
        raise SearchSpaceError(
            f"experiment {experiment_file.stem!r} was run with "
            + ("a `trainable` function: pass it again (or the space file that defines it) to resume" if recorded
               else "the built-in training loop: resume it without `trainable`"))
