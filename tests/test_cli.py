"""The nas-flex command's small subcommands."""

from __future__ import annotations

from nas_flex.cli import main
from nas_flex.layers import available


def test_layers_lists_every_registry_layer(capsys):
    assert main(["layers"]) == 0
    out = capsys.readouterr().out
    for name in available():
        assert name in out
    assert "kernel_sizes" in out and "sigma_init" in out


def test_demo_runs_every_layer(capsys):
    assert main(["demo", "--small", "--steps", "1", "--rounds", "1", "--batch", "2", "--channels", "3",
                 "--size", "12", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    rows = [line.split()[0] for line in out.splitlines() if line.split() and line.split()[0] in available()]
    assert sorted(set(rows)) == available()
    assert "learned_sizes" in out
