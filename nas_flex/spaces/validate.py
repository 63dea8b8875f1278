"""Check a search space before anything launches, and replay stored params.

``validate_space`` draws configs from the space with an in-memory Optuna study (every point of a grid, or a random
sample), and checks each one: a dict, known keys of the right types, a known backbone, layer, pooling and dataset,
hyperparameters the layer takes, and (optionally) that the model builds and runs one example of the dataset's size.
Each error names the trial parameters that produced the bad config.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from nas_flex.errors import NasFlexError, SearchSpaceError, unknown_name
from nas_flex.spaces.space import SearchSpace

__all__ = ["validate_space", "validate_config", "replay", "sample_configs", "grid_size"]


def _optuna():
    try:
        import optuna
    except ImportError as err:  # pragma: no cover - optuna is a core dependency of the search extra
        raise SearchSpaceError("search spaces need optuna: pip install 'nas_flex[search]'") from err
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def replay(space: SearchSpace, params: Mapping[str, Any]) -> dict[str, Any]:
    """Rebuild the config a trial had from its stored Optuna params (``optuna.trial.FixedTrial``)."""
    optuna = _optuna()
    return space(optuna.trial.FixedTrial(dict(params)))


def _where(params: Mapping[str, Any]) -> str:
    return "with params " + json.dumps(dict(params), sort_keys=True, default=str) if params else "(no params)"


def validate_config(config: Any, params: Mapping[str, Any] | None = None, *,
                    build: bool = False) -> Mapping[str, Any]:
    """Check one trial config; return it resolved (defaults filled). Raises SearchSpaceError naming ``params``."""
    from nas_flex.data import available_datasets
    from nas_flex.layers import available, check_hparams
    from nas_flex.models import available as available_backbones
    from nas_flex.models import check_pooling
    from nas_flex.train.config import resolve_config

    where = _where(params or {})
    if not isinstance(config, Mapping):
        raise SearchSpaceError(f"the space returned {type(config).__name__}, not a config dict, {where}")
    try:
        cfg = resolve_config(config)
    except NasFlexError as err:
        raise SearchSpaceError(f"invalid trial config {where}: {err}") from None
    checks = [
        ("backbone", cfg["backbone"], available_backbones()),
        ("layer", cfg["conv"], available()),
        ("dataset", cfg["dataset"].lower(), available_datasets()),
    ]
    try:
        for key, value, valid in checks:
            if value not in valid:
                raise unknown_name(key, value, valid)
        check_pooling(cfg["pooling"])
        check_hparams(cfg["conv"], cfg["conv_hparams"], where=" in conv_hparams")
    except NasFlexError as err:
        raise SearchSpaceError(f"invalid trial config {where}: {err}") from None
    if build:
        _dry_build(cfg, where)
    return cfg


def _dry_build(cfg: Mapping[str, Any], where: str) -> None:
    """Build the model and run one zero example of the dataset's shape (catches kernels larger than a stage)."""
    import torch

    from nas_flex.data import dataset_from_config
    from nas_flex.models import build

    try:
        splits = dataset_from_config(cfg)
        model = build(cfg, in_channels=splits.input_shape[0], num_classes=splits.num_classes,
                      input_size=tuple(splits.input_shape[1:]))
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, *splits.input_shape))
    except NasFlexError as err:
        raise SearchSpaceError(f"config {where} does not build: {err}") from None


def grid_size(space: SearchSpace, limit: int = 100_000) -> int:
    """Number of distinct points of a grid space (BruteForceSampler enumeration), up to ``limit``."""
    return len(sample_configs(space, "grid", limit)[0])


def sample_configs(space: SearchSpace, sampler: str, n: int, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Draw up to ``n`` (params, config) pairs from ``space`` with an in-memory study; a grid is enumerated."""
    import warnings

    optuna = _optuna()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if sampler == "grid":
            ot_sampler = optuna.samplers.BruteForceSampler(seed=seed)
        else:
            ot_sampler = optuna.samplers.RandomSampler(seed=seed)
    study = optuna.create_study(sampler=ot_sampler)
    params_list: list[dict] = []
    configs: list[dict] = []

    def objective(trial: Any) -> float:
        try:
            config = space(trial)
        except NasFlexError:
            raise
        except Exception as err:
            raise SearchSpaceError(
                f"search space {space.name!r} raised {type(err).__name__}: {err} {_where(trial.params)}"
            ) from err
        params_list.append(dict(trial.params))
        configs.append(config)
        return 0.0

    # optimize (not ask/tell): BruteForceSampler ends the study itself once every grid point was drawn
    study.optimize(objective, n_trials=n)
    return params_list, configs


def validate_space(space: SearchSpace, *, samples: int = 32, seed: int = 0, build: bool = True,
                   max_builds: int = 12) -> list[Mapping[str, Any]]:
    """Dry-run ``space`` and check every sampled config; return the resolved configs.

    Args:
        space: the space.
        samples: configs to draw (a grid is enumerated completely, up to this many points times 100).
        seed: sampler seed.
        build: also build each distinct architecture (up to ``max_builds``) and run one example through it.

    Raises:
        SearchSpaceError: naming the trial params that produced the first invalid config.
    """
    n = samples * 100 if space.sampler == "grid" else samples
    params_list, configs = sample_configs(space, space.sampler, n, seed)
    if not configs:
        raise SearchSpaceError(f"search space {space.name!r} produced no configs")
    resolved, built = [], set()
    for params, config in zip(params_list, configs):
        cfg = validate_config(config, params)
        key = cfg.key
        if build and key not in built and len(built) < max_builds:
            _dry_build(cfg, _where(params))
            built.add(key)
        resolved.append(cfg)
    return resolved
