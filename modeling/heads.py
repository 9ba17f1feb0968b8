"""Fine-tuning heads over a pretrained cloze model (`cloze finetune`).

    encoders (every family's `features`: BERT, RoBERTa, ALBERT, XLM-R, DistilBERT, Longformer, DeBERTa, XLM) and the
    discriminators of ELECTRA and DeBERTa-v3 RTD:
        features (B, T, H) -> first token h[:, 0] -> dropout -> dense H->H -> tanh -> dropout -> out H->n
        the classification head of transformers' RobertaClassificationHead / ElectraClassificationHead
        (models/roberta/modeling_roberta.py, models/electra/modeling_electra.py); n = labels, or 1 (regression)
    T5, BART: text to text. The label is a word the decoder generates (cross-entropy over the vocabulary while
        training, as T5 fine-tunes, t5/data/glue_utils); it is scored by comparing the decoder's log-probability of
        each candidate label word (restricted decoding), so predictions are always a declared label and the metrics
        are the same as the encoders'.

No deepspeed, no torch.distributed: fine-tuning a small model is a single-process job.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .bart import BartForPretraining
from .config import ModelConfig
from .deberta import DebertaForPretraining
from .encoder import BertForPretraining
from .t5 import T5ForPretraining


class ClassificationHead(nn.Module):
    """dropout -> dense -> tanh -> dropout -> out_proj on the first token (RobertaClassificationHead)."""

    def __init__(self, hidden: int, num_outputs: int, dropout: float, std: float) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.dense = nn.Linear(hidden, hidden)
        self.out_proj = nn.Linear(hidden, num_outputs)
        for lin in (self.dense, self.out_proj):
            nn.init.normal_(lin.weight, std=std)
            nn.init.zeros_(lin.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        x = self.dropout(h[:, 0])  # (B, H)
        x = self.dropout(torch.tanh(self.dense(x)))
        return self.out_proj(x)  # (B, n)


class EncoderForSequenceTask(nn.Module):
    """A pretrained encoder + a classification head over its `features` (B, T, H): BERT / RoBERTa / ALBERT /
    XLM-R / DistilBERT, Longformer (global attention on [CLS]), DeBERTa v1/v2/v3, ELECTRA's and DeBERTa-v3 RTD's
    discriminators (their generators are carried along unused), XLM (without language ids)."""

    def __init__(self, pretrained: nn.Module, num_outputs: int) -> None:
        super().__init__()
        if not callable(getattr(pretrained, "features", None)):
            raise TypeError(f"{type(pretrained).__name__} is not an encoder (it has no features())")
        cfg = pretrained.config
        assert isinstance(cfg, ModelConfig)
        self.config = cfg
        self.backbone = pretrained
        self.head = ClassificationHead(
            cfg.hidden_size, num_outputs, cfg.hidden_dropout, cfg.initializer_range
        )

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        h = self.backbone.features(input_ids, attention_mask, token_type_ids)  # type: ignore[operator]
        return self.head(h)  # (B, n)


class Seq2SeqForSequenceTask(nn.Module):
    """T5 / BART fine-tuned text to text: `loss` trains on the label word; `label_scores` ranks candidates."""

    def __init__(self, pretrained: nn.Module, decoder_start: int, pad: int) -> None:
        super().__init__()
        if not isinstance(pretrained, T5ForPretraining | BartForPretraining):
            raise TypeError(f"{type(pretrained).__name__} is not an encoder-decoder")
        self.model = pretrained
        self.config = pretrained.config
        self.decoder_start, self.pad = decoder_start, pad

    def decoder_inputs(self, targets: torch.Tensor) -> torch.Tensor:
        """Targets shifted right behind the decoder start (data_pipeline/loader.py Collator)."""
        dec = torch.full_like(targets, self.pad)
        dec[:, 0] = self.decoder_start
        dec[:, 1:] = targets[:, :-1].masked_fill(targets[:, :-1] < 0, self.pad)
        return dec

    def loss(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, targets: torch.Tensor
    ) -> torch.Tensor:
        """Mean cross-entropy of the label words; `targets` (B, L) padded with -100."""
        logits = self.model(input_ids, self.decoder_inputs(targets), attention_mask).logits  # (B, L, V)
        return F.cross_entropy(
            logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100
        )

    def label_scores(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, candidates: torch.Tensor
    ) -> torch.Tensor:
        """(B, C) summed log-probability of each candidate (C, L) (padded with -100) as the decoder's output."""
        B, C = input_ids.shape[0], candidates.shape[0]
        ids = input_ids.repeat_interleave(C, 0)  # (B*C, S)
        mask = attention_mask.repeat_interleave(C, 0)
        targets = candidates.repeat(B, 1)  # (B*C, L)
        logits = self.model(ids, self.decoder_inputs(targets), mask).logits.float()  # (B*C, L, V)
        logp = logits.log_softmax(-1).gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        return (logp * (targets >= 0)).sum(-1).view(B, C)


def mlm_logits(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    token_type_ids: torch.Tensor | None,
) -> torch.Tensor:
    """(B, T, V) masked-LM logits of an encoder, or of an RTD model's generator (ELECTRA, DeBERTa-v3 RTD), for
    pseudo-perplexity: the model's `mlm_forward` where it has one, else its forward without labels."""
    if callable(getattr(model, "mlm_forward", None)):
        return model.mlm_forward(input_ids, attention_mask, token_type_ids)  # type: ignore[operator]
    if isinstance(model, BertForPretraining | DebertaForPretraining):
        return model(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).logits
    raise TypeError(f"{type(model).__name__} has no masked-LM head")
