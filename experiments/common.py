"""What the experiment scripts share: the repository's folders, the main job's trial configs, and writing numbers.

The main job's configs come from its space file, ``search_spaces/grid_vs_learned.py`` (``BASE``, ``METHODS`` and
``space``), never from a copy, so a script measures what ``make search`` trains. Every script writes its numbers
under ``experiments/results/`` with the scope they were measured in (date, machine, torch, threads, arguments).

Scripts run from the repository root as ``python -m experiments.<name>`` and import this module as
``from experiments.common import ...``.
"""

from __future__ import annotations

import copy
import json
import os
import platform
import runpy
import sys
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "experiments" / "results"
SPACES = ROOT / "search_spaces"
MAIN_JOB_SPACE = SPACES / "grid_vs_learned.py"

__all__ = ["ROOT", "RESULTS", "SPACES", "MAIN_JOB_SPACE", "space_constants", "main_job_base", "main_job_methods",
           "main_job_config", "scope", "write_json", "append_jsonl"]


def space_constants(path: str | os.PathLike = MAIN_JOB_SPACE) -> dict[str, Any]:
    """The upper-case module constants of a space file of this repository (``BASE``, ``METHODS``, ``SAMPLER``...).

    Only for the repository's own ``search_spaces/`` files: the file is executed, as ``nas_flex.spaces.load_space``
    does when a search loads it.
    """
    names = runpy.run_path(str(path))
    return {k: copy.deepcopy(v) for k, v in names.items() if k.isupper() and not k.startswith("_")}


def main_job_base() -> dict[str, Any]:
    """The main job's shared trial config (backbone, data, width, budget, learning rate): its space file's ``BASE``."""
    return space_constants(MAIN_JOB_SPACE)["BASE"]


def main_job_methods() -> list[str]:
    """The layer kinds the main job compares (its space file's ``METHODS``)."""
    return list(space_constants(MAIN_JOB_SPACE)["METHODS"])


def main_job_config(method: str, pooling: str, kernel_size: int | None = None) -> dict[str, Any]:
    """The trial config the main job's space gives for these choices (replayed through ``nas_flex.spaces.replay``),
    with ``pooling`` set as asked.

    Args:
        method: one of ``main_job_methods()``.
        pooling: "max" or "avg".
        kernel_size: the grid's kernel size; needed (and only used) for ``method="conv"``.

    Raises:
        ValueError: a method the main job does not run, or ``conv`` without a kernel size.
    """
    from nas_flex.spaces import load_space, replay

    methods = main_job_methods()
    if method not in methods:
        raise ValueError(f"method must be one of the main job's {methods}, but got {method!r}")
    params: dict[str, Any] = {"method": method}
    if method == "conv":
        if kernel_size is None:
            raise ValueError("method 'conv' needs a kernel_size (the grid's 3, 5 or 7)")
        params["kernel_size"] = kernel_size
    # the space fixes one pooling for its 3-seed budget (POOLING); the experiments still choose either
    return {**replay(load_space(MAIN_JOB_SPACE), params), "pooling": pooling}


def scope(**extra: Any) -> dict[str, Any]:
    """Where and how a number was measured: UTC time, machine, Python, torch and its threads, the command line."""
    info: dict[str, Any] = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                            "machine": platform.machine(), "processor": platform.processor() or None,
                            "cpus": os.cpu_count(), "python": platform.python_version(), "argv": sys.argv[1:]}
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        info.update(torch=torch.__version__, threads=torch.get_num_threads())
    return {**info, **extra}


def _results_path(name: str | os.PathLike, suffix: str) -> Path:
    path = Path(name)
    if not path.suffix:
        path = path.with_suffix(suffix)
    return path if path.is_absolute() or path.parent != Path(".") else RESULTS / path


def write_json(name: str | os.PathLike, data: Mapping[str, Any]) -> Path:
    """Write ``data`` (with its ``scope()``) as JSON: a bare name goes to ``experiments/results/NAME.json``, a path
    as given. The file is replaced in one step (a temporary file, then ``os.replace``). Returns the path."""
    path = _results_path(name, ".json")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps({"scope": scope(), **data}, indent=2, default=str) + "\n")
    os.replace(tmp, path)
    return path


def append_jsonl(name: str | os.PathLike, record: Mapping[str, Any]) -> Path:
    """Append one run's ``record`` (with its ``scope()``) as a JSON line: a bare name goes to
    ``experiments/results/NAME.jsonl``. Runs with other arguments accumulate instead of overwriting each other."""
    path = _results_path(name, ".jsonl")
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps({"scope": scope(), **record}, default=str) + "\n")
    return path
