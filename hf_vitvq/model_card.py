"""Model cards for hf-vitvq tokenizers: the one writer that training, checkpoint conversion and `hf-vitvq card` use.

A card is the `README.md` of a model folder or Hub repository: YAML metadata (`library_name`, `license`, `tags`,
`datasets`, `pipeline_tag`, and `model-index` with the results of an `hf-vitvq eval` run) above a text with the
architecture and compression numbers, how to load the model with and without this package, intended use,
limitations, training details when known, evaluation results and the configuration. The text is built here in Python
(no template file to find at run time, so it works from an installed wheel), and the metadata goes through
`huggingface_hub.ModelCardData`, so that what the Hub reads back is what was written.

    card = model_card(config, "org/my-tokenizer", "A tokenizer trained on ...", eval_results=read_eval_results(path))
    card.save("my-tokenizer/README.md")

`with_eval_results` puts new results into an existing card (its evaluation section and `model-index`), keeping the
rest. `eval_results.json` is what `hf_vitvq.training.evaluate_tokenizer` writes; [`eval_results_table`] is the one
markdown table of it that the evaluation prints and cards show.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .configuration_vitvq import ViTVQConfig, looks_like_local_path
from .modeling_vitvq import ViTVQModel
from .token_files import tokens_per_image

TAGS = ("image-tokenizer", "vector-quantization", "vitvq", "titok", "hf-vitvq")
PIPELINE_TAG = "image-feature-extraction"
# model-index task of every result: reconstructing the input image
EVAL_TASK_TYPE, EVAL_TASK_NAME = "image-to-image", "Image reconstruction"
EVAL_SECTION_BEGIN = "<!-- hf-vitvq:evaluation -->"
EVAL_SECTION_END = "<!-- /hf-vitvq:evaluation -->"
TITOK_CITATION = """@inproceedings{yu2024an,
  title={An Image is Worth 32 Tokens for Reconstruction and Generation},
  author={Qihang Yu and Mark Weber and Xueqing Deng and Xiaohui Shen and Daniel Cremers and Liang-Chieh Chen},
  booktitle={NeurIPS},
  year={2024}
}"""


@dataclass(frozen=True)
class MetricSpec:
    """One number of `eval_results.json`'s `metrics`: its label, its format in tables, and its `model-index` metric
    type (`None`: a property of the model or of the run, not a result, so not in `model-index`)."""

    key: str
    label: str
    format: str
    model_index_type: str | None = None


EVAL_METRICS = (
    MetricSpec("rfid", "rFID (lower is better)", ".2f", "fid"),
    MetricSpec("inception_score", "Inception Score of the reconstructions", ".2f", "inception_score"),
    MetricSpec("psnr", "PSNR (dB)", ".2f", "psnr"),
    MetricSpec("ssim", "SSIM", ".4f", "ssim"),
    MetricSpec("lpips", "LPIPS (lower is better)", ".4f", "lpips"),
    MetricSpec("codebook_usage", "codebook usage (codes used / codebook size)", ".1%", "codebook_usage"),
    MetricSpec("perplexity", "code perplexity", ".1f", "perplexity"),
    MetricSpec("tokens_per_image", "tokens per image", "d"),
    MetricSpec("bits_per_image", "bits per image", ".0f"),
    MetricSpec("bits_per_pixel", "bits per pixel", ".4f"),
    MetricSpec("compression_ratio", "compression (x smaller than 24-bit RGB)", ",.0f"),
    MetricSpec("images_per_second", "evaluation throughput (images/s)", ".1f"),
)
# The columns of the per-k table (`by_num_tokens`), of the metrics a sweep over the number of tokens measures.
BY_NUM_TOKENS_METRICS = ("bits_per_image", "psnr", "ssim", "rfid")


# --------------------------------------------------------------------------------------------------------------------
# eval_results.json
# --------------------------------------------------------------------------------------------------------------------


def check_eval_results(results: Mapping[str, Any], source: str = "eval results") -> None:
    """Raise a `ValueError` naming what is missing when `results` is not what `hf-vitvq eval` writes: a mapping with
    `metrics` (a mapping), `dataset` (a mapping with `name` and `type`), `num_images` and `resolution`, and, when
    there, `by_num_tokens` (a mapping of numbers of tokens to mappings of metrics)."""
    problems = [key for key in ("metrics", "dataset", "num_images", "resolution") if key not in results]
    if not problems:
        if not isinstance(results["metrics"], Mapping):
            problems.append("metrics (a mapping)")
        if not isinstance(results["dataset"], Mapping) or not {"name", "type"} <= set(results["dataset"]):
            problems.append("dataset.name and dataset.type")
        by_num_tokens = results.get("by_num_tokens", {})
        if not isinstance(by_num_tokens, Mapping) or not all(
            str(k).isdigit() and isinstance(row, Mapping) for k, row in by_num_tokens.items()
        ):
            problems.append("by_num_tokens (number of tokens -> metrics)")
    if problems:
        raise ValueError(
            f"{source} is not an hf-vitvq evaluation (the eval_results.json that `hf-vitvq eval` writes): missing "
            f"{', '.join(problems)}."
        )


def read_eval_results(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check an `eval_results.json` (see [`check_eval_results`])."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file; `hf-vitvq eval MODEL ...` writes eval_results.json.")
    results = json.loads(path.read_text())
    check_eval_results(results, source=str(path))
    return results


def describe_evaluation(results: Mapping[str, Any]) -> str:
    """One sentence saying what the numbers of `results` were measured on, and how."""
    dataset = results["dataset"]
    split = f", split `{dataset['split']}`" if dataset.get("split") else ""
    config = f", config `{dataset['config']}`" if dataset.get("config") else ""
    resolution = results["resolution"]
    settings = results.get("settings", {})
    weights = settings.get("inception_weights")
    fid = f" rFID/IS with the Inception-v3 weights `{Path(weights).name}`." if weights else ""
    processes = settings.get("num_processes")
    run = f" {processes} process(es) on {settings.get('device', 'an unknown device')}." if processes else ""
    skipped = f" ({results['skipped_images']} undecodable skipped)" if results.get("skipped_images") else ""
    num_tokens = results.get("num_tokens")
    prefix = f" Reconstructed from the first {num_tokens} tokens of each image." if num_tokens else ""
    return (
        f"Measured on {results['num_images']} images of {dataset['name']}{config}{split}{skipped}, resized and "
        f"centre-cropped to {resolution}x{resolution} (no augmentation).{prefix}{fid}{run} rFID is biased upwards on "
        "few images: compare numbers measured on the same number of images (papers use the 50,000 ImageNet validation "
        "images)."
    )


def eval_results_table(results: Mapping[str, Any]) -> str:
    """The markdown table of `results` (the numbers present, in [`EVAL_METRICS`] order), then
    [`describe_evaluation`] and the reasons for any metric left out."""
    metrics = results["metrics"]
    rows = [
        f"| {spec.label} | {format(metrics[spec.key], spec.format)} |"
        for spec in EVAL_METRICS
        if metrics.get(spec.key) is not None
    ]
    lines = ["| metric | value |", "|---|---|", *rows]
    if results.get("by_num_tokens"):
        lines += ["", "Reconstructed from the first k tokens of each image (tail-token dropout):", "",
                  by_num_tokens_table(results["by_num_tokens"])]  # fmt: skip
    lines += ["", describe_evaluation(results)]
    skipped = results.get("skipped_metrics", {})
    if skipped:
        lines += ["", *(f"- Not measured: {name}: {reason}" for name, reason in skipped.items())]
    return "\n".join(lines)


def by_num_tokens_table(by_num_tokens: Mapping[str, Mapping[str, float | None]]) -> str:
    """The markdown table of `eval_results.json`'s `by_num_tokens` (`{k: {metric: value}}`, k as a string as JSON
    keys are): one row per k, ascending, one column per metric of [`BY_NUM_TOKENS_METRICS`] measured at any k."""
    specs = {spec.key: spec for spec in EVAL_METRICS}
    rows = sorted(by_num_tokens.items(), key=lambda item: int(item[0]))
    columns = [specs[key] for key in BY_NUM_TOKENS_METRICS if any(row.get(key) is not None for _, row in rows)]

    def cell(row: Mapping[str, float | None], spec: MetricSpec) -> str:
        return "–" if row.get(spec.key) is None else format(row[spec.key], spec.format)

    header = ["k tokens", *(spec.label for spec in columns)]
    lines = [f"| {' | '.join(header)} |", f"|{'---|' * len(header)}"]
    lines += [f"| {k} | {' | '.join(cell(row, spec) for spec in columns)} |" for k, row in rows]
    return "\n".join(lines)


def eval_results_to_model_index(results: Mapping[str, Any]) -> list[EvalResult]:
    """The `model-index` entries of `results`: one `EvalResult` per measured result metric, rounded to 4 decimals
    (throughput and compression numbers are left out; they describe the run and the model)."""
    dataset = results["dataset"]
    metrics = results["metrics"]
    return [
        EvalResult(
            task_type=EVAL_TASK_TYPE,
            task_name=EVAL_TASK_NAME,
            dataset_type=dataset["type"],
            dataset_name=dataset["name"],
            dataset_config=dataset.get("config"),
            dataset_split=dataset.get("split"),
            metric_type=spec.model_index_type,
            metric_name=spec.label.split(" (")[0],
            metric_value=round(metrics[spec.key], 4),
        )
        for spec in EVAL_METRICS
        if spec.model_index_type is not None and metrics.get(spec.key) is not None
    ]


# --------------------------------------------------------------------------------------------------------------------
# Facts about a configuration (the card's and `hf-vitvq info`'s)
# --------------------------------------------------------------------------------------------------------------------


def parameter_counts(config: ViTVQConfig) -> dict[str, int]:
    """Parameters of a `ViTVQModel` built from `config`: `total`, `encoder`, `decoder` and `quantizer` (the codebook),
    counted on the meta device (no memory, no weights)."""
    with torch.device("meta"):
        model = ViTVQModel(config)
    parts = {"total": model, "encoder": model.encoder, "decoder": model.decoder, "quantizer": model.quantize}
    return {name: sum(parameter.numel() for parameter in part.parameters()) for name, part in parts.items()}


def compression_numbers(config: ViTVQConfig, num_tokens: int | None = None) -> dict[str, float | int | None]:
    """`tokens_per_image`, `bits_per_image`, `bits_per_pixel` and `compression_ratio` (against 8-bit RGB pixels) of
    the ids of one image, or of its first `num_tokens` tokens; the bits and the ratio are `None` for continuous
    (`kl`) tokens. As `eval_results.json`, the card and `hf-vitvq info` report them."""
    tokens = tokens_per_image(config, num_tokens)
    if config.quantizer_type == "kl":
        return {"tokens_per_image": tokens, "bits_per_image": None, "bits_per_pixel": None, "compression_ratio": None}
    bits = tokens * math.log2(config.codebook_size)  # with all tokens: config.bits_per_image
    pixels = config.image_size**2
    return {
        "tokens_per_image": tokens,
        "bits_per_image": bits,
        "bits_per_pixel": bits / pixels,
        "compression_ratio": 24 * pixels / bits,
    }


def quantizer_description(config: ViTVQConfig) -> str:
    """The quantizer and its training options in words, e.g. "vq: 4096 x 12 codes, l2-normalised (cosine), learned
    codebook, straight-through gradients, commitment 0.25"."""
    kind = config.quantizer_type
    if kind == "kl":
        return (
            f"kl: continuous tokens of {config.codebook_dim} channels (Gaussian posterior, its mean at inference), KL "
            f"weight {config.kl_loss_weight}"
        )
    if kind == "fsq":
        levels = list(config.fsq_levels)
        return f"fsq: finite scalar quantization, levels {levels} per channel ({config.codebook_size} codes)"
    if kind == "lfq":
        parts = [f"lookup-free: {config.codebook_dim} sign bits per token ({config.codebook_size} codes)"]
    else:
        codes = f"{config.codebook_size} x {config.codebook_dim} codes"
        parts = [f"{config.num_quantizers} residual levels of {codes}" if kind == "rvq" else codes]
        parts.append("l2-normalised (cosine)" if config.use_l2_norm_codes else "Euclidean")
        if config.factorized_code_dim:
            parts.append(f"search in {config.factorized_code_dim} dimensions (factorized)")
        if config.use_simvq:
            parts.append("SimVQ (frozen basis x learned map)")
        parts.append(f"EMA codebook (decay {config.ema_decay})" if config.use_ema_codebook else "learned codebook")
        if config.kmeans_init:
            parts.append("k-means init")
        if config.dead_code_steps:
            parts.append(f"codes unused for {config.dead_code_steps} steps re-seeded")
        if config.dead_code_threshold:
            parts.append(f"codes under {config.dead_code_threshold} hits per step re-seeded")
        parts.append("rotation trick" if config.use_rotation_trick else "straight-through gradients")
    parts.append(f"commitment {config.commitment_cost}")
    if config.entropy_loss_weight:
        parts.append(f"entropy loss {config.entropy_loss_weight}")
    return f"{kind}: " + ", ".join(parts)


def token_dropout_description(config: ViTVQConfig) -> str | None:
    """Which prefixes of the token sequence decode, in words, for a model trained with tail-token dropout; else
    `None`."""
    if config.token_dropout == "none":
        return None
    return (
        f"tail-token dropout: the first k tokens decode, for any {config.min_num_tokens} <= k <= "
        f"{config.num_latent_tokens} (coarse for small k)"
    )


# --------------------------------------------------------------------------------------------------------------------
# Card parts
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class TrainingDetails:
    """What a card says about how the weights were trained. Every field but `data` may be unknown (`None`/empty):
    the card then leaves its row out.

    Args:
        data: what the model was trained on, in words (a dataset id, a folder, ...).
        steps: optimizer steps.
        images_per_step: images per optimizer step, over all processes and accumulation steps.
        learning_rate: peak learning rate.
        lr_schedule: e.g. "cosine, 200 warm-up steps".
        loss: the training loss in words, e.g. "L2 x 1 + quantizer x 1".
        weights: which weights were saved, e.g. "exponential moving average".
        validation: metric -> value of the last validation during training.
        notes: free text (e.g. who trained the weights, where the recipe is described).
    """

    data: str
    steps: int | None = None
    images_per_step: int | None = None
    learning_rate: float | None = None
    lr_schedule: str | None = None
    loss: str | None = None
    weights: str | None = None
    validation: dict[str, float] = field(default_factory=dict)
    notes: str | None = None

    def to_markdown(self) -> str:
        rows = [("data", self.data)]
        if self.steps is not None:
            rows.append(("steps", str(self.steps)))
        if self.images_per_step is not None:
            rows.append(("images per step", str(self.images_per_step)))
        if self.learning_rate is not None:
            schedule = f" ({self.lr_schedule})" if self.lr_schedule else ""
            rows.append(("learning rate", f"{self.learning_rate:g}{schedule}"))
        if self.loss is not None:
            rows.append(("loss", self.loss))
        if self.weights is not None:
            rows.append(("weights", self.weights))
        table = "\n".join(["| | |", "|---|---|", *(f"| {name} | {value} |" for name, value in rows)])
        parts = [table]
        if self.validation:
            values = ", ".join(f"{name} {value:.4g}" for name, value in self.validation.items())
            parts.append(f"Last validation during training: {values}.")
        if self.notes:
            parts.append(self.notes)
        return "\n\n".join(parts)


def hub_dataset_id(name: str | None) -> str | None:
    """`name` when it is a Hub dataset id (`namespace/name`, as every Hub dataset is named), else `None`: local
    folders and files, and `datasets`' packaged builders (`imagefolder`, `parquet`, ...), which have no namespace."""
    if name is None or looks_like_local_path(name) or name.count("/") != 1 or Path(name).exists():
        return None
    return name


def decoder_head_description(config: ViTVQConfig) -> str:
    if config.decoder_head == "maskgit_vqgan":
        return (
            f"two-stage: logits over a {config.maskgit_num_codes} x {config.maskgit_code_dim} MaskGIT-VQGAN codebook, "
            "MaskGIT-VQGAN convolutional decoder"
        )
    return "single-stage: linear pixel head and a 3x3 conv"


def architecture_table(config: ViTVQConfig) -> str:
    """Markdown table of the architecture and the compression numbers of `config`."""
    side = config.image_size
    rows = [
        ("input", f"{side}x{side} RGB, patch {config.patch_size} ({config.num_patches} patches)"),
        ("parameters", f"{parameter_counts(config)['total'] / 1e6:.2f} M"),
    ]
    for role in ("encoder", "decoder"):
        sizes = config.encoder_sizes if role == "encoder" else config.decoder_sizes
        rows.append((role, f"ViT, width {sizes.hidden_size}, {sizes.num_hidden_layers} layers, "
                           f"{sizes.num_attention_heads} heads"))  # fmt: skip
    rows += [
        ("latent tokens", str(config.num_latent_tokens)),
        ("quantizer", quantizer_description(config)),
        ("decoder head", decoder_head_description(config)),
    ]
    if (prefixes := token_dropout_description(config)) is not None:
        rows.append(("prefixes", prefixes))
    numbers = compression_numbers(config)
    if numbers["bits_per_image"] is not None:
        rows += [
            ("token ids per image", f"{numbers['tokens_per_image']}, each in [0, {config.codebook_size})"),
            ("bits per image", f"{numbers['bits_per_image']:g} ({numbers['bits_per_pixel']:.4f} bits per pixel)"),
            ("compression", f"{numbers['compression_ratio']:,.0f}x smaller than 24-bit RGB pixels"),
        ]
    return "\n".join(["| | |", "|---|---|", *(f"| {name} | {value} |" for name, value in rows)])


def usage_snippet(config: ViTVQConfig, model_id: str) -> str:
    """Python that loads `model_id` with the package and without it, tokenizes images and decodes them."""
    low, high = config.pixel_value_range
    if config.quantizer_type == "kl":
        encode = "latents = model.encode(pixel_values)  # (batch, num_latent_tokens, codebook_dim): posterior means"
        decode_input = "latents"
    else:
        shape = "num_latent_tokens, num_quantizers" if config.quantizer_type == "rvq" else "num_latent_tokens"
        encode = f"token_ids = model.encode(pixel_values)  # (batch, {shape}) int64"
        decode_input = "token_ids"
    return f"""With this package installed (`pip install hf-vitvq`), importing it registers the model with the Auto
classes:

```python
import hf_vitvq  # noqa: F401
from PIL import Image
from transformers import AutoImageProcessor, AutoModel

model = AutoModel.from_pretrained("{model_id}").eval()
processor = AutoImageProcessor.from_pretrained("{model_id}")

pixel_values = processor(Image.open("photo.jpg"), return_tensors="pt").pixel_values  # (1, 3, {config.image_size}, \
{config.image_size}) in [{low:g}, {high:g}]
{encode}
images = processor.postprocess(model.decode({decode_input}), output_type="pil")
```

Without it, the modeling code saved with the weights runs instead (`transformers`, `torch`, `numpy` and `pillow`
are all it needs):

```python
model = AutoModel.from_pretrained("{model_id}", trust_remote_code=True).eval()
processor = AutoImageProcessor.from_pretrained("{model_id}", trust_remote_code=True)
```"""


def intended_use(config: ViTVQConfig) -> str:
    side = config.image_size
    what = "continuous latent tokens" if config.quantizer_type == "kl" else "discrete token ids"
    return (
        f"Turning {side}x{side} images into {config.num_latent_tokens} {what} and back: the input of image "
        "generators that model token sequences (MaskGIT, autoregressive transformers), compact image codes for "
        "retrieval or compression experiments, and research on image tokenizers. Not for identifying people, and not "
        "a lossless codec."
    )


def limitations(config: ViTVQConfig, extra: Sequence[str] = ()) -> str:
    side = config.image_size
    items = [
        f"Fixed resolution: the image processor resizes the short side to {side} pixels and centre-crops a "
        f"{side}x{side} square; what lies outside the crop is not encoded, and detail below that resolution is lost.",
        "Reconstructions are approximations: small text, faces, fine textures and exact colours change; measure "
        "the error on your own images (`hf-vitvq eval`) before relying on it.",
        "The tokens reflect the training data: images far from it (other domains, drawings, medical or satellite "
        "images) reconstruct worse, and biases of that data carry over to anything generated through the tokens.",
        *extra,
    ]
    return "\n".join(f"- {item}" for item in items)


def configuration_section(config: ViTVQConfig) -> str:
    """The configuration fields that differ from `ViTVQConfig()`'s defaults, folded (config.json has them all;
    `to_json_string(use_diff=True)` lists every field of a dataclass config)."""
    defaults = ViTVQConfig().to_dict()
    bookkeeping = {"architectures", "auto_map", "dtype", "transformers_version", "_name_or_path"}
    differing = {
        key: value
        for key, value in config.to_dict().items()
        if key not in bookkeeping and (key not in defaults or defaults[key] != value)
    }
    config_json = json.dumps(differing, indent=2)
    summary = "config.json: the fields that differ from the defaults of `ViTVQConfig()`"
    return f"## Configuration\n\n<details>\n<summary>{summary}</summary>\n\n```json\n{config_json}\n```\n\n</details>"


def evaluation_section(results: Mapping[str, Any] | None, model_id: str) -> str:
    """The card's evaluation section, between markers that [`with_eval_results`] finds again."""
    if results is None:
        body = (
            "Not evaluated yet. Measure its reconstruction quality and codebook usage with\n\n"
            f"```bash\nhf-vitvq eval {model_id} --dataset_name DATASET --split validation --output_dir eval\n"
            f"hf-vitvq card {model_id} --eval eval/eval_results.json\n```\n\n"
            "(the second command puts the results into this card)."
        )
    else:
        body = eval_results_table(results)
    return f"{EVAL_SECTION_BEGIN}\n## Evaluation\n\n{body}\n{EVAL_SECTION_END}"


# --------------------------------------------------------------------------------------------------------------------
# Cards
# --------------------------------------------------------------------------------------------------------------------


def model_card(
    config: ViTVQConfig,
    model_id: str,
    description: str,
    *,
    title: str | None = None,
    license: str = "apache-2.0",
    datasets: Sequence[str] = (),
    training: TrainingDetails | None = None,
    eval_results: Mapping[str, Any] | None = None,
    extra_limitations: Sequence[str] = (),
) -> ModelCard:
    """The card of a tokenizer with configuration `config`.

    Args:
        config: the model's configuration (architecture, compression numbers, the configuration section).
        model_id: the Hub id or folder that the loading snippets use.
        description: the first paragraph: what the model is and where its weights come from.
        title: the heading; defaults to the last part of `model_id`.
        license: the weights' license (Hub license id).
        datasets: Hub dataset ids the model was trained on (metadata `datasets`; see [`hub_dataset_id`]).
        training: how it was trained, when known.
        eval_results: an `eval_results.json` as [`read_eval_results`] reads it: the evaluation section and
            `model-index`.
        extra_limitations: limitations to add to the general ones.
    """
    if eval_results is not None:
        check_eval_results(eval_results)
    title = title or Path(model_id.rstrip("/")).name
    data = ModelCardData(
        library_name="transformers",
        license=license,
        pipeline_tag=PIPELINE_TAG,
        tags=list(TAGS),
        datasets=list(datasets) or None,
    )
    if eval_results is not None:  # model-index names the model
        data.model_name, data.eval_results = title, eval_results_to_model_index(eval_results)
    training_text = training.to_markdown() if training is not None else "Not recorded for these weights."
    sections = [
        f"# {title}",
        description,
        f"## Model\n\n{architecture_table(config)}",
        f"## How to use\n\n{usage_snippet(config, model_id)}",
        f"## Intended use\n\n{intended_use(config)}",
        f"## Limitations\n\n{limitations(config, extra_limitations)}",
        f"## Training\n\n{training_text}",
        evaluation_section(eval_results, model_id),
        configuration_section(config),
        f"## Citation\n\nThe architecture is TiTok's:\n\n```bibtex\n{TITOK_CITATION}\n```",
    ]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n\n".join(sections) + "\n")


def with_eval_results(card: ModelCard, eval_results: Mapping[str, Any], model_id: str) -> ModelCard:
    """`card` with `eval_results` as its evaluation section (replacing the one between the hf-vitvq markers, else
    appended) and as its `model-index` (replacing any; the model is named as before, else by the card's title)."""
    check_eval_results(eval_results)
    section = evaluation_section(eval_results, model_id)
    pattern = re.compile(re.escape(EVAL_SECTION_BEGIN) + r".*?" + re.escape(EVAL_SECTION_END), flags=re.DOTALL)
    text = card.text
    text = pattern.sub(lambda _: section, text, count=1) if pattern.search(text) else f"{text.rstrip()}\n\n{section}\n"
    metadata = ModelCardData(**card.data.to_dict())
    title = re.search(r"^# (.+)$", text, flags=re.MULTILINE)
    metadata.model_name = card.data.model_name or (title[1] if title else Path(model_id.rstrip("/")).name)
    metadata.eval_results = eval_results_to_model_index(eval_results)
    return ModelCard(f"---\n{metadata.to_yaml()}\n---\n{text}")


__all__ = [
    "EVAL_METRICS",
    "TrainingDetails",
    "by_num_tokens_table",
    "compression_numbers",
    "eval_results_table",
    "eval_results_to_model_index",
    "hub_dataset_id",
    "model_card",
    "parameter_counts",
    "quantizer_description",
    "read_eval_results",
    "with_eval_results",
]
