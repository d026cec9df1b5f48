from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from PIL import Image

from frankenlab.errors import EvalError
from frankenlab.eval import (
    DescriptionResult,
    Endpoint,
    EndpointDescriber,
    LLMJudge,
    black_like,
    build_prompt,
    question_text,
    resolve_descriptions,
    settings_for,
)
from frankenlab.eval.config import parse_settings
from frankenlab.tasks import Task, TaskItem


def _image(seed=0, size=(30, 20)):
    return Image.fromarray(np.random.RandomState(seed).randint(1, 256, (size[1], size[0], 3), dtype=np.uint8))


def _item(i, image=True, description=None, **kw):
    return TaskItem(id=f"q{i}", question=f"How many {i}?", answer=str(i), answer_type="numeric",
                    image=_image(i) if image else None, description=description, **kw)


def test_variants():
    it = _item(1, description="Three red squares.")
    real = build_prompt(it, "image")
    black = build_prompt(it, "black")
    desc = build_prompt(it, "described", description="Three red squares.")
    assert real.image.size == black.image.size == desc.image.size == (30, 20)
    assert np.asarray(black.image).max() == 0 and black.image.mode == "RGB"
    assert np.asarray(real.image).min() > 0
    assert real.text == black.text == "How many 1?"
    assert desc.text == "Image description: Three red squares.\n\nHow many 1?"
    assert black_like(_image(2, (7, 9))).size == (7, 9)
    text_item = _item(2, image=False)
    assert settings_for(text_item, ("image", "black")) == ("text",)
    assert settings_for(it, ("image", "described")) == ("image", "described")
    assert build_prompt(text_item, "text").image is None
    with pytest.raises(EvalError, match="no image"):
        build_prompt(text_item, "black")
    with pytest.raises(EvalError, match="needs a description"):
        build_prompt(it, "described")


def test_question_text_lists_choices_and_suffix():
    it = TaskItem(id="m", question="Which?", answer="B", answer_type="mcq", choices=("red", "blue"))
    assert question_text(it, "\nAnswer with a letter.") == "Which?\nChoices:\n(A) red\n(B) blue\nAnswer with a letter."


def test_parse_settings():
    assert parse_settings("described, image") == ("image", "described")
    with pytest.raises(EvalError, match="not understood"):
        parse_settings("image,blurry")


def _task(items, name="t"):
    return Task(name=name, items=tuple(items), source="mem", version="v")


def test_descriptions_from_items_jsonl_and_store(tmp_path):
    task = _task([_item(1, description="d1"), _item(2, description="d2"), _item(3, image=False)])
    got = resolve_descriptions([task], None, tmp_path / "store.jsonl")
    assert got == {("t", "q1"): DescriptionResult("d1"), ("t", "q2"): DescriptionResult("d2")}
    stored = [json.loads(x) for x in (tmp_path / "store.jsonl").read_text().splitlines()]
    assert stored == [{"task": "t", "id": "q1", "description": "d1"}, {"task": "t", "id": "q2", "description": "d2"}]
    # a JSONL source by id (task-specific rows win), and a store that wins over both on resume
    src = tmp_path / "desc.jsonl"
    src.write_text('{"id": "q1", "description": "plain"}\n{"id": "q1", "task": "t", "description": "tasked"}\n'
                   '{"id": "q2", "description": "two"}\n')
    bare = _task([_item(1), _item(2)])
    got = resolve_descriptions([bare], src, tmp_path / "s2.jsonl")
    assert got[("t", "q1")].text == "tasked" and got[("t", "q2")].text == "two"
    assert resolve_descriptions([bare], None, tmp_path / "s2.jsonl")[("t", "q1")].text == "tasked"
    with pytest.raises(EvalError, match=r"no description .* for 2 image item\(s\)"):
        resolve_descriptions([bare], None, tmp_path / "s3.jsonl")


class _FakeOpenAI(BaseHTTPRequestHandler):
    requests: list = []
    delay = 0.0

    def do_POST(self):  # noqa: N802 - http.server API
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append((self.path, body))
        time.sleep(type(self).delay)
        content = body["messages"][0]["content"]
        if isinstance(content, list):  # a describe request
            reply = "A picture of " + str(len(content[1]["image_url"]["url"]) > 100)
        else:  # a judge request: correct iff the response contains the gold
            gold = content.split("Reference answer: ")[1].split("\n")[0]
            response = content.split("<<<\n")[1].split("\n>>>")[0]
            reply = "Reasoning... CORRECT" if gold in response else "INCORRECT"
        data = json.dumps({"choices": [{"message": {"role": "assistant", "content": reply}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address):  # the timeout test hangs up on a sleeping handler
        pass


@pytest.fixture
def server():
    _FakeOpenAI.requests, _FakeOpenAI.delay = [], 0.0
    srv = _QuietServer(("127.0.0.1", 0), _FakeOpenAI)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}/v1"
    finally:
        srv.shutdown()
        srv.server_close()


def test_endpoint_describer_caches_and_records_failures(server, tmp_path):
    d = EndpointDescriber(Endpoint(server, "describer", api_key_env=None), cache_path=tmp_path / "c.jsonl")
    items = [_item(1), _item(2)]
    out = d.describe(items)
    assert [r.text for r in out] == ["A picture of True"] * 2
    path, body = _FakeOpenAI.requests[0]
    assert path == "/v1/chat/completions" and body["temperature"] == 0.0 and body["model"] == "describer"
    assert body["messages"][0]["content"][1]["image_url"]["url"].startswith("data:image/png;base64,")
    again = EndpointDescriber(Endpoint(server, "describer", api_key_env=None), cache_path=tmp_path / "c.jsonl")
    assert again.describe(items) == out and len(_FakeOpenAI.requests) == 2  # served from the cache file
    _FakeOpenAI.delay = 0.5
    slow = EndpointDescriber(Endpoint(server, "other", api_key_env=None, timeout_s=0.1))
    (res,) = slow.describe([_item(3)])
    assert res.text is None and res.error.startswith("timeout")
    dead = EndpointDescriber(Endpoint("http://127.0.0.1:9/v1", "x", api_key_env=None, timeout_s=1))
    assert "cannot reach" in dead.describe([_item(4)])[0].error


def test_llm_judge_sees_full_response_and_caches(server, tmp_path):
    judge = LLMJudge(Endpoint(server, "judge", api_key_env=None), cache_path=tmp_path / "j.jsonl")
    long_response = "Let me think. " * 20 + "So the answer is 42."
    v = judge.judge("What is 6*7?", "42", long_response)
    assert v.correct and v.raw.endswith("CORRECT")
    sent = _FakeOpenAI.requests[0][1]["messages"][0]["content"]
    assert long_response in sent and sent.count("Let me think.") == 20
    assert not judge.judge("What is 6*7?", "42", "It is 41.").correct
    assert judge.judge("What is 6*7?", "42", long_response) == v and len(_FakeOpenAI.requests) == 2


class _Echo:
    """A backend that answers the gold for even items and a wrong number for odd ones."""

    name = "echo"

    def __init__(self):
        from frankenlab.runtime.generate import GenerationSettings

        self.settings = GenerationSettings(batch_size=8)

    def generate(self, prompts, progress=None):
        out = []
        for p in prompts:
            i = int(p.text.split()[-1].rstrip("?"))
            out.append(f"I think it is {i if i % 2 == 0 else i + 1}")
        return out


def test_judge_decides_and_rule_verdict_is_kept(server, tmp_path):
    from frankenlab.eval import evaluate

    task = _task([_item(i, image=False) for i in range(4)])
    judge = LLMJudge(Endpoint(server, "judge", api_key_env=None), cache_path=tmp_path / "j.jsonl")
    res = evaluate({"echo": _Echo()}, task, "image", tmp_path / "o", judge=judge, n_boot=200, plots=False)
    items = [json.loads(x) for x in (tmp_path / "o" / "items.jsonl").read_text().splitlines()]
    assert [r["correct"] for r in items] == [True, False, True, False]
    assert all(r["decided_by"] == "llm_judge" and r["judge"] and r["extracted"] == r["response"][-1] for r in items)
    assert [r["rule_correct"] for r in items] == [True, False, True, False]
    assert res.summary.loc[0, "accuracy"] == 0.5
    run = json.loads((tmp_path / "o" / "run.json").read_text())
    assert run["key_fields"]["judge"] == judge.key


def test_local_describer_is_lazy_cached_and_shared(tmp_path):
    from frankenlab.eval import LocalDescriber

    loads = []

    class Writer(_Echo):
        def generate(self, prompts, progress=None):
            return [f"an image of size {p.image.size[0]}x{p.image.size[1]}" for p in prompts]

    def load():
        loads.append(1)
        return Writer()

    task = _task([_item(1), _item(2, image=False), _item(3)])
    d = LocalDescriber(identity="writer-v1", load=load, cache_path=tmp_path / "c.jsonl")
    got = resolve_descriptions([task], d, tmp_path / "store.jsonl")
    assert {k: v.text for k, v in got.items()} == {("t", "q1"): "an image of size 30x20",
                                                  ("t", "q3"): "an image of size 30x20"}
    assert loads == [1] and d._backend is None  # loaded once, released after describing
    again = LocalDescriber(identity="writer-v1", load=load, cache_path=tmp_path / "c.jsonl")
    assert again.describe([_item(1)])[0].text == "an image of size 30x20" and loads == [1]
