"""An autoregressive prior over ViT-VQ token ids with no model code of our own: a stock transformers causal LM
(`LlamaForCausalLM`, or any `AutoModelForCausalLM` config) over a vocabulary of the tokenizer's codes, class tokens
and a null token, sampled with its own `generate()` (as LlamaGen and FlexTok use autoregressive priors).

Vocabulary layout (`ARPriorVocabulary`), K codes and C classes:

    [0, K)          the tokenizer's codes (an id is its code: no mapping)
    K + c           class c, for c in [0, C)
    K + C           null: "no class" (unconditional sequences, label dropout, the unconditional pass of guidance)

A sequence is `[condition token, code_1, ..., code_L]`: the prompt is the condition token and `generate()` writes the L
codes, restricted to code ids by `suppress_tokens`. Classifier-free guidance is transformers' own
(`GenerationConfig.guidance_scale` with the null token as `negative_prompt_ids`, which runs
`UnbatchedClassifierFreeGuidanceLogitsProcessor`: scores = uncond + scale * (cond - uncond) in log-probabilities, so 1
is none and 0 the unconditional model). The layout is saved in the model's config as the attribute `vitvq_prior`, so a
saved folder knows its tokenizer's shape.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from transformers import AutoConfig, PretrainedConfig, PreTrainedModel

# The config attribute that holds the vocabulary layout of an autoregressive prior.
CONFIG_ATTRIBUTE = "vitvq_prior"


@dataclass(frozen=True)
class ARPriorVocabulary:
    """The token layout of an autoregressive prior over `sequence_length` codes of `codebook_size`, conditioned on
    `num_classes` classes (0: unconditional; the null token is then every sequence's condition)."""

    codebook_size: int
    sequence_length: int
    num_classes: int = 0

    def __post_init__(self) -> None:
        for name, minimum in (("codebook_size", 2), ("sequence_length", 1), ("num_classes", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"`{name}` must be an integer >= {minimum}, got {value!r}.")

    @property
    def null_token_id(self) -> int:
        """The condition token of unconditional sequences: `codebook_size + num_classes`."""
        return self.codebook_size + self.num_classes

    @property
    def vocab_size(self) -> int:
        """Codes, class tokens and the null token."""
        return self.codebook_size + self.num_classes + 1

    @property
    def non_code_token_ids(self) -> list[int]:
        """The ids generation must never produce (class tokens and the null token): its `suppress_tokens`."""
        return list(range(self.codebook_size, self.vocab_size))

    def condition_tokens(self, class_labels: torch.Tensor | Sequence[int] | None, batch_size: int) -> torch.LongTensor:
        """(B, 1) condition tokens: the class tokens of `class_labels` (in `[0, num_classes]`, the last meaning no
        class), or the null token for all when unset."""
        if class_labels is None:
            return torch.full((batch_size, 1), self.null_token_id, dtype=torch.long)
        if self.num_classes == 0:
            raise ValueError(
                "This prior is unconditional (num_classes=0): it takes no `class_labels`. Leave them unset, or train "
                "a class-conditional prior on data with labels."
            )
        labels = torch.as_tensor(class_labels)
        if labels.is_floating_point() or labels.dtype == torch.bool or labels.shape != (batch_size,):
            raise ValueError(
                f"`class_labels` must be {batch_size} integers (one per sequence), got a {labels.dtype} tensor of "
                f"shape {tuple(labels.shape)}."
            )
        labels = labels.long()
        bad = (labels < 0) | (labels > self.num_classes)
        if bad.any():
            raise ValueError(
                f"`class_labels` must lie in [0, {self.num_classes}) (or be {self.num_classes}: no class), got "
                f"{sorted(set(labels[bad].tolist()))[:10]}."
            )
        return (self.codebook_size + labels)[:, None]

    def input_ids(
        self, token_ids: torch.Tensor, class_labels: torch.Tensor | Sequence[int] | None = None
    ) -> torch.LongTensor:
        """(B, 1 + L) model inputs: the condition token, then the (B, L) codes (checked against the layout)."""
        if token_ids.ndim != 2 or token_ids.shape[1] != self.sequence_length:
            raise ValueError(
                f"`token_ids` must have shape (batch_size, {self.sequence_length}), got {tuple(token_ids.shape)}."
            )
        bad = (token_ids < 0) | (token_ids >= self.codebook_size)
        if bad.any():
            raise ValueError(
                f"`token_ids` must lie in [0, {self.codebook_size}), got {sorted(set(token_ids[bad].tolist()))[:10]}."
            )
        condition = self.condition_tokens(class_labels, token_ids.shape[0]).to(token_ids.device)
        return torch.cat([condition, token_ids.long()], dim=1)

    @classmethod
    def from_config(cls, config: PretrainedConfig) -> ARPriorVocabulary:
        """The layout saved in a causal LM's config by [`ar_prior_config`]."""
        values = getattr(config, CONFIG_ATTRIBUTE, None)
        if not isinstance(values, dict):
            raise ValueError(
                f"This {type(config).__name__} has no `{CONFIG_ATTRIBUTE}` entry: it is not an autoregressive prior "
                "written by training/train_prior.py --prior ar (which records the codebook size, sequence length and "
                "classes there)."
            )
        return cls(**values)


def ar_prior_config(vocabulary: ARPriorVocabulary, model_type: str = "llama", **kwargs: Any) -> PretrainedConfig:
    """The config of a stock causal LM (`AutoConfig.for_model(model_type, **kwargs)`, e.g. Llama sizes
    `hidden_size=..., num_hidden_layers=...`) over `vocabulary`: its `vocab_size`, 1 + L positions (unless `kwargs` set
    them), no BOS/EOS/pad ids (a sequence is its condition token and exactly L codes: generation never stops early),
    and the layout saved as `config.vitvq_prior`."""
    config = AutoConfig.for_model(model_type, **kwargs)
    config.vocab_size = vocabulary.vocab_size
    config.bos_token_id = config.eos_token_id = config.pad_token_id = None
    positions = 1 + vocabulary.sequence_length
    for name in ("max_position_embeddings", "n_positions"):  # Llama-style and GPT-2-style names
        if getattr(config, name, None) is None:
            continue
        if name not in kwargs:
            setattr(config, name, positions)
        elif kwargs[name] < positions:
            raise ValueError(f"`{name}` ({kwargs[name]}) must be at least 1 + sequence_length = {positions}.")
    setattr(config, CONFIG_ATTRIBUTE, asdict(vocabulary))
    return config


def set_generation_defaults(model: PreTrainedModel) -> None:
    """Make a plain `model.generate(condition_tokens)` sample one image's codes: the L new tokens, codes only
    (`suppress_tokens`), sampled from the whole distribution (`top_k=0`: not transformers' default top 50); saved with
    the model in generation_config.json."""
    vocabulary = ARPriorVocabulary.from_config(model.config)
    model.generation_config.update(
        max_new_tokens=vocabulary.sequence_length,
        suppress_tokens=vocabulary.non_code_token_ids,
        do_sample=True,
        top_k=0,
    )


def seeded_by(generator: torch.Generator | None, device: torch.device) -> contextlib.AbstractContextManager:
    """A context in which torch's global random state (which `generate()` samples from) is seeded from `generator`
    and restored afterwards; nothing changes without a generator."""
    if generator is None:
        return contextlib.nullcontext()
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
    devices = [device] if device.type == "cuda" else []

    @contextlib.contextmanager
    def context():
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            yield

    return context()


@torch.inference_mode()
def generate_ar_tokens(
    model: PreTrainedModel,
    class_labels: torch.Tensor | Sequence[int] | None = None,
    num_images: int | None = None,
    guidance_scale: float = 1.0,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.LongTensor:
    """Sample (B, L) code ids from an autoregressive prior with its own `generate()`: sampling with `temperature`,
    `top_k` and `top_p` (temperature 0: greedy), classifier-free guidance with `guidance_scale` (1: none; the
    unconditional branch is the null token), codes only (`suppress_tokens`). `generator` seeds the sampling
    reproducibly (torch's global state is restored afterwards)."""
    vocabulary = ARPriorVocabulary.from_config(model.config)
    if temperature < 0:
        raise ValueError(f"`temperature` must be >= 0, got {temperature}.")
    if class_labels is None:
        if num_images is None or isinstance(num_images, bool) or not isinstance(num_images, int) or num_images < 1:
            raise ValueError(f"Pass `class_labels` or a positive integer `num_images`, got {num_images!r}.")
        batch_size = num_images
    else:
        batch_size = len(class_labels)
        if num_images is not None and num_images != batch_size:
            raise ValueError(f"`num_images` ({num_images}) differs from the number of `class_labels` ({batch_size}).")
    prompt = vocabulary.condition_tokens(class_labels, batch_size).to(model.device)
    guided = guidance_scale != 1.0 and class_labels is not None
    sampling = {"do_sample": temperature > 0}
    if temperature > 0:
        sampling.update(temperature=temperature, top_k=top_k or 0, top_p=top_p)  # 0: no top-k (not transformers' 50)
    with seeded_by(generator, model.device):
        sequences = model.generate(
            prompt,
            attention_mask=torch.ones_like(prompt),
            max_new_tokens=vocabulary.sequence_length,
            suppress_tokens=vocabulary.non_code_token_ids,
            guidance_scale=guidance_scale if guided else None,
            negative_prompt_ids=torch.full_like(prompt, vocabulary.null_token_id) if guided else None,
            **sampling,
        )
    return sequences[:, 1:]


__all__ = ["ARPriorVocabulary", "ar_prior_config", "generate_ar_tokens", "seeded_by", "set_generation_defaults"]
