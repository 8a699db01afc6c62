"""Continuous learning: data that arrives as drops, and retraining on it.

- ``drops``: the drop zone, its complete-file protocol and the SQLite manifest (exactly-once registration).
- ``history``: the versioned dataset of drops (per-drop cleaning, dedup against history, frozen splits).
- ``drift``: drift report between a drop and the history.
- ``continuous``: update / hold / reject a batch of drops and materialise a dataset version for a run.
- ``lineage``: which drops a registered model version learnt from.

May import: ``tunery.config``, ``tunery.layout``, ``tunery.models``, ``tunery.data``, ``tunery.registry``,
``tunery.plotting``, ``tunery.ops`` (locking).
"""
