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


def test_idle_cores_subtracts_the_fewest_others_seen(monkeypatch):
    monkeypatch.setattr(th, "_usable_cores", lambda: 4)
    seen = iter([2, 1, 3])
    monkeypatch.setattr(th, "_running_others", lambda: next(seen))
    monkeypatch.setattr(th.time, "sleep", lambda s: None)
    assert idle_cores() == 3
    monkeypatch.setattr(th, "_running_others", lambda: 9)      # a crowded machine
    assert idle_cores() == 1
    monkeypatch.setattr(th, "_running_others", lambda: None)   # cannot be read: one thread
    assert idle_cores() == 1


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


def test_policy_fixed_untouched_and_throttled(monkeypatch):
    assert ThreadPolicy(3).apply() == 3 and torch.get_num_threads() == 3
    torch.set_num_threads(2)
    assert ThreadPolicy(None).apply() == 2 and torch.get_num_threads() == 2
    calls = []
    monkeypatch.setattr(th, "idle_cores", lambda: calls.append(1) or 1)
    p = ThreadPolicy("auto", recheck=60)
    assert p.apply() == 1 and torch.get_num_threads() == 1
    p.apply()                                   # within recheck: no new count
    assert len(calls) == 1
    p.apply(force=True)
    assert len(calls) == 2


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "all", "2"])
def test_bad_thread_settings_are_refused(bad):
    with pytest.raises(ValueError, match="threads must be"):
        ThreadPolicy(bad)


def test_trainer_refuses_bad_threads():
    from ssr_engine import MFBPR
    from ssr_engine.data import synthetic_dataset
    from ssr_engine.train import TrainConfig, Trainer
    ds = synthetic_dataset(60, 40, 600, modalities={}, seed=0)
    with pytest.raises(ValueError, match="threads must be"):
        Trainer(MFBPR(ds.train_graph(), dim=8), ds, TrainConfig(epochs=1, threads=0))
