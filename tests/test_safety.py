"""Untrusted and broken files, and disks that refuse writes: clear one-line errors, nothing executed, nothing lost."""
from __future__ import annotations

import errno
import os
import pickle
import subprocess
import uuid
from pathlib import Path

import pytest
import torch

from scalegpt import _fs
from scalegpt.checkpoint import model_dir
from scalegpt._fs import write_dir_atomically
from scalegpt.checkpoint import load_model_dir, save_model_dir
from scalegpt.errors import ScalegptError
from scalegpt.model import GPT, preset_config


def _tiny(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(preset_config("tiny", vocab_size=100))


def _same_weights(a: GPT, b: GPT) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


class _RunsCode:
    """Unpickling this calls os.system: the classic pickle exploit. It writes a marker file as its 'payload'."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def write_malicious_pickle(path: Path, marker: Path, payload_key: str = "optimizer") -> None:
    """A file that looks like a torch checkpoint (torch.save's zip format) but runs code when unpickled."""
    torch.save({"step": 10, payload_key: _RunsCode(marker)}, path)


def test_the_malicious_pickle_really_would_run_code(tmp_path):
    # Proves the exploit is live, so the refusal tests below mean something.
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    write_malicious_pickle(path, marker)
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_weights_only_load_refuses_the_malicious_pickle(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    write_malicious_pickle(path, marker)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)
    assert not marker.exists()


def test_garbage_safetensors_is_a_clear_error(tmp_path):
    d = tmp_path / "ckpt"
    save_model_dir(_tiny(), d)
    (d / "model.safetensors").write_bytes(b"\x00\x01 this is not a safetensors file " * 10)
    with pytest.raises(ScalegptError, match="model.safetensors: cannot read weights"):
        load_model_dir(d)


def test_truncated_safetensors_is_a_clear_error(tmp_path):
    d = tmp_path / "ckpt"
    save_model_dir(_tiny(), d)
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ScalegptError, match="cannot read weights"):
        load_model_dir(d)


def test_safetensors_with_a_pickle_inside_is_not_unpickled(tmp_path):
    # Someone renames a pickle to model.safetensors, hoping a loader falls back to torch.load.
    marker = tmp_path / "pwned"
    d = tmp_path / "ckpt"
    save_model_dir(_tiny(), d)
    write_malicious_pickle(d / "model.safetensors", marker)
    with pytest.raises(ScalegptError, match="cannot read weights"):
        load_model_dir(d)
    assert not marker.exists()


# ----------------------------------------------------------------------------------- disks that refuse writes


def _raise_on_save(monkeypatch, err: int):
    def refuse(*args, **kwargs):
        raise OSError(err, os.strerror(err))
    monkeypatch.setattr(model_dir, "write_model_files", refuse)


@pytest.mark.parametrize("err, words", [(errno.ENOSPC, "disk full"), (errno.EROFS, "read-only file system"),
                                        (errno.EACCES, "permission denied")])
def test_refused_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch, err, words):
    d = tmp_path / "run" / "checkpoints" / "step_000010"
    old = _tiny(0)
    save_model_dir(old, d)
    _raise_on_save(monkeypatch, err)
    with pytest.raises(ScalegptError) as e:
        save_model_dir(_tiny(1), d)  # overwrite in place: the hardest case for atomicity
    assert words in str(e.value) and "previous checkpoint is untouched" in str(e.value)
    assert "\n" not in str(e.value)
    assert _same_weights(load_model_dir(d)[0], old)
    assert sorted(p.name for p in d.parent.iterdir()) == ["step_000010"]  # no temporary left behind


def test_failed_rename_puts_the_previous_version_back(tmp_path, monkeypatch):
    d = tmp_path / "ckpt"
    old = _tiny(0)
    save_model_dir(old, d)
    real_replace = os.replace

    def replace(src, dst):
        if ".tmp-" in str(src):  # moving the old one aside works; moving the new one in fails
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        return real_replace(src, dst)

    monkeypatch.setattr(_fs.os, "replace", replace)
    with pytest.raises(ScalegptError, match="read-only"):
        save_model_dir(_tiny(1), d)
    monkeypatch.undo()
    assert _same_weights(load_model_dir(d)[0], old)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_read_only_directory_is_a_clear_error(tmp_path, monkeypatch):
    run = tmp_path / "run"
    first = run / "step_1"
    save_model_dir(_tiny(0), first)
    if os.geteuid() == 0:  # root writes through chmod 555, so make the kernel's answer up instead
        def mkdir(self, *a, **k):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        monkeypatch.setattr(Path, "mkdir", mkdir)
    else:
        run.chmod(0o555)
    try:
        with pytest.raises(ScalegptError, match="cannot write checkpoint .*step_2: permission denied"):
            save_model_dir(_tiny(1), run / "step_2")
    finally:
        run.chmod(0o755)
    monkeypatch.undo()
    assert load_model_dir(first)[0] is not None


def test_other_errors_pass_through_unchanged(tmp_path):
    def boom(tmp):
        raise ValueError("a bug, not a disk problem")
    with pytest.raises(ValueError, match="a bug"):
        write_dir_atomically(tmp_path / "x", boom)
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def small_mount(tmp_path):
    """Mount a real tmpfs (as root where allowed) so the kernel itself refuses the write; else skip."""
    mounts = []

    def mount(size: str, readonly: bool = False) -> Path:
        point = tmp_path / f"mnt-{uuid.uuid4().hex[:6]}"
        point.mkdir()
        opts = f"size={size}" + (",ro" if readonly else "")
        if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(point)],
                                               capture_output=True).returncode != 0:
            pytest.skip("needs permission to mount a tmpfs")
        mounts.append(point)
        return point

    yield mount
    for point in mounts:
        subprocess.run(["umount", str(point)], capture_output=True)


def test_real_full_disk_keeps_the_previous_checkpoint(small_mount):
    # 256 KiB holds one tiny-model checkpoint (~120 KiB) but not a second next to it.
    disk = small_mount("256k")
    old = _tiny(0)
    save_model_dir(old, disk / "step_1")
    with pytest.raises(ScalegptError, match="disk full"):
        save_model_dir(_tiny(1), disk / "step_2")
    assert _same_weights(load_model_dir(disk / "step_1")[0], old)
    assert sorted(p.name for p in disk.iterdir()) == ["step_1"]


def test_real_full_disk_during_torch_save_is_named(small_mount):
    # torch.save reports a full disk as "unexpected pos ..." with no errno: the free-space check names it.
    disk = small_mount("64k")
    with pytest.raises(ScalegptError, match="disk full"):
        write_dir_atomically(disk / "state", lambda tmp: torch.save({"x": torch.zeros(100_000)}, tmp / "s.pt"))
    assert list(disk.iterdir()) == []


def test_real_read_only_mount(small_mount):
    disk = small_mount("1m", readonly=True)
    with pytest.raises(ScalegptError, match="read-only file system"):
        save_model_dir(_tiny(), disk / "step_1")


# ------------------------------------------------------------------------------------ through the trainer


def _run_config(data_dir, steps: int):
    from scalegpt.config import config_from_dict

    return config_from_dict({
        "model": {"n_layer": 1, "n_head": 2, "n_embd": 16, "block_size": 16},
        "data": {"dir": str(data_dir)},
        "train": {"max_steps": steps, "global_batch_tokens": 2 * 16, "micro_batch_size": 2, "device": "cpu",
                  "precision": "fp32", "compile": "false"},
        "eval": {"interval": 0, "at_start": False, "samples": 0},
        "log": {"plot": False, "progress": "false"},
        "checkpoint": {"interval": 2, "keep_last": 0},
    })


@pytest.fixture(scope="module")
def char_data(tmp_path_factory, shakespeare_text):
    from scalegpt.prepare import prepare

    root = tmp_path_factory.mktemp("safety-data")
    (root / "corpus.txt").write_text(shakespeare_text[:20_000], encoding="utf-8")
    prepare([str(root / "corpus.txt")], out=root / "data", tokenizer="char", progress=False)
    return root / "data"


@pytest.fixture
def trained_run(char_data, tmp_path):
    from scalegpt.train import Trainer

    run = tmp_path / "run"
    Trainer(_run_config(char_data, 2), run, echo=lambda s: None).fit()
    return run


def test_resume_refuses_a_malicious_training_state(char_data, trained_run, tmp_path):
    from scalegpt.train import Trainer

    marker = tmp_path / "pwned"
    write_malicious_pickle(trained_run / "checkpoints" / "step_000002" / "train_state.pt", marker)
    with pytest.raises(ScalegptError, match=r"train_state.pt: refused to load .*plain data"):
        Trainer(_run_config(char_data, 4), trained_run, resume=True, echo=lambda s: None)
    assert not marker.exists()


def test_cli_resume_refuses_a_malicious_training_state(char_data, trained_run, tmp_path, run_cli):
    marker = tmp_path / "pwned"
    write_malicious_pickle(trained_run / "checkpoints" / "step_000002" / "train_state.pt", marker,
                           payload_key="loader")
    rc, out, err = run_cli("train", "--data.dir", char_data, "--out", trained_run, "--resume",
                           "--model.n_layer", "1", "--model.n_head", "2", "--model.n_embd", "16",
                           "--model.block_size", "16", "--train.global_batch_tokens", "32",
                           "--train.micro_batch_size", "2", "--train.max_steps", "4", "--train.device", "cpu",
                           "--eval.interval", "0", "--eval.at_start", "false", "--log.plot", "false")
    assert rc == 2
    last = err.strip().splitlines()[-1]
    assert last.startswith("scalegpt: error: ") and "refused to load" in last
    assert not marker.exists()


def test_resume_refuses_garbage_weights(char_data, trained_run):
    from scalegpt.train import Trainer

    (trained_run / "checkpoints" / "step_000002" / "model.safetensors").write_bytes(b"garbage" * 100)
    with pytest.raises(ScalegptError, match="model.safetensors"):
        Trainer(_run_config(char_data, 4), trained_run, resume=True, echo=lambda s: None)


def test_disk_full_while_training_keeps_the_last_checkpoint_resumable(char_data, tmp_path, monkeypatch):
    from scalegpt.train import Trainer

    run = tmp_path / "run"
    real_save = torch.save
    saves = []

    def full_on_second(obj, f, *a, **k):
        saves.append(f)
        if len(saves) >= 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(f))
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", full_on_second)
    trainer = Trainer(_run_config(char_data, 6), run, echo=lambda s: None)
    with pytest.raises(ScalegptError, match=r"cannot write checkpoint .*step_000004: disk full"):
        trainer.fit()
    monkeypatch.undo()
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == ["step_000002"]  # the failed one left no debris
    resumed = Trainer(_run_config(char_data, 6), run, resume=True, echo=lambda s: None)
    assert resumed.step == 2
    assert resumed.fit().step == 6


# ------------------------------------------------------------------------------------ corrupted data


def test_check_names_a_corrupted_shard(char_data, tmp_path, run_cli):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(char_data, data)
    rc, out, err = run_cli("check", data)
    assert rc == 0 and "checksums verified" in out
    shard = data / "train_000000.npy"
    raw = bytearray(shard.read_bytes())
    raw[-10] ^= 0xFF  # one flipped bit pattern in the token data: same length, same header, wrong content
    shard.write_bytes(bytes(raw))
    rc, out, err = run_cli("check", data)
    assert rc == 2
    assert "train_000000.npy" in err and "corrupted" in err and err.startswith("scalegpt: error:")
    assert "BAD" in out


def test_training_on_a_truncated_shard_is_refused(char_data, tmp_path):
    import shutil

    from scalegpt.train import Trainer

    data = tmp_path / "data"
    shutil.copytree(char_data, data)
    shard = data / "train_000000.npy"
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(ScalegptError, match="train_000000.npy"):
        Trainer(_run_config(data, 2), tmp_path / "run", echo=lambda s: None)


def test_leftovers_of_killed_writers_are_tidied_and_a_displaced_checkpoint_is_restored(tmp_path):
    """A SIGKILL mid-write leaves `.step_N.tmp-PID`; one between the two renames of a same-step rewrite leaves the
    previous version as `.step_N.old-PID` with no step_N. The next save removes the first and restores the second."""
    from scalegpt.model import GPT, preset_config
    from scalegpt.checkpoint.train_state import list_checkpoints, save_checkpoint

    model = GPT(preset_config("tiny", vocab_size=50))
    run = tmp_path / "run"
    save_checkpoint(run, 5, model, None, {"step": 5}, "")
    root = run / "checkpoints"
    os.replace(root / "step_000005", root / ".step_000005.old-4242")  # killed between the renames
    (root / ".step_000010.tmp-4242").mkdir()  # killed while writing
    (root / ".step_000010.tmp-4242" / "model.safetensors").write_bytes(b"half")
    save_checkpoint(run, 10, model, None, {"step": 10}, "", keep_last=2)
    assert [p.name for p in list_checkpoints(run)] == ["step_000005", "step_000010"]
    assert sorted(p.name for p in root.iterdir()) == ["step_000005", "step_000010"]
    save_checkpoint(run, 15, model, None, {"step": 15}, "", keep_last=2)  # pruning leaves no hidden remains
    assert sorted(p.name for p in root.iterdir()) == ["step_000010", "step_000015"]


# ------------------------------------------------------------------ issue 20.1: --overwrite replaces only our own output

def test_overwrite_replaces_what_scalegpt_wrote(run_cli, tmp_path, monkeypatch):
    """The legitimate use still works: a dataset, an export, a plot and a tokenizer of ours are replaced on request
    (an image on a re-run), while the same commands refuse a folder of the user's."""
    monkeypatch.chdir(tmp_path)
    text = tmp_path / "in.txt"
    text.write_text("To be, or not to be, that is the question.\n" * 200, encoding="utf-8")
    prep = ["prepare", "--input", text, "--tokenizer", "char", "--quiet", "--workers", "1", "--out", tmp_path / "d"]
    assert run_cli(*prep)[0] == 0
    rc, _, err = run_cli(*prep)
    assert rc == 2 and "already holds a prepared dataset (meta.json); pass --overwrite" in err
    first = (tmp_path / "d" / "meta.json").read_bytes()
    text.write_text("All the world's a stage, and all the men and women merely players.\n" * 200, encoding="utf-8")
    assert run_cli(*prep, "--overwrite")[0] == 0
    assert (tmp_path / "d" / "meta.json").read_bytes() != first

    spec = {"kind": "gpt2", "vocab_size": 50257, "eot_id": 50256}
    save_model_dir(GPT(preset_config("tiny", vocab_size=50257)), tmp_path / "ckpt", tokenizer_spec=spec)
    export = ["export", "--checkpoint", tmp_path / "ckpt", "--out", tmp_path / "hf"]
    assert run_cli(*export)[0] == 0 and (tmp_path / "hf" / "scalegpt_export.json").is_file()
    (tmp_path / "hf" / "stale.txt").write_text("left by an older export")
    assert run_cli(*export)[0] == 2
    assert run_cli(*export, "--overwrite")[0] == 0
    assert not (tmp_path / "hf" / "stale.txt").exists() and (tmp_path / "hf" / "model.safetensors").is_file()

    # a plain folder with an HF-looking config.json is not ours: never deleted, and the refusal says what it holds
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "config.json").write_text("{}")
    rc, _, err = run_cli("export", "--checkpoint", tmp_path / "ckpt", "--out", tmp_path / "theirs", "--overwrite")
    assert rc == 2 and "it holds config.json" in err and (tmp_path / "theirs" / "config.json").read_text() == "{}"


def test_outputs_guard_rules(tmp_path, monkeypatch):
    """scalegpt.outputs.check_output, the one function every writing command asks."""
    from scalegpt.outputs import check_output

    monkeypatch.chdir(tmp_path)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_text("x")
    for out, fragment in [("", "empty path"), (".", "current directory"), ("..", "parent of the current"),
                          ("in", "is the input"), ("in/sub", "lies inside the input"), (str(tmp_path), "current")]:
        with pytest.raises(ScalegptError, match=fragment):
            check_output(out, kind="dataset", inputs=["in"])
    with pytest.raises(ScalegptError, match="contains the input"):
        check_output(tmp_path / "in", kind="dataset", inputs=[tmp_path / "in" / "a.txt"])
    assert check_output("new", kind="run") == Path("new")  # a new path is always fine
    (tmp_path / "empty").mkdir()
    assert check_output("empty", kind="export") == Path("empty")  # and so is an empty directory
    (tmp_path / "pic.png").write_bytes(b"\x89PNG\r\n\x1a\n....")
    assert check_output("pic.png", kind="image") == Path("pic.png")  # an image is replaced by a re-plot
    with pytest.raises(ScalegptError, match="is not an image"):
        check_output("in/a.txt", kind="image")
