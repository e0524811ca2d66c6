"""The thread policy of a run: fixed, untouched, or the cores other processes leave idle."""
import subprocess
import sys
import time

import pytest
import torch

from ssr_engine.train import threads as th
from ssr_engine.train.threads import ThreadPolicy, idle_cores


@pytest.fixture(autouse=True)
def keep_torch_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def _fake_proc(tmp_path, monkeypatch, running, own_states):
    """A /proc/stat with ``procs_running`` and a task folder with one stat file per own
    thread (comm names with spaces and parentheses, as Linux allows)."""
    stat = tmp_path / "stat"
    stat.write_text(f"cpu  1 2 3 4\nprocs_running {running}\nprocs_blocked 0\n")
    tasks = tmp_path / "task"
    tasks.mkdir()
    for k, state in enumerate(own_states):
        (tasks / str(k)).mkdir()
        (tasks / str(k) / "stat").write_text(f"{k} (py worker) {state} 1 1 1 0\n")
    monkeypatch.setattr(th, "PROC_STAT", stat)
    monkeypatch.setattr(th, "OWN_TASKS", tasks)


def test_own_running_threads_are_not_counted_as_others(tmp_path, monkeypatch):
    # 5 running on the machine, 3 of them threads of this process: 2 others. Thread 2
    # sleeps; its comm "py) R (x" reads as running if the state is taken after the first ')'
    _fake_proc(tmp_path, monkeypatch, 5, ["R", "R", "S", "R"])
    (tmp_path / "task" / "2" / "stat").write_text("2 (py) R (x) S 0 1 1 0\n")
    assert th._running_others() == 2
    monkeypatch.setattr(th, "_usable_cores", lambda: 4)
    monkeypatch.setattr(th.time, "sleep", lambda s: None)
    assert idle_cores() == 2


def test_an_idle_machine_gives_every_core(tmp_path, monkeypatch):
    _fake_proc(tmp_path, monkeypatch, 1, ["R", "S", "S"])      # only this process runs
    monkeypatch.setattr(th, "_usable_cores", lambda: 8)
    monkeypatch.setattr(th.time, "sleep", lambda s: None)
    assert idle_cores() == 8
    monkeypatch.setattr(th, "PROC_STAT", tmp_path / "missing")  # not Linux: one thread
    assert idle_cores() == 1


def test_a_process_seen_in_a_quarter_of_the_looks_holds_a_core():
    assert th._threads_for([0] * 10, 2) == 2
    assert th._threads_for([0] * 7 + [1] * 3, 2) == 1      # busy 30% of the looks: counts
    assert th._threads_for([0] * 9 + [1], 2) == 2          # one stray look (10%): does not
    assert th._threads_for([2, 2, 3, 2], 4) == 1           # 2.25 busy -> 3 cores taken
    assert th._threads_for([9] * 3, 2) == 1


def test_cgroup_quotas_cap_the_cores(tmp_path, monkeypatch):
    root = tmp_path / "cg"
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "cpu.max").write_text("150000 100000\n")       # 1.5 cores on the parent
    (root / "a" / "b" / "cpu.max").write_text("max 100000\n")
    own = tmp_path / "cgroup"
    own.write_text("0::/a/b\n")
    monkeypatch.setattr(th, "CGROUP_ROOT", root)
    monkeypatch.setattr(th, "OWN_CGROUP", own)
    monkeypatch.setattr(th.os, "sched_getaffinity", lambda pid: set(range(64)), raising=False)
    assert th._usable_cores() == 1
    (root / "a" / "cpu.max").write_text("50000 100000\n")        # under a core: still 1
    assert th._usable_cores() == 1
    (root / "a" / "cpu.max").write_text("400000 100000\n")
    assert th._usable_cores() == 4
    (root / "a" / "cpu.max").unlink()
    assert th._usable_cores() == 64
    (root / "cpu").mkdir()                                       # cgroup v1
    (root / "cpu" / "cpu.cfs_quota_us").write_text("200000\n")
    (root / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert th._usable_cores() == 2
    (root / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")      # no quota
    assert th._usable_cores() == 64


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_busy_processes_take_the_cores_away():
    cores = th._usable_cores()
    spin = "import sys; print('go', flush=True)\nwhile True: pass"
    kids = [subprocess.Popen([sys.executable, "-c", spin], stdout=subprocess.PIPE, text=True)
            for _ in range(cores)]
    try:
        for k in kids:
            assert k.stdout.readline().strip() == "go"
        time.sleep(0.1)
        assert th._running_others() >= cores
        p = ThreadPolicy("auto")
        assert p.apply(force=True) == 1 and torch.get_num_threads() == 1
    finally:
        for k in kids:
            k.kill()
            k.wait()


def test_policy_fixed_untouched_throttled_and_accounted(monkeypatch):
    assert ThreadPolicy(3).apply() == 3 and torch.get_num_threads() == 3
    torch.set_num_threads(2)
    assert ThreadPolicy(None).apply() == 2 and torch.get_num_threads() == 2
    looks = []
    monkeypatch.setattr(th, "_running_others", lambda: looks.append(1) or 1)
    monkeypatch.setattr(th, "_usable_cores", lambda: 2)
    monkeypatch.setattr(th.time, "sleep", lambda s: None)
    p = ThreadPolicy("auto", recheck=60)
    assert p.apply() == 1 and torch.get_num_threads() == 1 and len(looks) == 6
    p.apply()                      # within the look interval and the recheck: nothing read
    assert len(looks) == 6
    p.apply(force=True)
    assert len(looks) == 11
    time.sleep(0.01)
    use = p.usage()
    assert set(use) == {"1"} and use["1"] >= 0


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "all", "2"])
def test_bad_thread_settings_are_refused(bad):
    with pytest.raises(ValueError, match="threads must be"):
        ThreadPolicy(bad)


@pytest.mark.parametrize("bad", [0, -1, float("nan"), "5"])
def test_bad_recheck_is_refused(bad):
    with pytest.raises(ValueError, match="recheck must be"):
        ThreadPolicy("auto", recheck=bad)


def test_trainer_and_pipeline_refuse_bad_threads(tmp_path):
    from ssr_engine import MFBPR
    from ssr_engine.data import synthetic_dataset
    from ssr_engine.train import TrainConfig, Trainer
    from ssr_engine.train.pipeline import LargeRun, run_large
    ds = synthetic_dataset(60, 40, 600, modalities={}, seed=0)
    with pytest.raises(ValueError, match="threads must be"):
        Trainer(MFBPR(ds.train_graph(), dim=8), ds, TrainConfig(epochs=1, threads=0))
    with pytest.raises(ValueError, match="threads must be"):
        run_large(LargeRun(out=tmp_path / "o", synthetic=(60, 40, 600), threads=0))
    assert not (tmp_path / "o").exists()         # the refused run left no folder behind
