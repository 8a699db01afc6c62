"""Hyperparameter search: trials of the normal training job over a space of recipe fields (``search:``).

- ``study``: the Optuna study in its RDB storage (SQLite in the workdir, or the stack's PostgreSQL): samplers
  (TPE, random, grid), pruners, the trial budget, recovery of trials a crashed search left running, the
  check that a resumed study is the same experiment (same data, same recipe), the best trial.
- ``trial``: one trial: its folder, its nested MLflow run, the training job, pruning from the job's
  per-evaluation lines, its cost; the best trial's model becomes the run's model.
- ``report``: the search summary (every trial, the best, the summed cost), Optuna's plots, the markdown.

The loop that asks and runs trials is the orchestrator's (``pipeline.search``, ``flows/search.py``): each
trial is a call of :func:`tunery.search.trial.run_trial`, which a Prefect task wraps.

May import: config, layout, ops, tracking, training (Optuna is imported here, never by the training job).
"""
