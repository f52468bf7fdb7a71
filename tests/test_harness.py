"""lm-evaluation-harness adapter: the harness's HellaSwag on a local file equals an independent re-computation of its
convention and `scalegpt eval hellaswag --convention harness`; rolling log-likelihood and greedy generation against
direct computations; the offline and missing-package errors."""
from __future__ import annotations

import importlib.util
import json
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from scalegpt.checkpoint import save_model_dir
from scalegpt.model import GPT, preset_config
from scalegpt.tokenizer import get_tokenizer

GPT2_SPEC = {"kind": "gpt2", "vocab_size": 50257, "eot_id": 50256}
OFFLINE = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}


@pytest.fixture
def offline_hf(monkeypatch, tmp_path):
    for k, v in OFFLINE.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf_datasets"))


@pytest.fixture(scope="module")
def gpt2_tok():
    return get_tokenizer("gpt2")


def gpt2_model(block_size: int, seed: int = 5) -> GPT:
    torch.manual_seed(seed)
    model = GPT(preset_config("tiny", vocab_size=50257, block_size=block_size)).eval()
    with torch.no_grad():  # a larger output scale than the init's, so the candidates' scores differ clearly
        model.lm_head.weight.mul_(20)
    return model


def harness_hellaswag_module():
    """The harness's own hellaswag preprocessing (lm_eval/tasks/hellaswag/utils.py), loaded from its file."""
    import lm_eval

    path = __import__("pathlib").Path(lm_eval.__file__).parent / "tasks" / "hellaswag" / "utils.py"
    spec = importlib.util.spec_from_file_location("harness_hellaswag_utils", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def direct_loglikelihood(model, tok, context: str, continuation: str) -> float:
    """log P(continuation | context), one full forward, the harness's pair split, left-truncated to the block."""
    ctx = tok.encode(context)
    cont = tok.encode(context + continuation)[len(ctx):]
    tokens = (ctx + cont)[-(model.config.block_size + 1):]
    x = torch.tensor([tokens[:-1]])
    with torch.no_grad():
        logprobs = F.log_softmax(model(x)[0].double(), dim=-1)
    n = min(len(cont), len(tokens) - 1)
    return sum(logprobs[len(tokens) - 2 - k, tokens[len(tokens) - 1 - k]].item() for k in range(n))


def harness_convention_by_hand(model, tok, jsonl_path) -> tuple[float, float]:
    """acc and acc_norm as the harness's hellaswag task defines them, with per-example direct forwards."""
    utils = harness_hellaswag_module()
    rows = [json.loads(line) for line in open(jsonl_path, encoding="utf-8") if line.strip()]
    correct = correct_norm = 0
    for row in rows:
        query = utils.preprocess(row["activity_label"] + ": " + row["ctx_a"] + " " + row["ctx_b"].capitalize())
        choices = [utils.preprocess(e) for e in row["endings"]]
        lls = np.array([direct_loglikelihood(model, tok, query, " " + c) for c in choices])
        correct += int(np.argmax(lls) == int(row["label"]))
        correct_norm += int(np.argmax(lls / np.array([len(c) for c in choices])) == int(row["label"]))
    return correct / len(rows), correct_norm / len(rows)


@pytest.mark.parametrize("block_size", [256, 40])  # 40: most rows are cut from the left
def test_local_hellaswag_equals_independent_computation_and_eval_hellaswag(
        run_cli, tmp_path, data_dir, gpt2_tok, offline_hf, block_size):
    pytest.importorskip("lm_eval")
    fixture = data_dir / "hellaswag_val_sample.jsonl"
    model = gpt2_model(block_size)
    save_model_dir(model, tmp_path / "run" / "checkpoints" / "step_000010", tokenizer_spec=GPT2_SPEC)
    rc, out, err = run_cli("eval", "harness", "--checkpoint", tmp_path / "run", "--task-file", f"hellaswag={fixture}",
                           "--batch-size", "3", "--output", tmp_path / "results.json")
    assert rc == 0, err
    result = json.loads(out)
    assert json.loads((tmp_path / "results.json").read_text()) == result
    scores = result["results"]["hellaswag_local"]
    assert result["n-samples"]["hellaswag_local"]["effective"] == 10
    assert "|hellaswag_local|" in err and "acc_norm" in err  # the harness's own table
    assert "lm-evaluation-harness multiple-choice" in err and "0.311" in err  # the convention is named

    acc, acc_norm = harness_convention_by_hand(model, gpt2_tok, fixture)
    assert scores["acc,none"] == pytest.approx(acc) and scores["acc_norm,none"] == pytest.approx(acc_norm)

    rc, out, err = run_cli("eval", "hellaswag", "--checkpoint", tmp_path / "run", "--file", fixture,
                           "--convention", "harness", "--no-progress")
    assert rc == 0, err
    ours = json.loads(out)
    assert ours == {"examples": 10, "acc": pytest.approx(acc), "acc_norm": pytest.approx(acc_norm),
                    "convention": "harness"}
    assert "lm-evaluation-harness's hellaswag task" in err and "0.311" in err
    # The completion convention is a different measurement (build-nanogpt's), and says so.
    rc, out, err = run_cli("eval", "hellaswag", "--checkpoint", tmp_path / "run", "--file", fixture, "--no-progress")
    assert rc == 0 and json.loads(out)["convention"] == "completion" and "0.2955" in err


def test_exported_hf_directory_gives_the_same_scores(run_cli, tmp_path, data_dir, offline_hf):
    pytest.importorskip("lm_eval")
    pytest.importorskip("transformers")
    from scalegpt.hf import export_hf

    fixture = data_dir / "hellaswag_val_sample.jsonl"
    model = gpt2_model(128)
    save_model_dir(model, tmp_path / "ckpt", tokenizer_spec=GPT2_SPEC)
    export_hf(model, GPT2_SPEC, tmp_path / "hf")
    outs = []
    for source in (["--checkpoint", tmp_path / "ckpt"], ["--hf", tmp_path / "hf"]):
        rc, out, err = run_cli("eval", "harness", *source, "--task-file", f"hellaswag={fixture}", "--limit", "6")
        assert rc == 0, err
        outs.append(json.loads(out)["results"]["hellaswag_local"])
    assert outs[0]["sample_len"] == 6
    assert outs[0]["acc,none"] == pytest.approx(outs[1]["acc,none"])
    assert outs[0]["acc_norm,none"] == pytest.approx(outs[1]["acc_norm,none"])


CAPITALS_YAML = """task: capitals
dataset_path: json
dataset_kwargs:
  data_files:
    test: {path}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: What is the capital of {{{{country}}}}?\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: acc
  - metric: acc_norm
"""
CAPITALS = [("France", ["Paris", "Rome", "Madrid"], 0), ("Italy", ["Paris", "Rome", "Madrid"], 1),
            ("Spain", ["Lisbon", "Madrid"], 1), ("Japan", ["Tokyo", "Kyoto", "Osaka", "Nara"], 0)]


def test_own_task_yaml_from_include_path_equals_direct_scores(run_cli, tmp_path, gpt2_tok, offline_hf):
    pytest.importorskip("lm_eval")
    rows = tmp_path / "capitals.jsonl"
    rows.write_text("".join(json.dumps({"country": c, "choices": ch, "answer": a}) + "\n" for c, ch, a in CAPITALS))
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "capitals.yaml").write_text(CAPITALS_YAML.format(path=rows))
    model = gpt2_model(64, seed=11)
    save_model_dir(model, tmp_path / "ckpt", tokenizer_spec=GPT2_SPEC)
    rc, out, err = run_cli("eval", "harness", "--checkpoint", tmp_path / "ckpt", "--include-path", tmp_path / "tasks",
                           "--tasks", "capitals")
    assert rc == 0, err
    scores = json.loads(out)["results"]["capitals"]
    correct = correct_norm = 0
    for country, choices, answer in CAPITALS:
        lls = np.array([direct_loglikelihood(model, gpt2_tok, f"Question: What is the capital of {country}?\nAnswer:",
                                             " " + c) for c in choices])
        correct += int(np.argmax(lls) == answer)
        correct_norm += int(np.argmax(lls / np.array([len(c) for c in choices])) == answer)
    assert scores["acc,none"] == pytest.approx(correct / 4) and scores["acc_norm,none"] == pytest.approx(correct_norm / 4)


def test_loglikelihood_rolling_and_generate_until_against_direct_computation(gpt2_tok):
    pytest.importorskip("lm_eval")
    from lm_eval.api.instance import Instance

    from scalegpt.harness import HarnessLM

    block = 32
    model = gpt2_model(block)
    lm = HarnessLM(model, gpt2_tok, batch_size=2)
    text = "The quick brown fox jumps over the lazy dog. " * 20
    ids = gpt2_tok.encode(text)[: 2 * block]
    text = gpt2_tok.decode(ids)
    assert gpt2_tok.encode(text) == ids and len(ids) == 2 * block
    # Two disjoint windows of the block: [eot] + ids[:31] predicts ids[:32]; ids[31:63] predicts ids[32:64].
    padded = [gpt2_tok.eot_id] + ids
    expected = 0.0
    with torch.no_grad():
        for start in (0, block):
            logprobs = F.log_softmax(model(torch.tensor([padded[start:start + block]]))[0].double(), dim=-1)
            expected += logprobs[torch.arange(block), torch.tensor(ids[start:start + block])].sum().item()
    req = Instance("loglikelihood_rolling", {}, (text,), 0)
    assert lm.loglikelihood_rolling([req, req]) == [pytest.approx(expected, rel=1e-5)] * 2

    # loglikelihood: the harness's pair split and sum; greedy = the continuation is the argmax at every position.
    ctx = gpt2_tok.decode(ids[:10])
    assert lm.loglikelihood([Instance("loglikelihood", {}, (ctx, " zebra"), 0)])[0][0] == pytest.approx(
        direct_loglikelihood(model, gpt2_tok, ctx, " zebra"), rel=1e-5)
    with torch.no_grad():
        best = int(model(torch.tensor([ids[:10]]))[0, -1].argmax())
    (lp_best, best_is_greedy), (lp_other, other_is_greedy) = lm.score([(ids[:10], [best]), (ids[:10], [best + 1])])
    assert best_is_greedy and not other_is_greedy and lp_best > lp_other

    # generate_until: greedy decoding with our KV cache equals a plain argmax loop, cut at the stop string.
    seq = list(ids[:8])
    with torch.no_grad():
        for _ in range(12):
            seq.append(int(model(torch.tensor([seq[-block:]]))[0, -1].argmax()))
    full = gpt2_tok.decode(seq[8:])
    out = lm.generate_until([Instance("generate_until", {}, (gpt2_tok.decode(ids[:8]), {"until": ["\n\n"],
                                                                                       "max_gen_toks": 12}), 0)])
    assert out == [full.split("\n\n")[0]]
    stop = full[len(full) // 2: len(full) // 2 + 2]
    out = lm.generate_until([Instance("generate_until", {}, (gpt2_tok.decode(ids[:8]),
                                                             {"until": [stop], "max_gen_toks": 12}), 0)])
    assert out == [full.split(stop)[0]] and len(out[0]) < len(full)


def test_task_needing_the_network_offline_is_one_line(run_cli, tmp_path, offline_hf):
    pytest.importorskip("lm_eval")
    save_model_dir(gpt2_model(64), tmp_path / "ckpt", tokenizer_spec=GPT2_SPEC)
    rc, out, err = run_cli("eval", "harness", "--checkpoint", tmp_path / "ckpt", "--tasks", "arc_easy")
    assert rc == 2 and out == ""
    assert err.strip().splitlines()[-1] == ("scalegpt: error: task arc_easy needs to download its dataset from the "
                                            "HuggingFace hub; no network: give it as a local file, see "
                                            "docs/evaluation.md")
    rc, _, err = run_cli("eval", "harness", "--checkpoint", tmp_path / "ckpt", "--tasks", "no_such_task_xyz")
    assert rc == 2 and "unknown harness task 'no_such_task_xyz'" in err
    rc, _, err = run_cli("eval", "harness", "--checkpoint", tmp_path / "ckpt", "--task-file", "hellaswag")
    assert rc == 2 and "--task-file expects TASK=FILE" in err
    rc, _, err = run_cli("eval", "harness", "--checkpoint", tmp_path / "ckpt", "--task-file",
                         f"hellaswag={tmp_path / 'missing.jsonl'}")
    assert rc == 2 and "missing.jsonl: no such file" in err
    rc, _, err = run_cli("eval", "harness", "--checkpoint", tmp_path / "ckpt", "--task-file",
                         f"gsm8k={tmp_path / 'ckpt' / 'config.json'}")
    assert rc == 2 and "'gsm8k' is 5-shot" in err and "--num-fewshot 0" in err


def test_without_lm_eval_installed_the_command_says_what_to_install(run_cli, tmp_path, monkeypatch):
    save_model_dir(gpt2_model(64), tmp_path / "ckpt", tokenizer_spec=GPT2_SPEC)
    for name in [m for m in sys.modules if m == "lm_eval" or m.startswith("lm_eval.") or m == "scalegpt.harness"]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # `import lm_eval` now raises ImportError
    rc, out, err = run_cli("eval", "harness", "--checkpoint", tmp_path / "ckpt", "--tasks", "hellaswag")
    assert rc == 2 and out == ""
    assert err.strip() == ("scalegpt: error: scalegpt eval harness needs lm-evaluation-harness: "
                           "pip install 'scalegpt[eval]'")
