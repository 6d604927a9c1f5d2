"""A PEFT adapter served per request by vLLM: it changes outputs, and vLLM's greedy output with
the adapter equals transformers + PEFT greedy output."""
from __future__ import annotations

import torch

from engine.student import GenRequest

PROMPT = "def add_numbers(a, b):\n    return"


def test_adapter_greedy_matches_hf_peft(student_pool, tiny_model, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, init_lora_weights=False,
                                            target_modules=["q_proj", "v_proj", "down_proj"]))
    for name, p in model.named_parameters():  # a strong adapter, so outputs surely change
        if "lora_B" in name:
            p.data.normal_(0, 0.5)
    adapter = tmp_path / "adapter"
    model.save_pretrained(adapter)

    req = dict(prompt=PROMPT, temperature=0.0, max_tokens=12)
    base_out, lora_out = student_pool.generate([
        GenRequest("base", **req), GenRequest("lora", adapter=str(adapter), **req)])
    assert base_out.texts[0] != lora_out.texts[0]

    tok = AutoTokenizer.from_pretrained(tiny_model)
    ids = tok(PROMPT, return_tensors="pt").input_ids
    model.eval()
    with torch.no_grad():
        hf = model.generate(ids, max_new_tokens=12, do_sample=False,
                            pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    # token ids, not text: a random adapter may emit byte tokens that decode differently
    assert hf[0, ids.shape[1]:].tolist() == list(lora_out.token_ids[0])
