"""The index folder: agreement checks, repair, locking, schema versions."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time

import faiss
import numpy as np
import pytest

from conftest import run_searchclip
from searchclip.errors import IndexBusyError, InvalidIndexError
from searchclip.indexing import index_paths
from searchclip.maintenance import describe, repair
from searchclip.search import Searcher, Term
from searchclip.storage import METADATA_FILE, VECTORS_FILE, Index


@pytest.fixture
def built(tmp_path, photos, tiny_model):
    index_dir = tmp_path / "index"
    index_paths([photos], index_dir, model=tiny_model)
    return index_dir


def drop_vector(index_dir, image_id: int) -> None:
    vectors = faiss.read_index(str(index_dir / VECTORS_FILE))
    vectors.remove_ids(np.asarray([image_id], dtype=np.int64))
    faiss.write_index(vectors, str(index_dir / VECTORS_FILE))


def test_folder_layout(built):
    assert (built / VECTORS_FILE).is_file()
    assert (built / METADATA_FILE).is_file()
    vectors = faiss.read_index(str(built / VECTORS_FILE))
    assert isinstance(faiss.downcast_index(vectors), faiss.IndexIDMap2)
    assert isinstance(faiss.downcast_index(faiss.downcast_index(vectors).index), faiss.IndexFlatIP)
    db = sqlite3.connect(built / METADATA_FILE)
    columns = {row[1] for row in db.execute("pragma table_info(images)")}
    assert {"id", "path", "size", "mtime", "content_hash", "width", "height", "format", "indexed_at"} <= columns
    info = {row[1] for row in db.execute("pragma table_info(index_info)")}
    assert {"model_id", "dimension", "fingerprint", "schema_version", "created"} <= info
    assert db.execute("pragma journal_mode").fetchone()[0] == "wal"


def test_missing_vector_detected_and_repaired(built, photos):
    drop_vector(built, 3)
    with pytest.raises(InvalidIndexError, match="searchclip repair"):
        Index.open(built)
    result = run_searchclip("search", "red", "--index", str(built))
    assert result.returncode == 1
    assert "inconsistent" in result.stderr
    assert "Traceback" not in result.stderr

    report = repair(built)
    assert report.re_embedded == 1
    Index.open(built).check_agreement()


def test_extra_vector_detected_and_repaired(built):
    vectors = faiss.read_index(str(built / VECTORS_FILE))
    vectors.add_with_ids(np.ones((1, vectors.d), np.float32), np.asarray([999], dtype=np.int64))
    faiss.write_index(vectors, str(built / VECTORS_FILE))
    with pytest.raises(InvalidIndexError, match="1 vectors have no image"):
        Index.open(built)
    assert repair(built).dropped_vectors == 1
    Index.open(built).check_agreement()


def test_lost_vectors_file_rebuilt(built):
    (built / VECTORS_FILE).write_bytes(b"garbage")
    with pytest.raises(InvalidIndexError, match="repair"):
        Index.open(built)
    result = run_searchclip("repair", "--index", str(built))
    assert result.returncode == 0, result.stderr
    assert "re-embedded 10" in result.stdout
    assert Index.open(built).vectors.ntotal == 10


def test_repair_drops_rows_of_vanished_files(built, photos):
    index = Index.open(built)
    image_id = index.record_by_path(str(photos / "red.png")).id
    index.close()
    drop_vector(built, image_id)
    (photos / "red.png").unlink()
    report = repair(built)
    assert report.dropped_rows == 1
    assert Index.open(built).count() == 9


def test_second_writer_is_busy(built, photos, tiny_model):
    with Index.open_for_writing(built):
        with pytest.raises(IndexBusyError, match="busy"):
            index_paths([photos], built)
        result = run_searchclip("index", str(photos), "--index", str(built))
        assert result.returncode == 1
        assert "is busy" in result.stderr
        assert "Traceback" not in result.stderr
        # Readers are not blocked by the writer.
        assert Index.open(built).count() == 10


def test_readers_search_while_writer_indexes(tmp_path, photos, tiny_model, built):
    from conftest import make_photo

    for i in range(60):
        make_photo(photos / "more" / f"m{i}.png", "green", size=(20 + i, 30))
    writer = subprocess.Popen(
        [sys.executable, "-m", "searchclip", "index", str(photos), "--index", str(built), "--commit-every", "4", "--batch-size", "4", "--quiet"],
        stderr=subprocess.PIPE, text=True,
    )
    searches = 0
    searcher_counts = []
    while writer.poll() is None or searches == 0:
        searcher = Searcher(built)
        results = searcher.search([Term("green")], k=100)
        searcher_counts.append(len(results))
        searcher.close()
        searches += 1
    assert writer.wait() == 0, writer.stderr.read()
    assert searches >= 1
    assert all(count >= 10 for count in searcher_counts)
    assert Index.open(built).count() == 70


def test_newer_schema_rejected(built):
    db = sqlite3.connect(built / METADATA_FILE)
    db.execute("update index_info set schema_version = 99")
    db.commit()
    db.close()
    with pytest.raises(InvalidIndexError, match="upgrade searchclip"):
        Index.open(built)


def test_missing_index_message(tmp_path):
    result = run_searchclip("search", "red", "--index", str(tmp_path / "nowhere"))
    assert result.returncode == 1
    assert "no index at" in result.stderr
    assert "searchclip index" in result.stderr


def test_index_env_variable(tmp_path, photos, tiny_model):
    index_dir = tmp_path / "from-env"
    result = run_searchclip("index", str(photos), "--model", tiny_model, env={"SEARCHCLIP_INDEX": str(index_dir)})
    assert result.returncode == 0, result.stderr
    assert f"index: {index_dir}" in result.stderr
    assert Index.exists(index_dir)


def test_default_index_under_current_folder(tmp_path, photos, tiny_model):
    result = run_searchclip("index", str(photos), "--model", tiny_model, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert Index.exists(tmp_path / "indexes" / "default")


def test_info_reports_everything(built, photos, tiny_model):
    summary = describe(built)
    assert summary.model_id == tiny_model
    assert summary.dimension == 16
    assert summary.images == 10
    assert summary.roots == [str(photos)]
    assert summary.disk_bytes > 0
    result = run_searchclip("info", "--index", str(built), "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["images"] == 10
    assert data["model_id"] == tiny_model
    text = run_searchclip("info", "--index", str(built)).stdout
    for word in ("model:", "dimension:", "images:", "disk size:", "roots:", "labels:", "last update:"):
        assert word in text
