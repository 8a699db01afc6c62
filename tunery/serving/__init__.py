"""Serving: a trained model folder as a predictor of raw text.

- ``inference``: ``TextClassifier`` over a model folder, with the training-time cleaning applied.
- ``pyfunc``: the MLflow pyfunc wrappers that are registered (classification and instruction models).
- ``scoring``: batch scoring of a file with a registered model; model references (``NAME@alias``).
- ``server``: the REST server of ``tunery serve``: MLflow's scoring app behind request size, row and time
  limits; ``limits``: the per-request budget the model's batch loop checks (deadline, client gone).

May import: ``tunery.config``, ``tunery.layout``, ``tunery.data`` (cleaning), ``tunery.tracking``,
``tunery.training`` (loading an export, generation).
"""
