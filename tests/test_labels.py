"""Zero-shot classification of one picture, and labels stored in an index."""

from __future__ import annotations

import json

import pytest

from conftest import invoke
from searchclip.errors import UsageError
from searchclip.indexing import index_paths
from searchclip.labels import classify, label_index, parse_labels, read_labels_file
from searchclip.maintenance import describe
from searchclip.model import load_model
from searchclip.search import search


@pytest.fixture
def built(tmp_path, photos, tiny_model):
    index_dir = tmp_path / "index"
    index_paths([photos], index_dir, model=tiny_model)
    return index_dir


def test_classify_probabilities(tiny_model, photos):
    scores = classify(load_model(tiny_model), photos / "red.jpg", ["cat", "dog", "car"])
    assert [s.label for s in scores] != []
    assert sorted(s.label for s in scores) == ["car", "cat", "dog"]
    assert sum(s.probability for s in scores) == pytest.approx(1.0, abs=1e-5)
    assert [s.probability for s in scores] == sorted((s.probability for s in scores), reverse=True)


def test_classify_cli_json(tiny_model, photos):
    result = invoke("classify", str(photos / "red.jpg"), "--labels", "cat, dog,car", "--model", tiny_model, "--json")
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert {row["label"] for row in rows} == {"cat", "dog", "car"}


def test_parse_labels():
    assert parse_labels(" cat, dog ,,cat, red car ") == ["cat", "dog", "red car"]


def test_labels_file(tmp_path):
    path = tmp_path / "labels.txt"
    path.write_text("# animals\ncat\n\ndog\ncat\n", encoding="utf-8")
    assert read_labels_file(path) == ["cat", "dog"]
    with pytest.raises(UsageError, match="cannot read"):
        read_labels_file(tmp_path / "missing.txt")


def test_label_index_stores_best_label(built):
    report = label_index(built, ["cat", "dog"])
    assert report.images == 10
    assert sum(report.counts.values()) == 10
    summary = describe(built)
    assert sum(summary.labels.values()) == 10


def test_label_multi_threshold(built):
    everything = label_index(built, ["cat", "dog", "car"], multi=True, threshold=0.0)
    assert sum(everything.counts.values()) == 30
    nothing = label_index(built, ["cat", "dog", "car"], multi=True, threshold=1.0)
    assert sum(nothing.counts.values()) == 0


def test_relabel_replaces_same_label_set(built):
    label_index(built, ["cat", "dog"])
    label_index(built, ["cat", "dog"])
    assert sum(describe(built).labels.values()) == 10


def test_search_by_stored_label(built):
    report = label_index(built, ["cat", "dog"])
    label = max(report.counts, key=report.counts.get)
    results = search(built, "anything", k=10, label=label)
    assert len(results) == report.counts[label]
    unused = "dog" if label == "cat" else "cat"
    assert len(search(built, "anything", k=10, label=unused)) == report.counts.get(unused, 0)
    with pytest.raises(UsageError, match="not among the stored labels"):
        search(built, "anything", label="no such label")


def test_search_label_without_labels(built):
    with pytest.raises(UsageError, match="no labels yet"):
        search(built, "anything", label="cat")


def test_label_input_errors(built, tmp_path):
    with pytest.raises(UsageError, match="no labels given"):
        label_index(built, [])
    with pytest.raises(UsageError, match="exactly once"):
        label_index(built, ["cat"], templates=["a photo"])
    neither = invoke("label", "--index", str(built))
    assert neither.returncode == 2
    assert "exactly one of --labels and --labels-file" in neither.stderr
    empty = invoke("label", "--labels", " , ", "--index", str(built))
    assert empty.returncode == 2
    assert "no labels given" in empty.stderr


def test_label_cli_with_file_and_template(built, tmp_path):
    path = tmp_path / "labels.txt"
    path.write_text("cat\ndog\n", encoding="utf-8")
    result = invoke("label", "--labels-file", str(path), "--template", "a picture of {}", "--index", str(built))
    assert result.returncode == 0, result.stderr
    assert "labelled 10 images" in result.stderr
    info = invoke("info", "--index", str(built))
    assert "cat" in info.stdout or "dog" in info.stdout
