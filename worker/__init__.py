"""The worker: Celery app and task (the supervisor), and the training child process.

Only ``worker.runner`` and the modules it imports (``builders``, ``data``, ``callback``,
``byte_tokenizer``, ``checkpoints``) import torch, and only inside the training child.
"""
