"""Data stages: ingest, clean, split, and the data report of one run.

- ``ingest``: files, globs and fsspec URIs to one table of records with file and line.
- ``conversations``: every chat format read into one canonical conversation, or refused with a reason;
  ``templates``: what a model's chat template is handed (text tools, length, fitting to max_length).
- ``clean``: the cleaning pipeline and quarantine; ``text`` (HTML, e-mail), ``pii`` (placeholders) and
  ``wording`` (optional normalisations) are its pure string functions.
- ``normalise`` and ``near_dup``: text normalisation and MinHash LSH near-duplicate detection.
- ``split``: seeded hash splits that keep near-duplicates together, and the leakage check.
- ``stages``: the three stages on a run folder; ``cache`` reuses them by content; ``report`` summarises.

May import: ``tunery.config``, ``tunery.layout``, ``tunery.models`` (tokenizer lengths), ``tunery.plotting``,
``tunery.ops`` (locking).
"""
