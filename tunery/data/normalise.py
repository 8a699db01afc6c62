"""Text normalisation shared by near-duplicate detection, split assignment and the leakage check.

A text is capped at :data:`MAX_CHARS` characters, lower-cased, stripped of punctuation at the edges of each
whitespace-separated token and its whitespace collapsed, in one vectorised numpy pass over many texts.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence

import numpy as np

MAX_CHARS = 20_000
"""Characters of each raw text that are shingled; the rest is ignored (see the module docstring)."""


def _char_class(ch: str) -> int:
    """0 for punctuation and symbols, 1 for word characters (letters, numbers, marks, "_"), 2 for space."""
    if ch.isspace():
        return 2
    return int(ch == "_" or unicodedata.category(ch)[0] in "LNM")


_ASCII_CLASS = np.array([_char_class(chr(c)) for c in range(128)], dtype=np.uint8)


def _char_classes(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(is_word, is_space)`` for every code point, from a table for ASCII and a lookup for the rest."""
    classes = _ASCII_CLASS[np.minimum(codes, 127)]
    high = codes > 127
    if high.any():
        values, inverse = np.unique(codes[high], return_inverse=True)
        lookup = np.array([_char_class(chr(v)) for v in values.tolist()], dtype=np.uint8)
        classes[high] = lookup[inverse]
    return classes == 1, classes == 2


def _shift(mask: np.ndarray, step: int, fill: bool) -> np.ndarray:
    """``mask`` moved by ``step`` positions (+1: each position sees its predecessor), padded with fill."""
    pad = np.full(abs(step), fill)
    return np.concatenate((pad, mask[:-step])) if step > 0 else np.concatenate((mask[-step:], pad))


def _edge_punctuation(
    punct: np.ndarray, space: np.ndarray, first: np.ndarray, last: np.ndarray
) -> np.ndarray:
    """Mask of punctuation runs that touch whitespace or a text edge; inner runs ("don't", "3.5") stay."""
    open_before = first | _shift(space, 1, True)
    open_after = last | _shift(space, -1, True)
    run_start = punct & (first | ~_shift(punct, 1, False))
    run_end = punct & (last | ~_shift(punct, -1, False))
    strip = open_before[run_start] | open_after[run_end]  # the k-th start and k-th end bound the k-th run
    out = np.zeros_like(punct)
    out[punct] = strip[(np.cumsum(run_start) - 1)[punct]]
    return out


def _separators(blank: np.ndarray, first: np.ndarray, last: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Blanks kept as one space: the last of a run, with non-blank text both before and after it."""
    nonblank = ~blank
    before = np.cumsum(nonblank) - nonblank  # non-blanks before each position, over all texts
    starts = (np.cumsum(lengths) - lengths)[lengths > 0]
    before -= np.repeat(before[starts], lengths[lengths > 0])  # ... and within its own text
    return blank & ~last & _shift(nonblank, -1, False) & (before > 0)


def normalised_codes(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Normalise texts as arrays of code points, all texts in one vectorised pass (see :func:`normalise`).

    Args:
        texts: Raw texts.

    Returns:
        ``(codes, lengths)``: uint32 code points of the normalised texts laid end to end, and their lengths.
    """
    lowered = [t[:MAX_CHARS].lower() for t in texts]
    lengths = np.fromiter(map(len, lowered), dtype=np.int64, count=len(lowered))
    # surrogatepass: lone surrogates (legal in str) must hash, not raise
    codes = np.frombuffer("".join(lowered).encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    if not len(codes):
        return codes, lengths
    word, space = _char_classes(codes)
    ends = (np.cumsum(lengths) - 1)[lengths > 0]
    first, last = np.zeros(len(codes), dtype=bool), np.zeros(len(codes), dtype=bool)
    first[ends - lengths[lengths > 0] + 1] = True
    last[ends] = True
    blank = space | _edge_punctuation(~word & ~space, space, first, last)
    keep = ~blank | _separators(blank, first, last, lengths)
    text_of = np.repeat(np.arange(len(lengths)), lengths)
    out = np.where(blank, np.uint32(32), codes)[keep]
    return out, np.bincount(text_of[keep], minlength=len(lengths)).astype(np.int64)


def normalise_many(texts: Sequence[str]) -> list[str]:
    """:func:`normalise` for many texts in one vectorised pass (much faster than one call per text)."""
    codes, lengths = normalised_codes(texts)
    joined = codes.tobytes().decode("utf-32-le", "surrogatepass")
    ends = np.cumsum(lengths).tolist()
    return [joined[end - n : end] for end, n in zip(ends, lengths.tolist(), strict=True)]


def normalise(text: str) -> str:
    """Normalise a text for shingling: cap, lower-case, strip edge punctuation, collapse whitespace.

    Punctuation (anything but letters, numbers, marks, "_" and whitespace) is removed at the start and end of
    each whitespace-separated token and kept inside it, so "Hello, (world)!" and "hello world" agree while
    "don't", "e-mail" and "3.5" keep their inner punctuation.

    Args:
        text: Raw text; only its first :data:`MAX_CHARS` characters are used.

    Returns:
        The normalised text; empty when nothing but punctuation and whitespace was left.
    """
    codes, _ = normalised_codes([text])
    return codes.tobytes().decode("utf-32-le", "surrogatepass")
