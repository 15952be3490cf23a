"""The MaskGIT prior: mask schedules and loss against hand computations, decoding (deterministic, exactly num_steps
steps, guidance), overfitting a few sequences, save/load and remote-code loading, and clear errors."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from test_remote_code import run_without_the_package

from hf_vitvq import ViTVQConfig, ViTVQMaskGITConfig, ViTVQMaskGITModel
from hf_vitvq.configuration_vitvq_maskgit import prior_sequence_shape
from hf_vitvq.modeling_vitvq_maskgit import (
    guidance_scales,
    mask_ratio,
    masked_counts_per_step,
    masked_token_loss,
    random_token_mask,
)


def tiny_prior_config(**overrides: object) -> ViTVQMaskGITConfig:
    """Odd sizes so that mixed-up dimensions show; no dropout, so that outputs are deterministic in train mode too."""
    kwargs = {
        "codebook_size": 37,
        "num_latent_tokens": 7,
        "num_classes": 3,
        "hidden_size": 48,
        "num_hidden_layers": 2,
        "num_attention_heads": 3,
        "mlp_ratio": 2.0,
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
    }
    kwargs.update(overrides)
    return ViTVQMaskGITConfig(**kwargs)


def tiny_prior(seed: int = 0, **overrides: object) -> ViTVQMaskGITModel:
    torch.manual_seed(seed)
    return ViTVQMaskGITModel(tiny_prior_config(**overrides)).eval()


# ---------------------------------------------------------------------------------------------- schedules and loss


def test_mask_ratio_schedules_at_known_points():
    r = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    # arccos(0) = pi/2, arccos(1/2) = pi/3, arccos(1) = 0; cos(0) = 1, cos(pi/4) = 1/sqrt(2), cos(pi/2) = 0
    torch.testing.assert_close(mask_ratio(r, "arccos"), torch.tensor([1.0, 2 / 3, 0.0], dtype=torch.float64))
    torch.testing.assert_close(mask_ratio(r, "cosine"), torch.tensor([1.0, 0.5**0.5, 0.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="Unknown mask schedule 'linear'"):
        mask_ratio(r, "linear")


@pytest.mark.parametrize("schedule", ["arccos", "cosine"])
def test_training_mask_masks_round_of_l_times_the_schedule_at_a_uniform_time(schedule):
    """Per sample: r ~ U(0, 1) (the generator's first B draws), round(L * ratio(r)) positions masked (at least one),
    chosen uniformly; the mean masked fraction of both schedules is 2 / pi (the integral of either over [0, 1])."""
    batch, length = 4000, 50
    mask = random_token_mask(batch, length, schedule, torch.Generator().manual_seed(3))
    r = torch.rand(batch, generator=torch.Generator().manual_seed(3))
    expected = (length * mask_ratio(r, schedule).clamp(1e-6, 1)).round().clamp(min=1)
    assert torch.equal(mask.sum(dim=1), expected.long())
    assert abs(mask.float().mean().item() - 2 / math.pi) < 0.01
    per_position = mask.float().mean(dim=0)  # each position equally likely
    assert (per_position - per_position.mean()).abs().max() < 0.04


def test_masked_token_loss_matches_a_hand_computation():
    """Two positions, two codes. Position 0 (masked): p = (1/2, 1/2), target 0; position 1 (unmasked, weight 0.5):
    p = (3/4, 1/4), target 1."""
    logits = torch.tensor([[[0.0, 0.0], [math.log(3.0), 0.0]]])
    labels = torch.tensor([[0, 1]])
    token_mask = torch.tensor([[True, False]])
    ce0, ce1 = math.log(2), math.log(4)
    loss = masked_token_loss(logits, labels, token_mask, label_smoothing=0.0, unmasked_token_loss_weight=0.5)
    assert loss.item() == pytest.approx((1 * ce0 + 0.5 * ce1) / 1.5, rel=1e-6)
    assert masked_token_loss(logits, labels, token_mask).item() == pytest.approx(ce0, rel=1e-6)  # masked only
    # label smoothing eps: (1 - eps) * CE(target) + eps * mean over the K codes of CE(code)
    eps = 0.2
    smooth0 = ce0
    smooth1 = (1 - eps) * ce1 + eps * (math.log(4 / 3) + math.log(4)) / 2
    loss = masked_token_loss(logits, labels, token_mask, label_smoothing=eps, unmasked_token_loss_weight=0.5)
    assert loss.item() == pytest.approx((smooth0 + 0.5 * smooth1) / 1.5, rel=1e-6)


def test_forward_loss_is_the_masked_token_loss_of_the_mask_ids_with_the_config_weights():
    model = tiny_prior(label_smoothing=0.1, unmasked_token_loss_weight=0.25, class_label_dropout=0.0)
    token_ids = torch.randint(0, 37, (5, 7), generator=torch.Generator().manual_seed(0))
    input_ids = model.mask_tokens(token_ids, generator=torch.Generator().manual_seed(1))
    masked = input_ids == model.config.mask_token_id
    assert masked.any(dim=1).all() and torch.equal(input_ids[~masked], token_ids[~masked])
    labels = torch.tensor([0, 1, 2, 3, 0])  # 3: the null class
    output = model(input_ids, labels, labels=token_ids)
    assert output.logits.shape == (5, 7, 37)
    expected = masked_token_loss(output.logits, token_ids, masked, 0.1, 0.25)
    torch.testing.assert_close(output.loss, expected)


def test_label_dropout_replaces_labels_by_the_null_class_in_training_only():
    model = tiny_prior(class_label_dropout=0.5)
    token_ids = torch.randint(0, 37, (64, 7), generator=torch.Generator().manual_seed(0))
    labels = torch.zeros(64, dtype=torch.long)
    null = torch.full_like(labels, model.config.null_class_id)
    conditional, unconditional = model(token_ids, labels).logits, model(token_ids, null).logits
    assert torch.equal(model(token_ids, labels).logits, conditional)  # eval: no dropout
    model.train()
    torch.manual_seed(0)
    dropped_logits = model(token_ids, labels).logits
    is_null = (dropped_logits - unconditional).abs().amax(dim=(1, 2)) < 1e-5
    is_kept = (dropped_logits - conditional).abs().amax(dim=(1, 2)) < 1e-5
    assert torch.all(is_null ^ is_kept) and 16 < int(is_null.sum()) < 48


# ---------------------------------------------------------------------------------------------- decoding


def test_decoding_schedule_matches_a_hand_computation_and_fills_one_or_more_per_step():
    # floor(32 * arccos(s / 8) / (pi / 2)) for s = 1..7, then 0
    assert masked_counts_per_step(32, 8, "arccos") == [29, 26, 24, 21, 18, 14, 10, 0]
    # floor(4 * cos(pi / 2 * s / 4)): 3.70, 2.83, 1.53, then 0
    assert masked_counts_per_step(4, 4, "cosine") == [3, 2, 1, 0]
    for schedule in ("arccos", "cosine"):
        for length in range(1, 41):
            for steps in range(1, length + 1):
                counts = masked_counts_per_step(length, steps, schedule)
                assert counts[-1] == 0 and len(counts) == steps
                assert all(a > b for a, b in zip([length, *counts], counts, strict=False))  # >= 1 committed per step
    with pytest.raises(ValueError, match=r"`num_steps` must be in \[1, 7\]"):
        masked_counts_per_step(7, 8, "arccos")


def test_guidance_schedules():
    # linear: 1 + (g - 1) * s / T, from no guidance at the first step (TiTok's linear decay with cfg = g - 1)
    assert guidance_scales(5.5, 4, "linear") == [1.0, 2.125, 3.25, 4.375]
    assert guidance_scales(3.0, 3, "constant") == [3.0, 3.0, 3.0]
    with pytest.raises(ValueError, match="`guidance_schedule` must be one of"):
        guidance_scales(3.0, 3, "cosine")


def record_inputs(model: ViTVQMaskGITModel) -> list[torch.Tensor]:
    """The `input_ids` of every forward call of `model` from now on."""
    calls = []
    model.register_forward_pre_hook(lambda module, args: calls.append(args[0].clone()))
    return calls


@pytest.mark.parametrize("guidance_scale", [1.0, 3.0])
def test_generation_is_deterministic_and_fills_every_position_in_exactly_num_steps_steps(guidance_scale):
    model = tiny_prior()
    calls = record_inputs(model)
    labels = [0, 1, 2, 1]
    sample = model.generate(labels, num_steps=5, guidance_scale=guidance_scale, temperature=2.0,
                            generator=torch.Generator().manual_seed(0))  # fmt: skip
    again = model.generate(labels, num_steps=5, guidance_scale=guidance_scale, temperature=2.0,
                           generator=torch.Generator().manual_seed(0))  # fmt: skip
    other = model.generate(labels, num_steps=5, guidance_scale=guidance_scale, temperature=2.0,
                           generator=torch.Generator().manual_seed(1))  # fmt: skip
    assert torch.equal(sample, again) and not torch.equal(sample, other)
    assert sample.shape == (4, 7) and sample.dtype == torch.long
    assert int(sample.min()) >= 0 and int(sample.max()) < 37
    first_run = calls[:5]  # one forward pass per step, of twice the batch when guided (not at the linear schedule's
    # first step, whose scale is 1)
    assert len(calls) == 15 and [len(c) for c in first_run] == ([4] * 5 if guidance_scale == 1 else [4, 8, 8, 8, 8])
    masked = [int((c[:4] == model.config.mask_token_id).sum(dim=1).unique().item()) for c in first_run]
    assert masked == [7, *masked_counts_per_step(7, 5, "arccos")[:-1]] == [7, 6, 5, 4, 2]
    later_inputs = [*[c[:4] for c in first_run[1:]], sample]
    for before, after in zip([c[:4] for c in first_run], later_inputs, strict=True):  # committed codes stay
        committed = before != model.config.mask_token_id
        assert torch.equal(after[committed], before[committed])


def test_guidance_scale_zero_equals_the_unconditional_models_output_and_one_the_conditional():
    model = tiny_prior(initializer_range=0.5)  # large random weights: the class changes the predictions
    labels = [0, 2, 1]
    settings = {"num_steps": 4, "guidance_schedule": "constant", "temperature": 1.0}
    unconditional = model.generate(num_images=3, generator=torch.Generator().manual_seed(0), **settings)
    guided_zero = model.generate(labels, guidance_scale=0.0, generator=torch.Generator().manual_seed(0), **settings)
    assert torch.equal(guided_zero, unconditional)
    conditional = model.generate(labels, guidance_scale=1.0, generator=torch.Generator().manual_seed(0), **settings)
    guided = model.generate(labels, guidance_scale=4.0, generator=torch.Generator().manual_seed(0), **settings)
    assert not torch.equal(conditional, unconditional) and not torch.equal(guided, conditional)


def test_a_tiny_prior_overfits_a_few_sequences_and_regenerates_them_exactly():
    """One sequence per class; after training, greedy decoding (temperature 0) and a low temperature give back
    exactly the training sequence of each class."""
    model = tiny_prior(
        codebook_size=16, num_latent_tokens=8, num_classes=4, hidden_size=64, num_attention_heads=4,
        label_smoothing=0.0, unmasked_token_loss_weight=0.0, class_label_dropout=0.0,
    )  # fmt: skip
    sequences = torch.randint(0, 16, (4, 8), generator=torch.Generator().manual_seed(0))
    labels = torch.arange(4)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(150):
        token_ids, batch_labels = sequences.repeat(8, 1), labels.repeat(8)
        loss = model(model.mask_tokens(token_ids, generator), batch_labels, labels=token_ids).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    assert loss.item() < 0.02
    assert torch.equal(model.generate(labels, num_steps=8, temperature=0.0), sequences)
    low = model.generate(labels, num_steps=4, temperature=0.05, generator=torch.Generator().manual_seed(0))
    assert torch.equal(low, sequences)


# ---------------------------------------------------------------------------------------------- saving and loading


def test_save_load_auto_model_and_eager_equals_sdpa(tmp_path):
    from transformers import AutoModel

    model = tiny_prior()
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "vitvq_maskgit"
    assert config["auto_map"] == {
        "AutoConfig": "configuration_vitvq_maskgit.ViTVQMaskGITConfig",
        "AutoModel": "modeling_vitvq_maskgit.ViTVQMaskGITModel",
    }
    reloaded = AutoModel.from_pretrained(tmp_path).eval()
    assert type(reloaded) is ViTVQMaskGITModel
    assert reloaded.config.to_diff_dict() == {**model.config.to_diff_dict(), "dtype": "float32"}
    input_ids = model.mask_tokens(torch.randint(0, 37, (3, 7), generator=torch.Generator().manual_seed(0)))
    assert torch.equal(reloaded(input_ids, [0, 1, 2]).logits, model(input_ids, [0, 1, 2]).logits)
    eager = ViTVQMaskGITModel.from_pretrained(tmp_path, attn_implementation="eager").eval()
    torch.testing.assert_close(eager(input_ids, [0, 1, 2]).logits, model(input_ids, [0, 1, 2]).logits,
                               rtol=1e-4, atol=1e-5)  # fmt: skip


REMOTE_LOADER = textwrap.dedent(
    """
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoModel

    model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    assert "hf_vitvq" not in sys.modules and type(model).__module__.startswith("transformers_modules")
    inputs = load_file(inputs_path)
    logits = model(inputs["input_ids"], inputs["class_labels"]).logits
    sample = model.generate(inputs["class_labels"], num_steps=4, guidance_scale=2.0, temperature=1.0,
                            generator=torch.Generator().manual_seed(0))
    save_file({"logits": logits.detach(), "sample": sample}, outputs_path)
    print(type(model).__name__)
    """
)


def test_saved_prior_loads_with_remote_code_without_the_package(tmp_path):
    model = tiny_prior()
    folder = tmp_path / "prior"
    model.save_pretrained(folder)
    assert {"configuration_vitvq_maskgit.py", "modeling_vitvq_maskgit.py", "modeling_vitvq.py"} <= {
        path.name for path in folder.iterdir()
    }
    input_ids = model.mask_tokens(torch.randint(0, 37, (3, 7), generator=torch.Generator().manual_seed(0)))
    class_labels = torch.tensor([0, 1, 3])
    inputs = {"input_ids": input_ids, "class_labels": class_labels}
    stdout, remote = run_without_the_package(REMOTE_LOADER, folder, inputs, tmp_path)
    assert "ViTVQMaskGITModel" in stdout
    assert torch.equal(remote["logits"], model(input_ids, class_labels).logits.detach())
    expected = model.generate(class_labels, num_steps=4, guidance_scale=2.0, temperature=1.0,
                              generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert torch.equal(remote["sample"], expected)


# ---------------------------------------------------------------------------------------------- errors


def test_class_labels_and_token_ids_out_of_range_give_clear_errors():
    model = tiny_prior()
    token_ids = torch.zeros(2, 7, dtype=torch.long)
    with pytest.raises(ValueError, match=r"`class_labels` must lie in \[0, 3\) \(or be 3, the null class.*\[4\]"):
        model.generate([0, 4], num_steps=2)
    with pytest.raises(ValueError, match=r"`class_labels` must lie in \[0, 3\).*got \[-1\]"):
        model(token_ids, torch.tensor([0, -1]))
    with pytest.raises(ValueError, match=r"`class_labels` must be 2 integers"):
        model(token_ids, torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"`input_ids` must lie in \[0, 38\) \(the last, 37, is the mask id\), got 1 "
                                         r"id\(s\) outside it: \[38\]"):  # fmt: skip
        model(torch.tensor([[0, 1, 2, 3, 4, 5, 38], [0] * 7]))
    with pytest.raises(ValueError, match=r"`labels` must lie in \[0, 37\).*\[37\]"):
        model(token_ids, labels=torch.full((2, 7), 37))
    with pytest.raises(ValueError, match=r"`token_ids` must lie in \[0, 37\)"):
        model.mask_tokens(torch.full((2, 7), 40))
    with pytest.raises(ValueError, match=r"`input_ids` must have shape \(batch_size, 7\), got \(2, 8\)"):
        model(torch.zeros(2, 8, dtype=torch.long))
    with pytest.raises(TypeError, match="`input_ids` must be an integer torch.Tensor, got torch.float32"):
        model(torch.zeros(2, 7))
    with pytest.raises(ValueError, match=r"`num_steps` must be in \[1, 7\]"):
        model.generate([0], num_steps=8)
    with pytest.raises(ValueError, match="`temperature` must be >= 0"):
        model.generate([0], temperature=-1.0)
    with pytest.raises(ValueError, match=r"`num_images` \(3\) differs from the number of `class_labels` \(2\)"):
        model.generate([0, 1], num_images=3, num_steps=2)
    with pytest.raises(ValueError, match="Pass `class_labels` or a positive integer `num_images`"):
        model.generate(num_steps=2)
    unconditional = tiny_prior(num_classes=0)
    assert unconditional.generate(num_images=2, num_steps=3).shape == (2, 7)
    with pytest.raises(ValueError, match=r"This prior is unconditional \(num_classes=0\)"):
        unconditional.generate([0, 1], num_steps=3)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"mask_schedule": "linear"}, "`mask_schedule` must be one of"),
        ({"hidden_size": 50}, r"`hidden_size` \(50\) must be divisible by `num_attention_heads` \(3\)"),
        ({"class_label_dropout": 1.0}, r"`class_label_dropout` must be in \[0, 1\)"),
        ({"num_classes": -1}, "`num_classes` must be an integer >= 0"),
        ({"codebook_size": 1}, "`codebook_size` must be an integer >= 2"),
        ({"unmasked_token_loss_weight": -0.1}, "`unmasked_token_loss_weight` must be >= 0"),
    ],
)
def test_bad_configs_are_refused(overrides, match):
    with pytest.raises(ValueError, match=match):
        tiny_prior_config(**overrides)


def test_prior_shape_flattens_rvq_levels_and_refuses_continuous_tokens():
    from conftest import tiny_config_kwargs

    vq = ViTVQConfig(**tiny_config_kwargs())
    assert prior_sequence_shape(vq) == (37, 7)
    rvq = ViTVQConfig(**tiny_config_kwargs(quantizer_type="rvq", num_quantizers=3, use_l2_norm_codes=False))
    assert prior_sequence_shape(rvq) == (37, 21)
    config = ViTVQMaskGITConfig.for_tokenizer(rvq, num_classes=0, hidden_size=32, num_attention_heads=2)
    assert (config.codebook_size, config.num_latent_tokens, config.num_classes) == (37, 21, 0)
    kl = ViTVQConfig(**tiny_config_kwargs(quantizer_type="kl"))
    with pytest.raises(ValueError, match="continuous tokens .*diffusion-style prior"):
        ViTVQMaskGITConfig.for_tokenizer(kl)


def test_package_import_stays_light():
    """Registering the prior adds no import to `import hf_vitvq` beyond its two modules: not `datasets`, not the
    generation pipeline or the AR prior helpers, nothing of the training subpackage."""
    heavy = ("datasets", "hf_vitvq.generation_pipeline", "hf_vitvq.ar_prior", "hf_vitvq.training")
    code = f"import sys, hf_vitvq; print(sorted(m for m in {heavy!r} if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            cwd=Path(__file__).resolve().parent.parent)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"
