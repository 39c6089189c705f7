"""Loading a CLIP model and turning pictures and texts into embeddings.

Any Hugging Face CLIP checkpoint works: a hub id, a folder written by
`save_pretrained`, or `demo` for the small model bundled with searchclip.
Every embedding is an L2-normalised float32 row, so inner product is cosine.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import socket
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from .errors import ModelError

log = logging.getLogger(__name__)

DEFAULT_MODEL = "openai/clip-vit-base-patch32"
DEMO_MODEL = "demo"
DEMO_MODEL_DIR = Path(__file__).parent / "demo" / "model"

# Averaged into one text embedding per label; see `ClipModel.embed_labels`.
DEFAULT_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a picture of a {}.",
    "an image of a {}.",
    "a photo of the {}.",
)

# Seconds to wait for the model hub before saying it cannot be reached.
HUB_CONNECT_TIMEOUT = 3.0


@dataclass(frozen=True)
class Preprocessing:
    """Resize, crop and normalisation settings of the vision tower's input."""

    shortest_edge: int
    crop_height: int
    crop_width: int
    mean: np.ndarray  # per channel, on pixel values scaled to [0, 1]
    std: np.ndarray
    resample: int  # a PIL.Image.Resampling value


class ClipModel:
    """A loaded CLIP model with its tokenizer and preprocessing.

    Build one with `load_model`. Methods run under `torch.inference_mode()`
    and return L2-normalised float32 arrays of shape (n, dimension).
    """

    def __init__(self, model_id: str, folder_or_id: str, device: str, local_only: bool):
        import torch
        from transformers import CLIPModel, CLIPTokenizerFast

        try:
            # transformers 5 names the Pillow-based processor explicitly; its
            # plain name warns that torchvision is missing and falls back to it.
            from transformers import CLIPImageProcessorPil as CLIPImageProcessor
        except ImportError:
            from transformers import CLIPImageProcessor

        self.model_id = model_id
        self.device = device
        self._torch = torch
        kwargs = {"local_files_only": local_only}
        self.model = CLIPModel.from_pretrained(folder_or_id, **kwargs).to(device).eval()
        self.tokenizer = CLIPTokenizerFast.from_pretrained(folder_or_id, **kwargs)
        processor = CLIPImageProcessor.from_pretrained(folder_or_id, **kwargs)
        self.processor = processor
        self.preprocessing = _preprocessing_of(processor)
        self.dimension = int(self.model.config.projection_dim)
        self.logit_scale = float(self.model.logit_scale.exp().item())
        self.max_text_tokens = int(self.model.config.text_config.max_position_embeddings)
        self.fingerprint = _fingerprint(self.model)

    # -- pictures -------------------------------------------------------------

    @property
    def draft_size(self) -> int:
        """Shorter side, in pixels, down to which JPEG decoding may reduce a photo.

        Twice the model's input keeps the later bicubic resize close to the
        full-resolution result; the parity test measures how close.
        """
        return 2 * self.preprocessing.shortest_edge

    def preprocess(self, image: Image.Image) -> np.ndarray:
        """Resize, centre-crop and normalise an RGB picture into a (3, H, W) float32 array.

        Matches `CLIPImageProcessor`: shorter side to `shortest_edge` with the
        processor's resampling filter, centre crop, scale to [0, 1], normalise.
        """
        p = self.preprocessing
        image = _trim_extreme_aspect(image, p)
        width, height = image.size
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = p.shortest_edge, int(p.shortest_edge * long / short)
        size = (new_short, new_long) if width <= height else (new_long, new_short)
        if size != image.size:
            image = image.resize(size, resample=p.resample)

        pixels = np.asarray(image, dtype=np.float32)
        top = max((pixels.shape[0] - p.crop_height) // 2, 0)
        left = max((pixels.shape[1] - p.crop_width) // 2, 0)
        pixels = pixels[top : top + p.crop_height, left : left + p.crop_width]
        pixels = (pixels / 255.0 - p.mean) / p.std
        return np.ascontiguousarray(pixels.transpose(2, 0, 1), dtype=np.float32)

    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """Embed a batch of preprocessed pictures of shape (n, 3, H, W)."""
        torch = self._torch
        with torch.inference_mode():
            tensor = torch.from_numpy(np.ascontiguousarray(pixels)).to(self.device)
            features = _features(self.model.get_image_features(pixel_values=tensor))
        return _normalise(features.float().cpu().numpy())

    def embed_images(self, images: Sequence[Image.Image], batch_size: int = 32) -> np.ndarray:
        """Embed RGB pictures, `batch_size` at a time."""
        rows = [
            self.embed_pixels(np.stack([self.preprocess(image) for image in images[start : start + batch_size]]))
            for start in range(0, len(images), batch_size)
        ]
        return np.concatenate(rows) if rows else np.zeros((0, self.dimension), np.float32)

    # -- texts ----------------------------------------------------------------

    def embed_texts(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        """Embed texts; longer ones are cut at the model's context length."""
        torch = self._torch
        rows = []
        for start in range(0, len(texts), batch_size):
            tokens = self.tokenizer(
                list(texts[start : start + batch_size]),
                padding=True,
                truncation=True,
                max_length=self.max_text_tokens,
                return_tensors="pt",
            ).to(self.device)
            with torch.inference_mode():
                features = _features(self.model.get_text_features(**tokens))
            rows.append(_normalise(features.float().cpu().numpy()))
        return np.concatenate(rows) if rows else np.zeros((0, self.dimension), np.float32)

    def embed_labels(self, labels: Sequence[str], templates: Sequence[str] = DEFAULT_TEMPLATES) -> np.ndarray:
        """Embed each label as the re-normalised mean of its prompts, one per template.

        A template is a string with one `{}` where the label goes.
        """
        # str.replace, not str.format: other braces in a template stay literal.
        prompts = [template.replace("{}", label, 1) for label in labels for template in templates]
        per_prompt = self.embed_texts(prompts).reshape(len(labels), len(templates), self.dimension)
        return _normalise(per_prompt.mean(axis=1))


# Pictures longer than this many times their width (or the reverse) are cut
# to their centre before resizing; see `_trim_extreme_aspect`.
MAX_ASPECT_RATIO = 4.0


def _trim_extreme_aspect(image: Image.Image, p: Preprocessing) -> Image.Image:
    # Resizing the shorter side of a 1x100000 strip to 224 px would make the
    # long side 22 million pixels. Only the centre survives the crop anyway,
    # so keep the centre plus a margin for the resampling filter; ordinary
    # aspect ratios are left alone and match CLIPImageProcessor exactly.
    width, height = image.size
    short, long = min(width, height), max(width, height)
    if long <= MAX_ASPECT_RATIO * short:
        return image
    keep = min(long, int(short * MAX_ASPECT_RATIO))
    start = (long - keep) // 2
    box = (start, 0, start + keep, height) if width > height else (0, start, width, start + keep)
    return image.crop(box)


def load_model(name: str = DEFAULT_MODEL, device: str | None = None) -> ClipModel:
    """Load a CLIP model by hub id, local folder or `demo`, once per process.

    Raises:
        ModelError: the model is not cached and cannot be downloaded, or the
            folder is not a CLIP checkpoint.
    """
    return _load_cached(name, _resolve_device(device))


def resolve_model_id(name: str) -> str:
    """Return the id an index records for a model name: `demo`, an absolute folder or a hub id.

    Raises:
        ModelError: the name is empty, or looks like a path to a missing folder.
    """
    if not name or not name.strip():
        raise ModelError(f"--model is empty; give a Hugging Face CLIP id, a model folder, or {DEMO_MODEL}")
    if name == DEMO_MODEL:
        return DEMO_MODEL
    folder = Path(name).expanduser()
    if folder.is_dir():
        return str(folder.resolve())
    # Hub ids look like `owner/name`; anything else with a path shape is a folder.
    if name.startswith(("/", "./", "../", "~")) or name.count("/") > 1 or folder.exists():
        raise ModelError(f"model folder {name} not found; give a folder written by save_pretrained, or --model {DEMO_MODEL}")
    return name


@functools.lru_cache(maxsize=4)
def _load_cached(name: str, device: str) -> ClipModel:
    model_id = resolve_model_id(name)
    if model_id == DEMO_MODEL:
        if not (DEMO_MODEL_DIR / "config.json").is_file():
            raise ModelError(
                f"the bundled demo model is missing from {DEMO_MODEL_DIR}; reinstall searchclip, "
                "or write it again with: python -m searchclip.demo.train"
            )
        source, local_only = str(DEMO_MODEL_DIR), True
    elif Path(model_id).is_dir():
        source, local_only = model_id, True
    else:
        source, local_only = model_id, not _is_cached(model_id)
        if local_only:
            _check_hub_reachable(model_id)
            local_only = False

    log.info("loading model %s on %s", model_id, device)
    _quiet_transformers()
    try:
        return ClipModel(model_id, source, device, local_only=local_only)
    except (OSError, ValueError, KeyError) as error:
        if Path(source).is_dir():
            raise ModelError(
                f"{source} is not a CLIP model folder ({_first_line(error)}); "
                "point --model at a folder written by CLIPModel.save_pretrained"
            ) from None
        raise ModelError(f"model {model_id!r} could not be loaded: {_first_line(error)}") from None


def _quiet_transformers() -> None:
    # Weight-loading progress bars and advice about optional packages would
    # mix into searchclip's own output; real failures still raise.
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()


def _is_cached(model_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    try:
        found = try_to_load_from_cache(model_id, "config.json")
    except ValueError:  # not a valid hub id, so it cannot be cached either
        return False
    return isinstance(found, str)


def _check_hub_reachable(model_id: str) -> None:
    """Fail fast when the hub is out of reach, instead of transformers' minute of retries."""
    hint = f"use a local folder saved with save_pretrained, or --model {DEMO_MODEL} for the bundled demo model"
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise ModelError(f"model {model_id!r} is not cached and HF_HUB_OFFLINE is set, so it could not be downloaded; {hint}")

    endpoint = urllib.parse.urlsplit(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host = endpoint.hostname or "huggingface.co"
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=HUB_CONNECT_TIMEOUT):
            pass
    except OSError:
        raise ModelError(
            f"model {model_id!r} is not cached and could not be downloaded ({host} is unreachable); {hint}"
        ) from None


def _resolve_device(device: str | None) -> str:
    import torch

    from .errors import UsageError

    if device in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        kind = torch.device(device).type
    except (RuntimeError, ValueError):
        raise UsageError(f"--device {device}: not a torch device; use cpu, cuda or cuda:N") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {device}: CUDA is not available on this machine; use --device cpu")
    return device


def _preprocessing_of(processor) -> Preprocessing:
    size = processor.size
    shortest = size.get("shortest_edge") if hasattr(size, "get") else getattr(size, "shortest_edge", None)
    if shortest is None:
        shortest = min(size["height"], size["width"])
    crop = processor.crop_size
    return Preprocessing(
        shortest_edge=int(shortest),
        crop_height=int(crop["height"]),
        crop_width=int(crop["width"]),
        mean=np.asarray(processor.image_mean, dtype=np.float32),
        std=np.asarray(processor.image_std, dtype=np.float32),
        resample=int(processor.resample),
    )


def _fingerprint(model) -> str:
    """Hash parameter names, shapes and a strided sample of values.

    Sampling keeps this under a few milliseconds for large models while any
    retrained or different checkpoint still changes the hash.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        flat = tensor.detach().reshape(-1)
        step = max(1, flat.numel() // 1024)
        sample = flat[::step].float().cpu().numpy().astype(np.float32)
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(sample.tobytes())
    return digest.hexdigest()[:16]


def _features(output):
    # transformers 5 returns a model output whose pooler_output holds the
    # projected features; earlier releases return the tensor itself.
    return output if hasattr(output, "float") else output.pooler_output


def _normalise(rows: np.ndarray) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.float32)
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return rows / np.maximum(norms, 1e-12)


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def load_model_for_index(index_model_id: str, index_fingerprint: str, requested: str | None, device: str | None) -> ClipModel:
    """Load the model an index was built with, checking any `--model` the user gave.

    Raises:
        ModelError: the requested model, or the weights found under the
            index's model id, differ from those the index was built with.
    """
    if requested is not None and resolve_model_id(requested) != index_model_id:
        raise ModelError(
            f"this index was built with model {index_model_id!r}, not {requested!r}; "
            f"drop --model or pass --model {index_model_id}, or use another --index"
        )
    model = load_model(index_model_id, device)
    if model.fingerprint != index_fingerprint:
        raise ModelError(
            f"the weights of model {index_model_id!r} changed since this index was built "
            f"(fingerprint {model.fingerprint}, index has {index_fingerprint}); "
            "re-index into a new --index folder"
        )
    return model
