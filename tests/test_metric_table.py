"""One metric table, one "did you mean", one error hierarchy."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import nas_flex
from nas_flex import errors
from nas_flex.leaderboard import HISTORY_SCHEMA, TRIAL_SCHEMA
from nas_flex.record import (
    HISTORY_METRIC_DIRECTIONS,
    METRIC_COLUMNS,
    METRIC_DIRECTIONS,
    METRIC_LABELS,
    METRIC_TABLE,
    METRICS,
)

PACKAGE = Path(nas_flex.__file__).parent


def test_every_metric_table_derives_from_the_one_table():
    names = [m.name for m in METRIC_TABLE]
    assert len(set(names)) == len(names) and {m.direction for m in METRIC_TABLE} == {"max", "min"}
    for m in METRIC_TABLE:
        if m.column:
            assert METRIC_DIRECTIONS[m.column] == m.direction and METRIC_LABELS[m.column] == m.label
            assert TRIAL_SCHEMA.field(m.column).metadata[b"direction"].decode() == m.direction
        if m.history:
            assert HISTORY_METRIC_DIRECTIONS[m.history] == m.direction and m.history in HISTORY_SCHEMA.names
        assert (m.name in METRICS) == m.optimisable
        if m.optimisable:
            assert METRICS[m.name] == m.direction and METRIC_COLUMNS[m.name] == m.column
    # the schema records a direction for exactly the table's columns
    recorded = {f.name for f in TRIAL_SCHEMA if f.metadata and b"direction" in f.metadata}
    assert recorded == set(METRIC_DIRECTIONS)


def test_the_report_and_the_search_read_the_table():
    from nas_flex.report.curves import metric_label
    from nas_flex.tune.options import resolve_objectives

    assert all(metric_label(col) == label for col, label in METRIC_LABELS.items())
    assert resolve_objectives(["flops", "val_acc"]) == {"flops": "min", "val_acc": "max"}


def _defined_classes() -> dict[str, str]:
    """Every ``class ...Error`` defined in the package's source: name -> module."""
    out = {}
    for file in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.ClassDef) and node.name.endswith("Error"):
                out[node.name] = ".".join(file.relative_to(PACKAGE.parent).with_suffix("").parts)
    return out


def test_every_error_class_is_defined_in_the_hierarchy_and_importable_from_its_old_path():
    defined = _defined_classes()
    assert set(defined.values()) == {"nas_flex.errors"}, defined
    for name in defined:
        cls = getattr(errors, name)
        assert issubclass(cls, errors.NasFlexError) and name in errors.__all__
    old_paths = {"nas_flex.tune.errors": ["ResourceError", "StorageError"], "nas_flex.tune": ["ResourceError"],
                 "nas_flex.export": ["ExportError", "EquivalenceError"],
                 "nas_flex.export.deploy": ["ExportError", "EquivalenceError"],
                 "nas_flex.data.base": ["DatasetNotFoundError"]}
    for module, names in old_paths.items():
        for name in names:
            assert getattr(importlib.import_module(module), name) is getattr(errors, name), (module, name)


def test_one_did_you_mean():
    users = [f.relative_to(PACKAGE).as_posix() for f in PACKAGE.rglob("*.py") if "difflib" in f.read_text()]
    assert users == ["errors.py"]
    assert errors.did_you_mean("Flop", ["flops", "params"]) == " (did you mean 'flops'?)"
    assert errors.did_you_mean("zzz", ["flops"]) == ""
