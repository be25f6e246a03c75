"""Issue 24 through the real stack: one `sft` and one `dpo` job family, each compared loss
for loss with a plain TRL script (tests/integration/plain_trl_scripts.py), learning on the
repo's synthetic chat task (tests/chat_data.py), streaming its TRL metrics, telling its
webhook; the sft job is SIGKILLed mid-run and resumes, a second dpo job is cancelled (and an
sft job with LoRA); a fresh process chats with the exported SFT model. With LoRA: an sft job,
then a dpo job that starts from its model (`model.from_job`), each compared with TRL and
peft."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.chat_data import chat_rows, conversational_pairs, preference_rows
from tests.integration import plain_trl_scripts
from tests.integration.conftest import Stack, process_gone, threads_of_the_jobs
from tests.integration.test_faults import wait_for
from tests.integration.test_webhooks import Receiver, events_of
from tests.specs import TINY_GPT2
from traindepot.recipes.chat import CHAT_TEMPLATES
from traindepot.stack import stop_process
from worker.checkpoints import is_complete

pytestmark = pytest.mark.integration

GPT2 = {**TINY_GPT2, "n_positions": 128}


# Run by a fresh process on the exported SFT model: its chat template, greedy generation.
CHAT_SCRIPT = (
    "import sys\n"
    "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
    "tok = AutoTokenizer.from_pretrained(sys.argv[1])\n"
    "model = AutoModelForCausalLM.from_pretrained(sys.argv[1])\n"
    "chat = [{'role': 'system', 'content': 'Repeat the word.'},"
    " {'role': 'user', 'content': 'hello'}]\n"
    "ids = tok.apply_chat_template(chat, add_generation_prompt=True, return_tensors='pt',"
    " return_dict=True)\n"
    "out = model.generate(**ids, max_new_tokens=12, do_sample=False)\n"
    "print('REPLY', repr(tok.decode(out[0][ids['input_ids'].shape[1]:])))\n"
    "print('PROMPT', repr(tok.decode(ids['input_ids'][0])))\n"
)


@pytest.fixture
def receiver() -> Any:
    r = Receiver()
    yield r
    r.close()


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def logged(history: list[dict[str, Any]], key: str) -> list[float]:
    return [entry[key] for entry in history if key in entry]


def eval_points(stack: Stack, job_id: str) -> dict[int, dict[str, Any]]:
    """The job's evaluations by step."""
    rows = stack.sql(
        "SELECT step, values FROM job_metrics WHERE job_id = %s AND kind = 'eval' ORDER BY step",
        uuid.UUID(job_id),
    )
    return {step: values for step, values in rows}


def logged_evals(history: list[dict[str, Any]]) -> dict[int, float]:
    """A plain script's eval losses by step."""
    return {entry["step"]: entry["eval_loss"] for entry in history if "eval_loss" in entry}


def job_worker(stack: Stack, job_dir: Path) -> tuple[Any, psutil.Process]:
    """The live worker running the job, and its training child (the process working in the
    job's directory)."""

    def find() -> tuple[Any, psutil.Process] | None:
        for worker in (w for w in stack.workers if w.poll() is None):
            for process in psutil.Process(worker.pid).children(recursive=True):
                try:
                    if Path(process.cwd()) == job_dir.resolve():
                        return worker, process
                except psutil.Error:  # exited meanwhile
                    continue
        return None

    found: tuple[Any, psutil.Process] = wait_for("the job's training child", find, timeout=240)
    return found


def chat_job(stack: Stack, name: str, **training_args: Any) -> dict[str, Any]:
    return {
        "name": name,
        "task": "sft",
        "model": {"from_config": GPT2},
        "tokenizer": {"builtin": "byte-level"},
        "dataset": {
            "files": {
                "train": write_jsonl(stack.data_dir / "chat-train.jsonl", chat_rows(48, seed=1)),
                "validation": write_jsonl(stack.data_dir / "chat-eval.jsonl", chat_rows(8, seed=2)),
            },
            "format": "messages",
        },
        "preprocessing": {"max_length": 128, "assistant_only_loss": True},
        "chat_template": {"name": "chatml"},
        "training_args": {
            "max_steps": 12,
            "per_device_train_batch_size": 4,
            "logging_steps": 1,
            "learning_rate": 1e-2,
            "save_steps": 4,
            "eval_strategy": "steps",
            "eval_steps": 12,
            "eval_on_start": True,
            "use_cpu": True,
            "seed": 7,
            "dataloader_num_workers": 0,
            **training_args,
        },
        "limits": {"max_restarts": 3},
    }


def test_sft_job_resumes_after_sigkill_equals_trl_learns_and_chats(
    stack: Stack, receiver: Receiver, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    spec = chat_job(stack, "chat-sft")
    spec["notify"] = {"webhooks": [{"url": receiver.url()}]}
    # A second worker, to take the job over after the kill, starts now: its warm-start
    # template imports while the job trains.
    standby = stack.start_worker("sft-standby")

    def one_worker_left() -> None:  # as the next tests expect, should a check fail first
        if sum(w.poll() is None for w in stack.workers) > 1:
            stop_process(standby, timeout=20)

    request.addfinalizer(one_worker_left)
    job_id = stack.submit(spec)["id"]
    # Killed with its worker once the checkpoint of step 4 is whole on disk; the other
    # worker resumes it. The worker is found first: the kill then follows the checkpoint at
    # once (a search after it let a loaded machine reach the last step before the kill), and
    # the checkpoint is watched on disk, not through the logged points, which reach the
    # database up to a flush later (on a fast machine, after step 12).
    worker, child = job_worker(stack, stack.job_dir(job_id))
    checkpoint = stack.job_dir(job_id) / "output" / "checkpoint-4"
    wait_for("checkpoint-4", lambda: is_complete(checkpoint), interval=0.01)
    worker.send_signal(signal.SIGKILL)
    worker.wait(30)
    wait_for("the training child to die", lambda: process_gone(child), 30)
    done = stack.wait(job_id, timeout=300)
    assert done["status"] == "succeeded", done["error"]
    assert done["attempt"] == 2 and done["result"]["global_step"] == 12
    resumed_from = stack.attempts(job_id)[1]["resumed_from_step"]
    assert resumed_from in (4, 8) and stack.train_steps(job_id, 2)  # it trained again
    # A fresh process loads the exported model, applies its chat template and generates
    # (meanwhile, TRL's script runs here).
    chatting = subprocess.Popen(
        [sys.executable, "-c", CHAT_SCRIPT, str(stack.job_dir(job_id) / "model")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**stack.env, "HF_HUB_OFFLINE": "1"},
    )
    request.addfinalizer(chatting.kill)  # should a check below fail first

    # Bit for bit: every logged loss equals TRL's own script, uninterrupted.
    ds = spec["dataset"]["files"]
    plain_args = {k: v for k, v in spec["training_args"].items() if k != "dataloader_num_workers"}
    with threads_of_the_jobs():
        _, history = plain_trl_scripts.sft_chat(
            [json.loads(line) for line in Path(ds["train"]).read_text().splitlines()],
            [json.loads(line) for line in Path(ds["validation"]).read_text().splitlines()],
            chat_template=CHAT_TEMPLATES["chatml"],
            model_config=GPT2,
            max_length=128,
            training_args=plain_args,
            output_dir=tmp_path / "plain-sft",
        )
    assert [loss for _, loss in stack.train_losses(job_id)] == logged(history, "loss")
    # The same evaluations at the same steps; the resumed attempt evaluates once more at
    # its start, as the Trainer does with `eval_on_start` when it resumes.
    evals = eval_points(stack, job_id)
    assert sorted(evals) == [0, resumed_from, 12]
    assert {step: evals[step]["eval_loss"] for step in (0, 12)} == logged_evals(history)
    # Learning: the held-out chats' loss against the untrained model's (eval_on_start).
    base, trained = evals[0]["eval_loss"], evals[12]["eval_loss"]
    print(f"sft eval_loss: base {base:.4f} -> trained {trained:.4f}")
    assert trained < 0.8 * base
    assert evals[12]["eval_perplexity"] == pytest.approx(2.718281828459045**trained)

    # Live metrics: TRL's own keys are served like the loss.
    metrics = stack.http.get(f"/jobs/{job_id}/metrics?keys=mean_token_accuracy,entropy").json()
    assert len(metrics["series"]["mean_token_accuracy"]["points"]) == 12
    # Webhooks: every change, the requeue after the kill included.
    wait_for("job.succeeded", lambda: "job.succeeded" in events_of(receiver.of_job(job_id)))
    assert events_of(receiver.of_job(job_id))[:2] == ["job.queued", "job.running"]
    assert "job.requeued" in events_of(receiver.of_job(job_id))

    out, err = chatting.communicate(timeout=120)
    assert chatting.returncode == 0, err
    print(out)
    assert "PROMPT '<|im_start|>system\\nRepeat the word.<|im_end|>\\n" in out
    assert "<|im_start|>assistant\\n'" in out
    reply = out.split("REPLY ", 1)[1].splitlines()[0]
    # It generated, and ended the assistant's turn as the template taught it (ChatML here
    # closes an assistant turn with the eos token, where generation stops); an untrained
    # model babbles bytes for all 12 new tokens.
    assert reply.endswith("<|endoftext|>'"), reply


def test_dpo_job_equals_trl_prefers_the_chosen_and_cancels(
    stack: Stack, receiver: Receiver, tmp_path: Path
) -> None:
    train, held_out = preference_rows(48, seed=3), preference_rows(8, seed=4)
    args = {
        "max_steps": 12,
        "per_device_train_batch_size": 4,
        "logging_steps": 1,
        "learning_rate": 1e-3,
        "save_strategy": "no",
        "eval_strategy": "steps",
        "eval_steps": 12,
        "eval_on_start": True,
        "use_cpu": True,
        "seed": 7,
    }
    spec = {
        "name": "pairs-dpo",
        "task": "dpo",
        "model": {"from_config": GPT2},
        "tokenizer": {"builtin": "byte-level"},
        "dataset": {
            "files": {
                "train": write_jsonl(stack.data_dir / "pairs-train.jsonl", train),
                "validation": write_jsonl(stack.data_dir / "pairs-eval.jsonl", held_out),
            }
        },
        "preprocessing": {"max_length": 64},
        "dpo": {"beta": 0.1, "loss_type": "sigmoid"},
        "training_args": args,
        "notify": {"webhooks": [{"url": receiver.url()}]},
    }
    job_id = stack.submit(spec)["id"]
    # Meanwhile, another one to cancel once it trains.
    long_args = {**args, "max_steps": 500, "eval_on_start": False}
    long = {**spec, "name": "pairs-dpo-cancel", "training_args": long_args}
    cancel_id = stack.submit(long)["id"]
    done = stack.wait(job_id, timeout=300)
    assert done["status"] == "succeeded", done["error"]

    with threads_of_the_jobs():
        _, history = plain_trl_scripts.dpo_pairs(
            train,
            held_out,
            model_config=GPT2,
            max_length=64,
            beta=0.1,
            loss_type="sigmoid",
            training_args=args,
            output_dir=tmp_path / "plain-dpo",
        )
    assert [loss for _, loss in stack.train_losses(job_id)] == logged(history, "loss")
    evals = eval_points(stack, job_id)
    assert {step: e["eval_loss"] for step, e in evals.items()} == logged_evals(history)
    before, after = evals[0]["eval_rewards/accuracies"], evals[12]["eval_rewards/accuracies"]
    margin = evals[12]["eval_rewards/margins"]
    print(f"dpo held-out rewards/accuracies: {before} -> {after}, margin {margin:.4f}")
    assert after > 0.5 and margin > 0
    keys = "rewards/accuracies,rewards/margins"
    series = stack.http.get(f"/jobs/{job_id}/metrics", params={"keys": keys}).json()["series"]
    assert len(series["rewards/accuracies"]["points"]) == 12
    assert len(series["rewards/margins"]["points"]) == 12

    wait_for("the second job to train", lambda: stack.train_steps(cancel_id))
    assert stack.http.post(f"/jobs/{cancel_id}/cancel").status_code in (200, 202)
    cancelled = stack.wait(cancel_id, timeout=120)
    assert cancelled["status"] == "cancelled"
    assert cancelled["result"]["global_step"] < 500
    # Webhooks: each job's changes, in order.
    for job, last in ((job_id, "job.succeeded"), (cancel_id, "job.cancelled")):
        wait_for(last, lambda job=job, last=last: last in events_of(receiver.of_job(job)))
        assert events_of(receiver.of_job(job)) == ["job.queued", "job.running", last]


def test_lora_sft_then_dpo_from_its_job_equal_trl_and_peft(stack: Stack, tmp_path: Path) -> None:
    """An sft job with a LoRA adapter (merged at export) equals TRL's script with peft's
    adapter (`peft_config`) loss for loss; a dpo job names it by id (`model.from_job`),
    starts from its merged model and tokenizer (the chat template renders its chat pairs),
    trains its own adapter against the base with the adapter disabled, and equals TRL's
    script started from that directory. Another tenant cannot name the sft job. A long
    sft job is cancelled while it trains."""
    lora = {"r": 4, "alpha": 8, "target_modules": ["c_attn"], "merge": True}
    plain_lora = {"r": 4, "lora_alpha": 8, "target_modules": ["c_attn"]}
    args = {
        "max_steps": 4,
        "per_device_train_batch_size": 4,
        "logging_steps": 1,
        "learning_rate": 1e-2,
        "save_strategy": "no",
        "use_cpu": True,
        "seed": 7,
    }
    chats = chat_rows(16, seed=5)
    sft = {
        "name": "lora-sft",
        "task": "sft",
        "model": {"from_config": GPT2},
        "tokenizer": {"builtin": "byte-level"},
        "dataset": {"rows": chats},
        "preprocessing": {"max_length": 128, "assistant_only_loss": True},
        "chat_template": {"name": "chatml"},
        "adapter": lora,
        "training_args": args,
    }
    sft_id = stack.submit(sft)["id"]
    pairs = conversational_pairs(16, seed=6)
    dpo = {
        "name": "lora-dpo-after-sft",
        "task": "dpo",
        "model": {"from_job": sft_id},
        "dataset": {"rows": pairs},
        "preprocessing": {"max_length": 64},
        "adapter": {"r": 4, "alpha": 8, "target_modules": ["c_attn"]},
        "training_args": args,
    }
    # Not yet succeeded: nothing to start from.
    early = stack.http.post("/jobs/validate", json=dpo)
    assert early.status_code == 422, early.text
    assert early.json()["detail"][0]["loc"] == ["model", "from_job"]
    with threads_of_the_jobs():
        _, sft_history = plain_trl_scripts.sft_chat(
            chats,
            None,
            chat_template=CHAT_TEMPLATES["chatml"],
            model_config=GPT2,
            max_length=128,
            training_args=args,
            output_dir=tmp_path / "plain-sft",
            lora=plain_lora,
        )
    done = stack.wait(sft_id, timeout=300)
    assert done["status"] == "succeeded", done["error"]
    assert [loss for _, loss in stack.train_losses(sft_id)] == logged(sft_history, "loss")
    merged = stack.job_dir(sft_id) / "model" / "merged"
    assert (stack.job_dir(sft_id) / "model" / "adapter_model.safetensors").is_file()

    # Another tenant's key: the job does not exist for it.
    other = stack.http.post("/jobs", json=dpo, headers=stack.headers(stack.new_key("team-x")))
    assert other.status_code == 422, other.text
    assert other.json()["detail"][0]["loc"] == ["model", "from_job"]
    assert f"there is no job {sft_id}" in other.json()["detail"][0]["msg"]

    dpo_id = stack.submit(dpo)["id"]
    # Meanwhile, a long sft job to cancel once it trains.
    long_args = {**args, "max_steps": 500}
    cancel_id = stack.submit({**sft, "name": "lora-sft-cancel", "training_args": long_args})["id"]
    with threads_of_the_jobs():
        _, dpo_history = plain_trl_scripts.dpo_pairs(
            pairs,
            None,
            model_config=None,
            model_dir=merged,
            max_length=64,
            beta=0.1,
            loss_type="sigmoid",
            training_args=args,
            output_dir=tmp_path / "plain-dpo",
            lora=plain_lora,
        )
    done = stack.wait(dpo_id, timeout=300)
    assert done["status"] == "succeeded", done["error"]
    assert [loss for _, loss in stack.train_losses(dpo_id)] == logged(dpo_history, "loss")
    assert len(logged(dpo_history, "loss")) == 4
    card = (stack.job_dir(dpo_id) / "model" / "README.md").read_text()
    assert f"the model job `{sft_id}` exported" in card

    wait_for("the sft job to train", lambda: stack.train_steps(cancel_id))
    assert stack.http.post(f"/jobs/{cancel_id}/cancel").status_code in (200, 202)
    cancelled = stack.wait(cancel_id, timeout=120)
    assert cancelled["status"] == "cancelled"
    assert cancelled["result"]["global_step"] < 500
