"""searchclip: local image search with CLIP.

The Python API mirrors the command line:

    from searchclip import index_paths, search
    index_paths(["~/Pictures"], "indexes/default", model="demo")
    for result in search("indexes/default", "a red circle", k=5):
        print(result.score, result.path)
"""

from .errors import SearchclipError
from .indexing import IndexReport, index_paths
from .labels import LabelScore, classify, label_index
from .localisation import Detection, Localisation, WindowSettings, detect, locate, locate_embedding
from .maintenance import describe, repair
from .model import ClipModel, load_model
from .search import Searcher, SearchResult, Term, search

__version__ = "0.1.0"

__all__ = [
    "ClipModel",
    "Detection",
    "IndexReport",
    "LabelScore",
    "Localisation",
    "SearchResult",
    "Searcher",
    "SearchclipError",
    "Term",
    "WindowSettings",
    "classify",
    "describe",
    "detect",
    "index_paths",
    "label_index",
    "load_model",
    "locate",
    "locate_embedding",
    "repair",
    "search",
]
