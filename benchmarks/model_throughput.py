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

Both sides use torch's fused AdamW (transformers' Trainer default on torch >= 2.8, and cloze's). Runs on CPU or GPU
(bf16 autocast on GPU with --bf16).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from modeling import ModelConfig, build_model  # noqa: E402
from modeling.hf import hf_model  # noqa: E402


def masked_batch(B: int, T: int, V: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(107, V, (B, T), generator=g)
    labels = torch.where(torch.rand(B, T, generator=g) < 0.15, ids, torch.full_like(ids, -100))
    return ids.to(device), labels.to(device)


def bert_steps(cfg: ModelConfig, B: int, T: int, device: str, bf16: bool):
    torch.manual_seed(0)
    ours = build_model(cfg).to(device).train()
    theirs = hf_model(build_model(cfg), cfg).to(device).train()
    ids, labels = masked_batch(B, T, cfg.vocab_size, device)
    opt_a = torch.optim.AdamW(ours.parameters(), lr=1e-4, fused=True)
    opt_b = torch.optim.AdamW(theirs.parameters(), lr=1e-4, fused=True)

    def a() -> None:
        with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
            out = ours(ids, labels=labels)
            loss = F.cross_entropy(out.logits.float(), out.targets)
        loss.backward()
        opt_a.step()
        opt_a.zero_grad(set_to_none=True)

    def b() -> None:
        with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
            loss = theirs(input_ids=ids, labels=labels).loss
        loss.backward()
        opt_b.step()
        opt_b.zero_grad(set_to_none=True)

    return a, b, B * T


def t5_steps(cfg: ModelConfig, B: int, S: int, device: str, bf16: bool):
    from data_pipeline.objectives import T5Params, t5_raw_length

    _, target_len = t5_raw_length(S, T5Params())
    torch.manual_seed(0)
    ours = build_model(cfg).to(device).train()
    theirs = hf_model(build_model(cfg), cfg).to(device).train()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(107, cfg.vocab_size, (B, S), generator=g).to(device)
    labels = torch.randint(107, cfg.vocab_size, (B, target_len), generator=g).to(device)
    dec = torch.cat([torch.zeros_like(labels[:, :1]), labels[:, :-1]], 1)
    opt_a = torch.optim.AdamW(ours.parameters(), lr=1e-4, fused=True)
    opt_b = torch.optim.AdamW(theirs.parameters(), lr=1e-4, fused=True)

    def a() -> None:
        with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
            logits = ours(ids, dec).logits
            loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1))
        loss.backward()
        opt_a.step()
        opt_a.zero_grad(set_to_none=True)

    def b() -> None:
        with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
            loss = theirs(input_ids=ids, decoder_input_ids=dec, labels=labels).loss
        loss.backward()
        opt_b.step()
        opt_b.zero_grad(set_to_none=True)

    return a, b, B * (S + target_len)


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


def alternate(a, b, rounds: int, device: str) -> tuple[float, float]:
    def timed(fn) -> float:
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t

    a(), b()  # warm-up: allocations, optimizer state, kernels
    ta, tb = [], []
    for _ in range(rounds):
        ta.append(timed(a))
        tb.append(timed(b))
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="smaller shapes, for a smoke run")
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast (GPU)")
    ap.add_argument("--memory-child", nargs=4, metavar=("CKPT", "LAYERS", "B", "T"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_child:
        ck, layers, B, T = args.memory_child
        memory_child(ck == "1", int(layers), int(B), int(T))
        return
    device = "cuda" if torch.cuda.is_available() else "cpu"
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
        a, b, tokens = bert_steps(bert, 16, 128, device, args.bf16)
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
    a, b, tokens = bert_steps(deberta, 16, 128, device, args.bf16)
    ta, tb = alternate(a, b, args.rounds, device)
    print(
        f"| DeBERTa-v3 (DebertaV2ForMaskedLM) | {deb_layers} layers, H 768, V 32000, batch 16 x 128, 15% masked, "
        f"buckets 256 | {tokens / ta:,.0f} | {tokens / tb:,.0f} | {tb / ta:.2f} | >= 1.3 |"
    )
    del a, b
    t5 = ModelConfig.from_preset("t5_small", vocab_size=32128, num_layers=4 if args.quick else 8)
    a, b, tokens = t5_steps(t5, 16, 128, device, args.bf16)
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
