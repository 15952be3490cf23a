"""Priors over token ids: held-out bits per token against the unigram and uniform baselines, memorisation, and
sampling speed on this machine.

    .venv/bin/python benchmarks/prior_eval.py --tokens outputs/prior_demo/tokens \\
        --priors outputs/prior_demo/maskgit/final outputs/prior_demo/ar/final
    .venv/bin/python benchmarks/prior_eval.py --skip_quality            # sampling speed only (untrained priors)

Quality (`--tokens`, a pre-tokenized folder with train and validation splits, and `--priors`, folders written by
training/train_prior.py):
- bits per validation token of each prior: the autoregressive prior's exact negative log-likelihood, the MaskGIT
  prior's any-order upper bound (`hf_vitvq.training.prior_evaluation`, `--draws` draws per sequence); beside them the
  uniform baseline log2(K) and the unigram one (the training split's code frequencies, add-one smoothed);
- memorisation: of `--num_samples` samples (classes in turn, `--guidance_scale`, temperature 1, MaskGIT with
  `--num_steps`), the fraction identical to a training sequence, and the fraction of distinct samples; the same two
  fractions of the held-out sequences are the reference (low-entropy tokens repeat without any memorisation).

gFID (`--tokenizer`, `--fid_images N`): Fréchet Inception distance (`hf_vitvq.training.fid`: the TF-ported
Inception-v3 of the `eval` extra) between N samples of each prior (classes in turn, as above), decoded by the
tokenizer, and N held-out sequences decoded by the same tokenizer: the reference is what the tokenizer makes of real
held-out crops, so the number measures the prior, not the tokenizer. The row "training sequences" (N of them,
decoded) is the floor at this N: two samples of the same data.

Speed: token sequences per second of `generate` at `--batch_size` (32) for priors of the demo's sizes (width 128,
4 blocks; untrained: speed does not depend on the weights) over 32 and 128 tokens of 1024 codes, 6 classes: MaskGIT
with 8 and 64 decoding steps (64 needs 64 tokens or more), with and without guidance (which doubles each step's
batch), and the Llama prior (one step per token, KV cache). The fastest of `--repeats` rounds after a warm-up;
decoding the tokens to pixels is not included (see benchmarks/inference.py). Prints Markdown tables, writes JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM

from hf_vitvq import ViTVQImageProcessor, ViTVQMaskGITConfig, ViTVQMaskGITModel, ViTVQModel
from hf_vitvq.ar_prior import ARPriorVocabulary, ar_prior_config
from hf_vitvq.generation_pipeline import generate_prior_tokens, load_prior, prior_shape
from hf_vitvq.training.prior_data import load_token_data, pretokenize_info
from hf_vitvq.training.prior_evaluation import (
    ar_bits_per_token,
    class_unigram_bits_per_token,
    maskgit_bits_per_token,
    memorisation_fraction,
    uniform_bits_per_token,
    unigram_bits_per_token,
)

# The demo priors' sizes (training/configs/prior_demo_*.yaml, `tiny` in training/train_prior.py).
DEMO_WIDTH, DEMO_LAYERS, DEMO_HEADS = 128, 4, 4
SPEED_CODEBOOK_SIZE, SPEED_CLASSES = 1024, 6


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", help="Pre-tokenized folder (train and validation splits) the priors trained on.")
    parser.add_argument("--priors", nargs="*", default=[], help="Prior folders written by training/train_prior.py.")
    parser.add_argument("--draws", type=int, default=8, help="MaskGIT bound: (m, positions) draws per sequence.")
    parser.add_argument("--num_samples", type=int, default=256, help="Samples per prior for the memorisation check.")
    parser.add_argument("--num_steps", type=int, default=8, help="MaskGIT decoding steps of those samples.")
    parser.add_argument("--guidance_scale", type=float, default=1.0, help="Guidance of those samples (1: none).")
    parser.add_argument("--tokenizer", help="The tokenizer folder of the tokens: enables gFID (--fid_images).")
    parser.add_argument("--fid_images", type=int, default=0, help="Images per side of each gFID (0: no gFID).")
    parser.add_argument("--skip_quality", action="store_true", help="Only time sampling.")
    parser.add_argument("--skip_speed", action="store_true", help="Only measure quality.")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's).")
    parser.add_argument("--output", default="outputs/benchmarks/prior_eval.json")
    return parser.parse_args(argv)


def token_data(folder: str) -> Any:
    """The train and validation splits of a pre-tokenized folder, read as training/train_prior.py reads them."""
    data_args = argparse.Namespace(
        train_data_dir=folder, dataset_name=None, dataset_config_name=None, data_files=None, token_column="token_ids",
        label_column="label", num_classes=None, train_split="train", validation_split=None, validation_sequences=None,
    )  # fmt: skip
    return load_token_data(data_args)


class GenerationFID:
    """gFID against `reference_ids` decoded by the tokenizer (module docstring): features of the reference computed
    once, then one Fréchet distance per call."""

    def __init__(self, tokenizer_dir: str, reference_ids: torch.Tensor, batch_size: int = 32) -> None:
        from hf_vitvq.training.fid import InceptionFeatures

        self.tokenizer = ViTVQModel.from_pretrained(tokenizer_dir).eval()
        self.processor = ViTVQImageProcessor.from_pretrained(tokenizer_dir)
        self.inception = InceptionFeatures()
        self.batch_size = batch_size
        self.reference = self.features(reference_ids)

    def features(self, token_ids: torch.Tensor) -> torch.Tensor:
        """(N, 2048) Inception features of the decoded (N, L) token ids."""
        features = []
        for batch in token_ids.split(self.batch_size):
            images = self.processor.postprocess(self.tokenizer.decode(batch), output_type="pt")  # uint8 (B, 3, H, W)
            features.append(self.inception(images))
        return torch.cat(features)

    def __call__(self, token_ids: torch.Tensor) -> float:
        from hf_vitvq.training.fid import ReconstructionFID

        metric = ReconstructionFID(self.inception)
        metric.update(self.reference, real=True)
        metric.update(self.features(token_ids), real=False)
        return float(metric.compute())


def spread(sequences: torch.Tensor, count: int) -> torch.Tensor:
    """`count` rows of `sequences` evenly spaced over it (over every class of data stored class by class)."""
    return sequences[torch.linspace(0, len(sequences) - 1, count).round().long()]


def quality(args: argparse.Namespace) -> list[dict[str, Any]]:
    """One row per baseline, one for the held-out sequences (the memorisation reference), one for training sequences
    (the gFID floor) with `--fid_images`, and one per prior: bits per validation token, memorised and distinct
    fractions, gFID."""
    data = token_data(args.tokens)
    codebook_size = int(pretokenize_info(args.tokens)["codebook_size"])
    train_ids, validation = data.train.token_ids, data.validation
    rows = [
        {"model": "uniform, log2(K)", "bits_per_token": uniform_bits_per_token(codebook_size)},
        {
            "model": "unigram (training code frequencies)",
            "bits_per_token": unigram_bits_per_token(train_ids, validation.token_ids, codebook_size),
        },
    ]
    if data.num_classes:
        bits = class_unigram_bits_per_token(data.train, validation, codebook_size)
        rows.append({"model": "unigram per class (training code frequencies of the class)", "bits_per_token": bits})
    # the data's own rate of exact repeats: how often a held-out crop's tokens equal a training crop's
    rows.append(
        {
            "model": "held-out sequences (reference for the memorisation columns)",
            "memorised_fraction": memorisation_fraction(validation.token_ids, train_ids),
            "distinct_fraction": len({tuple(row) for row in validation.token_ids.tolist()}) / len(validation),
        }
    )
    fid = None
    if args.fid_images:
        fid = GenerationFID(args.tokenizer, spread(validation.token_ids, args.fid_images))
        rows.append({"model": "training sequences (the gFID floor at this number of images)",
                     "gfid": fid(spread(train_ids, args.fid_images))})  # fmt: skip
    for folder in args.priors:
        prior = load_prior(folder)
        shape = prior_shape(prior)
        if shape[:2] != (codebook_size, data.train.sequence_length):
            raise ValueError(f"{folder} models {shape[1]} ids of {shape[0]} codes, not the tokens in {args.tokens}.")
        is_maskgit = isinstance(prior, ViTVQMaskGITModel)
        if is_maskgit:
            bits = maskgit_bits_per_token(prior, validation, draws=args.draws)
        else:
            bits = ar_bits_per_token(prior, validation)
        labels = [index % data.num_classes for index in range(args.num_samples)] if data.num_classes else None
        sampling = {"num_steps": args.num_steps} if is_maskgit else {}
        samples = generate_prior_tokens(
            prior,
            labels,
            None if labels else args.num_samples,
            guidance_scale=args.guidance_scale,
            generator=torch.Generator().manual_seed(0),
            **sampling,
        )
        row = {
            "model": f"{'MaskGIT' if is_maskgit else type(prior).__name__} ({folder})",
            "parameters_M": sum(p.numel() for p in prior.parameters()) / 1e6,
            "bits_per_token": bits,
            "bound": is_maskgit,
            "memorised_fraction": memorisation_fraction(samples, train_ids),
            "distinct_fraction": len({tuple(row) for row in samples.tolist()}) / len(samples),
        }
        if fid is not None:
            row["gfid"] = fid(samples[: args.fid_images])  # classes in turn: as balanced as the reference
        rows.append(row)
    return rows


def demo_sized_prior(kind: str, length: int) -> torch.nn.Module:
    """An untrained prior of the demo's sizes over `length` tokens of 1024 codes, 6 classes."""
    torch.manual_seed(0)
    if kind == "maskgit":
        config = ViTVQMaskGITConfig(
            codebook_size=SPEED_CODEBOOK_SIZE, num_latent_tokens=length, num_classes=SPEED_CLASSES,
            hidden_size=DEMO_WIDTH, num_hidden_layers=DEMO_LAYERS, num_attention_heads=DEMO_HEADS,
        )  # fmt: skip
        return ViTVQMaskGITModel(config).eval()
    vocabulary = ARPriorVocabulary(SPEED_CODEBOOK_SIZE, length, SPEED_CLASSES)
    config = ar_prior_config(vocabulary, hidden_size=DEMO_WIDTH, num_hidden_layers=DEMO_LAYERS,
                             num_attention_heads=DEMO_HEADS, intermediate_size=344)  # fmt: skip
    return AutoModelForCausalLM.from_config(config).eval()


def speed(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Sequences per second of `generate` at `--batch_size`, per (prior, length, steps, guidance)."""
    cases = [("maskgit", 32, 8), ("maskgit", 128, 8), ("maskgit", 128, 64), ("ar", 32, 32), ("ar", 128, 128)]
    labels = [index % SPEED_CLASSES for index in range(args.batch_size)]
    rows = []
    for kind, length, steps in cases:
        prior = demo_sized_prior(kind, length)
        for guidance in (1.0, 3.0):
            options = {"num_steps": steps, "guidance_schedule": "constant"} if kind == "maskgit" else {}

            def sample(prior=prior, guidance=guidance, options=options) -> None:
                generate_prior_tokens(prior, labels, guidance_scale=guidance,
                                      generator=torch.Generator().manual_seed(0), **options)  # fmt: skip

            sample()  # warm-up
            seconds = []
            for _ in range(args.repeats):
                started = time.perf_counter()
                sample()
                seconds.append(time.perf_counter() - started)
            rows.append(
                {"prior": kind, "tokens": length, "steps": steps, "guidance": guidance != 1.0,
                 "batch_size": args.batch_size, "sequences_per_second": args.batch_size / min(seconds)}
            )  # fmt: skip
            print(rows[-1], flush=True)
    return rows


def markdown(quality_rows: list[dict[str, Any]], speed_rows: list[dict[str, Any]]) -> str:
    lines = []
    if quality_rows:
        lines += [
            "| model | parameters (M) | bits / token | memorised | distinct | gFID |",
            "|---|---|---|---|---|---|",
        ]
        for row in quality_rows:
            bits = (
                f"{row['bits_per_token']:.3f}" + (" (bound)" if row.get("bound") else "")
                if "bits_per_token" in row
                else "-"
            )
            params = f"{row['parameters_M']:.2f}" if "parameters_M" in row else "-"
            memorised = f"{row['memorised_fraction']:.1%}" if "memorised_fraction" in row else "-"
            distinct = f"{row['distinct_fraction']:.1%}" if "distinct_fraction" in row else "-"
            gfid = f"{row['gfid']:.1f}" if "gfid" in row else "-"
            lines.append(f"| {row['model']} | {params} | {bits} | {memorised} | {distinct} | {gfid} |")
        lines.append("")
    if speed_rows:
        lines += ["| prior | tokens | steps | guidance | sequences/s at batch 32 |", "|---|---|---|---|---|"]
        for row in speed_rows:
            guidance, rate = "yes" if row["guidance"] else "no", row["sequences_per_second"]
            lines.append(f"| {row['prior']} | {row['tokens']} | {row['steps']} | {guidance} | {rate:.1f} |")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> dict[str, Any]:
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.skip_quality and not (args.tokens and args.priors):
        raise SystemExit("Pass --tokens and --priors, or --skip_quality.")
    if args.fid_images and not (args.tokenizer and 2 <= args.fid_images <= args.num_samples):
        raise SystemExit("gFID needs --tokenizer and 2 <= --fid_images <= --num_samples.")
    quality_rows = [] if args.skip_quality else quality(args)
    speed_rows = [] if args.skip_speed else speed(args)
    results = {
        "machine": {
            "processor": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
        },  # fmt: skip
        "quality": quality_rows,
        "speed": speed_rows,
    }
    print(markdown(quality_rows, speed_rows))
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main(parse_args())
