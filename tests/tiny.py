"""Factories for tests: a tiny Qwen2 model built locally, and a scripted OpenAI-compatible teacher.

The tiny model is real (vLLM and transformers load it; its output is random-ish code-like text),
so every test runs the real engine, just fast. The scripted teacher is a real HTTP server for the
one thing a tiny model cannot do: answer from the tasks' reference solutions, and sometimes answer
wrong on purpose, so verification has something to reject.
"""
from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from engine.records import Task

CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content']"
    " + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\\n' }}{% endif %}")


def build_tiny_model(out: Path, corpus: list[str], vocab_size: int = 800, seed: int = 0) -> Path:
    """Train a byte-level BPE tokenizer on `corpus` and save a random 2-layer Qwen2 beside it."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", bos_token=None)
    fast.chat_template = CHAT_TEMPLATE
    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=len(fast), hidden_size=64, intermediate_size=128,
                      num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                      head_dim=32, max_position_embeddings=4096, tie_word_embeddings=False,
                      eos_token_id=fast.eos_token_id, pad_token_id=fast.pad_token_id,
                      bos_token_id=fast.convert_tokens_to_ids("<|endoftext|>"))
    model = Qwen2ForCausalLM(cfg).to(torch.bfloat16)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    fast.save_pretrained(out)
    return out


def wrong_on_purpose(task_id: str) -> bool:
    """Deterministic ~1/3 of tasks get a wrong refinement from the scripted teacher."""
    return hashlib.sha256(task_id.encode()).digest()[0] % 3 == 0


class ScriptedTeacher:
    """An OpenAI-compatible chat server on 127.0.0.1 that answers from reference solutions.

    For a task where `wrong_on_purpose` holds it replies with code that fails the tests. Every
    request is recorded (`self.requests`) so tests can assert on what the teacher was shown.
    """

    def __init__(self, tasks: list[Task], copy: bool = False):
        """`copy`: answer every refinement request with the code it was shown, as small
        teachers at temperature 0 often do (a behaviour the tiny model cannot be made to show)."""
        self.tasks, self.copy = tasks, copy
        self.requests: list[dict] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # keep test output clean
                pass

            def _send(self, code: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                if self.path.rstrip("/").endswith("/models"):
                    self._send(200, {"object": "list", "data": [
                        {"id": "scripted", "object": "model", "created": 0, "owned_by": "tests"}]})
                else:
                    self._send(404, {"error": {"message": "not found"}})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                owner.requests.append(body)
                text = owner.answer("\n\n".join(m["content"] for m in body["messages"]
                                                  if m["role"] == "user"))
                self._send(200, {
                    "id": f"chatcmpl-{len(owner.requests)}", "object": "chat.completion",
                    "created": int(time.time()), "model": body.get("model", "scripted"),
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": text}}],
                    "usage": {"prompt_tokens": len(str(body["messages"])) // 4,
                              "completion_tokens": len(text) // 4,
                              "total_tokens": (len(str(body["messages"])) + len(text)) // 4}})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        # polled every 20 ms: shutdown() waits for the next poll (0.5 s by default)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)

    def answer(self, user: str) -> str:
        shown = re.search(r"wrote this code, which is wrong:\n```python\n(.*?)```", user, re.S)
        if self.copy and shown:
            return f"```python\n{shown.group(1)}```"
        for t in self.tasks:
            if t.prompt.strip() in user or re.search(rf"`{re.escape(t.entry_point)}`", user):
                if wrong_on_purpose(t.task_id):
                    code = f"def {t.entry_point}(*args, **kwargs):\n    return None\n"
                else:
                    code = t.reference or ""
                return f"Here is the corrected code:\n```python\n{code}```\nIt now passes."
        return "I cannot tell which task this is."

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> "ScriptedTeacher":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


# The pipeline tests' teacher settings: one greedy sample with the refine-feedback prompt, which
# the scripted teacher answers once per request (the engine's defaults, 4 samples at 0.8 with the
# two-turn prompt, are measured against the real 1.5B teacher in benchmarks/bench_yield.py).
SCRIPTED_TEACHER = dict(samples=1, temperature=0.0, template="refine-feedback")
