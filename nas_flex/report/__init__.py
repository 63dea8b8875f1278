"""Reports of a leaderboard: matplotlib figures (Agg backend, no display) and a markdown summary.

Example:
    >>> from nas_flex.report import make_report  # doctest: +SKIP
    >>> make_report("runs/digits", "reports/digits", export_dir="exports/best")  # doctest: +SKIP
"""

from nas_flex.report.plots import fixed_size_methods, make_report

__all__ = ["make_report", "fixed_size_methods"]
