"""Compare two ``train_large.py`` runs: band stores (relative difference per modality) and
metrics (valid/test Recall@20 and NDCG@20 with the test standard errors, histories).

Usage: ``python bench/compare_runs.py RUN_A RUN_B`` (each an ``--out`` folder). Exit status 0;
the figures are printed for the closing note of the large-graph issue (``bench/large_checks.sh``).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def compare(a: Path, b: Path) -> dict:
    out = {"bands": {}, "metrics": {}}
    for f in sorted((a / "bands").glob("*.npy")):
        x = np.load(f, mmap_mode="r").astype(np.float64)
        y = np.load(b / "bands" / f.name, mmap_mode="r").astype(np.float64)
        out["bands"][f.stem] = float(np.linalg.norm(x - y) / np.linalg.norm(x))
    ma, mb = (json.loads((p / "metrics.json").read_text()) for p in (a, b))
    for split in ("valid", "test"):
        for k in ("recall@20", "ndcg@20"):
            out["metrics"][f"{split} {k}"] = (ma[split][k], mb[split][k])
    out["test_se"] = (ma["test_standard_error"], mb["test_standard_error"])
    out["identical"] = all(ma[k] == mb[k] for k in ("valid", "test", "test_cold", "history",
                                                     "best_epoch"))
    out["wall"] = (ma["wall_seconds"], mb["wall_seconds"])
    out["world"] = (ma["world_size"], mb["world_size"])
    return out


def main() -> None:
    a, b = Path(sys.argv[1]), Path(sys.argv[2])
    r = compare(a, b)
    for name, rel in r["bands"].items():
        print(f"bands {name}: relative difference {rel:.3e}")
    for key, (x, y) in r["metrics"].items():
        se = ""
        if key.startswith("test"):
            k = key.split()[1]
            se = f"  (standard errors {r['test_se'][0][k]:.4f}, {r['test_se'][1][k]:.4f})"
        print(f"{key}: {x:.4f} vs {y:.4f}  diff {y - x:+.4f}{se}")
    print(f"metrics and histories identical: {r['identical']}")
    print(f"wall {r['wall'][0]:.1f} s vs {r['wall'][1]:.1f} s; processes {r['world'][0]} vs "
          f"{r['world'][1]}")


if __name__ == "__main__":
    main()
