"""`scalegpt prepare --executor local|ray|slurm` (datatrove): the same bytes from every executor and worker count, the
tokenizer's own output, a SIGKILLed task redone alone, and bad task outputs refused before any meta.json exists."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("datatrove", reason="needs the optional extra scalegpt[scale] (installed by `setup.sh dev`)")

import scalegpt.executors as executors  # noqa: E402
from scalegpt.errors import ScalegptError  # noqa: E402
from scalegpt.tokenizer import get_tokenizer  # noqa: E402

WORDS = "the cat sat on a mat while dogs ran far away into hills and rivers under grey skies".split()
ROOT = Path(__file__).resolve().parents[1]


def _doc(rng) -> str:
    return " ".join(rng.choice(WORDS, size=int(rng.integers(5, 120))))


@pytest.fixture
def corpus(tmp_path) -> Path:
    """3 JSON-lines files and a parquet file of 3 row groups: 6 work units, in this order."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    d = tmp_path / "corpus"
    d.mkdir()
    for name in ("a", "b", "c"):
        with open(d / f"{name}.jsonl", "w") as f:
            for _ in range(15):
                f.write(json.dumps({"text": _doc(rng)}) + "\n")
    pq.write_table(pa.table({"text": [_doc(rng) for _ in range(12)]}), d / "d.parquet", row_group_size=4)
    return d


def corpus_documents(d: Path) -> list[str]:
    import pyarrow.parquet as pq

    docs = []
    for name in ("a", "b", "c"):
        docs += [json.loads(line)["text"] for line in (d / f"{name}.jsonl").read_text().splitlines()]
    return docs + pq.read_table(d / "d.parquet").column("text").to_pylist()


def shard_bytes(out: Path) -> dict[str, bytes]:
    meta = json.loads((out / "meta.json").read_text())
    return {s["file"]: (out / s["file"]).read_bytes() for split in ("train", "val")
            for s in meta["splits"][split]["shards"]}


def cli(*args, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run([sys.executable, "-m", "scalegpt", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=ROOT)
    if check:
        assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_local_executor_matches_tokenizer_any_worker_count_and_plain_prepare(run_cli, corpus, tmp_path):
    common = ["prepare", "--input", corpus, "--shard-tokens", 400, "--val-fraction", 0, "--quiet"]
    rc, stdout, err = run_cli(*common, "--out", tmp_path / "w1", "--executor", "local", "--tasks", 4, "--workers", 1)
    assert rc == 0, err
    meta = json.loads((tmp_path / "w1" / "meta.json").read_text())
    assert meta["tasks"] == 4 and meta["executor"] == "local"
    # The tokenizer's own output: every document, in input order, after an EOT.
    tok = get_tokenizer("gpt2")
    expected = np.concatenate([[tok.eot_id] + tok.encode(t) for t in corpus_documents(corpus)])
    got = np.concatenate([np.load(tmp_path / "w1" / s["file"]) for s in meta["splits"]["train"]["shards"]])
    assert got.tolist() == expected.tolist()
    assert meta["splits"]["train"]["num_documents"] == 57
    assert run_cli("check", tmp_path / "w1")[0] == 0
    log = (tmp_path / "w1" / ".prepare-logs" / "logs" / "task_00003.log").read_text()
    assert "task 3/4: 2 unit(s)" in log  # units 4 and 5 of 6: the last two row groups of d.parquet

    cli(*common, "--out", tmp_path / "w2", "--executor", "local", "--tasks", 4, "--workers", 2)
    assert shard_bytes(tmp_path / "w2") == shard_bytes(tmp_path / "w1")

    # More tasks than the 6 units: the empty tasks add nothing, the token stream is the same.
    assert run_cli(*common, "--out", tmp_path / "w8", "--executor", "local", "--tasks", 8, "--workers", 1)[0] == 0
    meta8 = json.loads((tmp_path / "w8" / "meta.json").read_text())
    got8 = np.concatenate([np.load(tmp_path / "w8" / s["file"]) for s in meta8["splits"]["train"]["shards"]])
    assert got8.tolist() == expected.tolist() and meta8["tasks"] == 8

    # One task is the plain path, byte for byte; with a validation share too.
    vcommon = ["prepare", "--input", corpus, "--shard-tokens", 400, "--val-fraction", 0.2, "--quiet"]
    assert run_cli(*vcommon, "--out", tmp_path / "plain", "--workers", 1)[0] == 0
    assert run_cli(*vcommon, "--out", tmp_path / "one", "--executor", "local", "--tasks", 1)[0] == 0
    assert shard_bytes(tmp_path / "one") == shard_bytes(tmp_path / "plain")
    plain = json.loads((tmp_path / "plain" / "meta.json").read_text())
    one = json.loads((tmp_path / "one" / "meta.json").read_text())
    assert one["splits"] == plain["splits"] and one["splits"]["val"]["num_tokens"] > 0


def _write_kill_corpus(d: Path) -> None:
    d.mkdir()
    rng = np.random.default_rng(1)
    (d / "a.txt").write_text(" ".join(rng.choice(WORDS, 3000)))
    (d / "b.txt").write_text(" ".join(rng.choice(WORDS, 300_000)))  # task 1: long enough to be killed midway
    (d / "c.txt").write_text(" ".join(rng.choice(WORDS, 3000)))


def test_sigkilled_task_is_redone_alone_with_the_same_bytes_and_task_count_is_kept(tmp_path):
    corpus = tmp_path / "corpus"
    _write_kill_corpus(corpus)
    args = ["prepare", "--input", corpus, "--shard-tokens", 2000, "--executor", "local", "--workers", 1, "--quiet"]
    cli(*args, "--tasks", 3, "--out", tmp_path / "ref")

    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-m", "scalegpt", *map(str, args), "--tasks", "3", "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=ROOT,
                            start_new_session=True)
    midway = out / ".partial" / "tasks" / "00001" / ".partial" / "train_000005.npy"
    deadline = time.time() + 120
    while not midway.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    assert proc.poll() is None, "prepare ended before task 1 could be killed"
    os.killpg(proc.pid, signal.SIGKILL)  # the task and datatrove's manager process, as a lost node would
    proc.wait()
    assert not (out / "meta.json").exists() and not list(out.glob("*.npy"))
    assert (out / ".prepare-logs" / "completions" / "00000").exists()
    assert not (out / ".prepare-logs" / "completions" / "00001").exists()
    task0 = (out / ".partial" / "tasks" / "00000" / "train_000000.npy").stat()
    log0 = (out / ".prepare-logs" / "logs" / "task_00000.log").stat().st_mtime_ns

    changed = cli(*args, "--tasks", 2, "--out", out, check=False)
    assert changed.returncode == 2
    assert changed.stderr.strip().count("\n") == 0 and "with --tasks 3 (1 task(s) done)" in changed.stderr
    assert not (out / "meta.json").exists()

    rerun = cli(*args, "--tasks", 3, "--out", out)
    # datatrove's completion marker: task 0 did not run again (its log untouched), tasks 1 and 2 did
    assert (out / ".prepare-logs" / "logs" / "task_00000.log").stat().st_mtime_ns == log0
    assert "task 1/3: 1 unit(s)" in (out / ".prepare-logs" / "logs" / "task_00001.log").read_text()
    merged = (out / "train_000000.npy").stat()  # task 0's first shard, hard-linked into place, not rewritten
    assert (merged.st_ino, merged.st_mtime_ns) == (task0.st_ino, task0.st_mtime_ns)
    assert shard_bytes(out) == shard_bytes(tmp_path / "ref")
    assert not (out / ".partial").exists()


def test_missing_empty_or_corrupt_task_output_is_refused_then_redone(corpus, tmp_path, monkeypatch, run_cli):
    opts = dict(shard_tokens=400, val_fraction=0.0)
    ref = tmp_path / "ref"
    executors.prepare_with_executor([corpus], ref, executor="local", tasks=3, workers=1, command=["t"], **opts)
    plans = []
    monkeypatch.setattr(executors, "merge", plans.append)  # the tasks run, the merge waits for the test
    out = tmp_path / "out"
    executors.prepare_with_executor([corpus], out, executor="local", tasks=3, workers=1, command=["t"], **opts)
    monkeypatch.undo()
    plan, = plans
    task1 = out / ".partial" / "tasks" / "00001"
    marker1 = out / ".prepare-logs" / "completions" / "00001"

    shard = task1 / "train_000000.npy"
    os.truncate(shard, shard.stat().st_size - 5)
    with pytest.raises(ScalegptError, match=r"task 1's output is corrupt: .*train_000000.npy.*delete .*00001"):
        executors.merge(plan)
    assert not (out / "meta.json").exists()

    (task1 / "task.json").write_text("")
    with pytest.raises(ScalegptError, match=r"00001: task 1's output is missing or corrupt"):
        executors.merge(plan)
    (task1 / "task.json").unlink()
    with pytest.raises(ScalegptError, match=r"task 1's output is missing or corrupt"):
        executors.merge(plan)
    marker1.unlink()
    with pytest.raises(ScalegptError, match=r"task\(s\) 1 of 3 did not complete"):
        executors.merge(plan)
    assert not (out / "meta.json").exists() and not list(out.glob("*.npy"))

    # Rerunning the command redoes task 1 only, and the dataset is the uninterrupted one.
    executors.prepare_with_executor([corpus], out, executor="local", tasks=3, workers=1, command=["t"], **opts)
    assert shard_bytes(out) == shard_bytes(ref)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ray_address_that_does_not_answer_is_one_line(run_cli, corpus, tmp_path):
    pytest.importorskip("ray")
    rc, _, err = run_cli("prepare", "--input", corpus, "--out", tmp_path / "o", "--executor", "ray",
                         "--ray-address", f"127.0.0.1:{_free_port()}")
    assert rc == 2 and err.strip().count("\n") == 0 and "no Ray cluster answers there" in err
    assert not (tmp_path / "o").exists()


def test_ray_executor_on_a_local_cluster_gives_the_local_bytes(corpus, tmp_path):
    pytest.importorskip("ray")
    common = ["prepare", "--input", corpus, "--shard-tokens", 400, "--tasks", 4, "--quiet"]
    cli(*common, "--out", tmp_path / "local", "--executor", "local", "--workers", 2)
    cli(*common, "--out", tmp_path / "ray", "--executor", "ray", "--workers", 2)  # ray.init: 2 CPUs, 127.0.0.1
    assert shard_bytes(tmp_path / "ray") == shard_bytes(tmp_path / "local")
    assert json.loads((tmp_path / "ray" / "meta.json").read_text())["executor"] == "ray"


# ------------------------------------------------------------------------------------------------------------ SLURM


@pytest.fixture
def slurm_cluster(tmp_path_factory):
    """A real single-node SLURM (Debian's slurm-wlm: munged + slurmctld + slurmd on 127.0.0.1, own ports and state
    directory); yields the environment that points sbatch at it. Needs root and the slurm-wlm package (.ci/run)."""
    if not shutil.which("slurmctld") or not shutil.which("slurmd") or not shutil.which("munged"):
        pytest.skip("needs Debian's slurm-wlm (apt-get install slurm-wlm; .ci/run installs it)")
    if os.geteuid() != 0:
        pytest.skip("a local SLURM needs root to run slurmd")
    d = tmp_path_factory.mktemp("slurm")
    started = []
    if subprocess.run(["pgrep", "-x", "munged"], capture_output=True).returncode != 0:
        Path("/run/munge").mkdir(exist_ok=True)
        shutil.chown("/run/munge", "munge", "munge")
        subprocess.run(["munged", "--force"], check=True)
        started.append(int(Path("/run/munge/munged.pid").read_text()))
    host = socket.gethostname().split(".")[0]
    port = _free_port()
    conf = d / "slurm.conf"
    conf.write_text(f"""ClusterName=scalegpt-test
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={port}
SlurmdPort={_free_port()}
AuthType=auth/munge
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmctldLogFile={d}/slurmctld.log
SlurmdLogFile={d}/slurmd.log
SlurmUser=root
SlurmdUser=root
ReturnToService=2
MpiDefault=none
NodeName={host} NodeAddr=127.0.0.1 CPUs=2 RealMemory=8000 State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
""")
    env = {**os.environ, "SLURM_CONF": str(conf),
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    subprocess.run(["slurmctld", "-i"], env=env, check=True)
    subprocess.run(["slurmd"], env=env, check=True)
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            info = subprocess.run(["sinfo", "-h", "-o", "%T"], env=env, capture_output=True, text=True)
            if info.stdout.strip() == "idle":
                break
            time.sleep(0.5)
        else:
            pytest.fail(f"SLURM did not come up in 60 s: {info.stdout} {info.stderr}")
        yield env
    finally:
        subprocess.run(["scancel", "--user", "root"], env=env, capture_output=True)
        deadline = time.time() + 30
        while subprocess.run(["squeue", "-h"], env=env, capture_output=True, text=True).stdout.strip() and \
                time.time() < deadline:
            time.sleep(0.5)
        for pidfile in ("slurmd.pid", "slurmctld.pid"):
            if (d / pidfile).exists():
                os.kill(int((d / pidfile).read_text()), signal.SIGTERM)
        for pid in started:
            os.kill(pid, signal.SIGTERM)


def test_slurm_executor_on_a_real_single_node_cluster_gives_the_local_bytes(corpus, tmp_path, slurm_cluster):
    common = ["prepare", "--input", corpus, "--shard-tokens", 400, "--tasks", 3, "--quiet"]
    cli(*common, "--out", tmp_path / "local", "--executor", "local", "--workers", 2)
    out = tmp_path / "slurm"
    done = subprocess.run([sys.executable, "-m", "scalegpt", *map(str, common), "--out", str(out), "--executor",
                           "slurm", "--workers", "2", "--slurm-partition", "debug", "--slurm-time", "00:10:00",
                           "--slurm-sbatch-args=--comment=scalegpt-test"],
                          capture_output=True, text=True, env=slurm_cluster, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "submitted the SLURM jobs" in done.stdout
    script = (out / ".prepare-logs" / "launch_script.slurm").read_text()
    for line in ("#SBATCH --partition=debug", "#SBATCH --time=00:10:00", "#SBATCH --cpus-per-task=1",
                 "#SBATCH --array=0-2%2", "#SBATCH --comment=scalegpt-test"):
        assert line in script
    deadline = time.time() + 180
    queue = "?"
    while queue and time.time() < deadline:  # the task array, the merge job and datatrove's stats job
        time.sleep(0.5)
        queue = subprocess.run(["squeue", "-h"], env=slurm_cluster, capture_output=True, text=True).stdout.strip()
    assert (out / "meta.json").exists(), f"no dataset after the jobs ended; queue: {queue}"
    assert shard_bytes(out) == shard_bytes(tmp_path / "local")
    assert json.loads((out / "meta.json").read_text())["executor"] == "slurm"


def test_bad_input_in_one_task_is_one_line_and_no_dataset(run_cli, corpus, tmp_path):
    with open(corpus / "b.jsonl", "a") as f:
        f.write("{not json\n")
    out = tmp_path / "o"
    rc, _, err = run_cli("prepare", "--input", corpus, "--out", out, "--executor", "local", "--tasks", 3, "--quiet")
    assert rc == 2 and err.strip().count("\n") == 0 and "b.jsonl:16: not valid JSON" in err
    assert not (out / "meta.json").exists() and not list(out.glob("*.npy"))
    assert "not valid JSON" in (out / ".prepare-logs" / "logs" / "task_00000.log").read_text()  # b.jsonl: unit 1
    rc, _, err = run_cli("prepare", "--input", corpus, "--out", out, "--executor", "local", "--tasks", 3)
    assert rc == 2 and "Traceback" not in err and err.strip().splitlines()[-1].endswith("(Expecting property name "
                                                                                         "enclosed in double quotes "
                                                                                         "at column 2)")
    rc, _, err = run_cli("prepare", "--input", corpus, "--out", out, "--tasks", 3)
    assert rc == 2 and "--tasks splits the work between the tasks of an --executor" in err
