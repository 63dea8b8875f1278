"""``export_trial`` / ``export_best``: a leaderboard trial -> architecture JSON + weights + deployable model.

**Weights.** ``nas_flex.search`` keeps every trial's trained weights in the storage
(``<storage>/_weights/<experiment>--<trial_id>.pt``, see ``nas_flex.storage.layout``); ``export_trial`` and
``export_best`` use them. A state_dict given with ``weights=`` takes precedence. Only when neither exists (a row
written by hand, or a storage whose weights were deleted) does export *retrain* the trial from its stored config
with ``nas_flex.train.run_trial`` into ``<out>/training/`` (deterministic on the CPU for a given seed; on a GPU it may
differ slightly from the search's run). Exporting again into the same folder (``force=True``) reuses that checkpoint.

Files written to ``out``:

=========================  ==================================================================================
architecture.json          the trial config, dataset dims, per layer the learned size and its odd rounding,
                           the discretised plain-CNN config, the equivalence check, the files
weights.safetensors        the trained (trainable) model's state_dict (non-tensor state in the metadata)
state_dict.pt              the same, ``torch.save``; loads with ``torch.load(..., weights_only=True)``
model.torchscript.pt       the deployable model, TorchScript (``torch.jit.load``)
model.pt2                  the deployable model, ``torch.export.save`` (``torch.export.load(...).module()``)
model.onnx                 the deployable model, ONNX (``onnx=True``, the default; needs onnx, onnxscript and
                           onnxruntime: the ``export`` extra), checked with onnxruntime like the other formats
=========================  ==================================================================================
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nas_flex.export.architecture import (
    ARCHITECTURE_FILE,
    FORMAT,
    FORMAT_VERSION,
    STATE_DICT_FILE,
    WEIGHTS_FILE,
    discretise,
    load_state_dict_file,
    round_odd,
    row_config,
)
from nas_flex.export.deploy import ExportError, check_outputs_match, to_deployable
from nas_flex.export.folder import TRAINING_DIR, check_out, staged_export
from nas_flex.record import TrialStatus, to_jsonable
from nas_flex.storage.atomic import write_atomic
from nas_flex.storage.layout import TRIAL_STATE_FILE, StorageLayout
from nas_flex.storage.safety import check_experiment, check_trial_id, inside

__all__ = ["ExportResult", "export_trial", "export_best", "export_row", "find_row", "TORCHSCRIPT_FILE",
           "EXPORTED_PROGRAM_FILE", "ONNX_FILE", "ONNX_PACKAGES", "run_onnx"]

TORCHSCRIPT_FILE = "model.torchscript.pt"
EXPORTED_PROGRAM_FILE = "model.pt2"
ONNX_FILE = "model.onnx"
#: what the ONNX export needs: the exporter (onnx, onnxscript: torch.onnx's dynamo exporter) and the runtime that
#: checks the written file (onnxruntime); all three are in the ``export`` extra
ONNX_PACKAGES = ("onnx", "onnxscript", "onnxruntime")

Log = Callable[[str], None]


@dataclasses.dataclass
class ExportResult:
    """What an export wrote.

    Attributes:
        out: the export directory.
        architecture: the architecture JSON's content.
        files: kind ("architecture", "safetensors", "state_dict", "torchscript", "torch_export", "onnx") -> path.
        model: the trained, trainable model (eval mode).
        deployable: the plain-PyTorch model (eval mode).
        max_rel_diff: per checked format, the largest output difference relative to the output scale.
    """

    out: Path
    architecture: dict[str, Any]
    files: dict[str, Path]
    model: nn.Module
    deployable: nn.Module
    max_rel_diff: dict[str, float]


def _noop(_: str) -> None:
    pass


# ----------------------------------------------------------------------------------------------------- finding
def find_row(leaderboard: Any, trial_id: str, *, experiment: str | None = None) -> Any:
    """The leaderboard row (pandas Series) of ``trial_id`` (in ``experiment``, if given)."""
    from nas_flex.leaderboard import Leaderboard

    lb = leaderboard if isinstance(leaderboard, Leaderboard) else Leaderboard(leaderboard)
    df = lb.to_pandas()
    rows = df[df["trial_id"] == trial_id]
    if experiment is not None:
        rows = rows[rows["experiment"] == experiment]
    if rows.empty:
        ids = sorted(df["trial_id"].astype(str).unique().tolist())
        shown = ", ".join(ids[:20]) + (f", ... ({len(ids)} in all)" if len(ids) > 20 else "")
        where = f" in experiment {experiment!r}" if experiment is not None else ""
        raise ExportError(f"no trial {trial_id!r}{where} in the leaderboard {str(lb.path)!r}; "
                          f"trial ids: {shown or '-'}")
    if len(rows) > 1:
        raise ExportError(f"trial id {trial_id!r} is in several experiments {sorted(rows['experiment'].unique())}: "
                          "pass experiment=... (--experiment)")
    return rows.iloc[0]


def export_best(leaderboard: Any, out: str | os.PathLike, *, metric: str = "metrics_val_acc",
                **kwargs: Any) -> ExportResult:
    """Export the best completed trial of a leaderboard by ``metric`` (in its recorded direction).

    Uses the weights its search kept (or ``weights=``), retraining it from its config only when there are none (see
    the module docstring); other keyword arguments as ``export_row``.
    """
    from nas_flex.leaderboard import Leaderboard

    check_out(out, force=kwargs.get("force", False))  # before reading or training anything
    if str(metric).removeprefix("metrics_").startswith("test_"):
        warnings.warn(f"export_best by {metric!r} chooses the trial on the held-out test split: its test score is "
                      "then no longer an unbiased estimate; choose by a validation metric to keep the split held out",
                      UserWarning, stacklevel=2)
    lb = leaderboard if isinstance(leaderboard, Leaderboard) else Leaderboard(leaderboard)
    row = lb.best(metric)
    _kept_weights(lb.path, row, kwargs)
    return export_row(row, out, source={"leaderboard": str(lb.path), "metric": metric}, **kwargs)


def export_trial(leaderboard: Any, trial_id: str, out: str | os.PathLike, *, experiment: str | None = None,
                 **kwargs: Any) -> ExportResult:
    """Export one trial of a leaderboard by id, with the weights its search kept (or ``weights=``), retraining it
    from its config only when there are none (see the module docstring); other keyword arguments as ``export_row``.

    Raises:
        ExportError: the trial id is unknown (the valid ones are listed) or ambiguous.
    """
    check_out(out, force=kwargs.get("force", False))  # before reading or training anything
    row = find_row(leaderboard, trial_id, experiment=experiment)
    _kept_weights(getattr(leaderboard, "path", leaderboard), row, kwargs)
    return export_row(row, out, source={"leaderboard": str(getattr(leaderboard, "path", leaderboard))}, **kwargs)


def kept_weights_path(leaderboard_path: str | os.PathLike, experiment: str, trial_id: str) -> Path:
    """Where a search keeps a trial's trained weights (``nas_flex.search`` writes them when the trial ends).

    Raises:
        UnsafeStorageError: ``experiment`` or ``trial_id`` (read from a row) could name a path outside the storage.
    """
    where = f"the leaderboard {str(leaderboard_path)!r}"
    path = StorageLayout(leaderboard_path).weights(check_experiment(experiment, where), check_trial_id(trial_id, where))
    inside(leaderboard_path, path)
    return path


def _kept_weights(leaderboard_path: Any, row: Any, kwargs: dict[str, Any]) -> None:
    """Use the weights the search kept for this trial, unless the caller passed ``weights``; refuse, before any
    work, a trial that the user's own training function trained (export cannot rebuild the user's model)."""
    path = kept_weights_path(leaderboard_path, str(row["experiment"]), str(row["trial_id"]))
    _refuse_user_loop(leaderboard_path, row, path)
    if kwargs.get("weights") is None and path.is_file():
        kwargs["weights"] = path


def _refuse_user_loop(leaderboard_path: Any, row: Any, weights: Path) -> None:
    """An ``ExportError`` for a row of an experiment run with ``search(..., trainable=fn)``: its weights are the
    user's model's, and export rebuilds the config's built-in backbone, so they cannot fit."""
    from nas_flex.storage import read_json

    meta = StorageLayout(leaderboard_path).experiment_file(str(row["experiment"]))
    if meta.is_file() and read_json(inside(leaderboard_path, meta)).get("trainable", False):
        raise ExportError(
            f"trial {row['trial_id']!r} of experiment {row['experiment']!r} was trained by your own training function "
            f"(trainable=): export rebuilds nas_flex's built-in model from the config and cannot hold your model's "
            f"weights. Build your model and load {str(weights)!r} into it with torch.load(..., weights_only=True) "
            "(docs/trainable.md)")


# ------------------------------------------------------------------------------------------------------ weights
def _save_weights(model: nn.Module, out: Path) -> tuple[Path, Path]:
    from safetensors.torch import save_file

    state = model.state_dict()
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state.items() if isinstance(v, torch.Tensor)}
    extra = {k: v for k, v in state.items() if not isinstance(v, torch.Tensor)}
    st = out / WEIGHTS_FILE
    save_file(tensors, str(st), metadata={"format": FORMAT, "nas_flex_extra_state": json.dumps(extra)})
    pt = out / STATE_DICT_FILE
    torch.save({k: (v.detach().cpu() if isinstance(v, torch.Tensor) else v) for k, v in state.items()}, pt)
    return st, pt


def _trained_state(cfg: dict[str, Any], out: Path, weights: Any, log: Log) -> tuple[dict[str, Any], dict[str, Any]]:
    """(state_dict, provenance): from ``weights`` or by retraining the config into ``out/training``."""
    if weights is not None:
        if isinstance(weights, Mapping):
            return dict(weights), {"weights": "given state_dict"}
        return load_state_dict_file(weights), {"weights": str(weights)}
    from nas_flex.train import run_trial

    ckpt_dir = out / TRAINING_DIR
    log(f"no kept weights for this trial: retraining it from its config ({cfg['epochs']} epochs, "
        f"seed {cfg['seed']}) into {ckpt_dir} ...")
    result = run_trial(cfg, checkpoint_dir=ckpt_dir)
    if result.status is not TrialStatus.COMPLETED:
        raise ExportError(f"retraining the trial did not complete: status {result.status.value!r}: {result.error}")
    state = torch.load(ckpt_dir / TRIAL_STATE_FILE, map_location="cpu", weights_only=True)["model"]
    log(f"retrained: val_acc {result.metrics['val_acc']:.4f}")
    return state, {"weights": "retrained with nas_flex.train.run_trial", "retrained_metrics": dict(result.metrics)}


# ------------------------------------------------------------------------------------------------------ formats
def _torchscript(plain: nn.Module, x: torch.Tensor, path: Path) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated but still the portable format
        try:
            scripted = torch.jit.script(plain)
            how = "script"
        except Exception:  # noqa: BLE001 - some module did not script: a trace holds for the exported input size
            scripted = torch.jit.trace(plain, (x,), check_trace=False)
            how = "trace"
        torch.jit.save(scripted, str(path))
    return how


def _torch_export(plain: nn.Module, x: torch.Tensor, path: Path) -> str:
    try:
        batch = torch.export.Dim("batch", min=1, max=65536)
        program = torch.export.export(plain, (x,), dynamic_shapes=({0: batch},))
        how = "dynamic batch"
    except Exception:  # noqa: BLE001 - fall back to the example's static shape
        program = torch.export.export(plain, (x,))
        how = f"static batch {x.shape[0]}"
    torch.export.save(program, str(path))
    return how


def _require_onnx() -> None:
    """Raise before any expensive work when a package the ONNX export needs is missing."""
    missing = [name for name in ONNX_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise ExportError(
            f"ONNX export needs the packages {', '.join(ONNX_PACKAGES)}, but {', '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} not installed: pip install 'nas_flex[export]' (versions pinned "
            "in requirements.lock), or pass onnx=False (nas-flex export --no-onnx) to write the other formats only"
        )


def _onnx(plain: nn.Module, x: torch.Tensor, path: Path) -> str:
    import onnx

    kwargs = {"input_names": ["input"], "output_names": ["logits"], "dynamo": True, "external_data": False,
              "verbose": False}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation and tracing chatter
        try:
            torch.onnx.export(plain, (x,), str(path), dynamic_shapes=({0: torch.export.Dim("batch")},), **kwargs)
            how = "dynamic batch"
        except Exception:  # noqa: BLE001 - fall back to the example's static shape, as torch.export does
            try:
                torch.onnx.export(plain, (x,), str(path), **kwargs)
            except Exception as err:
                path.unlink(missing_ok=True)
                raise ExportError(
                    f"torch.onnx.export failed on the deployable model: {type(err).__name__}: "
                    f"{str(err).splitlines()[0][:300]}. The weights, TorchScript and torch.export files are written; "
                    "pass onnx=False (--no-onnx) to skip ONNX"
                ) from err
            how = f"static batch {x.shape[0]}"
    onnx.checker.check_model(str(path))
    return f"opset {onnx.load(str(path), load_external_data=False).opset_import[0].version}, {how}"


def run_onnx(path: str | os.PathLike, x: torch.Tensor) -> torch.Tensor:
    """The output of an exported ``model.onnx`` on ``x`` (N, C, H, W), run by onnxruntime on the CPU with torch's
    thread count."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()  # stay within the thread budget the caller set
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {"input": x.detach().cpu().float().numpy()})
    return torch.from_numpy(out)


# ----------------------------------------------------------------------------------------------------- exporting
def _layer_records(model: nn.Module, plain: nn.Module) -> list[dict[str, Any]]:
    from nas_flex.layers.base import KernelLayer

    deployed = dict(plain.named_modules())
    out = []
    for name, m in model.named_modules():
        if not isinstance(m, KernelLayer):
            continue
        h, w = m.effective_kernel_size
        dep = deployed.get(name)
        if dep is not None and hasattr(dep, "weight") and isinstance(dep.weight, torch.Tensor):
            shape = list(dep.weight.shape[2:])
        elif dep is not None and hasattr(dep, "height"):
            shape = [dep.height, dep.width]
        else:
            shape = None
        raw = {k: v for k, v in m.size_record().items() if isinstance(v, (int, float, str, bool)) or v is None}
        out.append({
            "name": name, "kind": m.kind, "domain": m.domain, "learned": bool(m.learns_size),
            "height": float(h), "width": float(w), "kernel_size": [round_odd(h), round_odd(w)],
            "grid": list(m.last_input_size) if m.last_input_size else None,
            "deployed": {"module": type(dep).__name__ if dep is not None else None, "kernel_shape": shape},
            "raw": {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in raw.items()},
        })
    return out


def export_row(row: Any, out: str | os.PathLike, *, weights: Any = None, check_examples: int = 64,
               rtol: float = 1e-4, source: Mapping[str, Any] | None = None, log: Log | None = None,
               onnx: bool = True, force: bool = False) -> ExportResult:
    """Export a leaderboard row (or a trial config) into ``out``, never overwriting it in place.

    Args:
        row: a leaderboard row (pandas Series) or a trial config dict.
        out: the export directory: new, empty, or (with ``force``) an old one to replace.
        weights: a state_dict (mapping), a ``.safetensors`` / ``torch.save`` file (a run_trial ``trial_state.pt``
            works) or an export directory, holding the trained weights. None (default): **retrain** the trial
            from its config with ``run_trial`` into ``out/training`` (``export_best`` / ``export_trial`` first look
            for the weights the search kept in ``<storage>/_weights/``).
        check_examples: validation examples of the trial's dataset the deployable models are checked on.
        rtol: tolerance of the check, relative to the largest |output|.
        source: provenance written into the JSON (leaderboard path, metric).
        log: called with progress lines (the CLI passes print).
        onnx: also write ``model.onnx`` and check it with onnxruntime (needs ``ONNX_PACKAGES``).
        force: replace a non-empty ``out``. The export is written into a new sibling folder and swapped in at the
            end, so a failure leaves the old folder exactly as it was (``nas_flex.export.folder``).

    Raises:
        EquivalenceError: a deployable model's outputs differ from the trained model's (an ``ExportError``).
        ExportError: ``out`` is a file or a non-empty folder without ``force`` (raised before any work); ``onnx``
            is true but onnx, onnxscript or onnxruntime is missing (before any work); the weights file is missing,
            truncated or not a state_dict (one line naming it).

    A failed export leaves no half-written folder: ``out`` is as it was, except that a finished retraining
    checkpoint is kept in ``out/training`` when ``out`` held nothing else; the next export into it reuses it.
    """
    log = log or _noop
    out = check_out(out, force=force)
    if onnx:
        _require_onnx()
    with staged_export(out) as stage:
        result = _export_row(row, stage, weights=weights, check_examples=check_examples, rtol=rtol, source=source,
                             log=log, onnx=onnx)
    files = {kind: out / path.relative_to(stage) for kind, path in result.files.items()}
    log(f"exported to {out}: " + ", ".join(p.name for p in files.values()))
    return dataclasses.replace(result, out=out, files=files)


def _given_weights(weights: Any, log: Log) -> tuple[Any, str | None]:
    """(state_dict or None, the file it came from): a bad file fails here, before anything is written."""
    if weights is None or isinstance(weights, Mapping):
        return weights, None
    log(f"using the weights in {weights}")
    return load_state_dict_file(weights), str(weights)


def _trained_model(cfg: dict[str, Any], splits: Any, out: Path, weights: Any, weights_file: str | None,
                   log: Log) -> tuple[nn.Module, dict[str, Any]]:
    """(the trial's model with its trained weights, in eval mode; where the weights came from)."""
    from nas_flex.models import build

    in_channels, num_classes, input_size = _dims(splits)
    state, provenance = _trained_state(cfg, out, weights, log)
    if weights_file is not None:
        provenance = {"weights": weights_file}
    model = build(cfg, in_channels=in_channels, num_classes=num_classes, input_size=input_size)
    try:
        model.load_state_dict(state)
    except (RuntimeError, KeyError, ValueError) as err:  # torch lists every missing / unexpected key, many lines
        what = f"the weights file {weights_file!r}" if weights_file else "the given weights"
        raise ExportError(f"{what} do not fit the trial's model: {str(err).strip().splitlines()[0][:300]}") from None
    return model.eval(), provenance


def _dims(splits: Any) -> tuple[int, int, tuple[int, ...]]:
    """(in_channels, num_classes, input size: (H, W) of images, (L,) of sequences) of a dataset's splits."""
    input_size = tuple(int(s) for s in splits.input_shape[1:])
    if len(input_size) not in (1, 2):
        raise ExportError(f"export supports images (C, H, W) and sequences (C, L), not input shape "
                          f"{splits.input_shape}")
    return int(splits.input_shape[0]), int(splits.num_classes), input_size


def _write_deployables(plain: nn.Module, x: torch.Tensor, reference: torch.Tensor, out: Path, rtol: float,
                       onnx: bool) -> tuple[dict[str, Path], dict[str, str], dict[str, float]]:
    """Write the deployable model in each format and check each file's outputs against ``reference``:
    (files, how each was written, max relative difference of each)."""
    files, notes, diffs = {}, {}, {}
    ts = out / TORCHSCRIPT_FILE
    notes["torchscript"] = _torchscript(plain, x, ts)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load is deprecated, still the portable loader
        diffs["torchscript"] = check_outputs_match(reference, torch.jit.load(str(ts))(x), rtol=rtol,
                                                   what="TorchScript model")
    files["torchscript"] = ts
    ep = out / EXPORTED_PROGRAM_FILE
    notes["torch_export"] = _torch_export(plain, x, ep)
    with torch.no_grad():
        diffs["torch_export"] = check_outputs_match(reference, torch.export.load(str(ep)).module()(x), rtol=rtol,
                                                    what="torch.export program")
    files["torch_export"] = ep
    if onnx:
        onnx_path = out / ONNX_FILE
        notes["onnx"] = _onnx(plain, x, onnx_path)
        diffs["onnx"] = check_outputs_match(reference, run_onnx(onnx_path, x), rtol=rtol,
                                            what="ONNX model (onnxruntime)")
        files["onnx"] = onnx_path
    else:
        notes["onnx"] = "not written (onnx=False)"
    return files, notes, diffs


def _row_info(row: Any) -> dict[str, Any]:
    """The identity and headline metrics of a leaderboard row (nothing for a plain config)."""
    if not (hasattr(row, "get") and isinstance(row.get("config"), str)):
        return {}
    keys = ("experiment", "trial_id", "metrics_val_acc", "best_val_acc", "flops", "params", "params_conv")
    return {key: to_jsonable(row[key]) for key in keys if key in row}


def _discrete_config(cfg: dict[str, Any], layers: list[dict[str, Any]], dims: tuple[int, int, tuple[int, ...]],
                     notes: dict[str, str]) -> dict[str, Any] | None:
    """The plain-CNN config of the learned sizes (``discretise``), or None with the reason in ``notes``."""
    in_channels, num_classes, input_size = dims
    try:
        return discretise(cfg, [r for r in layers if r["learned"]], in_channels=in_channels,
                          num_classes=num_classes, input_size=input_size)
    except ExportError as err:
        notes["discretise"] = str(err)
        return None


def _write_architecture(file: Path, arch: dict[str, Any]) -> None:
    text = json.dumps(to_jsonable(arch), indent=2, allow_nan=False)
    write_atomic(file, lambda tmp: tmp.write_text(text))


def _export_row(row: Any, out: Path, *, weights: Any, check_examples: int, rtol: float,
                source: Mapping[str, Any] | None, log: Log, onnx: bool) -> ExportResult:
    from nas_flex import __version__
    from nas_flex.data import dataset_from_config
    from nas_flex.train.config import resolve_config

    weights, weights_file = _given_weights(weights, log)
    out.mkdir(parents=True, exist_ok=True)
    cfg = resolve_config(row_config(row)[0])
    splits = dataset_from_config(cfg)
    dims = _dims(splits)
    model, provenance = _trained_model(cfg, splits, out, weights, weights_file, log)

    n = max(1, min(check_examples, len(splits.val)))
    x = torch.stack([splits.val[i][0] for i in range(n)]).float()
    with torch.no_grad():
        reference = model(x)  # also sets every layer's grid to the deployment size
        plain = to_deployable(model, x)
        deployable_diff = check_outputs_match(reference, plain(x), rtol=rtol)
    files = dict(zip(("safetensors", "state_dict"), _save_weights(model, out)))
    written, notes, diffs = _write_deployables(plain, x, reference, out, rtol, onnx)
    files.update(written)
    diffs = {"deployable": deployable_diff, **diffs}
    log(f"deployable models ({', '.join(diffs)}) checked on {n} validation examples: max relative difference "
        f"{max(diffs.values()):.2g} (tolerance {rtol:g})")

    layers = _layer_records(model, plain)
    discrete = _discrete_config(cfg, layers, dims, notes)
    files["architecture"] = out / ARCHITECTURE_FILE
    arch = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "nas_flex_version": __version__,
        "torch_version": torch.__version__, "source": {**(source or {}), **_row_info(row), **to_jsonable(provenance)},
        "config": cfg, "in_channels": dims[0], "num_classes": dims[1], "input_size": list(dims[2]),
        "layers": layers, "discrete_config": discrete,
        "check": {"examples": n, "rtol": rtol, "max_rel_diff": diffs}, "notes": notes,
        "files": {k: p.name for k, p in files.items()},
    }
    _write_architecture(files["architecture"], arch)
    return ExportResult(out=out, architecture=arch, files=files, model=model, deployable=plain, max_rel_diff=diffs)
