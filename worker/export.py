"""The job's product: its final model, saved at the end of a job that trained at least one
step (docs/architecture.md, "Artifacts and retention").

`trainer.save_model` writes the model (the best one when `load_best_model_at_end`: the
Trainer has loaded it back by then) with `save_pretrained`, and the tokenizer beside it.
Next to them: the spec, the effective TrainingArguments as JSON (the Trainer's pickled
`training_args.bin` is dropped: loading a pickle runs code), `trainer_state.json`, a model
card, and the manifest (size and sha256 of every file). Everything is written to a staging
directory first and renamed into place, so `model/` is always whole.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from transformers import Trainer

from traindepot import artifacts
from traindepot.events import json_safe
from traindepot.exported_models import MERGED_DIR
from traindepot.recipes import recipe_for
from traindepot.spec import JobSpec


def last_eval_metrics(log_history: list[dict[str, Any]]) -> dict[str, Any]:
    """The last evaluation's metrics, from the Trainer's log history (empty: none ran)."""
    for entry in reversed(log_history):
        if any(key.startswith("eval_") for key in entry):
            return dict(entry)
    return {}


def _base_model(spec: JobSpec) -> str:
    if spec.model.from_config is not None:
        shape = json.dumps(spec.model.from_config, sort_keys=True)
        return f"none: initialised at random from the configuration `{shape}`"
    if spec.model.from_job is not None:
        return f"the model job `{spec.model.from_job}` exported"
    revision = f" (revision `{spec.model.revision}`)" if spec.model.revision else ""
    return f"`{spec.model.name_or_path}`{revision}"


def _data(spec: JobSpec) -> str:
    dataset = spec.dataset
    if dataset.rows is not None:
        source = f"{len(dataset.rows)} inline rows"
    elif dataset.files is not None:
        given = (dataset.files.train, dataset.files.validation)
        named = ", ".join(f"`{Path(p).name}`" for p in given if p)
        source = f"local files {named}"
    else:
        assert dataset.hub is not None
        source = f"the Hub dataset `{dataset.hub.path}` split `{dataset.hub.split}`"
    return f"{source}, text column `{dataset.text_column}`"


def model_card(
    spec: JobSpec, job_id: str, result: dict[str, Any], eval_metrics: dict[str, Any]
) -> str:
    def table(values: dict[str, Any]) -> str:
        if not values:
            return "(none)\n"
        rows = "".join(f"| `{key}` | {value} |\n" for key, value in sorted(values.items()))
        return "| metric | value |\n|---|---|\n" + rows

    recipe_lines = "".join(f"{line}\n" for line in recipe_for(spec).card_lines(spec))
    train_output = {
        "global_step": result.get("global_step"),
        "training_loss": result.get("training_loss"),
        **dict(result.get("metrics") or {}),
    }
    return (
        f"# {spec.name}\n\n"
        f"Trained by traindepot, job `{job_id}`.\n\n"
        f"- task: `{spec.task}`\n"
        f"- base model: {_base_model(spec)}\n"
        f"- data: {_data(spec)}\n"
        f"{recipe_lines}\n"
        "## TrainOutput\n\n"
        f"{table(train_output)}\n"
        "## Last evaluation\n\n"
        f"{table(eval_metrics)}\n"
        "The spec is in `spec.json`, the effective TrainingArguments in `training_args.json`, "
        "the Trainer's state and log history in `trainer_state.json`, and the size and "
        "sha256 of every file in `manifest.json`.\n"
    )


def save_final_model(
    trainer: Trainer,
    spec: JobSpec,
    job_dir: Path,
    job_id: str,
    attempt: int,
    result: dict[str, Any],
) -> Path | None:
    """Write the job's `model/` (see the module docstring) and return it. Called on every
    rank of a job of several: `save_model` gathers the weights with all of them (FSDP,
    DeepSpeed), and only rank 0 writes; the other ranks return None."""
    staging = job_dir / f".model.attempt-{attempt}"
    if trainer.is_world_process_zero():
        shutil.rmtree(staging, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()  # no rank writes into a staging being removed
    trainer.save_model(str(staging))
    if not trainer.is_world_process_zero():
        return None
    (staging / "training_args.bin").unlink(missing_ok=True)
    built: Any = trainer.args  # to_dict() is untyped
    args = json_safe(built.to_dict())
    for server_path in ("output_dir", "logging_dir"):
        args.pop(server_path, None)
    text = json.dumps(args, indent=2, sort_keys=True, default=str)
    (staging / "training_args.json").write_text(text)
    (staging / "spec.json").write_text(json.dumps(spec.model_dump(mode="json"), indent=2))
    trainer.state.save_to_json(str(staging / "trainer_state.json"))
    card = model_card(spec, job_id, result, json_safe(last_eval_metrics(trainer.state.log_history)))
    (staging / "README.md").write_text(card)
    recipe_for(spec).export(trainer, spec, staging)
    if spec.adapter is not None and spec.adapter.merge:
        from worker.adapters import save_merged

        save_merged(trainer.model, spec, trainer.processing_class, staging / MERGED_DIR)
    artifacts.write_manifest(staging)
    return artifacts.publish_model(staging, job_dir)
