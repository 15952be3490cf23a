"""PyTorch ViT-VQ: a TiTok-style 1D image tokenizer.

A ViT encoder reads the image patches together with `num_latent_tokens` learned latent tokens; only the latent
tokens are kept, vector-quantized against a codebook, and a ViT decoder turns the discrete tokens back into an
image. The computation (and the parameter layout, up to names) is that of the published TiTok implementation
(Yu et al., arXiv 2406.07550; github.com/bytedance/1d-tokenizer), so its checkpoints convert by renaming keys.

    image (B, 3, H, W) -> ViTVQEncoder -> latents (B, L, D) -> VectorQuantizer -> token_ids (B, L)
    token_ids -> codes (B, L, D) -> ViTVQDecoder -> reconstruction (B, 3, H, W), in `config.pixel_value_range`
    (not clamped)

With `config.token_dropout="tail"` the decoder is trained on random prefixes of the token sequence, the rest replaced
by a learned embedding (FlexTok's nested dropout, Bachmann et al., arXiv 2502.13967; One-D-Piece's tail token drop,
Miwa et al., arXiv 2501.10064), so that any prefix `token_ids[:, :k]` decodes, coarse for small k.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import ModelOutput, can_return_tuple

from .configuration_vitvq import TransformerSizes, ViTVQConfig, check_local_path_exists
from .modeling_maskgit_vqgan import MaskGitVQGANHead
from .quantizer_base import CodebookUsage, Quantizer
from .quantizer_fsq import FiniteScalarQuantizer
from .quantizer_kl import DiagonalGaussianQuantizer
from .quantizer_lfq import LookupFreeQuantizer
from .quantizer_rvq import ResidualVectorQuantizer
from .quantizer_vq import build_vector_quantizer

# `config.quantizer_type` -> the quantizer module built from the config.
QUANTIZERS: dict[str, Callable[[ViTVQConfig], Quantizer]] = {
    "vq": build_vector_quantizer,
    "fsq": FiniteScalarQuantizer,
    "lfq": LookupFreeQuantizer,
    "rvq": ResidualVectorQuantizer,
    "kl": DiagonalGaussianQuantizer,
}


@dataclass
class ViTVQModelOutput(ModelOutput):
    """Output of [`ViTVQModel.forward`].

    Args:
        reconstruction (`torch.FloatTensor` of shape `(batch_size, num_channels, image_size, image_size)`):
            Decoded image, in the range of the model's pixel values ([-1, 1] for the default processor).
        token_ids (`torch.LongTensor` of shape `(batch_size, num_latent_tokens)`):
            Index of the code chosen for each latent token; `(batch_size, num_latent_tokens, num_quantizers)` for
            `quantizer_type="rvq"`; `None` for continuous (`"kl"`) tokens. Only the first `num_tokens` when `forward`
            was given `num_tokens` (and the same for `quantized_latents`).
        quantized_latents (`torch.FloatTensor` of shape `(batch_size, num_latent_tokens, codebook_dim)`):
            Codes the decoder read (straight-through: gradients flow to the encoder); the posterior sample for `"kl"`.
        codebook_loss (`torch.FloatTensor` of shape `()`): mean((q - sg[z])^2); `None` when the quantizer has no
            codebook loss (EMA codebook, FSQ, LFQ, KL).
        commitment_loss (`torch.FloatTensor` of shape `()`): commitment_cost * mean((sg[q] - z)^2); `None` for FSQ
            and KL.
        quantizer_loss (`torch.FloatTensor` of shape `()`): the sum of the quantizer's weighted loss terms (all of
            them are in `quantizer_stats`).
        perplexity (`torch.FloatTensor` of shape `()`): exp(entropy) of the codes used in this batch (mean over
            levels for `"rvq"`); `None` for `"kl"`.
        quantizer_stats (`dict[str, torch.FloatTensor]`): every scalar the quantizer reports for this batch, loss
            terms (`codebook_loss`, `commitment_loss`, `entropy_loss`, `kl_loss`, ...) and statistics (`perplexity`,
            `posterior_std`, ...), for logging. Window statistics of the codebook: [`ViTVQModel.codebook_health`].
        num_kept_tokens (`torch.LongTensor` of shape `(batch_size,)`): in a training step with tail-token dropout
            (`config.token_dropout="tail"`), how many leading tokens the decoder of each sample read (see
            [`sample_kept_lengths`]); `None` otherwise.
    """

    reconstruction: torch.FloatTensor | None = None
    token_ids: torch.LongTensor | None = None
    quantized_latents: torch.FloatTensor | None = None
    codebook_loss: torch.FloatTensor | None = None
    commitment_loss: torch.FloatTensor | None = None
    quantizer_loss: torch.FloatTensor | None = None
    perplexity: torch.FloatTensor | None = None
    quantizer_stats: dict[str, torch.Tensor] | None = None
    num_kept_tokens: torch.LongTensor | None = None


def sample_kept_lengths(config: ViTVQConfig, batch_size: int, device: torch.device | str) -> torch.LongTensor:
    """(batch_size,) int64: how many leading tokens the decoder of each sample reads in a training step with tail-token
    dropout. Each sample, with probability `config.tail_dropout_prob`, keeps k tokens, k drawn from
    `config.tail_dropout_lengths` (weighted by `config.tail_dropout_weights`) or, without those, uniformly from
    `[config.tail_dropout_min_tokens, config.num_latent_tokens]`; the other samples keep all `num_latent_tokens`.

    The draws come from torch's default generator of `device`, whose state Accelerate's checkpoints save and restore
    (so training resumes exactly) and `torch.manual_seed` sets."""
    num_tokens = config.num_latent_tokens
    if config.tail_dropout_lengths is None:
        kept = torch.randint(config.tail_dropout_min_tokens, num_tokens + 1, (batch_size,), device=device)
    else:
        lengths = torch.tensor(config.tail_dropout_lengths, device=device)
        weights = config.tail_dropout_weights or [1.0] * len(lengths)
        choices = torch.multinomial(torch.tensor(weights, dtype=torch.float, device=device), batch_size, True)
        kept = lengths[choices]
    if config.tail_dropout_prob < 1:
        dropped = torch.rand(batch_size, device=device) < config.tail_dropout_prob
        kept = torch.where(dropped, kept, num_tokens)
    return kept


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention written out; (B, heads, S, head_dim) inputs, (B, S, heads, head_dim) output."""
    attn_weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        attn_weights = attn_weights + attention_mask
    attn_weights = nn.functional.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query.dtype)
    attn_weights = nn.functional.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value).transpose(1, 2)
    return attn_output, attn_weights


class ViTVQAttention(nn.Module):
    """Bidirectional multi-head self-attention with one packed QKV projection (the layout of
    `nn.MultiheadAttention.in_proj_weight`: rows are [query; key; value])."""

    def __init__(self, config: ViTVQConfig, sizes: TransformerSizes) -> None:
        super().__init__()
        self.config = config
        self.num_heads = sizes.num_attention_heads
        self.head_dim = sizes.hidden_size // sizes.num_attention_heads
        self.scaling = self.head_dim**-0.5
        self.dropout = config.attention_probs_dropout_prob
        self.is_causal = False
        self.qkv = nn.Linear(sizes.hidden_size, 3 * sizes.hidden_size)
        self.out_proj = nn.Linear(sizes.hidden_size, sizes.hidden_size)

    def forward(self, hidden_states: torch.Tensor, query_positions: slice = slice(None)) -> torch.Tensor:
        """(B, S, W) -> (B, S_q, W): every position attends to all S; only `query_positions` (S_q of them) are
        computed, for the last layer, whose other positions would be discarded."""
        batch_size, seq_len, width = hidden_states.shape
        # (B, S, 3W) -> (3, B, heads, S, head_dim)
        qkv = self.qkv(hidden_states).view(batch_size, seq_len, 3, self.num_heads, self.head_dim)
        query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        query = query[:, :, query_positions]  # (B, heads, S_q, head_dim)
        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        if batch_size == 0:  # transformers' sdpa wrapper cannot reshape an empty batch; eager computes it
            attention_interface = eager_attention_forward
        attn_output, _ = attention_interface(
            self,
            query,
            key,
            value,
            None,
            dropout=self.dropout if self.training else 0.0,
            scaling=self.scaling,
            is_causal=False,
        )
        # (B, S_q, heads, head_dim) -> (B, S_q, W)
        return self.out_proj(attn_output.reshape(batch_size, query.shape[2], width))


class ViTVQMLP(nn.Module):
    """Linear -> exact GELU -> Linear."""

    def __init__(self, config: ViTVQConfig, sizes: TransformerSizes) -> None:
        super().__init__()
        self.fc1 = nn.Linear(sizes.hidden_size, sizes.intermediate_size)
        self.activation = nn.GELU()
        self.fc2 = nn.Linear(sizes.intermediate_size, sizes.hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.activation(self.fc1(hidden_states)))


class ViTVQLayer(GradientCheckpointingLayer):
    """Pre-norm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, config: ViTVQConfig, sizes: TransformerSizes) -> None:
        super().__init__()
        self.chunk_size_feed_forward = config.chunk_size_feed_forward
        self.layernorm_before = nn.LayerNorm(sizes.hidden_size, eps=config.layer_norm_eps)
        self.attention = ViTVQAttention(config, sizes)
        self.layernorm_after = nn.LayerNorm(sizes.hidden_size, eps=config.layer_norm_eps)
        self.mlp = ViTVQMLP(config, sizes)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor, output_positions: slice = slice(None)) -> torch.Tensor:
        """(B, S, W) -> (B, S_out, W): the block's output at `output_positions` (all S by default)."""
        attention_output = self.attention(self.layernorm_before(hidden_states), query_positions=output_positions)
        hidden_states = hidden_states[:, output_positions] + self.dropout(attention_output)
        return self.feed_forward_in_chunks(hidden_states)

    def feed_forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """x + mlp(ln(x)), position by position."""
        return hidden_states + self.dropout(self.mlp(self.layernorm_after(hidden_states)))

    def feed_forward_in_chunks(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """[`~ViTVQLayer.feed_forward`] on the CPU over at most `chunk_size_feed_forward` positions (of the whole batch)
        at a time, so that the (chunk, 4W) MLP activation stays in cache: the same result, 10-20% faster at batch 32.
        In one piece when gradients are recorded (autograd keeps every activation anyway: chunks only add overhead),
        on GPUs (where one large matmul is faster) and under `torch.compile` / export (which fuse the block
        themselves, and need shapes that do not depend on the batch size)."""
        if torch.is_grad_enabled() or torch.compiler.is_compiling() or hidden_states.device.type != "cpu":
            return self.feed_forward(hidden_states)
        # (B, S, W) -> (B*S, W)
        rows = hidden_states.reshape(-1, hidden_states.shape[-1])
        if not 0 < self.chunk_size_feed_forward < rows.shape[0]:
            return self.feed_forward(hidden_states)
        chunks = rows.tensor_split(-(-rows.shape[0] // self.chunk_size_feed_forward))  # equal sizes, none larger
        return torch.cat([self.feed_forward(chunk) for chunk in chunks]).view_as(hidden_states)


class ViTVQTransformer(nn.Module):
    """LayerNorm, a stack of [`ViTVQLayer`], and the LayerNorm applied to the kept positions."""

    def __init__(self, config: ViTVQConfig, sizes: TransformerSizes) -> None:
        super().__init__()
        self.pre_layernorm = nn.LayerNorm(sizes.hidden_size, eps=config.layer_norm_eps)
        self.layers = nn.ModuleList([ViTVQLayer(config, sizes) for _ in range(sizes.num_hidden_layers)])
        self.post_layernorm = nn.LayerNorm(sizes.hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden_states: torch.Tensor, keep: slice) -> torch.Tensor:
        """Run the stack on (B, S, W) and return the post-normed positions `keep`: (B, S_keep, W). The last layer
        computes only those positions (its others would be discarded): the same result, fewer FLOPs."""
        hidden_states = self.pre_layernorm(hidden_states)
        *layers, last_layer = self.layers
        for layer in layers:
            hidden_states = layer(hidden_states)
        return self.post_layernorm(last_layer(hidden_states, output_positions=keep))


class ViTVQEncoder(nn.Module):
    """Image patches plus learned latent tokens -> ViT -> the latent positions -> (B, L, codebook_dim)."""

    def __init__(self, config: ViTVQConfig) -> None:
        super().__init__()
        sizes = config.encoder_sizes
        width = sizes.hidden_size
        num_prefix = int(config.use_class_token)
        self.num_latent_tokens = config.num_latent_tokens
        self.legacy_latent_layout = config.legacy_latent_layout
        self.patch_embeddings = nn.Conv2d(
            config.num_channels, width, kernel_size=config.patch_size, stride=config.patch_size
        )
        self.class_embedding = nn.Parameter(torch.empty(1, width)) if config.use_class_token else None
        self.position_embeddings = nn.Parameter(torch.empty(num_prefix + config.num_patches, width))
        self.latent_tokens = nn.Parameter(torch.empty(config.num_latent_tokens, width))
        self.latent_position_embeddings = nn.Parameter(torch.empty(config.num_latent_tokens, width))
        self.transformer = ViTVQTransformer(config, sizes)
        self.projection = nn.Linear(width, config.encoder_output_dim)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) pixels -> (B, L, codebook_dim) continuous latents."""
        batch_size = pixel_values.shape[0]
        # (B, C, H, W) -> (B, W, grid, grid) -> (B, grid^2, W)
        patches = self.patch_embeddings(pixel_values).flatten(2).transpose(1, 2)
        prefix = [] if self.class_embedding is None else [self.class_embedding.expand(batch_size, -1, -1)]
        image_tokens = torch.cat([*prefix, patches], dim=1) + self.position_embeddings
        latent_tokens = (self.latent_tokens + self.latent_position_embeddings).expand(batch_size, -1, -1)
        hidden_states = torch.cat([image_tokens, latent_tokens], dim=1)  # (B, [cls] + grid^2 + L, W)
        latents = self.transformer(hidden_states, keep=slice(-self.num_latent_tokens, None))  # (B, L, W)
        if self.legacy_latent_layout:
            # TiTok's two-stage checkpoints read the (B, L, W) memory as (B, W, L): a reshape, not a transpose.
            # (B, L, W) -> (B, W, L) -> (B, L, W)
            latents = latents.reshape(batch_size, -1, self.num_latent_tokens).transpose(1, 2)
        # The nearest-code search reads these few numbers: under bf16 autocast, rounding them flips near-tied codes,
        # so the (small) projection runs in the weights' dtype.
        with torch.autocast(device_type=latents.device.type, enabled=False):
            return self.projection(latents.to(self.projection.weight.dtype))


class ViTVQDecoder(nn.Module):
    """Token codes plus one shared mask token per patch -> ViT -> patch positions -> pixels (B, C, H, W).

    With tail-token dropout (`config.token_dropout="tail"`) it also has `dropped_token_embedding`, a learned vector
    that stands in for every token the decoder does not read (after a prefix, or dropped in training), keeping the
    sequence at its full length; without it the decoder reads all `num_latent_tokens` codes and has no such
    parameter."""

    def __init__(self, config: ViTVQConfig) -> None:
        super().__init__()
        sizes = config.decoder_sizes
        width = sizes.hidden_size
        num_prefix = int(config.use_class_token)
        self.grid_size = config.grid_size
        self.patch_size = config.patch_size
        self.num_channels = config.num_channels
        self.embed = nn.Linear(config.codebook_dim, width)
        self.class_embedding = nn.Parameter(torch.empty(1, width)) if config.use_class_token else None
        self.mask_token = nn.Parameter(torch.empty(1, 1, width))
        self.position_embeddings = nn.Parameter(torch.empty(num_prefix + config.num_patches, width))
        self.latent_position_embeddings = nn.Parameter(torch.empty(config.num_latent_tokens, width))
        has_dropout = config.token_dropout != "none"
        self.dropped_token_embedding = nn.Parameter(torch.empty(1, 1, width)) if has_dropout else None
        self.transformer = ViTVQTransformer(config, sizes)
        self.keep = slice(num_prefix, num_prefix + config.num_patches)
        is_maskgit = config.decoder_head == "maskgit_vqgan"
        self.maskgit_head = MaskGitVQGANHead(config) if is_maskgit else None
        self.pixel_projection = None if is_maskgit else nn.Linear(width, config.patch_size**2 * config.num_channels)
        self.conv_out = None if is_maskgit else nn.Conv2d(config.num_channels, config.num_channels, 3, padding=1)

    def forward(self, codes: torch.Tensor, num_kept: torch.Tensor | None = None) -> torch.Tensor:
        """(B, L, codebook_dim) codes -> (B, C, H, W) pixels. With tail-token dropout, also the codes of a prefix,
        (B, k, codebook_dim) with k < L, and `num_kept` (B,): sample b reads only its first `num_kept[b]` codes."""
        batch_size = codes.shape[0]
        latent_tokens = self.embed(codes)  # (B, k, W)
        if self.dropped_token_embedding is not None:
            latent_tokens = self.drop_tail(latent_tokens, num_kept)
        latent_tokens = latent_tokens + self.latent_position_embeddings  # (B, L, W)
        mask_tokens = self.mask_token.expand(batch_size, self.grid_size**2, -1)
        prefix = [] if self.class_embedding is None else [self.class_embedding.expand(batch_size, -1, -1)]
        image_tokens = torch.cat([*prefix, mask_tokens], dim=1) + self.position_embeddings
        hidden_states = torch.cat([image_tokens, latent_tokens], dim=1)  # (B, [cls] + grid^2 + L, W)
        patch_features = self.transformer(hidden_states, keep=self.keep)  # (B, grid^2, W)
        if self.maskgit_head is not None:
            return self.maskgit_head(patch_features)
        patches = self.pixel_projection(patch_features)  # (B, grid^2, p*p*C)
        return self.conv_out(self.depth_to_space(patches))

    def drop_tail(self, latent_tokens: torch.Tensor, num_kept: torch.Tensor | None) -> torch.Tensor:
        """(B, k, W) embedded codes of a prefix -> (B, L, W): positions k..L-1, and positions >= `num_kept[b]` of
        sample b, hold `dropped_token_embedding` (so the codes there get no gradient from the reconstruction)."""
        batch_size, num_read, width = latent_tokens.shape
        num_tokens = self.latent_position_embeddings.shape[0]
        missing = self.dropped_token_embedding.expand(batch_size, num_tokens - num_read, width)
        latent_tokens = torch.cat([latent_tokens, missing], dim=1)  # (B, L, W)
        if num_kept is None:
            return latent_tokens
        kept = torch.arange(num_tokens, device=latent_tokens.device) < num_kept[:, None]  # (B, L)
        return torch.where(kept[..., None], latent_tokens, self.dropped_token_embedding)

    def depth_to_space(self, patches: torch.Tensor) -> torch.Tensor:
        """(B, grid^2, p*p*C) with channels ordered (p_row, p_col, C) -> (B, C, grid*p, grid*p)."""
        batch_size, grid, patch, channels = patches.shape[0], self.grid_size, self.patch_size, self.num_channels
        patches = patches.view(batch_size, grid, grid, patch, patch, channels)
        # (B, gh, gw, ph, pw, C) -> (B, C, gh, ph, gw, pw)
        image = patches.permute(0, 5, 1, 3, 2, 4)
        return image.reshape(batch_size, channels, grid * patch, grid * patch)


# safetensors refuses headers larger than this (its MAX_HEADER_SIZE): a larger length means a corrupt file.
MAX_SAFETENSORS_HEADER_SIZE = 100_000_000


def safetensors_problem(path: str | os.PathLike) -> str | None:
    """What is wrong with the safetensors file at `path`, as far as its size and header show: empty, truncated, or a
    header that is not a safetensors header; `None` when the header describes exactly the bytes the file holds.

    Reads the 8-byte little-endian header length and the JSON header that follows it, no tensor data (bytes zeroed
    or flipped inside the data go unnoticed: only a checksum finds those)."""
    size = os.path.getsize(path)
    with open(path, "rb") as file:
        prefix = file.read(8)
        if len(prefix) < 8:
            return f"is empty or truncated: {size} bytes, too short for a safetensors header"
        header_size = int.from_bytes(prefix, "little")
        if header_size > MAX_SAFETENSORS_HEADER_SIZE:
            return f"is corrupt: its first 8 bytes announce a header of {header_size} bytes"
        if 8 + header_size > size:
            return f"is truncated: {size} bytes, its header alone takes {8 + header_size}"
        try:
            header = json.loads(file.read(header_size))
            data_size = max(
                (entry["data_offsets"][1] for name, entry in header.items() if name != "__metadata__"), default=0
            )
        except (ValueError, TypeError, KeyError, IndexError, AttributeError):
            return "is corrupt: its header is not the JSON table of tensors a safetensors file starts with"
    expected = 8 + header_size + data_size
    if expected > size:
        return f"is truncated: {size} bytes, its header describes {expected}"
    if expected < size:
        return f"is corrupt: {size} bytes, its header describes {expected}"
    return None


class ViTVQPreTrainedModel(PreTrainedModel):
    config_class = ViTVQConfig
    config: ViTVQConfig
    base_model_prefix = "vitvq"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["ViTVQLayer"]
    _supports_sdpa = True
    _supports_flash_attn = False
    _can_compile_fullgraph = True

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """TiTok's init: trunc-normal(initializer_range) weights, zero biases, LayerNorm (1, 0); learned tokens
        and position embeddings ~ N(0, 1/width); codes ~ U(-1/K, 1/K)."""
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            init.trunc_normal_(module.weight, mean=0.0, std=self.config.initializer_range)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):  # codebooks: the quantizer's and the MaskGIT-VQGAN head's
            init.uniform_(module.weight, -1.0 / module.num_embeddings, 1.0 / module.num_embeddings)
        elif isinstance(module, (nn.LayerNorm, nn.GroupNorm)):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, (ViTVQEncoder, ViTVQDecoder)):
            for param in module.parameters(recurse=False):
                init.normal_(param, mean=0.0, std=param.shape[-1] ** -0.5)
        elif isinstance(module, (CodebookUsage, Quantizer)):
            # After their submodules: state derived from them (EMA sums, SimVQ basis). transformers skips a custom
            # model's module that holds no parameter or buffer of its own, so only such state may live here.
            module.init_weights()

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str | os.PathLike | None, *model_args, **kwargs
    ) -> ViTVQPreTrainedModel:
        """[`~transformers.PreTrainedModel.from_pretrained`], with clear errors where transformers gives raw ones: a
        local folder that does not exist is named as such (see [`ViTVQConfig.get_config_dict`]), and when loading
        from a local folder fails on an empty, truncated or corrupt `*.safetensors` file, the error names that file
        (safetensors' own says only "Error while deserializing header"). `AutoModel.from_pretrained` comes here
        once it has read the config."""
        if pretrained_model_name_or_path is not None:
            check_local_path_exists(pretrained_model_name_or_path)
        try:
            return super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        except Exception as error:
            folder = Path(pretrained_model_name_or_path or "", kwargs.get("subfolder", ""))
            if pretrained_model_name_or_path is not None and folder.is_dir():
                for path in sorted(folder.glob("*.safetensors")):
                    if (problem := safetensors_problem(path)) is not None:
                        raise OSError(
                            f"The weights file {path} {problem}. Save or download it again (a copy interrupted while "
                            "being written leaves such files)."
                        ) from error
            raise


def preview(values: list, limit: int = 10) -> str:
    """`values` as a list literal, cut to the first `limit` entries: `[1, 2, ...]`."""
    return repr(values) if len(values) <= limit else repr(values[:limit])[:-1] + ", ...]"


def check_finite_pixels(pixel_values: torch.Tensor) -> None:
    """Raise a `ValueError` naming the images of the (B, C, H, W) batch that hold NaN or infinite values. Reads one
    value back to the host when all are finite (a host sync on a GPU)."""
    if torch.isfinite(pixel_values).all():
        return
    bad_per_image = (~torch.isfinite(pixel_values)).flatten(1).sum(dim=1)  # (B, C, H, W) -> (B,)
    images = bad_per_image.nonzero().flatten().tolist()
    raise ValueError(
        f"`pixel_values` holds {int(bad_per_image.sum())} NaN or infinite value(s) in image(s) {preview(images)} of "
        f"the batch of {len(pixel_values)}; every token of such an image would get an arbitrary code. Check the "
        "images and their preprocessing."
    )


def inference_helper(function: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """Run `function` under `torch.inference_mode()`, or under `torch.no_grad()` while `torch.compile` traces it
    (the compiler cannot trace parameters inside inference mode: "Cannot set version_counter for inference tensor").

    The returned tensor is an ordinary one (copied out of inference mode), so that code outside may use it in a
    graph autograd records: token ids indexing a prior's embedding, decoded pixels fed to a network being trained.
    The copy costs one pass over the output, nothing next to the forward pass."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs) -> torch.Tensor:
        if torch.compiler.is_compiling():
            with torch.no_grad():
                return function(*args, **kwargs)
        with torch.inference_mode():
            output = function(*args, **kwargs)
        return output.clone()

    return wrapper


class ViTVQModel(ViTVQPreTrainedModel):
    """The ViT-VQ tokenizer: `encode` images to token ids, `decode` token ids to images, `forward` for training."""

    def __init__(self, config: ViTVQConfig) -> None:
        super().__init__(config)
        self.encoder = ViTVQEncoder(config)
        self.quantize = QUANTIZERS[config.quantizer_type](config)
        self.decoder = ViTVQDecoder(config)
        self.post_init()

    @can_return_tuple
    def forward(
        self, pixel_values: torch.Tensor, num_tokens: int | None = None, return_dict: bool | None = None
    ) -> ViTVQModelOutput:
        r"""
        Encode, quantize and decode a batch of images. In a training step (train mode with gradients recorded) of a
        model with tail-token dropout (`config.token_dropout="tail"`), the decoder of each sample reads only a random
        prefix of its tokens ([`sample_kept_lengths`]; `num_kept_tokens` in the output).

        Args:
            pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, image_size, image_size)`):
                Images normalised as [`ViTVQImageProcessor`] does ([-1, 1] by default), of any float dtype (cast to
                the model's). NaN or infinite values are an error (a `ValueError` naming the images), raised before
                the quantizer changes any state: checking costs one reduction over the batch and one value read
                back to the host per call (a host sync on a GPU, which the training loop's per-step loss read
                makes cheap); it is skipped under `torch.compile`.
            num_tokens (`int`, *optional*): decode from the first `num_tokens` tokens only (no random dropout then),
                in `[config.min_num_tokens, num_latent_tokens]`: a model trained with tail-token dropout reconstructs
                from any such prefix; `token_ids` and `quantized_latents` then hold that prefix. The quantizer still
                reads (and, in training, updates on) all tokens.
            return_dict (`bool`, *optional*): return a [`ViTVQModelOutput`] (default) or a plain tuple.

        Returns:
            [`ViTVQModelOutput`] with the reconstruction, token ids and the quantizer's losses and perplexity. An
            empty batch (batch_size 0) gives empty reconstruction, ids and latents, and NaN losses (means over no
            elements).
        """
        if num_tokens is not None:
            self._check_num_tokens(num_tokens)
        pixel_values = self._prepare_pixel_values(pixel_values)
        quantizer_output = self.quantize(self.encoder(pixel_values))
        quantized, token_ids, num_kept = quantizer_output.quantized, quantizer_output.indices, None
        if num_tokens is not None:
            quantized = quantized[:, :num_tokens]
            token_ids = None if token_ids is None else token_ids[:, :num_tokens]
        elif self.config.token_dropout == "tail" and self.training and torch.is_grad_enabled():
            num_kept = sample_kept_lengths(self.config, quantized.shape[0], quantized.device)
        reconstruction = self.decoder(quantized.to(pixel_values.dtype), num_kept=num_kept)
        return ViTVQModelOutput(
            reconstruction=reconstruction,
            token_ids=token_ids,
            quantized_latents=quantized,
            codebook_loss=quantizer_output.losses.get("codebook_loss"),
            commitment_loss=quantizer_output.losses.get("commitment_loss"),
            quantizer_loss=quantizer_output.loss,
            perplexity=quantizer_output.stats.get("perplexity"),
            quantizer_stats={**quantizer_output.losses, **quantizer_output.stats},
            num_kept_tokens=num_kept,
        )

    @torch.inference_mode()
    def codebook_health(self) -> dict[str, torch.Tensor]:
        """Codebook statistics over the last `config.usage_window` training steps, for the training loop to log:
        `codebook_usage` (fraction of codes hit), `window_perplexity`, `dead_codes` (codes not hit) and
        `code_frequency`, the (codebook_size,) histogram of hits ((num_quantizers, codebook_size) for `"rvq"`).
        Empty for `"kl"`. Identical on every process under DDP."""
        return self.quantize.codebook_health()

    @inference_helper
    def encode(self, pixel_values: torch.Tensor, num_tokens: int | None = None) -> torch.LongTensor | torch.FloatTensor:
        """Tokenize images.

        Args:
            pixel_values: `(batch_size, num_channels, image_size, image_size)` float images, normalised as
                [`ViTVQImageProcessor`] does; any float dtype (cast to the model's). NaN or infinite values are a
                `ValueError` naming the images (they would all quantize to one arbitrary code): the check reads one
                value back per call (a host sync on a GPU), and is skipped under `torch.compile` and in ONNX graphs.
            num_tokens: return only the first `num_tokens` tokens of each image (the same ids as the full
                encoding's first ones), for a model trained with tail-token dropout (`config.token_dropout="tail"`),
                whose `decode` reads such prefixes: any `num_tokens` in `[config.min_num_tokens, num_latent_tokens]`.
                Unset: all `num_latent_tokens`.

        Returns:
            `(batch_size, num_tokens)` int64 token ids in `[0, codebook_size)`;
            `(batch_size, num_tokens, num_quantizers)` ids for `quantizer_type="rvq"`; for `"kl"` (continuous
            tokens) no ids but the `(batch_size, num_tokens, codebook_dim)` float32 posterior means. An empty batch
            gives empty ids.
        """
        if num_tokens is not None:
            self._check_num_tokens(num_tokens)
        pixel_values = self._prepare_pixel_values(pixel_values)
        output = self.quantize(self.encoder(pixel_values))
        tokens = output.quantized if self.quantize.is_continuous else output.indices
        return tokens if num_tokens is None else tokens[:, :num_tokens]

    @inference_helper
    def decode(self, token_ids: torch.Tensor) -> torch.FloatTensor:
        """Turn token ids back into images.

        Args:
            token_ids: what [`~ViTVQModel.encode`] returns: `(batch_size, num_latent_tokens)` integer ids in
                `[0, codebook_size)`, `(batch_size, num_latent_tokens, num_quantizers)` for `quantizer_type="rvq"`,
                or `(batch_size, num_latent_tokens, codebook_dim)` float latents for `"kl"`. Ids of any integer dtype
                (uint8 ... int64); ids outside `[0, codebook_size)` are a `ValueError` listing them (the check reads
                one value back per call; it is skipped under `torch.compile`). A model trained with tail-token
                dropout (`config.token_dropout="tail"`) also decodes a prefix, `token_ids[:, :k]` for any k in
                `[config.min_num_tokens, num_latent_tokens]` (its missing tokens read as the learned
                `dropped_token_embedding`); other models need all `num_latent_tokens`.

        Returns:
            `(batch_size, num_channels, image_size, image_size)` pixel values ([-1, 1] for the default processor;
            [`ViTVQImageProcessor.postprocess`] turns them into images).
        """
        if self.quantize.is_continuous:
            return self.decode_latents(token_ids)
        token_ids = self._prepare_token_ids(token_ids)
        return self.decoder(self.quantize.indices_to_codes(token_ids).to(self.dtype))

    @inference_helper
    def decode_latents(self, quantized_latents: torch.Tensor) -> torch.FloatTensor:
        """Decode continuous `(batch_size, num_latent_tokens, codebook_dim)` latents (e.g. codes interpolated by a
        downstream model, or `ViTVQModelOutput.quantized_latents`) into `(batch_size, C, H, W)` pixel values; with
        tail-token dropout also the latents of a prefix, `(batch_size, k, codebook_dim)` (see
        [`~ViTVQModel.decode`])."""
        self._check_token_shape("quantized_latents", quantized_latents, (self.config.codebook_dim,))
        return self.decoder(quantized_latents.to(self.dtype))

    def _prefix_note(self) -> str:
        """Which numbers of leading tokens this model decodes, in words, for error messages."""
        config = self.config
        if config.token_dropout == "none":
            return (
                "this model was trained without tail-token dropout (token_dropout='none'): it decodes all "
                f"{config.num_latent_tokens} tokens only; decoding a prefix needs a model trained with "
                "token_dropout='tail'"
            )
        return (
            f"this model (token_dropout='tail') decodes any prefix of k tokens with {config.min_num_tokens} <= k <= "
            f"{config.num_latent_tokens}"
        )

    def _check_num_tokens(self, num_tokens: int) -> None:
        """Raise a `ValueError` unless `num_tokens` is a number of leading tokens this model decodes."""
        low, high = self.config.min_num_tokens, self.config.num_latent_tokens
        if isinstance(num_tokens, bool) or not isinstance(num_tokens, int) or not low <= num_tokens <= high:
            allowed = str(high) if low == high else f"an integer in [{low}, {high}]"
            raise ValueError(f"`num_tokens` must be {allowed}, got {num_tokens!r}: {self._prefix_note()}.")

    def _check_token_shape(self, name: str, tokens: torch.Tensor, trailing: tuple[int, ...]) -> None:
        """Raise a `ValueError` unless `tokens` has shape `(batch_size, k, *trailing)`, k a number of leading tokens
        this model decodes."""
        low, high = self.config.min_num_tokens, self.config.num_latent_tokens
        shape = tuple(tokens.shape)
        layout_matches = len(shape) == 2 + len(trailing) and shape[2:] == trailing
        if not layout_matches or not low <= shape[1] <= high:
            dims = ", ".join(map(str, ("k" if low < high else high, *trailing)))
            note = f": {self._prefix_note()}" if low < high or layout_matches else ""
            raise ValueError(f"`{name}` must have shape (batch_size, {dims}), got {shape}{note}.")

    def _prepare_pixel_values(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Check the type, shape and values of `pixel_values`; return them in the dtype of the model's weights."""
        config = self.config
        expected = f"(batch_size, {config.num_channels}, {config.image_size}, {config.image_size})"
        if not isinstance(pixel_values, torch.Tensor):
            raise TypeError(f"`pixel_values` must be a torch.Tensor of shape {expected}, got {type(pixel_values)}.")
        if not pixel_values.is_floating_point():
            raise TypeError(
                f"`pixel_values` must be a floating point tensor, got {pixel_values.dtype}; "
                "use ViTVQImageProcessor to turn images into normalised pixel values."
            )
        if pixel_values.ndim != 4:
            raise ValueError(f"`pixel_values` must be 4-d {expected}, got shape {tuple(pixel_values.shape)}.")
        if pixel_values.shape[1] != config.num_channels:
            raise ValueError(
                f"`pixel_values` has {pixel_values.shape[1]} channels, the model expects {config.num_channels}: "
                f"shape {expected}, got {tuple(pixel_values.shape)}."
            )
        if tuple(pixel_values.shape[2:]) != (config.image_size, config.image_size):
            raise ValueError(
                f"`pixel_values` is {pixel_values.shape[2]}x{pixel_values.shape[3]}, the model expects "
                f"{config.image_size}x{config.image_size}; resize with ViTVQImageProcessor."
            )
        if not torch.compiler.is_compiling():  # reading the check's result back would break a compiled graph
            check_finite_pixels(pixel_values)
        return pixel_values.to(self.encoder.patch_embeddings.weight.dtype)

    def _prepare_token_ids(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Check the type, shape and range of `token_ids`; return them as int64."""
        config = self.config
        if not isinstance(token_ids, torch.Tensor):
            raise TypeError(f"`token_ids` must be a torch.Tensor of integers, got {type(token_ids)}.")
        if token_ids.is_floating_point() or token_ids.is_complex() or token_ids.dtype == torch.bool:
            raise TypeError(f"`token_ids` must be an integer tensor, got {token_ids.dtype}.")
        self._check_token_shape(
            "token_ids", token_ids, (config.num_quantizers,) if config.quantizer_type == "rvq" else ()
        )
        token_ids = token_ids.long()  # compared with codebook_size in int64, not wrapped to a narrower dtype
        if torch.compiler.is_compiling():
            return token_ids  # the range check reads values back, which would break a compiled graph
        out_of_range = (token_ids < 0) | (token_ids >= config.codebook_size)
        if out_of_range.any():
            raise ValueError(
                f"`token_ids` must lie in [0, {config.codebook_size}), got {int(out_of_range.sum())} id(s) outside "
                f"it: {preview(token_ids[out_of_range].unique().tolist())}."
            )
        return token_ids


__all__ = ["ViTVQModel", "ViTVQPreTrainedModel", "ViTVQModelOutput"]
