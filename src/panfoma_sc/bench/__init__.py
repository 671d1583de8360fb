"""PanFoMaBench: benchmark tasks, baselines, metrics and reports (see the benchmark issue)."""

__all__: list[str] = []
