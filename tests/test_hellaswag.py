"""HellaSwag: the readers on the real files, batched scoring against a slow per-example scorer, and the CLI."""
from __future__ import annotations

import bz2
import json
import re

import pytest
import torch
import torch.nn.functional as F

from scalegpt.errors import ScalegptError
from scalegpt.hellaswag import evaluate_hellaswag, load_hellaswag
from scalegpt.hellaswag import hellaswag_scores
from scalegpt.model import GPT, preset_config
from scalegpt.tokenizer import get_tokenizer
from scalegpt.checkpoint import save_model_dir

SAMPLE_LABELS = [3, 3, 2, 2, 1, 1, 2, 0, 1, 1]


@pytest.fixture(scope="module")
def gpt2_tok():
    return get_tokenizer("gpt2")


@pytest.fixture(scope="module")
def sample(data_dir):
    return load_hellaswag(data_dir / "hellaswag_val_sample.jsonl")


def gpt2_model(block_size: int) -> GPT:
    torch.manual_seed(3)
    return GPT(preset_config("tiny", vocab_size=50257, block_size=block_size)).eval()


# -------------------------------------------------------------------------------------------------------- readers


def llama_preprocess(text: str) -> str:
    """The preprocessing the 6-line text file applied (tests/data/README.md)."""
    for tag in ("[header]", "[step]", "[substeps]"):
        text = text.replace(tag, "")
    text = text.replace(" [title]", ". ").replace("[title] ", "").replace("[title].", "")
    while "  " in text:
        text = text.replace("  ", " ")
    return text[1:] if text.startswith(" ") else text


def test_jsonl_sample(sample):
    assert len(sample) == 10
    assert [ex.label for ex in sample] == SAMPLE_LABELS
    assert sample[0].ctx == "A man is sitting on a roof. he"
    assert sample[0].endings[3] == "starts pulling up roofing on a roof."
    assert sample[4].where.endswith("hellaswag_val_sample.jsonl:5")


@pytest.fixture
def first20_bz2(tmp_path, data_dir):
    """The first 20 tasks of the text-format file, bzip2-compressed like the full file."""
    path = tmp_path / "hellaswag_val_first20.txt.bz2"
    path.write_bytes(bz2.compress((data_dir / "hellaswag_val_first20.txt").read_bytes()))
    return path


def test_text_format_agrees_with_jsonl(data_dir, sample, first20_bz2):
    first20 = load_hellaswag(data_dir / "hellaswag_val_first20.txt")
    assert len(first20) == 20
    for a, b in zip(sample, first20[:10]):
        assert b.ctx == llama_preprocess(a.ctx)
        assert b.endings == [llama_preprocess(e) for e in a.endings]
        assert b.label == a.label
    assert all(0 <= ex.label <= 3 and len(ex.endings) == 4 for ex in first20)
    assert first20[-1].where.endswith(f":{6 * 19 + 1}")
    packed = load_hellaswag(first20_bz2)
    assert [(ex.ctx, ex.endings, ex.label) for ex in packed] == [(ex.ctx, ex.endings, ex.label) for ex in first20]
    assert [ex.ctx for ex in load_hellaswag(first20_bz2, limit=3)] == [ex.ctx for ex in first20[:3]]


def test_full_text_file(shared_data, data_dir):
    path = shared_data("hellaswag_val_full.txt.bz2")
    full = load_hellaswag(path)
    assert len(full) == 10_042
    assert all(0 <= ex.label <= 3 and len(ex.endings) == 4 for ex in full)
    assert full[-1].where.endswith(f":{6 * 10_041 + 1}")
    assert [ex.ctx for ex in load_hellaswag(path, limit=3)] == [ex.ctx for ex in full[:3]]
    # tests/data's 20-task sample is the head of this file, byte for byte
    head = (data_dir / "hellaswag_val_first20.txt").read_text(encoding="utf-8")
    with bz2.open(path, "rt", encoding="utf-8", newline="") as f:
        assert f.read(len(head)) == head


def test_plain_text_file_and_limit(tmp_path, data_dir):
    lines = (data_dir / "hellaswag_val_first20.txt").read_text(encoding="utf-8").split("\n")[:60]
    path = tmp_path / "hs.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    examples = load_hellaswag(path)
    assert len(examples) == 10 and [ex.label for ex in examples] == SAMPLE_LABELS
    assert len(load_hellaswag(path, limit=4)) == 4


def _write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


@pytest.mark.parametrize("name,text,match", [
    ("bad.jsonl", '{"ctx": "a", "endings": ["w", "x", "y", "z"], "label": 1}\n{"ctx": oops}\n',
     r"bad\.jsonl:2: not valid JSON"),
    ("three.jsonl", '{"ctx": "a", "endings": ["x", "y", "z"], "label": 1}\n', r"three\.jsonl:1: .*exactly 4"),
    ("label.jsonl", '{"ctx": "a", "endings": ["w", "x", "y", "z"], "label": 7}\n', r"label\.jsonl:1: .*label"),
    ("test.jsonl", '{"ctx": "a", "endings": ["w", "x", "y", "z"]}\n', r"test\.jsonl:1: .*without a label"),
    ("other.jsonl", '{"text": "hello"}\n', r"other\.jsonl:1: not a HellaSwag record"),
    ("cut.txt", "Act: ctx\n2\na\nb\nc\nd\nAct: ctx\n1\na\n", r"cut\.txt:7: incomplete HellaSwag task"),
    ("answer.txt", "Act: ctx\n2\na\nb\nc\nd\nAct: ctx\nfour\na\nb\nc\nd\n", r"answer\.txt:8: expected the answer"),
    ("prose.txt", "Once upon a time\nthere was a file\nthat was not HellaSwag.\n", r"prose\.txt:2: .*not a HellaSwag"),
    ("empty.txt", "\n\n", r"empty\.txt: empty file"),
])
def test_malformed_files_name_file_and_line(tmp_path, name, text, match):
    with pytest.raises(ScalegptError, match=match):
        load_hellaswag(_write(tmp_path, name, text))


def test_unreadable_files(tmp_path):
    with pytest.raises(ScalegptError, match="no such HellaSwag file"):
        load_hellaswag(tmp_path / "missing.jsonl")
    (tmp_path / "junk.bin").write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(ScalegptError, match="not UTF-8"):
        load_hellaswag(tmp_path / "junk.bin")
    (tmp_path / "fake.txt.bz2").write_bytes(b"not bzip2 at all")
    with pytest.raises(ScalegptError, match=r"fake\.txt\.bz2: cannot read"):
        load_hellaswag(tmp_path / "fake.txt.bz2")


# -------------------------------------------------------------------------------------------------------- scoring


def slow_scores(model, tok, examples):
    """One candidate at a time, no padding, no batching: the definition of the score."""
    block = model.config.block_size
    sums, counts = torch.zeros(len(examples), 4, dtype=torch.float64), torch.zeros(len(examples), 4, dtype=torch.long)
    with torch.no_grad():
        for i, ex in enumerate(examples):
            ctx = tok.encode(ex.ctx)
            for j, ending in enumerate(ex.endings):
                end = tok.encode(" " + ending)
                tokens = (ctx + end)[-block:]
                n_end = min(len(end), len(tokens) - 1)  # the first kept token has nothing before it to predict it
                logits = model(torch.tensor([tokens]))
                logprobs = F.log_softmax(logits[0].double(), dim=-1)
                for pos in range(len(tokens) - n_end, len(tokens)):
                    sums[i, j] -= logprobs[pos - 1, tokens[pos]]
                counts[i, j] = n_end
    return sums, counts


class Wrapped(torch.nn.Module):
    """Like DDP: the GPT is `.module` and there is no `.config`; scoring must go through this forward."""

    def __init__(self, inner):
        super().__init__()
        self.module = inner

    def forward(self, x):
        return self.module(x)


@pytest.mark.parametrize("block_size", [256, 24])  # 24: most rows are cut from the left
def test_batched_scoring_equals_slow_reference(sample, gpt2_tok, block_size):
    model = gpt2_model(block_size)
    ref_sums, ref_counts = slow_scores(model, gpt2_tok, sample)
    if block_size == 24:
        assert (ref_counts < torch.tensor([[len(gpt2_tok.encode(" " + e)) for e in ex.endings] for ex in sample])).any()
    for scorer, batch_size in [(model, 3), (model, 16), (Wrapped(model), 4)]:
        sums, counts = hellaswag_scores(scorer, gpt2_tok, sample, batch_size=batch_size)
        assert torch.equal(counts, ref_counts)
        assert torch.allclose(sums, ref_sums, rtol=1e-5, atol=1e-4)
    acc = (ref_sums.argmin(1) == torch.tensor(SAMPLE_LABELS)).float().mean().item()
    acc_norm = ((ref_sums / ref_counts).argmin(1) == torch.tensor(SAMPLE_LABELS)).float().mean().item()
    result = evaluate_hellaswag(model, gpt2_tok, sample, batch_size=4, progress=False)
    assert result == {"examples": 10, "acc": pytest.approx(acc), "acc_norm": pytest.approx(acc_norm)}
    # Explicit rank shards add up to the whole.
    shards = [evaluate_hellaswag(model, gpt2_tok, sample, rank=r, world_size=3, progress=False) for r in range(3)]
    assert [s["examples"] for s in shards] == [4, 3, 3]
    assert sum(s["acc_norm"] * s["examples"] for s in shards) == pytest.approx(acc_norm * 10)


def test_a_model_that_knows_the_answers(sample, gpt2_tok):
    """Make the tokens of the right endings likely (or unlikely) everywhere: acc_norm goes to 1 (or 0)."""
    right = {t for ex in sample for t in gpt2_tok.encode(" " + ex.endings[ex.label])}
    wrong = {t for ex in sample for j, e in enumerate(ex.endings) if j != ex.label for t in gpt2_tok.encode(" " + e)}
    for sign, expected in [(1.0, 1.0), (-1.0, 0.0)]:
        model = gpt2_model(256)
        with torch.no_grad():
            model.transformer.ln_f.weight.zero_()  # logits = lm_head @ ln_f.bias: the same at every position
            model.transformer.ln_f.bias.zero_()
            model.transformer.ln_f.bias[0] = 1.0
            model.lm_head.weight[:, 0] = -5.0 * sign
            model.lm_head.weight[sorted(right - wrong), 0] = 5.0 * sign
        result = evaluate_hellaswag(model, gpt2_tok, sample, progress=False)
        assert result["examples"] == 10 and result["acc_norm"] == expected


def test_tokenizer_larger_than_model_is_an_error(sample, gpt2_tok):
    with pytest.raises(ScalegptError, match="tokenizer has 50257 ids but the model only 100"):
        evaluate_hellaswag(GPT(preset_config("tiny", vocab_size=100)), gpt2_tok, sample, progress=False)


# ------------------------------------------------------------------------------------------------------------ CLI

GPT2_SPEC = {"kind": "gpt2", "vocab_size": 50257, "eot_id": 50256}


def test_cli_hellaswag_checkpoint(run_cli, tmp_path, data_dir, sample, gpt2_tok, first20_bz2):
    model = gpt2_model(128)
    save_model_dir(model, tmp_path / "run" / "checkpoints" / "step_000100", tokenizer_spec=GPT2_SPEC)
    rc, out, err = run_cli("eval", "hellaswag", "--checkpoint", tmp_path / "run",
                           "--file", data_dir / "hellaswag_val_sample.jsonl", "--batch-size", "3")
    assert rc == 0, err
    assert out.count("\n") == 1  # one JSON line, the progress bar goes to stderr
    result = json.loads(out)
    assert result == {**evaluate_hellaswag(model, gpt2_tok, sample, progress=False), "convention": "completion"}
    assert "acc_norm=" in err and "build-nanogpt" in err  # the running figure on the progress bar
    rc, out, _ = run_cli("eval", "hellaswag", "--checkpoint", tmp_path / "run", "--no-progress", "--limit", "4",
                         "--file", first20_bz2)
    assert rc == 0 and json.loads(out)["examples"] == 4


def test_cli_hellaswag_hf_directory(run_cli, tmp_path, data_dir, sample, gpt2_tok):
    pytest.importorskip("transformers")
    from scalegpt.hf import export_hf

    model = gpt2_model(128)
    export_hf(model, GPT2_SPEC, tmp_path / "hf")
    rc, out, err = run_cli("eval", "hellaswag", "--hf", tmp_path / "hf", "--no-progress",
                           "--file", data_dir / "hellaswag_val_sample.jsonl")
    assert rc == 0, err
    expected = evaluate_hellaswag(model, gpt2_tok, sample, progress=False)
    got = json.loads(out)
    assert got["examples"] == 10
    assert got["acc"] == pytest.approx(expected["acc"]) and got["acc_norm"] == pytest.approx(expected["acc_norm"])


def test_cli_hellaswag_errors(run_cli, tmp_path, data_dir):
    model = gpt2_model(64)
    save_model_dir(model, tmp_path / "ckpt", tokenizer_spec=GPT2_SPEC)
    rc, out, err = run_cli("eval", "hellaswag", "--checkpoint", tmp_path / "ckpt", "--file", data_dir / "README.md")
    assert rc == 2 and out == ""
    assert re.match(r"scalegpt: error: .*README\.md:\d+: .*not a HellaSwag file", err) and len(err.splitlines()) == 1
    save_model_dir(model, tmp_path / "nospec")
    rc, _, err = run_cli("eval", "hellaswag", "--checkpoint", tmp_path / "nospec",
                         "--file", data_dir / "hellaswag_val_sample.jsonl")
    assert rc == 2 and "no tokenizer spec" in err
    rc, _, err = run_cli("eval", "hellaswag", "--checkpoint", tmp_path / "ckpt", "--limit", "0",
                         "--file", data_dir / "hellaswag_val_sample.jsonl")
    assert rc == 2 and "--limit must be >= 1" in err
