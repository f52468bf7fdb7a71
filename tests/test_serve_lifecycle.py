"""`scalegpt serve` around the edges: an API key, a model that carries a chat template, a GPT-2 HF directory,
SIGTERM with a request in flight, and the CLI's own checks."""
from __future__ import annotations

import json
import signal
import threading

import pytest

from serve_helpers import make_checkpoint, server

openai = pytest.importorskip("openai", reason="the openai client is in the dev extra")
requests = pytest.importorskip("requests", reason="requests is in the dev extra")

# A ChatML-like template, as HF tokenizer_config.json files carry them.
TEMPLATE = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}<assistant>{% endif %}")
KEY = "s3cret-key"


@pytest.fixture(scope="module")
def chat_server(tmp_path_factory, shakespeare_text):
    ckpt = make_checkpoint(tmp_path_factory.mktemp("chat") / "chatty", shakespeare_text + "<>")
    (ckpt / "tokenizer_config.json").write_text(json.dumps({"chat_template": TEMPLATE}))
    with server("--checkpoint", str(ckpt), "--api-key", KEY) as (url, proc):
        yield url, ckpt, proc


def test_the_api_key_is_checked_on_every_api_request(chat_server):
    url = chat_server[0]
    assert requests.get(url + "/v1/models").status_code == 401
    wrong = requests.get(url + "/health", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"
    assert requests.get(url + "/health", headers={"Authorization": f"Bearer {KEY}"}).json()["status"] == "ok"
    assert "scalegpt playground" in requests.get(url + "/").text  # the page asks for the key itself
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0).models.list()


def test_chat_completions_render_the_models_template(chat_server, run_cli):
    url, ckpt, _ = chat_server
    client = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0, timeout=120)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Who art thou?"}]
    got = client.chat.completions.create(model="chatty", messages=messages, max_tokens=25, temperature=0)
    prompt = "<system>Be brief.\n<user>Who art thou?\n<assistant>"
    rc, out, err = run_cli("sample", "--checkpoint", ckpt, "--prompt", prompt, "--max-new-tokens", 25,
                           "--temperature", 0, "--device", "cpu")
    assert rc == 0, err
    assert got.choices[0].message.role == "assistant"
    assert got.choices[0].message.content == out.split("\n", 1)[1][len(prompt):-1]
    stream = client.chat.completions.create(model="chatty", messages=messages, max_tokens=25, temperature=0,
                                            stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == got.choices[0].message.content


def test_sigterm_lets_the_request_in_flight_finish_then_exits_cleanly(chat_server):
    url, _, proc = chat_server
    headers = {"Authorization": f"Bearer {KEY}"}
    got, first = {}, threading.Event()

    def stream():
        with requests.post(url + "/v1/completions", headers=headers, stream=True, timeout=120,
                           json={"model": "chatty", "prompt": "ROMEO:", "max_tokens": 200, "stream": True,
                                 "temperature": 0}) as r:
            events = []
            for line in r.iter_lines(decode_unicode=True):
                if line.startswith("data: "):
                    events.append(line[6:])
                    first.set()
            got["events"] = events

    reader = threading.Thread(target=stream)
    reader.start()
    assert first.wait(120)
    proc.send_signal(signal.SIGTERM)
    reader.join(120)
    assert proc.wait(120) == 0
    rest = "".join(proc.output.queue)
    assert "server stopped" in rest and "Traceback" not in rest
    events = got["events"]
    assert events[-1] == "[DONE]"
    finishes = [json.loads(e)["choices"][0]["finish_reason"] for e in events[:-1]]
    assert finishes[-1] == "length" and finishes.count("length") == 1
    assert sum(1 for e in events[:-1] if json.loads(e)["choices"][0]["text"]) == 200  # char model: 1 token, 1 char
    with pytest.raises(requests.ConnectionError):
        requests.get(url + "/health", headers=headers, timeout=10)


def test_serving_an_hf_gpt2_directory(tmp_path):
    pytest.importorskip("transformers", reason="the hf extra")
    from scalegpt.hf import export_hf
    from scalegpt.model import GPT, preset_config
    from scalegpt.tokenizer import GPT2Tokenizer

    gpt = GPT(preset_config("tiny", vocab_size=50257, block_size=128))
    out = export_hf(gpt, GPT2Tokenizer().spec(), tmp_path / "hf-gpt2")
    with server("--hf", str(out)) as (url, _):
        client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=120)
        assert [m.id for m in client.models.list().data] == ["hf-gpt2"]
        got = client.completions.create(model="hf-gpt2", prompt="Hello, my name is", max_tokens=8, temperature=0)
        assert got.usage.prompt_tokens == 5 and got.usage.completion_tokens >= 1
        with pytest.raises(openai.BadRequestError, match="no chat template"):
            client.chat.completions.create(model="hf-gpt2", messages=[{"role": "user", "content": "hi"}])


@pytest.mark.parametrize("args, message", [
    (["--port", "70000"], "--port must be >= 0 and <= 65535"),
    (["--max-batch", "0"], "--max-batch must be >= 1"),
    (["--api-key", " "], "--api-key is empty"),
])
def test_bad_serve_options_are_one_line_errors(run_cli, tmp_path, args, message):
    rc, out, err = run_cli("serve", "--checkpoint", tmp_path / "nothing", *args)
    assert rc == 2
    assert message in err and len(err.strip().splitlines()) == 1


def test_a_missing_checkpoint_is_a_one_line_error(run_cli, tmp_path):
    rc, _, err = run_cli("serve", "--checkpoint", tmp_path / "nothing")
    assert rc == 2 and "nothing" in err and len(err.strip().splitlines()) == 1
