"""Search spaces: define-by-run functions of an optuna-compatible trial that return a trial config.

A space calls ``trial.suggest_int / suggest_float / suggest_categorical``, may branch on what it drew, and returns a
plain, JSON-safe trial config (``nas_flex.train.config.KEY_DOCS``). It does no computation: Ray Tune's OptunaSearch
calls it in the driver for every trial.

``SearchSpace`` wraps such a function so that it pickles *by value* (its code travels with it, through cloudpickle):
Ray's OptunaSearch pickles the function with plain pickle in its experiment checkpoints, which breaks for lambdas and
for functions in ``__main__`` or in a file loaded by path once another process (``Tuner.restore``) unpickles it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from nas_flex.errors import SearchSpaceError

__all__ = ["SearchSpace", "load_space", "SAMPLERS"]

SAMPLERS = ("tpe", "grid", "random")
SpaceFn = Callable[[Any], Mapping[str, Any]]


def _load_pickled(payload: bytes) -> SearchSpace:
    import cloudpickle

    return cloudpickle.loads(payload)


class SearchSpace:
    """A define-by-run search space with its settings; callable as ``space(trial) -> config``.

    Args:
        fn: the define-by-run function ``fn(trial) -> dict``.
        name: a short name (the experiment name defaults to it).
        sampler: "tpe" (default), "grid" (exhaustive: optuna's BruteForceSampler, which enumerates conditional
            grids exactly; every suggestion must be categorical or stepped) or "random".
        num_samples: trials to run by default (None: the grid's size for "grid", else required at launch).
        repeats: seeds per sampled architecture by default (``TuneConfig.repeats``; 1: one run each).
        overrides: config keys set after the space returns (e.g. ``{"epochs": 2}`` from ``--epochs``).
        source: where the space came from (a file path), for messages.
        trainable: the user's own training function ``trainable(config, ctx)`` a search runs instead of the
            built-in loop (a space file's module-level ``trainable``); None: the built-in loop.

    Example:
        >>> def grid(trial):
        ...     k = trial.suggest_categorical("kernel_size", [3, 5, 7])
        ...     return {"backbone": "simple", "conv": "conv", "kernel_size": k}
        >>> space = SearchSpace(grid, name="grid", sampler="grid")
        >>> import optuna
        >>> space(optuna.trial.FixedTrial({"kernel_size": 5}))["kernel_size"]
        5
    """

    def __init__(self, fn: SpaceFn, *, name: str | None = None, sampler: str = "tpe", num_samples: int | None = None,
                 overrides: Mapping[str, Any] | None = None, source: str | None = None,
                 description: str = "", trainable: Callable[..., Any] | None = None, repeats: int = 1) -> None:
        if isinstance(fn, SearchSpace):
            fn = fn.fn
        if not callable(fn):
            raise SearchSpaceError(f"a search space must be a function of a trial, but got {type(fn).__name__}")
        if sampler not in SAMPLERS:
            raise SearchSpaceError(f"`sampler` must be one of {SAMPLERS}, but got {sampler!r}")
        if num_samples is not None and (not isinstance(num_samples, int) or num_samples < 1):
            raise SearchSpaceError(f"`num_samples` must be a positive int, but got {num_samples!r}")
        if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
            raise SearchSpaceError(f"`repeats` (REPEATS) must be an integer >= 1, but got {repeats!r}")
        self.fn = fn
        self.repeats = repeats
        self.name = name or getattr(fn, "__name__", "space")
        self.sampler = sampler
        self.num_samples = num_samples
        self.overrides = dict(overrides or {})
        self.source = source
        self.description = description
        self.trainable = trainable

    def __call__(self, trial: Any) -> dict[str, Any]:
        config = self.fn(trial)
        if not isinstance(config, Mapping):
            raise SearchSpaceError(
                f"search space {self.name!r} must return a trial config dict, but returned {type(config).__name__}"
            )
        return {**config, **self.overrides}

    def with_overrides(self, **overrides: Any) -> SearchSpace:
        """A copy whose configs get ``overrides`` (keys with value None are left alone)."""
        extra = {k: v for k, v in overrides.items() if v is not None}
        return SearchSpace(self.fn, name=self.name, sampler=self.sampler, num_samples=self.num_samples,
                           overrides={**self.overrides, **extra}, source=self.source, description=self.description,
                           trainable=self.trainable, repeats=getattr(self, "repeats", 1))

    def __reduce__(self):
        import cloudpickle

        module = sys.modules.get(getattr(self.fn, "__module__", ""), None)
        by_value = module is not None and getattr(module, "__nas_flex_space__", False)
        if by_value:  # a file loaded by path: its module exists in this process only
            cloudpickle.register_pickle_by_value(module)
        try:
            state = {k: v for k, v in self.__dict__.items()}
            payload = cloudpickle.dumps(_Rebuild(state))
        finally:
            if by_value:
                cloudpickle.unregister_pickle_by_value(module)
        return _load_pickled, (payload,)

    def __repr__(self) -> str:
        src = f", source={self.source!r}" if self.source else ""
        return f"SearchSpace({self.name!r}, sampler={self.sampler!r}{src})"


class _Rebuild:
    """Carrier that cloudpickle serialises by value and that unpickles into a SearchSpace."""

    def __init__(self, state: dict[str, Any]) -> None:
        self.state = state

    def __reduce__(self):
        return _from_state, (self.state,)


def _from_state(state: dict[str, Any]) -> SearchSpace:
    space = SearchSpace.__new__(SearchSpace)
    space.__dict__.update(state)
    return space


def load_space(path: str | Path) -> SearchSpace:
    """Load a search space from a Python file.

    The file defines ``space(trial) -> dict`` and may set ``SAMPLER`` ("tpe", "grid", "random"), ``NUM_SAMPLES``,
    ``REPEATS`` (seeds per architecture), a module docstring (shown as the description) and a function
    ``trainable(config, ctx)``: the search then runs it for each trial instead of the built-in loop. It is imported
    under a private module name and pickles by value,
    so Ray workers and a resume from another process need no access to the file.

    Raises:
        SearchSpaceError: missing file, no ``space`` function, or bad settings.
    """
    path = Path(path)
    if not path.is_file():
        raise SearchSpaceError(f"search space file {str(path)!r} does not exist (expected a .py file defining space)")
    digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:10]
    mod_name = f"nas_flex_space_{path.stem.replace('-', '_')}_{digest}"
    spec = importlib.util.spec_from_file_location(mod_name, path)
    if spec is None or spec.loader is None:
        raise SearchSpaceError(f"cannot import search space file {str(path)!r}")
    module = importlib.util.module_from_spec(spec)
    module.__nas_flex_space__ = True  # type: ignore[attr-defined]
    sys.modules[mod_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as err:
        del sys.modules[mod_name]
        raise SearchSpaceError(
            f"importing search space file {str(path)!r} failed: {type(err).__name__}: {err}"
        ) from err
    fn = getattr(module, "space", None)
    if not callable(fn):
        raise SearchSpaceError(f"search space file {str(path)!r} must define a function `space(trial) -> dict`")
    return SearchSpace(fn, name=path.stem, sampler=getattr(module, "SAMPLER", "tpe"),
                       num_samples=getattr(module, "NUM_SAMPLES", None), source=str(path),
                       repeats=getattr(module, "REPEATS", 1),
                       description=(module.__doc__ or "").strip().splitlines()[0] if module.__doc__ else "",
                       trainable=getattr(module, "trainable", None))
