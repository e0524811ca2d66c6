"""train_large.py --update: folding new interactions into a finished run, and its bad inputs."""
import hashlib
import json
import runpy
from pathlib import Path

import numpy as np
import pytest

from ssr_engine.data import save_mmrec, synthetic_dataset
from ssr_engine.train.update import UPDATE_EVAL_EVERY, UPDATE_LR, UPDATE_PATIENCE, UPDATE_SHRINK

SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "train_large.py"
BASE = ["--pipeline", "stored", "--approx", "chebyshev", "--d0", "8", "--dim", "16",
        "--order", "16", "--id-basis", "16", "--eval-users", "0", "--quiet", "--threads", "1"]


def _write_inter(path, rows, header="userID\titemID\tx_label"):
    path.write_text(header + "\n" + "".join("\t".join(str(x) for x in r) + "\n" for r in rows))
    return path


def _tree(folder):
    """Every file under ``folder`` with its size, mtime and checksum."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns,
                                         hashlib.sha1(p.read_bytes()).hexdigest())
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def script():
    return runpy.run_path(str(SCRIPT), run_name="train_large")


@pytest.fixture(scope="module")
def setup(tmp_path_factory, script):
    """A dataset whose training split lost 10% of its rows, a run trained on it, and the
    held-out rows (plus a new user) as the file of new interactions."""
    root = tmp_path_factory.mktemp("update")
    ds = synthetic_dataset(300, 150, 4500, modalities={"text": 8}, seed=2)
    train = np.flatnonzero(ds.split == 0)
    held = np.random.default_rng(0).choice(train, train.size // 10, replace=False)
    # one user loses all its training rows: the update brings its first interactions
    lone = int(ds.user_ids[train[0]])
    held = np.union1d(held, train[ds.user_ids[train] == lone])
    keep = np.setdiff1d(np.arange(ds.split.size), held)
    base = type(ds)(ds.user_ids[keep], ds.item_ids[keep], ds.split[keep], ds.n_users,
                    ds.n_items, ds.features, name="toy")
    save_mmrec(base, root / "data")
    new_rows = [(int(ds.user_ids[j]), int(ds.item_ids[j]), 0) for j in held]
    new_rows += [(300, 3, 0), (300, 7, 0), (300, 11, 0)]          # a brand-new user id
    new = _write_inter(root / "new.inter", new_rows)
    script["main"](["--data", str(root / "data"), *BASE, "--epochs", "2", "--seed", "1",
                    "--out", str(root / "run")])
    return {"root": root, "new": new, "run": root / "run", "lone": lone, "ds": base}


def test_update_carries_the_model_over_and_trains_on(setup, script):
    root, run = setup["root"], setup["run"]
    before = _tree(run)
    out = root / "updated"
    script["main"](["--update", str(setup["new"]), "--from", str(run), "--out", str(out),
                    "--epochs", "2", "--quiet"])
    assert _tree(run) == before                       # the old run is only read
    m = json.loads((out / "metrics.json").read_text())
    up = m["update"]
    assert up["added"] == sum(1 for _ in open(setup["new"])) - 1
    assert up["new_user_ids"] == 1 and up["new_users"] == 2         # id 300 and the lone user
    assert np.load(out / "new_users.npy").tolist() == sorted([setup["lone"], 300])
    # examples/new_users.py: those users' figures here and, from its per-user file, in the
    # run before the update
    new_users = runpy.run_path(str(SCRIPT.parent / "new_users.py"), run_name="new_users")
    table = new_users["rows"](out, [run])
    from ssr_engine.metrics import RankingResult
    news = np.load(out / "new_users.npy")
    earlier = RankingResult.load(run / "test_per_user.npz").summary(news)
    np.testing.assert_equal([r[1:] for r in table], [
        new_users["_pick"](up["before_training"]["test_new_users"]),
        new_users["_pick"](up["test_new_users"]),
        (earlier["n_users"], earlier["recall@20"], earlier["ndcg@20"])])
    assert table[2][1] == 1 and table[2][2] >= 0          # the lone user is a test user
    with pytest.raises(ValueError, match="not an updated run"):
        new_users["rows"](run, [])
    # a run of the same data that ranked other users, and a damaged list, are refused
    other = root / "other-split"
    other.mkdir()
    (other / "metrics.json").write_text(json.dumps({"dataset": m["dataset"], "test": {}}))
    elsewhere = next(u for u in range(300) if u not in news)
    RankingResult(np.array([elsewhere]), {"recall@20": np.array([1.0]), "ndcg@20": np.array(
        [1.0])}).save(other / "test_per_user.npz")
    with pytest.raises(ValueError, match="not the same ones"):
        new_users["rows"](out, [other])
    kept = (out / "new_users.npy").read_bytes()
    (out / "new_users.npy").write_bytes(kept[:20])
    with pytest.raises(ValueError, match="new_users.npy cannot be read"):
        new_users["rows"](out, [run])
    # a list of as many other users, or of one user twice, is not this run's
    others = [u for u in range(300) if u not in news][:news.size]
    for fake in (others, [news[0]] * news.size):
        np.save(out / "new_users.npy", np.array(fake, dtype=np.int64))
        with pytest.raises(ValueError, match="other figures than|does not list"):
            new_users["rows"](out, [run])
    (out / "new_users.npy").write_bytes(kept)
    # a report whose record before training is damaged, and a folder whose checkpoint is
    # not the one its report describes (a later run there did not finish), are refused
    report = (out / "metrics.json").read_text()
    for change, match in (({"before_training": 5}, "not a record"),
                          ({"before_training": {"test_new_users": {"n_users": "2"}}},
                           "not a summary"),
                          ({"test_new_users": {"n_users": 2, "recall@20": "high"}},
                           "not a summary")):
        bad = json.loads(report)
        bad["update"].update(change)
        (out / "metrics.json").write_text(json.dumps(bad))
        with pytest.raises(ValueError, match=match):
            new_users["rows"](out, [run])
    bad = json.loads(report)
    bad["epochs_run"] += 1
    (out / "metrics.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="is not the one its metrics.json reports"):
        new_users["rows"](out, [run])
    (out / "metrics.json").write_text(report)
    assert new_users["rows"](out, [run]) == table
    # resuming the update (here: the finished one) keeps what happened before its training
    # and writes the list of new users again; without update_start.json (an update made
    # before it existed) the earlier report is the record
    # (a damaged update_start.json counts as none); a finished run resumed keeps the
    # timings of the call that trained it
    assert up["before_training"] is not None
    start = (out / "update_start.json").read_text()
    for damage in (None, {"before_training": 5}, {"seconds": [1, 2]},
                   {"seconds": {"carry_over": "abc"}}, "drop"):
        if damage == "drop":
            (out / "update_start.json").unlink()
        elif damage is not None:
            (out / "update_start.json").write_text(json.dumps({**json.loads(start), **damage}))
        script["main"](["--update", str(setup["new"]), "--from", str(run), "--out", str(out),
                        "--epochs", "2", "--quiet", "--resume"])
        assert (out / "new_users.npy").read_bytes() == kept
        resumed = json.loads((out / "metrics.json").read_text())
        for k in ("before_training", "carried_over", "test_new_users"):
            assert resumed["update"][k] == up[k], (damage, k)
        assert resumed["timings"] == m["timings"], damage
        assert resumed["seconds_per_epoch"] == m["seconds_per_epoch"] > 0
    assert up["carried_over"]["extended"] >= 2
    assert m["n_users"] == 301 and m["epochs_run"] <= 2
    assert up["before_training"]["test"]["recall@20"] > 0
    # the model settings are the run's; the graph is the grown one
    old = json.loads((run / "metrics.json").read_text())
    for k in ("dim", "d0", "order", "id_basis", "fusion", "n_bands"):
        assert m["options"][k] == old["options"][k]
    # the update's own training defaults replace the run's (lr 1e-3, patience 20, every
    # epoch evaluated)
    assert old["options"]["lr"] != UPDATE_LR and old["options"]["patience"] != UPDATE_PATIENCE
    assert old["options"]["eval_every"] == 1 != UPDATE_EVAL_EVERY
    assert (m["options"]["lr"], m["options"]["patience"], m["options"]["shrink"],
            m["options"]["eval_every"]) == (UPDATE_LR, UPDATE_PATIENCE, UPDATE_SHRINK,
                                             UPDATE_EVAL_EVERY)
    assert [h["epoch"] for h in m["history"]] == [2]                   # one evaluation
    # threads are the machine's: the run's fixed --threads 1 is not carried into the update
    assert old["options"]["threads"] == 1 and m["options"]["threads"] is None
    assert set(m["threads"]) == {"until_training", "training_and_evaluation"}
    assert m["n_train"] == old["n_train"] + up["added"]
    # an update of the update replays the chain of new interactions
    more = _write_inter(root / "more.inter", [(300, 20, 0), (300, 21, 0)])
    script["main"](["--update", str(more), "--from", str(out), "--out", str(root / "again"),
                    "--epochs", "1", "--lr", "0.002", "--eval-every", "1", "--quiet"])
    text = (root / "again" / "metrics.json").read_text()
    again = json.loads(text)
    assert again["n_train"] == m["n_train"] + 2
    assert again["options"]["lr"] == 0.002                # a given --lr wins
    assert again["options"]["eval_every"] == 1
    # no test user is new here: the group is {"n_users": 0}, not NaN metrics
    assert "NaN" not in text and again["update"]["test_new_users"] == {"n_users": 0}
    # the chain is recorded with absolute paths, so it can be updated from anywhere
    for k in ("update", "update_from", "data", "out"):
        assert Path(again["options"][k]).is_absolute()
    # an update may not write over a run it descends from (that would make a loop)
    for target in (run, out):
        with pytest.raises(SystemExit):
            script["main"](["--update", str(more), "--from", str(root / "again"), "--out",
                            str(target), "--fresh", "--quiet"])
    assert _tree(run) == before


def _fails(script, capsys, argv, match):
    with pytest.raises(SystemExit) as e:
        script["main"](argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "Traceback" not in err and match in err, err
    return err


@pytest.mark.parametrize("rows,header,match", [
    ("dup", None, "already in the graph"),
    ("test", None, "would leak the answers"),
    ("far", None, "is this the same dataset"),
    ("ok", "user\titem\tx_label", "lacks columns"),
    ("label", None, "new interactions are training interactions"),
    ("twice", None, "listed more than once"),
    ("newitem", None, "a new item needs its feature rows"),
])
def test_bad_files_of_new_interactions_are_refused(setup, script, capsys, rows, header, match,
                                                   tmp_path):
    ds = setup["ds"]
    u, i = ds.interactions("train")
    tu, ti = ds.interactions("test")
    table = {"dup": [(u[0], i[0], 0)], "test": [(tu[0], ti[0], 0)],
             "far": [(50_000, 1, 0)], "ok": [(300, 1, 0)], "label": [(300, 1, 1)],
             "twice": [(300, 1, 0), (300, 1, 0)], "newitem": [(0, 150, 0)]}[rows]
    f = _write_inter(tmp_path / "new.inter", table,
                     **({} if header is None else {"header": header}))
    before = _tree(setup["run"])
    _fails(script, capsys, ["--update", str(f), "--from", str(setup["run"]), "--out",
                            str(tmp_path / "o")], match)
    assert _tree(setup["run"]) == before
    assert not (tmp_path / "o").exists()         # the refused run removed the folder it made


def test_bad_update_commands_are_refused(setup, script, capsys, tmp_path):
    run, new = str(setup["run"]), str(setup["new"])
    _fails(script, capsys, ["--update", new, "--out", str(tmp_path / "o")], "go together")
    _fails(script, capsys, ["--update", new, "--from", run], "needs --out")
    _fails(script, capsys, ["--update", new, "--from", run, "--out", run],
           "leaves the runs it builds on")
    _fails(script, capsys, ["--update", new, "--from", run, "--out", str(tmp_path / "o"),
                            "--dim", "32"], "--dim cannot be changed by an update")
    _fails(script, capsys, ["--update", new, "--from", str(tmp_path), "--out",
                            str(tmp_path / "o")], "no checkpoint.pt there")
    changed = tmp_path / "changed"                  # the run's data, one training row fewer
    changed.mkdir()
    lines = (setup["root"] / "data" / "toy.inter").read_text().splitlines(keepends=True)
    drop = next(j for j, line in enumerate(lines) if line.rstrip().endswith("\t0"))
    (changed / "toy.inter").write_text("".join(lines[:drop] + lines[drop + 1:]))
    for f in (setup["root"] / "data").glob("*_feat.npy"):
        (changed / f.name).write_bytes(f.read_bytes())
    _fails(script, capsys, ["--update", new, "--from", run, "--out", str(tmp_path / "o"),
                            "--data", str(changed)], "changed since it was trained")
    _fails(script, capsys, ["--model", "mf", "--shrink", "0.5"], "--shrink is used by --update")
    feats = tmp_path / "feats"                      # the same interactions, other features
    feats.mkdir()
    (feats / "toy.inter").write_bytes((setup["root"] / "data" / "toy.inter").read_bytes())
    np.save(feats / "text_feat.npy", np.random.default_rng(0).standard_normal((150, 8)))
    _fails(script, capsys, ["--update", new, "--from", run, "--out", str(tmp_path / "o"),
                            "--data", str(feats)], "item features differ")
    stale = tmp_path / "stale"                      # metrics.json of an earlier run in the folder
    stale.mkdir()
    for f in ("checkpoint.pt", "metrics.json"):
        (stale / f).write_bytes((setup["run"] / f).read_bytes())
    m = json.loads((stale / "metrics.json").read_text())
    m["epochs_run"] += 5
    (stale / "metrics.json").write_text(json.dumps(m))
    _fails(script, capsys, ["--update", new, "--from", str(stale), "--out", str(tmp_path / "o")],
           "is not the one its metrics.json reports")
    (stale / "checkpoint.pt").write_bytes(b"")
    _fails(script, capsys, ["--update", new, "--from", str(stale), "--out", str(tmp_path / "o")],
           "its checkpoint cannot be read")
    _fails(script, capsys, ["--update", str(tmp_path), "--from", run, "--out",
                            str(tmp_path / "o")], "is a folder; expected a file")
    gone = _write_inter(tmp_path / "gone.inter", [(300, 5, 0)])   # a chain loses a file
    script["main"](["--update", str(gone), "--from", run, "--out", str(tmp_path / "u1"),
                    "--epochs", "1", "--quiet"])
    gone.unlink()
    more = _write_inter(tmp_path / "more.inter", [(300, 6, 0)])
    _fails(script, capsys, ["--update", str(more), "--from", str(tmp_path / "u1"), "--out",
                            str(tmp_path / "o")], "which is gone")
    mem = tmp_path / "mem"
    script["main"](["--model", "mf", "--synthetic", "300,150,4500", "--epochs", "1", "--quiet",
                    "--dim", "8", "--out", str(mem)])
    _fails(script, capsys, ["--update", new, "--from", str(mem), "--out", str(tmp_path / "o")],
           "continues SSR runs of the stored pipeline")


def test_update_split_holds_out_training_rows_only(tmp_path):
    split = runpy.run_path(str(SCRIPT.parent / "update_split.py"), run_name="split")
    ds = synthetic_dataset(600, 200, 3600, modalities={"text": 4}, seed=5)
    save_mmrec(ds, tmp_path / "d")
    split["main"](["--data", str(tmp_path / "d"), "--seed", "3", "--new-users", "0.5",
                   "--out", str(tmp_path / "o")])
    from ssr_engine.data import load_mmrec, read_new_interactions
    base = load_mmrec(tmp_path / "o" / "base")
    nu, ni = read_new_interactions(tmp_path / "o" / "new.inter")
    for which in ("valid", "test"):                         # unchanged
        (bu, bi), (du, di) = base.interactions(which), ds.interactions(which)
        assert np.array_equal(np.sort(bu * 1000 + bi), np.sort(du * 1000 + di))
    n_train = int((ds.split == 0).sum())
    assert (base.split == 0).sum() + nu.size == n_train and nu.size >= round(0.1 * n_train)
    # half of the users with <= 5 interactions lost every training row
    cold = ds.cold_users(5)
    assert cold.size > 10
    left = np.bincount(base.interactions("train")[0], minlength=ds.n_users)[cold]
    assert (left == 0).sum() >= round(0.5 * cold.size)
    assert (tmp_path / "o" / "base" / "text_feat.npy").exists()
    merged, _ = base.add_training(nu, ni)                    # the two parts make the whole
    assert (merged.split == 0).sum() == n_train
