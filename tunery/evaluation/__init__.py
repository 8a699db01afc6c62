"""Evaluation: the model, baselines and the champion scored on exactly the same test rows.

- ``evaluate``: the stage (writes ``eval/metrics.json``, predictions and plots).
- ``metrics``: classification metrics, calibration, the paired bootstrap, headline numbers.
- ``baselines``: majority, TF-IDF + logistic regression, linear probe on the frozen encoder.
- ``robustness``: perturbations of the test texts and per-slice scores.
- ``generation``: ROUGE-L, ``#### N`` exact match, perplexity (sft).
- ``plots``: confusion matrix, ROC curves, reliability diagram.
- ``forgetting``: continuous learning's check against earlier drops.
- ``report`` and ``artifacts``: the run's summaries for people (one line, markdown with the plots embedded).

May import: ``tunery.config``, ``tunery.layout``, ``tunery.models``, ``tunery.plotting``, ``tunery.serving``
(to score a model folder), ``tunery.training`` (sft encoding and generation, loading an export),
``tunery.data`` (conversation turns as a template shows them, tool calls parsed back).
"""
