"""The leaderboard filter language: never run as Python, the same rows as a hand-computed mask, and the one selection
code behind ``Leaderboard`` and the ``nas-flex leaderboard`` table."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from nas_flex.cli import main
from nas_flex.errors import LeaderboardSchemaError, QueryError
from nas_flex.leaderboard import TRIAL_SCHEMA, Leaderboard, write_trial
from nas_flex.leaderboard.query import MAX_FILTER_LENGTH, parse_filter

NAN = math.nan
# trial_id, status, conv, kernel_size, pooling, val_acc, flops
ROWS = [
    ("a", "completed", "njet", 5, "max", 0.90, 1e5),
    ("b", "completed", "conv", 3, "avg", 0.80, 4e4),
    ("c", "completed", "flexconv", None, "max", 0.95, 2e5),
    ("d", "error", None, None, None, NAN, NAN),
    ("e", "diverged", "njet", 7, "none", 0.50, 1e6),
    ("f", "completed", "conv", 7, None, NAN, 3e5),
]


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    path = tmp_path_factory.mktemp("board")
    for tid, status, conv, k, pooling, acc, flops in ROWS:
        config = {key: v for key, v in (("conv", conv), ("kernel_size", k), ("pooling", pooling)) if v is not None}
        metrics = {"val_acc": acc, "val_loss": 1 - acc, "train_acc": acc, "train_loss": 1 - acc}
        write_trial(path, {"status": status, "config": config, "metrics": metrics, "flops": flops},
                    experiment="x", trial_id=tid)
    return Leaderboard(path)


# expression -> the rows it keeps, worked out by hand from ROWS (a missing value makes a comparison unknown: the
# row is not kept, also under `not`)
GRAMMAR = [
    ("params_conv == 'njet'", "ae"),
    ("params_conv != 'njet'", "bcf"),  # d has no conv: unknown, left out
    ("metrics_val_acc > 0.85", "ac"),
    ("metrics_val_acc >= 0.9", "ac"),
    ("metrics_val_acc < 0.85", "be"),
    ("metrics_val_acc <= 0.8", "be"),
    ("0.6 < metrics_val_acc <= 0.9", "ab"),  # chained
    ("not (metrics_val_acc > 0.85)", "be"),  # d, f: missing, so unknown under `not` too
    ("params_kernel_size == 7 and params_conv == 'conv'", "f"),
    ("params_kernel_size == 7 or flops < 5e4", "bef"),
    ("(params_conv == 'njet' or params_conv == 'conv') and flops <= 1e5", "ab"),
    ("params_pooling in ['max', 'none']", "ace"),
    ("params_pooling not in ['max', 'none']", "b"),
    ("params_pooling in ['avg', None]", "bdf"),  # None in the list: a missing value matches
    ("params_kernel_size == None", "cd"),
    ("params_kernel_size != None", "abef"),
    ("isna(metrics_val_acc)", "df"),
    ("notna(params_pooling) and status == 'completed'", "abc"),
    ("`flops` > 1.5e5", "cef"),  # backticks around a name
    ("status == \"diverged\"", "e"),
    ("flops > -1", "abcef"),  # a signed number
    ("True", "abcdef"),
    ("False", ""),
    ("metrics_val_acc > 0.5 and not isna(params_kernel_size) or trial_id == 'd'", "abd"),
    ("trial_id in ('a', 'f')", "af"),  # a tuple works as a list
]


@pytest.mark.parametrize("expression,expected", GRAMMAR)
def test_grammar_keeps_the_hand_computed_rows(board, expression, expected):
    df = board.to_pandas()
    mask = parse_filter(expression, TRIAL_SCHEMA.names).mask(df)
    assert "".join(df["trial_id"][mask]) == expected
    # the same through Leaderboard.top (every status, ranked by flops ascending; rows without flops left out)
    ranked = board.top(10, "flops", status=None, where=expression)["trial_id"].tolist()
    keep = [r for r in ROWS if r[0] in expected and not math.isnan(r[6])]
    assert ranked == [r[0] for r in sorted(keep, key=lambda r: r[6])]


PROBES = [
    "@os.system('touch {m}') == 0",
    "__import__('os').system('touch {m}') == 0",
    "status == 'x' or __import__('os').system('touch {m}')",
    "metrics_val_acc.__class__.__init__.__globals__['os'].system('touch {m}') == 0",
    "(lambda: __import__('os').system('touch {m}'))() == 0",
    "f\"{{__import__('os').system('touch {m}')}}\" == 'x'",
    "[__import__('os').system('touch {m}') for _ in [1]] == [0]",
    "(x := __import__('os').system('touch {m}')) == 0",
    "metrics_val_acc in [__import__('os').system('touch {m}')]",
    "isna(__import__('os').system('touch {m}'))",
    "`__import__('os').system('touch {m}')` == 0",
    "open('{m}', 'w') == 0",
    "().__class__.__bases__[0].__subclasses__() == 0",
    "status == 'completed' if __import__('os').system('touch {m}') else True",
    "exec('open(\"{m}\", \"w\")') == 0",
    "params[0] == 1",
    "flops + 1 > 2",
]


@pytest.mark.parametrize("probe", PROBES)
def test_escapes_are_refused_and_run_nothing(board, tmp_path, monkeypatch, capsys, probe):
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "marker"
    expression = probe.format(m=marker)
    assert main(["leaderboard", str(board.path), "--where", expression, "--all-statuses"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nas-flex: error: bad filter") and err.count("\n") == 1, err
    with pytest.raises(QueryError):
        board.top(3, where=expression)
    with pytest.raises(QueryError):
        board.pareto(["flops"], where=expression)
    assert not marker.exists() and list(tmp_path.iterdir()) == []


def test_a_filter_is_checked_before_anything_is_read(tmp_path, capsys):
    missing = tmp_path / "no_board_here"
    assert main(["leaderboard", str(missing), "--where", "__import__('os')"]) == 2
    assert "bad filter" in capsys.readouterr().err  # not "no leaderboard at": the filter failed first
    with pytest.raises(QueryError, match="bad filter"):
        Leaderboard(missing).best(where="flops > ")


@pytest.mark.parametrize("expression,message", [
    ("flop > 1", r"unknown column 'flop' \(did you mean 'flops'\?\); valid columns: schema_version, experiment, "
                 "trial_id"),
    ("flops", "column 'flops' is not a true/false column"),
    ("1 == 1 and 3", "a literal alone is not a condition"),
    ("flops is None", "'is' / 'is not' not allowed; write == None"),
    ("flops > None", "None compares only with == or !="),
    ("params_conv in 'njet'", "'in' takes a list of literals"),
    ("(flops > 1) == True", "a comparison's sides are a column or a literal"),
    ("flops > 1 and", "not a valid expression"),
    ("`flops > 1", "backtick-quoted column name is not closed"),
    ("flops > b'1'", "bytes literals are not allowed"),
    ("   ", "must not be empty"),
    ("not " * 80 + "isna(flops)", "nested deeper than"),
    ("flops > 1 and " * 400 + "True", f"at most {MAX_FILTER_LENGTH} characters"),
    ("params_conv > 3", "cannot compare params_conv > 3"),
])
def test_bad_filters_are_one_line_errors(board, expression, message):
    with pytest.raises(QueryError, match=message) as err:
        board.top(3, status=None, where=expression)
    assert "\n" not in str(err.value)
    assert isinstance(err.value, LeaderboardSchemaError)  # a QueryError is a leaderboard error (CLI exit 2)


def test_the_table_and_leaderboard_select_the_same_rows(board, capsys):
    """One selection code: the CLI table sorted by a metric shows Leaderboard.top's rows, then the rows without a
    value; both keep completed trials only unless told otherwise."""
    where = "flops >= 4e4"
    for argv, status in ((["--where", where], "completed"), (["--where", where, "--all-statuses"], None)):
        assert main(["leaderboard", str(board.path), "--columns", "trial_id,metrics_val_acc", *argv]) == 0
        lines = capsys.readouterr().out.splitlines()
        table = [ln.split()[0] for ln in lines[1:-1]]
        top = board.top(10, "metrics_val_acc", status=status, where=where)["trial_id"].tolist()
        assert table[:len(top)] == top and set(table[len(top):]) <= {"d", "f"}
    assert top == ["c", "a", "b", "e"] and table == ["c", "a", "b", "e", "f"]
    assert board.best(where="params_conv == 'conv'").trial_id == "b"
    with pytest.raises(LeaderboardSchemaError, match="no 'completed' trial matching \"params_conv == 'x'\""):
        board.best(where="params_conv == 'x'")
    front = board.pareto({"metrics_val_acc": "max", "flops": "min"}, where="params_conv != 'flexconv'")
    assert front["trial_id"].tolist() == ["a", "b"]


def test_mask_of_a_frame_with_nullable_columns():
    """A direct check of the three-valued logic on a frame with float NaN, pandas NA and None."""
    df = pd.DataFrame({"x": [1.0, NAN, 3.0], "k": pd.array([1, None, 3], dtype="Int64"),
                       "s": ["a", None, "b"], "ok": pd.array([True, None, False], dtype="boolean")})
    cols = list(df.columns)

    def keep(expression: str) -> list[bool]:
        return parse_filter(expression, cols).mask(df).tolist()

    assert keep("x > 2 or k == 1") == [True, False, True]
    assert keep("not (k > 1)") == [True, False, False]
    assert keep("ok") == [True, False, False] and keep("not ok") == [False, False, True]
    assert keep("s == None or ok") == [True, True, False]
    assert keep("x == k") == [True, False, True]  # column against column
    assert isinstance(parse_filter("x > 1", cols).mask(df), np.ndarray)
    # backticks, @ and quotes inside a string literal are text (the search command filters by experiment this way)
    name = "a`b@c'd\"e"
    names = pd.DataFrame({"experiment": [name, "x"]})
    assert parse_filter(f"experiment == {name!r}", ["experiment"]).mask(names).tolist() == [True, False]
