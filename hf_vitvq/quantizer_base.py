"""The contract every quantizer of the package follows, and what they share: codebook-health tracking, entropy
terms, and the two collective operations that keep codebooks identical across processes.

A quantizer maps latents (B, L, D) to a [`QuantizerOutput`] and has `indices_to_codes(indices)` for the decoder path.
Distributed training: every statistic that changes a codebook outside the optimizer (EMA sums, k-means sums, dead-code
counts) is summed over processes with [`all_reduce_sum`], and every random choice (k-means seeds, restart vectors) is
taken on process 0 and sent to the others with [`broadcast_from_main`]; both are no-ops without `torch.distributed`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn
from transformers import initialization as init


@dataclass
class QuantizerOutput:
    """What a quantizer returns for latents of shape (B, L, D_in).

    Attributes:
        quantized: (B, L, D) float32 quantized latents; gradients reach the input through them (straight-through,
            rotation trick, or the reparameterised sample of the `kl` quantizer).
        indices: int64 code ids, (B, L), or (B, L, num_quantizers) for residual VQ; `None` for continuous tokens.
        losses: named scalar loss terms, already weighted; their sum is the quantizer's training loss.
        stats: named scalar statistics of this batch (no gradient), e.g. `perplexity`.
    """

    quantized: torch.Tensor
    indices: torch.Tensor | None
    losses: dict[str, torch.Tensor] = field(default_factory=dict)
    stats: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def loss(self) -> torch.Tensor:
        """Sum of the loss terms (a float32 zero when there are none)."""
        return sum(self.losses.values(), torch.zeros((), device=self.quantized.device))


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum `tensor` in place over all processes when `torch.distributed` is initialised; return it."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_from_main(tensor: torch.Tensor) -> torch.Tensor:
    """Overwrite `tensor` in place with process 0's copy when `torch.distributed` is initialised; return it."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.broadcast(tensor, src=0)
    return tensor


def entropy(probs: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Shannon entropy (nats) of the distributions along `dim`."""
    return -(probs * torch.log(probs.clamp(min=1e-10))).sum(dim=dim)


def code_perplexity(indices: torch.Tensor, codebook_size: int) -> torch.Tensor:
    """exp(entropy) of the code frequencies in `indices`: 1 when one code is used, `codebook_size` at best."""
    counts = torch.bincount(indices.reshape(-1), minlength=codebook_size).float()
    return entropy(counts / counts.sum().clamp(min=1)).exp()


def entropy_loss(logits: torch.Tensor, codebook_weight: float) -> torch.Tensor:
    """Entropy regulariser on soft code assignments `logits` (N, K), as in MAGVIT-v2 (arXiv 2310.05737):

    mean_n H(p_n) - codebook_weight * H(mean_n p_n), p_n = softmax(logits_n).

    Low per-sample entropy makes each assignment confident; high entropy of the batch-average assignment spreads the
    batch over many codes.
    """
    probs = logits.float().softmax(dim=-1)
    return entropy(probs).mean() - codebook_weight * entropy(probs.mean(dim=0))


class CodebookUsage(nn.Module):
    """Sliding-window codebook health: which codes were hit, how often, and which are dead.

    Buffers: `step` (number of updates), `last_hit` (K,) the step at which each code was last hit (or reset),
    `frequency` (K,) an exponential moving average of hits per step with decay `1 - 1 / window`. Hit counts are summed
    over processes, so every rank holds the same numbers. The buffers are saved with the model only when a dead-code
    restart depends on them (`persistent`).
    """

    def __init__(self, codebook_size: int, window: int, persistent: bool) -> None:
        super().__init__()
        self.codebook_size = codebook_size
        self.window = window
        self.register_buffer("step", torch.zeros((), dtype=torch.long), persistent=persistent)
        self.register_buffer("last_hit", torch.zeros(codebook_size, dtype=torch.long), persistent=persistent)
        self.register_buffer("frequency", torch.zeros(codebook_size), persistent=persistent)

    def init_weights(self) -> None:
        """No step taken, no code hit yet."""
        init.zeros_(self.step)
        init.zeros_(self.last_hit)
        init.zeros_(self.frequency)

    @torch.no_grad()
    def update(self, indices: torch.Tensor) -> None:
        """Count one training step's code ids (any shape, values in [0, K))."""
        counts = all_reduce_sum(torch.bincount(indices.reshape(-1), minlength=self.codebook_size).float())
        self.step += 1
        self.last_hit.masked_fill_(counts > 0, self.step)
        self.frequency.lerp_(counts, 1.0 / self.window)

    def dead_codes(self, unused_steps: int, threshold: float) -> torch.Tensor:
        """(K,) bool: codes not hit for `unused_steps` steps (0: off) or with `frequency < threshold` (0: off); none
        before the first step is counted."""
        dead = torch.zeros(self.codebook_size, dtype=torch.bool, device=self.frequency.device)
        if unused_steps > 0:
            dead |= self.step - self.last_hit >= unused_steps
        if threshold > 0:
            dead |= self.frequency < threshold
        return dead & (self.step > 0)

    @torch.no_grad()
    def reset_(self, mask: torch.Tensor, frequency: float) -> None:
        """Mark the codes in `mask` as fresh (re-seeded): hit now, with hits-per-step average `frequency`, or that of
        one hit (1 / window) if more, so that they count as hit."""
        self.last_hit.masked_fill_(mask, self.step)
        self.frequency.masked_fill_(mask, max(frequency, 1.0 / self.window))

    @torch.no_grad()
    def stats(self) -> dict[str, torch.Tensor]:
        """Window statistics: `codebook_usage` (fraction of codes hit in the last `window` steps; re-seeded codes
        count as hit when re-seeded), `window_perplexity` (of `code_frequency`), `dead_codes` (codes not hit in the
        window), and `code_frequency` (K,), the normalised hits-per-step histogram."""
        hit = (self.step - self.last_hit < self.window) & (self.frequency > 0)
        histogram = self.frequency / self.frequency.sum().clamp(min=1e-10)
        return {
            "codebook_usage": hit.float().mean(),
            "window_perplexity": entropy(histogram).exp(),
            "dead_codes": (~hit).sum(),
            "code_frequency": histogram,
        }


class Quantizer(nn.Module):
    """Base class of the quantizers: `forward(latents) -> QuantizerOutput` and `indices_to_codes(indices)`.

    Subclasses that keep state outside their parameters override `init_weights` (called by
    `ViTVQPreTrainedModel._init_weights` after their submodules are initialised, and only for a quantizer that holds
    a parameter or buffer of its own: transformers skips the others). Those that count code hits do so in a
    `CodebookUsage` submodule named `usage`, which `codebook_health` reads (residual VQ combines its levels').
    """

    #: Whether the quantizer outputs continuous tokens (no ids); `encode` then returns latents.
    is_continuous: bool = False

    @property
    def is_training_step(self) -> bool:
        """Whether this forward is a training step: train mode with gradients recorded. Only a training step changes
        the quantizer's state (codebook maintenance, usage counts) or samples; so `ViTVQModel.encode`, which runs in
        inference mode, is deterministic and leaves the model as it was, even on a model left in train mode."""
        return self.training and torch.is_grad_enabled()

    def init_weights(self) -> None:
        """Initialise buffers and parameters that depend on other weights. Default: nothing to do."""

    def codebook_health(self) -> dict[str, torch.Tensor]:
        """Sliding-window statistics of the codebook (see [`CodebookUsage.stats`]) of a quantizer that counts its code
        hits in a `CodebookUsage` submodule named `usage`; empty without one."""
        usage = getattr(self, "usage", None)
        return usage.stats() if isinstance(usage, CodebookUsage) else {}

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError
