"""Searching by text, image and weighted mixes; filters and output formats."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import invoke, make_photo
from searchclip.errors import InvalidIndexError, UsageError
from searchclip.indexing import index_paths
from searchclip.model import load_model
from searchclip.search import Searcher, Term, parse_weighted, query_vector, search


@pytest.fixture
def built(tmp_path, photos, tiny_model):
    index_dir = tmp_path / "index"
    index_paths([photos], index_dir, model=tiny_model)
    return index_dir


def test_text_search_ranks_by_score(built):
    results = search(built, "a red square", k=4)
    assert len(results) == 4
    scores = [r.score for r in results]
    assert scores == sorted(scores, reverse=True)


def test_image_search_finds_the_same_photo(built, photos):
    results = search(built, images=[photos / "blue.png"], k=3)
    assert results[0].path == str(photos / "blue.png")
    assert results[0].score == pytest.approx(1.0, abs=1e-4)


def test_query_image_need_not_be_indexed(built, tmp_path):
    outside = make_photo(tmp_path / "outside.webp", "yellow", size=(70, 50), format="WEBP")
    assert len(search(built, images=[outside], k=2)) == 2


def test_weighted_mix_and_negatives(tiny_model, photos):
    model = load_model(tiny_model)
    terms = [Term("dog", 2.0), Term(str(photos / "red.jpg"), 0.5, is_image=True)]
    negatives = [Term("beach", 1.0)]
    got = query_vector(model, terms, negatives)
    text = model.embed_texts(["dog", "beach"])
    image = model.embed_images([__import__("PIL.Image").Image.open(photos / "red.jpg").convert("RGB")])[0]
    expected = 2.0 * text[0] + 0.5 * image - text[1]
    np.testing.assert_allclose(got, expected / np.linalg.norm(expected), atol=1e-5)


def test_parse_weighted():
    assert parse_weighted("2:a red car") == Term("a red car", 2.0)
    assert parse_weighted("0.5: beach") == Term("beach", 0.5)
    assert parse_weighted("a red car") == Term("a red car", 1.0)
    assert parse_weighted("12:") == Term("12:", 1.0)


def test_under_filter(built, photos):
    results = search(built, "red", k=10, under=photos / "sub")
    assert {r.path for r in results} == {str(photos / "sub" / "deep red.jpg"), str(photos / "sub" / "deep blue.png")}


def test_min_score_filter(built):
    everything = search(built, "red", k=10)
    cut = everything[3].score
    filtered = search(built, "red", k=10, min_score=cut)
    assert all(r.score >= cut for r in filtered)
    assert len(filtered) < len(everything) or everything[-1].score >= cut


def test_k_limits_results(built):
    assert len(search(built, "red", k=1)) == 1
    with pytest.raises(UsageError, match="-k 0"):
        search(built, "red", k=0)


def test_empty_index_message(tmp_path, tiny_model):
    (tmp_path / "nothing").mkdir()
    index_paths([tmp_path / "nothing"], tmp_path / "index", model=tiny_model)
    with pytest.raises(InvalidIndexError, match="is empty"):
        search(tmp_path / "index", "red")
    result = invoke("search", "red", "--index", str(tmp_path / "index"))
    assert result.returncode == 1
    assert "is empty" in result.stderr
    assert "Traceback" not in result.stderr


def test_empty_query_message(built):
    for args in (["search"], ["search", ""], ["search", "  "]):
        result = invoke(*args, "--index", str(built))
        assert result.returncode == 2, args
        assert "empty query" in result.stderr
        assert "Traceback" not in result.stderr


def test_missing_query_image_message(built, tmp_path):
    result = invoke("search", "--image", str(tmp_path / "gone.jpg"), "--index", str(built))
    assert result.returncode == 1
    assert "gone.jpg: file not found" in result.stderr
    assert "Traceback" not in result.stderr


def test_output_formats(built, photos):
    table = invoke("search", "red", "-k", "3", "--index", str(built))
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["score", "path"]
    assert len(lines) == 4

    paths = invoke("search", "red", "-k", "3", "--paths", "--index", str(built))
    assert len(paths.stdout.splitlines()) == 3
    assert all(line.startswith(str(photos)) for line in paths.stdout.splitlines())

    lines = invoke("search", "red", "-k", "3", "--json", "--index", str(built)).stdout.splitlines()
    records = [json.loads(line) for line in lines]
    assert len(records) == 3
    assert {"path", "score"} <= set(records[0])

    both = invoke("search", "red", "--json", "--paths", "--index", str(built))
    assert both.returncode == 2
    assert "--json cannot be combined with --paths" in both.stderr


def test_null_output_keeps_newline_names(tmp_path, tiny_model):
    folder = tmp_path / "photos"
    odd = make_photo(folder / "two\nlines.png", "red")
    make_photo(folder / "plain.png", "blue")
    index_dir = tmp_path / "index"
    index_paths([folder], index_dir, model=tiny_model)

    result = invoke("search", "red", "-k", "5", "--null", "--index", str(index_dir))
    assert result.returncode == 0, result.stderr
    assert result.stdout.endswith("\0")
    printed = result.stdout[:-1].split("\0")
    assert sorted(printed) == sorted([str(odd), str(folder / "plain.png")])


def test_combined_query_cli(built, photos):
    result = invoke(
        "search", "--text", "2:red", "--image", str(photos / "green.jpg"), "--not", "blue", "--json", "--index", str(built)
    )
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 10


def test_searcher_answers_many_queries(built):
    searcher = Searcher(built)
    first = searcher.search([Term("red")], k=2)
    second = searcher.search([Term("green")], k=2)
    searcher.close()
    assert len(first) == len(second) == 2
