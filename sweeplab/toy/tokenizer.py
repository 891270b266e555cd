"""A tiny CLIP byte-level BPE vocabulary that the toy model writes itself.

The real CLIP vocabulary (49,408 tokens) would have to be downloaded; this one is
generated from a word list, so prompts used in demos and tests ("a red circle",
"fire in a fireplace") become one token per word while any other text still
encodes through the 256 byte-level symbols.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from transformers import CLIPTokenizer

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
MODEL_MAX_LENGTH = 77

# Letters only: CLIP's pre-tokenizer splits words at anything else.
WORDS: tuple[str, ...] = (
    # colours
    "red", "orange", "yellow", "green", "blue", "purple", "pink", "brown",
    "white", "black", "grey", "gray", "gold", "silver",
    # shapes
    "circle", "square", "triangle", "star", "shape", "shapes",
    # scenes and things
    "fire", "flames", "flame", "fireplace", "tree", "trees", "hill", "hills",
    "river", "sky", "sun", "moon", "cloud", "clouds", "mountain", "mountains",
    "forest", "lake", "sea", "ocean", "water", "grass", "field", "flower",
    "flowers", "snow", "rain", "night", "day", "sunset", "light", "dark",
    "bright", "cat", "dog", "house", "city", "street", "car", "person", "bird",
    # styles and qualifiers
    "photograph", "photo", "picture", "image", "drawing", "sketch", "painting",
    "oil", "watercolor", "digital", "art", "style", "render", "illustration",
    "portrait", "landscape", "cartoon", "background", "nature", "national",
    "geographic", "high", "quality", "detailed", "beautiful", "blurry", "low",
    "ugly", "big", "small", "large", "old", "new", "bad", "good",
    # function words
    "of", "a", "an", "the", "on", "in", "with", "and", "at", "by", "is", "to",
    "from",
)


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable unicode character table."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs = list(bs)
    extra = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + extra)
            extra += 1
    return dict(zip(bs, map(chr, cs)))


def _apply_bpe(symbols: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Standard BPE: repeatedly merge the lowest-ranked adjacent pair."""
    while len(symbols) > 1:
        candidates = [pair for pair in zip(symbols, symbols[1:]) if pair in ranks]
        if not candidates:
            break
        first, second = min(candidates, key=ranks.__getitem__)
        merged: list[str] = []
        i = 0
        while i < len(symbols):
            if i + 1 < len(symbols) and symbols[i] == first and symbols[i + 1] == second:
                merged.append(first + second)
                i += 2
            else:
                merged.append(symbols[i])
                i += 1
        symbols = merged
    return symbols


def build_vocab(words: tuple[str, ...] = WORDS) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Return (vocab, merges) in CLIP's layout: bytes, bytes+</w>, merged tokens, specials.

    Each new merge is appended after all earlier ones, so it can never change how
    an already-covered word is split (those finish using lower-ranked merges).
    """
    byte_chars = list(bytes_to_unicode().values())
    encoder = bytes_to_unicode()
    merges: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], int] = {}
    for word in words:
        chars = [encoder[b] for b in word.encode("utf-8")]
        symbols = _apply_bpe(chars[:-1] + [chars[-1] + "</w>"], ranks)
        while len(symbols) > 1:
            pair = (symbols[0], symbols[1])
            ranks[pair] = len(merges)
            merges.append(pair)
            symbols = _apply_bpe(symbols, ranks)
    tokens = byte_chars + [c + "</w>" for c in byte_chars] + [a + b for a, b in merges] + [BOS, EOS]
    return {token: i for i, token in enumerate(tokens)}, merges


def write_vocab(folder: Path) -> tuple[Path, Path]:
    """Write vocab.json and merges.txt (with CLIP's '#version' header line)."""
    vocab, merges = build_vocab()
    folder.mkdir(parents=True, exist_ok=True)
    vocab_file, merges_file = folder / "vocab.json", folder / "merges.txt"
    vocab_file.write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    merges_file.write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    return vocab_file, merges_file


def build_tokenizer() -> CLIPTokenizer:
    """Construct the toy CLIPTokenizer from freshly written vocab files.

    The files are passed positionally: transformers 4 names those parameters
    ``vocab_file``/``merges_file`` and transformers 5 ``vocab``/``merges`` (both
    accept paths), while the keyword ``vocab_file=`` is silently ignored by 5.x,
    which then falls back to a 3-token vocabulary.
    """
    with tempfile.TemporaryDirectory() as tmp:
        vocab_file, merges_file = write_vocab(Path(tmp))
        return CLIPTokenizer(str(vocab_file), str(merges_file), model_max_length=MODEL_MAX_LENGTH)
