"""`question-answering`: extractive QA, an answer span found in a context (SQuAD-style).

Each row has a question, a context and `answers` `{"text": [...], "answer_start": [...]}`
(character offsets into the context; the first answer is trained on, all count at
evaluation; an empty list is an unanswerable question, allowed with
`postprocessing.allow_no_answer`). A long context is split into windows of
`preprocessing.max_length` tokens overlapping by `preprocessing.stride`; a window that does
not hold the whole answer is labelled with position 0 (the CLS position). Evaluation picks
each question's best span from the n-best start and end positions of its windows and
reports exact match and F1 in the SQuAD sense (v2, with no-answer predictions, when
unanswerable questions are allowed). The worker side is worker/question_answering.py.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from traindepot.problems import Problem
from traindepot.recipes.base import Example, Recipe, example_training_args
from traindepot.spec import DatasetSpec, JobSpec, Preprocessing
from traindepot.spec_examples import tiny_bert_config

if TYPE_CHECKING:
    from worker.data import Datasets


class QADataset(DatasetSpec):
    """The dataset of a `question-answering` job."""

    question_column: str = Field(default="question", min_length=1)
    context_column: str = Field(default="context", min_length=1)
    answers_column: str = Field(
        default="answers",
        min_length=1,
        description='`{"text": [...], "answer_start": [...]}` per row: each answer and its '
        "character offset in the context.",
    )


class QAPreprocessing(Preprocessing):
    stride: int = Field(
        default=32,
        ge=0,
        description="Tokens shared by consecutive windows of a long context (less than "
        "`max_length` minus the question's length).",
    )


class AnswerSearch(BaseModel):
    """How evaluation turns start and end logits into answers."""

    model_config = ConfigDict(extra="forbid")

    n_best: int = Field(
        default=20, ge=1, le=100, description="Start and end positions tried per window."
    )
    max_answer_length: int = Field(default=30, ge=1, description="In tokens.")
    allow_no_answer: bool = Field(
        default=False,
        description="SQuAD v2: questions may have no answer (empty `answers`), and a "
        "question's answer is empty when its no-answer score beats its best span's by more "
        "than `null_score_diff_threshold`.",
    )
    null_score_diff_threshold: float = 0.0


class QuestionAnsweringSpec(JobSpec):
    """A `question-answering` job."""

    task: Literal["question-answering"]
    dataset: QADataset
    preprocessing: QAPreprocessing = Field(default_factory=QAPreprocessing)
    postprocessing: AnswerSearch = Field(default_factory=AnswerSearch)


def answer_problem(answers: Any, context: Any, *, allow_no_answer: bool) -> str | None:
    """What is wrong with one row's `answers` for its `context`, or None. Shared by the
    checks at submit (inline rows) and the worker (every row of files and hub data)."""
    if not isinstance(context, str):
        return "the context is not a string"
    if not isinstance(answers, dict):
        return 'answers must be {"text": [...], "answer_start": [...]}'
    texts, starts = answers.get("text"), answers.get("answer_start")
    if not isinstance(texts, list) or not isinstance(starts, list) or len(texts) != len(starts):
        return 'answers must be {"text": [...], "answer_start": [...]} of the same length'
    if not texts and not allow_no_answer:
        return "has no answer; set `postprocessing.allow_no_answer` for unanswerable questions"
    for text, start in zip(texts, starts, strict=True):
        if not isinstance(text, str) or not text:
            return f"answer {text!r} is not a non-empty string"
        if not isinstance(start, int) or isinstance(start, bool):
            return f"answer_start {start!r} is not an integer"
        end = start + len(text)
        if start < 0 or end > len(context):
            return (
                f"answer {text!r} at {start}..{end} is outside its context"
                f" ({len(context)} characters)"
            )
        if context[start:end] != text:
            return (
                f"answer {text!r} is not at answer_start {start} of its context"
                f" (found {context[start:end]!r})"
            )
    return None


class QuestionAnsweringRecipe(Recipe):
    task = "question-answering"
    spec_model = QuestionAnsweringSpec
    summary = "Extractive QA (answer spans in a context); reports exact match and F1 (SQuAD)."
    adapter_task_type = "QUESTION_ANS"

    def examples(self) -> dict[str, Example]:
        context = "Ada lives in Oslo. Ada works at a bakery. Ada likes the color green."
        rows = [
            {"question": q, "context": context, "answers": {"text": [a], "answer_start": [s]}}
            for q, a in (
                ("Where does Ada live?", "Oslo"),
                ("Where does Ada work?", "bakery"),
                ("What color does Ada like?", "green"),
            )
            for s in [context.index(a)]
        ]
        return {
            "question-answering": {
                "summary": "question-answering: answer spans in short contexts",
                "value": {
                    "name": "tiny-bert-qa",
                    "task": "question-answering",
                    "model": {"from_config": tiny_bert_config()},
                    "tokenizer": {"builtin": "byte-level"},
                    "dataset": {"rows": rows * 8, "eval_fraction": 0.25},
                    "preprocessing": {"max_length": 64, "stride": 16},
                    "postprocessing": {"n_best": 10, "max_answer_length": 16},
                    "training_args": example_training_args(8),
                },
            },
        }

    def check(self, spec: JobSpec) -> list[Problem]:
        assert isinstance(spec, QuestionAnsweringSpec)
        ds, pre = spec.dataset, spec.preprocessing
        problems: list[Problem] = []
        if pre.stride >= pre.max_length:
            problems.append(
                Problem(
                    ("preprocessing", "stride"), f"must be below `max_length` ({pre.max_length})"
                )
            )
        if not pre.truncation:
            problems.append(
                Problem(
                    ("preprocessing", "truncation"),
                    "must stay true: long contexts are cut into windows of `max_length`",
                )
            )
        for index, row in enumerate(ds.rows or []):
            found = answer_problem(
                row.get(ds.answers_column),
                row.get(ds.context_column),
                allow_no_answer=spec.postprocessing.allow_no_answer,
            )
            if found is not None:
                problems.append(Problem(("dataset", "rows", index, ds.answers_column), found))
                if len(problems) >= 10:
                    break
        return problems

    def model_class(self) -> Any:
        from transformers import AutoModelForQuestionAnswering

        return AutoModelForQuestionAnswering

    def prepare_tokenizer(self, spec: JobSpec, tokenizer: Any) -> Any:
        from worker.data import require_fast_tokenizer

        why = "answer spans are mapped through its offset mapping"
        return require_fast_tokenizer(tokenizer, self.task, why)

    def prepare_data(self, spec: JobSpec, tokenizer: Any) -> Datasets:
        from worker.question_answering import prepare_qa_data

        assert isinstance(spec, QuestionAnsweringSpec)
        return prepare_qa_data(spec, tokenizer)

    def compute_metrics(
        self, spec: JobSpec, data: Datasets
    ) -> Callable[[Any], dict[str, float]] | None:
        from worker.question_answering import squad_metrics

        assert isinstance(spec, QuestionAnsweringSpec)
        return squad_metrics(spec, data) if data.eval is not None else None

    def preprocess_logits_for_metrics(self, spec: JobSpec) -> Callable[[Any, Any], Any] | None:
        from worker.question_answering import n_best_logits

        assert isinstance(spec, QuestionAnsweringSpec)
        return n_best_logits(spec.postprocessing.n_best)

    def card_lines(self, spec: JobSpec) -> list[str]:
        assert isinstance(spec, QuestionAnsweringSpec)
        ds, pre = spec.dataset, spec.preprocessing
        version = "v2 (no-answer allowed)" if spec.postprocessing.allow_no_answer else "v1"
        return [
            f"- question: `{ds.question_column}`, context: `{ds.context_column}`,"
            f" answers: `{ds.answers_column}`",
            f"- windows of {pre.max_length} tokens, stride {pre.stride}; SQuAD {version} metrics",
        ]
