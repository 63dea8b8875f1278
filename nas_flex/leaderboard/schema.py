"""The leaderboard's Parquet schema (version 1) and the conversion of a ``run_trial`` result into one row.

Two tables, both explicit pyarrow schemas carrying their version in a column and in the schema metadata:

* ``TRIAL_SCHEMA``: one row per finished trial (identity, status, timestamps, the config as JSON text and flattened
  into ``params_*`` columns of fixed types, final and best metrics, compute, learned sizes, versions);
* ``HISTORY_SCHEMA``: one row per trial and epoch (the per-epoch metrics and learned sizes).

Each metric's direction ("max" or "min") comes from ``nas_flex.record.METRIC_TABLE`` (``METRIC_DIRECTIONS``,
``HISTORY_METRIC_DIRECTIONS``) and is recorded in the schema metadata (``nas_flex.metric_directions``) and on the
metric's field (``direction``), so ranking never guesses.

pyarrow and the standard library only: a trial process writes its row without pandas or torch.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

import pyarrow as pa

from nas_flex.config import arrow_types
from nas_flex.errors import LeaderboardSchemaError
from nas_flex.record import (
    HISTORY_METRIC_DIRECTIONS,
    KEY_NEUTRAL,
    METRIC_DIRECTIONS,
    RESULT_FIELDS,
    TASK_METRICS,
    TEST_METRICS,
    TrialRecord,
    architecture_key,
    config_hash,
    keyed_values,
    to_jsonable,
)

__all__ = [
    "SCHEMA_VERSION",
    "TRIAL_SCHEMA",
    "HISTORY_SCHEMA",
    "METRIC_DIRECTIONS",
    "HISTORY_METRIC_DIRECTIONS",
    "CONFIG_COLUMNS",
    "LEARNED_SIZE_TYPE",
    "RESULT_FIELDS",
    "trial_table",
    "history_table",
    "default_config_key",
    "ADDED_COLUMNS",
]

SCHEMA_VERSION = 1

#: one learned-size layer: its module path, registry kind and effective size in pixels
LEARNED_SIZE_TYPE = pa.struct(
    [("layer", pa.string()), ("kind", pa.string()), ("height", pa.float64()), ("width", pa.float64())]
)

# a list of learned sizes; "element" is the item name Parquet gives lists, so a file reads back as it was written
_SIZES_LIST = pa.list_(pa.field("element", LEARNED_SIZE_TYPE))

_JSON = "json"  # marker: stored as JSON text (a string column)

_ARROW = {"string": pa.string(), "int64": pa.int64(), "float64": pa.float64(), "bool": pa.bool_(), "json": _JSON}

#: trial-config key -> the type of its ``params_<key>`` column. A value that does not fit the type (a per-layer
#: list of kernel sizes, a float where an int is expected, ...) is null in its column; ``config`` always holds it.
#: Built from the config's one field table (``nas_flex.config.FIELDS``).
CONFIG_COLUMNS: dict[str, Any] = {k: _ARROW[t] for k, t in arrow_types().items()}

_UTC = pa.timestamp("us", tz="UTC")

#: columns added to the trial table after its first files were written: a file without one still reads (the column
#: is null in its rows) instead of being refused as a file of another schema. Every config key added later has a
#: ``KEY_NEUTRAL`` value, so its params_ column is one of them.
ADDED_COLUMNS: frozenset[str] = frozenset({"architecture_key", "metrics_test_loss", "metrics_test_acc",
                                           *(f"params_{key}" for key in KEY_NEUTRAL)})

# (name, type, nullable, doc)
Field = tuple[str, Any, bool, str]

#: the first columns of both tables: which trial of which experiment a row belongs to
_IDENTITY_FIELDS: list[Field] = [
    ("schema_version", pa.int32(), False, "version of this schema (nas_flex.leaderboard.SCHEMA_VERSION)"),
    ("experiment", pa.string(), False, "experiment name"),
    ("trial_id", pa.string(), False, "trial id, unique within the experiment"),
]

_TRIAL_FIELDS: list[Field] = [
    *_IDENTITY_FIELDS,
    ("status", pa.string(), False, "completed | diverged | oom | error | ..."),
    ("error", pa.string(), True, "error text when the trial did not complete"),
    ("started", _UTC, True, "when the trial started (UTC)"),
    ("finished", _UTC, True, "when the trial finished (UTC)"),
    ("written_at", _UTC, False, "when this row was written (UTC); breaks ties between rewrites of a trial"),
    ("config", pa.string(), False, "the resolved trial config, canonical JSON text (sorted keys)"),
    ("config_key", pa.string(), False, "key of the config: the caller's, or sha256 of the config JSON (16 hex)"),
    ("architecture_key", pa.string(), True, "key of the architecture: sha256 of the config JSON without its seed "
     "(16 hex; nas_flex.record.architecture_key); the repeated runs of one architecture share it. Null in files "
     "written before the column existed (read as missing, see ADDED_COLUMNS)"),
    ("search_params", pa.string(), True, "the sampler's params that produced the config (JSON; replay with "
     "optuna.trial.FixedTrial through the space)"),
    *[
        (f"params_{k}", pa.string() if t is _JSON else t, True,
         f"config[{k!r}]" + (" as JSON text" if t is _JSON else ""))
        for k, t in CONFIG_COLUMNS.items()
    ],
    ("dataset", pa.string(), True, "config['dataset']"),
    ("epochs", pa.int64(), True, "config['epochs'] (the epochs asked for; see epochs_completed)"),
    ("seed", pa.int64(), True, "config['seed']"),
    ("epochs_completed", pa.int64(), True, "epochs trained to the end"),
    ("metrics_train_loss", pa.float64(), True, "final training loss"),
    ("metrics_train_acc", pa.float64(), True, "final training accuracy"),
    ("metrics_val_loss", pa.float64(), True, "final validation loss"),
    ("metrics_val_acc", pa.float64(), True, "final validation accuracy"),
    ("metrics_test_loss", pa.float64(), True, "loss on the held-out test split, scored once after the last epoch "
     "(null without test_fraction)"),
    ("metrics_test_acc", pa.float64(), True, "accuracy on the held-out test split, scored once after the last epoch "
     "(null without test_fraction); no searcher or scheduler saw it"),
    ("best_val_acc", pa.float64(), True, "best validation accuracy over the epochs"),
    ("best_val_loss", pa.float64(), True, "lowest validation loss over the epochs"),
    ("best_epoch", pa.int64(), True, "epoch (1-based) of best_val_acc; 0 when no epoch completed"),
    ("params", pa.int64(), True, "trainable parameter count"),
    ("flops", pa.float64(), True, "forward FLOPs per sample, FFTs counted"),
    ("flops_fft", pa.float64(), True, "the share of flops spent in FFTs"),
    ("train_seconds", pa.float64(), True, "wall time spent training"),
    ("examples_per_second", pa.float64(), True, "training throughput"),
    ("peak_memory_bytes", pa.int64(), True, "peak memory (see peak_memory_kind)"),
    ("peak_memory_kind", pa.string(), True, "cuda_max_allocated | process_max_rss"),
    ("device", pa.string(), True, "the device the trial ran on, in words"),
    ("learned_sizes", _SIZES_LIST, True, "final learned size per layer (pixels)"),
    ("learned_sizes_json", pa.string(), True, "the full learned-size records (raw size parameters) as JSON"),
    ("initial_sizes", _SIZES_LIST, True, "size per learned-size layer at initialisation (pixels), before training"),
    ("initial_sizes_json", pa.string(), True, "the full size records at initialisation as JSON"),
    ("size_recipes", pa.string(), True, "how each layer kind's size parameters were trained (optimizer, lr, "
     "schedule, source) as JSON"),
    ("nas_flex_version", pa.string(), True, "nas_flex version that ran the trial"),
    ("torch_version", pa.string(), True, "torch version that ran the trial"),
]

_HISTORY_FIELDS: list[Field] = [
    *_IDENTITY_FIELDS,
    ("written_at", _UTC, False, "written_at of the trial row this history belongs to"),
    ("epoch", pa.int64(), False, "epoch, 1-based; 0 is the state at initialisation (no training metrics)"),
    ("train_loss", pa.float64(), True, "training task loss (cross-entropy) of the epoch, regularization excluded"),
    ("train_reg", pa.float64(), True, "the layers' regularization term of the epoch (mean per step), added to "
     "train_loss in the optimised loss"),
    ("train_acc", pa.float64(), True, "training accuracy of the epoch"),
    ("val_loss", pa.float64(), True, "validation loss after the epoch"),
    ("val_acc", pa.float64(), True, "validation accuracy after the epoch"),
    ("lr", pa.float64(), True, "learning rate at the end of the epoch"),
    ("seconds", pa.float64(), True, "wall time of the epoch's training"),
    ("flops", pa.float64(), True, "forward FLOPs per sample after the epoch (learned sizes change it; FFTs counted)"),
    ("learned_sizes", _SIZES_LIST, True, "learned size per layer after the epoch (pixels)"),
    ("learned_sizes_json", pa.string(), True, "the full learned-size records after the epoch as JSON"),
]


def _schema(fields: list[Field], table: str, directions: Mapping[str, str]) -> pa.Schema:
    out = []
    for name, typ, nullable, doc in fields:
        meta = {"doc": doc}
        if name in directions:
            meta["direction"] = directions[name]
        out.append(pa.field(name, typ, nullable=nullable, metadata=meta))
    return pa.schema(out, metadata={
        "nas_flex.table": table,
        "nas_flex.schema_version": str(SCHEMA_VERSION),
        "nas_flex.metric_directions": json.dumps(dict(directions)),
    })


TRIAL_SCHEMA = _schema(_TRIAL_FIELDS, "trials", METRIC_DIRECTIONS)
HISTORY_SCHEMA = _schema(_HISTORY_FIELDS, "history", HISTORY_METRIC_DIRECTIONS)

_BEST_KEYS = ("val_acc", "val_loss", "epoch")
_HISTORY_KEYS = ("epoch", "train_loss", "train_acc", "train_reg", "val_loss", "val_acc", "lr", "seconds", "flops",
                 "learned_sizes")


# --------------------------------------------------------------------------------------------------- coercion
def _is_int(v: Any) -> bool:
    return not isinstance(v, bool) and hasattr(v, "__index__")


def _as_int(what: str, v: Any) -> int | None:
    if v is None:
        return None
    if _is_int(v):
        return int(v.__index__())
    if isinstance(v, float) and math.isnan(v):
        return None
    if isinstance(v, float) and v.is_integer():
        return int(v)
    raise LeaderboardSchemaError(f"{what} must be an integer, but got {v!r}")


def _as_float(what: str, v: Any) -> float | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) and not hasattr(v, "__float__"):
        raise LeaderboardSchemaError(f"{what} must be a number, but got {v!r}")
    f = float(v)
    return None if math.isnan(f) else f  # NaN is stored as null: SQL engines sort NaN above every number


def _as_str(what: str, v: Any) -> str | None:
    if v is None or isinstance(v, str):
        return v
    raise LeaderboardSchemaError(f"{what} must be a string, but got {v!r}")


def _as_timestamp(what: str, v: Any) -> datetime | None:
    if v is None:
        return None
    if isinstance(v, str):
        text = v[:-1] + "+00:00" if v.endswith(("Z", "z")) else v
        try:
            v = datetime.fromisoformat(text)
        except ValueError:
            raise LeaderboardSchemaError(f"{what} must be an ISO-8601 timestamp, but got {v!r}") from None
    if not isinstance(v, datetime):
        raise LeaderboardSchemaError(f"{what} must be an ISO-8601 string or a datetime, but got {v!r}")
    if v.tzinfo is None:
        return v.replace(tzinfo=timezone.utc)  # run_trial writes UTC; a naive time is taken as UTC
    return v.astimezone(timezone.utc)


def _fit(v: Any, typ: Any) -> Any:
    """``v`` as a value of a ``params_*`` column of type ``typ``, or None where it does not fit."""
    if v is None:
        return None
    if typ is _JSON:
        return _json(v, "config value")
    if typ == pa.int64():
        return int(v.__index__()) if _is_int(v) else None
    if typ == pa.float64():
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return None
        return None if math.isnan(float(v)) else float(v)
    if typ == pa.bool_():
        return v if isinstance(v, bool) else None
    return v if isinstance(v, str) else None


def _json(v: Any, what: str, *, sort_keys: bool = True) -> str:
    """Compact JSON text of ``v`` made JSON-safe by ``nas_flex.record.to_jsonable`` (non-finite floats null)."""

    def refuse(obj: Any) -> Any:
        raise LeaderboardSchemaError(f"{what} must be JSON-serialisable, but holds {type(obj).__name__} {obj!r}")

    try:
        plain = to_jsonable(v)
    except (ValueError, RuntimeError) as err:  # an array of several values has no single ``item()``
        raise LeaderboardSchemaError(f"{what} must be JSON-serialisable, but holds {err}") from None
    return json.dumps(plain, sort_keys=sort_keys, separators=(",", ":"), allow_nan=False, default=refuse)


def default_config_key(config_json: str) -> str:
    """The default ``config_key``: ``nas_flex.record.config_hash`` of the canonical config JSON (16 hex digits of its
    sha256), the key the tuner dedupes by."""
    return config_hash(config_json)


def _learned_sizes(records: Any, what: str) -> tuple[list[dict[str, Any]] | None, str | None]:
    if records is None:
        return None, None
    if not isinstance(records, Sequence) or isinstance(records, str):
        raise LeaderboardSchemaError(f"{what} must be a list of dicts, but got {type(records).__name__}")
    rows = []
    for i, rec in enumerate(records):
        if not isinstance(rec, Mapping):
            raise LeaderboardSchemaError(f"{what}[{i}] must be a dict, but got {type(rec).__name__}")
        rows.append({
            "layer": _as_str(f"{what}[{i}]['name']", rec.get("name")),
            "kind": _as_str(f"{what}[{i}]['kind']", rec.get("kind")),
            "height": _as_float(f"{what}[{i}]['height']", rec.get("height")),
            "width": _as_float(f"{what}[{i}]['width']", rec.get("width")),
        })
    return rows, _json(list(records), what, sort_keys=False)


def _sub(result: Mapping[str, Any], key: str, allowed: Sequence[str]) -> Mapping[str, Any]:
    value = result.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise LeaderboardSchemaError(f"result[{key!r}] must be a dict, but got {type(value).__name__}")
    unknown = sorted(set(value) - set(allowed))
    if unknown:
        raise LeaderboardSchemaError(
            f"result[{key!r}] has unknown key(s) {unknown}; the leaderboard schema (version {SCHEMA_VERSION}) "
            f"stores only {list(allowed)}"
        )
    return value


def _check_identity(experiment: Any, trial_id: Any) -> None:
    for name, v in (("experiment", experiment), ("trial_id", trial_id)):
        if not isinstance(v, str) or not v:
            raise LeaderboardSchemaError(f"`{name}` must be a non-empty string, but got {v!r}")


# ------------------------------------------------------------------------------------------------------ rows
def _as_mapping(result: TrialRecord | Mapping[str, Any]) -> Mapping[str, Any]:
    if isinstance(result, TrialRecord):
        return result.to_dict()
    if not isinstance(result, Mapping):
        raise LeaderboardSchemaError(f"a trial result must be a TrialRecord or a dict, but got {type(result).__name__}")
    return result


def _checked(result: TrialRecord | Mapping[str, Any]) -> Mapping[str, Any]:
    """``result`` as a mapping whose keys are record fields, with a status and a config; else a schema error."""
    result = _as_mapping(result)
    unknown = sorted(set(result) - set(RESULT_FIELDS))
    if unknown:
        raise LeaderboardSchemaError(
            f"the trial result has unknown key(s) {unknown}; the leaderboard schema (version {SCHEMA_VERSION}) "
            f"stores {list(RESULT_FIELDS)}"
        )
    status = result.get("status")
    if not isinstance(status, str) or not status:
        raise LeaderboardSchemaError(f"result['status'] must be a non-empty string, but got {status!r}")
    config = result.get("config")
    if not isinstance(config, Mapping):
        raise LeaderboardSchemaError(f"result['config'] must be a dict, but got {type(config).__name__}")
    return result


def _config_columns(config: Mapping[str, Any], config_key: str | None) -> dict[str, Any]:
    """``config``, ``config_key`` and the config's flattened ``params_*`` (and dataset, epochs, seed) columns."""
    config_json = _json(config, "result['config']")
    if config_key is None:  # keyed without the keys at their neutral value, as TrialConfig.key is
        config_key = default_config_key(_json(keyed_values(config), "result['config']"))
    elif not isinstance(config_key, str) or not config_key:
        raise LeaderboardSchemaError(f"`config_key` must be a non-empty string, but got {config_key!r}")
    return {
        "config": config_json,
        "config_key": config_key,
        "architecture_key": architecture_key(config),
        **{f"params_{k}": _fit(config.get(k), t) for k, t in CONFIG_COLUMNS.items()},
        "dataset": _fit(config.get("dataset"), pa.string()),
        "epochs": _fit(config.get("epochs"), pa.int64()),
        "seed": _fit(config.get("seed"), pa.int64()),
    }


#: trial-table column <- the record field of the same name, through its coercion
_FIELD_COLUMNS: dict[str, Callable[[str, Any], Any]] = {
    "error": _as_str, "started": _as_timestamp, "finished": _as_timestamp, "epochs_completed": _as_int,
    "params": _as_int, "flops": _as_float, "flops_fft": _as_float, "train_seconds": _as_float,
    "examples_per_second": _as_float, "peak_memory_bytes": _as_int, "peak_memory_kind": _as_str, "device": _as_str,
    "nas_flex_version": _as_str, "torch_version": _as_str,
}


def _result_columns(result: Mapping[str, Any]) -> dict[str, Any]:
    """The columns a trial's outcome fills: plain fields, final and best metrics, sizes, recipes, sampler params."""
    metrics = _sub(result, "metrics", TASK_METRICS + TEST_METRICS)
    best = _sub(result, "best", _BEST_KEYS)
    sizes, sizes_json = _learned_sizes(result.get("learned_sizes"), "result['learned_sizes']")
    init_sizes, init_json = _learned_sizes(result.get("initial_sizes"), "result['initial_sizes']")
    recipes, params = result.get("size_recipes"), result.get("search_params")
    return {
        **{col: coerce(f"result[{col!r}]", result.get(col)) for col, coerce in _FIELD_COLUMNS.items()},
        **{f"metrics_{k}": _as_float(f"result['metrics'][{k!r}]", metrics.get(k)) for k in TASK_METRICS + TEST_METRICS},
        "best_val_acc": _as_float("result['best']['val_acc']", best.get("val_acc")),
        "best_val_loss": _as_float("result['best']['val_loss']", best.get("val_loss")),
        "best_epoch": _as_int("result['best']['epoch']", best.get("epoch")),
        "learned_sizes": sizes,
        "learned_sizes_json": sizes_json,
        "initial_sizes": init_sizes,
        "initial_sizes_json": init_json,
        "size_recipes": None if recipes is None else _json(recipes, "result['size_recipes']", sort_keys=False),
        "search_params": None if params is None else _json(params, "result['search_params']"),
    }


def trial_table(result: TrialRecord | Mapping[str, Any], *, experiment: str, trial_id: str, written_at: datetime,
                config_key: str | None = None) -> pa.Table:
    """One trial's row as a one-row table of ``TRIAL_SCHEMA``.

    Args:
        result: a ``run_trial`` result (keys in ``RESULT_FIELDS``; ``status`` and ``config`` required, others may be
            missing and are then null).
        experiment: the experiment name.
        trial_id: the trial id.
        written_at: when the row is written (UTC).
        config_key: a key for the config; default: ``default_config_key`` of the config JSON.

    Raises:
        LeaderboardSchemaError: an unknown key, a missing status or config, or a value of the wrong type.
    """
    _check_identity(experiment, trial_id)
    result = _checked(result)
    row: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "experiment": experiment,
        "trial_id": trial_id,
        "status": str(result["status"]),
        "written_at": _as_timestamp("written_at", written_at),
        **_config_columns(result["config"], config_key),
        **_result_columns(result),
    }
    return pa.Table.from_pylist([row], schema=TRIAL_SCHEMA)


def history_table(result: TrialRecord | Mapping[str, Any], *, experiment: str, trial_id: str,
                  written_at: datetime) -> pa.Table:
    """The per-epoch rows of ``result['history']`` as a table of ``HISTORY_SCHEMA`` (no rows when it is empty)."""
    result = _as_mapping(result)
    _check_identity(experiment, trial_id)
    history = result.get("history") or []
    if not isinstance(history, Sequence) or isinstance(history, str):
        raise LeaderboardSchemaError(f"result['history'] must be a list of dicts, but got {type(history).__name__}")
    stamp = _as_timestamp("written_at", written_at)
    rows = []
    for i, h in enumerate(history):
        what = f"result['history'][{i}]"
        if not isinstance(h, Mapping):
            raise LeaderboardSchemaError(f"{what} must be a dict, but got {type(h).__name__}")
        unknown = sorted(set(h) - set(_HISTORY_KEYS))
        if unknown:
            raise LeaderboardSchemaError(
                f"{what} has unknown key(s) {unknown}; the history schema (version {SCHEMA_VERSION}) stores "
                f"{list(_HISTORY_KEYS)}"
            )
        epoch = _as_int(f"{what}['epoch']", h.get("epoch"))
        if epoch is None:
            raise LeaderboardSchemaError(f"{what}['epoch'] is required, but it is missing")
        sizes, sizes_json = _learned_sizes(h.get("learned_sizes"), f"{what}['learned_sizes']")
        rows.append({
            "schema_version": SCHEMA_VERSION,
            "experiment": experiment,
            "trial_id": trial_id,
            "written_at": stamp,
            "epoch": epoch,
            **{k: _as_float(f"{what}[{k!r}]", h.get(k))
               for k in ("train_loss", "train_acc", "train_reg", "val_loss", "val_acc", "lr", "seconds", "flops")},
            "learned_sizes": sizes,
            "learned_sizes_json": sizes_json,
        })
    return pa.Table.from_pylist(rows, schema=HISTORY_SCHEMA)
