"""`scalegpt serve` as a user runs it, driven by the official `openai` client and plain HTTP: greedy text equals
`scalegpt sample --temperature 0`, seeds reproduce, concurrent clients each get their own greedy tokens, bad
requests get OpenAI-style 4xx errors and the server keeps serving, a client that leaves frees its slot."""
from __future__ import annotations

import json
import threading
import time

import pytest

from serve_helpers import make_checkpoint, server

openai = pytest.importorskip("openai", reason="the openai client is in the dev extra")
requests = pytest.importorskip("requests", reason="requests is in the dev extra")

MODEL = "ckpt"


@pytest.fixture(scope="module")
def served(tmp_path_factory, shakespeare_text):
    ckpt = make_checkpoint(tmp_path_factory.mktemp("serve") / MODEL, shakespeare_text)
    with server("--checkpoint", str(ckpt), "--max-batch", "8", "--max-queue", "12", "--max-n", "16") as (url, proc):
        yield url, ckpt


@pytest.fixture(scope="module")
def client(served):
    return openai.OpenAI(base_url=served[0] + "/v1", api_key="unused", max_retries=0, timeout=120)


def _sample_cli(run_cli, ckpt, prompt, max_tokens, *extra):
    rc, out, err = run_cli("sample", "--checkpoint", ckpt, "--prompt", prompt, "--max-new-tokens", max_tokens,
                           "--device", "cpu", *extra)
    assert rc == 0, err
    _, body = out.split("\n", 1)  # "---------- sample 1" / "---------- seed S"
    assert body.startswith(prompt) and body.endswith("\n")
    return body[len(prompt):-1]


def test_models_and_health(client, served):
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL]
    health = requests.get(served[0] + "/health").json()
    assert health["status"] == "ok" and health["max_batch"] == 8


@pytest.mark.parametrize("prompt", ["ROMEO:", "First Citizen:\nWe are", ""])
def test_greedy_text_equals_scalegpt_sample(client, served, run_cli, prompt):
    expected = _sample_cli(run_cli, served[1], prompt, 40, "--temperature", "0")
    got = client.completions.create(model=MODEL, prompt=prompt, max_tokens=40, temperature=0)
    assert got.choices[0].text == expected
    assert got.choices[0].finish_reason == "length"
    assert got.usage.completion_tokens == 40
    streamed = client.completions.create(model=MODEL, prompt=prompt, max_tokens=40, temperature=0, stream=True)
    assert "".join(c.choices[0].text for c in streamed if c.choices) == expected


def test_a_seed_reproduces_n_samples_and_matches_scalegpt_sample(client, served, run_cli):
    kwargs = dict(model=MODEL, prompt="KING:", max_tokens=30, temperature=0.9, n=3, seed=7,
                  extra_body={"top_k": 20})  # top_k: an extension, sent as OpenAI's clients send extra fields
    first = client.completions.create(**kwargs)
    again = client.completions.create(**kwargs)
    texts = [c.text for c in sorted(first.choices, key=lambda c: c.index)]
    assert texts == [c.text for c in sorted(again.choices, key=lambda c: c.index)]
    assert len(set(texts)) == 3  # choice i uses seed + i
    # choice i is what `scalegpt sample --seed 7+i` draws with the same settings
    assert texts[1] == _sample_cli(run_cli, served[1], "KING:", 30, "--temperature", "0.9", "--top-k", "20",
                                   "--seed", "8")
    streamed = client.completions.create(**kwargs, stream=True, stream_options={"include_usage": True})
    pieces, usage = ["", "", ""], None
    for chunk in streamed:
        for c in chunk.choices:
            pieces[c.index] += c.text
        usage = chunk.usage or usage
    assert pieces == texts
    assert usage.completion_tokens == 90 and usage.prompt_tokens == 5


def test_a_list_of_prompts_and_stop_strings(client, served, run_cli):
    full = _sample_cli(run_cli, served[1], "ROMEO:", 40, "--temperature", "0")
    stop = full[10:13]
    got = client.completions.create(model=MODEL, prompt=["ROMEO:", "JULIET:"], max_tokens=40, temperature=0,
                                    stop=[stop])
    assert len(got.choices) == 2
    assert got.choices[0].text == full[: full.index(stop)] and got.choices[0].finish_reason == "stop"
    assert got.choices[1].text == _sample_cli(run_cli, served[1], "JULIET:", 40, "--temperature", "0",
                                              "--stop", stop)


def test_concurrent_clients_each_get_their_own_greedy_tokens(client, served):
    """12 clients at once (8 decode together, the rest queue and join as rows free): nothing lost or crossed."""
    from scalegpt.checkpoint import load_model_dir
    from scalegpt.generate import generate
    from scalegpt.tokenizer import tokenizer_from_spec

    model, spec = load_model_dir(served[1])
    tok = tokenizer_from_spec(spec)
    prompts = [f"{name}:\n" for name in ("ROMEO", "JULIET", "KING", "QUEEN", "A", "BRUTUS", "Second Citizen",
                                          "MENENIUS", "All", "First", "CORIOLANUS", "x")]
    lengths = [20 + 5 * i for i in range(len(prompts))]
    refs = [generate(model, tok, p, max_new_tokens=n, temperature=0)[0] for p, n in zip(prompts, lengths)]
    steps_before = requests.get(served[0] + "/health").json()["decode_steps"]
    results = [None] * len(prompts)

    def ask(i):
        if i % 2:
            stream = client.completions.create(model=MODEL, prompt=prompts[i], max_tokens=lengths[i], temperature=0,
                                               stream=True)
            results[i] = "".join(c.choices[0].text for c in stream if c.choices)
        else:
            results[i] = client.completions.create(model=MODEL, prompt=prompts[i], max_tokens=lengths[i],
                                                   temperature=0).choices[0].text

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert results == refs
    steps = requests.get(served[0] + "/health").json()["decode_steps"] - steps_before
    assert steps < sum(lengths)  # the requests shared decode steps


BAD_REQUESTS = [
    ("POST", "/v1/completions", b"{not json"),
    ("POST", "/v1/completions", b"[1, 2]"),
    ("POST", "/v1/completions", b""),
    ("POST", "/v1/completions", {"prompt": "hi"}),  # no model
    ("POST", "/v1/completions", {"model": MODEL, "prompt": 5}),
    ("POST", "/v1/completions", {"model": MODEL, "prompt": "hi", "max_tokens": "10"}),
    ("POST", "/v1/completions", {"model": MODEL, "prompt": "hi", "max_tokens": 0}),
    ("POST", "/v1/completions", {"model": MODEL, "prompt": "hi", "max_tokens": -3}),
    ("POST", "/v1/completions", {"model": MODEL, "prompt": "hi", "max_tokens": 10**6}),
    ("POST", "/v1/completions", {"model": MODEL, "prompt": "x" * 300, "max_tokens": 1}),
    ("POST", "/v1/completions", {"model": MODEL, "prompt": "hi", "temperature": -1}),
    ("POST", "/v1/completions", {"model": MODEL, "prompt": "hi", "temperature": "hot"}),
    ("POST", "/v1/completions", {"model": MODEL, "prompt": "hi", "top_p": 0}),
    ("POST", "/v1/completions", {"model": MODEL, "prompt": "hi", "top_p": 1.5}),
    ("POST", "/v1/completions", {"model": MODEL, "prompt": "hi", "top_k": 0}),
    ("POST", "/v1/completions", {"model": MODEL, "prompt": "hi", "top_k": 10**6}),
    ("POST", "/v1/completions", {"model": MODEL, "prompt": "hi", "n": 17}),
    ("POST", "/v1/completions", {"model": MODEL, "prompt": "hi", "n": 0}),
    ("POST", "/v1/completions", {"model": "gpt-4", "prompt": "hi"}),
    ("POST", "/v1/completions", {"model": MODEL, "prompt": "hi", "frobnicate": True}),
    ("POST", "/v1/completions", {"model": MODEL, "prompt": "hi", "stop": ["a", "b", "c", "d", "e"]}),
    ("POST", "/v1/completions", {"model": MODEL, "prompt": "hi", "stop": [""]}),
    ("POST", "/v1/completions", {"model": MODEL, "prompt": "hi", "stream": "yes"}),
    ("POST", "/v1/completions", {"model": MODEL, "prompt": [1, 2, 99999]}),
    ("POST", "/v1/completions", {"model": MODEL, "prompt": []}),
    ("POST", "/v1/completions", {"model": MODEL, "prompt": "hi", "seed": -1}),
    ("POST", "/v1/completions", {"model": MODEL, "prompt": "hi" * 400_000}),  # a 1.6 MB body
    ("POST", "/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}),
    ("POST", "/v1/chat/completions", {"model": MODEL, "messages": "hi"}),
    ("POST", "/v1/completions", {"model": MODEL, "prompt": "caf\u00e9 \u2603"}),  # characters the vocabulary lacks
    ("GET", "/v1/completions", None),
    ("GET", "/v1/nothing", None),
]


def test_bad_requests_get_openai_errors_and_the_server_keeps_serving(served):
    url = served[0]
    with requests.Session() as http:
        for i in range(200):
            method, path, body = BAD_REQUESTS[i % len(BAD_REQUESTS)]
            content = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
            r = http.request(method, url + path, data=content, headers={"content-type": "application/json"}, timeout=60)
            assert 400 <= r.status_code < 500, (body, r.status_code, r.text)
            error = r.json()["error"]
            assert error["message"] and error["type"] and "Traceback" not in r.text, r.text
        good = http.post(url + "/v1/completions", json={"model": MODEL, "prompt": "hi", "max_tokens": 3}, timeout=60)
    assert good.status_code == 200 and len(good.json()["choices"]) == 1


def test_messages_name_the_problem(client):
    with pytest.raises(openai.BadRequestError, match="context is 256 tokens"):
        client.completions.create(model=MODEL, prompt="x" * 250, max_tokens=10)
    with pytest.raises(openai.NotFoundError, match="'gpt-4' does not exist"):
        client.completions.create(model="gpt-4", prompt="hi")
    with pytest.raises(openai.BadRequestError, match="no chat template") as e:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert e.value.body["code"] == "no_chat_template"
    with pytest.raises(openai.BadRequestError, match="at most 16 per request"):
        client.completions.create(model=MODEL, prompt=["a", "b"], n=9, max_tokens=2)
    with pytest.raises(openai.RateLimitError, match="queue is full"):  # 2 prompts x n=7 = 14 > 12 queue places
        client.completions.create(model=MODEL, prompt=["a", "b"], n=7, max_tokens=2)


def test_a_client_that_leaves_frees_its_slot(served):
    url = served[0]
    with requests.Session() as http:
        steps_before = http.get(url + "/health").json()["decode_steps"]
        with http.post(url + "/v1/completions", json={"model": MODEL, "prompt": "ROMEO:", "max_tokens": 240,
                                                      "temperature": 0, "stream": True}, stream=True, timeout=60) as r:
            assert next(line for line in r.iter_lines(decode_unicode=True) if line.startswith("data:"))
        # the connection is closed: the server notices and cancels the sequence
        deadline = time.monotonic() + 60
        while (health := http.get(url + "/health").json())["running"] and time.monotonic() < deadline:
            time.sleep(0.05)
    assert health["running"] == 0 and health["waiting"] == 0
    assert health["decode_steps"] - steps_before < 239  # it did not run to the end
