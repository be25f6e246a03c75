"""traindepot: a REST job-submission service for Hugging Face ``Trainer.train()``.

This package holds what every layer shares (settings, the job-spec contract, the statuses,
live events, the boundary between the API and the workers in ``traindepot.dispatch``, the
CLI and the Python client). It never imports torch, so the API starts fast, and never imports
``db`` (docs/architecture.md, "Packages").
"""

__version__ = "0.1.0"
