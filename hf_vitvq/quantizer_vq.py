"""Vector quantization against a codebook (VQ-VAE, arXiv 1711.00937), with the known fixes for codebook collapse.

- l2-normalised (cosine) codes and low-dimensional factorized codes (ViT-VQGAN, arXiv 2110.04627; TiTok);
- an EMA codebook with Laplace smoothing instead of the codebook loss (VQ-VAE-2, arXiv 1906.00446);
- k-means initialisation on the first training batch and dead-code restart from the batch's encoder outputs
  (Jukebox, arXiv 2005.00341; SoundStream, arXiv 2107.03312);
- an entropy regulariser on soft assignments (MAGVIT-v2, arXiv 2310.05737);
- the rotation trick instead of the straight-through copy (Fifty et al., arXiv 2410.06424);
- SimVQ: a frozen random codebook times one learned linear map (Zhu et al., arXiv 2411.02038).

Math lives in pure functions so that it can be tested on its own; `Codebook` and its subclasses hold the codes and
their update rule, `VectorQuantizer` the lookup, the gradient estimator and the codebook maintenance.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init

from .configuration_vitvq import ViTVQConfig
from .quantizer_base import (
    CodebookUsage,
    Quantizer,
    QuantizerOutput,
    all_reduce_sum,
    broadcast_from_main,
    code_perplexity,
    entropy_loss,
)

# Nearest-code search holds at most this many distances at once (64 MiB of float32), whatever K is.
MAX_DISTANCES_PER_CHUNK = 2**24


def squared_distances(vectors: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances between (N, D) vectors and (K, D) codes, as one matmul: (N, K).

    (z - e)^2 = z^2 + e^2 - 2 z.e
    """
    return vectors.pow(2).sum(dim=1, keepdim=True) + codebook.pow(2).sum(dim=1) - 2 * vectors @ codebook.t()


def nearest_code(vectors: torch.Tensor, codebook: torch.Tensor, chunk_size: int | None = None) -> torch.Tensor:
    """Index of the nearest code (Euclidean) for each of the (N, D) vectors: (N,) int64.

    argmin_k |z - e_k|^2 = argmin_k (|e_k|^2 - 2 z.e_k): one fused matmul per chunk of `chunk_size` vectors
    (default: as many as keep (chunk_size, K) within `MAX_DISTANCES_PER_CHUNK`), so no (N, K) or (N, K, D) tensor is
    ever built. While `torch.compile` / `torch.export` trace it, one chunk: a graph that fits every batch size.
    """
    chunk_size = chunk_size or max(1, MAX_DISTANCES_PER_CHUNK // codebook.shape[0])
    chunks = [vectors] if torch.compiler.is_compiling() else vectors.split(chunk_size)
    code_norms = codebook.pow(2).sum(dim=1)  # (K,)
    return torch.cat([torch.addmm(code_norms, chunk, codebook.t(), alpha=-2).argmin(dim=1) for chunk in chunks])


def straight_through(latents: torch.Tensor, quantized: torch.Tensor) -> torch.Tensor:
    """Forward value `quantized`, gradient of the identity to `latents`: z + sg[q - z]."""
    return latents + (quantized - latents).detach()


def rotation_trick(latents: torch.Tensor, quantized: torch.Tensor) -> torch.Tensor:
    """Forward value `quantized`; the gradient reaches `latents` through sg[lambda * R] z (arXiv 2410.06424).

    R is the rotation that maps z/|z| onto q/|q| in the plane they span and lambda = |q|/|z|, so that
    lambda * R z = q. With r = (z/|z| + q/|q|) / |z/|z| + q/|q||, R = I - 2 r r^T + 2 (q/|q|)(z/|z|)^T;
    inputs (..., D).
    """
    latent_norm = latents.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    code_norm = quantized.norm(dim=-1, keepdim=True)
    z_hat = (latents / latent_norm).detach()
    q_hat = (quantized / code_norm.clamp(min=1e-12)).detach()
    r = F.normalize(z_hat + q_hat, dim=-1)
    rotated = (
        latents
        - 2 * (latents * r).sum(dim=-1, keepdim=True) * r
        + 2 * (latents * z_hat).sum(dim=-1, keepdim=True) * q_hat
    )
    return (code_norm / latent_norm).detach() * rotated


def vq_losses(latents: torch.Tensor, quantized: torch.Tensor, commitment_cost: float) -> dict[str, torch.Tensor]:
    """The two VQ-VAE loss terms.

    codebook_loss = mean((q - sg[z])^2) moves codes towards the encoder outputs;
    commitment_loss = beta * mean((sg[q] - z)^2) keeps the encoder close to its codes.
    """
    return {
        "codebook_loss": F.mse_loss(quantized, latents.detach()),
        "commitment_loss": commitment_cost * F.mse_loss(latents, quantized.detach()),
    }


def cluster_sums(vectors: torch.Tensor, indices: torch.Tensor, num_clusters: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-cluster counts (K,) and vector sums (K, D) of (N, D) vectors assigned to `indices` (N,), summed over
    processes."""
    counts = torch.bincount(indices, minlength=num_clusters).to(vectors.dtype)
    sums = vectors.new_zeros(num_clusters, vectors.shape[1]).index_add_(0, indices, vectors)
    return all_reduce_sum(counts), all_reduce_sum(sums)


def laplace_smoothing(cluster_size: torch.Tensor, epsilon: float) -> torch.Tensor:
    """(n_k + eps) / (n + K * eps) * n: cluster sizes kept away from zero, with the same total n."""
    total = cluster_size.sum()
    return (cluster_size + epsilon) / (total + cluster_size.numel() * epsilon) * total


def ema_codebook_update(
    cluster_size: torch.Tensor,
    embed_sum: torch.Tensor,
    counts: torch.Tensor,
    sums: torch.Tensor,
    decay: float,
    epsilon: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One EMA codebook step (VQ-VAE-2): N <- d N + (1 - d) n, m <- d m + (1 - d) s, e = m / smooth(N).

    Args: running `cluster_size` (K,) and `embed_sum` (K, D); this batch's `counts` (K,) and vector `sums` (K, D).
    Returns: the new cluster sizes (K,), embedding sums (K, D) and codes (K, D).
    """
    cluster_size = cluster_size.lerp(counts, 1 - decay)
    embed_sum = embed_sum.lerp(sums, 1 - decay)
    return cluster_size, embed_sum, embed_sum / laplace_smoothing(cluster_size, epsilon).unsqueeze(1)


def kmeans(samples: torch.Tensor, centroids: torch.Tensor, iterations: int, use_l2_norm: bool) -> torch.Tensor:
    """Lloyd's k-means on (N, D) `samples` from (K, D) initial `centroids`: (K, D).

    Counts and sums are summed over processes, so every rank computes the same centroids from its own samples.
    Empty clusters keep their centroid; with `use_l2_norm` centroids are renormalised (spherical k-means).
    """
    for _ in range(iterations):
        counts, sums = cluster_sums(samples, nearest_code(samples, centroids), centroids.shape[0])
        means = sums / counts.clamp(min=1).unsqueeze(1)
        centroids = torch.where(counts.unsqueeze(1) > 0, means, centroids)
        if use_l2_norm:
            centroids = F.normalize(centroids, dim=-1)
    return centroids


def rows_for(mask: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
    """Rows of the (N, D) `vectors` for the selected entries of the (K,) bool `mask`: (K, D), distinct random rows
    for the selected entries (cycling through them when more than N are selected), arbitrary rows elsewhere. Drawn on
    process 0 and broadcast to the others; no host sync (the number selected is never read)."""
    permutation = torch.randperm(vectors.shape[0], device=vectors.device)
    slot = (mask.long().cumsum(0) - 1).clamp(min=0) % vectors.shape[0]  # i-th selected entry -> i-th drawn row
    return broadcast_from_main(vectors[permutation[slot]].contiguous())


def linear_fp32(layer: nn.Linear, inputs: torch.Tensor) -> torch.Tensor:
    """`layer(inputs)` computed in float32 whatever the layer's dtype."""
    bias = None if layer.bias is None else layer.bias.float()
    return F.linear(inputs.float(), layer.weight.float(), bias)


class VectorQuantizer(Quantizer):
    """Nearest-neighbour quantizer with a (codebook_size, D) codebook `embedding` learned through the codebook loss;
    D = `factorized_code_dim` when set (latents are then projected codebook_dim -> D for the search and codes
    projected back), else `codebook_dim`.

    With `use_l2_norm_codes`, latents and codes are l2-normalised before the search, so the nearest code is the most
    cosine-similar one. In a training step (see [`Quantizer.is_training_step`]) it also maintains the codebook: k-means
    initialisation on the first batch, dead-code restarts from the batch's latents, and usage statistics, all
    synchronised across processes. It keeps no state outside its buffers, so training resumes exactly.
    Subclasses change how the codes are parameterised and updated ([`EMAVectorQuantizer`], [`SimVQQuantizer`]).
    Runs in float32 under autocast.
    """

    def __init__(self, config: ViTVQConfig) -> None:
        super().__init__()
        self.codebook_size = config.codebook_size
        self.commitment_cost = config.commitment_cost
        self.use_l2_norm = config.use_l2_norm_codes
        self.entropy_loss_weight = config.entropy_loss_weight
        self.entropy_temperature = config.entropy_temperature
        self.codebook_entropy_weight = config.codebook_entropy_weight
        self.kmeans_iterations = config.kmeans_iterations
        self.dead_code_steps = config.dead_code_steps
        self.dead_code_threshold = config.dead_code_threshold
        dim = config.factorized_code_dim or config.codebook_dim
        self.in_projection = nn.Linear(config.codebook_dim, dim) if config.factorized_code_dim else None
        self.out_projection = nn.Linear(dim, config.codebook_dim) if config.factorized_code_dim else None
        self.embedding = nn.Embedding(config.codebook_size, dim)
        self.estimator: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = (
            rotation_trick if config.use_rotation_trick else straight_through
        )
        self.restarts_dead_codes = config.dead_code_steps > 0 or config.dead_code_threshold > 0
        self.usage = CodebookUsage(config.codebook_size, config.usage_window, persistent=self.restarts_dead_codes)
        if config.kmeans_init:
            self.register_buffer("kmeans_done", torch.zeros((), dtype=torch.bool))
        else:
            self.kmeans_done = None

    def init_weights(self) -> None:
        if self.kmeans_done is not None:
            init.zeros_(self.kmeans_done)

    def codes(self) -> torch.Tensor:
        """The (K, D) float32 codes as the search sees them (normalised when `use_l2_norm`)."""
        codes = self.embedding.weight.float()
        return F.normalize(codes, dim=-1) if self.use_l2_norm else codes

    def codebook_losses(self, latents: torch.Tensor, quantized: torch.Tensor) -> dict[str, torch.Tensor]:
        """Loss terms for (..., D) latents and their codes: codebook and commitment loss."""
        return vq_losses(latents, quantized, self.commitment_cost)

    def update_codebook_(self, vectors: torch.Tensor, indices: torch.Tensor) -> None:
        """Update after a training step's (N, D) vectors were assigned to `indices` (N,); gradient codebooks: no-op."""

    @torch.no_grad()
    def replace_codes_(self, mask: torch.Tensor, vectors: torch.Tensor) -> None:
        """Set the codes selected by the (K,) bool `mask` to the matching rows of the (K, D) `vectors`."""
        codes = self.embedding.weight
        codes.copy_(torch.where(mask.unsqueeze(1), vectors.to(codes.dtype), codes))

    def forward(self, latents: torch.Tensor) -> QuantizerOutput:
        """Quantize (B, L, codebook_dim) latents; see [`QuantizerOutput`] (indices (B, L))."""
        with torch.autocast(device_type=latents.device.type, enabled=False):
            latents = self.to_search_space(latents)
            batch_size, seq_len, dim = latents.shape
            flat = latents.reshape(-1, dim).detach()  # (B, L, D) -> (B*L, D)
            if self.is_training_step:
                self.maintain_codebook_(flat)
            codes = self.codes()
            indices = nearest_code(flat, codes.detach()).view(batch_size, seq_len)
            quantized = F.embedding(indices, codes)  # (B, L, D)
            losses = self.codebook_losses(latents, quantized)
            if self.entropy_loss_weight > 0:
                logits = -squared_distances(latents.reshape(-1, dim), codes) / self.entropy_temperature  # (B*L, K)
                losses["entropy_loss"] = self.entropy_loss_weight * entropy_loss(logits, self.codebook_entropy_weight)
            if self.is_training_step:
                self.update_codebook_(flat, indices.reshape(-1))
                self.usage.update(indices)
            stats = {"perplexity": code_perplexity(indices, self.codebook_size)}
            return QuantizerOutput(self.from_search_space(self.estimator(latents, quantized)), indices, losses, stats)

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        """Look up (...) int64 code ids: (..., codebook_dim) float32 codes, as the decoder reads them."""
        return self.from_search_space(F.embedding(indices, self.codes()))

    def to_search_space(self, latents: torch.Tensor) -> torch.Tensor:
        """(..., codebook_dim) latents -> (..., D) float32 vectors the codes are compared with."""
        latents = latents.float() if self.in_projection is None else linear_fp32(self.in_projection, latents)
        return F.normalize(latents, dim=-1) if self.use_l2_norm else latents

    def from_search_space(self, codes: torch.Tensor) -> torch.Tensor:
        """(..., D) codes -> (..., codebook_dim) float32 decoder inputs."""
        return codes if self.out_projection is None else linear_fp32(self.out_projection, codes)

    @torch.no_grad()
    def maintain_codebook_(self, vectors: torch.Tensor) -> None:
        """Before a training lookup on (N, D) `vectors`: k-means init on the first batch; later, re-seed the dead
        codes with rows of `vectors`, which then find them in this very lookup. Both wait for a batch that holds
        vectors (an empty one has none to draw from; under DDP, then, every process must have an empty batch)."""
        if vectors.shape[0] == 0:
            return
        if self.kmeans_done is not None and not self.kmeans_done:
            every_code = torch.ones(self.codebook_size, dtype=torch.bool, device=vectors.device)
            centroids = kmeans(vectors, rows_for(every_code, vectors), self.kmeans_iterations, self.use_l2_norm)
            self.replace_codes_(every_code, centroids)
            self.kmeans_done.fill_(True)
        elif self.restarts_dead_codes:
            self.restart_dead_codes_(vectors)

    @torch.no_grad()
    def restart_dead_codes_(self, candidates: torch.Tensor) -> torch.Tensor:
        """Re-seed the dead codes (see [`CodebookUsage.dead_codes`]) with distinct rows of the (N, D) `candidates`
        while there are enough, the same on every process. Returns the (K,) bool mask of re-seeded codes.

        Runs every training step without reading how many codes are dead (a host sync that would stall a GPU): a step
        with none re-seeds none. The price: drawing and, with several processes, broadcasting K rows every step."""
        dead = self.usage.dead_codes(self.dead_code_steps, self.dead_code_threshold)
        self.replace_codes_(dead, rows_for(dead, candidates))
        self.usage.reset_(dead, self.dead_code_threshold)
        return dead


class EMAVectorQuantizer(VectorQuantizer):
    """[`VectorQuantizer`] whose codes follow an exponential moving average of the latents assigned to them (no
    codebook gradient, no codebook loss).

    Buffers `cluster_size` (K,) and `embed_sum` (K, D) are saved with the model so that training resumes exactly;
    `embedding.weight = embed_sum / laplace_smoothing(cluster_size)`.
    """

    def __init__(self, config: ViTVQConfig) -> None:
        super().__init__(config)
        self.decay = config.ema_decay
        self.epsilon = config.ema_epsilon
        self.embedding.weight.requires_grad_(False)
        self.register_buffer("cluster_size", torch.ones(self.codebook_size))
        self.register_buffer("embed_sum", torch.zeros_like(self.embedding.weight))

    def init_weights(self) -> None:
        """Every code starts as a cluster of size 1 holding itself, so unused codes stay where they are."""
        super().init_weights()
        init.ones_(self.cluster_size)
        init.copy_(self.embed_sum, self.embedding.weight)

    def codebook_losses(self, latents: torch.Tensor, quantized: torch.Tensor) -> dict[str, torch.Tensor]:
        """Only the commitment loss: the codes move by EMA."""
        return {"commitment_loss": vq_losses(latents, quantized, self.commitment_cost)["commitment_loss"]}

    @torch.no_grad()
    def update_codebook_(self, vectors: torch.Tensor, indices: torch.Tensor) -> None:
        counts, sums = cluster_sums(vectors, indices, self.codebook_size)
        cluster_size, embed_sum, codes = ema_codebook_update(
            self.cluster_size, self.embed_sum, counts, sums, self.decay, self.epsilon
        )
        self.cluster_size.copy_(cluster_size)
        self.embed_sum.copy_(embed_sum)
        self.embedding.weight.copy_(codes)

    @torch.no_grad()
    def replace_codes_(self, mask: torch.Tensor, vectors: torch.Tensor) -> None:
        """Re-seed codes as fresh clusters of size 1 holding `vectors`."""
        super().replace_codes_(mask, vectors)
        self.cluster_size.masked_fill_(mask, 1.0)
        self.embed_sum.copy_(torch.where(mask.unsqueeze(1), vectors.to(self.embed_sum.dtype), self.embed_sum))


class SimVQQuantizer(VectorQuantizer):
    """[`VectorQuantizer`] with SimVQ codes: a frozen random basis `embedding` (K, D) times one learned linear map
    `code_transform` (D, D): codes = basis @ code_transform^T. The codebook loss trains the map, which moves every
    code at once, used or not (arXiv 2411.02038).

    The map is a parameter of this module itself, not an `nn.Linear` submodule: transformers initialises a custom
    model's module only when it holds a parameter or buffer of its own, and this module's `init_weights` must run
    after the generic init of its `embedding` to give the basis its N(0, 1/D) scale."""

    def __init__(self, config: ViTVQConfig) -> None:
        super().__init__(config)
        self.embedding.weight.requires_grad_(False)
        dim = self.embedding.embedding_dim
        self.code_transform = nn.Parameter(torch.empty(dim, dim))

    def init_weights(self) -> None:
        """The paper's init: basis ~ N(0, 1/D); the map starts as the identity."""
        super().init_weights()
        init.normal_(self.embedding.weight, std=self.embedding.embedding_dim**-0.5)
        init.eye_(self.code_transform)

    def codes(self) -> torch.Tensor:
        codes = self.embedding.weight.float() @ self.code_transform.float().t()
        return F.normalize(codes, dim=-1) if self.use_l2_norm else codes


def build_vector_quantizer(config: ViTVQConfig) -> VectorQuantizer:
    """The [`VectorQuantizer`] variant the config asks for (EMA, SimVQ or gradient codebook)."""
    if config.use_ema_codebook:
        return EMAVectorQuantizer(config)
    if config.use_simvq:
        return SimVQQuantizer(config)
    return VectorQuantizer(config)
