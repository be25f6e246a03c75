"""`token-classification`: one tag per word (named entities, parts of speech).

The data is pre-split: a column of word lists and a column of tag lists of the same length.
The words are tokenised with `is_split_into_words`, and each word's tag goes to its first
sub-word (`word_ids()`); special tokens and, by default, the later sub-words of a word get
-100 (ignored by the loss). Evaluation reports entity-level precision, recall and F1 in
seqeval's sense plus token accuracy. The worker side is worker/token_classification.py.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from traindepot.problems import Problem
from traindepot.recipes.base import Example, Recipe, example_training_args
from traindepot.spec import DatasetSpec, JobSpec, Preprocessing, distinct_names
from traindepot.spec_examples import tiny_bert_config

if TYPE_CHECKING:
    from worker.data import Datasets


class TaggedDataset(DatasetSpec):
    """The dataset of a `token-classification` job: words and one tag per word."""

    tokens_column: str = Field(default="tokens", min_length=1, description="Lists of words.")
    tags_column: str = Field(
        default="tags",
        min_length=1,
        description="Lists of tags, one per word: tag names, or ids into `label_names`.",
    )
    label_names: list[str] | None = Field(
        default=None,
        min_length=2,
        description="The tag names in id order (e.g. `O`, `B-PER`, `I-PER`). null: a "
        "ClassLabel sequence's names, or the sorted distinct tag strings of the data.",
    )

    check_names = field_validator("label_names")(distinct_names)


class TaggingPreprocessing(Preprocessing):
    label_all_tokens: bool = Field(
        default=False,
        description="Label every sub-word of a word, not only its first (a `B-` tag becomes "
        "its `I-` tag after the first sub-word); false: later sub-words get -100.",
    )


class EntityMetrics(BaseModel):
    model_config = ConfigDict(extra="forbid")

    scheme: Literal["IOB1", "IOB2"] | None = Field(
        default=None,
        description="Evaluate entities strictly under this tagging scheme (seqeval's strict "
        "mode); null: seqeval's default, conlleval-compatible, lenient reading.",
    )


class TokenClassificationSpec(JobSpec):
    """A `token-classification` job."""

    task: Literal["token-classification"]
    dataset: TaggedDataset
    preprocessing: TaggingPreprocessing = Field(default_factory=TaggingPreprocessing)
    entities: EntityMetrics = Field(
        default_factory=EntityMetrics, description="How entity-level metrics read the tags."
    )


def _tag_count_problems(ds: TaggedDataset) -> list[Problem]:
    """Inline rows whose tag list is not as long as its word list (files and hub data are
    checked by the worker, which fails the job with reason `data` naming the row)."""
    problems: list[Problem] = []
    for index, row in enumerate(ds.rows or []):
        tokens, tags = row.get(ds.tokens_column), row.get(ds.tags_column)
        if isinstance(tokens, list) and isinstance(tags, list) and len(tokens) != len(tags):
            problems.append(
                Problem(
                    ("dataset", "rows", index, ds.tags_column),
                    f"has {len(tags)} tags for {len(tokens)} tokens: give one tag per token",
                )
            )
            if len(problems) >= 10:
                break
    return problems


class TokenClassificationRecipe(Recipe):
    task = "token-classification"
    spec_model = TokenClassificationSpec
    summary = (
        "One tag per word (NER, POS); reports entity precision, recall and F1 (seqeval) and "
        "accuracy."
    )
    adapter_task_type = "TOKEN_CLS"

    def examples(self) -> dict[str, Example]:
        rows = [
            {"tokens": ["Alice", "visited", "Paris", "."], "tags": ["B-PER", "O", "B-LOC", "O"]},
            {"tokens": ["Bob", "left", "Rome"], "tags": ["B-PER", "O", "B-LOC"]},
            {"tokens": ["Mary", "Ann", "stayed"], "tags": ["B-PER", "I-PER", "O"]},
            {"tokens": ["Rain", "fell", "on", "Oslo"], "tags": ["O", "O", "O", "B-LOC"]},
        ]
        return {
            "token-classification": {
                "summary": "token-classification: named entities on pre-split words",
                "value": {
                    "name": "tiny-bert-ner",
                    "task": "token-classification",
                    "model": {"from_config": tiny_bert_config()},
                    "tokenizer": {"builtin": "byte-level"},
                    "dataset": {
                        "rows": rows * 8,
                        "tokens_column": "tokens",
                        "tags_column": "tags",
                        "label_names": ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"],
                        "eval_fraction": 0.25,
                    },
                    "preprocessing": {"max_length": 64, "padding": "longest"},
                    "entities": {"scheme": "IOB2"},
                    "training_args": example_training_args(8),
                },
            },
        }

    def check(self, spec: JobSpec) -> list[Problem]:
        ds = spec.dataset
        assert isinstance(ds, TaggedDataset)
        return _tag_count_problems(ds)

    def model_class(self) -> Any:
        from transformers import AutoModelForTokenClassification

        return AutoModelForTokenClassification

    def prepare_tokenizer(self, spec: JobSpec, tokenizer: Any) -> Any:
        from worker.data import require_fast_tokenizer

        why = "aligning tags to sub-words uses its `word_ids()`"
        return require_fast_tokenizer(tokenizer, self.task, why)

    def prepare_data(self, spec: JobSpec, tokenizer: Any) -> Datasets:
        from worker.token_classification import prepare_tagged_data

        assert isinstance(spec, TokenClassificationSpec)
        return prepare_tagged_data(spec, tokenizer)

    def collator(self, spec: JobSpec, tokenizer: Any) -> Any:
        from transformers import DataCollatorForTokenClassification

        return DataCollatorForTokenClassification(tokenizer)

    def compute_metrics(
        self, spec: JobSpec, data: Datasets
    ) -> Callable[[Any], dict[str, float]] | None:
        from worker.token_classification import entity_metrics

        assert isinstance(spec, TokenClassificationSpec) and data.label_names is not None
        return entity_metrics(data.label_names, scheme=spec.entities.scheme)

    def preprocess_logits_for_metrics(self, spec: JobSpec) -> Callable[[Any, Any], Any] | None:
        from worker.metrics import predicted_class

        return predicted_class

    def card_lines(self, spec: JobSpec) -> list[str]:
        assert isinstance(spec, TokenClassificationSpec)
        ds = spec.dataset
        return [
            f"- words: `{ds.tokens_column}`, tags: `{ds.tags_column}`",
            f"- entity scheme: {spec.entities.scheme or 'seqeval default (lenient)'}",
        ]
