"""A CLIP tokenizer for the demo model, with merges learnt from its captions.

The files are in the format of OpenAI's CLIP checkpoints (vocab.json and
merges.txt with `</w>` end-of-word markers over a byte-level alphabet), so
`CLIPTokenizer` and `CLIPTokenizerFast` both load them.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Iterable

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
END_OF_WORD = "</w>"

# The pre-tokenizer pattern of CLIPTokenizer in transformers 5: special tokens,
# English contractions, runs of letters, single digits and runs of other symbols.
CLIP_PATTERN = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""

def build_tokenizer(folder: Path, corpus: Iterable[str], context_length: int):
    """Learn BPE merges from `corpus`, write vocab.json and merges.txt to `folder` and load them.

    The vocabulary contains every byte alone and with the end-of-word marker,
    so any text, non-ASCII included, tokenizes without unknown tokens.
    Words of the corpus become one token each.

    Returns:
        A `CLIPTokenizerFast` whose `model_max_length` is `context_length`.
    """
    from transformers import CLIPTokenizerFast

    merges = learn_merges(corpus)
    # CLIP's order: bytes, bytes ending a word, merges in order, special tokens.
    alphabet = byte_alphabet()
    tokens = alphabet + [char + END_OF_WORD for char in alphabet]
    known = set(tokens)
    for first, second in merges:
        merged = first + second
        if merged not in known:
            tokens.append(merged)
            known.add(merged)
    tokens += [BOS_TOKEN, EOS_TOKEN]
    vocab = {token: index for index, token in enumerate(tokens)}

    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    lines = ["#version: 0.2"] + [f"{first} {second}" for first, second in merges]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return CLIPTokenizerFast.from_pretrained(folder, model_max_length=context_length)


def learn_merges(corpus: Iterable[str]) -> list[tuple[str, str]]:
    """Learn BPE merges until every word of `corpus` is one symbol.

    Each step merges the most frequent adjacent pair, the lexicographically
    smallest among equally frequent ones. The BPE trainer of the tokenizers
    library (0.23) breaks such ties differently from run to run, which
    would change token ids, and so the trained weights, between runs.
    """
    from tokenizers import Regex, normalizers, pre_tokenizers

    # Normalised and split as CLIPTokenizer does, so merges are learnt on the same pieces.
    normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()])
    splitter = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(CLIP_PATTERN), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    counts: Counter[tuple[str, ...]] = Counter()
    for text in corpus:
        for piece, _ in splitter.pre_tokenize_str(normalizer.normalize_str(text)):
            counts[tuple(piece[:-1]) + (piece[-1] + END_OF_WORD,)] += 1

    merges = []
    while True:
        pairs: Counter[tuple[str, str]] = Counter()
        for symbols, count in counts.items():
            for pair in zip(symbols, symbols[1:]):
                pairs[pair] += count
        if not pairs:
            return merges
        best = min(pairs, key=lambda pair: (-pairs[pair], pair))
        merges.append(best)
        counts = Counter({_merge(symbols, best): count for symbols, count in counts.items()})


def save_tokenizer(tokenizer, folder: Path) -> None:
    """Save the tokenizer's files, without the loading options that `save_pretrained` records."""
    tokenizer.save_pretrained(folder)
    path = folder / "tokenizer_config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    for key in ("is_local", "local_files_only", "name_or_path"):
        config.pop(key, None)
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def byte_alphabet() -> list[str]:
    """Return the 256 characters that byte-level BPE writes for the bytes 0-255, in byte order.

    Printable Latin-1 bytes stand for themselves. The others map to the
    characters from U+0100 upward, in byte order, so no byte becomes a space
    or control character.
    """
    printable = {*range(ord("!"), ord("~") + 1), *range(ord("\u00a1"), ord("\u00ac") + 1), *range(ord("\u00ae"), 256)}
    alphabet = []
    shifted = 0
    for byte in range(256):
        if byte in printable:
            alphabet.append(chr(byte))
        else:
            alphabet.append(chr(256 + shifted))
            shifted += 1
    return alphabet


def _merge(symbols: tuple[str, ...], pair: tuple[str, str]) -> tuple[str, ...]:
    merged = []
    index = 0
    while index < len(symbols):
        if index + 1 < len(symbols) and (symbols[index], symbols[index + 1]) == pair:
            merged.append(symbols[index] + symbols[index + 1])
            index += 2
        else:
            merged.append(symbols[index])
            index += 1
    return tuple(merged)
