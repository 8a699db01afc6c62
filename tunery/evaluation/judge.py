"""A pairwise judge: a judge model compares the candidate's and the champion's answers to the test prompts.

The judge is reached through an OpenAI-compatible chat completions endpoint (non-streaming, temperature 0).
Every prompt is judged twice, once with the candidate's answer in position A and once in position B, so that
a judge that prefers a position rather than an answer cancels out: the candidate wins a prompt only when both
orders prefer it, loses only when both prefer the champion, and anything else is a tie. A verdict that cannot
be read makes the prompt ``invalid``: counted, but left out of the win rate, ``(wins + ties / 2) / valid
prompts``, which comes with a percentile bootstrap interval over prompts.

Secrets: the API key is a value handed in by the caller (who reads it from an environment variable or a
Prefect Secret block). It is sent in the ``Authorization`` header only: it is not in the endpoint's repr, in
any error message, in the records or in the artifact.
"""

from __future__ import annotations

import base64
import http.client
import json
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

import numpy as np

Verdict = str  # "A", "B" or "tie"
OUTCOMES = ("win", "loss", "tie", "invalid")
COUNTS = ("wins", "losses", "ties", "invalid")  # win_rate's name for the count of each outcome
# The share of a prompt the candidate gets for each outcome (invalid prompts are dropped before this).
SCORES = {"win": 1.0, "tie": 0.5, "loss": 0.0}
# Asked again besides 5xx: busy or timed out. Any other 4xx (bad key, unknown model) would fail every time.
RETRY_STATUSES = frozenset({408, 409, 429})
MAX_RETRY_AFTER_S = 60.0
ERROR_BODY_CHARS = 300

JUDGE_PROMPT = """\
You are an impartial judge. Compare two answers to the same user prompt and decide which one is better: \
more helpful, correct, relevant and clear. Do not let the order of the answers or their length sway you.

[User prompt]
{prompt}
{reference_block}
[Answer A]
{answer_a}

[Answer B]
{answer_b}

Reply with exactly one word: A if answer A is better, B if answer B is better, or tie if they are equally \
good."""

REFERENCE_BLOCK = """
[Reference answer]
{reference}
(An answer that agrees with the reference answer is better.)
"""


class JudgeError(RuntimeError):
    """The judge endpoint refused the request or could not be reached (the message never holds the key)."""


@dataclass(frozen=True)
class JudgeEndpoint:
    """An OpenAI-compatible chat completions endpoint and the judge model behind it.

    Attributes:
        url: the API's base URL, with or without the trailing ``/v1`` (``http://127.0.0.1:8000/v1``).
        model: the judge model's name at that endpoint.
        api_key: sent as ``Authorization: Bearer``; never shown (not in the repr, errors or artifacts).
        timeout_s: seconds to wait for one answer.
        max_retries: how many times a connection error, a 5xx or a 429 is retried before giving up.
        max_tokens: the judge's answer budget (a verdict is one word; a little slack for "Answer A.").
        backoff_s: the wait before the first retry, doubled at each further one.
    """

    url: str
    model: str
    api_key: str | None = field(default=None, repr=False)
    timeout_s: float = 120
    max_retries: int = 3
    max_tokens: int = 16
    backoff_s: float = 1.0

    def __post_init__(self) -> None:
        if not self.model or self.max_retries < 0 or self.timeout_s <= 0 or self.max_tokens < 1:
            raise ValueError("JudgeEndpoint needs a model, max_retries >= 0, timeout_s > 0, max_tokens >= 1")

    def completions_url(self) -> str:
        """``<base>/v1/chat/completions`` without any credentials the URL carried."""
        parts = urlsplit(self.url)  # urllib would read "user:pass@host" as a host with a bad port
        base = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2])).rstrip("/")
        if base.endswith("/chat/completions"):
            return base
        return f"{base if base.endswith('/v1') else base + '/v1'}/chat/completions"

    def shown_url(self) -> str:
        """The URL as it may be shown: a password in it is replaced by ``***``."""
        return redact(self.url, self.api_key)


def redact(text: str, api_key: str | None = None) -> str:
    """``text`` with ``user:password@`` in URLs shown as ``user:***@`` and the key (if any) as ``***``."""
    text = re.sub(r"(//[^/\s:@]+):[^\s/]*@", r"\1:***@", text)
    if api_key:
        text = text.replace(api_key, "***")
    return text


def _headers(endpoint: JudgeEndpoint) -> dict[str, str]:
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if endpoint.api_key:
        headers["Authorization"] = f"Bearer {endpoint.api_key}"
    elif urlsplit(endpoint.url).username:  # urllib does not send a URL's user:password; a proxy may want it
        pair = unquote(urlsplit(endpoint.url).netloc.rpartition("@")[0]).encode()
        headers["Authorization"] = "Basic " + base64.b64encode(pair).decode()
    return headers


def complete(endpoint: JudgeEndpoint, messages: list[dict]) -> str:
    """Ask the judge once: POST the messages to ``<url>/chat/completions`` and return the reply's text.

    Connection errors, timeouts, 5xx, 408, 409 and 429 are retried ``endpoint.max_retries`` times with
    exponential backoff (a 429's ``Retry-After`` is honoured, up to a minute); any other 4xx fails at once.

    Args:
        endpoint: where the judge is.
        messages: OpenAI chat messages.

    Returns:
        The assistant message's content ("" when the judge sent none).

    Raises:
        JudgeError: a refused request, a reply that is no chat completion, or no answer after the retries.
    """
    body = {"model": endpoint.model, "messages": messages, "temperature": 0}  # greedy: the same verdict again
    body["max_tokens"] = endpoint.max_tokens  # a verdict is a word: a small budget keeps the judge quick
    request = urllib.request.Request(
        endpoint.completions_url(), data=json.dumps(body).encode(), headers=_headers(endpoint), method="POST"
    )
    attempts = endpoint.max_retries + 1
    for attempt in range(attempts):
        wait = endpoint.backoff_s * 2**attempt
        try:
            with urllib.request.urlopen(request, timeout=endpoint.timeout_s) as response:
                return _reply_text(response.read(), endpoint)
        except urllib.error.HTTPError as exc:
            problem = _http_problem(exc, endpoint)
            if exc.code < 500 and exc.code not in RETRY_STATUSES:
                raise JudgeError(problem) from None  # from None: the cause's objects hold the request
            wait = _retry_after(exc, wait)
        except (OSError, http.client.HTTPException) as exc:  # refused, reset, DNS, timeout, a broken answer
            reason = getattr(exc, "reason", exc)
            problem = redact(f"judge endpoint {endpoint.shown_url()} unreachable: {reason}", endpoint.api_key)
        if attempt + 1 < attempts:
            time.sleep(wait)
    raise JudgeError(f"{problem} (gave up after {attempts} attempts)")


def _http_problem(exc: urllib.error.HTTPError, endpoint: JudgeEndpoint) -> str:
    """What an HTTP error says, its body cut short and redacted (a server may echo the request back)."""
    try:
        detail = exc.read().decode("utf-8", errors="replace")[:ERROR_BODY_CHARS]
    except OSError:
        detail = ""
    problem = f"judge endpoint {endpoint.shown_url()} answered HTTP {exc.code} {exc.reason}: {detail}"
    return redact(problem.rstrip(": "), endpoint.api_key)


def _retry_after(exc: urllib.error.HTTPError, default: float) -> float:
    try:
        return min(max(float(exc.headers.get("Retry-After", default)), 0.0), MAX_RETRY_AFTER_S)
    except (TypeError, ValueError):  # an HTTP date instead of seconds: keep our own backoff
        return default


def _reply_text(raw: bytes, endpoint: JudgeEndpoint) -> str:
    try:
        content = json.loads(raw)["choices"][0]["message"].get("content")
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        snippet = raw[:ERROR_BODY_CHARS].decode("utf-8", errors="replace")
        problem = f"judge endpoint {endpoint.shown_url()} sent no chat completion: {snippet}"
        raise JudgeError(redact(problem, endpoint.api_key)) from None
    return content or ""


def judge_messages(prompt: str, answer_a: str, answer_b: str, reference: str | None = None) -> list[dict]:
    """The chat messages that ask the judge to compare answer A with answer B (see :data:`JUDGE_PROMPT`)."""
    block = REFERENCE_BLOCK.format(reference=reference) if reference else ""
    text = JUDGE_PROMPT.format(prompt=prompt, reference_block=block, answer_a=answer_a, answer_b=answer_b)
    return [{"role": "user", "content": text}]


# Verdict patterns, tried in order; the first that matches decides. Judges are asked for one word but often
# add some: "[[B]]" (MT-Bench's format), "**A**", "A.", "Answer A is better", "The better answer is B".
# Letters are matched case-sensitively ((?-i:...)): a lowercase "a" in a sentence is an article.
_LETTER = r"(?-i:(A|B))"
_NAMES = r"(?:answer|response|assistant|option|output)"
_BRACKETED = re.compile(r"\[\[\s*(A|B|tie)\s*\]\]", re.IGNORECASE)
_ALONE = re.compile(r"^\W*(A|B|tie)\W*$", re.IGNORECASE)
# "A." / "B: it is more..." / "Tie!": the verdict first, then punctuation or a new line ("A good..." is not)
_LEADING = re.compile(r"^[\s*_\"'`(\[]*(?-i:(A|B|Tie|TIE|tie))(?=[^\w\s]|\s*$|\s*\n)")
_PREFERS = re.compile(
    rf"(?<!\w)(?:{_NAMES}\s+)?[\"'*]*{_LETTER}\b[\"'*]*\s+(?:is|was|seems|appears)\s+"
    r"(?:the\s+|much\s+|clearly\s+|slightly\s+)?(?:better|best|superior|preferred|preferable|stronger|more)",
    re.IGNORECASE,
)
_CHOSEN = re.compile(
    r"(?:better|best|winner|verdict|choice|choose|pick|prefer|preferred|final)\b[^.\n]{0,20}?"
    rf"(?:\bis\b|:|=|\b)\s*(?:answer\s+)?[\"'*\[]*(?:{_LETTER}|(tie))\b",
    re.IGNORECASE,
)
_TIE = re.compile(r"\b(?:tied?|draw|equal(?:ly)?|neither|both\s+(?:are|answers|responses))\b", re.IGNORECASE)
_MENTION = re.compile(rf"{_NAMES}(?:\s*:|\s+is)?\s+[\"'*]*{_LETTER}\b", re.IGNORECASE)  # "Answer: B"


def parse_verdict(text: str | None) -> Verdict | None:
    """Read a judge's reply as ``"A"``, ``"B"`` or ``"tie"``.

    Args:
        text: the reply ("A", "Tie.", "[[B]]", "Answer A is better", "The better answer is B", ...).

    Returns:
        The verdict, or None when the reply names neither answer (or both, without saying which is better).
    """
    text = (text or "").strip()  # empty: no pattern matches, None
    for pattern in (_BRACKETED, _ALONE, _LEADING, _PREFERS, _CHOSEN):
        found = pattern.search(text)
        if found:
            word = next(g for g in found.groups() if g)
            return "tie" if word.lower() == "tie" else word.upper()
    if _TIE.search(text):
        return "tie"
    # "Answer B", "The answer is B": a short reply naming one answer; a longer one may be criticising it
    named = {m.upper() for m in _MENTION.findall(text)} if len(text.split()) <= 4 else set()
    return named.pop() if len(named) == 1 else None


def combine_verdicts(candidate_first: Verdict | None, candidate_second: Verdict | None) -> str:
    """A prompt's outcome for the candidate from its two verdicts.

    Args:
        candidate_first: the verdict with the candidate's answer as A.
        candidate_second: the verdict with the candidate's answer as B.

    Returns:
        ``win`` (both orders prefer the candidate), ``loss`` (both the champion), ``invalid`` (either is
        unreadable) or ``tie`` (either says tie, or the orders disagree: the judge preferred a position).
    """
    if candidate_first is None or candidate_second is None:
        return "invalid"
    if (candidate_first, candidate_second) == ("A", "B"):  # the candidate, wherever it stood
        return "win"
    if (candidate_first, candidate_second) == ("B", "A"):
        return "loss"
    return "tie"  # A/A and B/B follow the position, not the answer


def judge_pairs(
    prompts: list[str],
    candidate: list[str],
    champion: list[str],
    endpoint: JudgeEndpoint,
    references: list[str] | None = None,
    send: Callable[[list[dict]], str] | None = None,
) -> list[dict]:
    """Ask the judge about every prompt twice, the candidate's answer first as A and then as B.

    Args:
        prompts: the test prompts.
        candidate: the candidate model's answers, one per prompt.
        champion: the champion's answers, one per prompt.
        endpoint: the judge.
        references: reference answers shown to the judge, one per prompt (optional).
        send: messages -> reply text; default: :func:`complete` on ``endpoint`` (tests plant a judge here).

    Returns:
        Per prompt: ``index``, ``prompt``, ``candidate``, ``champion``, ``reference``, ``judge_model``,
        ``verdict_candidate_first``/``_second`` (``{"raw", "parsed"}``), ``outcome`` (see below),
        ``position_flip`` (both orders named the same position).

    Raises:
        ValueError: the lists differ in length. JudgeError: the endpoint failed (see :func:`complete`).
    """
    refs = references if references is not None else [None] * len(prompts)
    if not len(prompts) == len(candidate) == len(champion) == len(refs):
        sizes = f"{len(prompts)} prompts, {len(candidate)}/{len(champion)}/{len(refs)} answers"
        raise ValueError(
            f"judge_pairs needs a candidate, champion (and reference) answer per prompt: {sizes}"
        )
    ask = send or (lambda messages: complete(endpoint, messages))
    records = []
    for i, (prompt, mine, theirs, ref) in enumerate(zip(prompts, candidate, champion, refs, strict=True)):
        first = ask(judge_messages(prompt, mine, theirs, ref))
        second = ask(judge_messages(prompt, theirs, mine, ref))
        records.append(_record(i, prompt, mine, theirs, ref, first, second, endpoint.model))
    return records


def _record(i, prompt, mine, theirs, ref, first: str, second: str, model: str) -> dict:
    a, b = parse_verdict(first), parse_verdict(second)
    return {
        "index": i,
        "prompt": prompt,
        "candidate": mine,
        "champion": theirs,
        "reference": ref,
        "verdict_candidate_first": {"raw": first, "parsed": a},
        "verdict_candidate_second": {"raw": second, "parsed": b},
        "outcome": combine_verdicts(a, b),
        # the same letter both times: the judge followed the position, not the answer (order bias)
        "position_flip": a in ("A", "B") and a == b,
        "judge_model": model,
    }


def win_rate(
    outcomes: Sequence[str | dict], confidence: float = 0.95, resamples: int = 2000, seed: int = 0
) -> dict:
    """The candidate's win rate against the champion with a bootstrap interval.

    Args:
        outcomes: per prompt, an outcome (``win``/``loss``/``tie``/``invalid``) or a record of
            :func:`judge_pairs` (then ``position_bias`` is measured too).
        confidence: the interval's coverage.
        resamples: bootstrap resamples of the valid prompts.
        seed: the bootstrap's seed (the same outcomes always give the same interval).

    Returns:
        ``wins``, ``losses``, ``ties``, ``invalid``, ``prompts`` (all), ``n`` (valid), ``win_rate`` = (wins +
        ties / 2) / n, ``ci_low``/``ci_high``, ``confidence``, ``interval_method``, ``position_bias`` (the
        share of valid prompts where both orders named the same position; None without records). With n == 0
        the rate, interval and bias are None and ``note`` says why.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    labels = [o["outcome"] if isinstance(o, dict) else o for o in outcomes]
    unknown = sorted(set(labels) - set(OUTCOMES))
    if unknown:
        raise ValueError(f"unknown outcome(s) {unknown}: use {', '.join(OUTCOMES)}")
    valid = [label for label in labels if label != "invalid"]
    summary = {name: labels.count(outcome) for name, outcome in zip(COUNTS, OUTCOMES, strict=True)}
    summary.update(prompts=len(labels), n=len(valid), win_rate=None, ci_low=None, ci_high=None)
    summary.update(confidence=confidence, position_bias=None)
    summary["interval_method"] = f"percentile bootstrap over prompts ({resamples} resamples, seed {seed})"
    if not valid:
        summary["note"] = "no valid verdicts: no judge reply could be read" if labels else "no prompts judged"
        return summary
    scores = np.array([SCORES[label] for label in valid])
    summary["ci_low"], summary["ci_high"] = bootstrap_interval(scores, confidence, resamples, seed)
    summary.update(win_rate=float(scores.mean()), position_bias=_position_bias(outcomes))
    return summary


def bootstrap_interval(scores: np.ndarray, confidence: float, resamples: int, seed: int) -> tuple:
    """Percentile bootstrap interval (low, high) of the mean of ``scores``, resampled with replacement."""
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    # in chunks: resamples x n indices at once would be 16 MB per 1,000 prompts per 1,000 resamples
    chunk = max(1, 2**20 // len(scores))
    for start in range(0, resamples, chunk):
        stop = min(start + chunk, resamples)
        means[start:stop] = scores[rng.integers(0, len(scores), (stop - start, len(scores)))].mean(axis=1)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return float(low), float(high)


def _position_bias(outcomes: Sequence[str | dict]) -> float | None:
    if not all(isinstance(o, dict) for o in outcomes):
        return None  # bare outcome strings do not say how the two orders voted
    valid = [o for o in outcomes if o["outcome"] != "invalid"]
    return sum(bool(o.get("position_flip")) for o in valid) / len(valid)


def write_verdicts(records: list[dict], path: str | Path) -> Path:
    """Write the judge's records as JSON lines (the records hold no endpoint URL or key: nor does the file).

    Args:
        records: what :func:`judge_pairs` returned.
        path: the file to write (its folder is created).

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")  # never a half-written artifact under the real name
    with open(partial, "w", encoding="utf-8") as out:
        for record in records:
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
    partial.replace(path)
    return path
