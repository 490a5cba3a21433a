"""Batched generation against plain ``model.generate`` one prompt at a time, without padding."""

from __future__ import annotations

import pytest
import torch

from orthoguard.generation import GenerationSettings, chat_prompt, generate, length_batches, merged_for_generation
from orthoguard.judges import strip_thinking
from tests.conftest import build_tiny_model

PROMPTS = [
    "Hi.",
    "How do I pick a lock on an old wooden door without a key?",
    [{"role": "user", "content": "Tell me a joke."}],
    "Explain, in a few sentences, how vaccines train the immune system and why boosters are sometimes needed.",
    "Why?",
    "List three colours.",
    "What is the capital of France and what river runs through it?",
]


def reference(model, tokenizer, prompts, max_new_tokens, **kwargs) -> list[str]:
    """The plain reference: one prompt at a time, no padding, transformers' own generate."""
    out = []
    with torch.inference_mode():
        for p in prompts:
            ids = tokenizer(chat_prompt(tokenizer, p), return_tensors="pt", add_special_tokens=False)
            new = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id,
                                 **kwargs)[0, ids["input_ids"].shape[1]:]
            out.append(strip_thinking(tokenizer.decode(new, skip_special_tokens=True)).strip())
    return out


@pytest.fixture(scope="module")
def tiny(smollm_tokenizer):
    return build_tiny_model("llama", len(smollm_tokenizer), seed=3).eval()


@pytest.mark.parametrize("batch_size", [1, 3, 16])
def test_greedy_matches_one_at_a_time_reference(tiny, smollm_tokenizer, batch_size):
    want = reference(tiny, smollm_tokenizer, PROMPTS, 12)
    got = generate(tiny, smollm_tokenizer, PROMPTS, GenerationSettings(max_new_tokens=12, batch_size=batch_size))
    assert got == want
    assert len(set(want)) > 1  # the prompts give different replies, so order is checked too


def test_rows_that_finish_early_leave_the_batch(smollm_tokenizer):
    """With a frequent token made an end-of-sequence token, rows stop at different steps; the replies still match."""
    model = build_tiny_model("llama", len(smollm_tokenizer), seed=3).eval()
    settings = GenerationSettings(max_new_tokens=12, batch_size=4)
    with torch.inference_mode():
        ids = smollm_tokenizer(chat_prompt(smollm_tokenizer, PROMPTS[1]), return_tensors="pt", add_special_tokens=False)
        first = model.generate(**ids, max_new_tokens=12, do_sample=False)[0, ids["input_ids"].shape[1]:].tolist()
    stop = first[3]  # a token one reply emits mid-way
    model.generation_config.eos_token_id = [2, stop]
    want = reference(model, smollm_tokenizer, PROMPTS, 12)
    got = generate(model, smollm_tokenizer, PROMPTS, settings)
    assert got == want
    plain = generate(build_tiny_model("llama", len(smollm_tokenizer), seed=3).eval(), smollm_tokenizer, PROMPTS, settings)
    assert sum(a != b for a, b in zip(got, plain)) >= 1  # the early stop did shorten some replies


def test_unsupported_generation_config_falls_back_to_transformers(smollm_tokenizer, monkeypatch):
    import orthoguard.generation as G

    model = build_tiny_model("llama", len(smollm_tokenizer), seed=3).eval()
    model.generation_config.repetition_penalty = 1.5
    want = reference(model, smollm_tokenizer, PROMPTS[:4], 10)
    monkeypatch.setattr(G, "_decode_batch", lambda *a, **k: pytest.fail("the fast loop has no repetition penalty"))
    assert generate(model, smollm_tokenizer, PROMPTS[:4], GenerationSettings(max_new_tokens=10, batch_size=2)) == want


def test_sampling_is_seeded_and_leaves_the_global_rng_alone(tiny, smollm_tokenizer):
    settings = GenerationSettings(max_new_tokens=8, batch_size=3, do_sample=True, temperature=0.9, top_p=0.9)
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a = generate(tiny, smollm_tokenizer, PROMPTS, settings, seed=1)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert generate(tiny, smollm_tokenizer, PROMPTS, settings, seed=1) == a
    assert generate(tiny, smollm_tokenizer, PROMPTS, settings, seed=2) != a


def test_training_mode_and_tokenizer_are_left_as_they_were(smollm_tokenizer):
    model = build_tiny_model("llama", len(smollm_tokenizer)).train()
    side = smollm_tokenizer.padding_side
    generate(model, smollm_tokenizer, PROMPTS[:2], GenerationSettings(max_new_tokens=2))
    assert model.training and smollm_tokenizer.padding_side == side
    assert generate(model, smollm_tokenizer, [], GenerationSettings()) == []


def _lora(model, seed=0):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                                            task_type="CAUSAL_LM"))
    for name, p in peft.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.5)
    return peft


def test_merged_copy_matches_the_adapter_and_leaves_it_alone(smollm_tokenizer):
    peft = _lora(build_tiny_model("llama", len(smollm_tokenizer))).eval()
    before = {n: p.clone() for n, p in peft.named_parameters()}
    merged = merged_for_generation(peft)
    assert not hasattr(merged, "peft_config")
    ids = torch.randint(3, 500, (2, 9))
    with torch.inference_mode():
        torch.testing.assert_close(merged(ids).logits, peft(ids).logits, atol=1e-4, rtol=1e-4)
    assert all(torch.equal(p, before[n]) for n, p in peft.named_parameters())
    assert hasattr(peft, "peft_config")  # still a PEFT model
    plain = build_tiny_model("llama", len(smollm_tokenizer))
    assert merged_for_generation(plain) is plain
    cast = merged_for_generation(plain, torch.bfloat16)
    assert next(cast.parameters()).dtype == torch.bfloat16 and next(plain.parameters()).dtype == torch.float32


def test_a_kept_merged_copy_follows_the_adapter_as_it_trains(smollm_tokenizer):
    """Refusal probes ask for a merged copy every few steps: the second call refreshes the first copy's adapted
    weights, bit for bit what a fresh deep copy + merge + cast gives."""
    import copy

    peft = _lora(build_tiny_model("llama", len(smollm_tokenizer))).eval()
    first = merged_for_generation(peft, torch.bfloat16)
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_" in name:
                p.add_(torch.randn_like(p) * 0.3)  # a training step
    again = merged_for_generation(peft, torch.bfloat16)
    fresh = copy.deepcopy(peft).merge_and_unload().to(torch.bfloat16)
    assert again is first
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), fresh.state_dict().values()))
    before = _lora(build_tiny_model("llama", len(smollm_tokenizer))).merge_and_unload().to(torch.bfloat16)
    assert not torch.equal(again.state_dict()["model.layers.0.self_attn.q_proj.weight"],
                           before.state_dict()["model.layers.0.self_attn.q_proj.weight"])  # it did change
    assert merged_for_generation(peft) is not first  # another dtype: another copy
    peft.base_model.model.lm_head.weight.requires_grad_(True)  # a trainable base weight may change: no kept copy
    assert merged_for_generation(peft, torch.bfloat16) is not merged_for_generation(peft, torch.bfloat16)


def test_bf16_and_auto_dtypes_run_on_a_copy(smollm_tokenizer):
    model = build_tiny_model("llama", len(smollm_tokenizer)).eval()
    for dtype in ("bf16", "auto", "fp32"):
        out = generate(model, smollm_tokenizer, PROMPTS[:3], GenerationSettings(max_new_tokens=4, dtype=dtype))
        assert len(out) == 3
    assert next(model.parameters()).dtype == torch.float32
    with pytest.raises(Exception, match="dtype"):
        generate(model, smollm_tokenizer, PROMPTS[:1], GenerationSettings(max_new_tokens=2, dtype="fp8"))


def test_length_batches_group_similar_lengths_longest_first():
    assert length_batches([3, 9, 1, 7, 5], 2) == [[1, 3], [4, 0], [2]]
    assert sorted(i for b in length_batches(list(range(10)), 3) for i in b) == list(range(10))


def test_sampling_filters_follow_transformers_order():
    """Temperature, then top-k, then top-p: a top-p this small leaves only the best token; top-k=1 too."""
    from types import SimpleNamespace

    from orthoguard.generation import _next_tokens

    logits = torch.randn(6, 300, generator=torch.Generator().manual_seed(0))
    best = logits.argmax(-1)
    for top_k, top_p in ((50, 1e-6), (1, 1.0), (0, 1e-6), (300, 1e-6)):
        cfg = SimpleNamespace(temperature=0.7, top_k=top_k, top_p=top_p)
        assert torch.equal(_next_tokens(logits, cfg, sample=True), best), (top_k, top_p)
    # top-k=2 draws only the two best tokens
    cfg = SimpleNamespace(temperature=5.0, top_k=2, top_p=1.0)
    top2 = logits.topk(2, dim=-1).indices
    torch.manual_seed(0)
    for _ in range(20):
        drawn = _next_tokens(logits, cfg, sample=True)
        assert bool((drawn[:, None] == top2).any(-1).all())


def test_unmerged_peft_model_matches_its_reference(smollm_tokenizer):
    peft = _lora(build_tiny_model("llama", len(smollm_tokenizer), seed=3)).eval()
    want = reference(peft, smollm_tokenizer, PROMPTS[:4], 8)
    assert generate(peft, smollm_tokenizer, PROMPTS[:4], GenerationSettings(max_new_tokens=8, batch_size=4)) == want
    # generating on the merged copy (dtype "fp32" merges) gives the same greedy replies here
    assert generate(peft, smollm_tokenizer, PROMPTS[:4], GenerationSettings(max_new_tokens=8, batch_size=4, dtype="fp32")) == want


def test_preallocated_cache_layer_holds_what_the_dynamic_layer_holds():
    """Writes in place into one buffer (grown when a reply outruns it), rows dropped and cropped as DynamicLayer."""
    from transformers.cache_utils import DynamicLayer

    from orthoguard.generation import PreallocatedLayer

    torch.manual_seed(0)
    ours, plain = PreallocatedLayer(capacity=5), DynamicLayer()
    rows = 4
    for step, width in enumerate([3, 1, 1, 1, 1]):  # 7 positions, past the capacity of 5
        if step == 3:
            keep = torch.tensor([0, 2, 3])
            ours.batch_select_indices(keep), plain.batch_select_indices(keep)
            rows = 3
        k = torch.randn(rows, 2, width, 8)
        got, want = ours.update(k, -k), plain.update(k, -k)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert ours.get_seq_length() == plain.get_seq_length() == 7
    ours.crop(-2), plain.crop(-2)
    assert torch.equal(ours.keys, plain.keys) and ours.get_seq_length() == 5
    nxt = torch.randn(3, 2, 1, 8)
    assert torch.equal(ours.update(nxt, nxt)[0], plain.update(nxt, nxt)[0])


def test_shared_prefix_length_leaves_every_row_a_token_of_its_own():
    from orthoguard.generation import shared_prefix_length

    assert shared_prefix_length([[1, 2, 3, 4], [1, 2, 3, 9], [1, 2, 7]]) == 2
    assert shared_prefix_length([[1, 2, 3], [1, 2, 3, 4]]) == 2  # one row is the prefix of the other
    assert shared_prefix_length([[5, 6], [5, 6]]) == 1
    assert shared_prefix_length([[1, 2, 3]]) == 0  # one row: nothing to share
    assert shared_prefix_length([[1, 2], [3, 4]]) == 0


def test_a_shared_prefix_computed_once_gives_the_replies_of_a_full_prefill(tiny, smollm_tokenizer, monkeypatch):
    """The prompts share the chat template's system turn and a long instruction: prefilled once and copied to every
    row, the replies are those of prefilling every row whole (and of the one-at-a-time reference)."""
    import orthoguard.generation as G

    instruction = "Answer in one word, the way a careful assistant would, and nothing else: "
    prompts = [instruction + q for q in ("Hi.", "Why is the sky blue at noon?", "Name a colour.", "Two plus two?")]
    shared = G.shared_prefix_length(smollm_tokenizer([G.chat_prompt(smollm_tokenizer, p) for p in prompts],
                                                     add_special_tokens=False)["input_ids"])
    assert shared >= 20  # the path under test is taken
    calls = []
    prefill = G._prefill
    monkeypatch.setattr(G, "_prefill", lambda *a: calls.append(1) or prefill(*a))
    settings = GenerationSettings(max_new_tokens=10, batch_size=4)
    with_sharing = generate(tiny, smollm_tokenizer, prompts, settings)
    monkeypatch.setattr(G, "MIN_SHARED_PREFIX", 10**6)
    without = generate(tiny, smollm_tokenizer, prompts, settings)
    assert calls and with_sharing == without == reference(tiny, smollm_tokenizer, prompts, 10)
    assert len(set(without)) > 1


def test_the_prefill_lm_head_gets_rows_it_can_fold_into_one_matrix_product(smollm_tokenizer):
    """With weights that do not require grad (a merged copy), ``torch.matmul`` folds a 3-D input into one matrix
    product only if its rows are contiguous; otherwise it copies the LM head's weight once per row. Every input the
    LM head sees during generation, the prompts' prefill included, must fold."""
    model = build_tiny_model("llama", len(smollm_tokenizer), seed=3).eval().requires_grad_(False)
    rows_per_call, unfoldable = [], []

    def record(_module, args):
        x = args[0]
        rows_per_call.append(x.shape[0])
        if any(x.stride(i) != x.stride(i + 1) * x.shape[i + 1] for i in range(x.dim() - 2)):
            unfoldable.append(tuple(x.shape))

    handle = model.get_output_embeddings().register_forward_pre_hook(record)
    try:
        got = generate(model, smollm_tokenizer, PROMPTS, GenerationSettings(max_new_tokens=4, batch_size=4))
    finally:
        handle.remove()
    assert max(rows_per_call) > 1  # batched calls were made
    assert unfoldable == []
    assert got == reference(model, smollm_tokenizer, PROMPTS, 4)
