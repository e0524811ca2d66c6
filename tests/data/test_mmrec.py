import numpy as np
import pytest

from ssr_engine.data import Dataset, load_mmrec, save_mmrec, synthetic_dataset


def test_movielens_loads_as_documented(data_dir):
    ds = load_mmrec(data_dir / "movielens-100k")
    assert (ds.n_users, ds.n_items) == (943, 1682)
    np.testing.assert_array_equal(np.bincount(ds.split), [75000, 12000, 13000])
    assert ds.features["text"].shape == (1682, 384) and ds.features["meta"].shape == (1682, 22)
    g = ds.train_graph()
    assert g.n_edges == 75000


def test_amazon_baby_id_only(data_dir):
    ds = load_mmrec(data_dir / "amazon-baby")
    assert (ds.n_users, ds.n_items) == (19445, 7050) and ds.features == {}
    np.testing.assert_array_equal(np.bincount(ds.split), [119674, 20559, 20559])
    assert (ds.user_counts() == 5).sum() == 5998


def test_roundtrip(tmp_path):
    ds = synthetic_dataset(60, 40, 300, modalities={"text": 5}, seed=3, name="tiny")
    save_mmrec(ds, tmp_path)
    back = load_mmrec(tmp_path)
    np.testing.assert_array_equal(back.user_ids, ds.user_ids)
    np.testing.assert_array_equal(back.split, ds.split)
    np.testing.assert_allclose(back.features["text"], ds.features["text"])


def test_missing_files_and_bad_features(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_mmrec(tmp_path / "nope")
    (tmp_path / "a.inter").write_text("userID\titemID\tx_label\n0\t0\t0\n1\t2\t0\n")
    np.save(tmp_path / "img_feat.npy", np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match=r"img_feat.npy has shape \(2, 4\); expected \[3, d\]"):
        load_mmrec(tmp_path)
    # before: a feature file with more rows than items added phantom items
    np.save(tmp_path / "img_feat.npy", np.zeros((5, 4), np.float32))
    with pytest.raises(ValueError, match=r"\(5, 4\); expected \[3, d\], one row per itemID"):
        load_mmrec(tmp_path)
    with pytest.raises(FileNotFoundError, match="modality 'txt'"):
        load_mmrec(tmp_path, modalities=["txt"])
    (tmp_path / "b.inter").write_text("user\titem\n0\t0\n")
    with pytest.raises(ValueError, match="lacks columns"):
        load_mmrec(tmp_path, name="b")


def test_dataset_validation():
    with pytest.raises(ValueError, match=r"item ids of 'x' must lie in \[0, 2\)"):
        Dataset([0, 1], [0, 2], [0, 0], 2, 2, name="x")
    with pytest.raises(ValueError, match="NaN/inf in 1 rows, e.g. item 1"):
        Dataset([0], [0], [0], 1, 2, {"t": np.array([[0.0], [np.nan]])})
    with pytest.raises(ValueError, match="one row per item id"):
        Dataset([0], [0], [0], 1, 2, {"t": np.zeros((3, 2))})
    with pytest.raises(ValueError, match="split labels"):
        Dataset([0], [0], [5], 1, 1)


@pytest.mark.parametrize("text,message", [
    ("userID\titemID\tx_label\n", "a.inter holds a header and no interactions"),
    ("userID\titemID\tx_label\n0\t0\t0\n1\t2\t0\t7\n", "a.inter, line 3: 4 tab-separated fields, "
                                                          "the header has 3"),
    ("userID\titemID\tx_label\n0\t0\t0\n1\t2\n", "a.inter, line 3: 2 tab-separated fields"),
    # the file's own line number (blank line included), not loadtxt's row index
    ("userID\titemID\tx_label\n0\t0\t0\n\n1\t2.5\t0\n",
     "a.inter: userID, itemID, x_label must be integers, line 4: '2.5'"),
    ("userID\titemID\tx_label\r\n0\t0\t0\r\n1\t99999999999999999999\t0\r\n",
     "must be integers, line 3: '99999999999999999999'"),          # past int64
    ("userID\titemID\tx_label\n0\t0\t0\n\t\t\n", "must be integers, line 3: ''"),
])
def test_malformed_inter_files_are_named(tmp_path, text, message):
    # before: a numpy "zero-size array" error, and an extra field accepted silently
    (tmp_path / "a.inter").write_text(text)
    with pytest.raises(ValueError, match=message):
        load_mmrec(tmp_path)


def test_inter_file_ok_with_crlf_blank_last_line_and_extra_header_columns(tmp_path):
    (tmp_path / "a.inter").write_text("userID\titemID\trating\tx_label\r\n0\t0\t5\t0\r\n"
                                      "1\t1\t3\t0\r\n\n")
    ds = load_mmrec(tmp_path)
    assert (ds.n_users, ds.n_items) == (2, 2)


def test_two_inter_files_name_them(tmp_path):
    for n in ("a", "b"):
        (tmp_path / f"{n}.inter").write_text("userID\titemID\tx_label\n0\t0\t0\n")
    with pytest.raises(FileNotFoundError, match="found a.inter, b.inter; keep one"):
        load_mmrec(tmp_path)
