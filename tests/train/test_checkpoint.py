"""A run's output folder: made for the run, removed again when a refused run wrote nothing."""
import pytest

from ssr_engine.train.checkpoint import out_folder


def test_out_folder_removes_only_the_empty_folders_it_made(tmp_path):
    had = tmp_path / "had"
    had.mkdir()
    for path in (had, had / "x" / "y"):                   # existing folder, new parents
        with pytest.raises(ValueError):
            with out_folder(path):
                raise ValueError("refused")
        assert had.is_dir() and not (had / "x").exists()
    with pytest.raises(ValueError):                       # something was written: kept
        with out_folder(had / "z") as out:
            (out / "checkpoint.pt").write_bytes(b"")
            raise ValueError("failed later")
    assert (had / "z" / "checkpoint.pt").exists()
    with out_folder(had / "ok") as out:                   # success: kept, even if empty
        pass
    assert out.is_dir()
