"""What the two language-modelling recipes share (causal_lm.py, masked_lm.py): the
`group_texts` option, the data (texts tokenised, optionally grouped into blocks) and the
perplexity beside every evaluation's loss."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import Field

from traindepot.recipes.base import Recipe
from traindepot.spec import JobSpec, Preprocessing

if TYPE_CHECKING:
    from worker.data import Datasets


class LMPreprocessing(Preprocessing):
    group_texts: bool = Field(
        default=False, description="Concatenate the texts and cut blocks of `max_length`."
    )


class LanguageModellingRecipe(Recipe):
    """Texts in `dataset.text_column`, every token a target."""

    def prepare_data(self, spec: JobSpec, tokenizer: Any) -> Datasets:
        from worker.data import load_raw, require_columns, tokenize_texts

        train, evaluation = load_raw(spec.dataset)
        require_columns(
            [s for s in (train, evaluation) if s is not None], [spec.dataset.text_column]
        )
        group = isinstance(spec.preprocessing, LMPreprocessing) and spec.preprocessing.group_texts
        return tokenize_texts(spec, tokenizer, train, evaluation, group_texts=group)

    def trainer_class(self) -> Any:
        from worker.trainers import PerplexityTrainer

        return PerplexityTrainer
