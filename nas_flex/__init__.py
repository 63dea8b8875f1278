"""nas_flex: kernel size as something learned.

Discrete kernel-size / pooling grids, the DARTS-style mixed-kernel layer and layers that learn their own size
(FlexConv, N-Jet, adaptive Gaussian envelopes, NIFF, CF-Conv), compared in one search.

``import nas_flex`` is light: submodules (and torch) load on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# attribute -> module that defines it; imported lazily on first access
_LAZY = {
    "learned_sizes": "nas_flex.sizes",
    "layers": "nas_flex.layers",
    "functional": "nas_flex.functional",
    "kernels": "nas_flex.kernels",
    "errors": "nas_flex.errors",
    "data": "nas_flex.data",
    "spaces": "nas_flex.spaces",
    "models": "nas_flex.models",
    "train": "nas_flex.train",
    "tune": "nas_flex.tune",
    "leaderboard": "nas_flex.leaderboard",
    "record": "nas_flex.record",
    "search": "nas_flex.tune.runner",
    "TuneConfig": "nas_flex.tune.options",
    "RunConfig": "nas_flex.tune.options",
    "Leaderboard": "nas_flex.leaderboard",
    "export": "nas_flex.export",
    "report": "nas_flex.report",
}

if TYPE_CHECKING:
    from nas_flex import (  # noqa: F401
        data,
        errors,
        export,
        functional,
        kernels,
        layers,
        leaderboard,
        models,
        record,
        report,
        spaces,
        train,
        tune,
    )
    from nas_flex.leaderboard import Leaderboard  # noqa: F401
    from nas_flex.sizes import learned_sizes  # noqa: F401
    from nas_flex.tune.options import RunConfig, TuneConfig  # noqa: F401
    from nas_flex.tune.runner import search  # noqa: F401

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module = importlib.import_module(_LAZY[name])
        value = module if _LAZY[name].rsplit(".", 1)[-1] == name else getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'nas_flex' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
