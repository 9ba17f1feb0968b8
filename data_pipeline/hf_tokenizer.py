"""The tokenizer a run trained with: kept in the run directory, and exported as a transformers fast tokenizer.

A run directory holds `tokenizer/tokenizer.model` (the dataset's sentencepiece model) and `tokenizer/tokenizer.json`
(cloze's tokenizer metadata, as `cloze tokenizer` writes it, plus the dataset's special ids and packing kind), so
`cloze export` needs nothing outside the run directory.

The export is a `tokenizers` tokenizer.json built from the sentencepiece model, with a post-processor that frames
text exactly as cloze's packing (data_pipeline/packing.py, read off `packer_for`) feeds the model:

    encoder (bert, roberta, albert, electra):  [CLS] A [SEP]          [CLS] A [SEP] B [SEP]   (token types 0.. 1..)
    raw (t5):                                   A </s>                 A B </s>   (documents joined directly, as T5's
                                                                                  reduce_concat_tokens; the objective
                                                                                  appends </s>)
    bart:                                       <s> A </s>             <s> A </s> B </s>

Reference: transformers' `convert_slow_tokenizer.py` (SpmConverter.build_tokenizer_from_spm_proto, which follows
the sentencepiece model's own normalizer spec) for the model, normalizer, pre-tokenizer and decoder; the
post-processor is cloze's own framing, not any transformers tokenizer's.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .manifest import Manifest, atomic_write
from .packing import packer_for
from .sources import InputError
from .tokenizer import MODEL_FILE, SpecialIds, sha256_file

RUN_TOKENIZER_DIR = "tokenizer"
"""Sub-directory of a run directory holding the run's tokenizer."""
META_FILE = "tokenizer.json"
FRAMINGS = ("encoder", "raw", "bart")
"""The packing kinds of data_pipeline/packing.py, which decide how a text is framed with special tokens."""


class TokenizerExportError(InputError):
    """A tokenizer that cannot be exported, named, with what to do."""


# ---- the run directory's copy ---------------------------------------------------------------------------------


def save_run_tokenizer(dataset_dir: str | Path, manifest: Manifest, run_dir: str | Path) -> Path:
    """Copy the dataset's tokenizer model and special ids into `run_dir/tokenizer/`; returns that directory.

    The model's sha256 is checked against the manifest's, so the copy is the tokenizer the shards were written with.
    """
    source = Path(dataset_dir).resolve() / MODEL_FILE
    if not source.is_file():
        raise TokenizerExportError(
            f"{source} does not exist: the dataset {dataset_dir} lacks its tokenizer; rewrite it with `cloze shards`"
        )
    digest = sha256_file(source)
    expected = manifest.tokenizer.get("sha256", "")
    if expected and digest != expected:
        raise TokenizerExportError(
            f"{source} has sha256 {digest[:12]}..., but {Path(dataset_dir) / 'manifest.json'} records "
            f"{expected[:12]}...: the tokenizer was replaced after the shards were written; rewrite the shards"
        )
    target = Path(run_dir) / RUN_TOKENIZER_DIR
    target.mkdir(parents=True, exist_ok=True)
    meta = {
        "file": MODEL_FILE,
        "sha256": digest,
        "vocab_size": manifest.tokenizer.get("vocab_size"),
        "model_type": manifest.tokenizer.get("model_type", "unigram"),
        "special_tokens": dict(manifest.special_tokens),
        "sentinel_ids": list(manifest.sentinel_ids),
        "packing": manifest.packing.get("kind", ""),
        "dataset": os.path.abspath(dataset_dir),
    }
    atomic_write(target / MODEL_FILE, source.read_bytes())
    atomic_write(target / META_FILE, (json.dumps(meta, indent=2) + "\n").encode())
    return target


def read_meta(model_file: str | Path) -> dict[str, Any]:
    """The metadata next to a tokenizer model (run copy or `cloze tokenizer` output); {} if there is none."""
    meta = Path(model_file).parent / META_FILE
    return json.loads(meta.read_text()) if meta.is_file() else {}


# ---- transformers export -----------------------------------------------------------------------------------


def _proto(model_file: Path) -> Any:
    try:
        import sentencepiece.sentencepiece_model_pb2 as pb
    except ImportError:  # pragma: no cover - protobuf is in the [dev] extra
        raise TokenizerExportError("exporting a tokenizer needs protobuf: pip install 'cloze[dev]'") from None
    proto = pb.ModelProto()  # type: ignore[attr-defined]
    proto.ParseFromString(model_file.read_bytes())
    return proto


def _bpe_merges(proto: Any) -> list[tuple[str, str]]:
    """Merges of a sentencepiece BPE model: every split of a normal piece into two normal pieces, ranked by the
    merged piece's score (sentencepiece merges the highest-scored pair first). Port of transformers'
    build_tokenizer_from_spm_proto."""
    normal = {p.piece: (p.score, i) for i, p in enumerate(proto.pieces) if p.type == 1}
    ranked = []
    for token, (score, i) in normal.items():
        for cut in range(1, len(token)):
            left, right = token[:cut], token[cut:]
            if left in normal and right in normal:
                ranked.append((-score, i, left, right))
    return [(left, right) for _, _, left, right in sorted(ranked)]


def framing_ids(framing: str, special: SpecialIds) -> tuple[list[int], list[int], list[int]]:
    """(before A, between A and B, after the last text) in ids, read off cloze's packer for `framing`: its prefix,
    its document separator, and its suffix (else the separator; else EOS, which the T5 objective appends to every
    input after the raw packing's separator-less stream)."""
    vocab = special.vocab(max(special.all()) + 1, [])
    try:
        packer = packer_for(framing, 64, vocab)
    except ValueError:
        raise TokenizerExportError(f"unknown framing {framing!r}: use one of {', '.join(FRAMINGS)}") from None
    middle = [] if packer.separator is None else [int(packer.separator)]
    end = [int(i) for i in packer.suffix] or middle or [special.eos]
    return [int(i) for i in packer.prefix], middle, end


def build_hf_tokenizer(
    model_file: str | Path,
    framing: str,
    special: SpecialIds,
    sentinel_ids: list[int],
    pair_type_id: int = 1,
) -> Any:
    """A `tokenizers.Tokenizer` that encodes like the sentencepiece model and frames text like cloze's packing.

    `framing` is a packing kind (encoder, raw, bart); `pair_type_id` the token type of the second segment of an
    encoder pair (1; 0 for a model without a second token type, e.g. RoBERTa's type_vocab_size=1).
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import BPE, Unigram

    framing_ids(framing, special)  # an unknown framing fails before any work
    model_file = Path(model_file)
    proto = _proto(model_file)
    spec = proto.normalizer_spec
    byte_fallback = proto.trainer_spec.byte_fallback
    pieces = [(p.piece, p.score) for p in proto.pieces]
    if proto.trainer_spec.model_type == 1:  # unigram
        tok = Tokenizer(Unigram(pieces, unk_id=special.unk, byte_fallback=byte_fallback))
    elif proto.trainer_spec.model_type == 2:  # bpe
        vocab = {piece: i for i, (piece, _) in enumerate(pieces)}
        bpe = BPE(
            vocab,
            _bpe_merges(proto),
            unk_token=pieces[special.unk][0],
            fuse_unk=True,
            byte_fallback=byte_fallback,
        )
        tok = Tokenizer(bpe)
    else:
        raise TokenizerExportError(
            f"{model_file}: sentencepiece model type {proto.trainer_spec.model_type} is not unigram or bpe; "
            "train the tokenizer with `cloze tokenizer`"
        )

    # Normalizer, in sentencepiece's order: the precompiled character map (nmt_nfkc), extra spaces, "▁" for " ".
    norm: list[Any] = []
    if spec.precompiled_charsmap:
        norm.append(normalizers.Precompiled(spec.precompiled_charsmap))
    if spec.remove_extra_whitespaces:
        norm += [normalizers.Replace(Regex(r"\A +| +\z"), ""), normalizers.Replace(Regex(" {2,}"), " ")]
    if spec.escape_whitespaces:
        norm.append(normalizers.Replace(" ", "\u2581"))
    if spec.add_dummy_prefix:
        # Metaspace skips the dummy prefix when the text already starts with "▁"; sentencepiece does not.
        norm.append(normalizers.Replace(Regex("\\A\u2581"), "\u2581\u2581"))
    tok.normalizer = normalizers.Sequence(norm)
    if spec.add_dummy_prefix:
        tok.pre_tokenizer = pre_tokenizers.Metaspace(
            replacement="\u2581", prepend_scheme="always", split=False
        )
    dec: list[Any] = [decoders.Replace("\u2581", " ")]
    if byte_fallback:
        dec.append(decoders.ByteFallback())
    if spec.add_dummy_prefix:
        dec += [decoders.Fuse(), decoders.Strip(content=" ", left=1)]
    elif byte_fallback:
        dec.append(decoders.Fuse())
    tok.decoder = decoders.Sequence(dec)

    # Every special id and sentinel is a special token: never split, skipped by decode(skip_special_tokens=True).
    ids = sorted({*special.all(), *sentinel_ids})
    tok.add_special_tokens([AddedToken(pieces[i][0], special=True, normalized=False) for i in ids])
    for i in ids:
        if tok.token_to_id(pieces[i][0]) != i:  # pragma: no cover - the pieces come from the same model
            raise TokenizerExportError(f"{model_file}: special piece {pieces[i][0]!r} does not keep id {i}")

    prefix, middle, end = framing_ids(framing, special)
    t = pair_type_id if framing == "encoder" else 0  # only encoder pairs carry a second segment (pair_block)

    def slots(ids: list[int], type_id: int) -> list[str]:
        return [f"{pieces[i][0]}:{type_id}" for i in ids]

    single = [*slots(prefix, 0), "$A:0", *slots(end, 0)]
    pair = [*slots(prefix, 0), "$A:0", *slots(middle, 0), f"$B:{t}", *slots(end, t)]
    used = sorted({*prefix, *middle, *end})
    tok.post_processor = processors.TemplateProcessing(
        single=" ".join(single), pair=" ".join(pair), special_tokens=[(pieces[i][0], i) for i in used]
    )
    return tok


def save_hf_tokenizer(
    model_file: str | Path,
    out: str | Path,
    framing: str,
    special: SpecialIds | None = None,
    sentinel_ids: list[int] | None = None,
    model_max_length: int | None = None,
    pair_type_id: int = 1,
) -> None:
    """Write `out/tokenizer.json`, `tokenizer_config.json`, `special_tokens_map.json` and `spiece.model`, loadable
    with transformers' `AutoTokenizer.from_pretrained(out)` offline. Special ids default to the model's metadata
    (the run copy's or `cloze tokenizer`'s tokenizer.json), else to the sentencepiece model itself."""
    try:
        from transformers import PreTrainedTokenizerFast
    except ImportError:  # pragma: no cover - transformers is in the [dev] extra
        raise TokenizerExportError(
            "exporting a tokenizer needs transformers: pip install 'cloze[dev]'"
        ) from None
    from .tokenizer import describe

    model_file = Path(model_file)
    if special is None or sentinel_ids is None:
        meta = read_meta(model_file)
        info = describe(model_file)
        special = special or (
            SpecialIds(**meta["special_tokens"]) if "special_tokens" in meta else info.special_tokens
        )
        sentinel_ids = (
            sentinel_ids if sentinel_ids is not None else meta.get("sentinel_ids", info.sentinel_ids)
        )
    tok = build_hf_tokenizer(model_file, framing, special, sentinel_ids, pair_type_id)

    def piece(i: int) -> str:
        return str(tok.id_to_token(i))

    kwargs: dict[str, Any] = {}
    if model_max_length:
        kwargs["model_max_length"] = model_max_length
    # Encoders with a second token type get token_type_ids (as cloze's sentence-pair shards feed them); a model
    # without one (T5, BART, type_vocab_size=1) is not handed any.
    types = framing == "encoder" and pair_type_id != 0
    kwargs["model_input_names"] = ["input_ids", *(["token_type_ids"] if types else []), "attention_mask"]
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=piece(special.pad),
        unk_token=piece(special.unk),
        bos_token=piece(special.bos),
        eos_token=piece(special.eos),
        cls_token=piece(special.cls),
        sep_token=piece(special.sep),
        mask_token=piece(special.mask),
        additional_special_tokens=[piece(i) for i in sentinel_ids],
        **kwargs,
    )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(out))
    atomic_write(out / "spiece.model", model_file.read_bytes())
