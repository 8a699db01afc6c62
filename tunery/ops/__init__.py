"""Operations on this machine: processes, locks and the local stack.

- ``process``: spawn a command in its own process group, stop a group, PID identity, free ports.
- ``locking``: an ``flock`` helper for files that several runs update.
- ``stack``: PostgreSQL, MLflow, Prefect server and worker on 127.0.0.1 (``tunery stack up|down|status``).

May import: the standard library only (``stack`` also runs the prefect and mlflow command lines).
"""
