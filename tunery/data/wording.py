"""Optional normalisations: lower-casing, contraction expansion, stop-word removal.

They are OFF by default in the pipeline, on purpose: pretrained transformer tokenizers were trained on
natural, cased, unexpanded text. Lower-casing destroys information a cased model uses (proper nouns,
emphasis, sentence starts), stop-word removal destroys meaning ("not good" becomes "good" with most
stop-word lists) and expanding contractions moves the text away from the distribution the model was
pretrained on. They exist for classical bag-of-words baselines and for explicit recipe opt-in.
"""

from __future__ import annotations

import re

# --------------------------------------------------------------------------------------------------------
# Optional normalisations (off by default, see the module docstring)
# --------------------------------------------------------------------------------------------------------

_APOSTROPHE = "['\u2019]"
_SPECIAL_CONTRACTIONS = {
    "can't": "cannot",
    "won't": "will not",
    "shan't": "shall not",
    "ain't": "am not",
    "let's": "let us",
    "y'all": "you all",
}
_SPECIAL = re.compile(
    r"\b(?:" + "|".join(w.replace("'", _APOSTROPHE) for w in _SPECIAL_CONTRACTIONS) + r")\b", re.IGNORECASE
)
_SUFFIX = re.compile(
    r"\b(\w+?)(n" + _APOSTROPHE + r"t|" + _APOSTROPHE + r"(?:m|re|ve|ll|d))\b", re.IGNORECASE
)
_SUFFIX_EXPANSIONS = {"n't": "not", "'m": "am", "'re": "are", "'ve": "have", "'ll": "will", "'d": "would"}
# "'s" is not expanded: it may be "is", "has" or a possessive.

# A small English stop-word list. Negations ("not", "no", "nor", "never", "n't" forms) are deliberately
# absent: removing them flips the meaning of the sentence.
_STOPWORD_TEXT = """
    a about above after again all am an and any are as at be because been before being below between both
    but by could did do does doing down during each few for from further had has have having he her here
    hers herself him himself his how i if in into is it its itself just let me more most my myself of off on
    once only or other our ours ourselves out over own same she should so some such than that the their
    theirs them themselves then there these they this those through to too under until up very was we were
    what when where which while who whom why will with would you your yours yourself yourselves
    i'm you're he's she's it's we're they're i've you've we've they've i'd you'd he'd she'd we'd they'd
    i'll you'll he'll she'll we'll they'll that's there's here's what's let's
"""
STOPWORDS = frozenset(_STOPWORD_TEXT.split())
# A word with the spaces before it, so that removing it leaves no space before the next punctuation.
_SPACED_WORD = re.compile(r"[ \t]*([A-Za-z]+(?:['\u2019][A-Za-z]+)?)")


def lowercase(text: str) -> str:
    """Lower-case the text (off by default: cased models use case).

    Args:
        text: any string.

    Returns:
        ``text.lower()``.
    """
    return text.lower()


def expand_contractions(text: str) -> str:
    """Expand English contractions ("can't" -> "cannot", "they're" -> "they are"); "'s" is left alone.

    Args:
        text: any string.

    Returns:
        The text with contractions expanded, keeping the case of the word (``DON'T`` -> ``DO NOT``).
    """
    if "'" not in text and "\u2019" not in text:
        return text
    text = _SPECIAL.sub(_expand_special, text)
    return _SUFFIX.sub(_expand_suffix, text)


def _expand_special(match: re.Match[str]) -> str:
    word = match.group()
    return _match_case(word, _SPECIAL_CONTRACTIONS[word.lower().replace("\u2019", "'")])


def _expand_suffix(match: re.Match[str]) -> str:
    stem, suffix = match.group(1), match.group(2)
    expansion = _SUFFIX_EXPANSIONS[suffix.lower().replace("\u2019", "'")]
    return stem + " " + (expansion.upper() if match.group().isupper() else expansion)


def _match_case(word: str, expansion: str) -> str:
    if word.isupper():
        return expansion.upper()
    return expansion[0].upper() + expansion[1:] if word[0].isupper() else expansion


def remove_stopwords(text: str) -> str:
    """Remove English stop words (:data:`STOPWORDS`), keeping negations and punctuation.

    Args:
        text: any string.

    Returns:
        The text without stop words (and the spaces before them); line breaks are kept.
    """
    text = _SPACED_WORD.sub(_drop_stopword, text)
    return "\n".join(line.lstrip(" \t") for line in text.split("\n"))


def _drop_stopword(match: re.Match[str]) -> str:
    return "" if match.group(1).lower().replace("\u2019", "'") in STOPWORDS else match.group()
