"""Training: one job, launched as its own process group, that fine-tunes and exports a model.

- ``launch``: the orchestrator side; writes the job spec, starts the DeepSpeed launcher (or one process),
  streams the log, resumes from the last complete checkpoint. ``launch.WORKER_MODULE`` names what it starts.
- ``worker``: the entry point of every rank (``python -m tunery.training.worker SPEC``); calls ``loop.train``.
- ``loop``: the Trainer loop (data, callbacks, checkpoints, final metrics).
- ``methods``: loading the base model and wrapping it for full / LoRA / QLoRA / IA3 / prompt methods.
- ``export``: merging or packaging what was trained, checked numerically before it is written.
- ``sft``: chat-template encoding, packing and generation for decoders.
- ``chat``: multi-turn conversations on the model's chat template (labels per assistant turn, text tools).

May import: ``tunery.config``, ``tunery.layout``, ``tunery.models``, ``tunery.tracking``, ``tunery.ops``,
``tunery.data`` (conversations and what a chat template is handed).
"""
