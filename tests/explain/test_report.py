"""The HTML report embeds every PNG it wrote; per-user explanations; clear errors."""
import base64
import json
from html.parser import HTMLParser

import pytest
import torch

from ssr_engine.data import synthetic_dataset
from ssr_engine.explain import explain_user, read_item_names, write_report
from ssr_engine.explain.report import default_users
from ssr_engine.nn import MFBPR, SSRModel
from tolerances import tol


class _Images(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.links = [], []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.images.append(a)
        if tag in ("link", "script") or (tag == "a" and "href" in a):
            self.links.append((tag, a))


@pytest.fixture(scope="module")
def ds():
    return synthetic_dataset(90, 50, 900, modalities={"text": 10, "image": 6}, seed=2)


def _model(ds, **kw):
    torch.manual_seed(0)
    return SSRModel(ds.train_graph(), kw.pop("features", ds.features), n_bands=3, dim=8,
                    rank=4, **kw).eval()


@pytest.mark.parametrize("kw", [{}, {"features": None, "fusion": "sum"}, {"fusion": "cp+sum"}])
def test_report_embeds_every_figure(ds, tmp_path, kw):
    m = _model(ds, **kw)
    names = [f"product {i}" for i in range(ds.n_items)]
    path = write_report(m, ds, tmp_path, users=[0, 5], k=4, item_names=names, max_users=12)
    pngs = sorted(p.name for p in tmp_path.glob("*.png"))
    assert pngs == sorted(["spectra.png", "reliability.png", "interaction.png", "usage.png",
                           "user_0.png", "user_5.png"])
    parser = _Images()
    parser.feed(path.read_text(encoding="utf-8"))
    assert parser.links == []
    assert sorted(img["data-file"] for img in parser.images) == pngs
    for img in parser.images:
        head, data = img["src"].split(",", 1)
        assert head == "data:image/png;base64"
        assert base64.b64decode(data) == (tmp_path / img["data-file"]).read_bytes()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["max_relative_error"] <= tol(torch.float32, "attribution")
    assert sorted(summary["figures"]) == pngs
    assert summary["users"]["5"][0]["name"].startswith("product ")
    assert "product " in path.read_text(encoding="utf-8")


def test_default_users_span_activity(ds):
    users = default_users(ds)
    counts = ds.user_counts()
    assert counts[users[0]] == counts[counts > 0].min() and counts[users[-1]] == counts.max()


def test_explain_user(ds, tmp_path):
    m = _model(ds)
    res = explain_user(m, ds, 7, tmp_path, k=3)
    assert (tmp_path / "user_7.png").is_file() and (tmp_path / "user_7.json").is_file()
    assert len(res["items"]) == 3 and res["max_relative_error"] <= tol(torch.float32,
                                                                       "attribution")
    row = res["items"][0]
    assert sum(row["by_band"].values()) == pytest.approx(1.0, abs=tol(torch.float32))
    with pytest.raises(ValueError, match=r"user must be an id in \[0, 90\), got 90"):
        explain_user(m, ds, 90, tmp_path)
    with pytest.raises(ValueError, match="item_names has 2 entries"):
        explain_user(m, ds, 0, tmp_path, item_names=["a", "b"])
    with pytest.raises(TypeError, match="SSRModel"):
        write_report(MFBPR(ds.train_graph(), dim=4), ds, tmp_path)
    with pytest.raises(ValueError, match="90 users x 50 items"):
        write_report(m, synthetic_dataset(91, 50, 900, seed=2), tmp_path)


def test_read_item_names_needs_columns(tmp_path):
    p = tmp_path / "items.tsv"
    p.write_text("id\tname\n0\ta\n")
    with pytest.raises(ValueError, match="itemID and title"):
        read_item_names(p, 1)
    p.write_text("itemID\ttitle\n1\tb\n")
    assert read_item_names(p, 3) == ["item 0", "b", "item 2"]
