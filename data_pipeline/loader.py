"""Resumable, rank- and worker-split streaming of a dataset's shards.

The global sample order is a function of (seed, epoch, global sample index) alone:
    epoch e visits the split's shards in the order permutation(seed, e), and the samples of shard s in the
    order permutation(seed, e, s); the concatenation is the epoch's sequence g[0..N).
Step t (global batch B) consumes g[t*B : (t+1)*B] (epoch e = t // (N // B); a partial last batch is dropped).
Within a step the B samples are laid out as (accum, world, micro): rank r's a-th micro-batch of step t is
    g[t*B + (a*W + r)*m : t*B + (a*W + r + 1)*m].
So every sample of a step goes to exactly one rank, the position to restart from is the step number alone, and
with B fixed a different world size (with matching accumulation) continues the same global sequence.

Samples are read by seeking to their byte range, given by each shard's index file (<shard>.idx): a rank
reads only its own samples' bytes, and resuming at any step costs nothing but the seek.
DataLoader workers take micro-batches round-robin (worker k yields micro-batches k, k+n, ...), the order in
which torch's DataLoader collects them, so the output order does not depend on the number of workers.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from .manifest import Manifest, ShardEntry, read_manifest
from .objectives import IGNORE
from .sources import InputError


class ShardReader:
    """Random access to the samples of one split by (shard number, sample number in shard)."""

    def __init__(self, directory: str | Path, manifest: Manifest, split: str) -> None:
        self.dir = Path(directory)
        self.shards: list[ShardEntry] = manifest.shards_of(split)
        if not self.shards:
            raise InputError(f"{self.dir / 'manifest.json'} lists no {split} shards; rebuild the dataset")
        self.counts = np.asarray([s.samples for s in self.shards], dtype=np.int64)
        self._index: dict[int, np.ndarray] = {}
        self._files: dict[int, Any] = {}

    def __len__(self) -> int:
        return int(self.counts.sum())

    def _offsets(self, shard: int) -> np.ndarray:
        if shard not in self._index:
            entry = self.shards[shard]
            path = self.dir / entry.index
            try:
                idx = np.load(path)
            except (OSError, ValueError) as e:
                raise InputError(
                    f"index {path} is missing or unreadable ({e}); rebuild the dataset"
                ) from None
            if idx.shape != (entry.samples, 2):
                raise InputError(f"index {path} has shape {idx.shape}, manifest says {entry.samples} samples")
            self._index[shard] = idx
        return self._index[shard]

    def read(self, shard: int, i: int) -> dict[str, np.ndarray]:
        start, end = self._offsets(shard)[i]
        f = self._files.get(shard)
        if f is None:
            path = self.dir / self.shards[shard].name
            try:
                f = self._files[shard] = open(path, "rb")  # noqa: SIM115 - kept open across reads, closed in close()
            except OSError as e:
                raise InputError(f"shard {path} cannot be opened ({e}); rebuild or restore it") from None
        f.seek(int(start))
        raw = f.read(int(end - start))
        if len(raw) != end - start:
            raise InputError(
                f"shard {self.dir / self.shards[shard].name} is truncated (sample {i}); rebuild it"
            )
        out: dict[str, np.ndarray] = {}
        try:
            with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:
                for member in tar:
                    data = tar.extractfile(member)
                    if data is None:
                        continue
                    field = member.name.split(".", 1)[1].removesuffix(".npy")
                    out[field] = np.load(io.BytesIO(data.read()), allow_pickle=False)
        except (tarfile.TarError, ValueError, IndexError) as e:
            raise InputError(
                f"shard {self.dir / self.shards[shard].name} is corrupt at sample {i} ({e})"
            ) from None
        return out

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()


class EpochOrder:
    """Maps a position in an epoch to (shard, sample in shard) for the seeded order described above."""

    def __init__(self, counts: np.ndarray, seed: int, epoch: int, shuffle: bool = True) -> None:
        self.seed, self.epoch, self.shuffle = seed, epoch, shuffle
        n = len(counts)
        self.shard_order = (
            np.random.default_rng([seed, epoch, 0x5A4D]).permutation(n) if shuffle else np.arange(n)
        )
        self.ends = np.cumsum(counts[self.shard_order])
        self._perm: dict[int, np.ndarray] = {}
        self.counts = counts

    def locate(self, position: int) -> tuple[int, int]:
        k = int(np.searchsorted(self.ends, position, side="right"))
        shard = int(self.shard_order[k])
        offset = position - (int(self.ends[k - 1]) if k else 0)
        if not self.shuffle:
            return shard, offset
        perm = self._perm.get(shard)
        if perm is None:
            if len(self._perm) > 4:
                self._perm.clear()
            perm = self._perm[shard] = np.random.default_rng([self.seed, self.epoch, shard]).permutation(
                int(self.counts[shard])
            )
        return shard, int(perm[offset])


@dataclass
class StreamSpec:
    """Who reads what: the batch layout and the starting step."""

    global_batch: int
    micro_batch: int
    world_size: int = 1
    rank: int = 0
    start_step: int = 0
    seed: int = 0

    @property
    def accum(self) -> int:
        return self.global_batch // (self.micro_batch * self.world_size)

    def __post_init__(self) -> None:
        if self.micro_batch * self.world_size * self.accum != self.global_batch:
            raise ValueError(
                f"global batch {self.global_batch} != micro {self.micro_batch} x world {self.world_size} x accum"
            )
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} outside world size {self.world_size}")


def micro_batch_positions(spec: StreamSpec, j: int, steps_per_epoch: int) -> tuple[int, np.ndarray]:
    """(epoch, positions in that epoch) of this rank's j-th micro-batch counted from step 0."""
    step, a = divmod(j, spec.accum)
    epoch, step_in_epoch = divmod(step, steps_per_epoch)
    first = step_in_epoch * spec.global_batch + (a * spec.world_size + spec.rank) * spec.micro_batch
    return epoch, np.arange(first, first + spec.micro_batch)


@dataclass
class Collator:
    """Stacks samples into a batch. Encoder-decoder samples (t5, bart) get a padding mask, labels padded with
    -100, and decoder inputs = labels shifted right behind `decoder_start`."""

    pad_id: int = 0
    seq2seq: bool = False
    decoder_start: int = 0

    def __call__(self, samples: list[dict[str, np.ndarray]]) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for key in samples[0]:
            fill = IGNORE if key == "labels" else self.pad_id
            width = max(len(s[key]) for s in samples)
            arr = np.full((len(samples), width), fill, dtype=np.int64)
            for i, s in enumerate(samples):
                arr[i, : len(s[key])] = s[key]
            out[key] = torch.from_numpy(arr)
        ids = out["input_ids"]
        if (ids == self.pad_id).any():  # padded inputs (bart, sentence pairs): a padding mask
            out["attention_mask"] = (ids != self.pad_id).long()
        if "sentence_label" in out:
            out["sentence_label"] = out["sentence_label"].reshape(-1)
        if self.seq2seq:
            labels = out["labels"]
            dec = torch.full_like(labels, self.pad_id)
            dec[:, 0] = self.decoder_start
            dec[:, 1:] = labels[:, :-1].masked_fill(labels[:, :-1] == IGNORE, self.pad_id)
            out["decoder_input_ids"] = dec
        return out


def collator_for(manifest: Manifest) -> Collator:
    kind = manifest.packing.get("kind", "encoder")
    st = manifest.special_tokens
    if kind == "raw":  # T5: the decoder starts from pad
        return Collator(st["pad"], True, st["pad"])
    if kind == "bart":  # BART: the decoder starts from </s>
        return Collator(st["pad"], True, st["eos"])
    return Collator(st["pad"])


def collate(samples: list[dict[str, np.ndarray]]) -> dict[str, torch.Tensor]:
    return Collator()(samples)


class DynamicMasking:
    """Corrupts `--objective tokens` samples on the fly, seeded by (seed, epoch, shard, offset): each epoch masks a
    sample anew, and a resumed run masks it exactly as the uninterrupted run did."""

    def __init__(
        self, directory: Path, manifest: Manifest, objective: str, options: dict[str, Any] | None = None
    ):
        from .objectives import DYNAMIC, Packed, build_objective
        from .tokenizer import Tokenizer, vocab_of

        if objective not in DYNAMIC:
            raise InputError(
                f"data.objective={objective!r} cannot mask on the fly; choose one of {', '.join(DYNAMIC)}"
            )
        self.packed = Packed
        self.objective = build_objective(
            objective, vocab_of(Tokenizer(directory / manifest.tokenizer["file"])), manifest.seq_len, options
        )

    def __call__(self, sample: dict[str, np.ndarray], seed: int, epoch: int, shard: int, offset: int):
        rng = np.random.default_rng([seed, epoch, shard, offset, 0xD7])
        return {
            **sample,
            **self.objective(self.packed(sample["input_ids"]), rng),
        }  # keeps token types, pair labels


class TrainStream(IterableDataset):
    """Endless stream of this rank's micro-batches, from `spec.start_step` on, in the global order."""

    def __init__(
        self,
        directory: str | Path,
        spec: StreamSpec,
        split: str = "train",
        objective: str = "",
        objective_options: dict[str, Any] | None = None,
        skip_budget: int = 0,
    ) -> None:
        super().__init__()
        self.dir = Path(directory)
        self.manifest = read_manifest(self.dir)
        self.spec = spec
        self.split = split
        self.collate = collator_for(self.manifest)
        self.skip_budget = skip_budget
        self.dynamic: DynamicMasking | None = None
        if self.manifest.objective == "tokens":
            self.dynamic = DynamicMasking(self.dir, self.manifest, objective or "mlm", objective_options)
        elif objective and objective != self.manifest.objective:
            raise InputError(
                f"data.objective={objective!r} but {self.dir} holds {self.manifest.objective!r} shards (masked when "
                "written); leave data.objective empty, or write `--objective tokens` shards to mask on the fly"
            )
        counts = np.asarray([s.samples for s in self.manifest.shards_of(split)], dtype=np.int64)
        self.num_samples = int(counts.sum())
        self.steps_per_epoch = self.num_samples // spec.global_batch
        if self.steps_per_epoch == 0:
            raise InputError(
                f"{self.dir}: the {split} split has {self.num_samples} samples, fewer than one global batch of "
                f"{spec.global_batch}; lower trainer.global_batch_size or write more data"
            )

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        reader = ShardReader(self.dir, self.manifest, self.split)
        orders: dict[int, EpochOrder] = {}
        j = self.spec.start_step * self.spec.accum + worker
        skipped = 0  # this worker's; each worker may skip up to the budget divided among the workers
        budget = self.skip_budget // workers + (worker < self.skip_budget % workers)
        try:
            while True:
                epoch, positions = micro_batch_positions(self.spec, j, self.steps_per_epoch)
                if epoch not in orders:
                    orders.clear()
                    orders[epoch] = EpochOrder(reader.counts, self.spec.seed, epoch)
                order = orders[epoch]
                samples = []
                for p in positions:
                    shard, offset = order.locate(int(p))
                    try:
                        sample = reader.read(shard, offset)
                    except InputError as e:
                        skipped += 1
                        if skipped > budget:
                            raise InputError(
                                f"{e} (skip budget of {self.skip_budget} exhausted: data.skip_budget)"
                            ) from None
                        continue
                    if self.dynamic is not None:
                        sample = self.dynamic(sample, self.spec.seed, epoch, shard, offset)
                    samples.append(sample)
                if not samples:
                    raise InputError(f"every sample of micro-batch {j} in {self.dir} is unreadable")
                batch = self.collate(samples)
                batch["skipped_samples"] = torch.tensor([worker, skipped])  # this worker's running count
                yield batch
                j += workers
        finally:
            reader.close()


class EvalStream(IterableDataset):
    """A fixed slice of the validation split in file order: rank r takes micro-batches r, r+W, ...

    Every rank gets the same number of batches (`batches`, capped by the split's size), as ZeRO-3's collective
    forward passes require.
    """

    def __init__(
        self,
        directory: str | Path,
        micro_batch: int,
        world_size: int,
        rank: int,
        batches: int,
        objective: str = "",
        objective_options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.dir = Path(directory)
        self.manifest = read_manifest(self.dir)
        self.micro_batch, self.world_size, self.rank = micro_batch, world_size, rank
        self.collate = collator_for(self.manifest)
        self.dynamic = (
            DynamicMasking(self.dir, self.manifest, objective or "mlm", objective_options)
            if self.manifest.objective == "tokens"
            else None
        )
        total = sum(s.samples for s in self.manifest.shards_of("valid"))
        self.batches = min(batches, total // (micro_batch * world_size))
        if self.batches == 0:
            raise InputError(
                f"{self.dir}: the valid split has {total} samples, fewer than one micro-batch per rank "
                f"({micro_batch} x {world_size}); write more validation data or lower trainer.micro_batch_size"
            )

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        reader = ShardReader(self.dir, self.manifest, "valid")
        order = EpochOrder(reader.counts, 0, 0, shuffle=False)
        try:
            for b in range(self.batches):
                first = (b * self.world_size + self.rank) * self.micro_batch
                samples = []
                for p in range(first, first + self.micro_batch):
                    shard, offset = order.locate(p)
                    sample = reader.read(shard, offset)
                    if self.dynamic is not None:  # fixed masks for evaluation: epoch 0, seed 0
                        sample = self.dynamic(sample, 0, 0, shard, offset)
                    samples.append(sample)
                yield self.collate(samples)
        finally:
            reader.close()


def train_loader(
    directory: str | Path,
    spec: StreamSpec,
    num_workers: int = 1,
    prefetch: int = 4,
    objective: str = "",
    objective_options: dict[str, Any] | None = None,
    skip_budget: int = 0,
) -> DataLoader:
    ds = TrainStream(directory, spec, "train", objective, objective_options, skip_budget)
    kwargs: dict[str, Any] = (
        {"prefetch_factor": prefetch, "persistent_workers": False, "worker_init_fn": _ignore_stop_signals}
        if num_workers
        else {}
    )
    return DataLoader(ds, batch_size=None, num_workers=num_workers, **kwargs)


def _ignore_stop_signals(worker_id: int) -> None:
    """Workers ignore SIGUSR1 / SIGTERM: srun and SLURM deliver them to every process of a task, and the training
    process, not its readers, decides when to stop (it saves first; the workers end with it)."""
    import signal

    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
