"""Killing a real indexing process at any moment leaves a usable index."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import faiss
import pytest

from conftest import make_photo, run_searchclip
from searchclip.storage import Index

PHOTO_COUNT = 40
COMMIT_EVERY = 5


@pytest.fixture
def many_photos(tmp_path) -> Path:
    folder = tmp_path / "many"
    for i in range(PHOTO_COUNT):
        make_photo(folder / f"p{i:03d}.png", ["red", "green", "blue", "yellow"][i % 4], size=(40 + i, 40))
    return folder


# Runs index_paths in a child process that sends itself SIGKILL at the
# chosen step of the chosen commit, so every boundary between the three
# commit steps is hit exactly, not by luck of timing.
CHILD = textwrap.dedent(
    """
    import os, signal, sys
    from searchclip import storage
    from searchclip.indexing import index_paths

    stage, target = sys.argv[1], int(sys.argv[2])
    folder, index_dir, model = sys.argv[3], sys.argv[4], sys.argv[5]
    commits = 0
    original_write = storage.Index._write_vectors
    original_replace = os.replace

    def die(at):
        if at == stage and commits == target:
            os.kill(os.getpid(), signal.SIGKILL)

    def write_vectors(self):
        global commits
        commits += 1
        die("rows-committed")
        original_write(self)
        die("vectors-renamed")

    def replace(source, target_path):
        die("vectors-written")
        original_replace(source, target_path)

    storage.Index._write_vectors = write_vectors
    storage.os.replace = replace
    index_paths([folder], index_dir, model=model, commit_size=int(sys.argv[6]), batch_size=4, workers=2)
    """
)


def assert_consistent(index_dir: Path) -> set[str]:
    """Open the index as a reader, check both stores, and return the ready paths."""
    index = Index.open(index_dir)
    rows = index.db.execute("select id, path from images where state = 'ready'").fetchall()
    stored = set(faiss.vector_to_array(index.vectors.id_map).tolist())
    index.close()
    ids = {row[0] for row in rows}
    paths = [row[1] for row in rows]
    assert ids <= stored
    assert len(paths) == len(set(paths))
    return set(paths)


@pytest.mark.parametrize("stage", ["rows-committed", "vectors-written", "vectors-renamed"])
def test_kill_between_commit_steps(tmp_path, many_photos, tiny_model, stage):
    index_dir = tmp_path / "index"
    child = subprocess.run(
        [sys.executable, "-c", CHILD, stage, "3", str(many_photos), str(index_dir), tiny_model, str(COMMIT_EVERY)],
        capture_output=True, text=True, timeout=300,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr

    kept = assert_consistent(index_dir)
    assert len(kept) >= 2 * COMMIT_EVERY  # the two commits before the crash survive

    rerun = run_searchclip("index", str(many_photos), "--index", str(index_dir))
    assert rerun.returncode == 0, rerun.stderr
    final = assert_consistent(index_dir)
    assert len(final) == PHOTO_COUNT
    index = Index.open(index_dir)
    assert index.vectors.ntotal == PHOTO_COUNT
    index.close()
    # Only the commit in flight was redone.
    redone = int(rerun.stderr.split("indexed ")[1].split(",")[0])
    assert redone <= PHOTO_COUNT - 2 * COMMIT_EVERY


def test_kill_at_random_moments(tmp_path, many_photos, tiny_model):
    index_dir = tmp_path / "index"
    chooser = random.Random(7)
    command = [sys.executable, "-m", "searchclip", "index", str(many_photos), "--index", str(index_dir),
               "--model", tiny_model, "--commit-every", "2", "--batch-size", "2", "--quiet"]
    for attempt in range(3):
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        # Start the clock once the index exists, past the seconds of model loading.
        deadline = time.monotonic() + 120
        while not Index.exists(index_dir) and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(chooser.uniform(0.0, 0.6))
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
        if Index.exists(index_dir):
            assert_consistent(index_dir)

    finish = run_searchclip("index", str(many_photos), "--index", str(index_dir))
    assert finish.returncode == 0, finish.stderr
    assert len(assert_consistent(index_dir)) == PHOTO_COUNT
    again = run_searchclip("index", str(many_photos), "--index", str(index_dir))
    assert f"unchanged {PHOTO_COUNT}" in again.stderr
