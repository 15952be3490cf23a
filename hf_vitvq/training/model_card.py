"""The model card (README.md with Hub metadata) that `train.py` writes next to every exported model: the run's
training details on top of the card writer of `hf_vitvq.model_card`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hf_vitvq import ViTVQConfig
from hf_vitvq.model_card import TrainingDetails, hub_dataset_id, model_card

EMBEDDED_DATA = "the embedded demo data (random crops of six scikit-image sample photos)"
EMBEDDED_DATA_LIMITATION = (
    "Trained for a demonstration on crops of six photos: it shows that training works, it is not a general-purpose "
    "tokenizer."
)


def describe_loss(training_args: Any) -> str:
    """The loss as the card states it: every term with its weight, the discriminator's settings when it is on, and
    what was trained when only the decoder was."""
    args = training_args
    terms = [f"L1 x {args.reconstruction_l1_weight}", f"L2 x {args.reconstruction_l2_weight}"]
    terms += [f"{name} x {weight}" for name, weight in (("LPIPS", args.lpips_weight),
              ("ConvNeXt", args.convnext_weight)) if weight > 0]  # fmt: skip
    terms.append(f"quantizer x {args.quantizer_loss_weight}")
    description = " + ".join(terms)
    if args.discriminator_weight > 0:
        weight = "adaptive (VQGAN) x " if args.gan_weight_mode == "adaptive" else ""
        description += (
            f" + adversarial x {weight}{args.discriminator_weight} (hinge-loss patch discriminator from step "
            f"{args.discriminator_start_step}, LeCAM x {args.lecam_weight})"
        )
    if args.finetune_decoder_from is not None:
        description += f"; decoder only, from {args.finetune_decoder_from} (encoder and codebook frozen)"
    return description


def training_details(
    training_args: Any, data_args: Any, steps: int, metrics: dict[str, float], weights: str, num_processes: int = 1
) -> TrainingDetails:
    """What the card says about a run of `train.py` on `num_processes` processes that ended after `steps` steps with
    validation `metrics`, saving `weights` (e.g. "raw")."""
    args = training_args
    return TrainingDetails(
        data=data_args.dataset_name or data_args.train_data_dir or EMBEDDED_DATA,
        steps=steps,
        images_per_step=args.train_batch_size * args.gradient_accumulation_steps * num_processes,
        learning_rate=args.learning_rate,
        lr_schedule=f"{args.lr_scheduler}, {args.lr_warmup_steps} warm-up steps",
        loss=describe_loss(args),
        weights=weights,
        validation=metrics,
    )


def write_model_card(
    folder: Path,
    config: ViTVQConfig,
    training_args: Any,
    data_args: Any,
    steps: int,
    metrics: dict[str, float],
    num_processes: int,
) -> Path:
    """Write the card of a run on `num_processes` processes into `folder` (README.md; see `hf_vitvq.model_card`);
    returns its path. The loading snippets name `--hub_model_id` when set, else `folder`."""
    weights = "exponential moving average" if training_args.use_ema and folder.name == "final" else "raw"
    details = training_details(training_args, data_args, steps, metrics, weights, num_processes)
    embedded = data_args.dataset_name is None and data_args.train_data_dir is None
    description = (
        "A TiTok-style 1D image tokenizer (ViT-VQ, [arXiv 2406.07550](https://arxiv.org/abs/2406.07550)) trained with "
        f"hf-vitvq on {details.data}."
    )
    card = model_card(
        config,
        training_args.hub_model_id or str(folder),
        description,
        title=Path(training_args.hub_model_id or training_args.output_dir).name,
        datasets=[dataset] if (dataset := hub_dataset_id(data_args.dataset_name)) else (),
        training=details,
        extra_limitations=[EMBEDDED_DATA_LIMITATION] if embedded else (),
    )
    path = folder / "README.md"
    card.save(path)
    return path
