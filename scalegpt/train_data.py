"""The data of a training run: its sources (one `data.dir`, or the `[[data.mix]]` datasets with their weights), the
training loader over them, and validation on each source's val split.

Validation with several sources evaluates each one's val split on the same token budget (`eval.tokens`) with
`scalegpt.evaluate.evaluate_loss`, and reports each source's loss and bits per byte, plus the mixture's: the
weighted means sum(w_k x loss_k) and sum(w_k x bpb_k) with the normalised weights, i.e. the expected figures of a
sequence drawn as training draws them.
"""
from __future__ import annotations

from dataclasses import dataclass

from scalegpt.config import Config, DataSection
from scalegpt.data import DataLoader, Dataset, eval_batches, open_dataset
from scalegpt.errors import ScalegptError
from scalegpt.mixture import MixtureLoader, check_same_tokenizers, source_names


@dataclass
class Source:
    name: str
    dir: str
    weight: float  # normalised: the weights of a run sum to 1
    train: Dataset
    val: Dataset | None = None


class RunData:
    """Opens the sources of `config.data` and builds the loader; `say` prints a line (rank 0 only)."""

    def __init__(self, config: Config, seq_len: int, rank: int, world_size: int, device, say=print):
        c = config.data
        if not c.dir and not c.mix:
            raise ScalegptError("data.dir is not set: pass --data.dir DIR (a directory written by `scalegpt prepare`),"
                                " or list several datasets as [[data.mix]] tables")
        dirs, weights = ([c.dir], [1.0]) if c.dir else ([m.dir for m in c.mix], [m.weight for m in c.mix])
        total = sum(weights)
        datasets = [open_dataset(d, split=c.train_split) for d in dirs]
        check_same_tokenizers(datasets, dirs)
        self.sources = [Source(name, d, w / total, ds) for name, d, w, ds in
                        zip(source_names(dirs), dirs, weights, datasets)]
        self.is_mixture = bool(c.mix)
        self.tokenizer_spec = datasets[0].tokenizer_spec
        self.description = c.dir or " + ".join(f"{s.dir} ({s.weight:.3g})" for s in self.sources)
        self.say = say
        self._seq_len, self._rank, self._world, self._device = seq_len, rank, world_size, device
        self._last_epochs: list[int] | None = None

    def make_loader(self, config: Config, global_batch_size: int):
        c, t = config.data, config.train
        common = dict(seq_len=self._seq_len, global_batch_size=global_batch_size,
                      micro_batch_size=t.micro_batch_size, rank=self._rank, world_size=self._world, seed=t.seed,
                      shuffle=c.shuffle, device=self._device, align=c.align)
        if self.is_mixture:
            self.loader = MixtureLoader([s.train for s in self.sources], [s.weight for s in self.sources],
                                        names=[s.name for s in self.sources], **common)
            packings = [(s.name, src.packing) for s, src in zip(self.sources, self.loader.sources)]
        else:
            self.loader = DataLoader(self.sources[0].train, **common)
            packings = [(self.sources[0].name, self.loader.packing)]
        for name, packing in packings:
            if packing is not None:
                self.say(f"data.align bos: {name}: {packing.describe()}")
        self._last_epochs = self.epochs()
        return self.loader

    def open_validation(self, config: Config) -> bool:
        """Open each source's val split; False (and a line saying so) when there is none."""
        c = config.data
        for s in self.sources:
            splits = s.train.meta.get("splits", {})
            if splits.get(c.val_split, {}).get("num_tokens", 0) > 0:
                s.val = open_dataset(s.dir, split=c.val_split)
            elif c.val_split not in splits and c.val_split != DataSection.val_split:  # a typo, not a choice
                raise ScalegptError(f"data.val_split: {s.dir} has no split '{c.val_split}' (has {', '.join(splits)})")
        missing = [s.dir for s in self.sources if s.val is None]
        if missing:
            if len(missing) < len(self.sources):  # a mixture figure over part of it would be misleading
                raise ScalegptError(f"data.mix: {', '.join(missing)} has no '{c.val_split}' split but the other "
                                    f"sources have one; prepare every source with a validation split")
            self.say(f"no '{c.val_split}' split in {self.description}: validation loss is off")
            return False
        return True

    # ------------------------------------------------------------------------------------------ epochs

    def epochs(self) -> list[int]:
        loader = getattr(self, "loader", None)
        if loader is None:
            return []
        return loader.epochs if self.is_mixture else [loader.epoch]

    def new_epochs(self) -> list[tuple[str, int]]:
        """(source name, its epoch) for each source that wrapped around since the last call."""
        now = self.epochs()
        changed = [(s.name, e) for s, e, before in zip(self.sources, now, self._last_epochs or now) if e != before]
        self._last_epochs = now
        return changed

    # ------------------------------------------------------------------------------------------ validation

    def validate(self, model, batch_size: int, max_tokens: int, autocast, byte_lengths) -> dict:
        """{"loss", "perplexity", "bpb", "tokens", "bytes"} of the whole (one source: its own result; a mixture: the
        weighted means, tokens and bytes summed), plus "sources": {name: the same per source} for a mixture."""
        from scalegpt.evaluate import evaluate_loss

        results = {}
        for s in self.sources:
            batches = eval_batches(s.val, batch_size=batch_size, seq_len=self._seq_len, max_tokens=max_tokens,
                                   rank=self._rank, world_size=self._world, device=self._device)
            results[s.name] = evaluate_loss(model, batches, self._device, autocast=autocast, byte_lengths=byte_lengths)
        if not self.is_mixture:
            return next(iter(results.values()))
        import math

        overall = {key: sum(s.weight * results[s.name][key] for s in self.sources) for key in ("loss", "bpb")}
        overall["perplexity"] = math.exp(min(overall["loss"], 700.0))
        for key in ("tokens", "bytes"):
            overall[key] = sum(r[key] for r in results.values())
        overall["sources"] = results
        return overall

    def log_validation(self, step: int, result: dict, run_log, tokens_seen: int) -> None:
        """Console lines, log.txt (`{step} val {loss}`, and `{step} val:NAME {loss}` per source) and one metrics
        record (kind "val"; a mixture's adds "sources": {name: figures} and "epochs": {name: epoch})."""
        self.say(f"step {step}: val loss {result['loss']:.4f} (perplexity {result['perplexity']:.2f}, "
                 f"bpb {result['bpb']:.4f}, {result['tokens']:,} tokens"
                 + (", mixture-weighted)" if "sources" in result else ")"))
        per_source = result.get("sources", {})
        for name, r in per_source.items():
            self.say(f"step {step}:   {name}: val loss {r['loss']:.4f}, bpb {r['bpb']:.4f} ({r['tokens']:,} tokens)")
        if run_log is None:
            return
        run_log.line(step, "val", result["loss"])
        for name, r in per_source.items():
            run_log.line(step, f"val:{name}", r["loss"])
        extra = {}
        if per_source:
            extra["sources"] = {name: {k: r[k] for k in ("loss", "perplexity", "bpb", "tokens", "bytes")}
                                for name, r in per_source.items()}
            extra["epochs"] = dict(zip((s.name for s in self.sources), self.epochs()))
        run_log.record(step, "val", loss=result["loss"], perplexity=result["perplexity"], bpb=result["bpb"],
                       tokens=result["tokens"], bytes=result["bytes"], tokens_seen=tokens_seen, **extra)

    def log_epochs(self, step: int, run_log) -> None:
        """A line (and a metrics record of kind "epoch") for each source that wrapped around in the last step."""
        for name, epoch in self.new_epochs():
            self.say(f"step {step}: data source {name} ran out and wrapped around: epoch {epoch + 1} of it begins")
            if run_log is not None:
                run_log.record(step, "epoch", source=name, epoch=epoch)
