"""Train the small CLIP model that `--model demo` loads, on generated pictures of shapes.

Rerun with `python -m searchclip.demo.train` from the repository root. It
regenerates its pictures and captions from a fixed seed, learns a BPE
vocabulary from the captions, trains a transformers `CLIPModel` contrastively
and overwrites searchclip/demo/model/. On two CPU cores it takes about seven
minutes; `--output` writes elsewhere. Results are the same from run to run on
one machine; other CPUs or torch versions may differ in the last bits of the
weights.
"""

from __future__ import annotations

import argparse
import logging
import math
import multiprocessing
import os
import time
from pathlib import Path

import numpy as np

from ..model import DEMO_MODEL_DIR
from .dataset import caption_corpus, make_examples, sample_caption
from .shapes import BACKGROUND_LABEL, LABELS, draw_object_picture, split_label
from .tokenizer import build_tokenizer, save_tokenizer

log = logging.getLogger(__name__)

# Seeds every random choice of a run. The training pictures are drawn from
# SEED + 100 onwards, so tests draw theirs from other seeds.
SEED = 20240611

# Architecture. Input of 64 px in patches of 16 gives 16 patch tokens: 4
# times cheaper than patches of 8, and in our runs about as accurate after
# the same number of pictures. The widths are as small as still learn the
# task in minutes, and keep the float32 weights near 4 MB.
IMAGE_SIZE = 64
PATCH_SIZE = 16
VISION_WIDTH = 128
VISION_LAYERS = 4
TEXT_WIDTH = 128
TEXT_LAYERS = 2
HEADS = 4
MLP_WIDTH = 256
PROJECTION_DIM = 64
# Maximum text length in tokens, start and end tokens included. Captions
# need about 15, and the tokenizer truncates longer queries.
CONTEXT_LENGTH = 32

# CLIP's pixel statistics (the values of openai/clip-vit-base-patch32), kept
# so the preprocessing config has the same form as any CLIP checkpoint.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# Optimisation. A small vision transformer learns shapes slowly from
# scratch. In our runs, many small steps over a few passes of the pictures
# did better than fewer large ones at the same cost.
EXAMPLES = 30_000
STEPS = 3600
BATCH_SIZE = 64
LEARNING_RATE = 1e-3
WARMUP_STEPS = 30
WEIGHT_DECAY = 0.05
# Weight of the auxiliary loss that classifies every patch token (see _fit).
PATCH_LOSS_WEIGHT = 1.0
# The example pictures are drawn in this many chunks, each from its own
# seed, so the result does not depend on how many processes draw them.
CHUNKS = 8


def main(argv: list[str] | None = None) -> None:
    # OpenMP threads spin while idle by default. When other processes shared
    # the two cores, that made training steps 7 times slower in our runs, so
    # idle threads sleep instead. This must be set before torch is imported.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    parser = argparse.ArgumentParser(prog="python -m searchclip.demo.train", description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=DEMO_MODEL_DIR, help="folder to write the model to (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=STEPS, help="optimiser steps (default: %(default)s)")
    parser.add_argument("--examples", type=int, default=EXAMPLES, help="training pictures drawn (default: %(default)s)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    train(args.output, steps=args.steps, examples=args.examples)


def train(output: Path, steps: int = STEPS, examples: int = EXAMPLES) -> None:
    """Draw the training pictures, train the model and save it with its tokenizer and preprocessing."""
    import torch

    torch.set_num_threads(2)
    torch.manual_seed(SEED)
    started = time.monotonic()

    output.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(output, caption_corpus(), CONTEXT_LENGTH)
    model = build_model(len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id)
    _init_attention(model.vision_model, torch.Generator().manual_seed(SEED))
    log.info("model has %.2f M parameters", sum(p.numel() for p in model.parameters()) / 1e6)

    pixels, patch_classes, facts = _draw_examples(examples)
    log.info("drew %d pictures in %.0f s", len(facts), time.monotonic() - started)

    _fit(model, tokenizer, pixels, patch_classes, facts, steps)
    log.info("trained in %.0f s", time.monotonic() - started)

    model.save_pretrained(output, safe_serialization=True)
    _save_preprocessor(output)
    save_tokenizer(tokenizer, output)
    log.info("saved to %s in %.0f s", output, time.monotonic() - started)
    _report(output)


def build_model(vocab_size: int, bos_token_id: int, eos_token_id: int):
    """Return a freshly initialised `CLIPModel` of the demo architecture."""
    from transformers import CLIPConfig, CLIPModel

    config = CLIPConfig(
        text_config={
            "vocab_size": vocab_size,
            "hidden_size": TEXT_WIDTH,
            "intermediate_size": MLP_WIDTH,
            "num_hidden_layers": TEXT_LAYERS,
            "num_attention_heads": HEADS,
            "max_position_embeddings": CONTEXT_LENGTH,
            "bos_token_id": bos_token_id,
            # The text tower pools at the first end token; padding uses the
            # same token, as in OpenAI's CLIP checkpoints.
            "eos_token_id": eos_token_id,
            "pad_token_id": eos_token_id,
        },
        vision_config={
            "image_size": IMAGE_SIZE,
            "patch_size": PATCH_SIZE,
            "hidden_size": VISION_WIDTH,
            "intermediate_size": MLP_WIDTH,
            "num_hidden_layers": VISION_LAYERS,
            "num_attention_heads": HEADS,
        },
        projection_dim=PROJECTION_DIM,
    )
    return CLIPModel(config)


# -- training ----------------------------------------------------------------------


def _fit(model, tokenizer, pixels: np.ndarray, patch_classes: np.ndarray, facts: list, steps: int) -> None:
    """Train with a symmetric InfoNCE loss whose targets are every pair showing the same class.

    A batch often contains several pictures of one class. Plain InfoNCE would
    push their captions apart as if they were wrong answers, so the target of
    each picture is spread evenly over all captions of its class.

    An auxiliary linear head, dropped after training, classifies every patch
    token of the vision tower's last layer by the object covering it. It
    gives a learning signal per patch rather than per picture; in our runs
    it raised shape accuracy after a fixed number of steps.
    """
    import torch

    generator = torch.Generator().manual_seed(SEED)
    caption_rng = np.random.default_rng(SEED + 1)
    images = torch.from_numpy(pixels)
    patches = torch.from_numpy(patch_classes)
    classes = torch.tensor([fact.class_index for fact in facts])
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    patch_head = torch.nn.Linear(VISION_WIDTH, len(LABELS) + 1)

    parameters = list(model.named_parameters()) + [("patch_head." + n, p) for n, p in patch_head.named_parameters()]
    decay = [p for name, p in parameters if p.ndim >= 2 and "embedding" not in name]
    no_decay = [p for name, p in parameters if not (p.ndim >= 2 and "embedding" not in name)]
    optimiser = torch.optim.AdamW(
        [{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": no_decay, "weight_decay": 0.0}],
        lr=LEARNING_RATE,
        betas=(0.9, 0.98),
        foreach=True,
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda step: _learning_rate_factor(step, steps))

    model.train()
    order = torch.randperm(len(facts), generator=generator)
    cursor = 0
    started = time.monotonic()
    for step in range(steps):
        if cursor + BATCH_SIZE > len(order):
            order, cursor = torch.randperm(len(facts), generator=generator), 0
        index = order[cursor : cursor + BATCH_SIZE]
        cursor += BATCH_SIZE

        batch, batch_patches = _augment(images[index], patches[index], generator)
        batch = (batch.permute(0, 3, 1, 2).float() / 255.0 - mean) / std
        captions = [sample_caption(caption_rng, facts[i]) for i in index.tolist()]
        tokens = tokenizer(captions, padding=True, truncation=True, return_tensors="pt")

        vision = model.vision_model(pixel_values=batch)
        image_features = _normalise(model.visual_projection(vision.pooler_output))
        text_features = _normalise(model.get_text_features(**tokens))
        logits = model.logit_scale.exp() * image_features @ text_features.T
        same = (classes[index][:, None] == classes[index][None, :]).float()
        # `same` is symmetric and every row and column of `targets` sums to 1.
        targets = same / same.sum(dim=1, keepdim=True)
        contrastive = -0.5 * (
            (targets * logits.log_softmax(dim=1)).sum(dim=1).mean() + (targets * logits.log_softmax(dim=0)).sum(dim=0).mean()
        )
        patch_logits = patch_head(model.vision_model.post_layernorm(vision.last_hidden_state[:, 1:]))
        patch_loss = torch.nn.functional.cross_entropy(patch_logits.reshape(-1, patch_logits.shape[-1]), batch_patches.reshape(-1))
        loss = contrastive + PATCH_LOSS_WEIGHT * patch_loss

        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimiser.step()
        schedule.step()
        with torch.no_grad():
            # CLIP's cap on the temperature: logits at most 100 times the cosine.
            model.logit_scale.clamp_(0, math.log(100))

        if step % 200 == 0 or step == steps - 1:
            log.info(
                "step %d/%d contrastive loss %.3f patch loss %.3f scale %.1f (%.0f s)",
                step, steps, contrastive.item(), patch_loss.item(), model.logit_scale.exp().item(), time.monotonic() - started,
            )
    model.eval()


def _init_attention(vision_model, generator) -> None:
    """Start every attention layer with query-key products near the identity and value-output near minus it.

    Tokens then attend mostly to similar tokens, and so to their neighbours
    through the position embeddings, much as a convolution would. In our runs
    a vision transformer started this way learnt shapes faster than one with
    random attention weights. Each product is alpha * Z + beta * I, with Z
    Gaussian of variance 1 / width.
    """
    import torch

    width = vision_model.config.hidden_size
    for layer in vision_model.encoder.layers:
        attention = layer.self_attn
        for first, second, alpha, beta in ((attention.q_proj, attention.k_proj, 0.7, 0.7), (attention.v_proj, attention.out_proj, 0.4, -0.4)):
            noise = torch.randn(width, width, generator=generator) / math.sqrt(width)
            left, singular, right = torch.linalg.svd(alpha * noise + beta * torch.eye(width))
            root = singular.sqrt()
            # With the product U S V^T and nn.Linear computing x @ W.T, queries
            # times keys are x U S V^T x^T when Wq = (U S^1/2)^T and Wk = (V S^1/2)^T,
            # and the output projection of the values is x U S V^T when
            # Wv = (U S^1/2)^T and Wo = V S^1/2.
            with torch.no_grad():
                first.weight.copy_((left * root).T)
                if first is attention.q_proj:
                    second.weight.copy_((right.T * root).T)
                else:
                    second.weight.copy_(right.T * root)


def _augment(images, patch_classes, generator):
    """Rotate by multiples of 90 degrees and mirror at random; no label depends on orientation.

    Patch classes, (n, grid, grid), turn and mirror with their pictures, (n, height, width, 3).
    """
    import torch

    turns = torch.randint(0, 4, (len(images),), generator=generator)
    mirrored = torch.rand(len(images), generator=generator) < 0.5
    images, patch_classes = images.clone(), patch_classes.clone()
    for k in range(1, 4):
        chosen = turns == k
        images[chosen] = torch.rot90(images[chosen], k, dims=(1, 2))
        patch_classes[chosen] = torch.rot90(patch_classes[chosen], k, dims=(1, 2))
    images[mirrored] = images[mirrored].flip(2)
    patch_classes[mirrored] = patch_classes[mirrored].flip(2)
    return images, patch_classes


def _learning_rate_factor(step: int, steps: int) -> float:
    """Linear warm-up, then cosine decay to zero."""
    if step < WARMUP_STEPS:
        return (step + 1) / WARMUP_STEPS
    progress = (step - WARMUP_STEPS) / max(1, steps - WARMUP_STEPS)
    return 0.5 * (1 + math.cos(math.pi * progress))


def _normalise(features):
    # transformers 5 returns a model output from get_text_features; 4.x a tensor.
    if not hasattr(features, "norm"):
        features = features.pooler_output
    return features / features.norm(dim=-1, keepdim=True)


def _draw_examples(count: int) -> tuple[np.ndarray, np.ndarray, list]:
    sizes = [count // CHUNKS + (1 if i < count % CHUNKS else 0) for i in range(CHUNKS)]
    jobs = [(SEED + 100 + i, size, IMAGE_SIZE, PATCH_SIZE) for i, size in enumerate(sizes)]
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        parts = pool.starmap(make_examples, jobs)
    pixels = np.concatenate([part[0] for part in parts])
    patch_classes = np.concatenate([part[1] for part in parts])
    facts = [fact for part in parts for fact in part[2]]
    return pixels, patch_classes, facts


def _report(folder: Path, count: int = 256) -> None:
    """Log zero-shot accuracy on fresh pictures, drawn as in training and with held-out variations."""
    from ..model import DEFAULT_TEMPLATES, ClipModel

    model = ClipModel("demo", str(folder), "cpu", local_only=True)
    label_features = model.embed_labels([*LABELS, BACKGROUND_LABEL], DEFAULT_TEMPLATES)
    for held_out in (False, True):
        rng = np.random.default_rng(SEED + 7)  # a seed that drawing the training pictures does not use
        truth = [i % len(LABELS) for i in range(count)]
        pictures = [draw_object_picture(rng, *split_label(LABELS[i]), size=96, held_out=held_out).image for i in truth]
        predicted = (model.embed_images(pictures) @ label_features.T).argmax(axis=1)
        accuracy = float(np.mean(predicted == np.asarray(truth)))
        log.info("zero-shot accuracy on %s pictures: %.1f %%", "held-out" if held_out else "training-like", 100 * accuracy)


def _save_preprocessor(folder: Path) -> None:
    from transformers import CLIPImageProcessor

    processor = CLIPImageProcessor(
        do_resize=True,
        size={"shortest_edge": IMAGE_SIZE},
        resample=3,  # PIL.Image.Resampling.BICUBIC, as in OpenAI's CLIP
        do_center_crop=True,
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=list(CLIP_MEAN),
        image_std=list(CLIP_STD),
        do_convert_rgb=True,
    )
    processor.save_pretrained(folder)


if __name__ == "__main__":
    main()
