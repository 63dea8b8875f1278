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

