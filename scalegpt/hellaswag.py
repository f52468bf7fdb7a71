"""HellaSwag, completion style (as karpathy/build-nanogpt's hellaswag.py scores it).

Each example is a context and 4 endings. Each candidate row is `context tokens + tokens of " " + ending`; the model's
cross-entropy is summed over the ending tokens only. `acc` picks the ending with the lowest summed loss, `acc_norm` the
lowest mean loss per ending token (which does not favour short endings). Reference points on the 10,042 validation
examples: GPT-2 124M acc 0.2859, acc_norm 0.2955 (build-nanogpt's published figures; the lm-eval harness, which scores
differently, reports 31.14%).

`convention="harness"` scores as lm-evaluation-harness's `hellaswag` task instead: the prompt is
"<activity_label>: <ctx_a> <Ctx_b>" with the harness's cleaning (" [title]" -> ". ", other [tags] removed), each
cleaned ending is scored as " " + ending (its ids split off the encoding of the whole text, as the harness's HF model
does), and `acc_norm` divides the log-likelihood by the ending's length in characters (GPT-2 124M: acc_norm 0.311).
`scalegpt eval harness` (scalegpt.harness) gives the same acc and acc_norm on the same model and file.

Speed: examples are sorted by length and packed `batch_size` examples x 4 endings per forward, right-padded; padding
is excluded from the loss by targets of -1, and causal attention keeps it from touching real positions. A row longer
than the model's block is cut from the left (the start of the context goes first); ending tokens cut with it, or left
without a preceding token, are not scored.

Data, `load_hellaswag(path)`:
- the official jsonl (one object per line with ctx, endings, label), as in rowanz/hellaswag `hellaswag_val.jsonl`;
- the 6-lines-per-task text format of llama.cpp (`<activity_label>: <ctx>`, label, 4 endings), plain or .bz2/.gz;
  the context is the first line after its `<activity_label>: ` prefix;
- None: the official validation jsonl, downloaded once into the cache (~/.cache/scalegpt, or $SCALEGPT_CACHE).
"""
from __future__ import annotations

import bz2
import contextlib
import gzip
import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from scalegpt._fs import MISSING, atomic_file, parse_json, path_problem
from scalegpt.errors import ScalegptError

OFFICIAL_VAL_URL = "https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_val.jsonl"
OFFICIAL_VAL_GIT_BLOB = "0f5ee25d72216f12317d5d8a7b92deafa423d81e"  # `git hash-object` of the genuine file


@dataclass
class HellaSwagExample:
    ctx: str
    endings: list[str]
    label: int
    where: str = ""  # "file:line", for messages
    activity_label: str = ""  # the harness convention's prompt is built from these three
    ctx_a: str | None = None  # None: ctx as a whole
    ctx_b: str = ""

    def harness_query(self) -> str:
        """The context as lm-evaluation-harness's hellaswag task writes it: "<activity>: <ctx_a> <Ctx_b>", cleaned."""
        ctx = self.ctx if self.ctx_a is None else self.ctx_a + " " + self.ctx_b.capitalize()
        return harness_preprocess(f"{self.activity_label}: {ctx}" if self.activity_label else ctx)


def harness_preprocess(text: str) -> str:
    """lm-evaluation-harness's HellaSwag text cleaning: WikiHow's " [title]" becomes ". ", other [tags] go."""
    text = text.strip().replace(" [title]", ". ")
    return re.sub(r"\[.*?\]", "", text).replace("  ", " ")


# ------------------------------------------------------------------------------------------------------------ loading


def cache_dir() -> Path:
    if os.environ.get("SCALEGPT_CACHE"):
        return Path(os.environ["SCALEGPT_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "scalegpt"


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def download_official_val() -> Path:
    """The official validation jsonl in the cache, downloaded on first use and checked against its git blob id."""
    target = cache_dir() / "hellaswag" / "hellaswag_val.jsonl"
    if target.is_file():
        return target
    import urllib.request

    try:
        with urllib.request.urlopen(OFFICIAL_VAL_URL, timeout=60) as r:
            data = r.read()
    except OSError as e:
        raise ScalegptError(f"cannot download HellaSwag from {OFFICIAL_VAL_URL} ({e}); offline, pass a local file "
                            "with --file (e.g. shared/data/hellaswag_val_full.txt.bz2)") from None
    if git_blob_id(data) != OFFICIAL_VAL_GIT_BLOB:
        raise ScalegptError(f"downloaded {OFFICIAL_VAL_URL} but its content is not the expected file "
                            f"(git blob {git_blob_id(data)}, expected {OFFICIAL_VAL_GIT_BLOB})")
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(target) as tmp:
        tmp.write_bytes(data)
    return target


def _read_lines(path: Path) -> list[str]:
    opener = {".bz2": bz2.open, ".gz": gzip.open}.get(path.suffix, open)
    why = path_problem(path)  # before opening: a FIFO would block, and a loop or a denied folder is not "missing"
    if why is not None and why != MISSING:
        raise ScalegptError(f"{path}: {why}, expected a HellaSwag file")
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise ScalegptError(f"{path}: no such HellaSwag file") from None
    except (OSError, EOFError) as e:
        raise ScalegptError(f"{path}: cannot read ({e})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ScalegptError(f"{path}: not UTF-8 text (byte {e.start}), so not a HellaSwag file") from None
    return text.split("\n")


def load_hellaswag(path=None, limit: int | None = None) -> list[HellaSwagExample]:
    """Examples from a jsonl or 6-line text file (format recognised from the content), or the official val set."""
    if limit is not None and limit < 1:
        raise ScalegptError(f"--limit must be >= 1, got {limit}")
    path = Path(path) if path is not None else download_official_val()
    lines = [line.rstrip("\r") for line in _read_lines(path)]
    while lines and not lines[-1].strip():
        lines.pop()
    first = next((line for line in lines if line.strip()), None)
    if first is None:
        raise ScalegptError(f"{path}: empty file, not a HellaSwag file")
    reader = _parse_jsonl if first.lstrip().startswith("{") else _parse_text
    examples = reader(path, lines, limit)
    return examples


def _parse_jsonl(path: Path, lines: list[str], limit: int | None) -> list[HellaSwagExample]:
    out = []
    for n, line in enumerate(lines, 1):
        if limit is not None and len(out) >= limit:
            break
        if not line.strip():
            continue
        where = f"{path}:{n}"
        d = parse_json(line, where)  # the one JSON parser: any nesting depth is one line
        if not isinstance(d, dict) or not {"ctx", "endings"} <= d.keys():
            raise ScalegptError(f"{where}: not a HellaSwag record (expected an object with ctx, endings and label)")
        if "label" not in d or d["label"] in ("", None):
            raise ScalegptError(f"{where}: HellaSwag record without a label (the test split is unlabelled)")
        label = d["label"]
        if isinstance(label, str) and label.isdigit():
            label = int(label)
        ex = _checked(d["ctx"], d["endings"], label, where)
        if isinstance(d.get("ctx_a"), str) and isinstance(d.get("ctx_b"), str):
            ex.ctx_a, ex.ctx_b = d["ctx_a"], d["ctx_b"]
        ex.activity_label = d["activity_label"] if isinstance(d.get("activity_label"), str) else ""
        out.append(ex)
    return out


def _parse_text(path: Path, lines: list[str], limit: int | None) -> list[HellaSwagExample]:
    out = []
    for start in range(0, len(lines), 6):
        if limit is not None and len(out) >= limit:
            break
        task = lines[start:start + 6]
        where = f"{path}:{start + 1}"
        if len(task) > 1 and task[1].strip() not in ("0", "1", "2", "3"):
            raise ScalegptError(f"{path}:{start + 2}: expected the answer (0-3) of the task at line {start + 1}, got "
                                f"{task[1][:40]!r}; not a HellaSwag file (jsonl or 6-line text format)")
        if len(task) < 6:
            raise ScalegptError(f"{where}: incomplete HellaSwag task ({len(task)} of 6 lines: '<label>: <context>', "
                                "the answer 0-3, 4 endings)")
        head = task[0]
        activity, ctx = head.split(": ", 1) if ": " in head else ("", head)
        ex = _checked(ctx, task[2:6], int(task[1]), where)
        ex.activity_label = activity
        out.append(ex)
    return out


def _checked(ctx, endings, label, where: str) -> HellaSwagExample:
    if not isinstance(ctx, str) or not ctx.strip():
        raise ScalegptError(f"{where}: HellaSwag context must be a non-empty string")
    if not isinstance(endings, list) or len(endings) != 4 or not all(isinstance(e, str) and e.strip() for e in endings):
        raise ScalegptError(f"{where}: HellaSwag needs exactly 4 non-empty endings")
    if not isinstance(label, int) or isinstance(label, bool) or not 0 <= label <= 3:
        raise ScalegptError(f"{where}: HellaSwag label must be 0, 1, 2 or 3, got {label!r}")
    return HellaSwagExample(ctx=ctx, endings=list(endings), label=label, where=where)


# ------------------------------------------------------------------------------------------------------------ scoring


CONVENTIONS = ("completion", "harness")


def encode_examples(tokenizer, examples: list[HellaSwagExample],
                    convention: str = "completion") -> list[tuple[list[int], list[list[int]]]]:
    """(context ids, 4 x ending ids) per example; each ending is encoded with its leading space, as GPT-2 saw text.

    completion: context and " " + ending encoded apart. harness: the harness's cleaned query and endings, and the
    ending's ids are what follows the query's ids in the encoding of query + " " + ending (as its HF model splits)."""
    if convention == "completion":
        ctxs = tokenizer.encode_batch([ex.ctx for ex in examples])
        ends = tokenizer.encode_batch([" " + e for ex in examples for e in ex.endings])
        return [(ctxs[i], ends[4 * i:4 * i + 4]) for i in range(len(examples))]
    queries = [ex.harness_query() for ex in examples]
    ctxs = tokenizer.encode_batch(queries)
    wholes = tokenizer.encode_batch([q + " " + harness_preprocess(e) for q, ex in zip(queries, examples)
                                     for e in ex.endings])
    return [(ctxs[i], [w[len(ctxs[i]):] for w in wholes[4 * i:4 * i + 4]]) for i in range(len(examples))]


def harness_ending_lengths(examples: list[HellaSwagExample]) -> torch.Tensor:
    """(N, 4) characters of each cleaned ending: the harness's acc_norm divisor."""
    return torch.tensor([[len(harness_preprocess(e)) for e in ex.endings] for ex in examples], dtype=torch.float64)


def candidate_row(ctx: list[int], end: list[int], block_size: int) -> tuple[list[int], int]:
    """(tokens, index of the first scored token): context + ending cut from the left to block_size tokens."""
    tokens = ctx + end
    cut = max(0, len(tokens) - block_size)
    return tokens[cut:], max(1, len(ctx) - cut)


def _score_batch(model, encoded, block_size: int, device, autocast) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed ending loss and number of scored tokens, each (len(encoded), 4), from one forward."""
    rows = [candidate_row(ctx, end, block_size) for ctx, ends in encoded for end in ends]
    width = max(len(tokens) for tokens, _ in rows) - 1
    x = torch.zeros(len(rows), width, dtype=torch.long)
    y = torch.full((len(rows), width), -1, dtype=torch.long)
    for r, (tokens, first) in enumerate(rows):
        t = torch.tensor(tokens, dtype=torch.long)
        x[r, :len(tokens) - 1] = t[:-1]
        y[r, first - 1:len(tokens) - 1] = t[first:]  # position i predicts token i + 1
    x, y = x.to(device), y.to(device)
    with autocast:
        if _is_plain_gpt(model):
            losses = _scored_losses(model, x, y)
        else:
            logits = model(x)
            losses = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), y.reshape(-1), ignore_index=-1,
                                     reduction="none").view(y.shape)  # (R, width)
    sums = losses.sum(dim=1).view(-1, 4).double().cpu()
    counts = (y != -1).sum(dim=1).view(-1, 4).cpu()
    return sums, counts


def _is_plain_gpt(model) -> bool:
    from scalegpt.model import GPT

    # Exactly GPT: a wrapped or sharded model (DDP, FSDP2's subclass, compile) must run through its own forward.
    return type(model) is GPT


def _scored_losses(model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(R, width) losses, non-zero only where y != -1, with the vocabulary projection computed only there.

    Most positions are context, whose logits are never scored; projecting just the ending positions onto the
    vocabulary (the largest matmul of a small model, and the softmax after it) roughly halves the work."""
    keep = y != -1
    h = model.hidden_states(x)[keep]  # (N, C)
    logits = model.head(h)  # the vocabulary projection (and softcap) of these positions only
    losses = torch.zeros(y.shape, dtype=torch.float32, device=y.device)
    losses[keep] = F.cross_entropy(logits.float(), y[keep], reduction="none")
    return losses


def _prepare(model, tokenizer, examples, convention: str = "completion"):
    from scalegpt.tokenizer import tokenizer_from_spec

    if isinstance(tokenizer, dict):
        tokenizer = tokenizer_from_spec(tokenizer)
    from scalegpt.generate import model_config

    vocab = model_config(model).vocab_size
    if tokenizer.vocab_size > vocab:
        raise ScalegptError(f"the tokenizer has {tokenizer.vocab_size} ids but the model only {vocab}")
    if convention not in CONVENTIONS:
        raise ScalegptError(f"HellaSwag convention must be one of {', '.join(CONVENTIONS)}, got '{convention}'")
    encoded = encode_examples(tokenizer, examples, convention)
    # Longest first, so similar lengths share a batch (little padding) and a memory problem shows up at once.
    order = sorted(range(len(examples)), key=lambda i: -max(len(encoded[i][0]) + len(e) for e in encoded[i][1]))
    return encoded, order


def _batches(order, batch_size: int):
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def hellaswag_scores(model, tokenizer, examples, device="cpu", batch_size: int = 16, autocast=None,
                     convention: str = "completion"):
    """(summed ending losses, scored token counts), each (N, 4), in the order of examples. No ranks, no progress."""
    from scalegpt.generate import eval_mode, model_config

    autocast = autocast if autocast is not None else contextlib.nullcontext()
    encoded, order = _prepare(model, tokenizer, examples, convention)
    sums = torch.zeros(len(examples), 4, dtype=torch.float64)
    counts = torch.zeros(len(examples), 4, dtype=torch.long)
    # The harness keeps block_size + 1 tokens of a long row (block_size inputs); build-nanogpt style keeps block_size.
    block = model_config(model).block_size + (convention == "harness")
    with eval_mode(model):
        for chunk in _batches(order, batch_size):
            s, c = _score_batch(model, [encoded[i] for i in chunk], block, device, autocast)
            sums[chunk], counts[chunk] = s, c
    return sums, counts


def predictions(sums: torch.Tensor, norms: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(argmin of summed loss, argmin of loss / norm), each (N,); norm: scored tokens (completion) or characters of
    the ending (harness). Ties go to the first ending, as the harness's argmax does."""
    return sums.argmin(dim=1), (sums / norms.clamp(min=1)).argmin(dim=1)


def evaluate_hellaswag(model, tokenizer, examples, device="cpu", batch_size: int = 16, autocast=None,
                       rank: int | None = None, world_size: int | None = None, progress: bool = True,
                       convention: str = "completion") -> dict:
    """{"examples": N, "acc": ..., "acc_norm": ...} over all examples.

    convention: "completion" (build-nanogpt: acc_norm by mean loss per ending token) or "harness" (lm-evaluation-
    harness's hellaswag task: cleaned prompt, acc_norm by log-likelihood per character of the ending).
    tokenizer: a scalegpt tokenizer or its spec. Each rank scores examples[rank::world_size] (by default the rank and
    world size of the initialised process group); the counts are then all-reduced, so every rank returns the total."""
    from scalegpt.evaluate import distributed_world, in_lockstep
    from scalegpt.generate import eval_mode, model_config

    if batch_size < 1:
        raise ScalegptError(f"batch size must be >= 1, got {batch_size}")
    auto_rank, auto_world = distributed_world()
    rank = auto_rank if rank is None else rank
    world_size = auto_world if world_size is None else world_size
    synced = world_size > 1 and auto_world > 1
    autocast = autocast if autocast is not None else contextlib.nullcontext()
    shard = list(examples)[rank::world_size]
    encoded, order = _prepare(model, tokenizer, shard, convention)
    lengths = harness_ending_lengths(shard) if convention == "harness" else None
    labels = torch.tensor([ex.label for ex in shard], dtype=torch.long)
    counts = torch.zeros(3, dtype=torch.float64)  # examples, correct by summed loss, correct by mean loss
    batches = _batches(order, batch_size)
    # The harness keeps block_size + 1 tokens of a long row (block_size inputs); build-nanogpt style keeps block_size.
    block = model_config(model).block_size + (convention == "harness")
    from tqdm import tqdm

    bar = tqdm(total=len(shard), desc="hellaswag", unit="ex", disable=not progress or rank != 0, dynamic_ncols=True)
    with eval_mode(model), bar:
        for chunk in in_lockstep(model, batches, device, autocast, synced):
            sums, n_tokens = _score_batch(model, [encoded[j] for j in chunk], block, device, autocast)
            pred, pred_norm = predictions(sums, n_tokens if lengths is None else lengths[chunk])
            gold = labels[chunk]
            counts += torch.tensor([len(chunk), (pred == gold).sum().item(), (pred_norm == gold).sum().item()],
                                   dtype=torch.float64)
            bar.update(len(chunk))
            bar.set_postfix(acc_norm=f"{counts[2].item() / counts[0].item():.4f}", refresh=False)
    if synced:
        import torch.distributed as dist

        total = counts.to(device)
        dist.all_reduce(total)
        counts = total.cpu()
    n = int(counts[0].item())
    if n == 0:
        raise ScalegptError("no HellaSwag examples to evaluate")
    return {"examples": n, "acc": counts[1].item() / n, "acc_norm": counts[2].item() / n}
