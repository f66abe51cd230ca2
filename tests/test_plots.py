"""The benchmark's plots: methods on one point share a label, the Avg. Gap bars carry the original
model's gap as a reference, the kept-share plot has whole epochs; each file is written."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

import benchmark  # noqa: E402


def _table():
    rows = [("Ideal (retrain)", 92.0, 100.0), ("Original", 85.0, 0.0), ("FT", 99.5, 0.0), ("RL", 99.6, 0.2),
            ("GA", 94.0, 8.0), ("SalUn", 99.5, 0.3)]
    return pd.DataFrame([{"method": m, "TA_mean": ta, "TA_std": 0.1, "UA_mean": ua, "UA_std": 0.1,
                          "RA_mean": 99.0, "MIA_mean": ua, "avg_gap_mean": 10.0 * i, "avg_gap_std": 1.0}
                         for i, (m, ta, ua) in enumerate(rows)])


def test_methods_on_one_point_are_grouped_under_one_label():
    groups = benchmark._groups(_table(), 0.5)
    names = sorted(sorted(r.method for r in rows) for _, _, rows in groups)
    assert names == [["FT", "RL", "SalUn"], ["GA"], ["Ideal (retrain)"], ["Original"]]


def test_each_plot_is_written_with_its_references(tmp_path):
    table = _table()
    assert benchmark.tradeoff_plot(plt, table, "class 3", tmp_path / "t.png").stat().st_size > 0
    path = benchmark.avg_gap_plot(plt, table, "class 3", tmp_path / "a.png")
    assert path.stat().st_size > 0
    results = pd.DataFrame({"method": ["GA+VarGrad", "GA"], "scenario": ["class 3", "class 3"],
                            "kept_history": [[0.5, 0.4, 0.3], []]})
    assert benchmark.kept_share_plot(plt, results, tmp_path / "k.png").stat().st_size > 0
    assert benchmark.kept_share_plot(plt, results.iloc[1:], tmp_path / "none.png") is None
