"""`scalegpt prepare --executor local|ray|slurm`: prepare's one tokenize-and-shard step run as the tasks of a
HuggingFace datatrove pipeline (optional extra `scalegpt[scale]`), then one merge into today's dataset layout.

Work units are the input files in prepare's order, a parquet file counting one unit per row group. Task i of N takes
the contiguous units [i*U//N, (i+1)*U//N) and runs `scalegpt.prepare.prepare` on them into its own directory (a
complete little dataset: shards + meta.json with counts, sha256 and max_token). Contiguous shares keep the corpus
order: the merged dataset is the tasks' shards in task order, so for a given task count the bytes do not depend on the
executor, the worker count or on interruptions. Train/val: a corpus of one text file is split by position (all of it
in task 0, exactly as without an executor); otherwise every task applies --val-fraction to its own documents, and
--val-tokens is taken from task 0's documents.

While running, everything lives in OUT/.partial/:
    plan.json       what is being prepared (inputs, options) and the task count; a rerun with another --tasks is refused
    tasks/NNNNN/    task NNNNN's output (task.json written last, after its meta.json)
and datatrove's logging_dir is OUT/.prepare-logs/ (completions/NNNNN markers, logs/task_NNNNN.log, stats/), kept
after the merge for the per-task logs.
A rerun of the same command skips the tasks with a completion marker (datatrove) and redoes the others from scratch.
The merge checks every task's marker and output, hard-links the shards under their final names, writes meta.json and
swaps them into OUT with prepare's own rename-only swap; until then OUT holds no meta.json, so no half dataset.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import sys
import time
from pathlib import Path

from scalegpt._fs import write_text_atomically
from scalegpt.errors import ScalegptError
from scalegpt.outputs import check_output
from scalegpt.prepare import (FORMAT, FORMAT_VERSION, PARTIAL, _stage_metadata, _swap_in, build_tokenizer, prepare,
                              shard_dtype)
from scalegpt.sources import InputFile, Source, discover
from scalegpt.tokenizer import tokenizer_from_spec

try:
    from datatrove.executor import SlurmPipelineExecutor
    from datatrove.pipeline.base import PipelineStep
except ImportError:  # the optional extra is missing: prepare_with_executor says so before any step is made
    PipelineStep = SlurmPipelineExecutor = object

EXECUTORS = ("local", "ray", "slurm")
LOGS = ".prepare-logs"  # datatrove's logging_dir inside OUT: kept after the merge (per-task logs, stats)
SCALE_MISSING = "--executor {} needs the optional `datatrove` package{}: pip install 'scalegpt[scale]'"
MERGE_NAME = "scalegpt-merge"
MAX_DEFAULT_TASKS = 256


def work_units(files: list[InputFile]) -> list[InputFile]:
    """One unit per input file, one per row group of a parquet file (a task's share can be part of a file)."""
    units = []
    for f in files:
        if f.kind == "parquet":
            import pyarrow.parquet as pq

            try:
                n = pq.ParquetFile(f.path).num_row_groups
            except Exception as e:  # pyarrow's own error types
                raise ScalegptError(f"{f.path}: not a readable parquet file ({e})") from None
            units += [InputFile(f.path, f.kind, None, f.size, f.mtime_ns, row_groups=(g,)) for g in range(n)]
        else:
            units.append(f)
    return units


def task_share(units: list, rank: int, tasks: int) -> list:
    return units[rank * len(units) // tasks:(rank + 1) * len(units) // tasks]


def _peak_rss_mb() -> float:
    """This process's peak resident memory so far (a task's log line: it stays flat as the corpus grows)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _task_dir(partial: Path, rank: int) -> Path:
    return partial / "tasks" / f"{rank:05d}"


def run_task(plan: dict, rank: int, world_size: int) -> dict:
    """One task: prepare() on this task's share into tasks/NNNNN/, then task.json. Re-run from scratch if repeated."""
    from datatrove.utils.logging import logger

    if world_size != plan["tasks"]:
        raise ScalegptError(f"task {rank}: launched with {world_size} tasks, the plan has {plan['tasks']}")
    partial = Path(plan["partial"])
    out = _task_dir(partial, rank)
    shutil.rmtree(out, ignore_errors=True)  # what a killed attempt left
    share = task_share(plan["units"], rank, world_size)
    t0 = time.time()
    opts = dict(plan["options"])
    if opts["val_tokens"] is not None and rank > 0:
        opts["val_tokens"] = 0  # --val-tokens: the first documents, i.e. task 0's
    record = {"task": rank, "tasks": world_size, "fingerprint": plan["fingerprint"], "units": len(share)}
    if share:
        try:
            meta = prepare(out=out, tokenizer=tokenizer_from_spec(plan["tokenizer"]), files=share,
                           split_by_position=plan["split_by_position"], workers=1, progress=False,
                           command=plan["command"] + [f"# task {rank}/{world_size}"], **opts)
        except ScalegptError as e:  # kept for the merge's message: Ray and SLURM tasks fail far from the user
            out.mkdir(parents=True, exist_ok=True)
            (out / "error.txt").write_text(str(e) + "\n", encoding="utf-8")
            raise
        s = meta["splits"]
        tokens = s["train"]["num_tokens"] + s["val"]["num_tokens"]
        logger.info(f"task {rank}/{world_size}: {len(share)} unit(s) from {share[0].path} to {share[-1].path}: "
                    f"{tokens:,} tokens in {len(s['train']['shards'])} train + {len(s['val']['shards'])} val shards, "
                    f"{time.time() - t0:.1f} s, {tokens / max(1e-9, time.time() - t0):,.0f} tokens/s, "
                    f"peak RSS {_peak_rss_mb():.0f} MB")
    else:
        out.mkdir(parents=True, exist_ok=True)
        logger.info(f"task {rank}/{world_size}: no input units (more tasks than units)")
    write_text_atomically(out / "task.json", json.dumps(record))
    return record


class TokenizeShards(PipelineStep):
    """The datatrove step of every task; `plan` travels with it (pickled to Ray workers and SLURM jobs)."""

    name = "scalegpt prepare"
    type = "tokenize+shard"

    def __init__(self, plan: dict):
        super().__init__()
        self.plan = plan

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        run_task(self.plan, rank, world_size)
        return data


class MergeTasks(PipelineStep):
    """The SLURM merge job's step (local and Ray merge in the calling process)."""

    name = "scalegpt merge"
    type = "merge"

    def __init__(self, plan: dict):
        super().__init__()
        self.plan = plan

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        merge(self.plan)
        return data


# ------------------------------------------------------------------------------------------------------- merging


def merge(plan: dict) -> dict:
    """Check every task completed and its output is whole, then write OUT's shards and its one meta.json."""
    from scalegpt.data import _check_shard

    partial, out, tasks = Path(plan["partial"]), Path(plan["out"]), plan["tasks"]
    logs = Path(plan["logs"])
    missing = [r for r in range(tasks) if not (logs / "completions" / f"{r:05d}").is_file()]
    if missing:
        errors = [(_task_dir(partial, r) / "error.txt") for r in missing]
        first_error = next((e.read_text(encoding="utf-8").strip() for e in errors if e.is_file()), None)
        raise ScalegptError(
            f"{out}: task(s) {', '.join(map(str, missing[:8]))}{'...' if len(missing) > 8 else ''} of {tasks} did "
            f"not complete" + (f" ({first_error})" if first_error else "") +
            f"; logs in {logs / 'logs'}; fix the cause and rerun the same command (completed tasks are kept)")
    metas = []
    for r in range(tasks):
        d = _task_dir(partial, r)
        try:
            record = json.loads((d / "task.json").read_text(encoding="utf-8"))
            meta = json.loads((d / "meta.json").read_text(encoding="utf-8")) if record["units"] else None
            ok = record["fingerprint"] == plan["fingerprint"] and record["tasks"] == tasks and record["task"] == r
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ScalegptError(f"{d}: task {r}'s output is missing or corrupt ({type(e).__name__}: {e}); delete "
                                f"{logs / 'completions' / f'{r:05d}'} and rerun the same command to redo it") from None
        if not ok:
            raise ScalegptError(f"{d / 'task.json'}: written by another run (different inputs or --tasks); rerun "
                                f"with --overwrite to start afresh")
        if meta is not None:
            if meta.get("tokenizer") != plan["tokenizer"]:
                raise ScalegptError(f"{d / 'meta.json'}: another tokenizer than the plan's; rerun with --overwrite")
            for split in ("train", "val"):
                for s in meta["splits"][split]["shards"]:
                    try:
                        _check_shard(d / s["file"], meta["dtype"], s["num_tokens"])
                    except ScalegptError as e:
                        raise ScalegptError(f"task {r}'s output is corrupt: {e}; delete "
                                            f"{logs / 'completions' / f'{r:05d}'} and rerun the same command") from None
        metas.append((d, meta))

    tok = tokenizer_from_spec(plan["tokenizer"])
    splits = {}
    for split in ("train", "val"):
        shards, tokens, documents = [], 0, 0
        for d, meta in metas:
            if meta is None:
                continue
            info = meta["splits"][split]
            tokens += info["num_tokens"]
            documents += info["num_documents"]
            for s in info["shards"]:
                name = f"{split}_{len(shards):06d}.npy"
                target = partial / name
                if target.exists():
                    os.remove(target)  # a merge interrupted before: links again
                os.link(d / s["file"], target)  # the task's file stays whole until the swap succeeded
                shards.append({**s, "file": name})
        splits[split] = {"num_tokens": tokens, "num_documents": documents, "shards": shards}
    if splits["train"]["num_tokens"] <= splits["train"]["num_documents"]:
        raise ScalegptError(f"no training text found in the inputs {[u.get('path') for u in plan['inputs']]}")
    first = next(m for _, m in metas if m is not None)
    options = plan["options"]
    meta = {
        "format": FORMAT, "version": FORMAT_VERSION, "tokenizer": plan["tokenizer"], "vocab_size": tok.vocab_size,
        "eot_id": tok.eot_id, "dtype": shard_dtype(tok.vocab_size).name, "shard_tokens": options["shard_tokens"],
        "split_rule": first["split_rule"], "val_tokens": options["val_tokens"], "val_fraction": first["val_fraction"],
        "splits": splits, "inputs": plan["inputs"], "text_field": options["text_field"],
        "encoding": options["encoding"], "errors": options["errors"], "command": plan["command"],
        "executor": plan["executor"], "tasks": tasks,
    }
    _stage_metadata(partial, meta, tok)
    _swap_in(out, partial, meta, tok)  # removes .partial (the task outputs) once OUT is whole
    return meta


# ------------------------------------------------------------------------------------------------------ planning


def make_plan(inputs, out: Path, tokenizer: str, executor: str, tasks: int, overwrite: bool, command: list[str],
              options: dict) -> dict:
    """Inputs, units, tokenizer and fingerprint of a run; refuses a changed --tasks over a run in progress."""
    if tasks is not None and tasks < 1:
        raise ScalegptError(f"--tasks must be >= 1, got {tasks}")
    # The one output rule (scalegpt.outputs); the tasks' scratch of an interrupted run is continued without --overwrite.
    check_output(out, kind="dataset", inputs=list(inputs), overwrite=overwrite,
                 reuse=not os.path.lexists(out / "meta.json"))
    files = discover(list(inputs), exclude=out)
    source = Source(files, text_field=options["text_field"], encoding=options["encoding"], errors=options["errors"])
    tok, _ = build_tokenizer(tokenizer, source)  # char: one vocabulary for every task, from all inputs
    units = work_units(files)
    if tasks is None:  # a function of the inputs, never of the machine: the bytes depend on the task count
        tasks = max(1, min(len(units), MAX_DEFAULT_TASKS))
    fingerprint = hashlib.sha256(json.dumps([FORMAT_VERSION, "tasks", source.identity(), tok.spec(), options],
                                            sort_keys=True).encode()).hexdigest()
    partial = out / PARTIAL
    plan_file = partial / "plan.json"
    old = None
    if plan_file.is_file() and not overwrite:
        try:
            old = json.loads(plan_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            old = None
    if old is not None and old.get("fingerprint") == fingerprint and old.get("tasks") != tasks:
        done = len(list((out / LOGS / "completions").glob("*")))
        raise ScalegptError(f"--tasks {tasks}: {partial} holds a run of the same command with --tasks "
                            f"{old.get('tasks')} ({done} task(s) done); rerun with --tasks {old.get('tasks')} to "
                            f"finish it, or pass --overwrite to start afresh")
    strays = sorted(p.name for p in out.glob("*.npy")) if out.is_dir() else []
    if strays and not overwrite:
        raise ScalegptError(f"--out {out}: holds {strays[0]} but no meta.json (from another command?); "
                            f"pass --overwrite to replace it, or choose another --out")
    resuming = old is not None and old.get("fingerprint") == fingerprint
    if not resuming:  # scratch of another command or of an overwritten run: never a dataset; stale markers
        shutil.rmtree(partial, ignore_errors=True)
        shutil.rmtree(out / LOGS, ignore_errors=True)
    plan = {"fingerprint": fingerprint, "tasks": tasks, "executor": executor, "out": str(out.resolve()),
            "partial": str(partial.resolve()), "logs": str((out / LOGS).resolve()), "tokenizer": tok.spec(), "options": options, "command": command,
            "units": units, "split_by_position": source.single_document, "inputs": source.describe()}
    partial.mkdir(parents=True, exist_ok=True)
    write_text_atomically(plan_file, json.dumps({"fingerprint": fingerprint, "tasks": tasks}))
    return plan


def check_ray_address(address: str | None) -> None:
    """A Ray address that does not answer is one line now, not a long hang in ray.init."""
    if not address or address in ("auto", "local"):
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ScalegptError(f"--ray-address {address}: expected HOST:PORT (or ray://HOST:PORT, auto)")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as e:
        raise ScalegptError(f"--ray-address {address}: no Ray cluster answers there ({e.strerror or e}); start one "
                            f"with `ray start --head` or omit --ray-address for a local one") from None


def prepare_with_executor(inputs, out, tokenizer: str = "gpt2", *, executor: str = "local", tasks: int | None = None,
                          workers: int = 1, ray_address: str | None = None, slurm: dict | None = None,
                          overwrite: bool = False, command: list[str] | None = None, quiet: bool = False,
                          **options) -> dict | None:
    """Plan, run the tasks on the executor, merge. Returns the dataset's meta, or None for SLURM (jobs submitted:
    the merge runs as a job of its own after them)."""
    if executor not in EXECUTORS:
        raise ScalegptError(f"--executor must be one of {', '.join(EXECUTORS)}, got '{executor}'")
    import importlib.util

    if importlib.util.find_spec("datatrove") is None:
        raise ScalegptError(SCALE_MISSING.format(executor, ""))
    if executor == "ray" and importlib.util.find_spec("ray") is None:
        raise ScalegptError(SCALE_MISSING.format(executor, " and `ray`"))
    if workers < 1:
        raise ScalegptError(f"--workers must be >= 1, got {workers}")
    if executor == "ray":
        check_ray_address(ray_address)
    out = Path(out)
    created = not out.exists()
    defaults = {"text_field": "text", "encoding": "utf-8", "errors": "strict", "shard_tokens": 100_000_000,
                "val_tokens": None, "val_fraction": None}
    unknown = set(options) - set(defaults)
    if unknown:
        raise TypeError(f"unknown options {sorted(unknown)}")
    options = {**defaults, **options}
    try:
        plan = make_plan(inputs, out, tokenizer, executor, tasks, overwrite,
                         command if command is not None else sys.argv, options)
    except ScalegptError:
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise
    step = TokenizeShards(plan)
    logs, tasks = plan["logs"], plan["tasks"]
    from datatrove.utils.logging import logger

    real_stderr = sys.stderr
    sys.stderr = _Console(real_stderr, quiet)
    logger.remove()
    logger.add(_to_stderr)  # the driver's own datatrove messages go through it too
    try:
        if executor == "local":
            from datatrove.executor import LocalPipelineExecutor

            LocalPipelineExecutor([step], tasks=tasks, workers=min(workers, tasks), logging_dir=logs,
                                  start_method="fork").run()
        elif executor == "ray":
            _run_ray(step, plan, workers, ray_address, logs)
        else:
            submit_slurm(step, plan, workers, logs, slurm or {})
            return None
    finally:
        sys.stderr = real_stderr
        logger.remove()  # datatrove's task loggers leave sinks bound to the stream of the moment
        logger.add(_to_stderr)
    return merge(plan)


def _to_stderr(message) -> None:
    """A loguru sink that writes to sys.stderr as it is at each message (never a stream since replaced or closed)."""
    sys.stderr.write(message)


class _Console:
    """Stands in for sys.stderr while the executor runs. datatrove's task loggers write to sys.stderr as it is when
    a task starts; a failed task's traceback (it is in the task's log file) and, with --quiet, everything, stay off
    the console, where the CLI prints the error as one line."""

    def __init__(self, real, quiet: bool):
        self.real, self.quiet = real, quiet

    def write(self, text: str) -> int:
        if self.quiet or "| ERROR    |" in text:
            return len(text)
        return self.real.write(text)

    def __getattr__(self, name):
        return getattr(self.real, name)


def _run_ray(step, plan: dict, workers: int, address: str | None, logs: str) -> None:
    import ray
    from datatrove.executor import RayPipelineExecutor

    started = not ray.is_initialized()
    if started:
        try:
            if address:
                ray.init(address=address, log_to_driver=False)
            else:  # a local cluster of `workers` CPUs, on 127.0.0.1 only
                ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False,
                         object_store_memory=100 * 2 ** 20, _node_ip_address="127.0.0.1")
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise ScalegptError(f"--ray-address {address or 'local'}: cannot start or join Ray "
                                f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    try:
        RayPipelineExecutor([step], tasks=plan["tasks"], workers=workers, logging_dir=logs, cpus_per_task=1,
                            mem_per_cpu_gb=1).run()
    finally:
        if started:
            ray.shutdown()


def parse_sbatch_args(text: str | None) -> dict:
    """--slurm-sbatch-args "--account=a --qos=high --exclusive" -> {"account": "a", "qos": "high", "exclusive": ""}."""
    args = {}
    for item in (text or "").split():
        key, _, value = item.partition("=")
        if not key.startswith("--") or len(key) < 3:
            raise ScalegptError(f"--slurm-sbatch-args: '{item}' should look like --option=value or --flag")
        args[key[2:]] = value
    return args


class SlurmJobs(SlurmPipelineExecutor):
    """datatrove's SLURM executor, leaving out --partition when none is given (the cluster's default partition)."""

    def get_sbatch_args(self, max_array: int = 1) -> dict:
        args = super().get_sbatch_args(max_array)
        if not args.get("partition"):
            args.pop("partition", None)
        return args


def slurm_executors(step, plan: dict, workers: int, logs: str, slurm: dict):
    """The two job arrays: the tasks, then (afterok) one merge job. Returns (tasks executor, merge executor)."""
    common = dict(time=slurm.get("time", "24:00:00"), partition=slurm.get("partition", "") or None,
                  cpus_per_task=slurm.get("cpus", 1), mem_per_cpu_gb=slurm.get("mem_per_cpu_gb", 2), qos=None,
                  sbatch_args=parse_sbatch_args(slurm.get("sbatch_args")), mail_type="NONE",
                  env_command=f"cd {os.getcwd()}")
    tasks_job = SlurmJobs([step], tasks=plan["tasks"], workers=workers if workers > 0 else -1,
                                      job_name="scalegpt-prepare", logging_dir=logs, **common)
    merge_job = SlurmJobs([MergeTasks(plan)], tasks=1, job_name=MERGE_NAME, depends=tasks_job,
                                      logging_dir=str(Path(logs) / "merge"), **common)
    return tasks_job, merge_job


def submit_slurm(step, plan: dict, workers: int, logs: str, slurm: dict) -> None:
    """sbatch the task array and the merge job; the dataset appears in OUT when the merge job ends."""
    if shutil.which("sbatch") is None:
        raise ScalegptError("--executor slurm: `sbatch` not found; run on a SLURM cluster's login node")
    _, merge_job = slurm_executors(step, plan, workers, logs, slurm)
    try:
        merge_job.run()
    except Exception as e:  # sbatch refused (CalledProcessError): its message, one line
        detail = getattr(e, "output", b"") or b""
        raise ScalegptError(f"--executor slurm: submitting failed ({str(e).splitlines()[0]}"
                            f"{': ' + detail.decode(errors='replace').strip() if detail else ''})") from None
