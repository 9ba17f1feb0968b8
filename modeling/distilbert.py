"""DistilBERT: a 6-layer BERT student distilled from a frozen teacher (Sanh et al. 2019, arXiv:1910.01108).

Read top to bottom: the student -> the teacher (where it comes from, what it must match) -> the student's
initialisation from the teacher -> the distillation model (student + frozen teacher) -> registration and the
transformers adapter. The loss is trainer/losses.py's `DistillTask`.

References: huggingface/transformers `models/distilbert/modeling_distilbert.py` (the architecture, whose logits the
tests compare against) and `examples/research_projects/distillation/` (`distiller.py`: the loss; `train.py`: its
defaults; `scripts/extract_distilbert.py`: the student's initialisation from the teacher's layers [0, 2, 4, 7, 9, 11]).

    student  BERT's post-LN blocks (modeling/encoder.py: the same computation), learned positions, no token types,
             no pooler; MLM head vocab_transform -> gelu -> vocab_layer_norm -> vocab_projector tied to the embeddings
    teacher  our BertForPretraining (family bert or roberta), frozen: requires_grad False, always in eval mode (no
             dropout), run under torch.no_grad. It is a submodule of the model DeepSpeed wraps, so ZeRO-3 partitions
             it like the student (a large teacher fits) and gathers only its own parameters for its forward; the
             optimizer never sees it (trainer/optim.py `param_groups` skips frozen parameters).

Shapes: B batch, T sequence length, H hidden size, V vocabulary, M masked positions, R rows of the distillation
loss (non-pad tokens, or the masked ones with restrict_ce_to_mask), C non-pad tokens (the cosine loss).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import flops, hf
from .config import ModelConfig, ModelConfigError, check_standard_ffn
from .encoder import BertForPretraining, MLMOutput, select_labelled
from .registry import FamilySpec, HFAdapter, HFPart, get_family, register_family

# ---- the student ---------------------------------------------------------------------------------------------------


class DistilBertForPretraining(BertForPretraining):
    """DistilBERT's student: modeling/encoder.py's BERT with no token-type embeddings and no pooler, which is
    DistilBERT's computation (transformers' DistilBertForMaskedLM: embeddings word + position -> LayerNorm ->
    post-LN blocks -> vocab_transform -> act -> vocab_layer_norm -> vocab_projector tied to the word embeddings)."""


def check_distilbert(cfg: ModelConfig) -> None:
    """FamilySpec.check_config: the shapes transformers' DistilBERT has."""
    check_standard_ffn(cfg)
    if cfg.type_vocab_size != 0:
        raise ModelConfigError(
            f"model.type_vocab_size={cfg.type_vocab_size}: DistilBERT has no token types; set model.type_vocab_size=0 "
            "(the distilbert presets do)"
        )
    if cfg.pre_layer_norm or cfg.share_layers or cfg.emb_size != cfg.hidden_size or cfg.position_offset:
        raise ModelConfigError(
            "model.family='distilbert' is post-LN, unshared, with embedding_size = hidden_size and no "
            "position_offset: remove model.pre_layer_norm / share_layers / embedding_size / position_offset"
        )
    if cfg.temperature <= 0:
        raise ModelConfigError(f"model.temperature={cfg.temperature} must be > 0")
    for name in ("alpha_ce", "alpha_mlm", "alpha_cos"):
        if getattr(cfg, name) < 0:
            raise ModelConfigError(f"model.{name}={getattr(cfg, name)} must be >= 0")


# ---- the teacher ---------------------------------------------------------------------------------------------------

TeacherWeights = Callable[[Path], dict[str, torch.Tensor]]
read_run_weights: TeacherWeights | None = None
"""A cloze run directory -> its newest checkpoint's full fp32 state dict. Set by trainer/engine.py (imported by
`cloze train`, `export`, `finetune`): consolidating a ZeRO checkpoint is DeepSpeed's, which modeling/ never imports."""

TEACHER_FAMILIES = ("bert", "roberta")
REQUIRED = "???"
"""model.teacher in a recipe that requires one (configs/distilbert.yaml): a run stops before any step, naming it."""


def teacher_config(path: str) -> ModelConfig:
    """The teacher's ModelConfig, read from its directory's config alone (no weights); a ModelConfigError naming
    the path when it is not a teacher this family can distil from."""
    if path == REQUIRED:
        raise ModelConfigError(
            "model.teacher is required (the recipe leaves it '???'): set model.teacher=DIR, a cloze run directory "
            "or a transformers BertForMaskedLM / RobertaForMaskedLM directory"
        )
    d = Path(path)
    if not d.is_dir():
        raise ModelConfigError(
            f"model.teacher={path!r} is not a directory; set it to a cloze run directory (with config.yaml) or a "
            "transformers BertForMaskedLM / RobertaForMaskedLM directory (with config.json)"
        )
    if (d / "config.yaml").is_file():
        import yaml

        raw = yaml.safe_load((d / "config.yaml").read_text()) or {}
        model = raw.get("model") if isinstance(raw, dict) else None
        if not isinstance(model, dict):
            raise ModelConfigError(
                f"model.teacher: {d}/config.yaml has no model section: not a cloze run directory"
            )
        cfg = ModelConfig(**{k: v for k, v in model.items() if k in ModelConfig.__dataclass_fields__})
    elif (d / "config.json").is_file():
        try:
            cfg = hf.config_from_hf(d)
        except (hf.ExportError, KeyError) as e:
            raise ModelConfigError(f"model.teacher={path!r}: {e}") from None
    else:
        raise ModelConfigError(
            f"model.teacher={path!r} is not a model: it holds neither config.yaml (a cloze run directory) nor "
            "config.json (a transformers directory)"
        )
    # A BERT-shaped teacher: a family whose model is BertForPretraining, with unshared, unfactorised layers (so
    # BERT and RoBERTa; not ALBERT), asked of the registry rather than by name.
    bert_shaped = get_family(cfg.family).build is BertForPretraining
    if not bert_shaped or cfg.share_layers or cfg.emb_size != cfg.hidden_size:
        raise ModelConfigError(
            f"model.teacher={path!r} is a {cfg.family!r} model; DistilBERT distils from {' or '.join(TEACHER_FAMILIES)}"
        )
    if cfg.pre_layer_norm:
        raise ModelConfigError(
            f"model.teacher={path!r} is pre-LN; the DistilBERT student is post-LN like BERT"
        )
    return cfg


def check_teacher(cfg: ModelConfig, teacher: ModelConfig) -> None:
    """The student (`cfg`, resolved: vocabulary and special ids from the dataset) must be able to start from the
    teacher's weights and read the same tokens."""
    where = f"model.teacher={cfg.teacher!r}"
    if teacher.vocab_size != cfg.vocab_size:
        raise ModelConfigError(
            f"{where} has a vocabulary of {teacher.vocab_size}, the student {cfg.vocab_size} (model.vocab_size, 0 = "
            "the dataset's tokenizer): distil from a teacher trained with the dataset's tokenizer, or set "
            f"model.vocab_size={teacher.vocab_size} if the teacher's tokenizer is the dataset's"
        )
    if teacher.pad_token_id != cfg.pad_token_id:
        raise ModelConfigError(
            f"{where} pads with id {teacher.pad_token_id}, the dataset with {cfg.pad_token_id}: a different "
            "tokenizer; distil from a teacher trained on shards of the same tokenizer"
        )
    for name in ("hidden_size", "num_heads", "intermediate_size", "activation"):
        if getattr(teacher, name) != getattr(cfg, name):
            raise ModelConfigError(
                f"model.{name}={getattr(cfg, name)!r} differs from the teacher's {getattr(teacher, name)!r} "
                f"({cfg.teacher}): the student starts from the teacher's layers; set model.{name}="
                f"{getattr(teacher, name)!r}"
            )
    if len(cfg.student_layers) != cfg.num_layers:
        raise ModelConfigError(
            f"model.student_layers={cfg.student_layers} names {len(cfg.student_layers)} teacher layers for "
            f"model.num_layers={cfg.num_layers}: give one teacher layer per student layer"
        )
    bad = [i for i in cfg.student_layers if not 0 <= i < teacher.num_layers]
    if bad:
        raise ModelConfigError(
            f"model.student_layers={cfg.student_layers}: {bad} out of range for the teacher's "
            f"{teacher.num_layers} layers (0..{teacher.num_layers - 1})"
        )
    if cfg.max_position_embeddings > teacher.max_position_embeddings:
        raise ModelConfigError(
            f"model.max_position_embeddings={cfg.max_position_embeddings} exceeds the teacher's "
            f"{teacher.max_position_embeddings}; set it to at most that"
        )


TEACHER_TOKENIZERS = ("tokenizer/tokenizer.model", "spiece.model")
"""Where a teacher keeps its sentencepiece model: a cloze run directory's copy (data_pipeline.hf_tokenizer
RUN_TOKENIZER_DIR / data_pipeline.tokenizer MODEL_FILE), a `cloze export` directory's."""


def check_teacher_tokenizer(cfg: ModelConfig, dataset_sha256: str, data: str) -> None:
    """FamilySpec.check_dataset: model.teacher must have been trained with the dataset's tokenizer, the
    sentencepiece model beside it the manifest's (same sha256). A teacher without one (a transformers directory
    from elsewhere) is checked by its vocabulary size and pad id only (configure_distilbert)."""
    import hashlib

    if not cfg.teacher or not dataset_sha256:
        return
    for name in TEACHER_TOKENIZERS:
        own = Path(cfg.teacher) / name
        if own.is_file() and hashlib.sha256(own.read_bytes()).hexdigest() != dataset_sha256:
            raise ModelConfigError(
                f"model.teacher={cfg.teacher!r}: its tokenizer {own} is not the dataset's ({data}/manifest.json "
                "tokenizer.sha256): the teacher reads other token ids; distil on shards written with the teacher's "
                "tokenizer (cloze shards --tokenizer ...) or pick a teacher trained on this one"
            )


def configure_distilbert(cfg: ModelConfig) -> None:
    """FamilySpec.configure (trainer/state.py `prepare`, before any step): with a teacher, check it against the
    resolved student (vocabulary, pad id, widths, layer map); a dataset of sentence pairs is refused (no pooler)."""
    if cfg.sentence_head:
        raise ModelConfigError(
            "model.family='distilbert' has no sentence head (no pooler): write the shards without "
            "--sentence-task"
        )
    if cfg.teacher:
        check_teacher(cfg, teacher_config(cfg.teacher))


def load_teacher(path: str) -> tuple[BertForPretraining, ModelConfig]:
    """The teacher with its weights: a transformers directory (modeling/hf.py `load_hf`) or a cloze run
    directory's newest checkpoint (`read_run_weights`)."""
    tcfg = teacher_config(path)
    d = Path(path)
    if (d / "config.yaml").is_file():
        if read_run_weights is None:
            raise ModelConfigError(
                f"model.teacher={path!r} is a cloze run directory: reading its checkpoint needs the trainer "
                "(import trainer.engine first)"
            )
        model = BertForPretraining(tcfg)
        missing, unexpected = model.load_state_dict(read_run_weights(d), strict=False)
        if missing or unexpected:
            raise ModelConfigError(
                f"model.teacher={path!r}: its checkpoint does not match its config.yaml: missing {missing[:3]}, "
                f"unexpected {unexpected[:3]}"
            )
        return model, tcfg
    loaded, tcfg, left = hf.load_hf(d)
    if left:
        raise ModelConfigError(
            f"model.teacher={path!r} lacks {left[:3]}: a teacher needs its MLM head (save a *ForMaskedLM model)"
        )
    assert isinstance(loaded, BertForPretraining)
    return loaded, tcfg


# ---- the student's initialisation (scripts/extract_distilbert.py) --------------------------------------------------


def student_state_from_teacher(
    teacher: dict[str, torch.Tensor], tcfg: ModelConfig, layers: list[int], max_positions: int
) -> dict[str, torch.Tensor]:
    """The student's state dict from the teacher's (both our key names), as extract_distilbert.py builds it: word
    and position embeddings and their LayerNorm (no token types), the blocks `layers` in order, the MLM head. A
    RoBERTa teacher's positions start after pad + 1: the student (offset 0) takes the rows its positions read."""
    out: dict[str, torch.Tensor] = {}
    emb = "bert.embeddings."
    out[emb + "word_embeddings.weight"] = teacher[emb + "word_embeddings.weight"]
    off = tcfg.position_offset
    out[emb + "position_embeddings.weight"] = teacher[emb + "position_embeddings.weight"][
        off : off + max_positions
    ]
    for k in ("LayerNorm.weight", "LayerNorm.bias"):
        out[emb + k] = teacher[emb + k]
    for s, t in enumerate(layers):
        src = f"bert.encoder.layer.{t}."
        for k, v in teacher.items():
            if k.startswith(src):
                out[f"bert.encoder.layer.{s}." + k[len(src) :]] = v
    for k, v in teacher.items():
        if k.startswith("cls.predictions."):
            out[k] = v
    return {k: v.detach().clone() for k, v in out.items()}


# ---- the distillation model ----------------------------------------------------------------------------------------


@dataclass
class DistillOutput:
    """What trainer/losses.py `DistillTask` needs from one forward of student and teacher."""

    logits: torch.Tensor
    """(M, V) the student's MLM logits at the masked positions."""
    targets: torch.Tensor
    """(M,) the labels there."""
    teacher_logits: torch.Tensor
    """(M, V) the teacher's logits at the same positions (its MLM accuracy on the same batch)."""
    student_ce: torch.Tensor
    """(R, V) the student's logits at the distillation rows."""
    teacher_ce: torch.Tensor
    """(R, V) the teacher's there."""
    student_hidden: torch.Tensor
    """(C, H) the student's last hidden states at the non-pad tokens."""
    teacher_hidden: torch.Tensor
    """(C, H) the teacher's."""


class DistillationModel(DistilBertForPretraining):
    """The student (this module's own `bert` / `cls`, so its state dict and export are a plain student's) plus a
    frozen `teacher`. Built by family 'distilbert' when model.teacher is set; the student starts from the teacher
    (`student_state_from_teacher`)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        teacher, tcfg = load_teacher(cfg.teacher)
        check_teacher(cfg, tcfg)
        self.load_state_dict(
            student_state_from_teacher(
                teacher.state_dict(), tcfg, cfg.student_layers, cfg.max_position_embeddings
            ),
            strict=False,
        )
        for p in teacher.parameters():
            p.requires_grad_(False)
        self.teacher = teacher.eval()

    def train(self, mode: bool = True) -> DistillationModel:
        """The student follows `mode`; the teacher stays in eval mode (no dropout), as distiller.py keeps it."""
        super().train(mode)
        self.teacher.eval()
        return self

    def forward(  # type: ignore[override]
        self,
        input_ids: torch.Tensor,
        labels: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> DistillOutput | MLMOutput:
        if labels is None:  # the student alone (pseudo-perplexity, fine-tuning)
            return super().forward(input_ids, None, attention_mask)
        keep = attention_mask if attention_mask is not None else torch.ones_like(input_ids)  # (B, T)
        h = self.bert(input_ids, attention_mask)  # (B, T, H)
        with torch.no_grad():
            # (B, T, H); token type 0, as distiller.py calls the teacher without types
            t = self.teacher.bert(input_ids, attention_mask)
        masked, targets, _ = select_labelled(h, labels)  # (M, H), (M,)
        ce_rows = (labels != -100) if self.config.restrict_ce_to_mask else keep.bool()  # (B, T)
        ce_idx = ce_rows.reshape(-1).nonzero().squeeze(1)  # (R,)
        real_idx = keep.bool().reshape(-1).nonzero().squeeze(1)  # (C,)
        flat_h, flat_t = h.reshape(-1, h.shape[-1]), t.reshape(-1, t.shape[-1])
        with torch.no_grad():
            t_masked = flat_t.index_select(0, (labels.reshape(-1) != -100).nonzero().squeeze(1))
            teacher_logits = self.teacher.mlm_logits(t_masked)  # (M, V)
            teacher_ce = self.teacher.mlm_logits(flat_t.index_select(0, ce_idx))  # (R, V)
        return DistillOutput(
            logits=self.mlm_logits(masked),
            targets=targets,
            teacher_logits=teacher_logits,
            student_ce=self.mlm_logits(flat_h.index_select(0, ce_idx)),
            teacher_ce=teacher_ce,
            student_hidden=flat_h.index_select(0, real_idx),
            teacher_hidden=flat_t.index_select(0, real_idx),
        )


def build_distilbert(cfg: ModelConfig) -> nn.Module:
    """FamilySpec.build: the distillation model with a teacher, else the student alone (MLM)."""
    return DistillationModel(cfg) if cfg.teacher else DistilBertForPretraining(cfg)


# ---- transformers adapter: our keys -> DistilBertForMaskedLM's ------------------------------------------------------


def distilbert_config(cfg: ModelConfig) -> Any:
    if cfg.layer_norm_eps != 1e-12:
        raise hf.ExportError(
            f"model.layer_norm_eps={cfg.layer_norm_eps}: transformers' DistilBERT fixes it at 1e-12"
        )
    return hf._transformers().DistilBertConfig(
        vocab_size=cfg.vocab_size,
        max_position_embeddings=cfg.max_position_embeddings,
        sinusoidal_pos_embds=False,
        n_layers=cfg.num_layers,
        n_heads=cfg.num_heads,
        dim=cfg.hidden_size,
        hidden_dim=cfg.intermediate_size,
        dropout=cfg.hidden_dropout,
        attention_dropout=cfg.attention_dropout,
        activation=hf.HF_ACT.get(cfg.activation, cfg.activation),
        initializer_range=cfg.initializer_range,
        pad_token_id=cfg.pad_token_id,
        eos_token_id=cfg.eos_token_id,
    )


def distilbert_from_hf(raw: dict[str, Any], path: str) -> ModelConfig:
    if raw.get("sinusoidal_pos_embds"):
        raise hf.ExportError(
            f"{path}/config.json: sinusoidal_pos_embds=true is not supported (learned positions)"
        )
    return ModelConfig(
        family="distilbert",
        hidden_size=raw["dim"],
        num_layers=raw["n_layers"],
        num_heads=raw["n_heads"],
        intermediate_size=raw["hidden_dim"],
        max_position_embeddings=raw["max_position_embeddings"],
        type_vocab_size=0,
        hidden_dropout=raw.get("dropout", 0.1),
        attention_dropout=raw.get("attention_dropout", 0.1),
        activation=hf.REVERSE_ACT.get(raw.get("activation", "gelu"), raw.get("activation", "gelu")),
        initializer_range=raw.get("initializer_range", 0.02),
        vocab_size=raw["vocab_size"],
        pad_token_id=raw.get("pad_token_id") or 0,
    )


_OURS = "bert.encoder.layer.*."
_THEIRS = "distilbert.transformer.layer.*."
DISTILBERT_HF = HFAdapter(
    parts=(
        HFPart(
            "DistilBertForMaskedLM",
            distilbert_config,
            rename=(
                ("bert.embeddings.", "distilbert.embeddings."),
                (_OURS + "attention.out.", _THEIRS + "attention.out_lin."),
                (_OURS + "attention_norm.", _THEIRS + "sa_layer_norm."),
                (_OURS + "ffn.up.", _THEIRS + "ffn.lin1."),
                (_OURS + "ffn.down.", _THEIRS + "ffn.lin2."),
                (_OURS + "ffn_norm.", _THEIRS + "output_layer_norm."),
                ("cls.predictions.transform.dense.", "vocab_transform."),
                ("cls.predictions.transform.LayerNorm.", "vocab_layer_norm."),
                ("cls.predictions.bias", "vocab_projector.bias"),
            ),
            fuse=((_OURS + "attention.qkv.", tuple(_THEIRS + f"attention.{n}_lin." for n in "qkv")),),
            drop=("teacher.", "pooler.", "cls.seq_relationship."),  # the frozen teacher is not exported
            tied={"vocab_projector.weight": "bert.embeddings.word_embeddings.weight"},
        ),
    ),
    model_type="distilbert",
    from_hf_config=distilbert_from_hf,
    bare_prefix="distilbert.",
)

_SHAPE: dict[str, Any] = dict(family="distilbert", type_vocab_size=0)
register_family(
    FamilySpec(
        name="distilbert",
        build=build_distilbert,
        objectives=("mlm", "wwm", "span", "tokens"),
        param_count=flops.encoder_params,  # the student's: the frozen teacher trains nothing
        flops_per_token=flops.encoder_flops,  # the student's step; the teacher's forward is not counted (MFU)
        check_config=check_distilbert,
        configure=configure_distilbert,
        check_dataset=check_teacher_tokenizer,
        hf=DISTILBERT_HF,
        presets={
            "distilbert_base": dict(
                **_SHAPE, hidden_size=768, num_layers=6, num_heads=12, intermediate_size=3072
            ),
            "tiny_distilbert": dict(
                **_SHAPE, hidden_size=128, num_layers=2, num_heads=2, intermediate_size=512
            ),
        },
    )
)
