"""traindepot: a REST job-submission service for Hugging Face ``Trainer.train()``.

This package holds what every layer shares (settings, the job-spec contract, the CLI and the
Python client). It never imports torch, so the API starts fast.
"""

__version__ = "0.1.0"
