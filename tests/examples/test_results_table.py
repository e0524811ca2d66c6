"""examples/results_table.py: tables from run folders, and a clear error for any other layout."""
import json
import runpy
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "results_table.py"


@pytest.fixture(scope="module")
def script():
    return runpy.run_path(str(SCRIPT), run_name="results_table")


def _metrics(r20):
    m = {k: r20 for k in ("recall@10", "recall@20", "ndcg@10", "ndcg@20")}
    return {"valid": m, "test": m, "test_cold": dict(m, n_users=3), "best_epoch": 4,
            "seconds_per_epoch": 1.5}


def test_table_mean_and_std_over_seeds(script, tmp_path, capsys):
    for seed, r in ((1, 0.30), (2, 0.32)):
        d = tmp_path / "ml" / f"ssr-s{seed}"
        d.mkdir(parents=True)
        (d / "metrics.json").write_text(json.dumps(_metrics(r)))
    script["main"]([str(tmp_path)])
    out = capsys.readouterr().out
    assert "## ml" in out and "| ssr | 2 | 0.3100 ± 0.0141 |" in out


@pytest.mark.parametrize("layout,message", [
    ("flat", "holds no runs: expected .*/<name>-s<seed>/metrics.json"),  # runs one level up
    ("empty", "holds no dataset folders"),
    ("missing", "no such folder"),
    ("broken", "is not a metrics.json of train_large.py"),
])
def test_other_layouts_name_what_was_expected(script, tmp_path, layout, message):
    # before: empty tables printed without a word
    root = tmp_path / "runs"
    if layout == "flat":
        (root / "ssr-s1").mkdir(parents=True)
        (root / "ssr-s1" / "metrics.json").write_text(json.dumps(_metrics(0.3)))
    elif layout == "empty":
        root.mkdir()
    elif layout == "broken":
        (root / "ml" / "ssr-s1").mkdir(parents=True)
        (root / "ml" / "ssr-s1" / "metrics.json").write_text('{"valid": {}}')
    with pytest.raises(SystemExit, match=message):
        script["main"]([str(root)])
