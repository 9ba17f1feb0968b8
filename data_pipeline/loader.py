"""Resumable, rank- and worker-split streaming of a dataset's shards.

The global sample order is a function of (seed, global sample index) alone, whatever the batch size:
    epoch e visits the split's shards in the order permutation(seed, e), and the samples of shard s in the
    order permutation(seed, e, s); the concatenation is the epoch's sequence of all N samples, and the global
    sequence g is epoch 0, epoch 1, ... back to back (global index i is position i % N of epoch i // N).
A run that starts at global sample S (the checkpoint's `consumed_samples`; 0 for a fresh start) with global batch B
consumes g[S + t*B : S + (t+1)*B] at its t-th step. Within a step the B samples are laid out as
(accum, world, micro): rank r's a-th micro-batch of the run's step t is
    g[S + t*B + (a*W + r)*m : S + t*B + (a*W + r + 1)*m].
So every sample of a step goes to exactly one rank, and the position to restart from is the number of samples
consumed: a resumed run may change the global batch (Megatron-style batch-size ramp-up), the world size or the
accumulation and still read the same global sequence, with no sample repeated or skipped. Nothing is dropped at an
epoch's end: a batch may straddle two epochs.

Samples are read by seeking to their byte range, given by each shard's index file (<shard>.idx): a rank
reads only its own samples' bytes, and resuming at any sample costs nothing but the seek.
DataLoader workers take micro-batches round-robin (worker k yields micro-batches k, k+n, ...), the order in
which torch's DataLoader collects them, so the output order does not depend on the number of workers.

Unreadable samples (truncated or corrupt shards, or failing ShardReader's integrity checks) are left out of their micro-batch and reported with it
(`skipped_samples`: how many, `skip_error`: the first error); the stream never decides alone whether that is
acceptable. The run has one budget (`data.skip_budget`) for all ranks, workers and resumed runs: the trainer sums
the reports over ranks every step and checks them against a `SkipBudget`.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from .manifest import Manifest, ShardEntry, read_manifest
from .objectives import IGNORE
from .registry import ObjectiveError, ObjectiveSpec, get_objective, objective_names
from .sources import InputError
from .tarshard import sample_crc

MASKS = ("attention_mask", "global_attention_mask")
PAIR_MEMBERS = ("position_ids", "langs")
"""Per-token members of sentence-pair samples (tlm): padded with 0 (the attention mask covers the padding)."""
PARALLEL_METHOD = "parallel"
"""manifest packing.method of datasets written with --parallel: one sentence pair a sample, variable length."""
"""0/1 sample members (`--doc-boundaries`, `--global-tokens`): batched as long tensors, padded with 0."""


def objective_of(manifest: Manifest) -> ObjectiveSpec:
    """The registered spec of the manifest's objective; an unknown one is an InputError naming the manifest."""
    try:
        return get_objective(manifest.objective)
    except ObjectiveError as e:
        raise InputError(
            f"manifest.json objective: {e}; rebuild the dataset or register the objective"
        ) from None


class SampleCheck:
    """What every sample of a dataset must look like, from its manifest alone: which members, their lengths
    (seq_len, t5's target_len, bart's bounded growth), integer dtypes, and token ids inside the vocabulary (labels
    may also be -100). A sample that passes cannot crash the model with an out-of-range id or a wrong shape."""

    def __init__(self, manifest: Manifest) -> None:
        n, p = manifest.seq_len, manifest.objective_params
        self.seq_len = n
        self.vocab = int(manifest.tokenizer["vocab_size"])
        spec = objective_of(manifest)
        # member -> (shortest, longest) length; the objective bounds them (t5: targets of exactly target_len;
        # bart: never cut, zero-length spans and insertion noise lengthen the input, bounded)
        self.lengths: dict[str, tuple[int, int]] = {
            "input_ids": (n, spec.longest_input(n, p, int(manifest.packing.get("longest_input", 0))))
        }
        labels = spec.labels_length(n, p)
        if labels is not None:
            self.lengths["labels"] = labels
        if manifest.build.get("sentence_task"):
            self.lengths["token_type_ids"] = (n, n)
            self.lengths["sentence_label"] = (1, 1)
        if manifest.build.get("doc_boundaries"):
            self.lengths["attention_mask"] = (n, n)
        if manifest.build.get("global_tokens"):
            self.lengths["global_attention_mask"] = (n, n)
        self.tops: dict[str, int] = {}
        """Members bounded otherwise than by the vocabulary: value < top."""
        self.same_length = False
        """Every member has input_ids' length (variable-length samples)."""
        if manifest.packing.get("method") == PARALLEL_METHOD:
            # one sentence pair a sample (tlm): no packing, so any length from the shortest pair to seq_len;
            # positions restart at the second sentence, langs index the manifest's languages
            shortest = labels[0] if labels is not None else 1
            for key in ("input_ids", "labels", *PAIR_MEMBERS):
                self.lengths[key] = (shortest, n)
            self.tops = {"position_ids": n, "langs": len(manifest.languages)}
            self.same_length = True

    def problem(self, sample: dict[str, np.ndarray]) -> str:
        """What is wrong with `sample` ("" when nothing is)."""
        if set(sample) != set(self.lengths):
            return f"members {sorted(sample)}, expected {sorted(self.lengths)}"
        for key, (lo, hi) in self.lengths.items():
            a = sample[key]
            if a.dtype.kind not in "iu" or a.ndim != 1:
                return f"{key} is a {a.dtype} array of shape {a.shape}, expected 1-D integers"
            if not lo <= len(a) <= hi:
                want = str(lo) if lo == hi else f"{lo}..{hi}"
                return f"{key} has length {len(a)}, the manifest says {want} (seq_len {self.seq_len})"
            if self.same_length and len(a) != len(sample["input_ids"]):
                return f"{key} has length {len(a)}, input_ids {len(sample['input_ids'])}: they must be equal"
            top = 2 if key in ("token_type_ids", "sentence_label", *MASKS) else self.tops.get(key, self.vocab)
            ok = (a >= 0) & (a < top)
            if key == "labels":
                ok |= a == IGNORE
            if not ok.all():
                return f"{key} holds {int(a[~ok][0])}, outside [0, {top})"
        return ""


class ShardReader:
    """Random access to the samples of one split by (shard number, sample number in shard).

    Integrity is checked where the bytes are read, so its cost follows the samples a rank reads, not the size of
    the dataset: a shard's index is checked against the manifest's index_sha256 when it is first opened, each
    sample's bytes against the crc32 in the index (format version 2), and the decoded arrays against the
    manifest (SampleCheck). Any failure is an InputError naming the shard file and the sample.

    Memory and open files stay bounded however many shards an epoch touches: the indexes and file handles of the
    OPEN_SHARDS most recently read shards are kept (least recently used evicted, its file closed); a shard read
    again after eviction has its index read and checked again (a few KB per shard; samples of one shard are read
    together, so eviction is rare)."""

    OPEN_SHARDS = 8

    def __init__(self, directory: str | Path, manifest: Manifest, split: str) -> None:
        self.dir = Path(directory)
        self.shards: list[ShardEntry] = manifest.shards_of(split)
        if not self.shards:
            raise InputError(f"{self.dir / 'manifest.json'} lists no {split} shards; rebuild the dataset")
        self.counts = np.asarray([s.samples for s in self.shards], dtype=np.int64)
        self.columns = 3 if manifest.version >= 2 else 2  # version 1 indexes have no crc32 column
        self.check = SampleCheck(manifest)
        self._index: OrderedDict[int, np.ndarray] = OrderedDict()
        self._broken: dict[int, str] = {}
        self._files: OrderedDict[int, Any] = OrderedDict()
        self._open_limit = 0

    @property
    def open_limit(self) -> int:
        """Shards kept open: OPEN_SHARDS unless set (a mixture's stream gives each of its sources a share of a
        bounded total)."""
        return self._open_limit or self.OPEN_SHARDS

    @open_limit.setter
    def open_limit(self, n: int) -> None:
        self._open_limit = n

    def __len__(self) -> int:
        return int(self.counts.sum())

    def _offsets(self, shard: int) -> np.ndarray:
        if shard in self._broken:
            raise InputError(self._broken[shard])
        idx = self._index.get(shard)
        if idx is not None:
            self._index.move_to_end(shard)
            return idx
        entry = self.shards[shard]
        path = self.dir / entry.index
        try:
            raw = path.read_bytes()
            idx = np.load(io.BytesIO(raw), allow_pickle=False)
        except (OSError, ValueError) as e:
            self._broken[shard] = f"index {path} is missing or unreadable ({e}); rebuild the dataset"
            raise InputError(self._broken[shard]) from None
        if hashlib.sha256(raw).hexdigest() != entry.index_sha256:
            self._broken[shard] = (
                f"index {path}: its sha256 differs from the manifest's (damaged, or taken from another "
                "dataset); rebuild the dataset or restore the file"
            )
        elif idx.shape != (entry.samples, self.columns) or idx.dtype != np.int64:
            self._broken[shard] = (
                f"index {path} has shape {idx.shape}, the manifest says ({entry.samples}, {self.columns})"
            )
        if shard in self._broken:
            raise InputError(self._broken[shard])
        self._index[shard] = idx
        if len(self._index) > self.open_limit:
            self._index.popitem(last=False)
        return idx

    def read(self, shard: int, i: int) -> dict[str, np.ndarray]:
        row = self._offsets(shard)[i]
        start, end = int(row[0]), int(row[1])
        name = self.dir / self.shards[shard].name
        f = self._files.get(shard)
        if f is None:
            try:
                f = self._files[shard] = open(name, "rb")  # noqa: SIM115 - kept open across reads, closed on eviction
            except OSError as e:
                raise InputError(f"shard {name} cannot be opened ({e}); rebuild or restore it") from None
            if len(self._files) > self.open_limit:
                self._files.popitem(last=False)[1].close()
        else:
            self._files.move_to_end(shard)
        f.seek(start)
        raw = f.read(end - start)
        if len(raw) != end - start:
            raise InputError(f"shard {name} is truncated (sample {i}); rebuild it")
        if self.columns == 3 and sample_crc(raw) != int(row[2]):
            raise InputError(
                f"shard {name}, sample {i}: its bytes do not match the index's crc32 (damaged, or the shard was "
                f"replaced by another dataset's); `cloze verify {self.dir}` lists the damaged shards: rebuild or "
                "restore them"
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
        except (tarfile.TarError, ValueError, IndexError, EOFError) as e:
            raise InputError(f"shard {name} is corrupt at sample {i} ({e})") from None
        problem = self.check.problem(out)
        if problem:
            raise InputError(
                f"shard {name}, sample {i}: {problem}; the dataset does not match its manifest "
                f"({self.dir / 'manifest.json'}): rebuild or restore the shard, or the manifest if it was edited"
            )
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
    """Who reads what: the batch layout and where in the global sample sequence this run starts."""

    global_batch: int
    """Samples per optimizer step over all ranks (B)."""
    micro_batch: int
    """Samples per forward pass on one rank (m)."""
    world_size: int = 1
    """Data-parallel ranks (W)."""
    rank: int = 0
    """This rank."""
    start_sample: int = 0
    """Global index of the first sample this run reads: the samples consumed before it (a checkpoint's
    `consumed_samples`), whatever global batch they were consumed with."""
    seed: int = 0
    """Seed of the shard and sample permutations."""

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
        if self.start_sample < 0:
            raise ValueError(f"start sample {self.start_sample} is negative")


def micro_batch_indices(spec: StreamSpec, j: int) -> np.ndarray:
    """Global sample indices of this rank's j-th micro-batch, counted from the run's first step (spec.start_sample)."""
    step, a = divmod(j, spec.accum)
    first = (
        spec.start_sample + step * spec.global_batch + (a * spec.world_size + spec.rank) * spec.micro_batch
    )
    return np.arange(first, first + spec.micro_batch, dtype=np.int64)


class SkipBudgetExhausted(InputError):
    """More unreadable samples were skipped over the run than `data.skip_budget` allows."""


@dataclass
class SkipBudget:
    """One budget of unreadable samples for a whole run: every rank adds the step's total over all ranks and
    workers (the same number everywhere, after the all-reduce), so every rank stops at the same step. The count
    is saved with checkpoints and restored on resume."""

    budget: int
    """`data.skip_budget`: unreadable samples the run may skip in all."""
    skipped: int = 0
    """Samples skipped so far, over all ranks, workers and the runs this one resumes."""

    def add(self, count: int, where: str = "", error: str = "") -> None:
        """Count `count` more skipped samples; SkipBudgetExhausted once the total is above the budget."""
        self.skipped += int(count)
        if self.skipped > self.budget:
            first = f"; first unreadable sample here: {error}" if error else ""
            raise SkipBudgetExhausted(
                f"{self.skipped} unreadable samples skipped{' ' + where if where else ''}, more than "
                f"data.skip_budget={self.budget}{first}. Repair or rebuild the damaged shards (`cloze verify "
                "DATA_DIR` names them), or raise data.skip_budget"
            )


@dataclass
class Collator:
    """Stacks samples into a batch. Padded inputs get a padding mask (`attention_mask`: the samples' own when they
    carry one, `--doc-boundaries`; from the samples' lengths for sentence pairs, tlm; a `global_attention_mask` is
    carried through), labels are padded with -100, `position_ids` and `langs` with 0, and encoder-decoder samples
    (t5, bart) get decoder inputs = labels shifted right behind `decoder_start`."""

    pad_id: int = 0
    seq2seq: bool = False
    decoder_start: int = 0

    def __call__(self, samples: list[dict[str, np.ndarray]]) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for key in samples[0]:
            fill = IGNORE if key == "labels" else 0 if key in (*MASKS, *PAIR_MEMBERS) else self.pad_id
            width = max(len(s[key]) for s in samples)
            arr = np.full((len(samples), width), fill, dtype=np.int64)
            for i, s in enumerate(samples):
                arr[i, : len(s[key])] = s[key]
            out[key] = torch.from_numpy(arr)
        ids = out["input_ids"]
        if "attention_mask" not in out and "position_ids" in out:
            # variable-length samples (tlm) are padded here only: the mask follows their lengths (a random
            # replacement may be the <pad> id, XLM's random_(n_words), and must still be attended to)
            lengths = torch.tensor([len(s["input_ids"]) for s in samples])
            out["attention_mask"] = (torch.arange(ids.shape[1])[None, :] < lengths[:, None]).long()
        # padded inputs (bart, sentence pairs) get a padding mask, unless the samples carry theirs
        if "attention_mask" not in out and (ids == self.pad_id).any():
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
    start = objective_of(manifest).decoder_start  # T5: the decoder starts from pad; BART: from </s>
    st = manifest.special_tokens
    if start:
        return Collator(st["pad"], True, st[start])
    return Collator(st["pad"])


class DynamicMasking:
    """Corrupts `--objective tokens` samples on the fly, seeded by (seed, epoch, shard, offset): each epoch masks a
    sample anew, and a resumed run masks it exactly as the uninterrupted run did."""

    def __init__(
        self, directory: Path, manifest: Manifest, objective: str, options: dict[str, Any] | None = None
    ):
        from .objectives import Packed, build_objective
        from .tokenizer import Tokenizer, vocab_of

        try:
            dynamic = get_objective(objective).dynamic
        except ObjectiveError:
            dynamic = False
        if not dynamic:
            raise InputError(
                f"data.objective={objective!r} cannot mask on the fly; choose one of "
                + ", ".join(objective_names(lambda s: s.dynamic))
            )
        self.packed = Packed
        self.objective = build_objective(
            objective, vocab_of(Tokenizer(directory / manifest.tokenizer["file"])), manifest.seq_len, options
        )

        self.batch_level = bool(getattr(self.objective, "batch_level", False))
        """The objective masks a whole micro-batch at once (DistilBERT's distil_mlm): samples pass through
        __call__ unchanged and `mask_batch` corrupts the collated micro-batch."""

    def __call__(
        self,
        sample: dict[str, np.ndarray],
        seed: int,
        epoch: int,
        shard: int,
        offset: int,
        whole: bool = False,
    ):
        """`whole`: mask this sample on its own even under a batch-level objective (evaluation: its masks stay
        fixed whatever the batch layout)."""
        if self.batch_level and not whole:
            return sample
        rng = np.random.default_rng([seed, epoch, shard, offset, 0xD7])
        return {
            **sample,
            **self.objective(self.packed(sample["input_ids"]), rng),
        }  # keeps token types, pair labels

    def mask_batch(self, batch: dict[str, Any], seed: int, first_sample: int) -> dict[str, Any]:
        """A batch-level objective's corruption of the collated micro-batch whose first sample has global index
        `first_sample`, seeded by it (a resumed run masks the same micro-batch the same way); other objectives:
        unchanged."""
        if not self.batch_level or "input_ids" not in batch:
            return batch
        rng = np.random.default_rng([seed, first_sample, 0xB7])
        out = self.objective.mask_batch(batch["input_ids"].numpy(), rng)
        return {**batch, **{k: torch.from_numpy(v.astype(np.int64)) for k, v in out.items()}}


class StreamSource:
    """One dataset a TrainStream reads: its manifest, reader seed, collator and on-the-fly masking."""

    def __init__(
        self,
        directory: str | Path,
        split: str,
        objective: str = "",
        objective_options: dict[str, Any] | None = None,
        name: str = "",
        mixed: bool = False,
    ) -> None:
        """`mixed`: one dataset of a mixture, where data.objective masks the `tokens` datasets on the fly and leaves
        datasets masked when written (e.g. XLM's tlm pairs beside mlm streams) as they are."""
        self.dir = Path(directory)
        self.name = name or self.dir.name
        self.manifest = read_manifest(self.dir)
        self.collate = collator_for(self.manifest)
        self.dynamic: DynamicMasking | None = None
        if objective_of(self.manifest).clean:
            self.dynamic = DynamicMasking(self.dir, self.manifest, objective or "mlm", objective_options)
        elif objective and objective != self.manifest.objective and not mixed:
            raise InputError(
                f"data.objective={objective!r} but {self.dir} holds {self.manifest.objective!r} shards (masked when "
                "written); leave data.objective empty, or write `--objective tokens` shards to mask on the fly"
            )
        self.counts = np.asarray([s.samples for s in self.manifest.shards_of(split)], dtype=np.int64)
        self.num_samples = int(self.counts.sum())
        self.languages: LanguageIds | None = None
        """Set by `use_languages` for families with language embeddings (XLM)."""

    def use_languages(self, run_languages: list[str]) -> None:
        """Give every sample a `langs` member in the run's language ids (see LanguageIds)."""
        self.languages = LanguageIds(self.dir, self.manifest, run_languages)

    def finish(self, sample: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return sample if self.languages is None else self.languages(sample)


class LanguageIds:
    """For families with language embeddings (XLM): a tlm sample's per-token `langs` (indices into its manifest's
    `languages`) mapped to the run's ids (model.languages order); a monolingual dataset's samples get `langs`
    filled with its one language."""

    def __init__(self, directory: Path, manifest: Manifest, run_languages: list[str]) -> None:
        ours = list(manifest.languages)
        missing = [lang for lang in ours if lang not in run_languages]
        if not ours or missing:
            raise InputError(
                f"{directory}: the model's languages are {run_languages}, but the dataset records "
                f"{ours or 'no language'}; write it with `cloze shards --language LANG` (or add "
                f"{missing or 'its language'} to model.languages)"
            )
        self.table = np.asarray([run_languages.index(lang) for lang in ours], dtype=np.int64)

    def __call__(self, sample: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if "langs" in sample:
            return {**sample, "langs": self.table[sample["langs"]]}
        return {**sample, "langs": np.full(len(sample["input_ids"]), self.table[0], dtype=np.int64)}


class TrainStream(IterableDataset):
    """Endless stream of this rank's micro-batches, from global sample `spec.start_sample` on, in the global order.
    Each batch carries `skipped_samples` (unreadable samples left out of it, a 0-d tensor) and `skip_error`
    (the first one's error, or ""); the caller counts them against its budget. A micro-batch none of whose samples
    could be read holds only those two and `UNREADABLE_KEY` (the error to raise once the budget is checked).

    With a `mixture` (data_pipeline/mixture.py) the stream reads several datasets (`sources`; `directory` is the
    first): global sample i is sample `mixture.locate(i)` of one source's own sequence, each source in its own
    seeded order (seed `source_seed(seed, k)`); batches then also carry `mixture_counts` (samples per source)."""

    UNREADABLE_KEY = "unreadable_batch"
    COUNTS_KEY = "mixture_counts"

    def __init__(
        self,
        directory: str | Path,
        spec: StreamSpec,
        split: str = "train",
        objective: str = "",
        objective_options: dict[str, Any] | None = None,
        sources: list[StreamSource] | None = None,
        mixture: Any = None,
    ) -> None:
        super().__init__()
        self.sources = sources or [StreamSource(directory, split, objective, objective_options)]
        self.mixture = mixture
        first = self.sources[0]
        self.dir, self.manifest, self.collate = first.dir, first.manifest, first.collate
        self.dynamic = first.dynamic
        self.spec = spec
        self.split = split
        self.num_samples = first.num_samples
        for src in self.sources:
            if src.num_samples < (spec.global_batch if mixture is None else 1):
                raise InputError(
                    f"{src.dir}: the {split} split has {src.num_samples} samples, fewer than one global batch of "
                    f"{spec.global_batch}; lower trainer.global_batch_size or write more data"
                )

    def _seed(self, k: int) -> int:
        return self.spec.seed if self.mixture is None else source_seed(self.spec.seed, k)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        readers = [ShardReader(src.dir, src.manifest, self.split) for src in self.sources]
        if len(readers) > 1:  # open files stay bounded however many sources
            for r in readers:
                r.open_limit = max(2, ShardReader.OPEN_SHARDS * 2 // len(readers))
        orders: list[dict[int, EpochOrder]] = [{} for _ in self.sources]
        j = worker
        try:
            while True:
                samples = []
                skipped, first_error = 0, ""
                indices = micro_batch_indices(self.spec, j)
                per_source = np.zeros(len(self.sources), dtype=np.int64)
                for index in indices:
                    k, position = (0, int(index)) if self.mixture is None else self.mixture.locate(int(index))
                    src, seed = self.sources[k], self._seed(k)
                    per_source[k] += 1
                    epoch, position = divmod(position, src.num_samples)
                    cache = orders[k]
                    if epoch not in cache:
                        if len(cache) > 1:  # a micro-batch spans at most two epochs
                            del cache[min(cache)]
                        cache[epoch] = EpochOrder(src.counts, seed, epoch)
                    shard, offset = cache[epoch].locate(position)
                    try:
                        sample = readers[k].read(shard, offset)
                    except InputError as e:
                        skipped += 1
                        first_error = first_error or str(e)
                        continue
                    if src.dynamic is not None:
                        sample = src.dynamic(sample, seed, epoch, shard, offset)
                    samples.append((k, src.finish(sample)))
                batch: dict[str, Any] = {}
                if samples:
                    src = self.sources[samples[0][0]]
                    batch = dict(src.collate([s for _, s in samples]))
                    if src.dynamic is not None:
                        batch = src.dynamic.mask_batch(batch, self._seed(samples[0][0]), int(indices[0]))
                else:  # reported, not raised: an exception in a DataLoader worker reaches the user as its traceback
                    batch[self.UNREADABLE_KEY] = (
                        f"every sample of micro-batch {j} in {self.dir} is unreadable ({first_error}); no skip "
                        "budget covers a micro-batch with nothing to train on: repair or rebuild the shards"
                    )
                batch["skipped_samples"] = torch.tensor(skipped)
                batch["skip_error"] = first_error
                if self.mixture is not None:
                    batch[self.COUNTS_KEY] = torch.from_numpy(per_source)
                yield batch
                j += workers
        finally:
            for r in readers:
                r.close()


def source_seed(seed: int, k: int) -> int:
    """The sample-order seed of a mixture's k-th source: its own permutations, independent of the others'."""
    return int.from_bytes(hashlib.sha256(f"cloze-mixture:{seed}:{k}".encode()).digest()[:4], "little")


class EvalStream(IterableDataset):
    """The validation split in file order, whole when `batches` allows: rank r takes micro-batches r, r+W, ...

    Covers the first `batches` x W micro-batches of the split; when that is the whole split, the last ones are
    partial, so every sample is scored once (a held-out figure anyone can reproduce from the same shards). Every
    rank yields the same number of batches, as ZeRO-3's collective forward passes require: a rank with no samples
    left in the last round gets a batch marked `PADDING_KEY` (one real sample, to be run and not counted).
    With `--objective tokens` shards the masks are fixed (seed 0, epoch 0), the same on any world size.
    """

    PADDING_KEY = "eval_padding"
    """Batch key: 1 on a batch that only keeps the ranks in step (its statistics must be dropped)."""

    def __init__(
        self,
        directory: str | Path,
        micro_batch: int,
        world_size: int,
        rank: int,
        batches: int,
        objective: str = "",
        objective_options: dict[str, Any] | None = None,
        languages: list[str] | None = None,
    ) -> None:
        super().__init__()
        self.dir = Path(directory)
        self.manifest = read_manifest(self.dir)
        self.languages = LanguageIds(self.dir, self.manifest, languages) if languages else None
        """`languages`: the run's (model.languages of a language-embedding family): samples get `langs`."""
        self.micro_batch, self.world_size, self.rank = micro_batch, world_size, rank
        self.collate = collator_for(self.manifest)
        self.dynamic = (
            DynamicMasking(self.dir, self.manifest, objective or "mlm", objective_options)
            if objective_of(self.manifest).clean
            else None
        )
        self.total = sum(s.samples for s in self.manifest.shards_of("valid"))
        if self.total == 0:
            raise InputError(
                f"{self.dir}: the valid split has no samples; write the dataset with validation data"
            )
        if batches < 1:
            raise InputError(f"trainer.eval_batches={batches}: set at least 1 (micro-batches per rank)")
        per_round = micro_batch * world_size
        needed = -(-self.total // per_round)  # rounds that cover the whole split
        self.batches = min(batches, needed)
        self.samples = self.total if self.batches == needed else self.batches * per_round
        """How many validation samples one pass scores (all ranks together)."""

    @property
    def complete(self) -> bool:
        """Whether one pass scores the whole validation split."""
        return self.samples == self.total

    def __len__(self) -> int:
        return self.batches

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        reader = ShardReader(self.dir, self.manifest, "valid")
        order = EpochOrder(reader.counts, 0, 0, shuffle=False)
        try:
            for b in range(self.batches):
                first = (b * self.world_size + self.rank) * self.micro_batch
                positions = range(first, min(first + self.micro_batch, self.samples))
                padding = len(positions) == 0
                samples = []
                for p in positions if not padding else range(1):
                    shard, offset = order.locate(p)
                    sample = reader.read(shard, offset)
                    if self.dynamic is not None:  # fixed masks for evaluation: epoch 0, seed 0, per sample
                        sample = self.dynamic(sample, 0, 0, shard, offset, whole=True)
                    samples.append(sample if self.languages is None else self.languages(sample))
                batch = self.collate(samples)
                batch[self.PADDING_KEY] = torch.tensor(int(padding))
                yield batch
        finally:
            reader.close()


def train_loader(
    directory: str | Path,
    spec: StreamSpec,
    num_workers: int = 1,
    prefetch: int = 4,
    objective: str = "",
    objective_options: dict[str, Any] | None = None,
    sources: list[StreamSource] | None = None,
    mixture: Any = None,
) -> DataLoader:
    """This rank's training micro-batches (see TrainStream); skipped samples are reported, not budgeted here."""
    ds = TrainStream(directory, spec, "train", objective, objective_options, sources, mixture)
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
