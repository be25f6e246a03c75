"""The training child's environment carries the settings it reads."""

from __future__ import annotations

from traindepot.settings import Settings
from worker.child_env import child_environment


def test_every_flusher_setting_reaches_the_training_child() -> None:
    """The flusher runs in the training child (worker/runner.py `new_flusher`): a
    `TRAINDEPOT_FLUSH_*` setting the allowlist dropped would be silently ignored there
    (TRAINDEPOT_FLUSH_LEADING_EDGE=false was)."""
    names = [
        f"TRAINDEPOT_{field.upper()}"
        for field in Settings.model_fields
        if field.startswith("flush_")
    ]
    assert "TRAINDEPOT_FLUSH_LEADING_EDGE" in names
    environ = {name: "1" for name in names} | {"AWS_SECRET_ACCESS_KEY": "x"}
    assert child_environment(environ, {}) == {name: "1" for name in names}
