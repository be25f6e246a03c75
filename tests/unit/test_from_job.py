"""`model.from_job`: a job starts from the model another job exported (DPO after SFT). At
submit the job must exist in the caller's tenant, have succeeded and have exported a full
model (422 at `model.from_job` otherwise), and its model counts against the server's limits;
the worker loads that model, and its tokenizer (chat template included) when the spec names
none. The export is a real one: an sft job's trainer, trained a step and saved by the
worker's own export."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from pydantic import ValidationError

from tests.chat_data import conversational_pairs, preference_rows
from tests.specs import TINY_GPT2
from tests.unit.test_chat_recipes import sft_spec
from traindepot import artifacts
from traindepot.limits import check_limits
from traindepot.problems import SpecInvalid
from traindepot.recipes.chat import CHAT_TEMPLATES
from traindepot.settings import Settings, get_settings
from traindepot.spec import JobSpec
from traindepot.validation import check_spec

GPT2 = {**TINY_GPT2, "n_positions": 128}
ARGS = {"max_steps": 1, "per_device_train_batch_size": 4, "use_cpu": True, "save_strategy": "no"}


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("home")


@pytest.fixture
def settings(home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """The server's settings with the module's home, as `get_settings()` gives them too
    (the parameter count resolves `from_job` through it)."""
    monkeypatch.setenv("TRAINDEPOT_HOME", str(home))
    get_settings.cache_clear()
    yield Settings(home=home)
    get_settings.cache_clear()


@pytest.fixture(scope="module")
def sft_job(home: Path) -> uuid.UUID:
    """An sft job that trained a step and exported its model (chat template included)."""
    from worker.builders import build_trainer
    from worker.export import save_final_model

    job_id = uuid.uuid4()
    job_dir = Settings(home=home).job_dir(job_id)
    spec = sft_spec(training_args=ARGS)
    trainer = build_trainer(spec, job_dir / "output")
    trainer.train()
    save_final_model(trainer, spec, job_dir, str(job_id), 1, {"global_step": 1})
    return job_id


def dpo_spec(**overrides: Any) -> JobSpec:
    spec: dict[str, Any] = {
        "name": "dpo",
        "task": "dpo",
        "dataset": {"rows": preference_rows(8, seed=1)},
        "preprocessing": {"max_length": 64},
        "training_args": ARGS,
        **overrides,
    }
    return JobSpec.model_validate(spec)


def problems_of(spec: JobSpec, settings: Settings, statuses: dict[uuid.UUID, str]) -> list[Any]:
    with pytest.raises(SpecInvalid) as raised:
        check_spec(spec, settings, job_status=statuses.get)
    return [(p.loc, p.type, p.msg) for p in raised.value.problems]


def test_exactly_one_model_source() -> None:
    with pytest.raises(ValidationError, match="exactly one of `name_or_path`, `from_config`"):
        dpo_spec(model={"from_job": str(uuid.uuid4()), "name_or_path": "gpt2"})
    with pytest.raises(ValidationError, match="`revision` applies to `name_or_path` only"):
        dpo_spec(model={"from_job": str(uuid.uuid4()), "revision": "main"})


def test_a_job_that_succeeded_with_a_model_is_a_source(
    sft_job: uuid.UUID, settings: Settings
) -> None:
    spec = dpo_spec(model={"from_job": str(sft_job)})
    check_spec(spec, settings, job_status={sft_job: "succeeded"}.get)
    # Its parameters are counted from the export's config, against the server's limit,
    # and so is a reference model named by job.
    small = settings.model_copy(update={"max_model_parameters": 1_000})
    (problem,) = check_limits(spec, small)
    assert problem.loc == ("model", "from_job") and "the model has" in problem.msg
    fits_one = settings.model_copy(update={"max_model_parameters": 40_000})
    assert check_limits(spec, fits_one) == []
    with_reference = dpo_spec(
        model={"from_job": str(sft_job)}, dpo={"reference_model": {"from_job": str(sft_job)}}
    )
    (problem,) = check_limits(with_reference, fits_one)
    assert problem.loc == ("dpo", "reference_model")


def test_a_source_job_must_exist_have_succeeded_and_exported_a_model(
    sft_job: uuid.UUID, settings: Settings, home: Path
) -> None:
    at = ("model", "from_job")
    spec = dpo_spec(model={"from_job": str(sft_job)})
    # Not in the caller's tenant (the lookup is scoped to it): as if it did not exist.
    assert problems_of(spec, settings, {}) == [(at, "job_not_found", f"there is no job {sft_job}")]
    ((loc, kind, message),) = problems_of(spec, settings, {sft_job: "running"})
    assert (loc, kind) == (at, "job_not_succeeded") and "is `running`" in message
    # Succeeded, but exported nothing (no step trained, or `gc` removed its files).
    gone = uuid.uuid4()
    ((loc, kind, message),) = problems_of(
        dpo_spec(model={"from_job": str(gone)}), settings, {gone: "succeeded"}
    )
    assert (loc, kind) == (at, "no_exported_model") and "has no exported model" in message
    # Exported an adapter only (no `adapter.merge`): nothing whole to start from.
    adapter_only = uuid.uuid4()
    model_dir = artifacts.model_dir(Settings(home=home).job_dir(adapter_only))
    model_dir.mkdir(parents=True)
    (model_dir / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    artifacts.write_manifest(model_dir)
    ((loc, kind, message),) = problems_of(
        dpo_spec(model={"from_job": str(adapter_only)}), settings, {adapter_only: "succeeded"}
    )
    assert (loc, kind) == (at, "no_exported_model") and "`adapter.merge: true`" in message


def test_the_worker_starts_from_the_exported_model_and_its_tokenizer(
    sft_job: uuid.UUID, settings: Settings
) -> None:
    """The DPO job's model is the SFT job's exported weights, its tokenizer the exported
    one with the chat template (the spec names no tokenizer); the reference model is a
    frozen copy of the same weights."""
    from safetensors.torch import load_file

    from worker.builders import build_trainer

    directory = artifacts.model_dir(settings.job_dir(sft_job))
    spec = dpo_spec(
        model={"from_job": str(sft_job)}, dataset={"rows": conversational_pairs(8, seed=1)}
    )
    trainer: Any = build_trainer(spec, settings.job_dir(uuid.uuid4()) / "output")
    tokenizer: Any = trainer.processing_class
    assert tokenizer.chat_template == CHAT_TEMPLATES["chatml"]
    exported = load_file(str(directory / "model.safetensors"))
    weights = trainer.model.state_dict()
    assert exported and all(torch.equal(weights[name], exported[name]) for name in exported)
    reference = trainer.ref_model.state_dict()
    assert all(torch.equal(reference[name], exported[name]) for name in exported)


def test_a_source_model_removed_after_the_submit_fails_the_job_with_reason_config(
    settings: Settings,
) -> None:
    """The export may go (`gc`, a DELETE) while the job waits in the queue: the child
    fails it as a `config` error naming `model.from_job`."""
    from worker.builders import build_trainer
    from worker.errors import ConfigError

    gone = uuid.uuid4()
    spec = dpo_spec(model={"from_job": str(gone)})
    with pytest.raises(ConfigError, match=rf"model\.from_job: job {gone} has no exported model"):
        build_trainer(spec, settings.job_dir(uuid.uuid4()) / "output")
    # With a tokenizer named, the model's source fails the same way.
    named = dpo_spec(model={"from_job": str(gone)}, tokenizer={"builtin": "byte-level"})
    with pytest.raises(ConfigError, match=r"model\.from_job"):
        build_trainer(named, settings.job_dir(uuid.uuid4()) / "output")
