"""The model card (README.md with Hub metadata) written next to every exported model."""

from __future__ import annotations

from pathlib import Path
from string import Template
from typing import Any

from hf_vitvq import ViTVQConfig

TEMPLATE = Path(__file__).resolve().parents[2] / "model_cards" / "vitvq_template.md"


def render_model_card(
    config: ViTVQConfig,
    training_args: Any,
    data_args: Any,
    steps: int,
    metrics: dict[str, float],
    weights: str,
    num_processes: int = 1,
) -> str:
    """Fill `model_cards/vitvq_template.md` from the run's configuration and final metrics."""
    dataset = data_args.dataset_name or data_args.train_data_dir or "scikit-image sample photos"
    rows = "\n".join(f"| {name} | {value:.4f} |" for name, value in metrics.items())
    repo_id = training_args.hub_model_id or Path(training_args.output_dir).name
    return Template(TEMPLATE.read_text()).substitute(
        model_name=repo_id,
        repo_id=repo_id,
        dataset=dataset,
        image_size=config.image_size,
        num_latent_tokens=config.num_latent_tokens,
        codebook_size=config.codebook_size,
        bits_per_image=f"{config.bits_per_image:.0f}",
        steps=steps,
        effective_batch=training_args.train_batch_size * training_args.gradient_accumulation_steps * num_processes,
        learning_rate=training_args.learning_rate,
        lr_scheduler=training_args.lr_scheduler,
        lr_warmup_steps=training_args.lr_warmup_steps,
        l1_weight=training_args.reconstruction_l1_weight,
        l2_weight=training_args.reconstruction_l2_weight,
        quantizer_weight=training_args.quantizer_loss_weight,
        weights=weights,
        metrics_table=f"| metric | value |\n|---|---|\n{rows}" if rows else "No validation was run.",
        config_json=config.to_json_string(use_diff=False).strip(),
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
    """Write README.md into `folder` for a run on `num_processes` processes; returns its path."""
    weights = "exponential moving average" if training_args.use_ema and folder.name == "final" else "raw"
    path = folder / "README.md"
    path.write_text(render_model_card(config, training_args, data_args, steps, metrics, weights, num_processes))
    return path
