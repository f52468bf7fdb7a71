"""Multi-process training, tested on CPU with gloo through torchrun (2 ranks at most, tiny models, few steps).

The CLI tests drive `python -m torch.distributed.run ... -m scalegpt train` end to end: 1 process, 2-rank DDP and 2-rank
FSDP give the same loss curve and weights; FSDP's sharded checkpoint resumes at 1 rank and a 1-rank checkpoint at 2;
SIGKILL of a rank under --max-restarts 1 still ends in a finished run; bad input stops every rank. The worker half of
this file (`torchrun tests/test_distributed.py OUT ...`) trains with scalegpt.distributed's functions directly.
Every child runs with a timeout, so a hang fails a test instead of the CI job.
"""
from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from scalegpt.checkpoint import sharded as S
from scalegpt.config import DistConfig

HERE = Path(__file__).resolve()
TIMEOUT = 120  # seconds for one torchrun job
GLOBAL_SEQS, SEQ, VOCAB = 8, 16, 100  # the worker's batch

TINY_TOML = """
[model]
n_layer = 2
n_head = 2
n_embd = 32
block_size = 32
dropout = 0.0
[optim]
lr = 1e-2
grad_clip = 1.0
[schedule]
warmup_steps = 2
[train]
max_steps = 20
global_batch_tokens = 256
micro_batch_size = 2
device = "cpu"
precision = "fp32"
compile = "false"
seed = 7
[eval]
interval = 10
tokens = 1024
at_start = false
samples = 0
[log]
interval = 1
plot = false
progress = "false"
[checkpoint]
interval = 10
"""


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
              "TORCHELASTIC_RESTART_COUNT", "TORCHELASTIC_USE_AGENT_STORE"):
        env.pop(k, None)
    return env


def _torchrun_cmd(nproc: int, args: list, extra: list | None = None) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            *(extra or []), *map(str, args)]


def run(cmd: list, timeout: int = TIMEOUT) -> subprocess.CompletedProcess:
    return subprocess.run(list(map(str, cmd)), env=_env(), capture_output=True, text=True, timeout=timeout)


def train(nproc: int, out: Path, *args, data: Path, config: Path) -> subprocess.CompletedProcess:
    """`scalegpt train` in 1 process (no torchrun) or under torchrun with nproc ranks."""
    cli = ["-m", "scalegpt", "train", "--config", config, "--data.dir", data, "--out", out, *args]
    cmd = [sys.executable, *map(str, cli)] if nproc == 1 else _torchrun_cmd(nproc, cli)
    result = run(cmd)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result


def train_losses(run_dir: Path) -> dict[int, float]:
    """step -> loss from metrics.jsonl (full precision; the last record of a step wins after a resume)."""
    losses = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec.get("kind") == "train":
            losses[rec["step"]] = rec["loss"]
    return losses


def assert_same_curve(a: dict, b: dict, steps) -> None:
    for s in steps:
        assert abs(a[s] - b[s]) <= 1e-5 * abs(a[s]), f"step {s}: {a[s]} vs {b[s]}"


def assert_same_weights(dir_a: Path, dir_b: Path, n_embd: int = 32) -> None:
    from safetensors.torch import load_file

    a, b = load_file(str(dir_a / "model.safetensors")), load_file(str(dir_b / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        x, y = a[k].clone(), b[k].clone()
        if k.endswith("attn.c_attn.bias"):
            # The key bias has an exactly-zero gradient (softmax ignores a shift shared by all keys); Adam divides
            # its float-noise gradient by its own tiny scale, so it drifts by up to lr per step between runs.
            x[n_embd:2 * n_embd] = y[n_embd:2 * n_embd] = 0
        torch.testing.assert_close(x, y, rtol=1e-4, atol=5e-5, msg=k)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, shakespeare_text):
    """A char dataset and the tiny config, plus the 1-process reference run everything is compared with."""
    root = tmp_path_factory.mktemp("dist")
    (root / "corpus.txt").write_text(shakespeare_text[:200_000], encoding="utf-8")
    r = run([sys.executable, "-m", "scalegpt", "prepare", "--input", root / "corpus.txt", "--tokenizer", "char",
             "--out", root / "data", "--quiet"])
    assert r.returncode == 0, r.stderr
    (root / "tiny.toml").write_text(TINY_TOML)
    ctx = {"root": root, "data": root / "data", "config": root / "tiny.toml"}
    train(1, root / "single", data=ctx["data"], config=ctx["config"])
    return ctx


@pytest.fixture(scope="module")
def fsdp_run(setup):
    out = setup["root"] / "fsdp"
    r = train(2, out, "--dist.strategy", "fsdp", "--dist.activation_checkpointing", "true", data=setup["data"],
              config=setup["config"])
    assert "parallelism: fsdp over 2 ranks" in r.stdout
    return out


# ------------------------------------------------------------------------------------------------ end to end

def test_ddp_and_fsdp_match_one_process(setup, fsdp_run):
    root = setup["root"]
    r = train(2, root / "ddp", "--dist.strategy", "ddp", data=setup["data"], config=setup["config"])
    assert "parallelism: ddp over 2 ranks" in r.stdout
    assert r.stdout.count("saved checkpoint") == 2, "only rank 0 may print"
    single = train_losses(root / "single")
    assert sorted(single) == list(range(1, 21))
    for other in ("ddp", "fsdp"):
        assert_same_curve(single, train_losses(root / other), range(1, 21))
        assert_same_weights(root / "single/checkpoints/step_000020", root / other / "checkpoints/step_000020")
    # DDP checkpoints are the single-process format; FSDP's add the sharded state and keep the plain weights.
    assert not (root / "ddp/checkpoints/step_000020/dcp").exists()
    assert (root / "fsdp/checkpoints/step_000020/dcp/.metadata").is_file()
    state = torch.load(root / "fsdp/checkpoints/step_000020/train_state.pt", weights_only=True)
    assert state["optimizer"] is None  # it lives in dcp/
    from scalegpt.checkpoint import load_model_dir

    model, _ = load_model_dir(root / "fsdp/checkpoints/step_000020")  # what sample/eval/export read
    assert model.config.n_embd == 32


# Every [model] switch away from GPT-2 (docs/training.md#model-options).
ALL_MODEL_OPTIONS = ["--model.pos_emb", "rope", "--model.norm", "rmsnorm", "--model.mlp", "relu2", "--model.qk_norm",
                     "true", "--model.n_kv_head", "1", "--model.tie_embeddings", "false", "--model.zero_init", "true",
                     "--model.value_embeds", "true", "--model.residual_scalars", "true", "--model.embed_norm", "true",
                     "--model.logit_softcap", "15", "--model.bias", "false", "--train.max_steps", "6",
                     "--checkpoint.interval", "6", "--eval.interval", "6"]


@pytest.fixture(scope="module")
def single_with_all_options(setup):
    out = setup["root"] / "single-options"
    train(1, out, *ALL_MODEL_OPTIONS, data=setup["data"], config=setup["config"])
    return out


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_all_model_options_match_one_process(setup, single_with_all_options, strategy):
    out = setup["root"] / f"{strategy}-options"
    r = train(2, out, *ALL_MODEL_OPTIONS, "--dist.strategy", strategy, "--dist.activation_checkpointing",
              str(strategy == "fsdp").lower(), data=setup["data"], config=setup["config"])
    assert f"parallelism: {strategy} over 2 ranks" in r.stdout
    assert_same_curve(train_losses(single_with_all_options), train_losses(out), range(1, 7))
    assert_same_weights(single_with_all_options / "checkpoints/step_000006", out / "checkpoints/step_000006")


def _resume_from_step_10(src: Path, dst: Path) -> None:
    import shutil

    shutil.copytree(src, dst)
    shutil.rmtree(dst / "checkpoints/step_000020")


def test_fsdp_checkpoint_resumes_at_one_rank(setup, fsdp_run):
    dst = setup["root"] / "fsdp_to_1"
    _resume_from_step_10(fsdp_run, dst)
    r = train(1, dst, "--resume", data=setup["data"], config=setup["config"])
    assert "at step 10" in r.stdout
    assert_same_curve(train_losses(setup["root"] / "single"), train_losses(dst), range(11, 21))
    assert_same_weights(setup["root"] / "single/checkpoints/step_000020", dst / "checkpoints/step_000020")


def test_one_rank_checkpoint_resumes_at_two_fsdp_ranks(setup):
    dst = setup["root"] / "single_to_fsdp"
    _resume_from_step_10(setup["root"] / "single", dst)
    r = train(2, dst, "--resume", "--dist.strategy", "fsdp", "--dist.activation_checkpointing", "true",
              data=setup["data"], config=setup["config"])
    assert "at step 10" in r.stdout
    assert_same_curve(train_losses(setup["root"] / "single"), train_losses(dst), range(11, 21))
    assert (dst / "checkpoints/step_000020/dcp").is_dir()


def test_ddp_resume_with_dropout_is_exact(setup):
    """Each rank's RNG (dropout masks) is saved and given back to that rank: the resumed steps are bit-identical."""
    root = setup["root"]
    config = root / "dropout.toml"
    config.write_text(TINY_TOML.replace("dropout = 0.0", "dropout = 0.2"))
    train(2, root / "drop", "--dist.strategy", "ddp", data=setup["data"], config=config)
    _resume_from_step_10(root / "drop", root / "drop_resumed")
    train(2, root / "drop_resumed", "--resume", "--dist.strategy", "ddp", data=setup["data"], config=config)
    full, resumed = train_losses(root / "drop"), train_losses(root / "drop_resumed")
    assert [full[s] for s in range(11, 21)] == [resumed[s] for s in range(11, 21)]


MUON = ["--optim.name", "muon", "--train.max_steps", "12", "--checkpoint.interval", "6"]


def assert_close_weights(dir_a: Path, dir_b: Path, atol: float) -> None:
    from safetensors.torch import load_file

    a, b = load_file(str(dir_a / "model.safetensors")), load_file(str(dir_b / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=atol, msg=k)


@pytest.fixture(scope="module")
def muon_runs(setup):
    root = setup["root"]
    for name, nproc, args in (("muon_single", 1, []), ("muon_ddp", 2, ["--dist.strategy", "ddp"]),
                              ("muon_fsdp", 2, ["--dist.strategy", "fsdp"])):
        r = train(nproc, root / name, *MUON, *args, data=setup["data"], config=setup["config"])
        assert "optimizer group muon: Muon" in r.stdout
    return root


def assert_muon_close(root: Path, a: str, b: str, steps) -> None:
    """Muon's Newton-Schulz iteration runs in bf16 and amplifies the last-bit differences of a gradient reduced in
    another order, so weights agree less tightly than AdamW's (measured over 12 steps: losses within 7e-6, weights
    within 7e-3 under DDP and FSDP). A Muon that orthogonalised each rank's shard of a matrix on its own fails both
    checks (measured on this config: losses 8e-4 apart from step 2 on, weights 0.10)."""
    la, lb = train_losses(root / a), train_losses(root / b)
    for s in steps:
        assert abs(la[s] - lb[s]) <= 1e-4 * abs(la[s]), f"step {s}: {la[s]} vs {lb[s]}"
    assert_close_weights(root / a / "checkpoints/step_000012", root / b / "checkpoints/step_000012", atol=0.03)


def test_muon_under_ddp_and_fsdp_matches_one_process(muon_runs):
    """DDP: torch's Muon orthogonalises the all-reduced full gradients. FSDP2: the matrices are row-sharded DTensors,
    and FullMatrixMuon gathers each one and applies torch's Muon update to the full matrix."""
    for other in ("muon_ddp", "muon_fsdp"):
        assert_muon_close(muon_runs, "muon_single", other, range(1, 13))
    state = torch.load(muon_runs / "muon_fsdp/checkpoints/step_000012/train_state.pt", weights_only=True)
    assert state["optimizer"] is None  # both optimizers' shards are in dcp/
    saved = S.read_dcp_metadata(muon_runs / "muon_fsdp/checkpoints/step_000012/dcp")
    assert any(k.endswith("mlp.c_fc.weight.momentum_buffer") for k in saved)  # Muon's state
    assert any(k.endswith("wte.weight.exp_avg") for k in saved)  # AdamW's


def test_muon_under_fsdp_with_all_model_options_matches_one_process(setup):
    """Value-embedding gates of n_kv_head = 1 row (fewer rows than ranks: one rank's shard is empty), an untied head,
    value embeddings and scalars in AdamW's part."""
    root = setup["root"]
    for name, nproc, args in (("muon_options_single", 1, []),
                              ("muon_options_fsdp", 2, ["--dist.strategy", "fsdp", "--dist.activation_checkpointing",
                                                        "true"])):
        r = train(nproc, root / name, *ALL_MODEL_OPTIONS, "--optim.name", "muon", *args, data=setup["data"],
                  config=setup["config"])
        assert "9 tensors" in r.stdout.split("optimizer group muon")[1].splitlines()[0]  # 4 per block + 1 ve_gate
    a, b = train_losses(root / "muon_options_single"), train_losses(root / "muon_options_fsdp")
    for s in range(1, 7):
        assert abs(a[s] - b[s]) <= 1e-4 * abs(a[s]), f"step {s}: {a[s]} vs {b[s]}"
    assert_close_weights(root / "muon_options_single/checkpoints/step_000006",
                         root / "muon_options_fsdp/checkpoints/step_000006", atol=0.03)


def test_muon_checkpoints_cross_between_fsdp_and_one_process(setup, muon_runs):
    """FSDP's sharded Muon + AdamW state resumes in one process, and a one-process checkpoint at 2 FSDP ranks."""
    import shutil

    root = muon_runs
    for src, dst, nproc, args in (("muon_fsdp", "muon_fsdp_to_1", 1, []),
                                  ("muon_single", "muon_1_to_fsdp", 2, ["--dist.strategy", "fsdp"])):
        shutil.copytree(root / src, root / dst)
        shutil.rmtree(root / dst / "checkpoints/step_000012")
        r = train(nproc, root / dst, *MUON, *args, "--resume", data=setup["data"], config=setup["config"])
        assert "at step 6" in r.stdout
        assert_muon_close(root, "muon_single", dst, range(7, 13))
    # the sharded state of Muon + AdamW does not fit an AdamW-only run: one line, not a DCP traceback
    shutil.copytree(root / "muon_fsdp", root / "muon_fsdp_as_adamw")
    r = run([sys.executable, "-m", "scalegpt", "train", "--out", root / "muon_fsdp_as_adamw", "--resume",
             "--optim.name", "adamw", "--train.max_steps", "14"])
    assert r.returncode == 2, r.stderr[-2000:]
    assert "the optimizer state does not fit this run" in r.stderr and "was optim.name changed?" in r.stderr


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds the worker processes through /proc")
def test_sigkill_of_a_rank_restarts_and_finishes(setup):
    out = setup["root"] / "elastic"
    cmd = _torchrun_cmd(2, ["--max-restarts", "1", "-m", "scalegpt", "train", "--config", setup["config"],
                            "--data.dir", setup["data"], "--out", out, "--dist.strategy", "ddp",
                            "--train.max_steps", 150, "--checkpoint.interval", 25, "--eval.interval", 0])
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + TIMEOUT
        while not (out / "checkpoints/step_000025").is_dir():
            assert proc.poll() is None and time.monotonic() < deadline, "no checkpoint at step 25"
            time.sleep(0.02)
        workers = _children(proc.pid)
        assert len(workers) == 2, workers
        os.kill(workers[-1], signal.SIGKILL)  # a worker this test started, through torchrun
        output, _ = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, output[-4000:]
    assert "resumed from" in output
    assert max(train_losses(out)) == 150
    assert (out / "checkpoints/step_000150").is_dir()


@pytest.mark.parametrize("args, message", [
    (["--dist.strategy", "zero"], "dist.strategy"),
    (["--train.micro_batch_size", "3"], "must be a multiple of micro_batch_size x seq_len x world_size"),
])
def test_bad_input_stops_every_rank(setup, args, message):
    r = run(_torchrun_cmd(2, ["-m", "scalegpt", "train", "--config", setup["config"], "--data.dir", setup["data"],
                              "--out", setup["root"] / "bad", *args]))
    assert r.returncode != 0
    assert message in r.stderr
    assert "exitcode  : 2" in r.stderr, r.stderr[-3000:]  # the CLI's exit for a ScalegptError, not a crash


# ------------------------------------------------------------------------------------------------ module level

def test_unknown_strategy_names_the_valid_ones():
    from scalegpt.config import DistConfig
    from scalegpt.errors import ScalegptError

    with pytest.raises(ScalegptError, match="auto, ddp, fsdp"):
        DistConfig(strategy="zero3")


def test_fsdp_refuses_fp16(tiny_model):
    from scalegpt import distributed as D
    from scalegpt.errors import ScalegptError

    with pytest.raises(ScalegptError, match="fsdp does not support precision fp16"):
        D.parallelize(tiny_model, DistConfig(), D.DistInfo(world_size=2), "fp16", "fsdp")


def test_one_process_has_no_process_group(monkeypatch):
    import torch.distributed as dist

    from scalegpt import distributed as D

    for k in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(k, raising=False)
    info = D.init_distributed(DistConfig(), "cpu")
    assert (info.rank, info.world_size, info.is_main, info.device.type) == (0, 1, True, "cpu")
    assert not dist.is_initialized()
    assert D.all_reduce_mean(2.5) == 2.5 and D.any_rank(True)
    assert D.choose_strategy(DistConfig(strategy="fsdp"), None, info)[0] == "single"


def test_more_processes_than_gpus_is_refused_before_any_collective(monkeypatch):
    """Simulated (no GPU here): 4 processes on a node with 2 GPUs fail on every rank before joining the group."""
    import torch.distributed as dist

    from scalegpt import distributed as D
    from scalegpt.errors import ScalegptError

    for k, v in {"RANK": "3", "LOCAL_RANK": "3", "WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "4"}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ScalegptError, match="launched 4 processes per node but this machine has 2 GPU"):
        D.init_distributed(DistConfig())
    assert not dist.is_initialized()


def test_auto_strategy_follows_the_memory_formula(monkeypatch, tiny_model):
    from scalegpt import distributed as D

    info = D.DistInfo(world_size=2)
    assert D.choose_strategy(DistConfig(), tiny_model, info)[0] == "ddp"
    monkeypatch.setattr(D, "BYTES_PER_PARAM", 1 << 40)  # as if each parameter needed a terabyte
    name, reason = D.choose_strategy(DistConfig(), tiny_model, info)
    assert name == "fsdp" and "exceeds" in reason


def test_activation_checkpointing_keeps_names_and_gradients(tiny_model):
    import copy

    from scalegpt import distributed as D

    plain = tiny_model.train()
    ac = copy.deepcopy(plain)
    D.apply_activation_checkpointing(ac)
    assert list(ac.state_dict()) == list(plain.state_dict())
    x = torch.randint(0, 100, (2, 16))
    for m in (plain, ac):
        m(x, x).backward()
    for (name, p), q in zip(plain.named_parameters(), ac.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=name)


def test_dcp_metadata_is_never_unpickled_blindly(tmp_path):
    from scalegpt.errors import ScalegptError

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    (tmp_path / ".metadata").write_bytes(pickle.dumps(Payload()))
    with pytest.raises(ScalegptError, match="refusing to load"):
        S.read_dcp_metadata(tmp_path)
    assert not (tmp_path / "pwned").exists()


def test_worker_fsdp_checkpoint_loads_into_ddp_and_refuses_another_shape(tmp_path):
    """Through the module alone: FSDP saves DCP at step 3, 2-rank DDP resumes it; the norms agree on every rank
    (checked in the worker); a model of another width gets one clear line."""
    r = run([sys.executable, HERE, tmp_path / "single", "--steps", 6])
    assert r.returncode == 0, r.stderr
    r = run(_torchrun_cmd(2, [HERE, tmp_path / "fsdp", "--strategy", "fsdp", "--save-at", 3, "--steps", 6]))
    assert r.returncode == 0, r.stderr[-3000:]
    r = run(_torchrun_cmd(2, [HERE, tmp_path / "ddp", "--strategy", "ddp", "--steps", 6,
                              "--resume", tmp_path / "fsdp/step_3"]))
    assert r.returncode == 0, r.stderr[-3000:]
    single = json.loads((tmp_path / "single/result.json").read_text())["losses"]
    resumed = json.loads((tmp_path / "ddp/result.json").read_text())
    assert resumed["strategy"] == "ddp"
    assert_same_curve(dict(enumerate(single)), dict(enumerate(resumed["losses"], start=3)), range(3, 6))

    from scalegpt.errors import ScalegptError
    from scalegpt.model import GPT, preset_config
    from scalegpt.optim import build_optimizer

    wide = GPT(preset_config("tiny", vocab_size=VOCAB, n_embd=64))
    opt, _ = build_optimizer(wide, 1e-3, 0.1, (0.9, 0.95), 1e-8, "cpu")
    with pytest.raises(ScalegptError, match="has shape"):
        S.load_dcp(wide, opt, tmp_path / "fsdp/step_3/dcp")


# ------------------------------------------------------------------------------------------------ worker side

def _batch(step: int, micro: int, n_micro: int, rank: int, world: int):
    """The same global batch at every world size: rank r takes rows r, r + world, ... of each step's 8 sequences."""
    g = torch.Generator().manual_seed(1000 + step)
    data = torch.randint(0, VOCAB, (GLOBAL_SEQS, SEQ + 1), generator=g)
    mine = data[rank::world]
    per = mine.shape[0] // n_micro
    chunk = mine[micro * per:(micro + 1) * per]
    return chunk[:, :-1], chunk[:, 1:]


def worker(out: Path, strategy: str, steps: int, resume: str | None, save_at: int) -> None:
    from scalegpt import distributed as D
    from scalegpt.model import GPT, preset_config
    from scalegpt.optim import build_optimizer

    cfg = DistConfig(strategy=strategy)
    info = D.init_distributed(cfg, "cpu")
    torch.manual_seed(0)
    model = GPT(preset_config("tiny", vocab_size=VOCAB))
    chosen, _ = D.choose_strategy(cfg, model, info)
    model = D.parallelize(model, cfg, info, "fp32", chosen)
    optimizer, _ = build_optimizer(model, 1e-2, 0.1, (0.9, 0.95), 1e-8, "cpu")
    start = 0
    if resume:
        S.load_dcp(model, optimizer, Path(resume) / "dcp")
        start = json.loads((Path(resume) / "step.json").read_text())["step"]
    n_micro = 2  # gradient accumulation: DDP/FSDP sync only on the second micro-step
    losses, norms = [], []
    for step in range(start, steps):
        total = torch.zeros(())
        for micro in range(n_micro):
            x, y = _batch(step, micro, n_micro, info.rank, info.world_size)
            with D.no_sync(model, micro == n_micro - 1):
                loss = model(x, y)
                (loss / n_micro).backward()
            total += loss.detach() / n_micro
        norms.append(float(D.clip_grad_norm(model, 1.0)))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(D.all_reduce_mean(total.item()))
        if step + 1 == save_at:
            S.save_dcp(model, optimizer, out / f"step_{save_at}" / "dcp")
            if info.is_main:
                (out / f"step_{save_at}" / "step.json").write_text(json.dumps({"step": save_at}))
    if info.world_size > 1:
        import torch.distributed as dist

        gathered = [None] * info.world_size
        dist.all_gather_object(gathered, norms)  # this job's own ranks' floats, never read from disk
        assert all(g == norms for g in gathered), f"ranks disagree on the grad norm: {gathered}"
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "result.json").write_text(json.dumps({"losses": losses, "norms": norms, "strategy": chosen}))
    D.destroy()


if __name__ == "__main__":
    import argparse

    p = argparse.ArgumentParser()
    p.add_argument("out", type=Path)
    p.add_argument("--strategy", default="auto")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--resume")
    p.add_argument("--save-at", type=int, default=-1)
    a = p.parse_args()
    worker(a.out, a.strategy, a.steps, a.resume, a.save_at)
    from scalegpt.cli import leave

    leave(0)  # as `scalegpt` leaves under torchrun (a normal exit aborted 1 of 8 FSDP runs here)
