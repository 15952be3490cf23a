"""Codebook usage and perplexity of a tokenizer's token ids (hf-vitvq), as an `evaluate` metric."""

import datasets
import evaluate
import torch

from hf_vitvq.metrics import codebook_usage
from hf_vitvq.quantizer_base import code_perplexity

_DESCRIPTION = """
How much of a codebook of `codebook_size` codes the token ids of a set of images use: the fraction of codes that occur
at least once (`hf_vitvq.metrics.codebook_usage`) and the perplexity exp(entropy) of the code frequencies
(`hf_vitvq.quantizer_base.code_perplexity`: 1 when one code is used, `codebook_size` when all are used equally), the
numbers the training loop's validation logs.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: token ids, one sequence per image (e.g. `ViTVQModel.encode(...)` ids, (B, num_latent_tokens)), each id
        in [0, codebook_size).
    codebook_size (`int`): number of codes K.
Returns:
    codebook_usage (`float`): fraction of the K codes used, in (0, 1].
    perplexity (`float`): exp of the entropy of the code frequencies, in [1, K].
Examples:
    >>> codebook = evaluate.load(hf_vitvq.evaluate_metrics.metric_path("codebook"))
    >>> codebook.compute(predictions=[[0, 1], [2, 3]], codebook_size=8)
    {'codebook_usage': 0.5, 'perplexity': 4.0}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Codebook(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Sequence(datasets.Value("int64"))}),
        )

    def _compute(self, predictions: list, codebook_size: int | None = None) -> dict[str, float]:
        if codebook_size is None or codebook_size < 1:
            raise ValueError(f"Pass the number of codes as `codebook_size=K` (a positive int), got {codebook_size}.")
        token_ids = torch.tensor([token_id for sequence in predictions for token_id in sequence], dtype=torch.long)
        if token_ids.numel() == 0:
            raise ValueError("codebook needs at least one token id in `predictions`, got none.")
        if token_ids.min() < 0 or token_ids.max() >= codebook_size:
            raise ValueError(
                f"Token ids must lie in [0, codebook_size={codebook_size}), got ids from {int(token_ids.min())} to "
                f"{int(token_ids.max())}."
            )
        return {
            "codebook_usage": codebook_usage(token_ids, codebook_size).item(),
            "perplexity": code_perplexity(token_ids, codebook_size).item(),
        }
