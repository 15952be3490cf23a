"""training/train.py with the perceptual and adversarial terms (issue 17): each optimizer moves only its own model,
the adaptive weight, gradient accumulation, exact resume with the discriminator, older checkpoints, decoder
fine-tuning, and bad input. Offline: LPIPS with a randomly initialised VGG16 trunk saved under torchvision's names,
a tiny random ConvNeXt; all numbers here test the plumbing, not perceptual quality."""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections.abc import Iterator

import pytest
import torch
from accelerate.state import AcceleratorState, GradientState
from conftest import REPO_ROOT, load_script, run_on_two_cpu_processes, tiny_config_kwargs
from safetensors.torch import load_file
from training_utils import QUICK_RUN, interrupt_and_resume, load_train_script, losses_by_step, run_in_process
from transformers import ConvNextConfig, ConvNextForImageClassification

from hf_vitvq import ViTVQConfig, ViTVQModel, ViTVQModelOutput
from hf_vitvq.training import checkpointing, losses
from hf_vitvq.training.arguments import parse_args
from hf_vitvq.training.discriminator import PatchDiscriminator
from hf_vitvq.training.losses import (
    DiscriminatorLoss,
    LossWeights,
    TokenizerLoss,
    decoder_last_layer,
    to_signed_unit_range,
)
from hf_vitvq.training.perceptual import PerceptualWeightsError, VGG16Features
from hf_vitvq.training.trainer_utils import NonFiniteLossError, build_discriminator

# The demo's codebook recipe with restarts after 2 idle steps: state that a forward changes (as in test_training_runs).
DEMO_CODEBOOK = {"use_l2_norm_codes": False, "use_ema_codebook": True, "dead_code_steps": 2, "use_rotation_trick": True}
# Decoding in the training process: worker processes take longer to start than these runs take to train.
QUICK = [*QUICK_RUN, "--dataloader_num_workers", "0"]
# A small discriminator (the cost of TiTok's width 128 grows with its square) from the first step.
GAN = ["--discriminator_weight", "0.1", "--discriminator_hidden_channels", "32",
       "--discriminator_learning_rate", "1e-3"]  # fmt: skip


@pytest.fixture(scope="module")
def random_vgg16_file(tmp_path_factory):
    """A VGG16 file with torchvision's key names and random weights (we have no real ones offline)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "vgg16-random.pth"
    torch.save(VGG16Features().state_dict(), path)
    return path


@pytest.fixture(scope="module")
def tiny_convnext_folder(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("convnext")
    config = ConvNextConfig(num_stages=2, depths=[1, 1], hidden_sizes=[8, 16], num_labels=10)
    ConvNextForImageClassification(config).save_pretrained(folder)
    return folder


@contextlib.contextmanager
def built_trainer(argv: list[str]) -> Iterator:
    """A `Trainer` of training/train.py in this process, with Accelerate's singletons reset afterwards."""
    try:
        yield load_train_script().Trainer(*parse_args(argv))
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()


def logged(output_dir, term: str) -> dict[int, float]:
    """`term` at each step of `train_log.jsonl` that logged it (a resumed run's later entries win)."""
    entries = [json.loads(line) for line in (output_dir / "train_log.jsonl").read_text().splitlines()]
    return {entry["step"]: entry[term] for entry in entries if term in entry}


def parameters_of(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: parameter.detach().clone() for name, parameter in module.named_parameters()}


def same(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(before[name], after[name]) for name in before)


def changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> bool:
    return any(not torch.equal(before[name], after[name]) for name in before)


# ---------------------------------------------------------------------------------------------- the two losses


def test_each_loss_reaches_only_its_own_model():
    """The tokenizer's loss leaves no gradient on the discriminator (whose parameters require grad, as in training)
    and the discriminator's none on the tokenizer, while each reaches its own parameters."""
    torch.manual_seed(0)
    model = ViTVQModel(ViTVQConfig(**tiny_config_kwargs()))
    discriminator = PatchDiscriminator(hidden_channels=32, pooled_size=4)
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    output = model(images)
    terms = TokenizerLoss(LossWeights(adversarial=0.1))(images, output, discriminator=discriminator)
    terms["loss"].backward()
    assert all(parameter.grad is None for parameter in discriminator.parameters())
    assert model.decoder.conv_out.weight.grad is not None and model.encoder.projection.weight.grad is not None

    model.zero_grad(set_to_none=True)
    discriminator_terms = DiscriminatorLoss()(discriminator, images, output.reconstruction)
    discriminator_terms["discriminator_loss"].backward()
    assert all(parameter.grad is None for parameter in model.parameters())
    assert all(parameter.grad is not None for parameter in discriminator.parameters())


def test_loss_terms_are_named_weighted_and_summed(random_vgg16_file, tiny_convnext_folder):
    from hf_vitvq.training.trainer_utils import load_convnext, load_lpips

    torch.manual_seed(0)
    model = ViTVQModel(ViTVQConfig(**tiny_config_kwargs()))
    discriminator = PatchDiscriminator(hidden_channels=32, pooled_size=4)
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    output = model(images)
    weights = LossWeights(reconstruction_l1=0.5, reconstruction_l2=2.0, quantizer=3.0, lpips=0.7, convnext=0.2,
                          adversarial=0.1)  # fmt: skip
    loss_fn = TokenizerLoss(
        weights, lpips=load_lpips(str(random_vgg16_file)), convnext=load_convnext(str(tiny_convnext_folder))
    )
    terms = loss_fn(images, output, discriminator=discriminator)
    weighted = {"l1_loss": 0.5, "l2_loss": 2.0, "lpips_loss": 0.7, "convnext_loss": 0.2, "quantizer_loss": 3.0,
                "adversarial_loss": 0.1}  # fmt: skip
    expected = sum(weight * terms[name] for name, weight in weighted.items())
    torch.testing.assert_close(terms["loss"], expected, rtol=1e-5, atol=1e-7)
    assert terms["adversarial_weight"].item() == pytest.approx(0.1)
    assert terms["lpips_loss"] > 0 and terms["convnext_loss"] > 0
    # the same images give zero perceptual distances
    same_output = type(output)(reconstruction=images, quantizer_loss=torch.tensor(0.0))
    no_gan = TokenizerLoss(weights, lpips=loss_fn.lpips, convnext=loss_fn.convnext)(images, same_output)
    assert no_gan["lpips_loss"].abs() < 1e-6 and no_gan["convnext_loss"].abs() < 1e-8
    assert "adversarial_loss" not in no_gan
    with pytest.raises(ValueError, match="lpips weight is 0.7 but no lpips network"):
        TokenizerLoss(weights, convnext=loss_fn.convnext)


def test_the_networks_see_pixels_in_their_range_whatever_the_model_uses():
    """A model with pixels in [0, 1] (`pixel_value_range`): the discriminator (and LPIPS) get [-1, 1]."""
    seen = []
    discriminator = PatchDiscriminator(hidden_channels=32, pooled_size=4)
    discriminator.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0].detach()))
    images = torch.tensor([0.0, 0.25, 1.0]).view(1, 3, 1, 1).expand(1, 3, 32, 32)
    output = ViTVQModelOutput(reconstruction=images.clone(), quantizer_loss=torch.tensor(0.0))
    TokenizerLoss(LossWeights(adversarial=0.1), pixel_value_range=(0.0, 1.0))(images, output, discriminator)
    DiscriminatorLoss(pixel_value_range=(0.0, 1.0))(discriminator, images, output.reconstruction)
    expected = torch.tensor([-1.0, -0.5, 1.0]).view(1, 3, 1, 1).expand(1, 3, 32, 32)
    assert len(seen) == 2 and torch.equal(seen[0], expected) and torch.equal(seen[1], torch.cat([expected] * 2))
    assert torch.equal(to_signed_unit_range(expected, (-1.0, 1.0)), expected)


@pytest.mark.parametrize("head", ["pixels", "maskgit_vqgan"])
def test_adaptive_weight_is_the_ratio_of_gradient_norms_at_the_decoder_last_layer(head):
    """lambda = ||grad_W L_rec|| / (||grad_W L_gan|| + 1e-4) at the last conv of the pixel decoder or of the
    MaskGIT-VQGAN head, times --discriminator_weight."""
    overrides = {"decoder_head": head}
    if head == "maskgit_vqgan":
        overrides.update(maskgit_num_codes=16, maskgit_code_dim=8, maskgit_hidden_channels=32,
                         maskgit_channel_mult=[1, 1, 1, 1], maskgit_num_res_blocks=1)  # fmt: skip
    torch.manual_seed(0)
    model = ViTVQModel(ViTVQConfig(**tiny_config_kwargs(**overrides)))
    last_layer = decoder_last_layer(model)
    expected_layer = model.decoder.conv_out if head == "pixels" else model.decoder.maskgit_head.decoder.conv_out
    assert last_layer is expected_layer.weight
    discriminator = PatchDiscriminator(hidden_channels=32, pooled_size=4)
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    output = model(images)
    weights = LossWeights(reconstruction_l1=0.5, reconstruction_l2=1.0, adversarial=0.3)
    terms = TokenizerLoss(weights, gan_weight_mode="adaptive")(images, output, discriminator, last_layer)

    reconstruction = (
        0.5 * (output.reconstruction - images).abs().mean() + (output.reconstruction - images).square().mean()
    )
    adversarial = -discriminator(output.reconstruction).mean()
    (reconstruction_grad,) = torch.autograd.grad(reconstruction, last_layer, retain_graph=True)
    (adversarial_grad,) = torch.autograd.grad(adversarial, last_layer, retain_graph=True)
    expected = 0.3 * reconstruction_grad.norm() / (adversarial_grad.norm() + 1e-4)
    torch.testing.assert_close(terms["adversarial_weight"], expected.detach(), rtol=1e-4, atol=1e-8)
    torch.testing.assert_close(terms["loss"], reconstruction + output.quantizer_loss + expected * adversarial,
                               rtol=1e-5, atol=1e-7)  # fmt: skip
    assert terms["adversarial_weight"] != pytest.approx(0.3)  # not the fixed weight


# ---------------------------------------------------------------------------------------------- the training step


def test_the_tokenizer_step_leaves_the_discriminator_and_the_discriminator_step_leaves_the_tokenizer(tmp_path):
    """In `Trainer.train_step`: with the discriminator's optimizer step disabled, the discriminator stays bit for bit
    while the tokenizer moves; with the tokenizer's disabled, the tokenizer stays while the discriminator moves."""
    # TiTok's codebook (no parameter that the forward moves), and no warm-up (whose first step has a learning rate 0)
    argv = [*QUICK, *GAN, "--output_dir", str(tmp_path), "--max_train_steps", "4", "--validation_images", "2",
            "--codebook_recipe", "preset", "--lr_warmup_steps", "0"]  # fmt: skip
    with built_trainer(argv) as trainer:
        model = trainer.accelerator.unwrap_model(trainer.model)
        discriminator = trainer.accelerator.unwrap_model(trainer.discriminator)
        batches = trainer.stream.batches(4)

        raw_discriminator_optimizer = trainer.discriminator_optimizer.optimizer
        tokenizer_before, discriminator_before = parameters_of(model), parameters_of(discriminator)
        raw_discriminator_optimizer.step = lambda *args, **kwargs: None
        batch = next(batches)
        logs = trainer.train_step(batch.pixel_values, batch.stream_state)
        assert "adversarial_loss" in logs and "discriminator_loss" in logs  # both losses ran
        assert same(discriminator_before, parameters_of(discriminator))
        assert changed(tokenizer_before, parameters_of(model))
        del raw_discriminator_optimizer.step  # the class's step again

        tokenizer_before, discriminator_before = parameters_of(model), parameters_of(discriminator)
        trainer.optimizer.step = lambda *args, **kwargs: None
        batch = next(batches)
        trainer.train_step(batch.pixel_values, batch.stream_state)
        assert same(tokenizer_before, parameters_of(model))
        assert changed(discriminator_before, parameters_of(discriminator))


def test_gradient_accumulation_with_the_discriminator_equals_the_larger_batch(tmp_path):
    """2 micro-batches of 4 give the tokenizer and discriminator weights of batches of 8 (fixed GAN weight; LeCAM at
    weight 0, whose averages move once per micro-batch; TiTok's codebook, with no per-forward state). Adam's epsilon
    is 1 and clipping off, so that an update follows the gradient's size (a gradient of the wrong scale shows) and
    not its sign (a near-zero gradient, such as a bias before a GroupNorm gets, would turn float noise into a full
    step)."""
    common = [*QUICK, *GAN, "--max_train_steps", "3", "--checkpointing_steps", "3", "--validation_steps", "100",
              "--codebook_recipe", "preset", "--lecam_weight", "0",
              "--adam_epsilon", "1", "--max_grad_norm", "1e9", "--learning_rate", "0.1",
              "--discriminator_learning_rate", "0.1"]  # fmt: skip
    run_in_process([*common, "--output_dir", str(tmp_path / "big"), "--train_batch_size", "8"])
    run_in_process([*common, "--output_dir", str(tmp_path / "accumulated"), "--train_batch_size", "4",
                    "--gradient_accumulation_steps", "2"])  # fmt: skip
    for name in ("model.safetensors", "model_1.safetensors"):
        big = load_file(tmp_path / "big" / "checkpoint-3" / name)
        accumulated = load_file(tmp_path / "accumulated" / "checkpoint-3" / name)
        for key, tensor in big.items():
            torch.testing.assert_close(accumulated[key], tensor, atol=2e-6, rtol=1e-5, msg=f"{name} {key}")
    assert list(losses_by_step(tmp_path / "accumulated", "hinge_loss")) == [1, 2, 3]  # optimizer steps


def test_two_processes_keep_both_models_and_the_lecam_averages_in_sync(tmp_path):
    """DDP on 2 CPU processes (gloo), with gradient accumulation, the adaptive weight and LeCAM: every rank ends with
    the same tokenizer, discriminator and LeCAM averages, and the discriminator trained."""
    output_dir = tmp_path / "run"
    argv = [*QUICK, *GAN, "--output_dir", str(output_dir), "--max_train_steps", "6", "--checkpointing_steps", "100",
            "--validation_steps", "100", "--discriminator_start_step", "2", "--gradient_accumulation_steps", "2",
            "--gan_weight_mode", "adaptive", "--lecam_weight", "0.1"]  # fmt: skip
    result = run_on_two_cpu_processes([str(REPO_ROOT / "tests" / "gan_ddp_check.py"), str(tmp_path), *argv])
    assert "2 process(es) = 16 images per step" in result.stderr
    for name in ("tokenizer", "discriminator", "lecam"):
        ranks = [load_file(tmp_path / f"{name}{rank}.safetensors") for rank in (0, 1)]
        assert all(torch.equal(ranks[0][key], ranks[1][key]) for key in ranks[0]), name
    lecam = load_file(tmp_path / "lecam0.safetensors")
    assert lecam["lecam.ema_real"] != 0 and lecam["lecam.ema_fake"] != 0
    assert sorted(logged(output_dir, "discriminator_loss")) == [3, 4, 5, 6]
    initial = build_discriminator(3, 32, 32, seed=0).state_dict()
    trained = load_file(tmp_path / "discriminator0.safetensors")
    assert any(not torch.equal(initial[key], trained[key]) for key in trained)


def test_bf16_autocast_trains_both_models_with_float32_discriminator_losses(tmp_path):
    output_dir = tmp_path / "run"
    run_in_process([*QUICK, *GAN, "--output_dir", str(output_dir), "--max_train_steps", "2", "--train_batch_size",
                    "2", "--mixed_precision", "bf16", "--checkpointing_steps", "2", "--validation_steps", "100",
                    "--gan_weight_mode", "adaptive"])  # fmt: skip
    entry = json.loads((output_dir / "train_log.jsonl").read_text().splitlines()[-1])
    for name in ("loss", "adversarial_loss", "adversarial_weight", "hinge_loss", "lecam_loss", "discriminator_loss"):
        assert torch.isfinite(torch.tensor(entry[name])), name
    weights = load_file(output_dir / "checkpoint-2" / "model_1.safetensors")
    assert all(tensor.dtype == torch.float32 for tensor in weights.values())  # master weights stay float32


# ---------------------------------------------------------------------------------------------- checkpoints


def test_crash_and_resume_with_the_discriminator_gives_the_uninterrupted_run(tmp_path):
    """kill -9 after a checkpoint, resume `latest`: every later loss of both models, the final tokenizer weights,
    the discriminator's weights, its optimizer's state and the LeCAM averages equal those of an uninterrupted run
    (the discriminator starts at step 5, before the checkpoint: its scheduler has stepped)."""
    common = [*QUICK, *GAN, "--max_train_steps", "20", "--checkpointing_steps", "10", "--checkpoints_total_limit",
              "2", "--validation_steps", "1000", "--use_ema", "--ema_decay", "0.9", "--discriminator_start_step", "5",
              "--lecam_weight", "0.1", "--gan_weight_mode", "adaptive",
              "--model_overrides", json.dumps(DEMO_CODEBOOK)]  # fmt: skip
    run = interrupt_and_resume(common, tmp_path, kill_after_checkpoint=10)
    reference_dir, crashed_dir, resumed_from = run.reference_dir, run.resumed_dir, run.resumed_from

    start = checkpointing.checkpoint_step(resumed_from)
    for term in ("loss", "discriminator_loss", "lecam_loss", "adversarial_weight", "discriminator_lr"):
        expected, actual = logged(reference_dir, term), logged(crashed_dir, term)
        assert [actual[step] for step in range(start + 1, 21)] == [expected[step] for step in range(start + 1, 21)]
    for name in ("final/model.safetensors", "final_raw/model.safetensors", "checkpoint-20/model_1.safetensors"):
        reference_weights, resumed_weights = load_file(reference_dir / name), load_file(crashed_dir / name)
        assert all(torch.equal(reference_weights[key], resumed_weights[key]) for key in reference_weights), name
    for name in ("optimizer_1.bin", "custom_checkpoint_4.pkl"):  # the discriminator's AdamW; the LeCAM averages
        reference_state = torch.load(reference_dir / "checkpoint-20" / name, weights_only=True)
        resumed_state = torch.load(crashed_dir / "checkpoint-20" / name, weights_only=True)
        assert str(reference_state) == str(resumed_state), name
    lecam = torch.load(reference_dir / "checkpoint-20" / "custom_checkpoint_4.pkl", weights_only=True)
    assert set(lecam) == {"lecam.ema_real", "lecam.ema_fake"} and lecam["lecam.ema_real"] != 0


def test_a_checkpoint_without_discriminator_resumes_with_one_and_not_the_other_way(tmp_path, caplog):
    output_dir = tmp_path / "run"
    common = [*QUICK, "--output_dir", str(output_dir), "--checkpointing_steps", "2", "--validation_steps", "100"]
    run_in_process([*common, "--max_train_steps", "2"])  # pixel losses only: as older versions wrote checkpoints
    assert not (output_dir / "checkpoint-2" / "model_1.safetensors").exists()
    with caplog.at_level(logging.INFO):
        run_in_process([*common, *GAN, "--max_train_steps", "4", "--resume_from_checkpoint", "latest"])
    assert "checkpoint-2 holds no discriminator state: the discriminator starts from scratch" in caplog.text
    assert "Resumed from" in caplog.text
    log = [json.loads(line) for line in (output_dir / "train_log.jsonl").read_text().splitlines()]
    assert [("discriminator_loss" in entry) for entry in log] == [False, False, True, True]
    assert (output_dir / "checkpoint-4" / "model_1.safetensors").is_file()

    with pytest.raises(checkpointing.CheckpointError, match="holds a discriminator"):
        run_in_process([*common, "--max_train_steps", "6", "--resume_from_checkpoint", "latest"])


def test_a_non_finite_discriminator_loss_stops_with_the_last_good_state_saved(tmp_path, monkeypatch):
    """The discriminator's loss turns NaN at step 4: the run stops, and checkpoint-3 holds exactly the state of a run
    that stopped at step 3 (the LeCAM averages that step 4's forward had moved are restored)."""
    common = [*QUICK, *GAN, "--checkpointing_steps", "3", "--validation_steps", "100", "--lecam_weight", "0.1",
              "--lr_scheduler", "constant"]  # fmt: skip
    run_in_process([*common, "--output_dir", str(tmp_path / "reference"), "--max_train_steps", "3"])

    hinge, calls = losses.hinge_discriminator_loss, []

    def nan_at_step_4(real_logits, fake_logits):
        calls.append(1)
        value = hinge(real_logits, fake_logits)
        return value * torch.nan if len(calls) == 4 else value

    monkeypatch.setattr(losses, "hinge_discriminator_loss", nan_at_step_4)
    output_dir = tmp_path / "run"
    with pytest.raises(
        NonFiniteLossError, match=r"discriminator loss became nan at step 4; the last good state \(step 3"
    ):
        run_in_process([*common, "--output_dir", str(output_dir), "--max_train_steps", "10"])
    for name in ("model.safetensors", "model_1.safetensors"):
        expected, saved = (
            load_file(tmp_path / "reference" / "checkpoint-3" / name),
            load_file(output_dir / "checkpoint-3" / name),
        )
        assert all(torch.equal(expected[key], saved[key]) for key in expected), name
    expected = torch.load(tmp_path / "reference" / "checkpoint-3" / "custom_checkpoint_3.pkl", weights_only=True)
    saved = torch.load(output_dir / "checkpoint-3" / "custom_checkpoint_3.pkl", weights_only=True)
    assert saved.keys() == expected.keys() and all(torch.equal(saved[k], expected[k]) for k in expected)


# ---------------------------------------------------------------------------------------------- decoder fine-tuning


def test_decoder_finetuning_keeps_the_encoder_and_codebook_bit_identical(tmp_path, random_vgg16_file):
    """From a trained model whose quantizer has state (EMA codebook, restarts after 2 idle steps): with the full loss,
    the decoder changes; the encoder's weights and every quantizer tensor (codebook, EMA statistics) stay."""
    source = tmp_path / "stage1"
    run_in_process([*QUICK, "--output_dir", str(source), "--max_train_steps", "3", "--checkpointing_steps", "100",
                    "--validation_steps", "100", "--model_overrides", json.dumps(DEMO_CODEBOOK)])  # fmt: skip
    output_dir = tmp_path / "stage2"
    run_in_process([*QUICK, *GAN, "--output_dir", str(output_dir), "--finetune_decoder_from", str(source / "final"),
                    "--max_train_steps", "6", "--checkpointing_steps", "100", "--validation_steps", "3",
                    "--lpips_weight", "0.5", "--lpips_trunk", str(random_vgg16_file), "--quantizer_loss_weight", "0",
                    "--use_ema", "--ema_decay", "0.5"])  # fmt: skip
    before = load_file(source / "final" / "model.safetensors")
    assert any(key.startswith("quantize.") and "usage" not in key for key in before)  # the codebook and its EMA
    for folder in ("final", "final_raw"):
        after = load_file(output_dir / folder / "model.safetensors")
        assert before.keys() == after.keys()
        frozen = [key for key in before if key.startswith(("encoder.", "quantize."))]
        assert all(torch.equal(before[key], after[key]) for key in frozen), folder
        decoder = [key for key in before if key.startswith("decoder.")]
        assert any(not torch.equal(before[key], after[key]) for key in decoder), folder
    log = [json.loads(line) for line in (output_dir / "train_log.jsonl").read_text().splitlines()]
    assert all("lpips_loss" in entry and "adversarial_loss" in entry for entry in log)
    assert "codebook_usage" not in log[-1]  # a frozen quantizer counts no hits
    card = (output_dir / "final" / "README.md").read_text()
    assert "LPIPS x 0.5" in card and "adversarial x 0.1" in card and f"decoder only, from {source / 'final'}" in card


# ---------------------------------------------------------------------------------------------- bad input


def test_weight_files_that_cannot_load_stop_the_run_before_training(tmp_path, tiny_convnext_folder):
    output_dir = tmp_path / "run"
    common = [*QUICK, "--output_dir", str(output_dir), "--max_train_steps", "2"]
    missing = tmp_path / "missing" / "vgg16.pth"
    with pytest.raises(PerceptualWeightsError, match=rf"{re.escape(str(missing))}, but there is no such file"):
        run_in_process([*common, "--lpips_weight", "1", "--lpips_trunk", str(missing)])
    wrong = tmp_path / "wrong.pth"
    torch.save({"features.0.weight": torch.zeros(3)}, wrong)
    with pytest.raises(PerceptualWeightsError, match=rf"{re.escape(str(wrong))} does not hold torchvision's VGG16"):
        run_in_process([*common, "--lpips_weight", "1", "--lpips_trunk", str(wrong)])
    with pytest.raises(PerceptualWeightsError, match="wrong.pth does not hold torchvision ConvNeXt weights"):
        run_in_process([*common, "--convnext_weight", "0.1", "--convnext_model", str(wrong)])
    with pytest.raises(PerceptualWeightsError, match="convnext_small.pth: no such file or folder"):
        run_in_process([*common, "--convnext_weight", "0.1", "--convnext_model", str(tmp_path / "convnext_small.pth")])
    empty = tmp_path / "empty_folder"
    empty.mkdir()
    with pytest.raises(PerceptualWeightsError, match="Could not load the ConvNeXt classifier .*empty_folder"):
        run_in_process([*common, "--convnext_weight", "0.1", "--convnext_model", str(empty)])
    assert not (output_dir / "train_log.jsonl").exists()  # nothing trained


def test_without_vgg16_weights_offline_lpips_is_off_with_one_warning(tmp_path, monkeypatch, caplog):
    from huggingface_hub import constants

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))  # no cached VGG16 file
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    output_dir = tmp_path / "run"
    with caplog.at_level(logging.WARNING):
        run_in_process([*QUICK, "--output_dir", str(output_dir), "--max_train_steps", "2", "--lpips_weight", "1",
                        "--validation_steps", "2"])  # fmt: skip
    warnings = [record.getMessage() for record in caplog.records if "LPIPS term is off" in record.getMessage()]
    assert len(warnings) == 1 and "--lpips_trunk" in warnings[0] and "HF_HUB_OFFLINE" in warnings[0]
    assert "lpips_loss" not in (output_dir / "train_log.jsonl").read_text()
    # the card says what was trained
    assert "| loss | L1 x 0.0 + L2 x 1.0 + quantizer x 1.0 |" in (output_dir / "final" / "README.md").read_text()


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--gan_weight_mode", "sometimes"], "fixed, adaptive"),
        (["--discriminator_weight", "-1"], "--discriminator_weight must be >= 0"),
        (["--convnext_weight", "0.1"], "--convnext_weight needs --convnext_model"),
        (["--discriminator_learning_rate", "0"], "--discriminator_learning_rate must be > 0"),
        (["--finetune_decoder_from", "x", "--model_overrides", "{}"], "leave out --model_overrides"),
    ],
)
def test_bad_loss_flags_say_what_to_pass(argv, match):
    with pytest.raises(ValueError, match=match):
        parse_args(argv)


def test_a_discriminator_start_beyond_the_run_warns(caplog):
    with caplog.at_level(logging.WARNING):
        parse_args(["--discriminator_weight", "0.1", "--discriminator_start_step", "50", "--max_train_steps", "50"])
    assert "the discriminator never trains" in caplog.text


# ---------------------------------------------------------------------------------------------- the ablation


def test_the_ablation_spends_equal_budgets_and_measures_blur_as_lost_sharpness():
    ablation = load_script(REPO_ROOT / "benchmarks" / "gan_ablation.py", "gan_ablation")
    costs = {ablation.PIXEL: 300.0, ablation.FIXED: 100.0}  # images/s: a discriminator step costs 3 pixel steps
    late = ablation.QualityVariant([], cost=ablation.FIXED, gan_budget=1 / 3)
    assert ablation.schedule(late, 1500, costs) == (1000 + 167, 1000)  # 1000 + 167 * 3 ~ 1500 pixel steps of time
    assert ablation.schedule(ablation.QualityVariant([], cost=ablation.FIXED), 1500, costs) == (500, 0)
    assert ablation.schedule(ablation.QualityVariant([]), 1500, costs) == (1500, 0)

    torch.manual_seed(0)
    images = torch.rand(4, 3, 32, 32)
    blurred = torch.nn.functional.avg_pool2d(images, 3, stride=1, padding=1, count_include_pad=False)
    assert ablation.laplacian_energy(torch.full((1, 3, 8, 8), 0.5)) == 0
    assert ablation.laplacian_energy(blurred) < 0.5 * ablation.laplacian_energy(images)
