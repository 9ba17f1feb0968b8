"""`cloze export RUN_DIR --out DIR`: a checkpoint of a run as Hugging Face transformers files."""

from __future__ import annotations

from pathlib import Path

import yaml

from modeling import build_model
from modeling.hf import export_hf
from trainer import checkpoint as ckpt
from trainer.config import ConfigError, config_from_dict
from trainer.engine import check_checkpoint_file, consolidated_state_dict


def export_run(run_dir: str | Path, out: str | Path, tag: str = "") -> list[Path]:
    run = Path(run_dir)
    resolved = run / "config.yaml"
    if not resolved.is_file():
        raise ConfigError(
            f"{resolved} does not exist: {run} is not a cloze run directory (it is written by `cloze train`)"
        )
    cfg = config_from_dict(yaml.safe_load(resolved.read_text()))
    root = run / "checkpoints"
    tag = tag or ckpt.find_resume(root) or ""
    if not tag:
        raise ckpt.CheckpointError(f"{root} holds no complete checkpoint to export")
    ckpt.verify(root / tag, hashes=True, check_file=None if cfg.checkpoint.trusted else check_checkpoint_file)
    state = consolidated_state_dict(root, tag, cfg.deepspeed.zero_stage)
    model = build_model(cfg.model)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k != "final_logits_bias"]
    if missing or unexpected:
        raise ckpt.CheckpointError(
            f"{root / tag} does not match model {cfg.model.family}: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    tokenizer = Path(cfg.data.path) / "tokenizer.model"
    return export_hf(model.eval(), cfg.model, out, tokenizer if tokenizer.is_file() else None)
