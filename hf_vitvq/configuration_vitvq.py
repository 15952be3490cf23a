"""ViT-VQ (TiTok-style 1D image tokenizer) configuration.

Reference: Yu et al., "An Image is Worth 32 Tokens for Reconstruction and Generation",
arXiv 2406.07550 (TiTok). Every hyperparameter of the model lives here.
"""

from __future__ import annotations

import difflib
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Any, ClassVar

from transformers import PretrainedConfig


@dataclass(frozen=True)
class TransformerSizes:
    """Sizes of one ViT stack (the encoder's or the decoder's), read from a `ViTVQConfig`."""

    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int


# TiTok's ViT sizes by the names its configs use: (width, layers, heads); the MLP ratio is 4 throughout
# (arXiv 2406.07550, Table 1). The S / B / L presets and the checkpoint converter both read this table.
TITOK_VIT_SIZES: dict[str, tuple[int, int, int]] = {
    "small": (512, 8, 8),
    "base": (768, 12, 12),
    "large": (1024, 24, 16),
}


def _symmetric(size: str, num_latent_tokens: int) -> dict[str, Any]:
    """A TiTok preset: the same ViT size for encoder and decoder, 4096 x 12 l2-normalised codes."""
    width, layers, heads = TITOK_VIT_SIZES[size]
    vit = {"hidden_size": width, "num_hidden_layers": layers, "num_attention_heads": heads}
    return {
        "image_size": 256,
        "patch_size": 16,
        **{f"encoder_{key}": value for key, value in vit.items()},
        **{f"decoder_{key}": value for key, value in vit.items()},
        "num_latent_tokens": num_latent_tokens,
        "codebook_size": 4096,
        "codebook_dim": 12,
        "use_l2_norm_codes": True,
    }


# `ViTVQConfig.quantizer_type` values; one module each (quantizer_vq.py, quantizer_fsq.py, ...).
QUANTIZER_TYPES = ("vq", "fsq", "lfq", "rvq", "kl")

# The codebook shape a config gets when neither the user nor the quantizer's other fields decide it (TiTok's).
DEFAULT_CODEBOOK_SIZE = 4096
DEFAULT_CODEBOOK_DIM = 12


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_positive_int(name: str, value: Any) -> None:
    if not _is_int(value) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")


def _is_power_of_two(value: Any) -> bool:
    return _is_int(value) and value >= 2 and value & (value - 1) == 0


def looks_like_local_path(name: str) -> bool:
    """Whether `name` can only be a local path, never a Hub repo id (`name` or `namespace/name`): it is absolute,
    starts with `.` or `~`, holds a backslash, or has more than one `/`."""
    return os.path.isabs(name) or name.startswith((".", "~")) or "\\" in name or name.count("/") > 1


def check_local_path_exists(name_or_path: str | os.PathLike) -> None:
    """Raise a `FileNotFoundError` when `name_or_path` is a local path (see [`looks_like_local_path`]) that does not
    exist; Hub repo ids pass."""
    name = os.fspath(name_or_path)
    if looks_like_local_path(name) and not os.path.exists(name):
        raise FileNotFoundError(
            f"The model folder '{name}' does not exist (working directory: {os.getcwd()}). Pass the folder that "
            "save_pretrained wrote, or a Hub repo id ('name' or 'namespace/name')."
        )


def derive_codebook_shape(
    quantizer_type: str, codebook_size: int | None, codebook_dim: int | None, fsq_levels: list[int] | None
) -> tuple[int, int]:
    """`(codebook_size, codebook_dim)`, each one left unset (`None`) derived from the quantizer's other fields.

    `fsq` (with valid `fsq_levels`): `prod(fsq_levels)` codes of dimension `len(fsq_levels)`. `lfq`: 2 ** codebook_dim
    codes, and `codebook_dim = log2(codebook_size)` when only a power-of-two size is set. Otherwise (and for the
    other quantizers, whose sizes are free) `DEFAULT_CODEBOOK_SIZE` and `DEFAULT_CODEBOOK_DIM`. Values that are set
    are returned as they are: [`ViTVQConfig`]'s checks report the contradictions among them.
    """
    if quantizer_type == "fsq" and fsq_levels and all(_is_int(level) and level >= 2 for level in fsq_levels):
        implied_size, implied_dim = math.prod(fsq_levels), len(fsq_levels)
    elif quantizer_type == "lfq":
        if codebook_dim is None and _is_power_of_two(codebook_size):
            codebook_dim = codebook_size.bit_length() - 1
        implied_dim = DEFAULT_CODEBOOK_DIM if codebook_dim is None else codebook_dim
        implied_size = 2**implied_dim if _is_int(implied_dim) and implied_dim >= 1 else DEFAULT_CODEBOOK_SIZE
    else:
        implied_size, implied_dim = DEFAULT_CODEBOOK_SIZE, DEFAULT_CODEBOOK_DIM
    return (
        implied_size if codebook_size is None else codebook_size,
        implied_dim if codebook_dim is None else codebook_dim,
    )


# `ViTVQConfig.decoder_head` values: a linear pixel head, or TiTok's two-stage MaskGIT-VQGAN head.
DECODER_HEADS = ("pixels", "maskgit_vqgan")

# `ViTVQConfig.token_dropout` values: no dropout, or tail-token dropout (the decoder trains on random prefixes).
TOKEN_DROPOUT_TYPES = ("none", "tail")
# The fields that only apply to `token_dropout="tail"`.
TAIL_DROPOUT_FIELDS = ("tail_dropout_min_tokens", "tail_dropout_lengths", "tail_dropout_weights", "tail_dropout_prob")

PRESETS: dict[str, dict[str, Any]] = {
    "S-128": _symmetric("small", 128),
    "B-64": _symmetric("base", 64),
    "L-32": _symmetric("large", 32),
    # The training config of the seed project simple-1d-tokenizer: one-layer ViTs, Euclidean codes.
    "seed": {
        "image_size": 256,
        "patch_size": 16,
        "encoder_hidden_size": 128,
        "encoder_num_hidden_layers": 1,
        "encoder_num_attention_heads": 8,
        "decoder_hidden_size": 128,
        "decoder_num_hidden_layers": 1,
        "decoder_num_attention_heads": 8,
        "num_latent_tokens": 128,
        "use_class_token": False,
        "codebook_size": 512,
        "codebook_dim": 32,
        "use_l2_norm_codes": False,
    },
    # For tests and CPU demos: 32x32 images, 16 patches of 8x8, 32 tokens.
    "tiny": {
        "image_size": 32,
        "patch_size": 8,
        "encoder_hidden_size": 64,
        "encoder_num_hidden_layers": 2,
        "encoder_num_attention_heads": 4,
        "decoder_hidden_size": 64,
        "decoder_num_hidden_layers": 2,
        "decoder_num_attention_heads": 4,
        "num_latent_tokens": 32,
        "codebook_size": 1024,
        "codebook_dim": 12,
        "use_l2_norm_codes": True,
    },
}


class ViTVQConfig(PretrainedConfig):
    r"""
    Configuration of a [`ViTVQModel`]: a ViT encoder that summarises an image into `num_latent_tokens` learned
    latent tokens, a vector quantizer that maps each latent to one of `codebook_size` codes, and a ViT decoder that
    reconstructs the image from those discrete tokens (TiTok, arXiv 2406.07550). The defaults describe TiTok-L-32
    without its two-stage decoder: 256x256 images, 32 tokens, 4096 codes of dimension 12, l2-normalised.

    Args:
        image_size (`int`, defaults to 256): height and width of the (square) input images.
        patch_size (`int`, defaults to 16): side of the square patches; must divide `image_size`.
        num_channels (`int`, defaults to 3): channels of the input and output images.
        encoder_hidden_size (`int`, defaults to 1024): width of the encoder ViT.
        encoder_num_hidden_layers (`int`, defaults to 24): number of encoder blocks.
        encoder_num_attention_heads (`int`, defaults to 16): attention heads per encoder block.
        encoder_mlp_ratio (`float`, defaults to 4.0): encoder MLP width as a multiple of `encoder_hidden_size`.
        decoder_hidden_size (`int`, defaults to 1024): width of the decoder ViT.
        decoder_num_hidden_layers (`int`, defaults to 24): number of decoder blocks.
        decoder_num_attention_heads (`int`, defaults to 16): attention heads per decoder block.
        decoder_mlp_ratio (`float`, defaults to 4.0): decoder MLP width as a multiple of `decoder_hidden_size`.
        num_latent_tokens (`int`, defaults to 32): number of 1D tokens an image is encoded into.
        use_class_token (`bool`, defaults to `True`): prepend a learned class token to the encoder and decoder
            sequences (TiTok's layout; the seed project had none).
        codebook_size (`int`, *optional*): number of codes; token ids lie in `[0, codebook_size)`. Unset, it is
            derived from the quantizer's fields: `prod(fsq_levels)` for `fsq`, `2 ** codebook_dim` for `lfq`, else
            4096.
        codebook_dim (`int`, *optional*): dimension of each code (low-dimensional "factorized" codes). Unset, it is
            derived: `len(fsq_levels)` for `fsq`, `log2(codebook_size)` for `lfq` given only a power-of-two
            `codebook_size`, else 12. Set only what you choose: a value you set that contradicts the others (e.g.
            `fsq_levels=[8, 5, 5, 5]` with `codebook_size=1024`) is an error. Saved configs hold both numbers.
        use_l2_norm_codes (`bool`, defaults to `True`): l2-normalise latents and codes before the nearest-code
            search (cosine similarity), as TiTok does.
        commitment_cost (`float`, defaults to 0.25): beta, the weight of the commitment loss (`vq`, `rvq`, `lfq`).
        quantizer_type (`str`, defaults to `"vq"`): the quantizer between encoder and decoder, one of
            `"vq"` (nearest code of a learned codebook), `"fsq"` (finite scalar quantization), `"lfq"` (lookup-free
            sign quantization), `"rvq"` (residual VQ: token ids of shape (B, L, num_quantizers)) and `"kl"`
            (continuous tokens from a diagonal Gaussian; the encoder then outputs 2 * codebook_dim channels, mean
            then log-variance, and `encode` returns latents instead of ids).
        factorized_code_dim (`int`, *optional*): `vq` only: search codes of this dimension, with linear projections
            codebook_dim -> factorized_code_dim -> codebook_dim around the quantizer (ViT-VQGAN's factorized codes).
        use_ema_codebook (`bool`, defaults to `False`): `vq`/`rvq`: move codes by an exponential moving average of
            the latents assigned to them instead of the codebook loss (no codebook gradient).
        ema_decay (`float`, defaults to 0.99): decay of the EMA codebook statistics.
        ema_epsilon (`float`, defaults to 1e-5): Laplace smoothing of the EMA cluster sizes.
        kmeans_init (`bool`, defaults to `False`): `vq`/`rvq`: initialise the codes by k-means on the first
            training batch.
        kmeans_iterations (`int`, defaults to 10): Lloyd iterations of that k-means.
        dead_code_steps (`int`, defaults to 0): `vq`/`rvq`: re-seed codes not used for this many training steps
            with latents of the current batch (before its lookup); 0 turns it off.
        dead_code_threshold (`float`, defaults to 0.0): `vq`/`rvq`: also re-seed codes whose moving average of hits
            per step falls below this; 0 turns it off.
        usage_window (`int`, defaults to 100): length, in training steps, of the window over which codebook usage is
            measured (and of the moving average of hits per step).
        entropy_loss_weight (`float`, defaults to 0.0): weight of the entropy regulariser (per-sample entropy minus
            `codebook_entropy_weight` times batch entropy of the soft code assignments); `vq`, `rvq`, `lfq`. LFQ
            needs it (MAGVIT-v2 uses 0.1); 0 turns it off.
        entropy_temperature (`float`, defaults to 0.01): temperature of the soft assignments softmax(-d^2 / t).
        codebook_entropy_weight (`float`, defaults to 1.0): weight of the batch entropy inside the regulariser.
        use_rotation_trick (`bool`, defaults to `False`): `vq`: carry gradients through the quantizer with the
            rotation trick (arXiv 2410.06424) instead of the straight-through copy.
        use_simvq (`bool`, defaults to `False`): `vq`/`rvq`: SimVQ codes, a frozen random basis times one learned
            linear map (arXiv 2411.02038); excludes the EMA codebook, k-means init and dead-code restarts.
        fsq_levels (`list[int]`, *optional*): `fsq` (required there, and only used there): number of levels per
            channel, e.g. `[8, 5, 5, 5]`, which gives `codebook_dim = 4` and `codebook_size = 1000`.
        num_quantizers (`int`, defaults to 1): `rvq`: number of residual levels, each with `codebook_size` codes.
        kl_loss_weight (`float`, defaults to 1e-6): `kl`: weight of the KL divergence to N(0, I) (TiTok's value).
        chunk_size_feed_forward (`int`, defaults to 1024): on the CPU, the MLP half of each block runs over at most
            this many positions (of the whole batch) at a time, so that its 4x-wide activation stays in cache (the
            same result, 10-20% faster at batch 32); 0 runs it in one piece. Used for inference only: not when
            gradients are recorded, on GPUs or under `torch.compile`.
        layer_norm_eps (`float`, defaults to 1e-5): epsilon of every LayerNorm.
        hidden_dropout_prob (`float`, defaults to 0.0): dropout on the attention and MLP outputs.
        attention_probs_dropout_prob (`float`, defaults to 0.0): dropout on the attention probabilities.
        initializer_range (`float`, defaults to 0.02): std of the truncated normal init of linear, conv and
            embedding weights.
        pixel_value_range (`tuple[float, float]`, defaults to `(-1.0, 1.0)`): range of the pixel values the model
            reads and reconstructs, i.e. what its image processor maps 0..255 to: [-1, 1] for models trained with
            the default [`ViTVQImageProcessor`], [0, 1] for the published TiTok checkpoints.
        legacy_latent_layout (`bool`, defaults to `False`): reinterpret the encoder's `(B, L, W)` latent tokens in
            memory as `(B, W, L)` (a reshape, not a transpose) before the output projection, as TiTok's released
            two-stage checkpoints do (their `is_legacy: true`); only needed to reproduce those checkpoints.
        decoder_head (`str`, defaults to `"pixels"`): how the decoder turns its patch features into pixels.
            `"pixels"`: a linear layer predicts each patch's pixels, then a 3x3 conv (TiTok's single-stage models).
            `"maskgit_vqgan"`: TiTok's two-stage head: per patch, a softmax over the codes of a MaskGIT-VQGAN
            codebook, whose weighted sum of codes the MaskGIT-VQGAN convolutional decoder turns into pixels.
        maskgit_num_codes (`int`, defaults to 1024): codes of the MaskGIT-VQGAN codebook (`"maskgit_vqgan"` head).
        maskgit_code_dim (`int`, defaults to 256): dimension of those codes, the convolutional decoder's input.
        maskgit_hidden_channels (`int`, defaults to 128): base width of the convolutional decoder.
        maskgit_channel_mult (`tuple[int, ...]`, defaults to `(1, 1, 2, 2, 4)`): width of each resolution level
            of the convolutional decoder, highest resolution first, as multiples of `maskgit_hidden_channels`; the
            decoder upsamples by `2 ** (len(maskgit_channel_mult) - 1)`, which must equal `patch_size`.
        maskgit_num_res_blocks (`int`, defaults to 2): ResNet blocks per level of the convolutional decoder.
        token_dropout (`str`, defaults to `"none"`): `"tail"` trains the decoder on random prefixes of the token
            sequence (One-D-Piece's tail token drop, FlexTok's nested dropout): in each training step the decoder of
            sample b sees only its first k_b tokens, the others replaced by a learned embedding, so that the first
            k tokens of any image decode to a coarse version of it, and detail grows with k. Such a model's
            `decode` accepts any prefix `token_ids[:, :k]` with `tail_dropout_min_tokens <= k <= num_latent_tokens`
            and `encode(..., num_tokens=k)` returns the first k ids. `"none"`: the decoder always reads all tokens
            (and only all tokens decode).
        tail_dropout_min_tokens (`int`, *optional*): `"tail"`: the fewest tokens a training step keeps, and the
            shortest prefix `decode` accepts. Unset: the smallest of `tail_dropout_lengths` when those are given,
            else 1.
        tail_dropout_lengths (`list[int]`, *optional*): `"tail"`: the kept lengths k to draw from, e.g.
            `[1, 2, 4, 8, 16, 32]` (FlexTok's powers of two, which give the last tokens more training than a
            uniform k does); unset, k is uniform over `[tail_dropout_min_tokens, num_latent_tokens]`.
        tail_dropout_weights (`list[float]`, *optional*): `"tail"`: relative probabilities of `tail_dropout_lengths`
            (needs them); unset, all lengths are equally likely.
        tail_dropout_prob (`float`, defaults to 0.5): `"tail"`: the probability that a sample's tail is dropped in a
            training step (k drawn as above); the other samples keep all `num_latent_tokens` tokens. One-D-Piece and
            FlexTok drop in every step (1.0); on the demo-scale model that left the last tokens unused (PSNR flat from
            16 of 32 tokens on), where 0.5 kept PSNR rising to the full sequence at a cost of 0.1-0.2 dB there
            (benchmarks/RESULTS.md).

    Example:

    ```python
    >>> from hf_vitvq import ViTVQConfig, ViTVQModel
    >>> config = ViTVQConfig.from_preset("tiny", codebook_size=256)
    >>> model = ViTVQModel(config)
    >>> ViTVQConfig(quantizer_type="fsq", fsq_levels=[8, 5, 5, 5]).codebook_size
    1000
    ```

    The constructor accepts the extra keys `from_pretrained` passes (`torch_dtype`, `architectures`, `auto_map`, ...)
    and keeps unknown ones as attributes, as every [`PretrainedConfig`] does; [`~ViTVQConfig.from_preset`],
    [`~ViTVQConfig.from_base`] and [`~ViTVQConfig.check_field_names`] reject names that are not fields (misspellings).
    """

    model_type = "vitvq"
    presets_table: ClassVar[dict[str, dict[str, Any]]] = PRESETS

    image_size: int = 256
    patch_size: int = 16
    num_channels: int = 3
    encoder_hidden_size: int = 1024
    encoder_num_hidden_layers: int = 24
    encoder_num_attention_heads: int = 16
    encoder_mlp_ratio: float | int = 4.0
    decoder_hidden_size: int = 1024
    decoder_num_hidden_layers: int = 24
    decoder_num_attention_heads: int = 16
    decoder_mlp_ratio: float | int = 4.0
    num_latent_tokens: int = 32
    use_class_token: bool = True
    codebook_size: int | None = None  # derived in __post_init__ when unset (see `derive_codebook_shape`)
    codebook_dim: int | None = None
    use_l2_norm_codes: bool = True
    commitment_cost: float | int = 0.25
    quantizer_type: str = "vq"
    factorized_code_dim: int | None = None
    use_ema_codebook: bool = False
    ema_decay: float = 0.99
    ema_epsilon: float = 1e-5
    kmeans_init: bool = False
    kmeans_iterations: int = 10
    dead_code_steps: int = 0
    dead_code_threshold: float | int = 0.0
    usage_window: int = 100
    entropy_loss_weight: float | int = 0.0
    entropy_temperature: float = 0.01
    codebook_entropy_weight: float | int = 1.0
    use_rotation_trick: bool = False
    use_simvq: bool = False
    fsq_levels: list[int] | None = None
    num_quantizers: int = 1
    kl_loss_weight: float = 1e-6
    chunk_size_feed_forward: int = 1024
    layer_norm_eps: float = 1e-5
    hidden_dropout_prob: float | int = 0.0
    attention_probs_dropout_prob: float | int = 0.0
    initializer_range: float = 0.02
    pixel_value_range: list[float] | tuple[float, float] = (-1.0, 1.0)
    legacy_latent_layout: bool = False
    decoder_head: str = "pixels"
    maskgit_num_codes: int = 1024
    maskgit_code_dim: int = 256
    maskgit_hidden_channels: int = 128
    maskgit_channel_mult: list[int] | tuple[int, ...] = (1, 1, 2, 2, 4)
    maskgit_num_res_blocks: int = 2
    token_dropout: str = "none"
    tail_dropout_min_tokens: int | None = None  # derived in __post_init__ for "tail" when unset
    tail_dropout_lengths: list[int] | None = None
    tail_dropout_weights: list[float | int] | None = None
    tail_dropout_prob: float | int = 0.5

    def __post_init__(self, **kwargs: Any) -> None:
        # Lists, as they come back from config.json, so that a saved and reloaded config compares equal.
        self.pixel_value_range = [float(value) for value in self.pixel_value_range]
        self.maskgit_channel_mult = list(self.maskgit_channel_mult)
        self.fsq_levels = None if self.fsq_levels is None else list(self.fsq_levels)
        self.tail_dropout_lengths = None if self.tail_dropout_lengths is None else list(self.tail_dropout_lengths)
        self.tail_dropout_weights = None if self.tail_dropout_weights is None else list(self.tail_dropout_weights)
        if self.token_dropout == "tail" and self.tail_dropout_min_tokens is None:
            lengths = self.tail_dropout_lengths
            self.tail_dropout_min_tokens = min(lengths) if lengths and all(map(_is_int, lengths)) else 1
        self.codebook_size, self.codebook_dim = derive_codebook_shape(
            self.quantizer_type, self.codebook_size, self.codebook_dim, self.fsq_levels
        )
        super().__post_init__(**kwargs)
        self._check_hyperparameters()

    def _check_hyperparameters(self) -> None:
        """Raise a `ValueError` naming the first inconsistent hyperparameter."""
        positive = (
            "image_size", "patch_size", "num_channels", "num_latent_tokens", "codebook_dim",
            "encoder_hidden_size", "encoder_num_hidden_layers", "encoder_num_attention_heads",
            "decoder_hidden_size", "decoder_num_hidden_layers", "decoder_num_attention_heads",
        )  # fmt: skip
        for name in positive:
            _check_positive_int(name, getattr(self, name))
        chunk_size = self.chunk_size_feed_forward
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 0:
            raise ValueError(f"`chunk_size_feed_forward` must be an integer >= 0 (0: no chunks), got {chunk_size!r}.")
        if self.image_size % self.patch_size:
            raise ValueError(
                f"`image_size` ({self.image_size}) must be divisible by `patch_size` ({self.patch_size}) "
                "so that the image splits into whole patches."
            )
        for role in ("encoder", "decoder"):
            width = getattr(self, f"{role}_hidden_size")
            heads = getattr(self, f"{role}_num_attention_heads")
            if width % heads:
                raise ValueError(
                    f"`{role}_hidden_size` ({width}) must be divisible by `{role}_num_attention_heads` ({heads})."
                )
            mlp_ratio = getattr(self, f"{role}_mlp_ratio")
            if not mlp_ratio > 0:
                raise ValueError(f"`{role}_mlp_ratio` must be > 0, got {mlp_ratio!r}.")
        if not _is_int(self.codebook_size) or self.codebook_size < 2:
            raise ValueError(f"`codebook_size` must be an integer >= 2, got {self.codebook_size!r}.")
        if self.commitment_cost < 0:
            raise ValueError(f"`commitment_cost` must be >= 0, got {self.commitment_cost!r}.")
        self._check_quantizer()
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"`{name}` must be in [0, 1), got {getattr(self, name)!r}.")
        if not self.layer_norm_eps > 0:
            raise ValueError(f"`layer_norm_eps` must be > 0, got {self.layer_norm_eps!r}.")
        if len(self.pixel_value_range) != 2 or not self.pixel_value_range[0] < self.pixel_value_range[1]:
            raise ValueError(f"`pixel_value_range` must be (low, high) with low < high, got {self.pixel_value_range}.")
        if self.decoder_head not in DECODER_HEADS:
            raise ValueError(f"`decoder_head` must be one of {DECODER_HEADS}, got {self.decoder_head!r}.")
        if self.decoder_head == "maskgit_vqgan":
            self._check_maskgit_vqgan_sizes()
        self._check_token_dropout()

    def _check_token_dropout(self) -> None:
        """Raise a `ValueError` naming the first tail-dropout field that is out of range or inconsistent."""
        if self.token_dropout not in TOKEN_DROPOUT_TYPES:
            raise ValueError(f"`token_dropout` must be one of {TOKEN_DROPOUT_TYPES}, got {self.token_dropout!r}.")
        if self.token_dropout == "none":
            defaults = {field.name: field.default for field in fields(self) if field.name in TAIL_DROPOUT_FIELDS}
            used = [name for name, default in defaults.items() if getattr(self, name) != default]
            if used:
                raise ValueError(f"{used} only apply to token_dropout='tail', got token_dropout='none'.")
            return
        if not 0.0 < self.tail_dropout_prob <= 1.0:
            raise ValueError(f"`tail_dropout_prob` must be in (0, 1], got {self.tail_dropout_prob!r}.")
        num_tokens, lengths, weights = self.num_latent_tokens, self.tail_dropout_lengths, self.tail_dropout_weights
        if lengths is not None:
            in_range = all(_is_int(k) and 1 <= k <= num_tokens for k in lengths)
            if not lengths or not in_range or len(set(lengths)) < len(lengths):
                raise ValueError(
                    "`tail_dropout_lengths` must be a non-empty list of distinct integers in [1, num_latent_tokens="
                    f"{num_tokens}], got {lengths!r}."
                )
        elif weights is not None:
            raise ValueError("`tail_dropout_weights` weighs `tail_dropout_lengths`: set those too, or unset it.")
        min_tokens = self.tail_dropout_min_tokens
        if not _is_int(min_tokens) or not 1 <= min_tokens <= num_tokens:
            raise ValueError(
                f"`tail_dropout_min_tokens` must be an integer in [1, num_latent_tokens={num_tokens}], got "
                f"{min_tokens!r}."
            )
        if lengths is None:
            return
        if min_tokens != min(lengths):
            raise ValueError(
                f"`tail_dropout_min_tokens` ({min_tokens}) must be the smallest of `tail_dropout_lengths` {lengths}: "
                "leave it unset and it is derived from them."
            )
        if weights is not None and (len(weights) != len(lengths) or not all(w >= 0 for w in weights) or
                                    not sum(weights) > 0):  # fmt: skip
            raise ValueError(
                f"`tail_dropout_weights` must hold one weight >= 0 per entry of `tail_dropout_lengths` "
                f"({len(lengths)}), not all zero, got {weights!r}."
            )

    def _check_maskgit_vqgan_sizes(self) -> None:
        for name in ("maskgit_num_codes", "maskgit_code_dim", "maskgit_hidden_channels", "maskgit_num_res_blocks"):
            _check_positive_int(name, getattr(self, name))
        mult = self.maskgit_channel_mult
        if not mult or any(isinstance(m, bool) or not isinstance(m, int) or m < 1 for m in mult):
            raise ValueError(f"`maskgit_channel_mult` must be a non-empty list of positive integers, got {mult}.")
        if 2 ** (len(mult) - 1) != self.patch_size:
            raise ValueError(
                f"The MaskGIT-VQGAN decoder upsamples by 2 ** (len(maskgit_channel_mult) - 1) = {2 ** (len(mult) - 1)}"
                f", which must equal `patch_size` ({self.patch_size}) to rebuild the image from its patch grid."
            )
        if self.maskgit_hidden_channels % 32:
            raise ValueError(
                f"`maskgit_hidden_channels` ({self.maskgit_hidden_channels}) must be divisible by 32, the number of "
                "groups of the MaskGIT-VQGAN decoder's GroupNorm layers."
            )

    def _check_quantizer(self) -> None:
        """Raise a `ValueError` naming the first quantizer field that is out of range or inconsistent."""
        if self.quantizer_type not in QUANTIZER_TYPES:
            raise ValueError(f"`quantizer_type` must be one of {QUANTIZER_TYPES}, got {self.quantizer_type!r}.")
        for name in ("kmeans_iterations", "usage_window", "num_quantizers"):
            _check_positive_int(name, getattr(self, name))
        if self.factorized_code_dim is not None:
            _check_positive_int("factorized_code_dim", self.factorized_code_dim)
        if not 0.0 < self.ema_decay < 1.0:
            raise ValueError(f"`ema_decay` must be in (0, 1), got {self.ema_decay!r}.")
        if isinstance(self.dead_code_steps, bool) or not isinstance(self.dead_code_steps, int):
            raise ValueError(f"`dead_code_steps` must be an integer >= 0, got {self.dead_code_steps!r}.")
        for name in ("dead_code_steps", "dead_code_threshold", "entropy_loss_weight", "codebook_entropy_weight",
                     "kl_loss_weight"):  # fmt: skip
            if getattr(self, name) < 0:
                raise ValueError(f"`{name}` must be >= 0, got {getattr(self, name)!r}.")
        for name in ("ema_epsilon", "entropy_temperature"):
            if not getattr(self, name) > 0:
                raise ValueError(f"`{name}` must be > 0, got {getattr(self, name)!r}.")
        codebook_options = {
            "factorized_code_dim": self.factorized_code_dim is not None,
            "use_ema_codebook": self.use_ema_codebook,
            "kmeans_init": self.kmeans_init,
            "dead_code_steps": self.dead_code_steps > 0,
            "dead_code_threshold": self.dead_code_threshold > 0,
            "use_rotation_trick": self.use_rotation_trick,
            "use_simvq": self.use_simvq,
        }
        used = [name for name, is_set in codebook_options.items() if is_set]
        if used and self.quantizer_type not in ("vq", "rvq"):
            raise ValueError(f"{used} only apply to quantizer_type 'vq' or 'rvq', got {self.quantizer_type!r}.")
        if self.use_simvq and (self.use_ema_codebook or self.kmeans_init or self.dead_code_steps or
                               self.dead_code_threshold):  # fmt: skip
            raise ValueError(
                "`use_simvq` learns all codes through one linear map: it cannot be combined with `use_ema_codebook`, "
                "`kmeans_init` or dead-code restarts (`dead_code_steps`, `dead_code_threshold`)."
            )
        if self.quantizer_type == "rvq":
            if self.factorized_code_dim is not None or self.use_rotation_trick:
                raise ValueError(
                    "quantizer_type 'rvq' passes gradients straight through the sum of its levels: unset "
                    "`factorized_code_dim` and `use_rotation_trick`."
                )
            if self.use_l2_norm_codes:
                raise ValueError(
                    "quantizer_type 'rvq' quantizes residuals, whose norms shrink level by level: set "
                    "`use_l2_norm_codes=False`."
                )
        if self.fsq_levels is not None and self.quantizer_type != "fsq":
            raise ValueError(
                f"`fsq_levels` only applies to quantizer_type 'fsq', got quantizer_type {self.quantizer_type!r}: set "
                "quantizer_type='fsq' or leave `fsq_levels` unset."
            )
        if self.quantizer_type == "fsq":
            levels = self.fsq_levels
            if not levels or any(not _is_int(n) or n < 2 for n in levels):
                raise ValueError(f"`fsq_levels` must be a non-empty list of integers >= 2, got {levels!r}.")
            if len(levels) != self.codebook_dim or math.prod(levels) != self.codebook_size:
                raise ValueError(
                    f"quantizer_type 'fsq' with fsq_levels={levels} needs codebook_dim={len(levels)} and "
                    f"codebook_size={math.prod(levels)}, got {self.codebook_dim} and {self.codebook_size}; leave "
                    "them unset and they are derived from `fsq_levels`."
                )
        if self.quantizer_type == "lfq" and self.codebook_size != 2**self.codebook_dim:
            not_power = "" if _is_power_of_two(self.codebook_size) else f" ({self.codebook_size} is not a power of two)"
            raise ValueError(
                f"quantizer_type 'lfq' has 2 ** codebook_dim codes: codebook_dim={self.codebook_dim} gives "
                f"codebook_size={2**self.codebook_dim}, got {self.codebook_size}{not_power}. Set one of the two; the "
                "other is derived."
            )

    @classmethod
    def presets(cls) -> list[str]:
        """Names accepted by [`~ViTVQConfig.from_preset`]."""
        return list(cls.presets_table)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> ViTVQConfig:
        """Build a configuration from a named preset, e.g. `ViTVQConfig.from_preset("L-32")`.

        Args:
            name: one of [`~ViTVQConfig.presets`]: the published TiTok sizes `"S-128"`, `"B-64"`, `"L-32"`,
                the seed project's `"seed"`, or `"tiny"` for tests and CPU demos.
            overrides: config fields, applied on top of the preset (e.g. `codebook_size=1024`), as
                [`~ViTVQConfig.from_base`] applies them: a name that is not a field is an error, and switching to
                `fsq` / `lfq` derives the codebook shape of the new quantizer.
        """
        if name not in cls.presets_table:
            raise ValueError(f"Unknown preset {name!r}; expected one of {cls.presets()}.")
        return cls.from_base(cls.presets_table[name], **overrides)

    @classmethod
    def from_base(cls, base: Mapping[str, Any], **overrides: Any) -> ViTVQConfig:
        """Build a configuration from the values `base` (a preset, or the dict of a saved config.json) with
        `overrides` on top, e.g. what a user passes to training's `--model_overrides`.

        Override names that are not fields are an error (see [`~ViTVQConfig.check_field_names`]). When the result
        uses `fsq` or `lfq` and the overrides change its quantizer's fields (`quantizer_type`, `fsq_levels`,
        `codebook_dim` or `codebook_size`), the `codebook_size` and `codebook_dim` of `base` that the overrides do
        not set give way to the ones derived for the new fields (`from_base(tiny, quantizer_type="fsq",
        fsq_levels=[8, 5, 5, 5])` has 1000 codes of dimension 4, not tiny's 1024 x 12); other values of `base`
        that contradict the overrides are errors, as in the constructor.
        """
        cls.check_field_names(overrides)
        shape_fields = ("codebook_size", "codebook_dim")
        quantizer = overrides.get("quantizer_type", base.get("quantizer_type", "vq"))
        if quantizer in ("fsq", "lfq") and overrides.keys() & {"quantizer_type", "fsq_levels", *shape_fields}:
            base = {key: value for key, value in base.items() if key not in shape_fields}
        return cls(**{**base, **overrides})

    @classmethod
    def get_config_dict(
        cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """[`PretrainedConfig.get_config_dict`] (which `from_pretrained` of this config and of [`ViTVQModel`] call),
        with errors that say when a local folder does not exist: a path that cannot be a Hub repo id (absolute,
        `./...`, `a/b/c`) raises a `FileNotFoundError` naming it, and a failed Hub lookup of a name that is no local
        folder either says so. (`AutoConfig` / `AutoModel` resolve the config through the base class and keep
        transformers' own message.)"""
        check_local_path_exists(pretrained_model_name_or_path)
        try:
            return super().get_config_dict(pretrained_model_name_or_path, **kwargs)
        except OSError as error:
            name = os.fspath(pretrained_model_name_or_path)
            if os.path.exists(name):
                raise
            raise OSError(
                f"{error}\nThere is no local folder '{name}' either (working directory: {os.getcwd()})."
            ) from error

    @classmethod
    def check_field_names(cls, names: Iterable[str]) -> None:
        """Raise a `ValueError` naming every one of `names` that is not a field of this config, with the fields it
        probably misspells (`codebok_size`: did you mean `codebook_size`?).

        For overrides a user types: [`~ViTVQConfig.from_base`] (so [`~ViTVQConfig.from_preset`]) calls it. (The
        constructor does not: it also takes the other keys `from_pretrained` passes.)
        """
        known = [field.name for field in fields(cls)]
        unknown = [name for name in names if name not in known]
        if not unknown:
            return
        problems = []
        for name in unknown:
            matches = difflib.get_close_matches(name, known, n=3)
            problems.append(
                f"'{name}' (" + (f"did you mean {' or '.join(map(repr, matches))}?)" if matches else "no close match)")
            )
        inherited = {field.name for field in fields(PretrainedConfig)}
        own = ", ".join(repr(name) for name in known if name not in inherited)
        noun = "field" if len(unknown) == 1 else "fields"
        raise ValueError(f"Unknown {cls.__name__} {noun} {'; '.join(problems)}. The {cls.__name__} fields are: {own}.")

    def to_dict(self) -> dict[str, Any]:
        """[`PretrainedConfig.to_dict`], without `token_dropout` and the `tail_dropout_*` fields when `token_dropout` is
        `"none"` (their defaults, which loading restores): a model without tail-token dropout saves the config.json it
        saved before the option existed."""
        output = super().to_dict()
        if self.token_dropout == "none":
            for name in ("token_dropout", *TAIL_DROPOUT_FIELDS):
                output.pop(name, None)
        return output

    @property
    def min_num_tokens(self) -> int:
        """The fewest leading tokens [`ViTVQModel.decode`] accepts: `tail_dropout_min_tokens` for a model trained with
        tail-token dropout, else all `num_latent_tokens`."""
        return self.tail_dropout_min_tokens if self.token_dropout == "tail" else self.num_latent_tokens

    @property
    def grid_size(self) -> int:
        """Number of patches along each side of the image."""
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        """Number of image patches, `grid_size ** 2`."""
        return self.grid_size**2

    @property
    def bits_per_image(self) -> float:
        """Information in one encoded image: `num_latent_tokens * log2(codebook_size)`, times `num_quantizers` for
        residual VQ (continuous `kl` tokens have no finite count; this then reports the discrete formula)."""
        levels = self.num_quantizers if self.quantizer_type == "rvq" else 1
        return self.num_latent_tokens * levels * math.log2(self.codebook_size)

    @property
    def encoder_output_dim(self) -> int:
        """Channels of the encoder's output projection: `2 * codebook_dim` (mean, log-variance) for the `kl`
        quantizer, else `codebook_dim`."""
        return 2 * self.codebook_dim if self.quantizer_type == "kl" else self.codebook_dim

    @property
    def encoder_sizes(self) -> TransformerSizes:
        return self._sizes("encoder")

    @property
    def decoder_sizes(self) -> TransformerSizes:
        return self._sizes("decoder")

    def _sizes(self, role: str) -> TransformerSizes:
        width = getattr(self, f"{role}_hidden_size")
        return TransformerSizes(
            hidden_size=width,
            num_hidden_layers=getattr(self, f"{role}_num_hidden_layers"),
            num_attention_heads=getattr(self, f"{role}_num_attention_heads"),
            intermediate_size=int(width * getattr(self, f"{role}_mlp_ratio")),
        )


__all__ = ["ViTVQConfig", "TransformerSizes", "PRESETS"]
