"""The vLLM backend's glue, against a stand-in `vllm` module (vLLM itself needs a GPU and is not installed here)."""

from __future__ import annotations

import sys
import types

import pytest

from orthoguard.errors import ConfigError
from orthoguard.generation import GenerationSettings, chat_prompt, generate_vllm


class _Completion:
    def __init__(self, text):
        self.outputs = [types.SimpleNamespace(text=text)]


def _fake_vllm(calls):
    module = types.ModuleType("vllm")

    class LLM:
        def __init__(self, **kwargs):
            calls["llm"] = kwargs

        def generate(self, prompts, params):
            calls["prompts"], calls["params"] = prompts, params
            return [_Completion(f"<think>x</think> answer {i}") for i in range(len(prompts))]

    module.LLM = LLM
    module.SamplingParams = lambda **kw: kw
    return module


def test_vllm_gets_chat_prompts_and_the_same_settings(monkeypatch, smollm_tokenizer):
    calls = {}
    monkeypatch.setitem(sys.modules, "vllm", _fake_vllm(calls))
    out = generate_vllm("/models/merged", smollm_tokenizer, ["q1", "q2"], GenerationSettings(max_new_tokens=7), seed=3)
    assert out == ["answer 0", "answer 1"]  # thinking stripped, order kept
    assert calls["llm"] == {"model": "/models/merged", "seed": 3, "trust_remote_code": False}
    assert calls["prompts"] == [chat_prompt(smollm_tokenizer, "q1"), chat_prompt(smollm_tokenizer, "q2")]
    assert calls["params"] == {"max_tokens": 7, "temperature": 0.0, "top_p": 1.0, "seed": 3}  # greedy
    generate_vllm("m", smollm_tokenizer, ["q"], GenerationSettings(do_sample=True, temperature=0.7, top_p=0.9))
    assert calls["params"]["temperature"] == 0.7 and calls["params"]["top_p"] == 0.9


def test_missing_vllm_is_a_clear_error(monkeypatch, smollm_tokenizer):
    monkeypatch.setitem(sys.modules, "vllm", None)  # makes `import vllm` fail
    with pytest.raises(ConfigError, match=r"orthoguard\[vllm\]"):
        generate_vllm("m", smollm_tokenizer, ["q"])
