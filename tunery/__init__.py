"""tunery: a fine-tuning factory. The library; orchestration (Prefect) lives in tasks/ and flows/.

See docs/architecture.md for what each package owns.
"""
