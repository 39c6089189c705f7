"""Incremental indexing: unchanged, changed, deleted, moved and copied files."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import faiss
import numpy as np
import pytest

from conftest import make_photo
from searchclip.indexing import index_paths
from searchclip.storage import Index


def stored(index_dir: Path) -> tuple[dict[str, int], set[int]]:
    """Return {path: id} of ready rows and the set of FAISS ids."""
    index = Index.open(index_dir)
    rows = dict(index.db.execute("select path, id from images where state = 'ready'").fetchall())
    ids = set(faiss.vector_to_array(index.vectors.id_map).tolist())
    index.close()
    return rows, ids


def test_first_run_indexes_every_photo(tmp_path, photos, tiny_model):
    report = index_paths([photos], tmp_path / "index", model=tiny_model)
    rows, ids = stored(tmp_path / "index")
    assert report.indexed == 10
    assert len(rows) == 10
    assert set(rows.values()) == ids
    assert all(os.path.isabs(path) for path in rows)


def test_unchanged_files_are_not_opened(tmp_path, photos, tiny_model):
    index_paths([photos], tmp_path / "index", model=tiny_model)
    # Garbage of the same size and mtime: opening it would fail loudly.
    target = photos / "red.jpg"
    info = target.stat()
    target.write_bytes(b"\0" * info.st_size)
    os.utime(target, ns=(info.st_atime_ns, info.st_mtime_ns))

    report = index_paths([photos], tmp_path / "index", model=tiny_model)
    assert report.unchanged == 10
    assert report.indexed == 0
    assert report.skipped == []


def test_changed_file_replaces_its_vector(tmp_path, photos, tiny_model):
    index_dir = tmp_path / "index"
    index_paths([photos], index_dir, model=tiny_model)
    before, _ = stored(index_dir)
    index = Index.open(index_dir)
    old_vector = index.vector(before[str(photos / "red.png")])
    index.close()

    make_photo(photos / "red.png", "green", size=(90, 90))
    report = index_paths([photos], index_dir, model=tiny_model)
    after, ids = stored(index_dir)
    assert report.indexed == 1
    assert len(after) == 10
    assert set(after.values()) == ids
    index = Index.open(index_dir)
    new_vector = index.vector(after[str(photos / "red.png")])
    index.close()
    assert not np.allclose(old_vector, new_vector)


def test_touched_file_keeps_its_row(tmp_path, photos, tiny_model):
    index_dir = tmp_path / "index"
    index_paths([photos], index_dir, model=tiny_model)
    before, _ = stored(index_dir)
    os.utime(photos / "blue.jpg", (1_000_000_000, 1_000_000_000))
    report = index_paths([photos], index_dir, model=tiny_model)
    after, _ = stored(index_dir)
    assert report.indexed == 0
    assert after == before


def test_deleted_file_leaves_both_stores(tmp_path, photos, tiny_model):
    index_dir = tmp_path / "index"
    index_paths([photos], index_dir, model=tiny_model)
    (photos / "green.png").unlink()
    shutil.rmtree(photos / "sub")
    report = index_paths([photos], index_dir, model=tiny_model)
    rows, ids = stored(index_dir)
    assert report.removed == 3
    assert len(rows) == 7
    assert set(rows.values()) == ids


def test_moved_file_keeps_vector_and_id(tmp_path, photos, tiny_model):
    index_dir = tmp_path / "index"
    index_paths([photos], index_dir, model=tiny_model)
    before, _ = stored(index_dir)
    old_id = before[str(photos / "yellow.jpg")]
    (photos / "moved").mkdir()
    os.rename(photos / "yellow.jpg", photos / "moved" / "renamed.jpg")

    report = index_paths([photos], index_dir, model=tiny_model)
    after, ids = stored(index_dir)
    assert report.moved == 1
    assert report.indexed == 0
    assert report.removed == 0
    assert after[str(photos / "moved" / "renamed.jpg")] == old_id
    assert str(photos / "yellow.jpg") not in after
    assert set(after.values()) == ids


def test_move_onto_indexed_path(tmp_path, photos, tiny_model):
    index_dir = tmp_path / "index"
    index_paths([photos], index_dir, model=tiny_model)
    before, _ = stored(index_dir)
    os.replace(photos / "red.jpg", photos / "green.jpg")
    report = index_paths([photos], index_dir, model=tiny_model)
    after, ids = stored(index_dir)
    assert report.moved == 1
    assert after[str(photos / "green.jpg")] == before[str(photos / "red.jpg")]
    assert len(after) == 9
    assert set(after.values()) == ids


def test_copies_are_embedded_once(tmp_path, photos, tiny_model):
    index_dir = tmp_path / "index"
    shutil.copy(photos / "red.jpg", photos / "red copy.jpg")
    shutil.copy(photos / "red.jpg", photos / "sub" / "red again.jpg")
    report = index_paths([photos], index_dir, model=tiny_model)
    assert report.indexed == 10
    assert report.copied == 2

    shutil.copy(photos / "blue.png", photos / "blue later.png")
    report = index_paths([photos], index_dir, model=tiny_model)
    assert report.indexed == 0
    assert report.copied == 1
    rows, ids = stored(index_dir)
    assert len(rows) == 13
    index = Index.open(index_dir)
    np.testing.assert_array_equal(index.vector(rows[str(photos / "blue later.png")]), index.vector(rows[str(photos / "blue.png")]))
    index.close()


def test_ids_are_never_reused(tmp_path, photos, tiny_model):
    index_dir = tmp_path / "index"
    index_paths([photos], index_dir, model=tiny_model)
    before, _ = stored(index_dir)
    highest = max(before.values())
    victim = max(before, key=before.get)
    os.unlink(victim)
    index_paths([photos], index_dir, model=tiny_model)
    make_photo(photos / "new.png", "yellow", size=(33, 33))
    index_paths([photos], index_dir, model=tiny_model)
    after, _ = stored(index_dir)
    assert after[str(photos / "new.png")] > highest


def test_no_paths_reindexes_recorded_roots(tmp_path, photos, tiny_model):
    index_dir = tmp_path / "index"
    index_paths([photos], index_dir, model=tiny_model)
    make_photo(photos / "later.png", "green", size=(31, 31))
    report = index_paths([], index_dir)
    assert report.indexed == 1
    assert report.unchanged == 10


def test_single_file_root(tmp_path, photos, tiny_model):
    report = index_paths([photos / "red.jpg"], tmp_path / "index", model=tiny_model)
    rows, _ = stored(tmp_path / "index")
    assert report.indexed == 1
    assert list(rows) == [str(photos / "red.jpg")]


def test_other_model_is_rejected(tmp_path, photos, tiny_model):
    from searchclip.errors import ModelError

    index_paths([photos], tmp_path / "index", model=tiny_model)
    with pytest.raises(ModelError, match="built with model"):
        index_paths([photos], tmp_path / "index", model="demo")


def test_vectors_are_unit_length(tmp_path, photos, tiny_model):
    index_paths([photos], tmp_path / "index", model=tiny_model)
    index = Index.open(tmp_path / "index")
    _, vectors = index.all_vectors()
    index.close()
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
