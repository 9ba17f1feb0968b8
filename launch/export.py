"""`cloze export RUN_DIR --out DIR`: a checkpoint of a run as Hugging Face transformers files, with its tokenizer.

The tokenizer comes from the run directory (`RUN_DIR/tokenizer/`, copied there by `cloze train`), else from the
dataset directory the run's config.yaml records. Export without a tokenizer is an error unless asked for
(`--no-tokenizer`): a model without its tokenizer cannot be used.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import yaml
from torch import nn

from data_pipeline.hf_tokenizer import RUN_TOKENIZER_DIR, read_meta, save_hf_tokenizer
from data_pipeline.manifest import MANIFEST, chmod_as_open
from data_pipeline.tokenizer import MODEL_FILE, SpecialIds
from modeling import build_model
from modeling.config import ModelConfig
from modeling.hf import ExportError, export_hf
from trainer import checkpoint as ckpt
from trainer.config import ConfigError, RunConfig, config_from_dict
from trainer.engine import consolidated_state_dict, verify_checkpoint


@dataclass
class RunTokenizer:
    """The sentencepiece model a run trained with and how its data framed text."""

    model: Path
    framing: str
    """The dataset's packing kind: encoder, raw (t5) or bart."""
    special: SpecialIds
    sentinel_ids: list[int]


def find_tokenizer(run: Path, cfg: RunConfig) -> RunTokenizer:
    """The run's own copy, else the recorded dataset's tokenizer; an error naming every place looked in."""
    own = run / RUN_TOKENIZER_DIR / MODEL_FILE
    if own.is_file():
        meta = read_meta(own)
        if meta.get("packing") and "special_tokens" in meta:
            return RunTokenizer(
                own, meta["packing"], SpecialIds(**meta["special_tokens"]), list(meta.get("sentinel_ids", []))
            )
    looked = [own]
    if cfg.data.path:
        data = Path(cfg.data.path)
        model, manifest = data / MODEL_FILE, data / MANIFEST
        looked.append(model)
        if model.is_file() and manifest.is_file():
            m = json.loads(manifest.read_text())
            kind = m.get("packing", {}).get("kind", "")
            if kind:
                return RunTokenizer(model, kind, SpecialIds(**m["special_tokens"]), list(m["sentinel_ids"]))
    raise ExportError(
        f"no tokenizer for the run {run}: looked in {', '.join(str(p) for p in looked)}. Runs trained by this "
        "cloze keep one in RUN_DIR/tokenizer/; for an older run, copy the dataset's tokenizer.model, manifest.json "
        "into a directory and set data.path in RUN_DIR/config.yaml to it, or pass --no-tokenizer to export the "
        "model alone"
    )


def load_run(
    run_dir: str | Path, tag: str = "", tokenizer: bool = True, trusted: bool = False
) -> tuple[nn.Module, RunConfig, RunTokenizer | None]:
    """The model of a run's newest (or `tag`) checkpoint, its config and (when asked) its tokenizer. The checkpoint
    is verified first (engine.verify_checkpoint); `trusted` (the user's `--trusted`, never the run's config.yaml:
    that file is inside the directory being checked) skips the weights-only unpickling check."""
    run = Path(run_dir)
    resolved = run / "config.yaml"
    if not resolved.is_file():
        raise ConfigError(
            f"{resolved} does not exist: {run} is not a cloze run directory (it is written by `cloze train`)"
        )
    cfg = config_from_dict(yaml.safe_load(resolved.read_text()), source=str(resolved))
    tok = find_tokenizer(run, cfg) if tokenizer else None  # before the slow part: a missing one fails fast
    root = run / "checkpoints"
    tag = tag or ckpt.find_resume(root) or ""
    if not tag:
        raise ckpt.CheckpointError(f"{root} holds no complete checkpoint to export")
    verify_checkpoint(root / tag, trusted)
    state = consolidated_state_dict(root, tag, cfg.deepspeed.zero_stage)
    model = build_model(cfg.model)
    missing, unexpected = model.load_state_dict(state, strict=False)
    # frozen parameters (DistilBERT's teacher) are not trained: the model rebuilt them from their own source
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    missing = [k for k in missing if k != "final_logits_bias" and k not in frozen]
    if missing or unexpected:
        raise ckpt.CheckpointError(
            f"{root / tag} does not match model {cfg.model.family}: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    return model.eval(), cfg, tok


def write_export(model: nn.Module, cfg: ModelConfig, out: str | Path, tok: RunTokenizer | None) -> list[Path]:
    """transformers files of `model` (export_hf) with the user's file mode, and the tokenizer when given."""
    written = export_hf(model.eval(), cfg, out)
    for path in written:  # safetensors writes its files 0o600: give them the mode of any file the user writes
        for weights in path.glob("*.safetensors"):
            chmod_as_open(weights)
    if tok is not None:
        for path in written:
            write_tokenizer(tok, cfg, path)
    return written


def export_run(
    run_dir: str | Path, out: str | Path, tag: str = "", tokenizer: bool = True, trusted: bool = False
) -> list[Path]:
    """Write `out` (and `out/generator` for ELECTRA) from the run's newest (or `tag`) checkpoint; returns them."""
    model, cfg, tok = load_run(run_dir, tag, tokenizer, trusted)
    return write_export(model, cfg.model, out, tok)


def write_tokenizer(tok: RunTokenizer, model: ModelConfig, out: str | Path) -> None:
    """The transformers tokenizer files for `model` in `out`: framing from the data, segment ids from the model."""
    save_hf_tokenizer(
        tok.model,
        out,
        tok.framing,
        tok.special,
        tok.sentinel_ids,
        model_max_length=model.max_position_embeddings,
        pair_type_id=1 if model.type_vocab_size >= 2 else 0,  # type_vocab_size=1 (RoBERTa): one segment type
    )
