"""Validation loss: known values, token weighting, mode restore, ranks in lockstep, and `scalegpt eval loss`."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from scalegpt.errors import ScalegptError
from scalegpt.checkpoint import save_model_dir
from scalegpt.evaluate import evaluate_loss
from scalegpt.model import GPT, preset_config


def test_zero_weights_give_uniform_loss(tiny_model):
    with torch.no_grad():
        for p in tiny_model.parameters():
            p.zero_()
    x = torch.randint(0, 100, (3, 10))
    y = torch.randint(0, 100, (3, 10))
    y[0, :4] = -1  # ignored targets count neither in the loss nor in the tokens
    result = evaluate_loss(tiny_model, [(x, y)])
    assert result["tokens"] == 26
    assert result["loss"] == pytest.approx(math.log(100), rel=1e-6)  # the real vocab, not the padded 128
    assert result["perplexity"] == pytest.approx(100, rel=1e-5)


def test_token_weighted_mean_over_uneven_batches(tiny_model):
    batches = [(torch.randint(0, 100, (b, t)), torch.randint(0, 100, (b, t))) for b, t in [(4, 16), (1, 5), (2, 30)]]
    with torch.no_grad():
        losses = [F.cross_entropy(tiny_model(x).flatten(0, 1), y.flatten(), reduction="sum") for x, y in batches]
    n = sum(y.numel() for _, y in batches)
    result = evaluate_loss(tiny_model, iter(batches))
    assert result["tokens"] == n
    assert result["loss"] == pytest.approx(sum(losses).item() / n, rel=1e-5)
    assert result["perplexity"] == pytest.approx(math.exp(result["loss"]))


def test_restores_mode_and_disables_dropout():
    model = GPT(preset_config("tiny", vocab_size=100, dropout=0.5))
    batch = [(torch.randint(0, 100, (2, 12)), torch.randint(0, 100, (2, 12)))]
    model.train()
    a = evaluate_loss(model, batch)
    assert model.training
    b = evaluate_loss(model, batch)
    assert a == b  # no dropout during evaluation
    model.eval()
    evaluate_loss(model, batch)
    assert not model.training
    with torch.no_grad():
        assert model(batch[0][0]).requires_grad is False


def test_no_batches_is_an_error(tiny_model):
    with pytest.raises(ScalegptError, match="no batches"):
        evaluate_loss(tiny_model, [])


DIST_SCRIPT = textwrap.dedent("""
    import json, os, sys
    import torch, torch.distributed as dist
    from scalegpt.evaluate import evaluate_loss
    from scalegpt.hellaswag import evaluate_hellaswag, load_hellaswag
    from scalegpt.model import GPT, preset_config
    from scalegpt.tokenizer import get_tokenizer
    dist.init_process_group("gloo")
    rank = dist.get_rank()

    class Collective(torch.nn.Module):
        # Joins a collective in every forward, as FSDP's parameter all-gather does: a rank that stops calling
        # forward early would leave the other one waiting forever.

        def __init__(self, inner):
            super().__init__()
            self.inner, self.config = inner, inner.config

        def forward(self, x):
            dist.all_reduce(torch.ones(1))
            return self.inner(x)

    torch.manual_seed(0)
    model = Collective(GPT(preset_config("tiny", vocab_size=50257, block_size=128)))
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randint(0, 50257, (2, 8), generator=g), torch.randint(0, 50257, (2, 8), generator=g))
               for _ in range(3)]
    mine = batches if rank == 0 else []  # rank 1 has no batch at all: it must not hang
    loss = evaluate_loss(model, mine)
    examples = load_hellaswag(sys.argv[1], limit=9)  # 5 and 4 examples: 3 and 2 batches of 2
    hs = evaluate_hellaswag(model, get_tokenizer("gpt2"), examples, batch_size=2, progress=False)
    with open(os.path.join(sys.argv[2], f"rank{rank}.json"), "w") as f:
        json.dump({"loss": loss, "hellaswag": hs}, f)
    dist.barrier()
    dist.destroy_process_group()
    from scalegpt.cli import leave
    leave(0)  # as `scalegpt` leaves under torchrun: a normal exit can abort a finished rank (SIGABRT)
""")


def test_ranks_in_lockstep_under_torchrun(tmp_path, data_dir):
    """Two gloo ranks, one without batches: no deadlock, and every rank gets the single-process figures."""
    script = tmp_path / "dist_eval.py"
    script.write_text(DIST_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(script),
         str(data_dir / "hellaswag_val_sample.jsonl"), str(tmp_path)],
        capture_output=True, text=True, timeout=120, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert results[0] == results[1]

    from scalegpt.hellaswag import evaluate_hellaswag, load_hellaswag
    from scalegpt.tokenizer import get_tokenizer

    torch.manual_seed(0)
    model = GPT(preset_config("tiny", vocab_size=50257, block_size=128))
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randint(0, 50257, (2, 8), generator=g), torch.randint(0, 50257, (2, 8), generator=g))
               for _ in range(3)]
    single = evaluate_loss(model, batches)
    assert results[0]["loss"]["tokens"] == single["tokens"] == 48
    assert results[0]["loss"]["loss"] == pytest.approx(single["loss"], rel=1e-6)
    hs = evaluate_hellaswag(model, get_tokenizer("gpt2"), load_hellaswag(data_dir / "hellaswag_val_sample.jsonl", 9),
                            progress=False)
    assert results[0]["hellaswag"] == hs


# ------------------------------------------------------------------------------------------------------------ CLI


@pytest.fixture(scope="module")
def char_dataset(tmp_path_factory, data_dir):
    from scalegpt.cli import main

    tmp = tmp_path_factory.mktemp("evaldata")
    text = tmp / "corpus.txt"
    text.write_text((data_dir / "tinyshakespeare.txt").read_text(encoding="utf-8")[:30_000], encoding="utf-8")
    rc = main(["prepare", "--input", str(text), "--tokenizer", "char", "--out", str(tmp / "data"),
               "--val-fraction", "0.2", "--workers", "1", "--quiet"])
    assert rc in (0, None)
    return tmp / "data"


def test_cli_eval_loss_matches_the_function(run_cli, tmp_path, char_dataset):
    from scalegpt.data import eval_batches, open_dataset

    ds = open_dataset(char_dataset, split="val")
    model = GPT(preset_config("tiny", vocab_size=ds.tokenizer_spec["vocab_size"]))
    save_model_dir(model, tmp_path / "run" / "checkpoints" / "step_000001", tokenizer_spec=ds.tokenizer_spec)
    rc, out, err = run_cli("eval", "loss", "--checkpoint", tmp_path / "run", "--data", char_dataset,
                           "--tokens", "1000", "--batch-size", "4")
    assert rc == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert result["tokens"] == 1000 // 64 * 64  # whole windows of the block size from the split start
    expected = evaluate_loss(model, eval_batches(ds, batch_size=3, seq_len=64, max_tokens=1000))
    assert result["loss"] == pytest.approx(expected["loss"], rel=1e-5)
    assert "perplexity" in err and f"{result['loss']:.4f}" in err
    # before any work: how much there is (a whole large split is minutes of CPU), and the thread count used
    assert "eval loss: 960 tokens in 4 batches of 4 x 64 (~" in err and "threads: " in err
    # An untrained model is close to uniform over the vocabulary.
    assert abs(result["loss"] - math.log(ds.tokenizer_spec["vocab_size"])) < 0.5


def test_cli_eval_loss_rejects_another_tokenizer(run_cli, tmp_path, char_dataset):
    model = GPT(preset_config("tiny", vocab_size=50257))
    save_model_dir(model, tmp_path / "ckpt", tokenizer_spec={"kind": "gpt2", "vocab_size": 50257, "eot_id": 50256})
    rc, out, err = run_cli("eval", "loss", "--checkpoint", tmp_path / "ckpt", "--data", char_dataset)
    assert rc == 2 and out == ""
    assert err.startswith("scalegpt: error: tokenizer mismatch") and len(err.strip().splitlines()) == 1
    rc, _, err = run_cli("eval", "loss", "--checkpoint", tmp_path / "ckpt", "--data", char_dataset, "--tokens", "0")
    assert rc == 2 and "--tokens must be >= 1" in err


# ---------------------------------------------------------------------------------------------------- bits per byte

BPB_TEXT = "Héllo, wörld! 日本語のテキスト 😀 and plain ASCII text.\nSecond line, naïve café."


def _text_tokenizer(kind, tmp_path, shakespeare_text):
    from scalegpt.tokenizer import get_tokenizer, train_sentencepiece

    if kind == "char":
        return get_tokenizer("char", text=BPB_TEXT + shakespeare_text[:3000])
    if kind == "sentencepiece":
        (tmp_path / "c.txt").write_text(shakespeare_text[:50_000], encoding="utf-8")
        return get_tokenizer(str(train_sentencepiece([tmp_path / "c.txt"], 400, tmp_path / "sp")))
    return get_tokenizer(kind)


@pytest.mark.parametrize("kind", ["gpt2", "char", "sentencepiece"])
def test_byte_table_counts_the_documents_text_only(kind, tmp_path, shakespeare_text):
    # Bits per byte must compare across tokenizers: the bytes are those of the documents' own text, whatever
    # the tokenizer writes for its end-of-text id or adds in front of a document (SentencePiece's dummy "▁").
    from scalegpt.tokenizer import token_byte_lengths

    tok = _text_tokenizer(kind, tmp_path, shakespeare_text)
    table = token_byte_lengths(tok)
    assert len(table) == tok.vocab_size and table[tok.eot_id] == 0
    for text in (BPB_TEXT, shakespeare_text[:3000], " leading space", "end."):
        docs = [text, text[:20], shakespeare_text[5000:5300]]
        ids = [i for d in docs for i in [tok.eot_id] + tok.encode(d)]
        assert [tok.decode(tok.encode(d)) for d in docs] == docs  # these tokenizers are lossless
        assert table.count(ids) == sum(len(d.encode("utf-8")) for d in docs), text[:30]
    if kind == "sentencepiece":  # byte-fallback pieces: the CJK and the emoji are not in its vocabulary
        assert any(tok.sp.is_byte(i) for i in tok.encode(BPB_TEXT)) and table.at_doc_start is not None


@pytest.mark.parametrize("kind", ["gpt2", "char", "sentencepiece"])
def test_bits_per_byte_on_multi_document_data(kind, tmp_path, shakespeare_text):
    # Recomputed independently: NLL of every target (end-of-text ones too: where a document ends is information
    # the model must code) over the UTF-8 bytes of the documents alone.
    from scalegpt.prepare import prepare
    from scalegpt.tokenizer import token_byte_lengths

    tok = _text_tokenizer(kind, tmp_path, shakespeare_text)
    docs = [shakespeare_text[i * 700:(i + 1) * 700 - i * 37] for i in range(12)] + [BPB_TEXT]
    src = tmp_path / "docs.jsonl"
    src.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")
    spec = {"char": "char", "gpt2": "gpt2"}.get(kind, str(tmp_path / "sp.model"))
    meta = prepare([src], tmp_path / "ds", spec, val_fraction=0, progress=False)
    from scalegpt.data import open_dataset

    tok = open_dataset(tmp_path / "ds", "train").tokenizer()
    ids = np.concatenate([np.load(tmp_path / "ds" / s["file"]) for s in meta["splits"]["train"]["shards"]])
    ids = torch.as_tensor(ids.astype(np.int64))
    assert sorted(tok.decode(d) for d in _split_at(ids.tolist(), tok.eot_id)) == sorted(docs)
    torch.manual_seed(0)
    model = GPT(preset_config("tiny", vocab_size=tok.vocab_size, block_size=len(ids)))
    x, y = ids[:-1].unsqueeze(0), ids[1:].unsqueeze(0)
    result = evaluate_loss(model, [(x, y)], byte_lengths=token_byte_lengths(tok))
    with torch.no_grad():
        nll = F.cross_entropy(model(x)[0].double(), y[0], reduction="sum").item()
    text_bytes = sum(len(d.encode("utf-8")) for d in docs)
    assert result["bytes"] == text_bytes
    assert result["bpb"] == pytest.approx(nll / math.log(2) / text_bytes, rel=1e-6)


def _split_at(ids, eot):
    docs, cur = [], None
    for i in ids:
        if i == eot:
            if cur is not None:
                docs.append(cur)
            cur = []
        else:
            cur.append(i)
    return docs + [cur]


def test_evaluate_loss_bits_per_byte(tiny_model):
    table = [1 + i % 4 for i in range(100)]
    x, y = torch.randint(0, 100, (2, 12)), torch.randint(0, 100, (2, 12))
    y[0, :3] = -1
    result = evaluate_loss(tiny_model, [(x, y)], byte_lengths=table)
    n_bytes = sum(table[i] for i in y[y != -1].tolist())
    assert result["bytes"] == n_bytes
    assert result["bpb"] == pytest.approx(result["loss"] * result["tokens"] / math.log(2) / n_bytes, rel=1e-9)
    assert "bpb" not in evaluate_loss(tiny_model, [(x, y)])


def test_cli_eval_loss_reports_bits_per_byte(run_cli, tmp_path, char_dataset):
    from scalegpt.data import open_dataset

    ds = open_dataset(char_dataset, split="val")
    model = GPT(preset_config("tiny", vocab_size=ds.tokenizer_spec["vocab_size"]))
    save_model_dir(model, tmp_path / "ckpt", tokenizer_spec=ds.tokenizer_spec)
    rc, out, err = run_cli("eval", "loss", "--checkpoint", tmp_path / "ckpt", "--data", char_dataset, "--tokens", "640")
    assert rc == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert "bits per byte" in err and result["bytes"] >= result["tokens"]
    assert result["bpb"] == pytest.approx(result["loss"] * result["tokens"] / math.log(2) / result["bytes"])
