"""Class labels to images: a prior samples token ids, the tokenizer decodes them, its processor makes PIL images.

    from hf_vitvq.generation_pipeline import ViTVQGenerationPipeline
    pipeline = ViTVQGenerationPipeline.from_pretrained("outputs/prior/final", "outputs/demo/final")
    images = pipeline(class_labels=[0, 1, 2], guidance_scale=3.0, generator=torch.Generator().manual_seed(0))

The prior is either a [`ViTVQMaskGITModel`] (iterative parallel decoding) or a stock causal LM trained by
`training/train_prior.py --prior ar` (sampled by its own `generate()`, see `hf_vitvq.ar_prior`); `load_prior` tells
them apart by their config. The command line's `hf-vitvq sample PRIOR TOKENIZER -o DIR` is [`sample_command`].
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from pathlib import Path

import PIL.Image
import torch
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

from .ar_prior import CONFIG_ATTRIBUTE, ARPriorVocabulary, generate_ar_tokens
from .configuration_vitvq import ViTVQConfig
from .configuration_vitvq_maskgit import ViTVQMaskGITConfig, prior_sequence_shape
from .image_processing_vitvq import ViTVQImageProcessor
from .modeling_vitvq import ViTVQModel
from .modeling_vitvq_maskgit import ViTVQMaskGITModel

# Sampling options of one kind of prior only: passing one to the other kind is an error.
MASKGIT_ONLY_OPTIONS = ("num_steps", "guidance_schedule")
AR_ONLY_OPTIONS = ("top_k", "top_p")


def load_prior(name_or_path: str | Path, device: torch.device | str | None = None) -> PreTrainedModel:
    """A prior folder (or Hub id) written by training/train_prior.py, in eval mode: a [`ViTVQMaskGITModel`], or the
    causal LM of an autoregressive prior (its config holds `vitvq_prior`)."""
    config = AutoConfig.from_pretrained(name_or_path)
    if isinstance(config, ViTVQMaskGITConfig):
        model = ViTVQMaskGITModel.from_pretrained(name_or_path)
    elif getattr(config, CONFIG_ATTRIBUTE, None) is not None:
        model = AutoModelForCausalLM.from_pretrained(name_or_path)
    else:
        raise ValueError(
            f"{name_or_path} is a {type(config).__name__} ({config.model_type!r}), not a prior over token ids: "
            f"expected a ViTVQMaskGITConfig, or a causal LM config with a `{CONFIG_ATTRIBUTE}` entry "
            "(training/train_prior.py writes both)."
        )
    return model.to(device).eval() if device is not None else model.eval()


def prior_shape(prior: PreTrainedModel) -> tuple[int, int, int]:
    """(codebook_size, sequence_length, num_classes) of a MaskGIT or autoregressive prior."""
    if isinstance(prior, ViTVQMaskGITModel):
        config = prior.config
        return config.codebook_size, config.num_latent_tokens, config.num_classes
    vocabulary = ARPriorVocabulary.from_config(prior.config)
    return vocabulary.codebook_size, vocabulary.sequence_length, vocabulary.num_classes


def check_prior_fits_tokenizer(prior: PreTrainedModel, tokenizer_config: ViTVQConfig) -> None:
    """Raise a `ValueError` unless the prior's codes and sequence length are the tokenizer's (see
    [`prior_sequence_shape`]: `"rvq"` levels flattened, continuous `"kl"` tokens refused)."""
    expected = prior_sequence_shape(tokenizer_config)
    codebook_size, sequence_length, _ = prior_shape(prior)
    if (codebook_size, sequence_length) != expected:
        raise ValueError(
            f"The prior predicts sequences of {sequence_length} ids of {codebook_size} codes, the tokenizer decodes "
            f"{expected[1]} ids of {expected[0]} codes: they were not trained together."
        )


def generate_prior_tokens(
    prior: PreTrainedModel,
    class_labels: torch.Tensor | Sequence[int] | None = None,
    num_images: int | None = None,
    guidance_scale: float = 1.0,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    num_steps: int | None = None,
    guidance_schedule: str | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
) -> torch.LongTensor:
    """(B, L) token ids from either kind of prior. Common: `class_labels` / `num_images`, `guidance_scale` (1: none,
    0: unconditional, in both), `temperature` (0: greedy), `generator`. MaskGIT only: `num_steps` (default 8, at most
    the sequence length) and `guidance_schedule` (default `"linear"`); autoregressive only: `top_k`, `top_p`."""
    given = {"num_steps": num_steps, "guidance_schedule": guidance_schedule, "top_k": top_k, "top_p": top_p}
    is_maskgit = isinstance(prior, ViTVQMaskGITModel)
    foreign = AR_ONLY_OPTIONS if is_maskgit else MASKGIT_ONLY_OPTIONS
    if wrong := [name for name in foreign if given[name] is not None]:
        kind = "a MaskGIT" if is_maskgit else "an autoregressive"
        raise ValueError(
            f"{wrong} do not apply to {kind} prior (MaskGIT: {MASKGIT_ONLY_OPTIONS}; AR: {AR_ONLY_OPTIONS})."
        )
    if is_maskgit:
        return prior.generate(
            class_labels,
            num_images,
            num_steps=min(8, prior.config.num_latent_tokens) if num_steps is None else num_steps,
            guidance_scale=guidance_scale,
            guidance_schedule=guidance_schedule or "linear",
            temperature=temperature,
            generator=generator,
        )
    return generate_ar_tokens(prior, class_labels, num_images, guidance_scale, temperature, top_k, top_p, generator)


def image_grid(images: Sequence[PIL.Image.Image], columns: int | None = None) -> PIL.Image.Image:
    """The images (all the size of the first) in rows of `columns` (default: a near-square grid), left to right."""
    columns = columns or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / columns)
    width, height = images[0].size
    grid = PIL.Image.new("RGB", (columns * width, rows * height))
    for index, image in enumerate(images):
        grid.paste(image.resize((width, height)), ((index % columns) * width, (index // columns) * height))
    return grid


class ViTVQGenerationPipeline:
    """Class labels -> PIL images: `prior` samples token ids ([`generate_prior_tokens`]), `tokenizer.decode` turns them
    into pixels, `processor.postprocess` into images. Needs neither `datasets` nor `accelerate`."""

    def __init__(self, prior: PreTrainedModel, tokenizer: ViTVQModel, processor: ViTVQImageProcessor) -> None:
        check_prior_fits_tokenizer(prior, tokenizer.config)
        self.prior, self.tokenizer, self.processor = prior.eval(), tokenizer.eval(), processor

    @classmethod
    def from_pretrained(
        cls, prior: str | Path, tokenizer: str | Path, device: torch.device | str | None = None
    ) -> ViTVQGenerationPipeline:
        """Load a prior folder (see [`load_prior`]) and the tokenizer folder (model and image processor) it was
        trained on, onto `device`."""
        model = ViTVQModel.from_pretrained(tokenizer)
        return cls(
            load_prior(prior, device),
            model.to(device) if device is not None else model,
            ViTVQImageProcessor.from_pretrained(tokenizer),
        )

    def generate_token_ids(self, *args, **kwargs) -> torch.LongTensor:
        """[`generate_prior_tokens`] with this pipeline's prior, as the tokenizer's `decode` reads them: (B, L), or
        (B, num_latent_tokens, num_quantizers) for an `"rvq"` tokenizer (its levels unflattened)."""
        token_ids = generate_prior_tokens(self.prior, *args, **kwargs)
        config = self.tokenizer.config
        if config.quantizer_type == "rvq":
            # (B, L * Q) -> (B, L, Q): the prior reads the levels of each token row-major
            token_ids = token_ids.view(-1, config.num_latent_tokens, config.num_quantizers)
        return token_ids

    def __call__(
        self,
        class_labels: torch.Tensor | Sequence[int] | None = None,
        num_images: int | None = None,
        batch_size: int = 32,
        **sampling,
    ) -> list[PIL.Image.Image]:
        """Sample images: for each of `class_labels` (or `num_images` unconditional ones), `batch_size` at a time.
        `sampling`: the options of [`generate_prior_tokens`] (`guidance_scale`, `temperature`, `generator`,
        `num_steps`, `guidance_schedule`, `top_k`, `top_p`)."""
        if class_labels is None:
            if num_images is None:
                raise ValueError("Pass `class_labels` or `num_images`.")
            chunks = [(None, min(batch_size, num_images - start)) for start in range(0, num_images, batch_size)]
        else:
            labels = list(torch.as_tensor(class_labels).tolist())
            if num_images is not None and num_images != len(labels):
                raise ValueError(
                    f"`num_images` ({num_images}) differs from the number of `class_labels` ({len(labels)})."
                )
            chunks = [(labels[start : start + batch_size], None) for start in range(0, len(labels), batch_size)]
        images = []
        for labels_chunk, count in chunks:
            token_ids = self.generate_token_ids(labels_chunk, count, **sampling)
            pixel_values = self.tokenizer.decode(token_ids.to(self.tokenizer.device))
            images += self.processor.postprocess(pixel_values.float().cpu(), output_type="pil")
        return images


def add_sample_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The arguments of `hf-vitvq sample PRIOR TOKENIZER -o DIR` (see [`sample_command`])."""
    parser.add_argument("prior", help="A prior folder written by training/train_prior.py (MaskGIT or AR), or a Hub id.")
    parser.add_argument("tokenizer", help="The tokenizer folder (or Hub id) whose token ids the prior was trained on.")
    parser.add_argument("-o", "--output_dir", required=True, help="Folder for grid.png and one PNG per sample.")
    labels = parser.add_mutually_exclusive_group()
    labels.add_argument("--class_labels", type=int, nargs="+", help="One image per label (class-conditional priors).")
    labels.add_argument("--num_images", type=int, help="Unconditional images to sample (default: 16).")
    parser.add_argument(
        "--guidance_scale",
        type=float,
        default=1.0,
        help="Classifier-free guidance: 1 none, 0 unconditional (default: 1).",
    )
    parser.add_argument("--temperature", type=float, default=1.0, help="0 samples greedily (default: 1).")
    parser.add_argument("--num_steps", type=int, help="MaskGIT decoding steps (default: 8).")
    parser.add_argument("--guidance_schedule", choices=("linear", "constant"), help="MaskGIT (default: linear).")
    parser.add_argument("--top_k", type=int, help="AR: sample among the k most likely codes.")
    parser.add_argument("--top_p", type=float, help="AR: nucleus sampling.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the sampling (default: 0).")
    parser.add_argument("--batch_size", type=int, default=32, help="Images sampled at a time (default: 32).")
    parser.add_argument("--columns", type=int, help="Images per row of the grid (default: near-square).")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default: cpu).")
    return parser


def sample_command(args: argparse.Namespace) -> list[Path]:
    """`hf-vitvq sample`: write `OUTPUT_DIR/grid.png` and `OUTPUT_DIR/sample_NNN[_class_C].png`; returns their paths."""
    pipeline = ViTVQGenerationPipeline.from_pretrained(args.prior, args.tokenizer, args.device)
    num_images = None if args.class_labels else (args.num_images or 16)
    generator = torch.Generator(args.device).manual_seed(args.seed)
    sampling = {
        "guidance_scale": args.guidance_scale,
        "temperature": args.temperature,
        "generator": generator,
        **{
            name: getattr(args, name)
            for name in (*MASKGIT_ONLY_OPTIONS, *AR_ONLY_OPTIONS)
            if getattr(args, name) is not None
        },
    }
    images = pipeline(args.class_labels, num_images, batch_size=args.batch_size, **sampling)
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = [output_dir / "grid.png"]
    image_grid(images, args.columns).save(paths[0])
    for index, image in enumerate(images):
        suffix = f"_class_{args.class_labels[index]}" if args.class_labels else ""
        paths.append(output_dir / f"sample_{index:03d}{suffix}.png")
        image.save(paths[-1])
    print(f"Wrote {len(images)} samples and their grid to {paths[0]}")
    return paths


__all__ = [
    "ViTVQGenerationPipeline",
    "add_sample_arguments",
    "check_prior_fits_tokenizer",
    "generate_prior_tokens",
    "image_grid",
    "load_prior",
    "prior_shape",
    "sample_command",
]
