"""Benchmarks and studies of nas_flex, run from the repository root as ``python -m experiments.<name>``.

Each script shares what it needs through ``experiments.common`` (the main job's configs, taken from
``search_spaces/grid_vs_learned.py``) and writes its numbers, with the scope they were measured in, under
``experiments/results/``. docs/results.md quotes them with their commands.
"""
