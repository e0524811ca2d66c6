"""``python -m ssr_engine.explain`` end to end on a tiny checkpoint."""
import json
import os
import subprocess
import sys

import pytest
import torch

from ssr_engine.explain.__main__ import main
from tolerances import tol


def test_cli_explains_a_user(tiny_run, tmp_path, capsys):
    data, ckpt, ds, _ = tiny_run
    names = tmp_path / "items.tsv"
    names.write_text("itemID\ttitle\n" + "".join(f"{i}\tthing {i}\n" for i in range(ds.n_items)))
    out = tmp_path / "out"
    res = main(["--checkpoint", str(ckpt), "--data", str(data), "--user", "3", "11",
                "--k", "4", "--out", str(out), "--item-names", str(names), "--device", "cpu"])
    assert [r["user"] for r in res] == [3, 11]
    for r in res:
        assert len(r["items"]) == 4
        assert r["max_relative_error"] <= tol(torch.float32, "attribution")
        assert r["items"][0]["name"] == f"thing {r['items'][0]['item']}"
        assert (out / f"user_{r['user']}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert json.loads((out / f"user_{r['user']}.json").read_text())["user"] == r["user"]
    text = capsys.readouterr().out
    assert "user 3" in text and "thing" in text and "score" in text


def test_cli_runs_as_module_with_report(tiny_run, tmp_path):
    data, ckpt, _, _ = tiny_run
    out = tmp_path / "rep"
    proc = subprocess.run([sys.executable, "-m", "ssr_engine.explain", "--checkpoint", str(ckpt),
                           "--data", str(data), "--user", "0", "--k", "3", "--out", str(out),
                           "--report", "--device", "cpu"], capture_output=True, text=True,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr
    assert (out / "report.html").is_file() and (out / "user_0.png").is_file()


def test_cli_bad_user(tiny_run, tmp_path):
    data, ckpt, _, _ = tiny_run
    with pytest.raises(SystemExit, match=r"user id\(s\) \[80\] out of range \[0, 80\)"):
        main(["--checkpoint", str(ckpt), "--data", str(data), "--user", "80",
              "--out", str(tmp_path)])


def test_cli_names_a_checkpoint_it_cannot_use_without_a_traceback(tiny_run, tmp_path):
    data, ckpt, _, _ = tiny_run
    args = ["--data", str(data), "--user", "0", "--out", str(tmp_path)]
    with pytest.raises(SystemExit, match=r"^error: checkpoint .*missing\.pt does not exist"):
        main(["--checkpoint", str(tmp_path / "missing.pt"), *args])
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(SystemExit, match=r"^error: .*junk\.pt"):
        main(["--checkpoint", str(junk), *args])
    with pytest.raises(SystemExit, match=r"^error: cannot read the dataset in"):
        main(["--checkpoint", str(ckpt), "--data", str(tmp_path / "nowhere"), "--user", "0",
              "--out", str(tmp_path)])
    with pytest.raises(SystemExit):
        main(["--checkpoint", str(ckpt), *args, "--k", "0"])
