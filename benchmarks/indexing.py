"""Measure indexing throughput and search latency on generated photos.

Usage:
    python benchmarks/indexing.py [--photos 120] [--size 2400x1600] [--model demo|vit-b32-random|PATH]

Prints one line per setting: images per second while indexing from scratch
(median of --repeats runs), and the median latency of text searches. The
model `vit-b32-random` is a randomly initialised CLIP with the layer sizes of
openai/clip-vit-base-patch32 (224 px input, about 150 M parameters) and a
byte-level tokenizer, built locally, so inference costs what the default model
costs without a download.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=120, help="number of JPEG photos to generate")
    parser.add_argument("--size", default="2400x1600", help="photo size in pixels, WIDTHxHEIGHT")
    parser.add_argument("--model", default="demo", help="demo, vit-b32-random, or a CLIP folder")
    parser.add_argument("--repeats", type=int, default=3, help="indexing runs per setting; the median is printed")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))

    from searchclip.indexing import index_paths
    from searchclip.search import Searcher, Term

    work = Path(tempfile.mkdtemp(prefix="searchclip-bench-"))
    try:
        model = build_vit_b32_random(work / "model") if args.model == "vit-b32-random" else args.model
        photos = generate_photos(work / "photos", args.photos, (width, height))
        print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
        print(f"photos: {args.photos} JPEG files of {width}x{height}; model: {args.model}")

        from searchclip.model import load_model

        load_model(model)  # loaded once and cached, so runs time indexing alone
        cpus = os.cpu_count() or 1
        for workers in sorted({1, cpus}):
            rates = []
            for repeat in range(args.repeats):
                index_dir = work / f"index-{workers}-{repeat}"
                started = time.perf_counter()
                report = index_paths([photos], index_dir, model=model, workers=workers)
                rates.append(report.indexed / (time.perf_counter() - started))
            print(f"indexing, {workers} decode thread(s): {statistics.median(rates):.1f} images/s (median of {args.repeats})")

        searcher = Searcher(work / f"index-{cpus}-0")
        queries = [f"a photo of {word}" for word in ("a red circle", "a beach", "a dog", "a city at night", "a blue star")]
        latencies = []
        for _ in range(10):
            for query in queries:
                started = time.perf_counter()
                searcher.search([Term(query)], k=10)
                latencies.append((time.perf_counter() - started) * 1000)
        searcher.close()
        print(f"text search over {args.photos} images: median {statistics.median(latencies):.1f} ms per query ({len(latencies)} queries)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def generate_photos(folder: Path, count: int, size: tuple[int, int]) -> Path:
    """Write `count` distinct JPEG photos with gradients, noise and shapes."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    width, height = size
    gradient = np.linspace(0, 255, width, dtype=np.float32)[None, :, None] * np.ones((height, 1, 3), np.float32)
    for i in range(count):
        noise = rng.normal(0, 20, (height // 8, width // 8, 3)).astype(np.float32)
        noise = np.asarray(Image.fromarray(np.clip(noise + 128, 0, 255).astype(np.uint8)).resize(size), np.float32) - 128
        pixels = np.clip(gradient * rng.uniform(0.3, 1.0, 3) + noise, 0, 255).astype(np.uint8)
        image = Image.fromarray(pixels)
        draw = ImageDraw.Draw(image)
        for _ in range(5):
            x, y = int(rng.integers(0, width - 200)), int(rng.integers(0, height - 200))
            draw.ellipse((x, y, x + int(rng.integers(50, 400)), y + int(rng.integers(50, 400))), fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
        image.save(folder / f"photo_{i:04d}.jpg", quality=90)
    return folder


def build_vit_b32_random(folder: Path) -> str:
    """Save a random CLIP with ViT-B/32 sizes and a byte-level tokenizer into `folder`."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from tiny_model import write_byte_tokenizer

    vocab = write_byte_tokenizer(folder)
    torch.manual_seed(0)
    end = vocab["<|endoftext|>"]
    config = CLIPConfig(
        text_config={"vocab_size": len(vocab), "eos_token_id": end, "pad_token_id": end, "bos_token_id": vocab["<|startoftext|>"]},
        vision_config={"patch_size": 32},
    )
    CLIPModel(config).save_pretrained(folder)
    CLIPImageProcessorPil(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}).save_pretrained(folder)
    return str(folder)


if __name__ == "__main__":
    sys.exit(main())
