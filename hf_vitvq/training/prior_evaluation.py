"""How well a prior models held-out token sequences, in bits per token, against the baselines a prior must beat, and
how many of its samples copy a training sequence.

- Uniform baseline: log2(K) bits per token, the tokenizer's raw rate.
- Unigram baseline: the training set's code frequencies (add-one smoothed), scored on the held-out tokens; for
  labelled data also per class (the frequencies of the training sequences of the held-out sequence's class).
- Autoregressive prior: its exact negative log-likelihood, -log2 p(code_i | condition, code_<i) averaged over the
  L positions, with p renormalised over the codes (what `generate()` samples from at temperature 1: the other ids are
  suppressed).
- MaskGIT prior: it defines no likelihood, but its predictions do define one of an any-order autoregressive model
  (decode one position at a time, in a uniformly random order); by Jensen's inequality over the orders,
  -log2 p(x) <= sum_{m=1..L} E[CE of a random masked position | m positions masked]. Per token that bound is
  E_{m ~ U{1..L}} E_{m random positions masked}[mean cross-entropy over the masked positions], which
  [`maskgit_bits_per_token`] estimates without bias by drawing m and the positions per sequence.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers import PreTrainedModel

from hf_vitvq import ViTVQMaskGITModel
from hf_vitvq.ar_prior import ARPriorVocabulary

from .prior_data import TokenSequences


def uniform_bits_per_token(codebook_size: int) -> float:
    """log2(K): every code equally likely."""
    return math.log2(codebook_size)


def unigram_bits_per_token(train_ids: torch.Tensor, eval_ids: torch.Tensor, codebook_size: int) -> float:
    """Bits per token of `eval_ids` under the code frequencies of `train_ids`, add-one smoothed:
    p(k) = (count(k) + 1) / (n + K)."""
    counts = torch.bincount(train_ids.flatten(), minlength=codebook_size).double()
    log2_probs = torch.log2((counts + 1) / (counts.sum() + codebook_size))
    return -log2_probs[eval_ids.flatten()].mean().item()


def class_unigram_bits_per_token(train: TokenSequences, held_out: TokenSequences, codebook_size: int) -> float:
    """Bits per token of `held_out` under the code frequencies of the training sequences of the same class (each
    class's counts add-one smoothed): what a prior that knows the class but ignores the other tokens achieves."""
    num_classes = int(max(train.class_labels.max(), held_out.class_labels.max())) + 1
    # (C * K,) counts of (class, code) pairs -> (C, K)
    pairs = train.class_labels[:, None] * codebook_size + train.token_ids
    counts = torch.bincount(pairs.flatten(), minlength=num_classes * codebook_size).view(num_classes, -1).double()
    log2_probs = torch.log2((counts + 1) / (counts.sum(dim=1, keepdim=True) + codebook_size))
    return -log2_probs[held_out.class_labels[:, None], held_out.token_ids].mean().item()


def _batches(sequences: TokenSequences, batch_size: int, device: torch.device):
    for start in range(0, len(sequences), batch_size):
        part = sequences.select(slice(start, start + batch_size))
        labels = None if part.class_labels is None else part.class_labels.to(device)
        yield part.token_ids.to(device), labels


@torch.no_grad()
def maskgit_bits_per_token(
    model: ViTVQMaskGITModel, sequences: TokenSequences, batch_size: int = 256, draws: int = 1, seed: int = 0
) -> float:
    """The any-order bound on the bits per token of `sequences` under a MaskGIT prior (module docstring): `draws`
    draws of (m, masked positions) per sequence from a generator seeded with `seed`, given the true classes (none
    for unconditional priors)."""
    was_training = model.training
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    total, length = 0.0, sequences.sequence_length
    for token_ids, labels in _batches(sequences, batch_size, model.device):
        labels = labels if model.config.num_classes else None
        for _ in range(draws):
            num_masked = torch.randint(1, length + 1, (len(token_ids), 1), generator=generator)  # (B, 1)
            ranks = torch.rand(token_ids.shape, generator=generator).argsort(dim=-1).argsort(dim=-1)
            mask = (ranks < num_masked).to(model.device)
            logits = model(token_ids.masked_fill(mask, model.config.mask_token_id), labels).logits
            # (B, L, K) -> (B*L, K)
            ce = nn.functional.cross_entropy(logits.flatten(0, 1).float(), token_ids.flatten(), reduction="none")
            total += ((ce.view_as(mask) * mask).sum(dim=1) / num_masked.squeeze(1).to(model.device)).sum().item()
    model.train(was_training)
    return total / (len(sequences) * draws) / math.log(2)


@torch.no_grad()
def ar_bits_per_token(model: PreTrainedModel, sequences: TokenSequences, batch_size: int = 256) -> float:
    """The exact bits per token of `sequences` under an autoregressive prior (a causal LM with a `vitvq_prior`
    vocabulary), given their classes (none for unconditional priors), over the codes only."""
    vocabulary = ARPriorVocabulary.from_config(model.config)
    was_training = model.training
    model.eval()
    total = 0.0
    for token_ids, labels in _batches(sequences, batch_size, model.device):
        input_ids = vocabulary.input_ids(token_ids, labels if vocabulary.num_classes else None)
        # the prediction of code i is at position i - 1 (the condition token is position 0): (B, L, K) over the codes
        logits = model(input_ids).logits[:, :-1, : vocabulary.codebook_size]
        ce = nn.functional.cross_entropy(logits.flatten(0, 1).float(), token_ids.flatten(), reduction="sum")
        total += ce.item()
    model.train(was_training)
    return total / sequences.token_ids.numel() / math.log(2)


def prior_bits_per_token(model: PreTrainedModel, sequences: TokenSequences, batch_size: int = 256) -> float:
    """[`maskgit_bits_per_token`] or [`ar_bits_per_token`], by the kind of `model`."""
    if isinstance(model, ViTVQMaskGITModel):
        return maskgit_bits_per_token(model, sequences, batch_size)
    return ar_bits_per_token(model, sequences, batch_size)


def memorisation_fraction(samples: torch.Tensor, train_ids: torch.Tensor) -> float:
    """The fraction of the (S, L) `samples` identical to one of the (N, L) training sequences."""
    seen = {row.tobytes() for row in train_ids.cpu().long().numpy()}
    return sum(row.tobytes() in seen for row in samples.cpu().long().numpy()) / max(1, len(samples))
