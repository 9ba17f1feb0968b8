"""Model throughput and memory, side by side with transformers in one run (alternating A/B rounds).

    python benchmarks/model_throughput.py [--rounds 3] [--quick]

1. tokens/s of a full training step (forward, backward, AdamW) of cloze's BERT vs transformers' BertForMaskedLM of
   the same shape, batch, sequence length and masking (15%); goal >= 1.5x;
2. the same for cloze's DeBERTa-v3 vs DebertaV2ForMaskedLM (goal >= 1.3x) and T5 vs T5ForConditionalGeneration
   (span-corruption shapes);
   the cost of a DistilBERT distillation step (student + frozen teacher forward + the three-term loss) relative to a
   plain MLM step of the same student;
3. peak memory of a 12-layer BERT-base step at seq 512 with vs without activation checkpointing (goal <= 0.5),
   each measured in a fresh process: the kernel's peak-RSS counter is reset after a warm-up step, then one step runs.

    python benchmarks/model_throughput.py --families [FAMILY ...] [--runs 2] [--dry]
    python benchmarks/model_throughput.py --profile FAMILY [--top 25]

4. `--families`: every registered family against its transformers class (`CASES`: BERT-base and DistilBERT-base as
   they are, the other encoders at 12 layers of width 256 with their own vocabularies, T5 / mT5 small, BART base),
   a full training step each side, `--runs` medians of `--rounds` alternating rounds, the ratio of each run; `--dry` runs every row at a tiny shape with one round (tests/test_model_throughput.py);
   `--profile FAMILY`: torch.profiler (record_shapes) of one step of each side, ops by self CPU time.

Both sides use torch's fused AdamW (transformers' Trainer default on torch >= 2.8, and cloze's). Runs on CPU or GPU
(bf16 autocast on GPU with --bf16).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from modeling import ModelConfig, build_model  # noqa: E402
from modeling.hf import hf_model  # noqa: E402
from modeling.registry import FAMILIES  # noqa: E402


def masked_batch(B: int, T: int, V: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(107, V, (B, T), generator=g)
    labels = torch.where(torch.rand(B, T, generator=g) < 0.15, ids, torch.full_like(ids, -100))
    return ids.to(device), labels.to(device)


def _optimizers(ours: torch.nn.Module, theirs: torch.nn.Module) -> tuple[torch.optim.Optimizer, ...]:
    return tuple(torch.optim.AdamW(m.parameters(), lr=1e-4, fused=True) for m in (ours, theirs))


def _step(
    loss_fn: Callable[[], torch.Tensor], opt: torch.optim.Optimizer, device: str, bf16: bool
) -> Callable:
    """A training step: loss under (optional) bf16 autocast, backward, fused AdamW, grads dropped."""

    def step() -> None:
        with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
            loss = loss_fn()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def _pair(cfg: ModelConfig, device: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    """cloze's pretraining model and transformers' model of the family (the same weights), both in train mode."""
    torch.manual_seed(0)
    ours = build_model(cfg).to(device).train()
    theirs = hf_model(build_model(cfg), cfg).to(device).train()
    return ours, theirs


def mlm_steps(cfg: ModelConfig, B: int, T: int, device: str, bf16: bool):
    """Masked-LM encoders (BERT, RoBERTa, ALBERT, DeBERTa, DistilBERT, Longformer, XLM-R, XLM): cloze's model, whose
    head runs at the labelled positions, against the family's transformers *ForMaskedLM / *WithLMHeadModel, whose
    loss comes from `labels` (the head over every position). Returns (cloze step, transformers step, tokens)."""
    ours, theirs = _pair(cfg, device)
    ids, labels = masked_batch(B, T, cfg.vocab_size, device)
    opt_a, opt_b = _optimizers(ours, theirs)

    def a() -> torch.Tensor:
        out = ours(ids, labels=labels)
        return F.cross_entropy(out.logits.float(), out.targets)

    def b() -> torch.Tensor:
        return theirs(input_ids=ids, labels=labels).loss

    return _step(a, opt_a, device, bf16), _step(b, opt_b, device, bf16), B * T


def rtd_steps(cfg: ModelConfig, B: int, T: int, device: str, bf16: bool):
    """Replaced-token detection (ELECTRA, DeBERTa-v3 RTD, joint loss): cloze's generator + discriminator in one
    model against transformers' generator (ElectraForMaskedLM / DebertaV2ForMaskedLM, MLM loss from `labels`) and
    discriminator (ElectraForPreTraining / DebertaV2Model + the RTD head); replacements sampled from each side's own
    generator logits at the masked positions (modeling/electra.py `sample_replacements`), loss MLM + rtd_weight x
    binary cross-entropy."""
    from modeling.electra import rtd_loss, sample_replacements

    torch.manual_seed(0)
    ours = build_model(cfg).to(device).train()
    source = build_model(cfg)
    disc, gen = (hf_model(source, cfg, generator=g).to(device).train() for g in (False, True))
    ids, labels = masked_batch(B, T, cfg.vocab_size, device)
    opt_a = torch.optim.AdamW(ours.parameters(), lr=1e-4, fused=True)
    opt_b = torch.optim.AdamW([*disc.parameters(), *gen.parameters()], lr=1e-4, fused=True)
    masked = labels != -100

    def a() -> torch.Tensor:
        return ours(ids, labels).loss

    def b() -> torch.Tensor:
        g = gen(input_ids=ids, labels=labels)
        replaced = sample_replacements(g.logits[masked], ids, labels, None)
        if hasattr(disc, "mask_predictions"):  # DeBERTa-v3 RTD: DebertaV2Model + the reference's head
            logits = disc.mask_predictions(disc(input_ids=replaced.input_ids).last_hidden_state)
        else:
            logits = disc(input_ids=replaced.input_ids).logits
        return g.loss + cfg.rtd_weight * rtd_loss(logits, replaced.labels, replaced.real)

    return _step(a, opt_a, device, bf16), _step(b, opt_b, device, bf16), B * T


def seq2seq_steps(cfg: ModelConfig, B: int, S: int, device: str, bf16: bool, target_len: int | None = None):
    """Encoder-decoders (T5, mT5, BART): cross-entropy of the decoder's logits over the whole vocabulary at every
    target position, cloze vs the family's *ForConditionalGeneration (loss from `labels`). target_len: None = T5's
    span-corruption target length for inputs of S tokens."""
    from data_pipeline.objectives import T5Params, t5_raw_length

    if target_len is None:
        _, target_len = t5_raw_length(S, T5Params())
    ours, theirs = _pair(cfg, device)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(107, cfg.vocab_size, (B, S), generator=g).to(device)
    labels = torch.randint(107, cfg.vocab_size, (B, target_len), generator=g).to(device)
    dec = torch.cat([torch.zeros_like(labels[:, :1]), labels[:, :-1]], 1)
    opt_a, opt_b = _optimizers(ours, theirs)

    def a() -> torch.Tensor:
        logits = ours(ids, dec).logits
        return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1))

    def b() -> torch.Tensor:
        return theirs(input_ids=ids, decoder_input_ids=dec, labels=labels).loss

    return _step(a, opt_a, device, bf16), _step(b, opt_b, device, bf16), B * (S + target_len)


def distill_steps(teacher_layers: int, B: int, T: int, device: str, bf16: bool, tmp: Path):
    """A DistilBERT distillation step (student + frozen teacher forward, the three-term loss) and a plain MLM step
    of the same student alone; the teacher: a random BertForMaskedLM of BERT-base width saved to `tmp`."""
    from trainer.losses import DistillTask, MLMTask

    teacher_cfg = ModelConfig.from_preset("bert_base", vocab_size=30522, num_layers=teacher_layers)
    hf_model(build_model(teacher_cfg), teacher_cfg).save_pretrained(str(tmp))
    layers = [0, 2, 4, 7, 9, 11] if teacher_layers == 12 else list(range(0, teacher_layers, 2))
    distil = ModelConfig.from_preset(
        "distilbert_base", vocab_size=30522, num_layers=len(layers), student_layers=layers, teacher=str(tmp)
    )
    plain = ModelConfig.from_preset("distilbert_base", vocab_size=30522, num_layers=len(layers))
    torch.manual_seed(0)
    ours, alone = build_model(distil).to(device).train(), build_model(plain).to(device).train()
    ids, labels = masked_batch(B, T, 30522, device)
    batch = {"input_ids": ids, "labels": labels, "attention_mask": torch.ones_like(ids)}
    trained = [p for p in ours.parameters() if p.requires_grad]
    opt_a = torch.optim.AdamW(trained, lr=1e-4, fused=True)
    opt_b = torch.optim.AdamW(alone.parameters(), lr=1e-4, fused=True)
    task_a, task_b = DistillTask(distil), MLMTask()

    def step(model, task, opt) -> None:
        with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
            loss = task(model, batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return (lambda: step(ours, task_a, opt_a)), (lambda: step(alone, task_b, opt_b)), B * T, len(layers)


# ---- every family against its transformers class (--families) -----------------------------------------------------

SMALL: dict[str, Any] = dict(hidden_size=256, num_heads=4, intermediate_size=1024)
"""The 12-layer width of the CPU-sized family rows (ELECTRA-small's blocks; BERT-base's own row keeps 768)."""
TINY: dict[str, Any] = dict(
    hidden_size=32,
    num_heads=2,
    intermediate_size=128,
    num_layers=2,
    vocab_size=211,
    max_position_embeddings=64,
)
"""--dry: every family at this size (a smoke run that keeps the rows from rotting)."""
DEBERTA_TINY: dict[str, Any] = dict(position_buckets=16, max_relative_positions=64)


@dataclass(frozen=True)
class Case:
    """One family's row: cloze's model from `preset` + `overrides` against transformers' class(es) `hf`."""

    kind: str
    """'mlm' (mlm_steps), 'rtd' (rtd_steps) or 'seq2seq' (seq2seq_steps)."""
    hf: str
    preset: str
    overrides: dict[str, Any]
    batch: int
    seq: int
    goal: float
    target: int | None = None
    """seq2seq: target length (None = T5's span-corruption length for `seq` inputs)."""
    dry: dict[str, Any] = field(default_factory=dict)
    """Overrides on top of TINY for --dry."""

    def config(self, dry: bool) -> ModelConfig:
        extra = {**TINY, **self.dry} if dry else {}
        return ModelConfig.from_preset(self.preset, **{**self.overrides, **extra})

    def shape(self, cfg: ModelConfig, B: int, T: int, target: int) -> str:
        width = f"H {cfg.hidden_size}" + (f", E {cfg.emb_size}" if cfg.emb_size != cfg.hidden_size else "")
        if self.kind == "seq2seq":
            return f"{cfg.num_layers}+{cfg.decoder_layers} layers, {width}, V {cfg.vocab_size}, batch {B}, inputs {T} / targets {target}"
        return f"{cfg.num_layers} layers, {width}, V {cfg.vocab_size}, batch {B} x {T}"


EMD_OFF = dict(
    enhanced_mask_decoder=False
)  # transformers has no Enhanced Mask Decoder: both sides run the encoder
CASES: dict[str, Case] = {
    "bert": Case("mlm", "BertForMaskedLM", "bert_base", {}, 4, 128, 1.5),
    "roberta": Case("mlm", "RobertaForMaskedLM", "roberta_base", {**SMALL, "vocab_size": 50265}, 8, 128, 1.5),
    "albert": Case(
        "mlm",
        "AlbertForMaskedLM",
        "albert_base",
        {**SMALL, "vocab_size": 30000},
        8,
        128,
        1.5,
        dry={"embedding_size": 16},
    ),
    "electra": Case(
        "rtd",
        "ElectraForMaskedLM + ElectraForPreTraining",
        "electra_small",
        {},
        8,
        128,
        1.5,
        dry={"embedding_size": 16},
    ),
    "deberta": Case(
        "mlm", "DebertaV2ForMaskedLM", "deberta_v3_base", {**SMALL, **EMD_OFF}, 4, 128, 1.5, dry=DEBERTA_TINY
    ),
    "deberta_v1": Case("mlm", "DebertaForMaskedLM", "deberta_v1_base", {**SMALL, **EMD_OFF}, 4, 128, 1.5),
    "deberta_rtd": Case(
        "rtd",
        "DebertaV2ForMaskedLM + DebertaV2Model",
        "deberta_v3_base_rtd",
        {**SMALL, **EMD_OFF},
        4,
        128,
        1.5,
        dry=DEBERTA_TINY,
    ),
    "distilbert": Case("mlm", "DistilBertForMaskedLM", "distilbert_base", {}, 4, 128, 1.5),
    "longformer": Case(
        "mlm",
        "LongformerForMaskedLM",
        "longformer_base_4096",
        {**SMALL, "attention_window": [128]},
        2,
        512,
        1.5,
        dry={"attention_window": [8], "max_position_embeddings": 64},
    ),
    "xlm_roberta": Case("mlm", "XLMRobertaForMaskedLM", "xlmr_base", SMALL, 2, 128, 1.5),
    "xlm": Case("mlm", "XLMWithLMHeadModel", "xlm_base", {**SMALL, "vocab_size": 30522}, 8, 128, 1.5),
    "t5": Case(
        "seq2seq",
        "T5ForConditionalGeneration",
        "t5_small",
        {"vocab_size": 32128},
        8,
        128,
        1.3,
        dry={"d_kv": 16},
    ),
    "mt5": Case("seq2seq", "MT5ForConditionalGeneration", "mt5_small", {}, 4, 128, 1.3, dry={"d_kv": 16}),
    "bart": Case(
        "seq2seq", "BartForConditionalGeneration", "bart_base", {"vocab_size": 50265}, 2, 128, 1.3, target=128
    ),
}
"""One row per registered family (a family registered without a row here stops `--families`: add its row)."""


def family_steps(name: str, dry: bool, device: str, bf16: bool):
    """(cloze step, transformers step, tokens per step, shape text) of family `name`'s row."""
    case = CASES[name]
    cfg = case.config(dry)
    B, T = (2, 16) if dry else (case.batch, case.seq)
    if case.kind == "seq2seq":
        target = 8 if dry else case.target
        a, b, tokens = seq2seq_steps(cfg, B, T, device, bf16, target)
        target = tokens // B - T
    else:
        a, b, tokens = (mlm_steps if case.kind == "mlm" else rtd_steps)(cfg, B, T, device, bf16)
        target = 0
    return a, b, tokens, case.shape(cfg, B, T, target)


def run_families(names: list[str], runs: int, rounds: int, dry: bool, device: str, bf16: bool) -> list[dict]:
    """Each family's row: `runs` runs of `rounds` alternating rounds (one warm-up step each side first): tokens/s
    from each run's median step times, the ratio = the median over the run's rounds of transformers' step time
    over cloze's in that round (robust to the load of a shared machine, which changes between rounds)."""
    registered = sorted(n for n, spec in FAMILIES.items() if spec.hf is not None)
    missing = [n for n in registered if n not in CASES]
    if missing:
        raise SystemExit(f"families without a row in CASES: {', '.join(missing)} (add one)")
    rows = []
    print(
        f"| family | transformers | shape | cloze tokens/s | transformers tokens/s | ratio ({' / '.join(f'run {i + 1}' for i in range(runs))}) | goal |"
    )
    print("|---|---|---|---|---|---|---|")
    for name in names or list(CASES):
        a, b, tokens, shape = family_steps(name, dry, device, bf16)
        times, ratios = [], []
        for i in range(runs):
            pairs: list[tuple[float, float]] = []
            times.append(alternate(a, b, rounds, device, warmup=i == 0, pairs=pairs))
            # the median of each round's ratio: a cloze step and a transformers step back to back see the same load
            ratios.append(statistics.median(tb / ta for ta, tb in pairs))
        ours = [tokens / ta for ta, _ in times]
        theirs = [tokens / tb for _, tb in times]
        rows.append(dict(family=name, ours=ours, theirs=theirs, ratios=ratios))
        print(
            f"| {name} | {CASES[name].hf} | {shape} | {' / '.join(f'{x:,.0f}' for x in ours)} | "
            f"{' / '.join(f'{x:,.0f}' for x in theirs)} | {' / '.join(f'{r:.2f}' for r in ratios)} | "
            f">= {CASES[name].goal} |",
            flush=True,
        )
        del a, b
        gc.collect()
    return rows


def profile_family(name: str, dry: bool, device: str, bf16: bool, top: int) -> None:
    """torch.profiler over one step of each side (after a warm-up step), ops by self CPU time with input shapes."""
    from torch.profiler import ProfilerActivity, profile

    a, b, tokens, shape = family_steps(name, dry, device, bf16)
    print(f"profile of {name}: {shape}")
    for label, fn in (("cloze", a), ("transformers", b)):
        fn()
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            fn()
        table = prof.key_averages(group_by_input_shape=True).table(
            sort_by="self_cpu_time_total", row_limit=top, max_name_column_width=40, max_shapes_column_width=70
        )
        print(f"\n{label} ({tokens} tokens)\n{table}")


def alternate(
    a, b, rounds: int, device: str, warmup: bool = True, pairs: list[tuple[float, float]] | None = None
) -> tuple[float, float]:
    """Medians of `rounds` timed steps of a and b, alternating (a, b, a, b, ...); `pairs` gets each round's times."""

    def timed(fn) -> float:
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t

    if warmup:
        a(), b()  # warm-up: allocations, optimizer state, kernels
    ta, tb = [], []
    for _ in range(rounds):
        ta.append(timed(a))
        tb.append(timed(b))
        if pairs is not None:
            pairs.append((ta[-1], tb[-1]))
    return statistics.median(ta), statistics.median(tb)


def memory_child(checkpointing: bool, layers: int, B: int, T: int) -> None:
    """Runs in a fresh process: prints the peak RSS (bytes) of one training step after a warm-up step."""
    cfg = ModelConfig.from_preset(
        "bert_base", vocab_size=30522, num_layers=layers, activation_checkpointing=checkpointing
    )
    model = build_model(cfg).train()
    ids, labels = masked_batch(B, T, cfg.vocab_size, "cpu")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)

    def step() -> None:
        out = model(ids, labels=labels)
        F.cross_entropy(out.logits, out.targets).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS counter (VmHWM)
    step()
    status = Path("/proc/self/status").read_text()
    hwm = next(int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmHWM"))
    print(json.dumps({"peak": hwm}))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="smaller shapes, for a smoke run")
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast (GPU)")
    ap.add_argument(
        "--families",
        nargs="*",
        metavar="FAMILY",
        help="every family (or those named) against its transformers class, instead of the rows below",
    )
    ap.add_argument("--runs", type=int, default=2, help="--families: timed runs per family (each a median)")
    ap.add_argument("--dry", action="store_true", help="--families / --profile: tiny shapes, 1 round")
    ap.add_argument(
        "--profile", metavar="FAMILY", help="torch.profiler of one step of each side of FAMILY's row"
    )
    ap.add_argument("--top", type=int, default=25, help="--profile: rows of each table")
    ap.add_argument("--memory-child", nargs=4, metavar=("CKPT", "LAYERS", "B", "T"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.memory_child:
        ck, layers, B, T = args.memory_child
        memory_child(ck == "1", int(layers), int(B), int(T))
        return
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.profile:
        profile_family(args.profile, args.dry, device, args.bf16, args.top)
        return
    if args.families is not None:
        rounds = 1 if args.dry else args.rounds
        print(
            f"device {device} ({torch.get_num_threads()} threads), torch {torch.__version__}, rounds {rounds}, "
            f"runs {args.runs}{' (dry: tiny shapes)' if args.dry else ''}"
        )
        print()
        run_families(args.families, args.runs, rounds, args.dry, device, args.bf16)
        return
    layers = 4 if args.quick else 12
    print(
        f"device {device} ({torch.get_num_threads()} threads), torch {torch.__version__}, rounds {args.rounds}"
    )
    print()
    print("| model | shape | cloze tokens/s | transformers tokens/s | ratio | goal |")
    print("|---|---|---|---|---|---|")
    # 4 layers: the BERT-base-width shape of docs/environment.md; 12: BERT-base itself.
    for depth in sorted({4, layers}):
        bert = ModelConfig.from_preset("bert_base", vocab_size=30522, num_layers=depth)
        a, b, tokens = mlm_steps(bert, 16, 128, device, args.bf16)
        ta, tb = alternate(a, b, args.rounds, device)
        print(
            f"| BERT (BertForMaskedLM) | {depth} layers, H 768, V 30522, batch 16 x 128, 15% masked | "
            f"{tokens / ta:,.0f} | {tokens / tb:,.0f} | {tb / ta:.2f} | >= 1.5 |"
        )
        del a, b
    # DeBERTa-v3 (disentangled attention, 256 log buckets, shared keys) against DebertaV2ForMaskedLM. transformers
    # has no Enhanced Mask Decoder, so both run the encoder path (EMD off) for the same computation.
    deb_layers = 2 if args.quick else 4
    deberta = ModelConfig.from_preset(
        "deberta_v3_base", vocab_size=32000, num_layers=deb_layers, enhanced_mask_decoder=False
    )
    a, b, tokens = mlm_steps(deberta, 16, 128, device, args.bf16)
    ta, tb = alternate(a, b, args.rounds, device)
    print(
        f"| DeBERTa-v3 (DebertaV2ForMaskedLM) | {deb_layers} layers, H 768, V 32000, batch 16 x 128, 15% masked, "
        f"buckets 256 | {tokens / ta:,.0f} | {tokens / tb:,.0f} | {tb / ta:.2f} | >= 1.3 |"
    )
    del a, b
    t5 = ModelConfig.from_preset("t5_small", vocab_size=32128, num_layers=4 if args.quick else 8)
    a, b, tokens = seq2seq_steps(t5, 16, 128, device, args.bf16)
    ta, tb = alternate(a, b, args.rounds, device)
    print(
        f"| T5 v1.1 (T5ForConditionalGeneration) | {t5.num_layers}+{t5.decoder_layers} layers, d 512, V 32128, "
        f"batch 16, inputs 128 / targets 29 | {tokens / ta:,.0f} | {tokens / tb:,.0f} | {tb / ta:.2f} | |"
    )
    del a, b
    import tempfile

    teacher_layers = 4 if args.quick else 12
    with tempfile.TemporaryDirectory() as tmp:
        a, b, tokens, student_layers = distill_steps(teacher_layers, 16, 128, device, args.bf16, Path(tmp))
        ta, tb = alternate(a, b, args.rounds, device)
    print()
    print("| step | shape | distillation tokens/s | student MLM alone tokens/s | cost of distillation |")
    print("|---|---|---|---|---|")
    print(
        f"| DistilBERT: student + frozen teacher, loss 5 x T^2 KL + 2 x MLM + 1 x cos | student {student_layers} "
        f"layers from a {teacher_layers}-layer teacher, H 768, V 30522, batch 16 x 128 | {tokens / ta:,.0f} | "
        f"{tokens / tb:,.0f} | {ta / tb:.2f}x the MLM step |"
    )
    del a, b
    if device == "cpu" and Path("/proc/self/clear_refs").exists():
        B, T = (2, 256) if args.quick else (8, 512)
        peaks = {}
        for ck in ("0", "1"):
            out = subprocess.run(
                [sys.executable, __file__, "--memory-child", ck, str(layers), str(B), str(T)],
                capture_output=True,
                text=True,
                check=True,
                env=dict(os.environ),
            )
            peaks[ck] = json.loads(out.stdout.strip().splitlines()[-1])["peak"]
        print()
        print("| peak memory of a training step | with checkpointing | without | ratio | goal |")
        print("|---|---|---|---|---|")
        print(
            f"| BERT-base {layers} layers, batch {B} x {T} (process peak RSS) | {peaks['1'] / 2**30:.2f} GiB | "
            f"{peaks['0'] / 2**30:.2f} GiB | {peaks['1'] / peaks['0']:.2f} | <= 0.5 |"
        )


if __name__ == "__main__":
    main()
