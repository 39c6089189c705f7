"""Odd arguments and file-system states that must not corrupt an index or print a traceback."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap

import faiss
import pytest

from conftest import invoke, make_photo
from searchclip.errors import ModelError, UsageError
from searchclip.indexing import index_paths
from searchclip.model import load_model
from searchclip.search import search
from searchclip.storage import Index


@pytest.fixture
def built(tmp_path, photos, tiny_model):
    index_dir = tmp_path / "index"
    index_paths([photos], index_dir, model=tiny_model)
    return index_dir


def ready_paths(index_dir) -> list[str]:
    index = Index.open(index_dir)
    paths = [row[0] for row in index.db.conn.execute("select path from images where state = 'ready'")]
    index.close()
    return paths


# Kills the process right after one chosen SQL statement, inside a transaction.
CHILD = textwrap.dedent(
    """
    import os, sys
    from searchclip import storage
    from searchclip.indexing import index_paths

    marker = sys.argv[1]
    original_connect = storage._connect

    class Connection:
        def __init__(self, conn):
            self._conn = conn
        def execute(self, sql, *args):
            cursor = self._conn.execute(sql, *args)
            if sql.startswith(marker):
                os.kill(os.getpid(), 9)
            return cursor
        def __getattr__(self, name):
            return getattr(self._conn, name)

    def connect(path, read_only=False):
        db = original_connect(path, read_only)
        db.conn = Connection(db.conn)
        return db

    storage._connect = connect
    index_paths([sys.argv[2]], sys.argv[3])
    """
)


@pytest.mark.parametrize("marker", ["insert or ignore into removed_ids", "delete from labels", "insert into images"])
def test_kill_inside_transaction(tmp_path, photos, tiny_model, built, marker):
    (photos / "red.png").unlink()
    make_photo(photos / "new.png", "yellow", size=(21, 21))
    child = subprocess.run([sys.executable, "-c", CHILD, marker, str(photos), str(built)], capture_output=True, text=True, timeout=300)
    assert child.returncode == -signal.SIGKILL, child.stderr

    Index.open(built).check_agreement()
    index_paths([photos], built)
    paths = ready_paths(built)
    assert sorted(paths) == sorted(set(paths))
    assert str(photos / "red.png") not in paths
    assert str(photos / "new.png") in paths
    assert len(paths) == 10


def test_file_replaced_by_folder(built, photos):
    (photos / "green.png").unlink()
    make_photo(photos / "green.png" / "inside.png", "green", size=(22, 22))
    report = index_paths([photos], built)
    paths = ready_paths(built)
    assert report.removed == 1
    assert str(photos / "green.png") not in paths
    assert str(photos / "green.png" / "inside.png") in paths


def test_swapped_files_same_size_and_mtime(built, photos):
    first, second = photos / "red.jpg", photos / "green.jpg"
    make_photo(first, "red", size=(64, 64))
    make_photo(second, "green", size=(64, 64))
    os.utime(first, (1_500_000_000, 1_500_000_000))
    os.utime(second, (1_500_000_000, 1_500_000_000))
    index_paths([photos], built)
    os.rename(first, photos / "swap")
    os.rename(second, first)
    os.rename(photos / "swap", second)

    index_paths([photos], built)
    results = search(built, images=[first], k=1)
    assert results[0].path == str(first)
    assert results[0].score == pytest.approx(1.0, abs=1e-4)


def test_symlinked_root_is_one_root(built, photos, tmp_path):
    link = tmp_path / "link"
    link.symlink_to(photos)
    report = index_paths([link], built)
    assert report.indexed == 0
    assert report.unchanged == 10
    assert len(ready_paths(built)) == 10


def test_copies_across_batches_embedded_once(tmp_path, photos, tiny_model):
    shutil.copy(photos / "blue.jpg", photos / "zz copy.jpg")
    report = index_paths([photos], tmp_path / "index", model=tiny_model, batch_size=2, commit_size=2)
    assert report.indexed == 10
    assert report.copied == 1


def test_index_path_under_a_file(photos, tiny_model, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UsageError, match="cannot be created"):
        index_paths([photos], blocker / "sub", model=tiny_model)
    with pytest.raises(UsageError, match="is a file"):
        index_paths([photos], blocker, model=tiny_model)


def test_reading_commands_create_nothing(tmp_path):
    target = tmp_path / "absent"
    for args in (["repair"], ["label", "--labels", "cat"], ["search", "x"], ["info"]):
        result = invoke(*args, "--index", str(target))
        assert result.returncode == 1, args
        assert "no index at" in result.stderr
    assert not target.exists()


def test_tilde_in_index_path(photos, tiny_model, tmp_path):
    result = invoke("index", str(photos), "--model", tiny_model, "--index", "~/idx", env={"HOME": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    assert Index.exists(tmp_path / "idx")


@pytest.mark.parametrize("args, message", [
    (["search", "red", "-k", "99999999999999"], None),
    (["search", "red", "--device", "banana"], "not a torch device"),
    (["search", "red", "--min-score", "nan"], "between -1 and 1"),
    (["search", "red", "--under", "/no/such/folder"], "folder not found"),
    (["index", "--max-megapixels", "nan"], "positive number"),
    (["index", "--max-megapixels", "-1"], "positive number"),
])
def test_odd_arguments(built, args, message):
    result = invoke(*args, "--index", str(built))
    if message is None:
        assert result.returncode == 0, result.stderr
        assert len(result.stdout.splitlines()) == 11
    else:
        assert result.returncode != 0
        assert message in result.stderr


def test_model_names_that_are_paths(tmp_path):
    with pytest.raises(ModelError, match="model folder /no/such/model not found"):
        load_model("/no/such/model")
    with pytest.raises(ModelError, match="--model is empty"):
        load_model("")


def test_templates_with_other_braces(tiny_model, photos):
    from searchclip.labels import classify

    scores = classify(load_model(tiny_model), photos / "red.jpg", ["cat", "dog"], templates=["{x} a {} photo {0}"])
    assert len(scores) == 2


def test_pipe_closed_early(built):
    command = f"{sys.executable} -m searchclip search red --paths --index {built} | head -1"
    result = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=300)
    assert len(result.stdout.splitlines()) == 1
    assert "Traceback" not in result.stderr
    assert result.stderr == ""


def test_second_writer_fails_before_loading_model(built, photos):
    with Index.open_for_writing(built):
        result = subprocess.run(
            [sys.executable, "-X", "importtime", "-m", "searchclip", "index", str(photos), "--index", str(built)],
            capture_output=True, text=True, timeout=300,
        )
    assert result.returncode == 1
    assert "is busy" in result.stderr
    assert "transformers.models.clip" not in result.stderr
