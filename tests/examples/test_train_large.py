"""examples/train_large.py end to end: both pipelines, refusals before any work, exit codes."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "train_large.py"
SMALL = ["--synthetic", "400,200,6000", "--epochs", "1", "--quiet", "--threads", "1"]


def _run(*args, out=None, timeout=600):
    cmd = [sys.executable, str(SCRIPT), *args] + ([] if out is None else ["--out", str(out)])
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def test_stored_pipeline_trains_and_reports(tmp_path):
    r = _run("--approx", "chebyshev", *SMALL, "--d0", "8", "--dim", "16", "--order", "16",
             "--eval-users", "100", out=tmp_path)
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["pipeline"] == "stored" and m["epochs_run"] == 1
    assert m["bands"]["method"] == "chebyshev"
    assert m["n_users"] == 400 and 0.0 < m["test"]["recall@20"] <= 1.0
    assert (tmp_path / "checkpoint.pt").is_file() and (tmp_path / "bands").is_dir()
    # the per-user test metrics average to the reported ones
    from ssr_engine.metrics import RankingResult
    per_user = RankingResult.load(tmp_path / "test_per_user.npz").summary()
    assert per_user["n_users"] == m["test"]["n_users"]
    assert per_user["recall@20"] == pytest.approx(m["test"]["recall@20"], abs=1e-12)
    # --quiet: a line per phase and per evaluated epoch, then the final metrics
    assert "[bands] done in" in r.stdout and "[epoch 1] loss" in r.stdout
    assert '"best_epoch": 1' in r.stdout
    # an existing checkpoint is neither overwritten nor silently continued
    again = _run("--approx", "chebyshev", *SMALL, out=tmp_path)
    assert again.returncode == 2 and "--resume" in again.stderr


def test_in_memory_baseline(tmp_path):
    r = _run("--model", "lightgcn", *SMALL, "--dim", "16", out=tmp_path)
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["pipeline"] == "memory" and m["model"] == "lightgcn" and m["epochs_run"] == 1
    # before: --quiet printed nothing at all in memory
    assert "[model] built in" in r.stdout and "[epoch 1] loss" in r.stdout
    assert '"best_epoch": 1' in r.stdout
    # the reported test figure is what the checkpoint's best model gives, recomputed here
    # (before, the test only asserted 0 <= recall@20 <= 1)
    import ssr_engine
    from ssr_engine.data import synthetic_dataset
    from ssr_engine.metrics import full_ranking
    from ssr_engine.train.checkpoint import read_checkpoint
    from ssr_engine.train.pipeline import synthetic_modalities
    ds = synthetic_dataset(400, 200, 6000, modalities=synthetic_modalities(None), seed=999)
    model = ssr_engine.LightGCN(ds.train_graph(), dim=16, n_layers=3)
    model.load_state_dict(read_checkpoint(tmp_path / "checkpoint.pt")["best"]["state"])
    u, i = model.eval().node_embeddings()
    got = full_ranking(lambda users: u[users] @ i.T, ds.user_item_matrix("test"),
                       ds.user_item_matrix("train")).summary()
    assert got["n_users"] == m["test"]["n_users"]
    assert abs(got["recall@20"] - m["test"]["recall@20"]) < 1e-6 and got["recall@20"] > 0
    from ssr_engine.metrics import RankingResult
    saved = RankingResult.load(tmp_path / "test_per_user.npz")
    cold = ds.cold_users(5)
    assert saved.summary(cold)["recall@20"] == pytest.approx(m["test_cold"]["recall@20"],
                                                             abs=1e-12)
    # resuming the finished run (to write a lost report file again) trains nothing and
    # keeps the timings of the call that trained it; without the earlier report there is
    # no per-epoch time (None, not 0)
    (tmp_path / "test_per_user.npz").unlink()
    again = _run("--model", "lightgcn", *SMALL, "--dim", "16", "--resume", out=tmp_path)
    assert again.returncode == 0, again.stderr
    m2 = json.loads((tmp_path / "metrics.json").read_text())
    assert (tmp_path / "test_per_user.npz").is_file()
    assert m2["test"]["recall@20"] == m["test"]["recall@20"] and m2["epochs_run"] == 1
    for k in ("setup_seconds", "train_seconds", "seconds_per_epoch", "wall_seconds"):
        assert m2[k] == m[k] and m[k] > 0, k
    assert any("the timings are those of the call that trained it" in n for n in m2["notes"])
    (tmp_path / "metrics.json").unlink()
    third = _run("--model", "lightgcn", *SMALL, "--dim", "16", "--resume", out=tmp_path)
    assert third.returncode == 0, third.stderr
    m3 = json.loads((tmp_path / "metrics.json").read_text())
    assert m3["seconds_per_epoch"] is None and m3["test"]["recall@20"] == m["test"]["recall@20"]


def test_in_memory_sigterm_during_checkpoint_write(tmp_path):
    # SIGTERM in the middle of the epoch's checkpoint write: the write completes, the run
    # stops with 143, and the checkpoint it leaves resumes.
    code = ("import os, runpy, signal, sys, torch\n"
            "save = torch.save\n"
            "def signalled(obj, fh):\n"
            "    os.kill(os.getpid(), signal.SIGTERM); save(obj, fh)\n"
            "torch.save = signalled\n"
            "runpy.run_path(sys.argv[1], run_name='train')['main'](sys.argv[2:])\n")
    args = ["--model", "mf", *SMALL, "--dim", "8", "--epochs", "3", "--out", str(tmp_path)]
    r = subprocess.run([sys.executable, "-c", code, str(SCRIPT), *args], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 143, r.stderr
    assert "interrupted by SIGTERM after 1 epochs" in r.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]
    # what a SIGKILLed writer leaves is removed by the next run, which resumes
    (tmp_path / "checkpoint.pt.a1b2c3d4.tmp").write_bytes(b"torn")
    assert _run(*args, "--resume").returncode == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt", "metrics.json",
                                                         "test_per_user.npz"]
    assert json.loads((tmp_path / "metrics.json").read_text())["epochs_run"] == 3


@pytest.mark.parametrize("pipeline", ["stored", "memory"])
def test_too_large_for_exact_is_refused_up_front(tmp_path, pipeline):
    r = _run("--approx", "exact", "--pipeline", pipeline, "--synthetic",
             "2000000,1000000,30000000", out=tmp_path, timeout=120)
    assert r.returncode == 2
    assert "too large" in r.stderr and "chebyshev" in r.stderr
    assert not (tmp_path / "bands").exists()                    # nothing was generated


def test_report_needs_the_in_memory_pipeline(tmp_path):
    r = _run("--approx", "chebyshev", *SMALL, "--report", str(tmp_path / "rep"), out=tmp_path)
    assert r.returncode == 2 and "--report" in r.stderr


@pytest.fixture(scope="module")
def script():
    import runpy
    return runpy.run_path(str(SCRIPT), run_name="train_large")


@pytest.mark.parametrize("flag,value", [
    ("--epochs", "0"), ("--epochs", "-1"), ("--batch-size", "0"), ("--dim", "0"),
    ("--eval-every", "0"), ("--patience", "0"), ("--threads", "-1"), ("--eval-users", "-5"),
    ("--lr", "0"), ("--lr", "nan"), ("--lr", "inf"), ("--reg", "-0.001"), ("--mask-p", "1"),
    ("--tau", "0"), ("--order", "1"), ("--n-bands", "0"), ("--d0", "0"), ("--seed", "-1"),
    ("--timeout", "0"), ("--layers", "-1"), ("--dim", "2.5"), ("--lr", "fast")])
def test_numeric_flags_out_of_range_are_refused(script, capsys, flag, value):
    # before: --epochs 0 / --batch-size 0 were silently replaced by defaults, --dim 0 trained,
    # --eval-every 0 raised ZeroDivisionError, negative counts gave tracebacks
    with pytest.raises(SystemExit) as e:
        script["parse_args"](["--model", "mf", flag, value])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"argument {flag}:" in err and value in err


def test_default_epochs_train_real_data_to_early_stopping(script):
    # the stored pipeline used to stop real data after 5 epochs unless --epochs was given
    parse, epochs = script["parse_args"], script["default_epochs"]
    assert epochs(parse(["--data", "somewhere"])) == 1000
    assert epochs(parse([])) == 5                                 # the synthetic demo graph
    assert epochs(parse(["--data", "somewhere", "--epochs", "7"])) == 7


@pytest.mark.parametrize("pipeline", ["stored", "memory"])
def test_fresh_keeps_the_old_checkpoint_until_the_new_run_writes_one(tmp_path, pipeline):
    # before: --fresh deleted checkpoint.pt first, so a new run refused a moment later left
    # the folder without its checkpoint
    assert _run("--model", "mf", *SMALL, "--dim", "8", out=tmp_path).returncode == 0
    old = (tmp_path / "checkpoint.pt").read_bytes()
    bad = _run("--approx", "chebyshev", "--pipeline", pipeline, "--n-bands", "200", "--fresh",
               *SMALL, out=tmp_path)
    assert bad.returncode == 2 and "do not fit" in bad.stderr, bad.stderr
    assert (tmp_path / "checkpoint.pt").read_bytes() == old
    good = _run("--model", "mf", *SMALL, "--dim", "8", "--seed", "5", "--fresh", out=tmp_path)
    assert good.returncode == 0, good.stderr
    assert json.loads((tmp_path / "metrics.json").read_text())["seed"] == 5


def test_disk_full_during_the_checkpoint_write_exits_1_and_keeps_it(script, tmp_path, capsys,
                                                                     disk_fills_after):
    # before: a RuntimeError traceback from torch's archive writer and the epoch lost
    args = ["--model", "mf", *SMALL, "--dim", "8", "--out", str(tmp_path)]
    script["main"](args)
    old = (tmp_path / "checkpoint.pt").read_bytes()
    disk_fills_after(1000)
    with pytest.raises(SystemExit) as e:
        script["main"](args + ["--fresh", "--seed", "3"])
    assert e.value.code == 1
    assert "no space left on the device; the previous checkpoint is kept" in \
        capsys.readouterr().err
    assert (tmp_path / "checkpoint.pt").read_bytes() == old


def test_ctrl_c_outside_training_exits_130_without_a_traceback(script, tmp_path, capsys,
                                                                monkeypatch):
    # before: a KeyboardInterrupt traceback (e.g. during the band precompute)
    def interrupted(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setitem(script["main"].__globals__, "load_data", interrupted)
    data = tmp_path / "data"
    data.mkdir()
    with pytest.raises(SystemExit) as e:
        script["main"](["--data", str(data), "--out", str(tmp_path / "run")])
    assert e.value.code == 130
    err = capsys.readouterr().err
    assert "interrupted by SIGINT outside training" in err and "Traceback" not in err


@pytest.mark.parametrize("extra,flag", [
    (["--model", "mf", "--k", "8"], "--k"),
    (["--model", "mf", "--d0", "8"], "--d0"),
    (["--model", "lightgcn", "--reduce", "random"], "--reduce"),
    (["--model", "ssr", "--pipeline", "memory", "--store-dtype", "float16"], "--store-dtype"),
    (["--model", "ssr", "--approx", "chebyshev", "--band-edges", "uniform"], "--band-edges"),
    (["--model", "ssr", "--approx", "chebyshev", "--layers", "2"], "--layers"),
    (["--model", "ssr", "--approx", "chebyshev", "--k", "8"], "--k"),
    (["--model", "mf", "--n-bands", "2"], "--n-bands"),
    (["--model", "ssr", "--fusion-lr", "1e-4"], "--fusion-lr"),
    (["--model", "ssr", "--fusion", "sum", "--fusion-wd", "1e-4"], "--fusion-wd"),
    (["--model", "lightgcn", "--id-residual", "smooth"], "--id-residual"),
])
def test_a_flag_the_run_does_not_use_is_refused(script, extra, flag):
    # before: ignored silently
    args = script["parse_args"](["--synthetic", "400,200,6000", *extra])
    stored = script["use_stored"](args, 600)
    with pytest.raises(ValueError, match=f"{flag} is used by .* only and this run trains"):
        script["refuse_unused"](args, stored)


def test_flags_the_run_uses_pass(script):
    for argv in (["--model", "lightgcn", "--layers", "2", "--eval-users", "10"],
                 ["--approx", "chebyshev", "--d0", "8", "--id-basis", "4", "--reduce", "random"],
                 ["--pipeline", "stored", "--approx", "eigen", "--k", "8"],
                 ["--pipeline", "memory", "--band-edges", "uniform", "--id-prior", "lightgcn"],
                 ["--fusion", "cp", "--fusion-lr", "1e-4", "--fusion-wd", "1e-5"],
                 ["--pipeline", "stored", "--id-basis", "16", "--id-residual", "smooth"]):
        args = script["parse_args"](argv)
        script["refuse_unused"](args, script["use_stored"](args, 600))


def test_missing_data_folder_is_one_line(tmp_path):
    r = _run("--data", str(tmp_path / "nope"), "--quiet", out=tmp_path / "o")
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1] == \
        f"error: --data {tmp_path / 'nope'}: no such folder"


def test_data_folder_with_two_inter_files_is_one_line(tmp_path):
    data = tmp_path / "d"
    data.mkdir()
    for n in ("a", "b"):
        (data / f"{n}.inter").write_text("userID\titemID\tx_label\n0\t0\t0\n")
    r = _run("--data", str(data), "--quiet", out=tmp_path / "o")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "found a.inter, b.inter; keep one" in r.stderr.strip().splitlines()[-1]
