"""Fine-tune and score a pretrained checkpoint on a downstream task (`cloze finetune`, `cloze evaluate`).

A plain single-process torch loop, no DeepSpeed: fine-tuning the models cloze pretrains on CPU or one GPU needs no
sharding, and one process makes every score reproducible (same seed, same checkpoint, same task: the same figures,
seeded torch and numpy generators: shuffles, head initialisation and dropout).

    classification / regression   encoders + ELECTRA's discriminator: classification head on the first token
                                  (modeling/heads.py), cross-entropy / MSE; T5, BART: text to text, scored by the
                                  decoder's log-probability of each label word (restricted decoding)
    pseudo_perplexity             MLM models (ELECTRA: its generator): Salazar et al. 2020, "Masked Language Model
                                  Scoring" (awslabs/mlm-scoring): mask each token in turn, sum the log-probabilities
                                  of the true tokens; PPPL = exp(-sum / tokens). No training
    seq2seq_loss                  T5 / BART: the pretraining objective's loss (span corruption / denoising,
                                  data_pipeline/objectives.py, a fixed seed) on the task's text. No training

Metrics as GLUE defines them, from scikit-learn and scipy: accuracy, F1 (binary), Matthews correlation, Pearson and
Spearman. The recipe per task type is `Recipe.default` (docs/downstream.md), every field overridable.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from data_pipeline.hf_tokenizer import framing_ids
from data_pipeline.objectives import (
    ObjectiveError,
    Packed,
    T5Params,
    Vocab,
    build_objective,
    t5_fitting_lengths,
)
from data_pipeline.packing import pack_block, packer_for
from data_pipeline.sources import InputError
from data_pipeline.tasks import LOWER_IS_BETTER, Example, Task, encode_pair
from data_pipeline.tokenizer import SpecialIds
from modeling.config import ModelConfig
from modeling.heads import (
    EncoderForSequenceTask,
    Seq2SeqForSequenceTask,
    mlm_logits,
)
from modeling.registry import get_family


def framing_of(family: str) -> str:
    """The packing kind the family pretrains with (data_pipeline/packing.py; its FamilySpec.framing)."""
    return get_family(family).framing


class FinetuneError(InputError):
    """A checkpoint, tokenizer or recipe that cannot fine-tune on the task; the message says what to change."""


@dataclass
class TaskTokenizer:
    """The sentencepiece model the checkpoint was pretrained with, and how its data framed text."""

    model_file: Path
    framing: str
    special: SpecialIds
    sentinel_ids: list[int] = field(default_factory=list)


@dataclass
class Backbone:
    """A pretrained model, as cloze builds it (modeling/), with its tokenizer."""

    model: nn.Module
    config: ModelConfig
    tokenizer: TaskTokenizer
    source: str
    """What was loaded (run directory + tag, or export directory), for results.json."""
    step: int | None = None
    """The checkpoint's training step (None: an export)."""


@dataclass
class Recipe:
    """The fine-tuning recipe; `Recipe.default(task_type)` is the standard one, every field can be overridden."""

    lr: list[float] = field(default_factory=lambda: [3e-4])
    """Learning-rate grid: every value is run with every seed; the reported figures are the best lr by the mean
    of the primary dev metric (as GLUE papers report)."""
    epochs: int = 3
    """Passes over the training split."""
    batch_size: int = 32
    """Examples per optimizer step."""
    warmup_ratio: float = 0.1
    """Fraction of the steps with linear warm-up from 0; then linear decay to 0."""
    weight_decay: float = 0.01
    """AdamW weight decay (not on biases and norms)."""
    max_len: int = 128
    """Tokens per example, framing included; longer texts are truncated from their end (the longer one first)."""
    seeds: int = 3
    """Seeds 0..seeds-1: each is a fine-tuning run from the same checkpoint with its own head init, shuffles, dropout."""

    @classmethod
    def default(cls, task_type: str) -> Recipe:
        if task_type == "regression":
            return cls(lr=[3e-4], epochs=4)
        if task_type in ("pseudo_perplexity", "seq2seq_loss"):
            return cls(lr=[], epochs=0, seeds=1, max_len=64)
        return cls()

    def __post_init__(self) -> None:
        if self.epochs < 0 or self.batch_size < 1 or self.seeds < 1 or self.max_len < 8:
            raise FinetuneError(
                f"recipe epochs={self.epochs} batch={self.batch_size} seeds={self.seeds} max_len={self.max_len}: "
                "epochs >= 0, batch >= 1, seeds >= 1, max_len >= 8"
            )
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise FinetuneError(f"recipe warmup_ratio={self.warmup_ratio}: use a value in [0, 1)")
        if any(not (v > 0) for v in self.lr):
            raise FinetuneError(f"recipe lr={self.lr}: every learning rate must be > 0")


# ---- checks before any training -----------------------------------------------------------------------------------


def check_compatible(backbone: Backbone, task: Task) -> None:
    """The family can do the task type, and the tokenizer is the one the model was trained with."""
    fam, kind = backbone.config.family, task.spec.type
    spec = get_family(fam)
    ok = {  # encoder-decoders generate label words; encoders have an MLM head
        "classification": True,
        "regression": not spec.seq2seq,
        "pseudo_perplexity": not spec.seq2seq,
        "seq2seq_loss": spec.seq2seq,
    }[kind]
    if not ok:
        why = {
            "regression": "text-to-text models predict label words; give the task discrete labels (classification)",
            "pseudo_perplexity": "pseudo-perplexity needs a masked-LM head; score an encoder-decoder with "
            "type: seq2seq_loss",
            "seq2seq_loss": "it needs a decoder; score an MLM model with type: pseudo_perplexity",
        }.get(kind, "")
        raise FinetuneError(
            f"{backbone.source}: a {fam} checkpoint cannot fine-tune the {kind} task {task.source} ({why})"
        )
    import sentencepiece as spm

    tok = backbone.tokenizer
    sp = spm.SentencePieceProcessor(model_file=str(tok.model_file))
    cfg = backbone.config
    problems = []
    if sp.get_piece_size() != cfg.vocab_size:
        problems.append(f"its vocabulary has {sp.get_piece_size()} pieces, the model {cfg.vocab_size}")
    if tok.special.pad != cfg.pad_token_id:
        problems.append(f"its pad id is {tok.special.pad}, the model's {cfg.pad_token_id}")
    if spec.framing == "bart" and (tok.special.bos, tok.special.eos) != (cfg.bos_token_id, cfg.eos_token_id):
        problems.append(
            f"its <s>/</s> ids are {tok.special.bos}/{tok.special.eos}, the model's {cfg.bos_token_id}/{cfg.eos_token_id}"
        )
    if tok.framing != spec.framing:
        problems.append(
            f"it frames text as {tok.framing!r}, a {fam} model was pretrained on {spec.framing!r}"
        )
    if problems:
        raise FinetuneError(
            f"tokenizer mismatch: {tok.model_file} is not the tokenizer {backbone.source} was trained with: "
            + "; ".join(problems)
            + ". Use the tokenizer that wrote the run's shards (RUN_DIR/tokenizer/, or the export's spiece.model)"
        )
    if task.spec.type == "classification" and spec.seq2seq:
        words = [tuple(sp.encode(task.spec.word(lab))) for lab in task.spec.labels]
        if len(set(words)) != len(words) or any(not w for w in words):
            raise FinetuneError(
                f"{task.source}/task.yaml: the label words {[task.spec.word(x) for x in task.spec.labels]} do not "
                "tokenize to distinct non-empty pieces; set label_words to distinct words"
            )


# ---- encoding -----------------------------------------------------------------------------------------------------


@dataclass
class Batch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    token_type_ids: torch.Tensor | None
    labels: torch.Tensor


class Encoder:
    """Task text -> ids, framed exactly as the pretraining pipeline frames it (hf_tokenizer.framing_ids)."""

    def __init__(self, backbone: Backbone, task: Task, max_len: int) -> None:
        import sentencepiece as spm

        tok = backbone.tokenizer
        self.sp = spm.SentencePieceProcessor(model_file=str(tok.model_file))
        self.framing = framing_ids(tok.framing, tok.special)
        cfg = backbone.config
        self.pair_type = 1 if tok.framing == "encoder" and cfg.type_vocab_size >= 2 else 0
        self.uses_types = tok.framing == "encoder" and cfg.type_vocab_size > 0
        self.max_len = min(max_len, cfg.max_position_embeddings)
        self.pad = tok.special.pad
        self.task = task
        self.eos = tok.special.eos

    def ids(self, ex: Example) -> tuple[list[int], list[int]]:
        a = self.sp.encode(ex.text_a)
        b = self.sp.encode(ex.text_b) if ex.text_b is not None else None
        e = encode_pair(a, b, self.framing, self.max_len, self.pair_type)
        return e.input_ids, e.token_type_ids

    def label(self, ex: Example) -> float:
        if self.task.spec.type == "regression":
            return float(ex.label)  # type: ignore[arg-type]
        return float(self.task.spec.labels.index(str(ex.label)))

    def batch(self, rows: list[tuple[list[int], list[int]]], labels: list[float]) -> Batch:
        width = max(len(r[0]) for r in rows)
        ids = torch.full((len(rows), width), self.pad, dtype=torch.long)
        types = torch.zeros((len(rows), width), dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, (x, t) in enumerate(rows):
            ids[i, : len(x)] = torch.tensor(x)
            types[i, : len(t)] = torch.tensor(t)
            mask[i, : len(x)] = 1
        return Batch(ids, mask, types if self.uses_types else None, torch.tensor(labels))

    def label_words(self) -> torch.Tensor:
        """(C, L) each label word's pieces + </s>, padded with -100 (the decoder's targets)."""
        words = [[*self.sp.encode(self.task.spec.word(lab)), self.eos] for lab in self.task.spec.labels]
        out = torch.full((len(words), max(map(len, words))), -100, dtype=torch.long)
        for i, w in enumerate(words):
            out[i, : len(w)] = torch.tensor(w)
        return out


# ---- metrics ------------------------------------------------------------------------------------------------------


def compute_metrics(task: Task, predictions: np.ndarray, references: np.ndarray) -> dict[str, float]:
    """GLUE's metrics (scikit-learn, scipy). A correlation with constant predictions is undefined: reported 0."""
    out: dict[str, float] = {}
    if task.spec.type == "classification":
        from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

        out["accuracy"] = float(accuracy_score(references, predictions))
        out["matthews"] = float(matthews_corrcoef(references, predictions))
        if "f1" in task.spec.metrics:
            out["f1"] = float(f1_score(references, predictions, pos_label=1, zero_division=0.0))
        return out
    from scipy.stats import pearsonr, spearmanr

    constant = np.all(predictions == predictions[0]) or np.all(references == references[0])
    out["pearson"] = 0.0 if constant else float(pearsonr(predictions, references)[0])
    out["spearman"] = 0.0 if constant else float(spearmanr(predictions, references)[0])
    return {k: (0.0 if math.isnan(v) else v) for k, v in out.items()}


# ---- the loop -----------------------------------------------------------------------------------------------------


@contextmanager
def deterministic(seed: int) -> Iterator[None]:
    """One seeded run. Fine-tuning runs on the CPU, whose kernels are deterministic for a given thread count
    (`torch.use_deterministic_algorithms` would only add a 7 s import of torch._inductor); the global RNG state is
    restored after, so a run does not disturb its caller's."""
    state = torch.get_rng_state()
    torch.manual_seed(seed)
    try:
        yield
    finally:
        torch.set_rng_state(state)


def _optimizer(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "norm" in name.lower() else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr)


def _schedule(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


@dataclass
class RunResult:
    metrics: dict[str, float]
    seconds: float
    train_examples_seen: int
    curve: list[dict[str, float]] = field(default_factory=list)
    """Dev metrics after each epoch."""


class SequenceTaskRunner:
    """Classification / regression: one fine-tuning run per (lr, seed)."""

    def __init__(self, backbone: Backbone, task: Task, recipe: Recipe) -> None:
        self.backbone, self.task, self.recipe = backbone, task, recipe
        self.enc = Encoder(backbone, task, recipe.max_len)
        self.train = [self.enc.ids(e) for e in task.train]
        self.train_y = [self.enc.label(e) for e in task.train]
        self.dev = [self.enc.ids(e) for e in task.dev]
        self.dev_y = np.asarray([self.enc.label(e) for e in task.dev])
        self.seq2seq = backbone.config.is_seq2seq
        if self.seq2seq:
            self.words = self.enc.label_words()

    def build(self) -> nn.Module:
        pretrained = copy.deepcopy(self.backbone.model)
        if self.seq2seq:
            tok = self.backbone.tokenizer.special
            start = getattr(tok, get_family(self.backbone.config.family).decoder_start)  # loader.collator_for
            return Seq2SeqForSequenceTask(pretrained, start, tok.pad)
        return EncoderForSequenceTask(pretrained, self.task.spec.num_outputs)

    def loss(self, model: nn.Module, b: Batch) -> torch.Tensor:
        if self.seq2seq:
            targets = self.words[b.labels.long()]  # (B, L)
            return model.loss(b.input_ids, b.attention_mask, targets)  # type: ignore[operator]
        out = model(b.input_ids, b.attention_mask, b.token_type_ids)
        if self.task.spec.type == "regression":
            return F.mse_loss(out.squeeze(-1).float(), b.labels.float())
        return F.cross_entropy(out.float(), b.labels.long())

    @torch.no_grad()
    def predict(self, model: nn.Module, batch_size: int = 64) -> np.ndarray:
        model.eval()
        preds = []
        for i in range(0, len(self.dev), batch_size):
            b = self.enc.batch(self.dev[i : i + batch_size], list(self.dev_y[i : i + batch_size]))
            if self.seq2seq:
                scores = model.label_scores(b.input_ids, b.attention_mask, self.words)  # type: ignore[operator]
                preds.append(scores.argmax(-1).numpy())
            else:
                out = model(b.input_ids, b.attention_mask, b.token_type_ids).float()
                preds.append(
                    out.squeeze(-1).numpy() if self.task.spec.type == "regression" else out.argmax(-1).numpy()
                )
        model.train()
        return np.concatenate(preds)

    def run(self, lr: float, seed: int) -> RunResult:
        r = self.recipe
        with deterministic(seed):
            model = self.build()
            model.train()
            opt = _optimizer(model, lr, r.weight_decay)
            n = len(self.train)
            per_epoch = math.ceil(n / r.batch_size)
            total = per_epoch * r.epochs
            warmup = int(r.warmup_ratio * total)
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _schedule(s, total, warmup))
            rng = np.random.default_rng(seed)
            curve, seen, t0 = [], 0, time.perf_counter()
            for _ in range(r.epochs):
                order = rng.permutation(n)
                for i in range(0, n, r.batch_size):
                    idx = order[i : i + r.batch_size]
                    b = self.enc.batch([self.train[j] for j in idx], [self.train_y[j] for j in idx])
                    loss = self.loss(model, b)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                    opt.step()
                    sched.step()
                    seen += len(idx)
                curve.append(compute_metrics(self.task, self.predict(model), self.dev_y))
            seconds = time.perf_counter() - t0
            metrics = curve[-1] if curve else compute_metrics(self.task, self.predict(model), self.dev_y)
        return RunResult(metrics, seconds, seen, curve)


# ---- text scoring -------------------------------------------------------------------------------------------------


@torch.no_grad()
def pseudo_perplexity(backbone: Backbone, task: Task, max_len: int, chunk: int = 128) -> dict[str, float]:
    """Salazar et al. 2020 (awslabs/mlm-scoring `MLMScorer`): each non-special token of each framed text is masked
    in turn; PLL = sum of log p(true token | the rest); PPPL = exp(-sum PLL / tokens)."""
    enc = Encoder(backbone, task, max_len)
    model = backbone.model.eval()
    special = set(backbone.tokenizer.special.all()) | set(backbone.tokenizer.sentinel_ids)
    mask_id = backbone.tokenizer.special.mask
    total, count = 0.0, 0
    for ex in task.dev:
        ids, types = enc.ids(ex)
        x = torch.tensor(ids)
        positions = [i for i, t in enumerate(ids) if t not in special]
        for s in range(0, len(positions), chunk):
            pos = torch.tensor(positions[s : s + chunk])
            batch = x.repeat(len(pos), 1)  # (P, T): row k masks position pos[k]
            batch[torch.arange(len(pos)), pos] = mask_id
            tt = torch.tensor(types).repeat(len(pos), 1) if enc.uses_types else None
            logits = mlm_logits(model, batch, None, tt).float()  # (P, T, V)
            logp = logits[torch.arange(len(pos)), pos].log_softmax(-1)  # (P, V)
            total += float(logp.gather(1, x[pos].unsqueeze(1)).sum())
            count += len(pos)
    return {"pseudo_perplexity": math.exp(-total / max(1, count)), "tokens": float(count)}


def _pretraining_objective(name: str, vocab: Vocab, seq_len: int) -> Any:
    """The family's own objective at `seq_len`; T5's span corruption fits only some lengths: the nearest below."""
    try:
        return build_objective(name, vocab, seq_len)
    except ObjectiveError:
        if name != "t5":  # objective-specific (no family dispatch): only T5 has lengths it cannot produce
            raise
        return build_objective(name, vocab, t5_fitting_lengths(seq_len, T5Params())[0])


@torch.no_grad()
def seq2seq_loss(backbone: Backbone, task: Task, seq_len: int, seed: int = 0) -> dict[str, float]:
    """The pretraining objective's held-out loss on the task's text: the texts are packed as pretraining packs
    them (packing.py) and corrupted by the family's objective (objectives.py: T5 span corruption, BART denoising)
    with a fixed seed; token-weighted mean cross-entropy of the targets."""
    import sentencepiece as spm

    tok, cfg = backbone.tokenizer, backbone.config
    sp = spm.SentencePieceProcessor(model_file=str(tok.model_file))
    st = tok.special
    vocab = st.vocab(cfg.vocab_size, list(tok.sentinel_ids))
    spec = get_family(cfg.family)
    objective = _pretraining_objective(spec.objectives[0], vocab, seq_len)
    length = getattr(objective, "raw_len", seq_len)  # T5 corrupts raw_len packed tokens into seq_len ones
    docs = [[sp.encode(ex.text_a)] + ([sp.encode(ex.text_b)] if ex.text_b else []) for ex in task.dev]
    block = pack_block(docs, packer_for(tok.framing, length, vocab))
    if len(block) == 0:
        raise FinetuneError(f"{task.source}: the dev text is shorter than one {length}-token sequence")
    model = backbone.model.eval()
    start = getattr(st, spec.decoder_start)
    total, count = 0.0, 0
    for i in range(len(block)):
        sample = objective(Packed(block.tokens[i], block.line_ends(i)), np.random.default_rng([seed, i]))
        ids = torch.tensor(sample["input_ids"], dtype=torch.long)[None]
        labels = torch.tensor(sample["labels"], dtype=torch.long)[None]
        dec = torch.full_like(labels, st.pad)
        dec[:, 0] = start
        dec[:, 1:] = labels[:, :-1]
        mask = (ids != st.pad).long()
        logits = model(ids, dec, mask).logits.float()
        total += float(F.cross_entropy(logits[0], labels[0], reduction="sum"))
        count += labels.numel()
    loss = total / count
    return {"loss": loss, "perplexity": math.exp(loss), "tokens": float(count)}


# ---- the whole job ------------------------------------------------------------------------------------------------


def _mean_std(runs: list[dict[str, float]]) -> tuple[dict[str, float], dict[str, float]]:
    keys = runs[0].keys()
    mean = {k: float(np.mean([r[k] for r in runs])) for k in keys}
    std = {k: float(np.std([r[k] for r in runs], ddof=1)) if len(runs) > 1 else 0.0 for k in keys}
    return mean, std


def finetune(
    backbone: Backbone,
    task: Task,
    recipe: Recipe | None = None,
    out: str | Path | None = None,
    log: Any = None,
) -> dict[str, Any]:
    """Fine-tune (or score) `backbone` on `task` with every (lr, seed) of the recipe; returns results.json's
    content and writes it (plus TensorBoard scalars under out/tensorboard) when `out` is given."""
    recipe = recipe or Recipe.default(task.spec.type)
    check_compatible(backbone, task)
    say = log or (lambda _msg: None)
    spec = task.spec
    result: dict[str, Any] = {
        "task": spec.name,
        "source": task.source,
        "type": spec.type,
        "metric": spec.metric,
        "checkpoint": backbone.source,
        "step": backbone.step,
        "family": backbone.config.family,
        "recipe": asdict(recipe),
        "train_examples": len(task.train),
        "dev_examples": len(task.dev),
    }
    t0 = time.perf_counter()
    if spec.type in ("pseudo_perplexity", "seq2seq_loss"):
        result.update(_score(backbone, task, recipe, say))
    else:
        result.update(_sweep(backbone, task, recipe, say))
    result["seconds"] = time.perf_counter() - t0
    if out is not None:
        write_results(result, Path(out))
    return result


def _score(backbone: Backbone, task: Task, recipe: Recipe, say: Any) -> dict[str, Any]:
    """A scoring task (no training): pseudo-perplexity (encoders) or the pretraining objective's loss (seq2seq)."""
    spec = task.spec
    with deterministic(0):
        if spec.type == "pseudo_perplexity":
            scores = pseudo_perplexity(
                backbone, task, min(recipe.max_len, backbone.config.max_position_embeddings)
            )
        else:
            scores = seq2seq_loss(backbone, task, recipe.max_len)
    say(f"{spec.name}: {spec.metric} {scores[spec.metric]:.4f}")
    return dict(seeds={"0": scores}, mean=scores, std={k: 0.0 for k in scores}, lower_is_better=True)


def _sweep(backbone: Backbone, task: Task, recipe: Recipe, say: Any) -> dict[str, Any]:
    """Every (lr, seed) of the recipe; the best lr by its mean over seeds, with the majority-class baseline."""
    spec = task.spec
    if not recipe.lr:
        raise FinetuneError(f"recipe lr is empty: a {spec.type} task needs at least one learning rate")
    runner = SequenceTaskRunner(backbone, task, recipe)
    per_lr: dict[str, Any] = {}
    seen, seconds = 0, 0.0
    for lr in recipe.lr:
        runs: dict[str, RunResult] = {}
        for seed in range(recipe.seeds):
            r = runs[str(seed)] = runner.run(lr, seed)
            seen += r.train_examples_seen
            seconds += r.seconds
            shown = "  ".join(f"{k} {v:.4f}" for k, v in r.metrics.items())
            say(f"{spec.name}: lr {lr:g} seed {seed}: {shown}  ({r.seconds:.1f}s)")
        mean, std = _mean_std([r.metrics for r in runs.values()])
        per_lr[f"{lr:g}"] = {
            "seeds": {s: r.metrics for s, r in runs.items()},
            "curves": {s: r.curve for s, r in runs.items()},
            "mean": mean,
            "std": std,
        }
    sign = -1.0 if spec.metric in LOWER_IS_BETTER else 1.0
    best = max(per_lr, key=lambda k: sign * per_lr[k]["mean"][spec.metric])
    m, sd = per_lr[best]["mean"][spec.metric], per_lr[best]["std"][spec.metric]
    say(f"{spec.name}: {spec.metric} {m:.4f} +/- {sd:.4f} (lr {best}, {recipe.seeds} seeds)")
    return dict(
        majority=task.majority_score(),
        lr=per_lr,
        best_lr=float(best),
        seeds=per_lr[best]["seeds"],
        mean=per_lr[best]["mean"],
        std=per_lr[best]["std"],
        lower_is_better=spec.metric in LOWER_IS_BETTER,
        train_examples_per_s=seen / seconds if seconds else 0.0,
    )


def write_results(result: dict[str, Any], out: Path) -> None:
    from torch.utils.tensorboard import SummaryWriter

    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    writer = SummaryWriter(str(out / "tensorboard"))
    try:
        for lr, entry in result.get("lr", {}).items():
            for seed, curve in entry["curves"].items():
                for epoch, metrics in enumerate(curve, 1):
                    for k, v in metrics.items():
                        writer.add_scalar(f"finetune/lr{lr}/seed{seed}/{k}", v, epoch)
        for k, v in result["mean"].items():
            writer.add_scalar(f"finetune/mean/{k}", v, 0)
            writer.add_scalar(f"finetune/std/{k}", result["std"][k], 0)
    finally:
        writer.close()
