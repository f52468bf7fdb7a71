"""EleutherAI's lm-evaluation-harness on scalegpt models, in-process (the optional `lm-eval` package).

    lm = HarnessLM(model, tokenizer, batch_size=16, device="cpu")
    results = run_harness(lm, ["arc_easy"], task_files={"hellaswag": "hellaswag_val.jsonl"}, limit=100)

`HarnessLM` is the harness's model interface (`lm_eval.api.model.LM`) over a `GPT` and a scalegpt tokenizer:
- `loglikelihood`: log P(continuation | context) and whether greedy decoding would produce it. The pair is tokenized
  as the harness's HuggingFace model does (trailing spaces of the context move to the continuation; the whole text is
  encoded and split after the context's tokens; an empty context is the end-of-text token), so scores are comparable
  with the harness's own numbers for the same weights.
- `loglikelihood_rolling`: a document's log-likelihood over disjoint windows of the block size (the harness's own
  window maker), each window with the longest context that fits.
- `generate_until`: greedy (or sampled when the task asks) generation with the KV cache of `scalegpt.generate`,
  cut at the task's stop strings.
Rows longer than the block lose the start of their context (left truncation); requests are sorted by length and scored
`batch_size` rows per forward, right-padded, and only the continuation positions are projected onto the vocabulary.

Local tasks (offline): `task_files={"hellaswag": FILE}` runs the harness's own task definition (prompt, preprocessing,
metrics) on a local JSON-lines file of the hub dataset's rows, as task `hellaswag_local`; `include_path` adds a
directory of the user's task YAML files (`dataset_path: json`, `dataset_kwargs: {data_files: ...}`).

Written against lm-eval 0.4.13 (its TaskManager index and YAML loader, used for `task_files`).
"""
from __future__ import annotations

import contextlib
import functools
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from lm_eval.api.model import LM

from scalegpt._fs import MISSING, path_problem
from scalegpt.errors import ScalegptError

NO_NETWORK = ("task {task} needs to download its dataset from the HuggingFace hub; no network: give it as a local "
              "file, see docs/evaluation.md")
HELLASWAG_CONVENTION = ("HellaSwag convention: lm-evaluation-harness multiple-choice (preprocessed context, each ending "
                        "scored as ' ' + ending; acc_norm divides the log-likelihood by the ending's length in "
                        "characters; GPT-2 124M acc_norm 0.311), not scalegpt eval hellaswag's default completion "
                        "style (0.2955)")


class HarnessLM(LM):
    """A scalegpt GPT behind the harness's LM interface (single process)."""

    def __init__(self, model, tokenizer, batch_size: int = 16, device="cpu", autocast=None):
        super().__init__()
        from scalegpt.generate import model_config

        if batch_size < 1:
            raise ScalegptError(f"--batch-size must be >= 1, got {batch_size}")
        self.model, self.tokenizer, self.batch_size = model.eval(), tokenizer, batch_size
        self._device = torch.device(device)
        self.block_size = model_config(model).block_size
        self.autocast = autocast if autocast is not None else contextlib.nullcontext()

    # ---------------------------------------------------------------------------------------------- tokenization

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        if not context:
            return [self.tokenizer.eot_id], self.tokenizer.encode(continuation)
        stripped = context.rstrip()
        continuation = context[len(stripped):] + continuation
        context_ids = self.tokenizer.encode(stripped)
        whole = self.tokenizer.encode(stripped + continuation)
        return context_ids, whole[len(context_ids):]

    # ---------------------------------------------------------------------------------------------- scoring

    def score(self, pairs: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        """(sum of log-probabilities, greedy?) of each continuation given its context, in the order given."""
        results: list[tuple[float, bool] | None] = [None] * len(pairs)
        order = sorted(range(len(pairs)), key=lambda i: -(len(pairs[i][0]) + len(pairs[i][1])))
        with torch.no_grad(), self.autocast:
            for start in range(0, len(order), self.batch_size):
                chunk = order[start:start + self.batch_size]
                for i, result in zip(chunk, self._score_batch([pairs[i] for i in chunk])):
                    results[i] = result
        return results  # type: ignore[return-value]

    def _score_batch(self, pairs) -> list[tuple[float, bool]]:
        rows, n_scored = [], []
        for context, continuation in pairs:
            tokens = (context + continuation)[-(self.block_size + 1):]  # left truncation
            rows.append(tokens)
            n_scored.append(min(len(continuation), len(tokens) - 1))
        width = max(len(r) for r in rows) - 1
        x = torch.zeros(len(rows), width, dtype=torch.long)
        keep = torch.zeros(len(rows), width, dtype=torch.bool)
        y = torch.zeros(len(rows), width, dtype=torch.long)
        for r, (tokens, n) in enumerate(zip(rows, n_scored)):
            t = torch.tensor(tokens, dtype=torch.long)
            x[r, :len(t) - 1] = t[:-1]
            y[r, :len(t) - 1] = t[1:]
            keep[r, len(t) - 1 - n:len(t) - 1] = True  # position i predicts token i + 1
        x, y, keep = x.to(self._device), y.to(self._device), keep.to(self._device)
        vocab = self.model.config.vocab_size
        h = self.model.hidden_states(x)[keep]  # only the scored positions meet the vocabulary
        logprobs = F.log_softmax(F.linear(h, self.model.lm_head.weight[:vocab]).float(), dim=-1)
        targets = y[keep]
        token_lp = logprobs.gather(1, targets[:, None]).squeeze(1).double().cpu()
        greedy = (logprobs.argmax(dim=-1) == targets).cpu()
        out, at = [], 0
        for n in n_scored:
            out.append((token_lp[at:at + n].sum().item(), bool(greedy[at:at + n].all())))
            at += n
        return out

    # ---------------------------------------------------------------------------------------------- the interface

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        results = self.score([self.encode_pair(*req.args) for req in requests])
        for req, result in zip(requests, results):
            self.cache_hook.add_partial("loglikelihood", req.args, result)
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

        windows, owner = [], []
        for i, req in enumerate(requests):
            ids = self.tokenizer.encode(req.args[0])
            for w in get_rolling_token_windows(token_list=ids, prefix_token=self.tokenizer.eot_id,
                                               max_seq_len=self.block_size, context_len=1):
                windows.append(make_disjoint_window(w))
                owner.append(i)
        totals = [0.0] * len(requests)
        for i, (logprob, _) in zip(owner, self.score(windows)):
            totals[i] += logprob
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        from scalegpt.generate import generate

        out = []
        for req in requests:
            context, kwargs = req.args
            kwargs = dict(kwargs or {})
            until = kwargs.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(kwargs.pop("max_gen_toks", 256))
            temperature = float(kwargs.pop("temperature", 0.0)) if kwargs.pop("do_sample", False) else 0.0
            with self.autocast:
                text = generate(self.model, self.tokenizer, context, max_new_tokens=max_new, temperature=temperature,
                                seed=0, stop=until + ["<|endoftext|>"], device=self._device)[0]
            self.cache_hook.add_partial("generate_until", req.args, text)
            out.append(text)
        return out


# -------------------------------------------------------------------------------------------------- tasks and running


def local_task_config(task_manager, task: str, path, num_fewshot: int | None = None) -> dict:
    """The harness's own config of `task`, reading its evaluation split from a local JSON-lines file instead."""
    from lm_eval.tasks._yaml_loader import load_yaml

    path = Path(path)
    why = path_problem(path)
    if why is not None:
        raise ScalegptError(f"--task-file {task}={path}: {'no such file' if why == MISSING else why}")
    entry = task_manager.task_index.get(task)
    if entry is None or entry.yaml_path is None or entry.kind.name != "TASK":
        raise ScalegptError(f"--task-file {task}=...: '{task}' is not a single harness task defined by a YAML file")
    cfg = dict(load_yaml(entry.yaml_path, resolve_func=True))
    if num_fewshot is None and (cfg.get("num_fewshot") or 0) > 0:
        raise ScalegptError(f"--task-file {task}=...: '{task}' is {cfg['num_fewshot']}-shot, with examples from the "
                            "hub's training split, which a local file does not have: pass --num-fewshot 0 (or write "
                            "your own task YAML for --include-path)")
    split = cfg.get("test_split") or cfg.get("validation_split") or "validation"
    cfg.update(task=f"{task}_local", dataset_path="json", dataset_name=None,
               dataset_kwargs={"data_files": {split: str(path.resolve())}}, training_split=None, fewshot_split=None,
               test_split=split if cfg.get("test_split") else None,
               validation_split=None if cfg.get("test_split") else split)
    for key in ("tag", "group", "include"):
        cfg.pop(key, None)
    return cfg


def _is_network_error(e: BaseException) -> bool:
    text = f"{type(e).__name__} {e}".lower()
    return isinstance(e, ConnectionError) or any(
        s in text for s in ("offline", "connection", "couldn't reach", "network is unreachable", "max retries"))


def load_tasks(task_manager, tasks: list[str], task_files: dict[str, str] | None = None,
               num_fewshot: int | None = None) -> list:
    """Task objects, built one by one so a failure names its task (a hub dataset without network: NO_NETWORK)."""
    specs = [(name, name) for name in tasks]
    specs += [(f"{name}_local", local_task_config(task_manager, name, path, num_fewshot))
              for name, path in (task_files or {}).items()]
    built = []
    for name, spec in specs:
        if isinstance(spec, str) and spec not in task_manager.task_index:
            raise ScalegptError(f"--tasks: unknown harness task '{name}' (see `lm-eval ls tasks`, or --include-path "
                                "for your own task files)")
        try:
            loaded = task_manager.load([spec])
        except ScalegptError:
            raise
        except Exception as e:  # the harness and `datasets` raise many types; name the task either way
            if _is_network_error(e):
                raise ScalegptError(NO_NETWORK.format(task=name)) from None
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ScalegptError(f"task {name}: cannot be loaded ({type(e).__name__}: {first})") from None
        built += list(loaded["tasks"].values())
    if not built:
        raise ScalegptError("no tasks: give --tasks and/or --task-file")
    return built


@functools.lru_cache(maxsize=4)
def task_manager(include_path: str | None = None):
    """The harness's task index (it reads every task YAML it ships: seconds, so built once per process)."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=include_path)


def run_harness(lm: HarnessLM, tasks: list[str], task_files: dict[str, str] | None = None,
                include_path: str | None = None, limit: int | None = None, num_fewshot: int | None = None) -> dict:
    """The harness's results dict (`results`, `versions`, `n-shot`, ...) for `tasks` on `lm`."""
    import lm_eval

    if include_path is not None and not os.path.isdir(include_path):
        raise ScalegptError(f"--include-path {include_path}: not a directory")
    if limit is not None and limit < 1:
        raise ScalegptError(f"--limit must be >= 1, got {limit}")
    manager = task_manager(include_path)
    if num_fewshot is not None and num_fewshot < 0:
        raise ScalegptError(f"--num-fewshot must be >= 0, got {num_fewshot}")
    task_objects = load_tasks(manager, tasks, task_files, num_fewshot)
    results = lm_eval.simple_evaluate(model=lm, tasks=task_objects, task_manager=manager, limit=limit,
                                      num_fewshot=num_fewshot, log_samples=False, bootstrap_iters=0)
    if results is None:
        raise ScalegptError("the harness returned no results")
    return results


def results_json(results: dict) -> dict:
    """The JSON-serialisable summary of a harness run (the scores and what they are, no per-sample data)."""
    keep = ("results", "groups", "versions", "n-shot", "higher_is_better", "n-samples")
    return {k: results[k] for k in keep if k in results}


def mentions_hellaswag(results: dict) -> bool:
    return any("hellaswag" in name for name in results.get("results", {}))
