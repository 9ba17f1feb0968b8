"""ELECTRA: a small generator (MLM) and a discriminator (replaced-token detection) sharing one embedding module.

    input (masked)  -> embeddings (shared) -> generator blocks -> MLM head (tied to the token embeddings)
                                                                   -> sample replacements at masked positions
    corrupted input -> embeddings (shared) -> discriminator blocks -> per-token "replaced?" logit

Loss = generator MLM loss + rtd_weight x binary cross-entropy of the discriminator (mean over real tokens).
Replacements are sampled from the generator's softmax without gradient. The adapter at the bottom maps our keys onto
transformers' ElectraForPreTraining (discriminator) and ElectraForMaskedLM (generator) (modeling/hf.py applies it).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from . import flops, hf
from .config import ModelConfig
from .encoder import BertEmbeddings, BertModel, MLMPredictions, bert_layer_names, select_labelled
from .layers import QueryRows, activation_fn, init_bert_weights
from .registry import FamilySpec, HFAdapter, HFPart, register_family


class DiscriminatorHead(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.dense_prediction = nn.Linear(cfg.hidden_size, 1)
        self.act = activation_fn(cfg.activation)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.dense_prediction(self.act(self.dense(h))).squeeze(-1)  # (B, T)


@dataclass
class ElectraOutput:
    loss: torch.Tensor
    """gen_loss + rtd_weight x rtd_loss."""
    gen_loss: torch.Tensor
    rtd_loss: torch.Tensor
    gen_logits: torch.Tensor
    """(M, V) at the masked positions."""
    targets: torch.Tensor
    """(M,) original ids at the masked positions."""
    rtd_logits: torch.Tensor
    """(B, T)."""
    rtd_labels: torch.Tensor
    """(B, T) 1 where the discriminator's input differs from the original."""
    real: torch.Tensor
    """(B, T) bool, positions that are not padding."""


@dataclass
class Replaced:
    """The discriminator's input: the generator's samples put in at the masked positions."""

    input_ids: torch.Tensor
    """(B, T) the corrupted ids."""
    labels: torch.Tensor
    """(B, T) float, 1 where the corrupted id differs from the original (a sample equal to it is not replaced)."""
    real: torch.Tensor
    """(B, T) bool, positions that are not padding."""


@torch.no_grad()
def sample_replacements(
    gen_logits: torch.Tensor,
    input_ids: torch.Tensor,
    labels: torch.Tensor,
    attention_mask: torch.Tensor | None,
) -> Replaced:
    """One sample from the generator's softmax per masked position, without gradient (google-research/electra
    pretrain/pretrain_helpers.py `sample_from_softmax` without the Gumbel trick; microsoft/DeBERTa
    apps/tasks/rtd_task.py `make_electra_data` / `topk_sampling(topk=1)`: torch.multinomial). gen_logits: (M, V)
    in the order of `select_labelled` (row-major over the positions where labels != -100)."""
    idx = (labels.reshape(-1) != -100).nonzero().squeeze(1)  # (M,)
    sampled = torch.multinomial(F.softmax(gen_logits.float(), dim=-1), 1).squeeze(1) if idx.numel() else idx
    corrupted = input_ids.reshape(-1).clone()
    corrupted[idx] = sampled
    corrupted = corrupted.view_as(input_ids)
    original = torch.where(labels != -100, labels, input_ids)
    real = (
        attention_mask.bool() if attention_mask is not None else torch.ones_like(input_ids, dtype=torch.bool)
    )
    return Replaced(corrupted, (corrupted != original).float(), real)


@dataclass
class GeneratorStep:
    """The generator's half of a decoupled RTD step (DeBERTa-v3, `phase="generator"`): its MLM loss and the
    discriminator's input sampled from it."""

    loss: torch.Tensor
    """MLM cross-entropy, mean over the masked positions."""
    gen_logits: torch.Tensor
    """(M, V) at the masked positions."""
    targets: torch.Tensor
    """(M,) original ids at the masked positions."""
    replaced: Replaced


@dataclass
class DiscriminatorStep:
    """The discriminator's half of a decoupled RTD step (`phase="discriminator"`)."""

    loss: torch.Tensor
    """Binary cross-entropy, mean over the non-padding positions (unweighted: rtd_weight is the task's)."""
    rtd_logits: torch.Tensor
    """(B, T)."""
    rtd_labels: torch.Tensor
    real: torch.Tensor


def generator_loss(gen_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy mean over the masked positions (0 with a gradient path when there are none)."""
    return F.cross_entropy(gen_logits.float(), targets) if targets.numel() else gen_logits.sum() * 0.0


def rtd_loss(rtd_logits: torch.Tensor, labels: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of the replaced-token logits, mean over the non-padding positions."""
    return F.binary_cross_entropy_with_logits(rtd_logits.float()[real], labels[real])


def electra_output(
    gen_logits: torch.Tensor,
    targets: torch.Tensor,
    rtd_logits: torch.Tensor,
    replaced: Replaced,
    rtd_weight: float,
) -> ElectraOutput:
    """The joint loss gen_loss + rtd_weight x rtd_loss (token means: cross-entropy over the masked positions,
    binary cross-entropy over the non-padding ones)."""
    gen_loss = generator_loss(gen_logits, targets)
    real = replaced.real
    rtd = rtd_loss(rtd_logits, replaced.labels, real)
    loss = gen_loss + rtd_weight * rtd
    return ElectraOutput(loss, gen_loss, rtd, gen_logits, targets, rtd_logits, replaced.labels, real)


class ElectraForPretraining(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.config = cfg
        gen = cfg.generator()
        self.embeddings = BertEmbeddings(cfg)  # (B, T, E), shared by both
        self.generator = BertModel(gen, with_embeddings=False)
        self.generator_predictions = MLMPredictions(gen)  # H_gen -> E -> tied decoder
        self.discriminator = BertModel(cfg, with_embeddings=False)
        self.discriminator_predictions = DiscriminatorHead(cfg)
        self.apply(lambda m: init_bert_weights(m, cfg.initializer_range))

    def forward(
        self,
        input_ids: torch.Tensor,
        labels: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> ElectraOutput:
        words = self.embeddings.word_embeddings
        # Generator: MLM at the masked positions only (its last block too, with model.last_layer_at_labels).
        e = self.embeddings(input_ids, token_type_ids)  # (B, T, E)
        if self.config.last_layer_at_labels:
            q = QueryRows.of(labels != -100)
            selected = self.generator.encode(e, attention_mask, q)  # (M, Hg)
            targets = q.take(labels)  # (M,), select_labelled's order
        else:
            selected, targets, _ = select_labelled(
                self.generator.encode(e, attention_mask), labels
            )  # (M, Hg)
        gen_logits = self.generator_predictions(selected, words)  # (M, V)
        replaced = sample_replacements(gen_logits, input_ids, labels, attention_mask)
        h = self.discriminator.encode(
            self.embeddings(replaced.input_ids, token_type_ids), attention_mask
        )  # (B, T, H)
        rtd_logits = self.discriminator_predictions(h)  # (B, T)
        return electra_output(gen_logits, targets, rtd_logits, replaced, self.config.rtd_weight)

    def features(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, T, H) the discriminator's output (what fine-tuning starts from; the generator is not used)."""
        return self.discriminator.encode(self.embeddings(input_ids, token_type_ids), attention_mask)

    def mlm_forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, T, V) masked-LM logits: the generator's (pseudo-perplexity)."""
        return self.generator_logits(input_ids, attention_mask, token_type_ids)

    def discriminator_logits(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, T) replaced-token logits of the discriminator alone (what fine-tuning starts from)."""
        h = self.discriminator.encode(self.embeddings(input_ids, token_type_ids), attention_mask)
        return self.discriminator_predictions(h)

    def generator_logits(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, T, V) MLM logits of the generator alone."""
        h = self.generator.encode(self.embeddings(input_ids, token_type_ids), attention_mask)
        return self.generator_predictions(h, self.embeddings.word_embeddings)


# ---- transformers adapter: two exports, the discriminator (the model an import reads) and the generator -----------

_DISC_LAYERS, _DISC_FUSE = bert_layer_names("discriminator.encoder.layer.*.", "electra.encoder.layer.*.")
_GEN_LAYERS, _GEN_FUSE = bert_layer_names("generator.encoder.layer.*.", "electra.encoder.layer.*.")
ELECTRA_RENAME = (
    ("embeddings.", "electra.embeddings."),
    ("discriminator.embeddings_project.", "electra.embeddings_project."),
    ("discriminator.encoder.", "electra.encoder."),
    *_DISC_LAYERS,
)
ELECTRA_GENERATOR_RENAME = (
    ("embeddings.", "electra.embeddings."),
    ("generator.embeddings_project.", "electra.embeddings_project."),
    ("generator.encoder.", "electra.encoder."),
    ("generator_predictions.transform.dense.", "generator_predictions.dense."),
    ("generator_predictions.transform.LayerNorm.", "generator_predictions.LayerNorm."),
    ("generator_predictions.bias", "generator_lm_head.bias"),
    *_GEN_LAYERS,
)
ELECTRA_HF = HFAdapter(
    parts=(
        HFPart(
            "ElectraForPreTraining",
            hf.electra_config,
            rename=ELECTRA_RENAME,
            fuse=_DISC_FUSE,
            drop=("generator.", "generator_predictions."),
        ),
        HFPart(
            "ElectraForMaskedLM",
            hf.electra_generator_config,
            rename=ELECTRA_GENERATOR_RENAME,
            fuse=_GEN_FUSE,
            drop=("discriminator.", "discriminator_predictions."),
            tied={"generator_lm_head.weight": "embeddings.word_embeddings.weight"},
            subdir="generator",
        ),
    ),
)

register_family(
    FamilySpec(
        name="electra",
        build=ElectraForPretraining,
        objectives=("electra", "mlm", "wwm", "span", "tokens"),
        param_count=flops.electra_params,
        flops_per_token=flops.electra_flops,
        hf=ELECTRA_HF,
    )
)
