"""Export the best architectures: architecture JSON + trained weights + a deployable plain-PyTorch model.

``nas_flex.search`` keeps each trial's trained weights in ``<storage>/_weights/``; ``export_trial`` /
``export_best`` use them (or a state_dict given with ``weights=``), and retrain the chosen trial from its stored
config with ``nas_flex.train.run_trial`` (deterministic on the CPU for the config's seed) only when neither exists,
e.g. for rows written by hand. See ``nas_flex.export.core`` for the files written.

Example:
    >>> from nas_flex.export import export_best, load_model, discretise  # doctest: +SKIP
    >>> result = export_best("runs/digits", "exports/best")  # doctest: +SKIP
    >>> model = load_model("exports/best")  # trainable, with the trained weights  # doctest: +SKIP
    >>> plain = torch.jit.load("exports/best/model.torchscript.pt")  # deployable  # doctest: +SKIP
    >>> logits = run_onnx("exports/best/model.onnx", x)  # the ONNX file, run by onnxruntime  # doctest: +SKIP
"""

from nas_flex.export.architecture import discretise, load_architecture, load_model, load_state_dict_file, round_odd
from nas_flex.export.core import ExportResult, export_best, export_row, export_trial, find_row, run_onnx
from nas_flex.export.deploy import (
    EquivalenceError,
    ExportError,
    FixedCircularConv2d,
    FixedSubsample2d,
    check_outputs_match,
    to_deployable,
)

__all__ = [
    "export_trial",
    "export_best",
    "export_row",
    "find_row",
    "run_onnx",
    "ExportResult",
    "discretise",
    "load_model",
    "load_architecture",
    "load_state_dict_file",
    "round_odd",
    "to_deployable",
    "check_outputs_match",
    "FixedCircularConv2d",
    "FixedSubsample2d",
    "ExportError",
    "EquivalenceError",
]


def export(leaderboard, out, *, trial: str | None = None, metric: str = "metrics_val_acc", **kwargs) -> ExportResult:
    """``nas_flex.export(path, out)``: export the best trial by ``metric`` (or the trial ``trial``) of a leaderboard.

    The same as ``export_trial`` / ``export_best``; see them for the keyword arguments.
    """
    if trial is not None:
        return export_trial(leaderboard, trial, out, **kwargs)
    return export_best(leaderboard, out, metric=metric, **kwargs)


def _make_callable() -> None:
    # `nas_flex.export` is this package and also the function `nas_flex.export(path, out, ...)`: the module's class
    # gets a __call__, so `from nas_flex.export import discretise` and `nas_flex.export(...)` both work
    import sys
    import types

    class _CallableModule(types.ModuleType):
        def __call__(self, *args, **kwargs):
            return export(*args, **kwargs)

    sys.modules[__name__].__class__ = _CallableModule


_make_callable()
__all__.append("export")
