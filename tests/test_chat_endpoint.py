"""`server.endpoint: chat` sends each prompt's messages, carried with its token ids (`ChatIds`), never looked up
from the ids: early rejection's partial answers go on as the assistant's answer begun; a prompt cut to fit has no
messages and is refused in the config."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from bon.core.config import ModelConfig, load_config
from bon.core.errors import ConfigError
from bon.engines.contract import ChatIds
from bon.engines.tokens import TokenizerOnly
from bon.pipeline.runner import run


class ChatServer:
    """An OpenAI-compatible stand-in: lists one model and answers every chat request with "Blue." per sample (a short
    chunk: " Blue", cut at its length), keeping the request bodies."""

    def __init__(self) -> None:
        self.bodies: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _send(self, payload: dict) -> None:
                data = json.dumps(payload).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self._send({"object": "list", "data": [{"id": "smol", "object": "model", "max_model_len": 2048}]})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.bodies.append(body)
                chunk = body.get("max_tokens", 8) < 8  # early rejection's short chunks end cut, to go on
                said = {"role": "assistant", "content": " Blue" if chunk else "Blue."}
                choices = [
                    {"index": i, "message": said, "finish_reason": "length" if chunk else "stop"}
                    for i in range(body.get("n", 1))
                ]
                usage = {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}
                self._send(
                    {"id": "x", "object": "chat.completion", "created": 0, "model": "smol", "choices": choices}
                    | {"usage": usage}
                )

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()


@pytest.fixture
def chat_server():
    server = ChatServer()
    yield server
    server.close()


def _config(tmp_path, url, *extra):
    server = f"{{base_url: '{url}', model: smol, endpoint: chat, max_retries: 0}}"
    sets = [
        "n=2",
        "prompts.limit=3",
        "policy.max_tokens=8",
        f"output_dir={tmp_path / 'run'}",
        f"policy.server={server}",
    ]
    return load_config("configs/served.yaml", [*sets, "judge.name=length", "judge.options={}", *extra])


def test_chat_ids_carry_their_messages_and_cut_ids_carry_none():
    messages = [{"role": "user", "content": "Name a colour."}]
    ids = TokenizerOnly(ModelConfig()).chat_ids(messages)
    assert isinstance(ids, ChatIds) and list(ids.messages) == messages
    assert type(ids[1:]) is list and type(ids + [1]) is list  # cut or continued: plain ids, nothing to send


def test_a_chat_endpoint_run_sends_each_prompts_own_messages(tmp_path, chat_server):
    from bon.core.prompts import load_prompts

    cfg = _config(tmp_path, chat_server.url)
    result = run(cfg)
    prompts = load_prompts(cfg.prompts)
    sent = sorted(json.dumps(b["messages"]) for b in chat_server.bodies)  # in flight at once: any order
    assert sent == sorted(json.dumps([{"role": "user", "content": p.instruction}]) for p in prompts)
    assert all(b["n"] == 2 for b in chat_server.bodies) and len(result.selections) == 3


def test_a_prompt_cut_to_fit_cannot_go_to_a_chat_endpoint_and_is_refused_in_the_config(tmp_path):
    with pytest.raises(ConfigError, match="policy.on_overflow truncate: policy.server.endpoint chat sends messages"):
        _config(tmp_path, "http://127.0.0.1:9/v1", "policy.on_overflow=truncate")


def test_early_rejection_on_a_chat_endpoint_goes_on_from_each_partial_answer(tmp_path, chat_server):
    """Each later chunk sends the conversation with the answer so far as the assistant's message, marked to be
    continued (vLLM's continue_final_message), never as bare ids."""
    cfg = _config(tmp_path, chat_server.url, "policy.max_tokens=12", "early_rejection={chunk_tokens: 2}")
    run(cfg)
    later = [b for b in chat_server.bodies if b["messages"][-1]["role"] == "assistant"]
    assert later and all(b["continue_final_message"] and not b["add_generation_prompt"] for b in later)
    assert all(b["messages"][-1]["content"].strip().startswith("Blue") for b in later)
    first = [b for b in chat_server.bodies if b["messages"][-1]["role"] == "user"]
    assert first and not any("continue_final_message" in b for b in first)
