"""The resolved run state: what the world and the dataset decide about a run, worked out once before it starts.

`prepare(cfg, world_size)` validates the loaded config against the world size and the dataset's manifest and returns
a `RunState` holding a *copy* of the config with the dataset's values filled in (vocabulary size, special ids, the
sentence head, the family's own adjustments, gradient accumulation). The loaded config is never changed: what the
user wrote stays what they wrote, and what the run derived is visible in one place (and in the run directory's
config.yaml, which records the resolved copy).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from data_pipeline.loader import objective_of
from data_pipeline.manifest import Manifest, read_manifest
from modeling.registry import get_family

from .config import ConfigError, RunConfig


@dataclass(frozen=True)
class RunState:
    """One run's resolved facts; built by `prepare`, read by the Trainer and its components."""

    cfg: RunConfig
    """The loaded config with what the dataset and world decide filled in (a copy; the loaded one is unchanged)."""
    manifest: Manifest
    """The dataset's manifest (data.path/manifest.json)."""
    world_size: int
    """Ranks in the run."""
    grad_accum: int
    """Micro-batches per optimizer step on each rank (cfg.trainer.grad_accum, derived when it was 0)."""

    @property
    def seq_len(self) -> int:
        return self.manifest.seq_len

    @property
    def tokens_per_step(self) -> int:
        """Input tokens per optimizer step over all ranks."""
        return self.cfg.trainer.global_batch_size * self.manifest.seq_len


def prepare(cfg: RunConfig, world_size: int) -> RunState:
    """Validate `cfg` against the world and the dataset; return the run state with the dataset's values filled in.
    `cfg` itself is not modified."""
    if not cfg.data.path:
        raise ConfigError("data.path is empty; set it to a directory written by `cloze shards`")
    manifest = read_manifest(cfg.data.path)
    grad_accum = cfg.resolve_batch(world_size)
    vocab = manifest.tokenizer["vocab_size"]
    if 0 < cfg.model.vocab_size < vocab:
        raise ConfigError(
            f"model.vocab_size={cfg.model.vocab_size} is smaller than the tokenizer's {vocab} "
            f"({cfg.data.path}/manifest.json); set model.vocab_size=0 to take it from the dataset"
        )
    spec = get_family(cfg.model.family)
    _check_positions(cfg, manifest, spec.learned_positions)
    if manifest.objective not in spec.objectives:
        raise ConfigError(
            f"model.family={cfg.model.family!r} trains on {', '.join(spec.objectives)} shards, but "
            f"{cfg.data.path} holds {manifest.objective!r} shards; write matching shards (cloze shards "
            "--objective ...) or change model.family"
        )
    resolved = copy.deepcopy(cfg)
    model = resolved.model
    model.vocab_size = model.vocab_size or vocab
    model.sentence_head = bool(manifest.build.get("sentence_task"))  # the data decides: pairs need the head
    model.pad_token_id = manifest.special_tokens["pad"]
    model.eos_token_id = manifest.special_tokens["eos"]
    model.bos_token_id = manifest.special_tokens.get("bos", model.bos_token_id)
    if spec.check_dataset is not None:  # e.g. DistilBERT's teacher must read the dataset's token ids
        spec.check_dataset(model, manifest.tokenizer.get("sha256", ""), cfg.data.path)
    if spec.configure is not None:
        spec.configure(model)  # e.g. RoBERTa's positions start after the pad id
    resolved.trainer.grad_accum = grad_accum
    return RunState(cfg=resolved, manifest=manifest, world_size=world_size, grad_accum=grad_accum)


def _check_positions(cfg: RunConfig, manifest: Manifest, learned_positions: bool) -> None:
    """The longest input a sample holds (BART's noise lengthens it past seq_len; the loader checks the same bound)
    must fit a model with learned positions."""
    longest = max(
        objective_of(manifest).longest_input(
            manifest.seq_len, manifest.objective_params, int(manifest.packing.get("longest_input", 0))
        ),
        int(manifest.objective_params.get("target_len", 0)),
    )
    if learned_positions and longest > cfg.model.max_position_embeddings:
        raise ConfigError(
            f"the dataset's sequences ({longest} tokens) exceed model.max_position_embeddings="
            f"{cfg.model.max_position_embeddings}; raise it"
        )
