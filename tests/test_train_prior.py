"""training/train_prior.py end to end (both priors, exact resume after kill -9 and in process, Hub push, clear errors),
the token data and evaluation helpers it uses, and the generation pipeline with `hf-vitvq sample`'s function."""

from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
from pathlib import Path
from types import ModuleType

import pyarrow
import pyarrow.parquet
import pytest
import torch
from conftest import REPO_ROOT, load_script, tiny_config_kwargs
from fake_hub import fake_hub_fixture  # noqa: F401
from PIL import Image
from safetensors.torch import load_file
from training_utils import interrupt_and_resume
from transformers import AutoModelForCausalLM

from hf_vitvq import ViTVQConfig, ViTVQImageProcessor, ViTVQMaskGITConfig, ViTVQMaskGITModel, ViTVQModel
from hf_vitvq.ar_prior import ARPriorVocabulary, ar_prior_config
from hf_vitvq.generation_pipeline import (
    ViTVQGenerationPipeline,
    add_sample_arguments,
    generate_prior_tokens,
    load_prior,
    sample_command,
)
from hf_vitvq.training import checkpointing
from hf_vitvq.training.prior_data import PRETOKENIZE_INFO, SequenceBatches, TokenSequences, token_matrix
from hf_vitvq.training.prior_evaluation import (
    ar_bits_per_token,
    class_unigram_bits_per_token,
    maskgit_bits_per_token,
    memorisation_fraction,
    unigram_bits_per_token,
)

SCRIPT = REPO_ROOT / "training" / "train_prior.py"
# A few seconds of training: a 2-block prior of width 32 on 7 tokens of 37 codes, no tracker.
QUICK = ["--train_batch_size", "8", "--learning_rate", "3e-3", "--lr_warmup_steps", "2", "--logging_steps", "1",
         "--report_to", "none", "--model_overrides",
         json.dumps({"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2})]  # fmt: skip
QUICK_AR = ["--prior", "ar", *QUICK[:-1],
            json.dumps({"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                        "intermediate_size": 40})]  # fmt: skip


def write_token_shards(
    folder: Path,
    num_train: int = 64,
    num_validation: int | None = 16,
    labels: bool = True,
    codebook_size: int | None = 37,
    largest_id: int = 36,
    length: int = 7,
) -> Path:
    """Parquet shards in `hf-vitvq pretokenize`'s layout (key, token_ids, label; two train shards and a validation
    one), with a pretokenize_info.json holding `codebook_size` when it is not None."""
    folder.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(0)

    def write(name: str, count: int, offset: int) -> None:
        columns = {
            "key": [f"image-{offset + index}" for index in range(count)],
            "token_ids": torch.randint(0, largest_id + 1, (count, length), generator=generator).tolist(),
        }
        if labels:
            columns["label"] = [(offset + index) % 3 for index in range(count)]
        pyarrow.parquet.write_table(pyarrow.table(columns), folder / f"{name}.parquet")

    write("train-00000-of-00002", num_train // 2, 0)
    write("train-00001-of-00002", num_train - num_train // 2, num_train // 2)
    if num_validation:
        write("validation-00000-of-00001", num_validation, num_train)
    if codebook_size is not None:
        (folder / PRETOKENIZE_INFO).write_text(json.dumps({"codebook_size": codebook_size, "tokens_per_image": length}))
    return folder


def load_train_prior() -> ModuleType:
    """training/train_prior.py as a module (a script, not part of the package), imported once."""
    return load_script(SCRIPT, "train_prior")


def run_in_process(argv: list[str]) -> None:
    """`train_prior.main(argv)` in this process, with Accelerate's singletons reset afterwards."""
    from accelerate.state import AcceleratorState, GradientState

    try:
        load_train_prior().main(argv)
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()


def losses(output_dir: Path) -> dict[int, float]:
    """The loss of each step in train_log.jsonl (a resumed run's later entries win)."""
    entries = [json.loads(line) for line in (output_dir / "train_log.jsonl").read_text().splitlines()]
    return {entry["step"]: entry["loss"] for entry in entries}


def same_weights(folder_a: Path, folder_b: Path) -> bool:
    a, b = load_file(folder_a / "model.safetensors"), load_file(folder_b / "model.safetensors")
    return a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)


def save_tiny_tokenizer(folder: Path, **overrides: object) -> Path:
    torch.manual_seed(0)
    model = ViTVQModel(ViTVQConfig(**tiny_config_kwargs(**overrides)))
    model.save_pretrained(folder)
    ViTVQImageProcessor.for_image_size(model.config.image_size).save_pretrained(folder)
    return folder


# ---------------------------------------------------------------------------------------------- training runs


def test_maskgit_crash_and_resume_gives_the_uninterrupted_run(tmp_path):
    """kill -9 after a checkpoint, resume `latest`: the later losses and the final (EMA and raw) weights equal an
    uninterrupted run's bit for bit. The state that must resume: the masking and label-dropout draws, dropout, the
    data order, the EMA."""
    data = write_token_shards(tmp_path / "tokens")
    common = [*QUICK, "--train_data_dir", str(data), "--max_train_steps", "12", "--checkpointing_steps", "4",
              "--checkpoints_total_limit", "2", "--validation_steps", "100", "--use_ema",
              "--ema_decay", "0.9"]  # fmt: skip
    run = interrupt_and_resume(common, tmp_path, kill_after_checkpoint=4, script="train_prior.py")
    reference_dir, crashed_dir, resumed_from = run.reference_dir, run.resumed_dir, run.resumed_from
    start = checkpointing.checkpoint_step(resumed_from)
    expected, actual = losses(reference_dir), losses(crashed_dir)
    assert start < 12 and [actual[s] for s in range(start + 1, 13)] == [expected[s] for s in range(start + 1, 13)]
    assert list(actual) == list(range(1, 13))
    for folder in ("final", "final_raw"):
        assert same_weights(reference_dir / folder, crashed_dir / folder), folder
    assert {p.name for p in checkpointing.checkpoint_dirs(crashed_dir)} == {"checkpoint-8", "checkpoint-12"}
    prior = load_prior(reference_dir / "final")
    assert isinstance(prior, ViTVQMaskGITModel) and prior.config.num_classes == 3
    assert (prior.config.codebook_size, prior.config.num_latent_tokens) == (37, 7)


def test_ar_training_resumed_in_process_equals_the_uninterrupted_run(tmp_path, caplog):
    """The stock Llama prior with label dropout: a run of 8 steps, and a copy resumed from its checkpoint-4, give the
    same losses for steps 5-8 and the same final weights (the copy's log lines of steps 5-8 are dropped first, and
    said so). A checkpoint that does not load is named in a `CheckpointError`, as for the tokenizer."""
    data = write_token_shards(tmp_path / "tokens", num_train=96)
    reference_dir = tmp_path / "reference"
    common = [*QUICK_AR, "--train_data_dir", str(data), "--max_train_steps", "8", "--checkpointing_steps", "4",
              "--validation_steps", "8"]  # fmt: skip
    run_in_process([*common, "--output_dir", str(reference_dir)])
    resumed_dir = tmp_path / "resumed"
    shutil.copytree(reference_dir, resumed_dir)
    for name in ("checkpoint-8", "final"):
        shutil.rmtree(resumed_dir / name)
    with caplog.at_level(logging.INFO):
        run_in_process([*common, "--output_dir", str(resumed_dir), "--resume_from_checkpoint", "latest"])
    assert f"Dropped 4 lines of later steps from {resumed_dir / 'train_log.jsonl'}" in caplog.text
    expected, actual = losses(reference_dir), losses(resumed_dir)
    assert list(actual) == list(range(1, 9)) and [actual[s] for s in range(5, 9)] == [expected[s] for s in range(5, 9)]
    assert same_weights(reference_dir / "final", resumed_dir / "final")
    prior = load_prior(resumed_dir / "final")
    assert type(prior).__name__ == "LlamaForCausalLM"
    assert ARPriorVocabulary.from_config(prior.config) == ARPriorVocabulary(37, 7, 3)
    plain = prior.generate(torch.tensor([[37], [38], [40]]))  # the saved generation defaults: 7 codes, sampled
    assert plain.shape == (3, 8) and int(plain[:, 1:].max()) < 37
    card = (resumed_dir / "final" / "README.md").read_text()
    assert "An autoregressive (LlamaForCausalLM) prior over the 7 token ids (37 codes)" in card
    assert "bits_per_token" in card
    checkpoint = reference_dir / "checkpoint-4"  # as written by older code (no manifest), then truncated
    (checkpoint / checkpointing.MANIFEST_NAME).unlink()
    weights = checkpoint / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(checkpointing.CheckpointError, match=f"Could not load checkpoint {checkpoint}"):
        run_in_process([*common, "--output_dir", str(reference_dir), "--resume_from_checkpoint", str(checkpoint)])


def test_unconditional_tokens_with_a_tokenizer_write_sample_grids(tmp_path):
    """No label column: an unconditional prior; `--tokenizer` gives the codebook size (no pretokenize_info.json) and
    sample grids at validation and in `final/`; without a validation split, the last rows are held out."""
    data = write_token_shards(tmp_path / "tokens", num_validation=None, labels=False, codebook_size=None)
    tokenizer = save_tiny_tokenizer(tmp_path / "tokenizer")
    output_dir = tmp_path / "run"
    run_in_process([*QUICK, "--train_data_dir", str(data), "--tokenizer", str(tokenizer), "--output_dir",
                    str(output_dir), "--max_train_steps", "2", "--validation_steps", "2", "--checkpointing_steps", "2",
                    "--validation_sequences", "8", "--num_validation_samples", "4",
                    "--sample_num_steps", "3"])  # fmt: skip
    prior = load_prior(output_dir / "final")
    assert prior.config.num_classes == 0
    for grid_path in (output_dir / "validation" / "step-0000002.png", output_dir / "final" / "samples.png"):
        assert Image.open(grid_path).size == (64, 64)  # 4 samples of 32x32 in a 2x2 grid


def test_push_to_hub_sends_the_final_prior(tmp_path, fake_hub):
    data = write_token_shards(tmp_path / "tokens")
    run_in_process([*QUICK, "--train_data_dir", str(data), "--output_dir", str(tmp_path / "run"),
                    "--max_train_steps", "2", "--checkpointing_steps", "2", "--validation_steps", "2",
                    "--push_to_hub", "--hub_model_id", "org/tiny-prior"])  # fmt: skip
    files = fake_hub.repos["org/tiny-prior"]
    for name in ("config.json", "model.safetensors", "README.md", "modeling_vitvq_maskgit.py", "modeling_vitvq.py"):
        assert name in files, name
    assert json.loads(files["config.json"])["model_type"] == "vitvq_maskgit"
    assert "hf-vitvq sample org/tiny-prior" in files["README.md"].decode()


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["--prior", "diffusion"], r"--prior must be one of \('maskgit', 'ar'\)"),
        (["--model_config", "huge"], "--model_config 'huge' is neither one of"),
        (["--model_overrides", '{"hiden_size": 8}'], r"'hiden_size' \(did you mean 'hidden_size'\?\) not field"),
        (["--label_column", "missing"], "The dataset has no column 'missing'"),
        (["--num_classes", "2"], r"holds labels outside \[0, 2\): \[2\]"),
        (["--codebook_size", "20"], "The data hold token id 36, outside the codebook of 20 codes"),
        (["--train_batch_size", "100"], "64 training sequences do not fill one batch of 100"),
    ],
)
def test_bad_arguments_and_data_say_what_is_wrong(tmp_path, extra, match):
    data = write_token_shards(tmp_path / "tokens", codebook_size=None if "--codebook_size" in extra else 37)
    with pytest.raises(ValueError, match=match):
        run_in_process([*QUICK, "--train_data_dir", str(data), "--output_dir", str(tmp_path / "run"),
                        "--max_train_steps", "1", *extra])  # fmt: skip


def test_unknown_codebook_size_and_a_foreign_tokenizer_are_refused(tmp_path):
    data = write_token_shards(tmp_path / "tokens", codebook_size=None)
    common = [*QUICK, "--train_data_dir", str(data), "--output_dir", str(tmp_path / "run"), "--max_train_steps", "1"]
    with pytest.raises(ValueError, match="The codebook size is unknown: pass --tokenizer"):
        run_in_process(common)
    tokenizer = save_tiny_tokenizer(tmp_path / "tokenizer", num_latent_tokens=5)
    with pytest.raises(ValueError, match="encodes an image into 5 ids, the data hold sequences of 7"):
        run_in_process([*common, "--tokenizer", str(tokenizer)])


# ---------------------------------------------------------------------------------------------- data and evaluation


def test_token_columns_nested_levels_flatten_row_major_and_ragged_ones_are_refused():
    nested = pyarrow.array([[[1, 2], [3, 4], [5, 6]], [[7, 8], [9, 10], [11, 12]]])  # (N, L, levels)
    assert token_matrix(nested, "token_ids").tolist() == [[1, 2, 3, 4, 5, 6], [7, 8, 9, 10, 11, 12]]
    with pytest.raises(ValueError, match=r"different lengths \(2 to 3\)"):
        token_matrix(pyarrow.array([[1, 2], [1, 2, 3]]), "token_ids")
    with pytest.raises(ValueError, match="must hold lists of integer token ids"):
        token_matrix(pyarrow.array([[0.5, 1.0]]), "token_ids")


def test_sequence_batches_split_ranks_disjointly_and_resume_exactly():
    ranks = [SequenceBatches(20, 3, seed=1, rank=rank, world_size=2) for rank in range(2)]
    first_epoch = [torch.cat([ranks[r].next_indices() for _ in range(3)]) for r in range(2)]
    assert not set(first_epoch[0].tolist()) & set(first_epoch[1].tolist())
    batches = SequenceBatches(20, 3, seed=1)
    for _ in range(8):  # into the second epoch (6 batches of 3 per epoch)
        batches.next_indices()
    state = batches.state_dict()
    expected = [batches.next_indices() for _ in range(5)]
    resumed = SequenceBatches(20, 3, seed=1)
    resumed.load_state_dict(state)
    assert state == {"epoch": 1, "position": 2}
    assert all(torch.equal(a, b) for a, b in zip(expected, [resumed.next_indices() for _ in range(5)], strict=True))


def test_baselines_and_bounds_match_hand_computations():
    train, held_out = torch.tensor([[0, 0, 1]]), torch.tensor([[0, 1, 2, 3]])
    # add-one smoothed frequencies over 4 codes: p = (3, 2, 1, 1) / 7
    expected = -sum(math.log2(p) for p in (3 / 7, 2 / 7, 1 / 7, 1 / 7)) / 4
    assert unigram_bits_per_token(train, held_out, 4) == pytest.approx(expected, rel=1e-9)
    # per class: class 0 trains on (0, 0), class 1 on (1, 1): p(.|0) = (3, 1, 1, 1) / 6, p(.|1) = (1, 3, 1, 1) / 6
    labelled_train = TokenSequences(torch.tensor([[0, 0], [1, 1]]), torch.tensor([0, 1]))
    labelled_held_out = TokenSequences(torch.tensor([[0, 2], [1, 0]]), torch.tensor([0, 1]))
    expected = -sum(math.log2(p) for p in (3 / 6, 1 / 6, 3 / 6, 1 / 6)) / 4
    assert class_unigram_bits_per_token(labelled_train, labelled_held_out, 4) == pytest.approx(expected, rel=1e-9)
    assert memorisation_fraction(torch.tensor([[0, 0, 1], [1, 0, 0]]), train) == 0.5

    # A MaskGIT prior that ignores its input (zero head weights, log q as head bias) predicts q everywhere: on
    # sequences of one repeated code each, every draw of masked positions then scores exactly -log2 q(code).
    torch.manual_seed(0)
    model = ViTVQMaskGITModel(ViTVQMaskGITConfig(codebook_size=4, num_latent_tokens=3, num_classes=0, hidden_size=8,
                                                 num_hidden_layers=1, num_attention_heads=2))  # fmt: skip
    q = torch.tensor([0.4, 0.3, 0.2, 0.1])
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.copy_(q.log())
    sequences = TokenSequences(torch.tensor([[0, 0, 0], [3, 3, 3]]))
    cross_entropy = -(math.log2(0.4) + math.log2(0.1)) / 2
    assert maskgit_bits_per_token(model, sequences, draws=3) == pytest.approx(cross_entropy, rel=1e-5)

    # An autoregressive prior with a zero head is uniform over the codes: log2(K) bits, whatever the classes.
    llama = AutoModelForCausalLM.from_config(ar_prior_config(
        ARPriorVocabulary(4, 3, num_classes=2), hidden_size=16, intermediate_size=16, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1))  # fmt: skip
    with torch.no_grad():
        llama.lm_head.weight.zero_()
    labelled = TokenSequences(torch.tensor([[0, 1, 2], [3, 3, 0]]), torch.tensor([0, 1]))
    assert ar_bits_per_token(llama, labelled) == pytest.approx(2.0, rel=1e-6)


# ---------------------------------------------------------------------------------------------- pipeline and sample


def tiny_maskgit(codebook_size: int = 37, length: int = 7, num_classes: int = 3) -> ViTVQMaskGITModel:
    torch.manual_seed(0)
    config = ViTVQMaskGITConfig(codebook_size=codebook_size, num_latent_tokens=length, num_classes=num_classes,
                                hidden_size=32, num_hidden_layers=1, num_attention_heads=2)  # fmt: skip
    return ViTVQMaskGITModel(config).eval()


def test_sample_command_writes_a_grid_and_one_png_per_sample(tmp_path):
    tokenizer = save_tiny_tokenizer(tmp_path / "tokenizer")
    tiny_maskgit().save_pretrained(tmp_path / "prior")
    parser = add_sample_arguments(argparse.ArgumentParser())
    args = parser.parse_args([str(tmp_path / "prior"), str(tokenizer), "-o", str(tmp_path / "out"),
                              "--class_labels", "0", "1", "2", "0", "--num_steps", "3",
                              "--guidance_scale", "2"])  # fmt: skip
    paths = sample_command(args)
    assert [path.name for path in paths] == ["grid.png", "sample_000_class_0.png", "sample_001_class_1.png",
                                             "sample_002_class_2.png", "sample_003_class_0.png"]  # fmt: skip
    assert Image.open(paths[0]).size == (64, 64) and Image.open(paths[1]).size == (32, 32)
    again = sample_command(args)  # the same seed gives the same images
    assert Image.open(again[1]).tobytes() == Image.open(paths[1]).tobytes()
    args = parser.parse_args([str(tmp_path / "prior"), str(tokenizer), "-o", str(tmp_path / "out"), "--top_k", "5"])
    with pytest.raises(ValueError, match=r"\['top_k'\] do not apply to a MaskGIT prior"):
        sample_command(args)


def test_pipeline_unflattens_rvq_levels_refuses_kl_and_mismatched_priors(tmp_path):
    rvq_config = ViTVQConfig(**tiny_config_kwargs(quantizer_type="rvq", num_quantizers=2, use_l2_norm_codes=False))
    torch.manual_seed(0)
    tokenizer = ViTVQModel(rvq_config).eval()
    processor = ViTVQImageProcessor.for_image_size(32)
    pipeline = ViTVQGenerationPipeline(tiny_maskgit(length=14), tokenizer, processor)
    token_ids = pipeline.generate_token_ids([0, 1], num_steps=4, generator=torch.Generator().manual_seed(0))
    flat = generate_prior_tokens(pipeline.prior, [0, 1], num_steps=4, generator=torch.Generator().manual_seed(0))
    assert token_ids.shape == (2, 7, 2) and torch.equal(token_ids.flatten(1), flat)
    assert [image.size for image in pipeline([0, 1], num_steps=4)] == [(32, 32), (32, 32)]
    with pytest.raises(ValueError, match="predicts sequences of 7 ids of 37 codes, the tokenizer decodes 14 ids"):
        ViTVQGenerationPipeline(tiny_maskgit(length=7), tokenizer, processor)
    kl = ViTVQModel(ViTVQConfig(**tiny_config_kwargs(quantizer_type="kl")))
    with pytest.raises(ValueError, match="diffusion-style prior"):
        ViTVQGenerationPipeline(tiny_maskgit(), kl, processor)
    llama = AutoModelForCausalLM.from_config(ar_prior_config(
        ARPriorVocabulary(37, 14, num_classes=3), hidden_size=16, intermediate_size=16, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1))  # fmt: skip
    ar_pipeline = ViTVQGenerationPipeline(llama, tokenizer, processor)
    assert len(ar_pipeline([0, 1, 2], top_k=5, generator=torch.Generator().manual_seed(0))) == 3
    with pytest.raises(ValueError, match=r"\['num_steps'\] do not apply to an autoregressive prior"):
        ar_pipeline([0], num_steps=4)
    with pytest.raises(ValueError, match="is a ViTVQConfig .* not a prior over token ids"):
        tokenizer.save_pretrained(tmp_path / "tokenizer")
        load_prior(tmp_path / "tokenizer")


def test_prior_benchmark_reports_bits_memorisation_and_distinct_samples(tmp_path):
    """benchmarks/prior_eval.py's quality part on the fixture shards, with a MaskGIT and a Llama prior."""
    data = write_token_shards(tmp_path / "tokens")
    tiny_maskgit().save_pretrained(tmp_path / "maskgit")
    llama = AutoModelForCausalLM.from_config(ar_prior_config(
        ARPriorVocabulary(37, 7, num_classes=3), hidden_size=16, intermediate_size=16, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1))  # fmt: skip
    llama.save_pretrained(tmp_path / "ar")
    bench = load_script(REPO_ROOT / "benchmarks" / "prior_eval.py", "prior_eval")
    tokenizer = save_tiny_tokenizer(tmp_path / "tokenizer")
    args = bench.parse_args(["--tokens", str(data), "--priors", str(tmp_path / "maskgit"), str(tmp_path / "ar"),
                             "--num_samples", "6", "--num_steps", "3", "--skip_speed", "--tokenizer", str(tokenizer),
                             "--fid_images", "4", "--output", str(tmp_path / "out.json")])  # fmt: skip
    rows = bench.main(args)["quality"]
    assert [row["model"].split(" (")[0] for row in rows] == [
        "uniform, log2(K)", "unigram", "unigram per class", "held-out sequences", "training sequences", "MaskGIT",
        "LlamaForCausalLM",
    ]  # fmt: skip
    assert rows[0]["bits_per_token"] == pytest.approx(math.log2(37))
    for row in rows[-2:]:  # untrained priors: about uniform
        assert abs(row["bits_per_token"] - math.log2(37)) < 0.5
        assert 0 <= row["memorised_fraction"] <= 1 and 0 < row["distinct_fraction"] <= 1
    assert all(math.isfinite(row["gfid"]) for row in rows[-3:])  # 4 images of an untrained tokenizer: any value
    assert json.loads((tmp_path / "out.json").read_text())["quality"] == rows
