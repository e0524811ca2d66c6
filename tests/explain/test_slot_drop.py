"""examples/slot_drop.py: validation Recall@20 of a trained run with each band slot removed."""
import re
import runpy
from pathlib import Path

import pytest
import torch

from ssr_engine.metrics import full_ranking

SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "slot_drop.py"


@pytest.fixture(scope="module")
def script():
    return runpy.run_path(str(SCRIPT), run_name="slot_drop")


def test_every_slot_modality_and_band_is_removed_once(script, tiny_run, capsys):
    data, ckpt, ds, model = tiny_run
    script["main"](["--data", str(data), "--run", str(ckpt.parent)])
    out = capsys.readouterr().out
    full = float(re.search(r"all slots: ([0-9.]+)", out).group(1))
    hu, hi = model.node_embeddings()
    want = full_ranking(lambda u: hu[u] @ hi.T, ds.user_item_matrix("valid"),
                        ds.user_item_matrix("train")).summary()["recall@20"]
    assert full == pytest.approx(want, abs=1e-4)
    # 3 modalities x 3 bands, 3 modalities, 3 bands
    assert len(re.findall(r"without \w+ band \d: [0-9.]+", out)) == 9
    assert len(re.findall(r"without modality \w+: [0-9.]+", out)) == 3
    assert len(re.findall(r"without band \d \(every modality\): [0-9.]+", out)) == 3
    # a removal line is the ranking of the fused vectors with that slot's scale at zero
    with torch.no_grad():
        raw = model.slots(torch.arange(ds.n_users + ds.n_items))
        z = model.reliability.alpha.clone()
        z[1, 2] = 0                                               # text band 2
        h = model.fuse(raw, z)
    hu, hi = h[:ds.n_users], h[ds.n_users:]
    want = full_ranking(lambda u: hu[u] @ hi.T, ds.user_item_matrix("valid"),
                        ds.user_item_matrix("train")).summary()["recall@20"]
    name = model.modalities[1]
    got = float(re.search(rf"without {name} band 2: ([0-9.]+)", out).group(1))
    assert got == pytest.approx(want, abs=1e-4)


def test_missing_run_is_a_clear_error(script, tiny_run, tmp_path):
    data = tiny_run[0]
    with pytest.raises(SystemExit, match="checkpoint.pt does not exist"):
        script["main"](["--data", str(data), "--run", str(tmp_path)])
