"""Configuration of the MaskGIT prior over ViT-VQ token ids (a generator for the tokenizer's 1D tokens).

References: Chang et al., "MaskGIT: Masked Generative Image Transformer", arXiv 2202.04200; Yu et al. (TiTok),
arXiv 2406.07550, whose ImageNet generators are MaskGIT priors over its tokens (bytedance/1d-tokenizer,
`modeling/maskgit.py`). Every hyperparameter of the model and of its training objective lives here.
"""

from __future__ import annotations

from typing import Any

from transformers import PretrainedConfig

# `ViTVQMaskGITConfig.mask_schedule` values: the fraction of tokens masked at time r in [0, 1] (training draws
# r ~ U(0, 1) per sample; sampling walks r = 1/T, 2/T, ..., 1). "arccos" is TiTok's, "cosine" MaskGIT's.
MASK_SCHEDULES = ("arccos", "cosine")


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}, got {value!r}.")


def prior_sequence_shape(tokenizer_config: Any) -> tuple[int, int]:
    """`(codebook_size, sequence_length)` of a prior over the token ids of a tokenizer with `tokenizer_config` (a
    [`ViTVQConfig`], or anything with its fields `quantizer_type`, `codebook_size`, `num_latent_tokens`,
    `num_quantizers`).

    Discrete tokenizers give `(codebook_size, num_latent_tokens)`. Residual VQ (`"rvq"`) is supported by flattening
    its levels: the prior reads the `(num_latent_tokens, num_quantizers)` ids of an image row-major, as one sequence of
    `num_latent_tokens * num_quantizers` ids of `codebook_size` codes (position tells the level). Continuous (`"kl"`)
    tokens have no ids: a `ValueError` says so.
    """
    quantizer_type = tokenizer_config.quantizer_type
    if quantizer_type == "kl":
        raise ValueError(
            "The tokenizer has continuous tokens (quantizer_type 'kl'): there are no token ids for a MaskGIT or "
            "autoregressive prior to predict. Model its latents with a diffusion-style prior (e.g. a diffusion or "
            "flow-matching head over the (num_latent_tokens, codebook_dim) latents), or use a discrete tokenizer "
            "('vq', 'fsq', 'lfq', 'rvq')."
        )
    levels = tokenizer_config.num_quantizers if quantizer_type == "rvq" else 1
    return tokenizer_config.codebook_size, tokenizer_config.num_latent_tokens * levels


class ViTVQMaskGITConfig(PretrainedConfig):
    r"""
    Configuration of a [`ViTVQMaskGITModel`]: a bidirectional transformer that predicts masked token ids of a ViT-VQ
    tokenizer, optionally conditioned on a class label, and samples new token sequences by iterative parallel
    decoding (MaskGIT). The defaults are TiTok's L-32 generator (arXiv 2406.07550, `configs/infer/TiTok/titok_l32.yaml`)
    over its 32 tokens of 4096 codes, conditioned on the 1000 ImageNet classes.

    Token layout: ids `[0, codebook_size)` are the tokenizer's codes, `mask_token_id = codebook_size` marks a masked
    position. Class labels are `[0, num_classes)`; `null_class_id = num_classes` is the "no class" label that label
    dropout trains and classifier-free guidance uses for its unconditional pass. The class is embedded as one extra
    token in front of the sequence; an unconditional prior (`num_classes=0`) has none.

    Args:
        codebook_size (`int`, defaults to 4096): number of codes of the tokenizer, K: the head predicts K logits.
        num_latent_tokens (`int`, defaults to 32): length L of a token sequence (`num_latent_tokens * num_quantizers`
            of an `"rvq"` tokenizer: see [`prior_sequence_shape`]).
        num_classes (`int`, defaults to 1000): number of class labels; 0 for an unconditional prior.
        hidden_size (`int`, defaults to 768): width of the transformer.
        num_hidden_layers (`int`, defaults to 24): number of transformer blocks.
        num_attention_heads (`int`, defaults to 16): attention heads per block.
        mlp_ratio (`float`, defaults to 4.0): MLP width as a multiple of `hidden_size`.
        hidden_dropout_prob (`float`, defaults to 0.1): dropout on the attention and MLP outputs.
        attention_probs_dropout_prob (`float`, defaults to 0.1): dropout on the attention probabilities.
        layer_norm_eps (`float`, defaults to 1e-12): epsilon of every LayerNorm (BERT's, which TiTok's generator uses).
        initializer_range (`float`, defaults to 0.02): std of the truncated normal init of every weight.
        chunk_size_feed_forward (`int`, defaults to 1024): on the CPU, without gradients, the MLP half of each block
            runs over at most this many positions at a time (as in [`ViTVQConfig`]); 0 runs it in one piece.
        mask_schedule (`str`, defaults to `"arccos"`): fraction of tokens masked at time r in [0, 1]: `"arccos"`,
            arccos(r) / (pi / 2) (TiTok), or `"cosine"`, cos(pi / 2 * r) (MaskGIT). Training masks a fraction
            `schedule(r)` of each sequence with r ~ U(0, 1) per sample; sampling keeps `schedule(s / num_steps)` of
            the positions masked after step s.
        class_label_dropout (`float`, defaults to 0.1): probability that a training sample's class is replaced by the
            null class (what classifier-free guidance needs); ignored when `num_classes=0`.
        label_smoothing (`float`, defaults to 0.1): label smoothing of the cross-entropy (MaskGIT's and TiTok's 0.1).
        unmasked_token_loss_weight (`float`, defaults to 0.1): weight of the cross-entropy at positions that were not
            masked (1 at masked ones; TiTok's `loss_weight_unmasked_token`); 0 trains on masked positions only.
    """

    model_type = "vitvq_maskgit"

    codebook_size: int = 4096
    num_latent_tokens: int = 32
    num_classes: int = 1000
    hidden_size: int = 768
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    mlp_ratio: float | int = 4.0
    hidden_dropout_prob: float | int = 0.1
    attention_probs_dropout_prob: float | int = 0.1
    layer_norm_eps: float = 1e-12
    initializer_range: float = 0.02
    chunk_size_feed_forward: int = 1024
    mask_schedule: str = "arccos"
    class_label_dropout: float | int = 0.1
    label_smoothing: float | int = 0.1
    unmasked_token_loss_weight: float | int = 0.1

    def __post_init__(self, **kwargs: Any) -> None:
        super().__post_init__(**kwargs)
        self._check_hyperparameters()

    def _check_hyperparameters(self) -> None:
        """Raise a `ValueError` naming the first hyperparameter that is out of range."""
        _check_int("codebook_size", self.codebook_size, 2)
        _check_int("num_classes", self.num_classes, 0)
        _check_int("chunk_size_feed_forward", self.chunk_size_feed_forward, 0)
        for name in ("num_latent_tokens", "hidden_size", "num_hidden_layers", "num_attention_heads"):
            _check_int(name, getattr(self, name), 1)
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"`hidden_size` ({self.hidden_size}) must be divisible by `num_attention_heads` "
                f"({self.num_attention_heads})."
            )
        if not self.mlp_ratio > 0:
            raise ValueError(f"`mlp_ratio` must be > 0, got {self.mlp_ratio!r}.")
        if self.mask_schedule not in MASK_SCHEDULES:
            raise ValueError(f"`mask_schedule` must be one of {MASK_SCHEDULES}, got {self.mask_schedule!r}.")
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob", "class_label_dropout", "label_smoothing"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"`{name}` must be in [0, 1), got {getattr(self, name)!r}.")
        if self.unmasked_token_loss_weight < 0:
            raise ValueError(f"`unmasked_token_loss_weight` must be >= 0, got {self.unmasked_token_loss_weight!r}.")
        if not self.layer_norm_eps > 0:
            raise ValueError(f"`layer_norm_eps` must be > 0, got {self.layer_norm_eps!r}.")

    @classmethod
    def for_tokenizer(cls, tokenizer_config: Any, **kwargs: Any) -> ViTVQMaskGITConfig:
        """A prior config whose `codebook_size` and `num_latent_tokens` fit the tokenizer with `tokenizer_config`
        (see [`prior_sequence_shape`], which refuses continuous `"kl"` tokens); `kwargs` set the other fields."""
        codebook_size, sequence_length = prior_sequence_shape(tokenizer_config)
        return cls(codebook_size=codebook_size, num_latent_tokens=sequence_length, **kwargs)

    @property
    def mask_token_id(self) -> int:
        """The input id of a masked position: `codebook_size`."""
        return self.codebook_size

    @property
    def null_class_id(self) -> int:
        """The class label meaning "no class" (label dropout, the unconditional pass of guidance): `num_classes`."""
        return self.num_classes

    @property
    def intermediate_size(self) -> int:
        """Width of the MLP: `int(hidden_size * mlp_ratio)`."""
        return int(self.hidden_size * self.mlp_ratio)


__all__ = ["MASK_SCHEDULES", "ViTVQMaskGITConfig", "prior_sequence_shape"]
