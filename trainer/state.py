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
from data_pipeline.mixture import MixturePlan, plan_mixture
from modeling import ModelConfig
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
    mixture: MixturePlan | None = None
    """The checked data.mixture (then `manifest` is its first dataset's)."""

    @property
    def data_path(self) -> str:
        """The dataset (data.path), or a mixture's first one: where the shared tokenizer is read from."""
        return self.mixture.paths[0] if self.mixture is not None else self.cfg.data.path

    @property
    def fingerprint(self) -> str:
        """What the run reads (saved with checkpoints): the dataset's fingerprint, or the mixture's."""
        return self.mixture.fingerprint() if self.mixture is not None else self.manifest.fingerprint()

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
    mixture = _plan_mixture(cfg)
    # a mixture's first dataset stands for all in what they share: tokenizer, sequence length, special ids
    path = mixture.paths[0] if mixture is not None else cfg.data.path
    if not path:
        raise ConfigError(
            "data.path is empty; set it to a directory written by `cloze shards` (or list datasets in "
            "data.mixture.sources)"
        )
    manifest = read_manifest(path)
    grad_accum = cfg.resolve_batch(world_size)
    vocab = manifest.tokenizer["vocab_size"]
    if 0 < cfg.model.vocab_size < vocab:
        raise ConfigError(
            f"model.vocab_size={cfg.model.vocab_size} is smaller than the tokenizer's {vocab} "
            f"({path}/manifest.json); set model.vocab_size=0 to take it from the dataset"
        )
    spec = get_family(cfg.model.family)
    _check_positions(cfg, manifest, spec.learned_positions)
    datasets = list(zip(mixture.paths, mixture.manifests, strict=True)) if mixture else [(path, manifest)]
    for where, m in datasets:
        if m.objective not in spec.objectives:
            raise ConfigError(
                f"model.family={cfg.model.family!r} trains on {', '.join(spec.objectives)} shards, but "
                f"{where} holds {m.objective!r} shards; write matching shards (cloze shards "
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
        spec.check_dataset(model, manifest.tokenizer.get("sha256", ""), path)
    model.unk_token_id = manifest.special_tokens.get("unk", model.unk_token_id)
    model.mask_token_id = manifest.special_tokens.get("mask", model.mask_token_id)
    if spec.languages:
        _resolve_languages(model, [(where, m) for where, m in datasets])
    if spec.configure is not None:
        spec.configure(model)  # e.g. RoBERTa's positions start after the pad id
    resolved.trainer.grad_accum = grad_accum
    return RunState(
        cfg=resolved, manifest=manifest, world_size=world_size, grad_accum=grad_accum, mixture=mixture
    )


def _resolve_languages(model: ModelConfig, datasets: list[tuple[str, Manifest]]) -> None:
    """A language-embedding family (XLM): every dataset must record its language(s) (`cloze shards --language`,
    or a tlm dataset's pairs); model.languages, when empty, becomes their sorted union (XLM's lang2id order),
    and when given must hold every one of them."""
    found: set[str] = set()
    for where, m in datasets:
        langs = list(m.languages)
        if not langs:
            raise ConfigError(
                f"model.family={model.family!r} embeds a language per token, but {where} records no language; "
                "write it with `cloze shards --language LANG` (monolingual) or as tlm pairs"
            )
        found.update(langs)
    if not model.languages:
        model.languages = sorted(found)
        return
    missing, absent = sorted(found - set(model.languages)), sorted(set(model.languages) - found)
    if missing:
        raise ConfigError(
            f"model.languages={model.languages} lacks {missing}, which the data holds; add them (or leave "
            "model.languages empty to take the data's)"
        )
    if absent:
        raise ConfigError(
            f"model.languages={model.languages} names {absent}, absent from the data (which holds "
            f"{sorted(found)}); add datasets in those languages or remove them from model.languages"
        )


def _plan_mixture(cfg: RunConfig) -> MixturePlan | None:
    mix = cfg.data.mixture
    if not mix.sources:
        return None
    if cfg.data.path:
        raise ConfigError(
            f"data.path={cfg.data.path!r} and data.mixture.sources are both set; give one dataset in data.path, or "
            "several in data.mixture.sources (and leave data.path empty)"
        )
    return plan_mixture(
        [(s.path, s.name, s.weight) for s in mix.sources],
        mix.alpha,
        mix.unit,
        [(st.step, st.alpha, dict(st.weights)) for st in mix.stages],
    )


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
