"""Hugging Face transformers interoperability: export every family, import checkpoints to continue pretraining.

Export = a transformers config from ours + the family's adapter applied to the state dict (its `HFPart` tables,
declared beside the model: fused projections such as `qkv` split into transformers' query/key/value, keys renamed,
tied copies filled in), loaded into the transformers class and saved with its own `save_pretrained` (config.json +
model.safetensors). Import is the inverse (split projections concatenated back).

| family  | transformers class(es)                                        |
|---------|---------------------------------------------------------------|
| bert    | BertForMaskedLM                                               |
| roberta | RobertaForMaskedLM                                            |
| albert  | AlbertForMaskedLM                                             |
| electra | ElectraForPreTraining (discriminator) + ElectraForMaskedLM (generator, in generator/) |
| t5      | T5ForConditionalGeneration                                    |
| bart    | BartForConditionalGeneration                                  |
| distilbert | DistilBertForMaskedLM (a distillation run: the student; adapter in modeling/distilbert.py) |
| mt5     | MT5ForConditionalGeneration (T5 v1.1's tables, model_type 'mt5')  |
| xlm_roberta | XLMRobertaForMaskedLM (RoBERTa's tables, model_type 'xlm-roberta') |
| xlm     | XLMWithLMHeadModel (adapter and config functions in modeling/xlm.py) |

transformers is imported lazily (it is a dev / export dependency, not needed to train).

T5: `feed_forward_proj` is written so that transformers computes our activation (`t5_feed_forward_proj`: its
'gated-gelu' is the tanh GELU) and read back as transformers' T5Config parses it (`t5_activation_from_hf`).
transformers 5 forces `T5Config.tie_word_embeddings=True` (the saved flag only selects the decoder-output rescaling),
so an untied T5 v1.1 export, like google/t5-v1_1-* itself, loads with transformers' notice that `lm_head` and
`shared` are both present and "will NOT be tied"; the logits are right. Every other export loads without a warning
(tests/test_hf.py::test_export_loads_without_warnings).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cloze_errors import ClozeError

from .config import T5_ACTIVATIONS, ModelConfig
from .registry import HFAdapter, HFPart, family_for_model_type, get_family

HF_ACT = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu"}


class ExportError(ClozeError, RuntimeError):
    """A model that cannot be mapped onto transformers, named."""


def _transformers() -> Any:
    try:
        import transformers
    except ImportError:  # pragma: no cover - transformers is in the [dev] extra
        raise ExportError("export needs transformers: pip install 'cloze[dev]' (or transformers)") from None
    return transformers


def adapter_of(cfg: ModelConfig) -> HFAdapter:
    """The transformers adapter of `cfg.family` (its FamilySpec.hf)."""
    adapter = get_family(cfg.family).hf
    if adapter is None:
        raise ExportError(
            f"model.family={cfg.family!r} has no transformers adapter (its FamilySpec.hf is None)"
        )
    return adapter


def _part(cfg: ModelConfig, generator: bool) -> HFPart:
    """The adapter's first part, or with `generator` its second (ELECTRA's generator)."""
    adapter = adapter_of(cfg)
    if cfg.pre_layer_norm and adapter.post_layer_norm_only:
        raise ExportError(
            "model.pre_layer_norm=true has no transformers equivalent for this family; export needs post-LN"
        )
    if generator and len(adapter.parts) < 2:
        raise ExportError(f"model.family={cfg.family!r} exports no generator")
    return adapter.parts[1 if generator else 0]


def hf_config(cfg: ModelConfig, generator: bool = False) -> Any:
    """The transformers config of the same architecture (with `generator`: ELECTRA's generator's)."""
    return _part(cfg, generator).config(cfg)


def encoder_kwargs(cfg: ModelConfig, c: ModelConfig | None = None) -> dict[str, Any]:
    """The BertConfig-style arguments every encoder family shares; `c` gives the widths (ELECTRA's generator)."""
    c = c or cfg
    return dict(
        hidden_size=c.hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=c.num_heads,
        intermediate_size=c.intermediate_size,
        hidden_act=HF_ACT.get(cfg.activation, cfg.activation),
        hidden_dropout_prob=cfg.hidden_dropout,
        attention_probs_dropout_prob=cfg.attention_dropout,
        type_vocab_size=max(1, cfg.type_vocab_size),
        layer_norm_eps=cfg.layer_norm_eps,
        initializer_range=cfg.initializer_range,
        **_common(cfg),
    )


def _common(cfg: ModelConfig) -> dict[str, Any]:
    return dict(vocab_size=cfg.vocab_size, pad_token_id=cfg.pad_token_id, eos_token_id=cfg.eos_token_id)


def bert_config(cfg: ModelConfig) -> Any:
    return _transformers().BertConfig(
        max_position_embeddings=cfg.max_position_embeddings, **encoder_kwargs(cfg)
    )


def roberta_config(cfg: ModelConfig, hf_class: str = "RobertaConfig") -> Any:
    """RobertaConfig (or, with `hf_class`, a config of RoBERTa's architecture: XLMRobertaConfig)."""
    if cfg.position_offset != cfg.pad_token_id + 1:
        raise ExportError(f"{cfg.family} needs model.position_offset = pad id + 1 = {cfg.pad_token_id + 1}")
    return getattr(_transformers(), hf_class)(
        max_position_embeddings=cfg.max_position_embeddings + cfg.position_offset, **encoder_kwargs(cfg)
    )


def xlm_roberta_config(cfg: ModelConfig) -> Any:
    """XLM-R is RoBERTa's architecture under another name (transformers' modeling_xlm_roberta.py)."""
    return roberta_config(cfg, "XLMRobertaConfig")


def albert_config(cfg: ModelConfig) -> Any:
    return _transformers().AlbertConfig(
        embedding_size=cfg.emb_size,
        max_position_embeddings=cfg.max_position_embeddings,
        num_hidden_groups=1,
        inner_group_num=1,
        classifier_dropout_prob=0.1,
        **encoder_kwargs(cfg),
    )


def electra_config(cfg: ModelConfig, generator: bool = False) -> Any:
    return _transformers().ElectraConfig(
        embedding_size=cfg.emb_size,
        max_position_embeddings=cfg.max_position_embeddings,
        **encoder_kwargs(cfg, cfg.generator() if generator else cfg),
    )


def electra_generator_config(cfg: ModelConfig) -> Any:
    return electra_config(cfg, generator=True)


def t5_config(cfg: ModelConfig, hf_class: str = "T5Config") -> Any:
    """T5Config (or, with `hf_class`, a config of T5's architecture: MT5Config)."""
    return getattr(_transformers(), hf_class)(
        d_model=cfg.hidden_size,
        d_kv=cfg.head_dim,
        d_ff=cfg.intermediate_size,
        num_layers=cfg.num_layers,
        num_decoder_layers=cfg.decoder_layers,
        num_heads=cfg.num_heads,
        relative_attention_num_buckets=cfg.relative_attention_num_buckets,
        relative_attention_max_distance=cfg.relative_attention_max_distance,
        dropout_rate=cfg.hidden_dropout,
        layer_norm_epsilon=cfg.layer_norm_eps,
        feed_forward_proj=t5_feed_forward_proj(cfg),
        tie_word_embeddings=cfg.tie_word_embeddings,
        decoder_start_token_id=cfg.pad_token_id,
        initializer_factor=cfg.initializer_factor,
        **_common(cfg),
    )


def mt5_config(cfg: ModelConfig) -> Any:
    """MT5Config: T5 v1.1 over a multilingual vocabulary. transformers' MT5 never rescales the decoder output before
    its head (it has no `scale_decoder_outputs`), so only an untied head (every mT5) has its logits there."""
    if cfg.tie_word_embeddings:
        raise ExportError(
            "mt5 exports need model.tie_word_embeddings=false (mT5 is T5 v1.1: an untied LM head; transformers' "
            "MT5ForConditionalGeneration has no rescaled tied head)"
        )
    return t5_config(cfg, "MT5Config")


def bart_config(cfg: ModelConfig) -> Any:
    return _transformers().BartConfig(
        d_model=cfg.hidden_size,
        encoder_layers=cfg.num_layers,
        decoder_layers=cfg.decoder_layers,
        encoder_attention_heads=cfg.num_heads,
        decoder_attention_heads=cfg.num_heads,
        encoder_ffn_dim=cfg.intermediate_size,
        decoder_ffn_dim=cfg.intermediate_size,
        max_position_embeddings=cfg.max_position_embeddings,
        activation_function=HF_ACT[cfg.activation],
        dropout=cfg.hidden_dropout,
        attention_dropout=cfg.attention_dropout,
        activation_dropout=cfg.hidden_dropout,
        scale_embedding=False,
        init_std=cfg.initializer_range,
        bos_token_id=cfg.bos_token_id,
        decoder_start_token_id=cfg.eos_token_id,
        forced_eos_token_id=cfg.eos_token_id,
        **_common(cfg),
    )


def t5_feed_forward_proj(cfg: ModelConfig) -> str:
    """transformers' `T5Config.feed_forward_proj` that computes our T5 feed-forward: '<act>' or 'gated-<act>', <act>
    an ACT2FN name. transformers reads 'gated-gelu' as the tanh GELU (gelu_new, T5 v1.1), so our exact gated 'gelu'
    is written 'gated-gelu_python' (the same erf GELU, in Python)."""
    act = "gelu_new" if cfg.activation == "gelu_tanh" else cfg.activation
    if not cfg.gated_ffn:
        return act
    return {"gelu_new": "gated-gelu", "gelu": "gated-gelu_python"}.get(act, "gated-" + act)


def t5_activation_from_hf(feed_forward_proj: str, where: str) -> tuple[str, bool]:
    """(model.activation, model.gated_ffn) for a transformers `feed_forward_proj`, parsed as T5Config does."""
    parts = feed_forward_proj.split("-")
    gated = parts[0] == "gated"
    if len(parts) > 2 or (len(parts) == 2 and not gated):
        raise ExportError(
            f"{where}: feed_forward_proj={feed_forward_proj!r} is neither '<act>' nor 'gated-<act>'"
        )
    act = "gelu_new" if feed_forward_proj == "gated-gelu" else parts[-1]
    act = {"gelu_new": "gelu_tanh", "gelu_python": "gelu" if gated else "gelu_python"}.get(act, act)
    if act not in T5_ACTIVATIONS:
        raise ExportError(
            f"{where}: feed_forward_proj={feed_forward_proj!r}: activation {parts[-1]!r} is not supported by cloze's "
            f"T5; supported (gated or not): {', '.join(a for a in T5_ACTIVATIONS if a != 'gelu_tanh')}"
        )
    return act, gated


# ---- key maps -----------------------------------------------------------------------------------------------------
# Each family declares its adapter (HFAdapter with HFPart rename / fuse / drop / tied tables) beside its model file
# (encoder.py, electra.py, t5.py, bart.py); these functions apply the tables.


def _pattern(name: str) -> re.Pattern[str]:
    """A rename/fuse name as a regex: '*' = one dotted component; a name ending in '.' matches as a prefix."""
    body = re.escape(name).replace(r"\*", r"([^.]+)")
    return re.compile(body if name.endswith(".") else body + "$")


def _fill(name: str, groups: tuple[str, ...]) -> str:
    """`name` with its '*'s replaced by `groups`, in order."""
    for g in groups:
        name = name.replace("*", g, 1)
    return name


def _match(key: str, names: Any) -> tuple[str, tuple[str, ...], str] | None:
    """(the longest of `names` that matches `key`, its '*' values, the rest of the key), or None."""
    best: tuple[str, tuple[str, ...], str] | None = None
    for name in names:
        m = _pattern(name).match(key)
        if m and (best is None or len(name) > len(best[0])):
            best = (name, m.groups(), key[m.end() :])
    return best


def _rename(key: str, pairs: tuple[tuple[str, str], ...]) -> str:
    """Rename by the longest matching pair (so a specific prefix wins over a general one)."""
    table = dict(pairs)
    hit = _match(key, table)
    if hit is None:
        return key
    src, groups, rest = hit
    return _fill(table[src], groups) + rest


def to_hf_state_dict(state: dict[str, torch.Tensor], part: HFPart) -> dict[str, torch.Tensor]:
    """Our state dict -> the keys of `part`'s transformers model: fused projections split, keys renamed, tied
    copies filled in."""
    drop, fuse = part.drop, dict(part.fuse)
    out: dict[str, torch.Tensor] = {}
    for k, v in state.items():
        if drop and k.startswith(drop):
            continue
        hit = _match(k, fuse) if fuse else None
        if hit is None:
            out[_rename(k, part.rename)] = v
            continue
        src, groups, rest = hit
        theirs = fuse[src]
        if v.shape[0] % len(theirs):
            raise ExportError(
                f"{k}: dim 0 of {tuple(v.shape)} does not split into {len(theirs)} for {theirs}"
            )
        for name, chunk in zip(theirs, v.chunk(len(theirs), dim=0), strict=True):
            out[_fill(name, groups) + rest] = chunk.clone()
    for theirs_key, ours in part.tied.items():
        out[theirs_key] = state[ours]
    return out


def from_hf_state_dict(state: dict[str, torch.Tensor], part: HFPart) -> dict[str, torch.Tensor]:
    """The inverse map (transformers keys -> ours): split projections concatenated back, keys renamed; tied copies
    and position-id buffers are left out."""
    state = {k: v for k, v in state.items() if k not in part.tied and not k.endswith("position_ids")}
    out: dict[str, torch.Tensor] = {}
    for ours, theirs in part.fuse:
        first = _pattern(theirs[0])
        for k in [k for k in state if first.match(k)]:
            m = first.match(k)
            assert m is not None
            groups, rest = m.groups(), k[m.end() :]
            names = [_fill(t, groups) + rest for t in theirs]
            absent = [n for n in names if n not in state]
            if absent:
                raise ExportError(f"{k} is one of {len(names)} fused projections, but {absent} is missing")
            out[_fill(ours, groups) + rest] = torch.cat([state.pop(n) for n in names], dim=0)
    inverse = tuple((theirs, ours) for ours, theirs in part.rename)
    out.update({_rename(k, inverse): v for k, v in state.items()})
    return out


def untie_t5_head(hf: Any, cfg: ModelConfig) -> None:
    """transformers 5 builds T5 with lm_head tied to `shared` always (T5Config forces tie_word_embeddings); v1.1
    unties them: give lm_head its own tensor and drop the pair, so save_pretrained writes both."""
    if not cfg.tie_word_embeddings:
        hf.lm_head.weight = nn.Parameter(hf.lm_head.weight.detach().clone())
        getattr(hf, "all_tied_weights_keys", {}).pop("lm_head.weight", None)


def _load_into_hf(model: nn.Module, cfg: ModelConfig, generator: bool = False) -> Any:
    tf = _transformers()
    part = _part(cfg, generator)
    hf = getattr(tf, part.hf_class)(part.config(cfg))
    fix = adapter_of(cfg).fix_hf_model
    if fix is not None:
        fix(hf, cfg)
    state = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    mapped = to_hf_state_dict(state, part)
    missing, unexpected = hf.load_state_dict(mapped, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids") and "pooler" not in k]
    if missing or unexpected:
        raise ExportError(
            f"{part.hf_class}: keys without a match: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    return hf.eval()


def export_hf(model: nn.Module, cfg: ModelConfig, out: str | Path) -> list[Path]:
    """Write `out` (and a subdirectory per further part, ELECTRA's `out/generator`) loadable with transformers'
    from_pretrained; returns them. The tokenizer files are written next to them by data_pipeline/hf_tokenizer.py
    (`cloze export` does both)."""
    out = Path(out)
    written = []
    for i, part in enumerate(adapter_of(cfg).parts):
        path = out / part.subdir if part.subdir else out
        hf = _load_into_hf(model, cfg, generator=i == 1)
        hf.save_pretrained(str(path))
        written.append(path)
    return written


def hf_model(model: nn.Module, cfg: ModelConfig, generator: bool = False) -> Any:
    """The transformers model holding `model`'s weights, in memory."""
    return _load_into_hf(model, cfg, generator)


def import_hf(hf: Any, cfg: ModelConfig, generator: bool = False) -> dict[str, torch.Tensor]:
    """Our state dict from a transformers model of `cfg.family` (load with model.load_state_dict). ELECTRA: the
    discriminator (ElectraForPreTraining) and, with generator=True, the generator (ElectraForMaskedLM)."""
    return from_hf_state_dict(dict(hf.state_dict()), _part(cfg, generator))


REVERSE_ACT = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "relu": "relu"}


def activation_from_hf(raw: dict[str, Any], path: str) -> str:
    """Our activation for an encoder's or BART's config.json (T5 reads its own: t5_activation_from_hf)."""
    hf_act = raw.get("hidden_act") or raw.get("activation_function") or "gelu"
    if hf_act not in REVERSE_ACT:
        raise ExportError(
            f"{path}/config.json: activation {hf_act!r} is not supported for {raw.get('model_type')}; supported: "
            f"{', '.join(REVERSE_ACT)}"
        )
    return REVERSE_ACT[hf_act]


def _common_from_hf(raw: dict[str, Any]) -> dict[str, Any]:
    return dict(vocab_size=raw["vocab_size"], pad_token_id=raw.get("pad_token_id") or 0)


def _encoder_from_hf(raw: dict[str, Any], path: str, family: str, offset: int = 0, **kw: Any) -> ModelConfig:
    return ModelConfig(
        family=family,
        hidden_size=raw["hidden_size"],
        num_layers=raw["num_hidden_layers"],
        num_heads=raw["num_attention_heads"],
        intermediate_size=raw["intermediate_size"],
        max_position_embeddings=raw["max_position_embeddings"] - offset,
        type_vocab_size=raw["type_vocab_size"],
        hidden_dropout=raw.get("hidden_dropout_prob", 0.1),
        attention_dropout=raw.get("attention_probs_dropout_prob", 0.1),
        layer_norm_eps=raw.get("layer_norm_eps", 1e-12),
        activation=activation_from_hf(raw, path),
        position_offset=offset,
        **kw,
        **_common_from_hf(raw),
    )


def bert_from_hf(raw: dict[str, Any], path: str) -> ModelConfig:
    return _encoder_from_hf(raw, path, "bert")


def roberta_from_hf(raw: dict[str, Any], path: str, family: str = "roberta") -> ModelConfig:
    return _encoder_from_hf(raw, path, family, offset=(raw.get("pad_token_id") or 0) + 1)


def xlm_roberta_from_hf(raw: dict[str, Any], path: str) -> ModelConfig:
    return roberta_from_hf(raw, path, "xlm_roberta")


def albert_from_hf(raw: dict[str, Any], path: str) -> ModelConfig:
    return _encoder_from_hf(
        raw, path, "albert", embedding_size=raw.get("embedding_size", 0), share_layers=True
    )


def t5_from_hf(raw: dict[str, Any], path: str, family: str = "t5") -> ModelConfig:
    t5_act, gated = t5_activation_from_hf(raw.get("feed_forward_proj", "relu"), f"{path}/config.json")
    return ModelConfig(
        family=family,
        hidden_size=raw["d_model"],
        num_layers=raw["num_layers"],
        num_decoder_layers=raw.get("num_decoder_layers") or raw["num_layers"],
        num_heads=raw["num_heads"],
        d_kv=raw["d_kv"],
        intermediate_size=raw["d_ff"],
        layer_norm_eps=raw.get("layer_norm_epsilon", 1e-6),
        activation=t5_act,
        gated_ffn=gated,
        tie_word_embeddings=raw.get("tie_word_embeddings", True) and raw.get("scale_decoder_outputs", True),
        hidden_dropout=raw.get("dropout_rate", 0.1),
        attention_dropout=raw.get("dropout_rate", 0.1),
        relative_attention_num_buckets=raw.get("relative_attention_num_buckets", 32),
        relative_attention_max_distance=raw.get("relative_attention_max_distance", 128),
        initializer_factor=raw.get("initializer_factor", 1.0),
        eos_token_id=raw.get("eos_token_id", 1),
        **_common_from_hf(raw),
    )


def mt5_from_hf(raw: dict[str, Any], path: str) -> ModelConfig:
    """An mT5 config.json: T5's fields, its feed-forward 'gated-gelu' by default, and always an untied head
    (transformers' MT5 writes tie_word_embeddings=true but never ties the logits' rescaling; google/mt5-* hold their
    own lm_head)."""
    cfg = t5_from_hf({"feed_forward_proj": "gated-gelu", **raw}, path, "mt5")
    cfg.tie_word_embeddings = False
    return cfg


def bart_from_hf(raw: dict[str, Any], path: str) -> ModelConfig:
    return ModelConfig(
        family="bart",
        hidden_size=raw["d_model"],
        num_layers=raw["encoder_layers"],
        num_decoder_layers=raw["decoder_layers"],
        num_heads=raw["encoder_attention_heads"],
        intermediate_size=raw["encoder_ffn_dim"],
        max_position_embeddings=raw["max_position_embeddings"],
        activation=activation_from_hf(raw, path),
        layer_norm_eps=1e-5,
        hidden_dropout=raw.get("dropout", 0.1),
        attention_dropout=raw.get("attention_dropout", 0.0),
        initializer_range=raw.get("init_std", 0.02),
        bos_token_id=raw.get("bos_token_id", 0),
        eos_token_id=raw.get("eos_token_id", 2),
        **_common_from_hf(raw),
    )


def config_from_hf(path: str | Path) -> ModelConfig:
    """Our ModelConfig for a transformers checkpoint directory (every family whose adapter imports: BERT, RoBERTa,
    ALBERT, T5, BART, mT5, XLM-R, XLM, ...)."""
    import json

    raw = json.loads((Path(path) / "config.json").read_text())
    kind = raw.get("model_type")
    spec = family_for_model_type(str(kind))
    if spec is None or spec.hf is None or spec.hf.from_hf_config is None:
        from .registry import FAMILIES

        known = [f.hf.model_type for f in FAMILIES.values() if f.hf is not None and f.hf.from_hf_config]
        raise ExportError(f"{path}/config.json: model_type {kind!r} cannot be imported ({', '.join(known)})")
    return spec.hf.from_hf_config(raw, str(path))


def _our_state(path: str | Path, cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """The weights of a transformers directory (its *.safetensors) under our names, for the family of `cfg`."""
    from safetensors.torch import load_file

    files = sorted(Path(path).glob("*.safetensors"))
    if not files:
        raise ExportError(f"{path} has no .safetensors weights")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_file(str(f)))
    adapter = adapter_of(cfg)
    prefix = adapter.bare_prefix
    if prefix and not any(k.startswith(prefix) for k in state):  # a bare encoder saved without its prefix
        state = {prefix + k: v for k, v in state.items()}
    return from_hf_state_dict(state, adapter.parts[0])


def init_from_hf(model: nn.Module, cfg: ModelConfig, path: str | Path) -> list[str]:
    """Load the weights of the transformers directory `path` (`model.init_from`) into `model`, built for `cfg`: the
    same family and shapes, else an error naming the first difference. Returns the keys left at initialisation
    (a bare encoder has no MLM head)."""
    where = f"model.init_from={str(path)!r}"
    if not (Path(path) / "config.json").is_file():
        raise ExportError(
            f"{where}: no config.json there; point it at a transformers directory (cloze export, "
            "cloze convert --to-long, or a downloaded model)"
        )
    theirs = config_from_hf(path)
    if theirs.family != cfg.family:
        raise ExportError(f"{where} holds a {theirs.family} model; this run trains model.family={cfg.family}")
    ours = _our_state(path, cfg)
    own = model.state_dict()
    for k, v in ours.items():
        if k in own and own[k].shape != v.shape:
            raise ExportError(
                f"{where}: {k} has shape {tuple(v.shape)} there but {tuple(own[k].shape)} in this run's model; set "
                "the model's sizes (hidden_size, num_layers, max_position_embeddings, vocab) to the checkpoint's"
            )
    missing, unexpected = model.load_state_dict(ours, strict=False)
    unexpected = [k for k in unexpected if ".pooler." not in k]
    if unexpected:
        raise ExportError(
            f"{where}: weights with no place in this run's {cfg.family} model: {unexpected[:5]}"
        )
    return list(missing)


def load_hf(path: str | Path) -> tuple[nn.Module, ModelConfig, list[str]]:
    """Build our model from a transformers checkpoint directory, to continue pretraining from it.

    Returns (model, config, keys left at their initialisation): a bare encoder checkpoint (BertModel) has no MLM
    head, which then starts from scratch."""
    from . import build_model

    cfg = config_from_hf(path)
    ours = _our_state(path, cfg)
    model = build_model(cfg)
    missing, unexpected = model.load_state_dict(ours, strict=False)
    loaded = {id(p) for k, p in model.named_parameters(remove_duplicate=False) if k in ours}
    params = dict(model.named_parameters(remove_duplicate=False))
    # a tied alias (T5's encoder/decoder embed_tokens = shared) is loaded with the tensor it shares
    missing = [k for k in missing if k not in params or id(params[k]) not in loaded]
    unexpected = [k for k in unexpected if ".pooler." not in k]
    if unexpected:
        raise ExportError(f"{path}: weights with no place in cloze's {cfg.family} model: {unexpected[:5]}")
    return model, cfg, list(missing)
