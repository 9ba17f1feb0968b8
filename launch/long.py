"""`cloze convert SRC --to-long --max-len 4096 --window 512 --out DIR`: a RoBERTa (or BERT) checkpoint turned into a
Longformer starting point, written as a transformers `LongformerForMaskedLM` directory with its tokenizer.

Reference: allenai/longformer `scripts/convert_model_to_long.ipynb` (`create_long_model`):
- the position table grows to max-len (+ the reserved offset rows RoBERTa keeps before position 0), each new
  position i taking learned position i mod 512 ("copy position embeddings over and over"); the reserved rows are
  kept (the notebook leaves them as allocated; they are the pad positions and never attended);
- every layer's local query/key/value are kept and copied into the global ones (`query_global = deepcopy(query)`);
- `attention_window` = the window for every layer; everything else (embeddings, blocks, MLM head) is copied.
A BERT source also gets RoBERTa's position scheme (Longformer's): its position p moves to row offset + p, and its
first token type is kept (Longformer has one).

SRC is a cloze run directory (its newest checkpoint, verified first) or a transformers directory of
RobertaForMaskedLM / BertForMaskedLM (config.json + *.safetensors). Train from the result with
`model.init_from=DIR` (configs/longformer-base-4096.yaml).
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from modeling import build_model
from modeling.config import ModelConfig
from modeling.hf import ExportError, load_hf
from trainer.config import ConfigError

CONVERTIBLE = ("roberta", "bert")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "spiece.model")


def check_long(family: str, max_len: int, window: int, where: str) -> None:
    """The conversion's inputs, before anything is read or written."""
    if family not in CONVERTIBLE:
        raise ConfigError(
            f"{where} is a {family} model; --to-long converts {' or '.join(CONVERTIBLE)} checkpoints (Longformer "
            "is RoBERTa with windowed attention)"
        )
    if window <= 0 or window % 2:
        raise ConfigError(
            f"--window {window}: the window must be even and positive (w/2 tokens on each side)"
        )
    if max_len <= 0 or max_len % window:
        raise ConfigError(
            f"--max-len {max_len} is not a multiple of --window {window}; use e.g. "
            f"--max-len {max(window, (max_len // window) * window)}"
        )


def long_config(cfg: ModelConfig, max_len: int, window: int) -> ModelConfig:
    return replace(
        cfg,
        family="longformer",
        preset="",
        attention_window=[window],
        max_position_embeddings=max_len,
        position_offset=cfg.pad_token_id + 1,
        type_vocab_size=1,
        pre_layer_norm=False,
        sentence_head=False,
    )


def long_state(model: nn.Module, cfg: ModelConfig, new: ModelConfig) -> dict[str, torch.Tensor]:
    """`model`'s weights (family roberta/bert) as the Longformer `new`'s: positions tiled, global q/k/v copied."""
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    old_pos = state["bert.embeddings.position_embeddings.weight"]
    src_off, n = cfg.position_offset, cfg.max_position_embeddings
    table = old_pos.new_zeros(new.max_position_embeddings + new.position_offset, old_pos.shape[1])
    table[: min(src_off, new.position_offset)] = old_pos[: min(src_off, new.position_offset)]  # reserved rows
    index = torch.arange(new.max_position_embeddings) % n + src_off
    table[new.position_offset :] = old_pos[index]
    state["bert.embeddings.position_embeddings.weight"] = table
    types = "bert.embeddings.token_type_embeddings.weight"
    if types in state:
        state[types] = state[types][:1]
    for key in [k for k in state if k.endswith(".attention.qkv.weight") or k.endswith(".attention.qkv.bias")]:
        state[key.replace(".attention.qkv.", ".attention.global_qkv.")] = state[key].clone()
    for key in [k for k in state if k.startswith(("pooler.", "cls.seq_relationship."))]:
        del state[key]
    return state


def convert_to_long(
    src: str | Path, out: str | Path, max_len: int, window: int, trusted: bool = False
) -> tuple[Path, ModelConfig]:
    """Write the Longformer starting point of `src` to `out`; returns (out, its config)."""
    from launch.export import load_run, write_export

    source, dest = Path(src), Path(out)
    if (source / "config.yaml").is_file():
        import yaml

        from trainer.config import config_from_dict

        raw = config_from_dict(
            yaml.safe_load((source / "config.yaml").read_text()), source=str(source / "config.yaml")
        )
        check_long(raw.model.family, max_len, window, str(source))  # before the checkpoint is read
        model, run_cfg, tok = load_run(source, trusted=trusted)
        cfg = run_cfg.model
    elif (source / "config.json").is_file():
        model, cfg, _ = load_hf(source)
        check_long(cfg.family, max_len, window, str(source))
        tok = None
    else:
        raise ConfigError(
            f"{source} is neither a cloze run directory (config.yaml) nor a transformers directory (config.json)"
        )
    new = long_config(cfg, max_len, window)
    long_model = build_model(new)
    missing, unexpected = long_model.load_state_dict(long_state(model, cfg, new), strict=False)
    if missing or unexpected:
        raise ExportError(
            f"{source}: could not map onto Longformer: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    write_export(long_model, new, dest, tok)
    if tok is None:  # a transformers source: its tokenizer files, as they are
        for name in TOKENIZER_FILES:
            if (source / name).is_file():
                shutil.copy2(source / name, dest / name)
    return dest, new
