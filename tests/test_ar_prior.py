"""The autoregressive prior: a stock transformers causal LM over codes, class tokens and a null token, sampled by its
own `generate()` (codes only, guidance through transformers' CFG processor); overfitting a few sequences."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaForCausalLM

from hf_vitvq.ar_prior import ARPriorVocabulary, ar_prior_config, generate_ar_tokens

VOCABULARY = ARPriorVocabulary(codebook_size=16, sequence_length=8, num_classes=4)
LLAMA_SIZES = {"hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4,
               "num_key_value_heads": 2}  # fmt: skip


def tiny_llama(vocabulary: ARPriorVocabulary = VOCABULARY, seed: int = 0, **overrides: object) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(ar_prior_config(vocabulary, **{**LLAMA_SIZES, **overrides})).eval()


def test_vocabulary_layout_codes_then_classes_then_null():
    assert (VOCABULARY.vocab_size, VOCABULARY.null_token_id) == (21, 20)
    assert VOCABULARY.non_code_token_ids == [16, 17, 18, 19, 20]
    token_ids = torch.tensor([[0, 1, 2, 3, 4, 5, 6, 15], [15] * 8])
    assert VOCABULARY.input_ids(token_ids, [3, 4]).tolist() == [[19, 0, 1, 2, 3, 4, 5, 6, 15], [20] + [15] * 8]
    assert VOCABULARY.input_ids(token_ids)[:, 0].tolist() == [20, 20]  # unset labels: the null token
    with pytest.raises(ValueError, match=r"`class_labels` must lie in \[0, 4\) \(or be 4: no class\), got \[5\]"):
        VOCABULARY.input_ids(token_ids, [0, 5])
    with pytest.raises(ValueError, match=r"`token_ids` must lie in \[0, 16\), got \[16\]"):
        VOCABULARY.input_ids(torch.full((1, 8), 16))
    with pytest.raises(ValueError, match=r"`token_ids` must have shape \(batch_size, 8\)"):
        VOCABULARY.input_ids(torch.zeros(1, 7, dtype=torch.long))
    unconditional = ARPriorVocabulary(codebook_size=16, sequence_length=8)
    with pytest.raises(ValueError, match=r"This prior is unconditional \(num_classes=0\)"):
        unconditional.input_ids(token_ids, [0, 1])
    with pytest.raises(ValueError, match="`codebook_size` must be an integer >= 2"):
        ARPriorVocabulary(codebook_size=1, sequence_length=8)


def test_the_config_is_stock_and_saves_the_layout(tmp_path):
    model = tiny_llama()
    assert type(model) is LlamaForCausalLM
    config = model.config
    assert (config.vocab_size, config.max_position_embeddings) == (21, 9)
    assert config.bos_token_id is None and config.eos_token_id is None and config.pad_token_id is None
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert type(reloaded) is LlamaForCausalLM and ARPriorVocabulary.from_config(reloaded.config) == VOCABULARY
    with pytest.raises(ValueError, match="it is not an autoregressive prior written by training/train_prior.py"):
        ARPriorVocabulary.from_config(LlamaForCausalLM(config.__class__(**LLAMA_SIZES, vocab_size=21)).config)
    with pytest.raises(ValueError, match=r"`max_position_embeddings` \(4\) must be at least 1 \+ sequence_length = 9"):
        ar_prior_config(VOCABULARY, max_position_embeddings=4)


def test_generation_gives_only_codes_even_where_the_model_prefers_other_ids():
    model = tiny_llama()
    with torch.no_grad():
        model.lm_head.weight[16:] = 10 * model.lm_head.weight[:16].abs().max()  # class and null ids: huge logits
        model.lm_head.weight[16:, 0] = 50.0
    sample = generate_ar_tokens(model, [0, 1, 2, 3, 0, 1], temperature=1.0, generator=torch.Generator().manual_seed(0))
    assert sample.shape == (6, 8) and int(sample.min()) >= 0 and int(sample.max()) < 16
    greedy = generate_ar_tokens(model, num_images=2, temperature=0.0)
    assert greedy.shape == (2, 8) and int(greedy.max()) < 16


def test_sampling_is_reproducible_under_a_generator_and_leaves_the_global_state_alone():
    model = tiny_llama(initializer_range=0.5)
    settings = {"guidance_scale": 2.0, "temperature": 1.0, "top_k": 8, "top_p": 0.9}
    state = torch.get_rng_state()
    first = generate_ar_tokens(model, [0, 1, 2], generator=torch.Generator().manual_seed(0), **settings)
    assert torch.equal(torch.get_rng_state(), state)
    again = generate_ar_tokens(model, [0, 1, 2], generator=torch.Generator().manual_seed(0), **settings)
    other = generate_ar_tokens(model, [0, 1, 2], generator=torch.Generator().manual_seed(1), **settings)
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_guidance_scale_zero_equals_the_unconditional_models_output():
    """transformers' CFG (`guidance_scale`, `negative_prompt_ids` = the null token): scale 0 samples from the
    unconditional model, scale 1 from the conditional one (no second pass)."""
    model = tiny_llama(initializer_range=0.5)  # large random weights: the class changes the predictions
    labels = [0, 1, 2, 3]
    unconditional = generate_ar_tokens(model, num_images=4, temperature=0.0)
    assert torch.equal(generate_ar_tokens(model, labels, guidance_scale=0.0, temperature=0.0), unconditional)
    conditional = generate_ar_tokens(model, labels, guidance_scale=1.0, temperature=0.0)
    assert not torch.equal(conditional, unconditional)
    assert not torch.equal(generate_ar_tokens(model, labels, guidance_scale=3.0, temperature=0.0), conditional)


def test_a_tiny_llama_overfits_a_few_sequences_and_regenerates_them_exactly():
    model = tiny_llama()
    sequences = torch.randint(0, 16, (4, 8), generator=torch.Generator().manual_seed(0))
    input_ids = VOCABULARY.input_ids(sequences, torch.arange(4))
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3)
    for _ in range(100):
        loss = model(input_ids=input_ids, labels=input_ids).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    assert loss.item() < 0.02
    assert torch.equal(generate_ar_tokens(model, [0, 1, 2, 3], temperature=0.0), sequences)
    low = generate_ar_tokens(model, [0, 1, 2, 3], temperature=0.1, generator=torch.Generator().manual_seed(0))
    assert torch.equal(low, sequences)


def test_any_causal_lm_config_works():
    model = AutoModelForCausalLM.from_config(ar_prior_config(VOCABULARY, "gpt2", n_embd=32, n_layer=1, n_head=2))
    assert model.config.n_positions == 9
    sample = generate_ar_tokens(model.eval(), [0, 3], guidance_scale=2.0, generator=torch.Generator().manual_seed(0))
    assert sample.shape == (2, 8) and int(sample.max()) < 16
