"""PyTorch MaskGIT prior over ViT-VQ token ids: a bidirectional transformer that predicts masked tokens, and the
iterative parallel decoding that samples new token sequences from it.

References: Chang et al., "MaskGIT: Masked Generative Image Transformer", arXiv 2202.04200
(google-research/maskgit); Yu et al. (TiTok), arXiv 2406.07550, whose generators are MaskGIT priors over its 1D
tokens (bytedance/1d-tokenizer, `modeling/maskgit.py`: arccos schedule, label smoothing 0.1, weight 0.1 on unmasked
tokens, Gumbel-noised confidence with an annealed temperature, linearly growing guidance).

    token_ids (B, L), masked positions = mask_token_id -> embeddings (+ a class token) -> ViT stack -> logits (B, L, K)

The transformer is the tokenizer's pre-norm ViT stack ([`ViTVQTransformer`]) with bidirectional SDPA attention.
Classifier-free guidance follows transformers' convention (`GenerationConfig.guidance_scale`): logits =
uncond + scale * (cond - uncond), so scale 1 is the conditional model alone and 0 the unconditional one; TiTok's
`cfg_scale` c is scale 1 + c here (its L-32 generator: 4.5 -> 5.5).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput, can_return_tuple

from .configuration_vitvq import TransformerSizes
from .configuration_vitvq_maskgit import ViTVQMaskGITConfig
from .modeling_vitvq import ViTVQTransformer, preview

# `generate(guidance_schedule=...)` values: how the guidance scale moves over the sampling steps.
GUIDANCE_SCHEDULES = ("constant", "linear")


# ---------------------------------------------------------------------------------------------- pure functions


def mask_ratio(r: torch.Tensor, schedule: str) -> torch.Tensor:
    """Fraction of tokens masked at time `r` in [0, 1] (1 at r = 0, 0 at r = 1): `"arccos"`: arccos(r) / (pi / 2)
    (TiTok), `"cosine"`: cos(pi / 2 * r) (MaskGIT)."""
    if schedule == "arccos":
        return torch.arccos(r) / (math.pi / 2)
    if schedule == "cosine":
        return torch.cos(math.pi / 2 * r)
    raise ValueError(f"Unknown mask schedule {schedule!r}; expected 'arccos' or 'cosine'.")


def random_token_mask(
    batch_size: int,
    sequence_length: int,
    schedule: str,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.BoolTensor:
    """The training mask: per sample, r ~ U(0, 1) and `round(L * mask_ratio(r))` positions (at least 1), chosen
    uniformly at random, are masked (TiTok's `masking_input_tokens`). Returns a (B, L) bool mask, True = masked."""
    r = torch.rand(batch_size, generator=generator, device=device)
    ratio = mask_ratio(r, schedule).clamp(1e-6, 1.0)
    num_masked = (sequence_length * ratio).round().clamp(min=1)  # (B,)
    # The rank of each position in a random order: the num_masked first ones are masked.
    ranks = torch.rand(batch_size, sequence_length, generator=generator, device=device).argsort(dim=-1).argsort(dim=-1)
    return ranks < num_masked[:, None]


def masked_token_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    token_mask: torch.Tensor,
    label_smoothing: float = 0.0,
    unmasked_token_loss_weight: float = 0.0,
) -> torch.Tensor:
    """MaskGIT's objective: the cross-entropy (with `label_smoothing`) of each position, weighted 1 where `token_mask`
    is True and `unmasked_token_loss_weight` elsewhere, averaged: sum(w * ce) / (sum(w) + 1e-8) (TiTok's `MLMLoss`).

    Args:
        logits: (B, L, K) predictions.
        labels: (B, L) target ids in [0, K).
        token_mask: (B, L) bool, True at masked positions.
    """
    # (B, L, K) -> (B*L, K)
    ce = nn.functional.cross_entropy(
        logits.flatten(0, 1).float(), labels.flatten(), reduction="none", label_smoothing=label_smoothing
    ).view_as(labels)
    weights = torch.where(token_mask, 1.0, unmasked_token_loss_weight)
    return (weights * ce).sum() / (weights.sum() + 1e-8)


def masked_counts_per_step(sequence_length: int, num_steps: int, schedule: str) -> list[int]:
    """How many positions are still masked after each of the `num_steps` decoding steps: `floor(L * mask_ratio(s /
    num_steps))` after step s = 1 .. num_steps, clamped so that every step commits at least one token and the last
    commits the rest (0 masked after it). Needs 1 <= num_steps <= sequence_length."""
    if not 1 <= num_steps <= sequence_length:
        raise ValueError(
            f"`num_steps` must be in [1, {sequence_length}] (the sequence length: each step fills at least one "
            f"position), got {num_steps}."
        )
    steps = torch.arange(1, num_steps + 1, dtype=torch.float64) / num_steps
    scheduled = (sequence_length * mask_ratio(steps, schedule)).floor().long().tolist()
    counts, previous = [], sequence_length
    for step, count in enumerate(scheduled, start=1):
        # at least one per remaining step stays masked; at least one is committed now
        previous = min(max(count, num_steps - step), previous - 1)
        counts.append(previous)
    return counts


def guidance_scales(guidance_scale: float, num_steps: int, schedule: str) -> list[float]:
    """The guidance scale of each decoding step: `"constant"`: `guidance_scale` throughout; `"linear"`: from 1 (no
    guidance) at the first step towards `guidance_scale`, 1 + (guidance_scale - 1) * s / num_steps at step s = 0 ..
    num_steps - 1 (TiTok's linear guidance decay, in this module's convention)."""
    if schedule == "constant":
        return [float(guidance_scale)] * num_steps
    if schedule == "linear":
        return [1.0 + (guidance_scale - 1.0) * step / num_steps for step in range(num_steps)]
    raise ValueError(f"`guidance_schedule` must be one of {GUIDANCE_SCHEDULES}, got {schedule!r}.")


def gumbel_noise(
    shape: Sequence[int], generator: torch.Generator | None = None, device: torch.device | str | None = None
) -> torch.Tensor:
    """Standard Gumbel noise -log(-log(u)), u ~ U(0, 1), logs clamped at 1e-20 (as TiTok)."""
    u = torch.rand(shape, generator=generator, device=device)
    return -torch.log((-torch.log(u.clamp(min=1e-20))).clamp(min=1e-20))


# ---------------------------------------------------------------------------------------------- modules


@dataclass
class ViTVQMaskGITOutput(ModelOutput):
    """Output of [`ViTVQMaskGITModel.forward`].

    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*): the masked-token loss ([`masked_token_loss`] with the
            config's label smoothing and unmasked-token weight), when `labels` were given.
        logits (`torch.FloatTensor` of shape `(batch_size, num_latent_tokens, codebook_size)`): scores of every code
            at every position.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None


class ViTVQMaskGITEmbeddings(nn.Module):
    """Token embeddings over the codes plus the mask id, one class token in front (class-conditional priors), and
    learned position embeddings."""

    def __init__(self, config: ViTVQMaskGITConfig) -> None:
        super().__init__()
        self.num_prefix = int(config.num_classes > 0)
        self.token_embeddings = nn.Embedding(config.codebook_size + 1, config.hidden_size)  # + the mask id
        # + the null class of classifier-free guidance
        self.class_embeddings = nn.Embedding(config.num_classes + 1, config.hidden_size) if self.num_prefix else None
        self.position_embeddings = nn.Parameter(
            torch.empty(self.num_prefix + config.num_latent_tokens, config.hidden_size)
        )
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids: torch.Tensor, class_labels: torch.Tensor | None) -> torch.Tensor:
        """(B, L) ids and (B,) labels -> (B, [class] + L, W)."""
        embeddings = self.token_embeddings(input_ids)
        if self.class_embeddings is not None:
            embeddings = torch.cat([self.class_embeddings(class_labels)[:, None], embeddings], dim=1)
        return self.dropout(embeddings + self.position_embeddings)


class ViTVQMaskGITPreTrainedModel(PreTrainedModel):
    config_class = ViTVQMaskGITConfig
    config: ViTVQMaskGITConfig
    base_model_prefix = "maskgit"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _no_split_modules = ["ViTVQLayer"]
    _supports_sdpa = True
    _supports_flash_attn = False

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """BERT's init, as TiTok's generator: trunc-normal(initializer_range) weights, embeddings and positions; zero
        biases; LayerNorm (1, 0)."""
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Embedding)):
            init.trunc_normal_(module.weight, mean=0.0, std=std)
            if getattr(module, "bias", None) is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, ViTVQMaskGITEmbeddings):
            init.trunc_normal_(module.position_embeddings, mean=0.0, std=std)


class ViTVQMaskGITModel(ViTVQMaskGITPreTrainedModel):
    """The MaskGIT prior: `forward` predicts the codes of masked positions (and computes the training loss),
    `mask_tokens` applies the training mask, `generate` samples token sequences by iterative parallel decoding."""

    def __init__(self, config: ViTVQMaskGITConfig) -> None:
        super().__init__(config)
        sizes = TransformerSizes(
            hidden_size=config.hidden_size,
            num_hidden_layers=config.num_hidden_layers,
            num_attention_heads=config.num_attention_heads,
            intermediate_size=config.intermediate_size,
        )
        self.embeddings = ViTVQMaskGITEmbeddings(config)
        self.transformer = ViTVQTransformer(config, sizes)
        self.head = nn.Linear(config.hidden_size, config.codebook_size)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.Tensor,
        class_labels: torch.Tensor | Sequence[int] | None = None,
        labels: torch.Tensor | None = None,
        return_dict: bool | None = None,
    ) -> ViTVQMaskGITOutput:
        r"""
        Predict the code at every position of partially masked token sequences.

        Args:
            input_ids (`torch.LongTensor` of shape `(batch_size, num_latent_tokens)`): token ids in
                `[0, codebook_size)`, with `config.mask_token_id` at masked positions
                ([`~ViTVQMaskGITModel.mask_tokens`] makes them from training sequences).
            class_labels (`torch.LongTensor` of shape `(batch_size,)`, *optional*): class of each sequence in
                `[0, num_classes)`, or `config.null_class_id` for none; unset means none for all. In training mode each
                label becomes the null class with probability `config.class_label_dropout`. Only for class-conditional
                priors (`num_classes > 0`).
            labels (`torch.LongTensor` of shape `(batch_size, num_latent_tokens)`, *optional*): the unmasked token
                ids; when given, `loss` is [`masked_token_loss`] with the positions where `input_ids` holds the mask id
                as masked.
            return_dict (`bool`, *optional*): return a [`ViTVQMaskGITOutput`] (default) or a plain tuple.
        """
        input_ids = self._check_token_ids(input_ids, "input_ids", allow_mask=True)
        class_labels = self._prepare_class_labels(class_labels, input_ids.shape[0], input_ids.device)
        if self.training and class_labels is not None and self.config.class_label_dropout > 0:
            dropped = torch.rand(class_labels.shape, device=class_labels.device) < self.config.class_label_dropout
            class_labels = class_labels.masked_fill(dropped, self.config.null_class_id)
        hidden_states = self.embeddings(input_ids, class_labels)
        hidden_states = self.transformer(hidden_states, keep=slice(self.embeddings.num_prefix, None))  # (B, L, W)
        logits = self.head(hidden_states)  # (B, L, K)
        loss = None
        if labels is not None:
            labels = self._check_token_ids(labels, "labels", allow_mask=False)
            if labels.shape != input_ids.shape:
                raise ValueError(
                    f"`labels` must have the shape of `input_ids` {tuple(input_ids.shape)}, got {tuple(labels.shape)}."
                )
            loss = masked_token_loss(
                logits,
                labels,
                input_ids == self.config.mask_token_id,
                self.config.label_smoothing,
                self.config.unmasked_token_loss_weight,
            )
        return ViTVQMaskGITOutput(loss=loss, logits=logits)

    def mask_tokens(self, token_ids: torch.Tensor, generator: torch.Generator | None = None) -> torch.LongTensor:
        """Training inputs from (B, L) token ids: a copy in which [`random_token_mask`] (with `config.mask_schedule`)
        positions hold `config.mask_token_id`. Random numbers come from `generator` (default: torch's global one)."""
        token_ids = self._check_token_ids(token_ids, "token_ids", allow_mask=False)
        mask = random_token_mask(*token_ids.shape, self.config.mask_schedule, generator, token_ids.device)
        return token_ids.masked_fill(mask, self.config.mask_token_id)

    @torch.inference_mode()
    def generate(
        self,
        class_labels: torch.Tensor | Sequence[int] | None = None,
        num_images: int | None = None,
        num_steps: int = 8,
        guidance_scale: float = 1.0,
        guidance_schedule: str = "linear",
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> torch.LongTensor:
        """Sample token sequences by iterative parallel decoding (MaskGIT, as TiTok samples): start fully masked; at
        each step predict every masked position, sample a code for each from softmax(logits / t) (Gumbel-max), and
        keep the most confident of them, confidence = log p(sampled code) + t * Gumbel noise, with the temperature
        annealed as t = temperature * (1 - s / num_steps) after step s; the others are masked again, as many as
        [`masked_counts_per_step`] says. After exactly `num_steps` steps every position holds a code.

        Args:
            class_labels: (B,) classes in `[0, num_classes)` (or `null_class_id`) of a class-conditional prior; unset:
                unconditional samples (the null class).
            num_images: how many sequences to sample when `class_labels` is unset (if both are set they must agree).
            num_steps: decoding steps, in `[1, num_latent_tokens]` (TiTok: 8 for L-32 and B-64, 64 for S-128).
            guidance_scale: classifier-free guidance, logits = uncond + scale * (cond - uncond): 1 is none (one forward
                pass per step), 0 the unconditional model; TiTok's cfg_scale c is 1 + c here.
            guidance_schedule: `"linear"` (from 1 at the first step towards `guidance_scale`, TiTok's) or
                `"constant"`; see [`guidance_scales`].
            temperature: >= 0, scale of the Gumbel noise of both the sampling and the confidence (TiTok's
                `randomize_temperature`: 9.5 for L-32); 0 decodes greedily.
            generator: the source of every random number, for reproducible samples (default: torch's global one).

        Returns:
            `(batch_size, num_latent_tokens)` int64 token ids in `[0, codebook_size)`.
        """
        config = self.config
        batch_size = self._sample_count(class_labels, num_images)
        class_labels = self._prepare_class_labels(class_labels, batch_size, self.device)
        if temperature < 0:
            raise ValueError(f"`temperature` must be >= 0, got {temperature}.")
        counts = masked_counts_per_step(config.num_latent_tokens, num_steps, config.mask_schedule)
        scales = guidance_scales(guidance_scale, num_steps, guidance_schedule)
        guided = class_labels is not None and bool((class_labels != config.null_class_id).any())
        token_ids = torch.full((batch_size, config.num_latent_tokens), config.mask_token_id, device=self.device)
        for step, (num_masked, scale) in enumerate(zip(counts, scales, strict=True)):
            log_probs = self._guided_log_probs(token_ids, class_labels, scale if guided else 1.0)
            noise_scale = temperature * (1 - (step + 1) / num_steps)
            sampled = (log_probs + noise_scale * gumbel_noise(log_probs.shape, generator, self.device)).argmax(-1)
            is_masked = token_ids == config.mask_token_id
            sampled = torch.where(is_masked, sampled, token_ids)
            confidence = log_probs.gather(-1, sampled[..., None]).squeeze(-1)
            confidence = confidence + noise_scale * gumbel_noise(confidence.shape, generator, self.device)
            confidence = confidence.masked_fill(~is_masked, math.inf)  # committed tokens stay
            remask = confidence.topk(num_masked, dim=-1, largest=False).indices  # (B, num_masked), lowest first
            token_ids = sampled.scatter(1, remask, config.mask_token_id)
        return token_ids

    def _guided_log_probs(
        self, token_ids: torch.Tensor, class_labels: torch.Tensor | None, scale: float
    ) -> torch.Tensor:
        """(B, L, K) float32 log-probabilities of the guided logits uncond + scale * (cond - uncond); one forward pass
        when `scale` is 1, else one of twice the batch (conditional, then null class)."""
        if scale == 1.0:
            logits = self(token_ids, class_labels).logits
        else:
            null = torch.full_like(class_labels, self.config.null_class_id)
            both = self(token_ids.repeat(2, 1), torch.cat([class_labels, null])).logits
            cond, uncond = both.chunk(2)
            logits = uncond + scale * (cond - uncond)
        return torch.log_softmax(logits.float(), dim=-1)

    def _sample_count(self, class_labels: torch.Tensor | Sequence[int] | None, num_images: int | None) -> int:
        if class_labels is None:
            if num_images is None or isinstance(num_images, bool) or not isinstance(num_images, int) or num_images < 1:
                raise ValueError(f"Pass `class_labels` or a positive integer `num_images`, got {num_images!r}.")
            return num_images
        count = len(class_labels)
        if num_images is not None and num_images != count:
            raise ValueError(f"`num_images` ({num_images}) differs from the number of `class_labels` ({count}).")
        return count

    def _prepare_class_labels(
        self, class_labels: torch.Tensor | Sequence[int] | None, batch_size: int, device: torch.device
    ) -> torch.LongTensor | None:
        """(B,) int64 labels checked against `[0, num_classes]` (the last: the null class), the null class for all when
        unset; None for an unconditional prior (which refuses labels)."""
        config = self.config
        if config.num_classes == 0:
            if class_labels is not None:
                raise ValueError(
                    "This prior is unconditional (num_classes=0): it takes no `class_labels`. Leave them unset, or "
                    "train a class-conditional prior (num_classes > 0)."
                )
            return None
        if class_labels is None:
            return torch.full((batch_size,), config.null_class_id, dtype=torch.long, device=device)
        class_labels = torch.as_tensor(class_labels, device=device)
        if class_labels.is_floating_point() or class_labels.dtype == torch.bool or class_labels.shape != (batch_size,):
            raise ValueError(
                f"`class_labels` must be {batch_size} integers (one per sequence), got a {class_labels.dtype} "
                f"tensor of shape {tuple(class_labels.shape)}."
            )
        class_labels = class_labels.long()
        bad = (class_labels < 0) | (class_labels > config.null_class_id)
        if not torch.compiler.is_compiling() and bad.any():
            raise ValueError(
                f"`class_labels` must lie in [0, {config.num_classes}) (or be {config.null_class_id}, the null class: "
                f"no class), got {preview(class_labels[bad].unique().tolist())}."
            )
        return class_labels

    def _check_token_ids(self, token_ids: torch.Tensor, name: str, allow_mask: bool) -> torch.LongTensor:
        """Check the type, shape and range of (B, L) ids (`allow_mask`: the mask id too); return them as int64."""
        config = self.config
        if not isinstance(token_ids, torch.Tensor) or token_ids.is_floating_point() or token_ids.dtype == torch.bool:
            found = token_ids.dtype if isinstance(token_ids, torch.Tensor) else type(token_ids)
            raise TypeError(f"`{name}` must be an integer torch.Tensor, got {found}.")
        if token_ids.ndim != 2 or token_ids.shape[1] != config.num_latent_tokens:
            raise ValueError(
                f"`{name}` must have shape (batch_size, {config.num_latent_tokens}), got {tuple(token_ids.shape)}."
            )
        token_ids = token_ids.long()
        high = config.codebook_size + int(allow_mask)
        bad = (token_ids < 0) | (token_ids >= high)
        if not torch.compiler.is_compiling() and bad.any():
            mask_note = f" (the last, {config.mask_token_id}, is the mask id)" if allow_mask else ""
            raise ValueError(
                f"`{name}` must lie in [0, {high}){mask_note}, got {int(bad.sum())} id(s) outside it: "
                f"{preview(token_ids[bad].unique().tolist())}."
            )
        return token_ids


__all__ = [
    "ViTVQMaskGITModel",
    "ViTVQMaskGITOutput",
    "ViTVQMaskGITPreTrainedModel",
    "guidance_scales",
    "gumbel_noise",
    "mask_ratio",
    "masked_counts_per_step",
    "masked_token_loss",
    "random_token_mask",
]
