"""An :class:`ArchSpec` read from a Hugging Face ``config.json`` (bring your own base model).

Supported ``model_type``s, each a decoder of RMSNorm, SwiGLU (``silu``) MLP and rotary or ALiBi attention, which
is what our megatron-core provider builds:

- ``llama`` (Llama-2, Llama-3 incl. ``rope_type: llama3`` scaling, Yi): GQA, optional tied embeddings;
- ``mistral``: as llama, only without a sliding window (``sliding_window`` null or absent);
- ``qwen2``: as llama plus q/k/v biases; only with ``use_sliding_window: false``;
- ``baichuan`` (Baichuan2-7B: RoPE; Baichuan2-13B: ALiBi; both NormHead): the position scheme and the head are
  decided from the config and, when present, ``modeling_baichuan.py`` beside it; refused when neither can tell.

Why strict: a field we do not read could change the model (a sliding window, a rope scaling, biases, experts), and
a converted model that silently differs from the source is worse than a refusal. So every key of config.json must
be one we read or one listed here as not changing the forward pass (token ids, dtype, cache flags...); anything
else, and any value we cannot build, is refused naming the key. Both the transformers 4.x spelling
(``rope_theta`` + ``rope_scaling``) and the 5.x one (``rope_parameters``) are read.

When the user also names a registry arch (``--arch``), :func:`resolve` compares every architecture field with
the config and refuses a mismatch naming the fields (a 5-layer model imported as a 4-layer arch used to pass).

No megatron-core import: the converters read this alone.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from megatron_huatuo.models.registry import ArchSpec, get_arch

INFO_FILE = "huatuo_checkpoint.json"  # written by import (and the trainer) beside a megatron checkpoint

# Fields compared between a named arch and a config.json. Not compared: name, family and hf_architecture (labels),
# init_method_std (random init only), vocab_size (the embedding's rows decide it; a tokenizer may extend the vocab).
COMPARED_FIELDS = ("num_layers", "hidden_size", "num_attention_heads", "num_query_groups", "ffn_hidden_size",
                   "max_position_embeddings", "norm_eps", "position_embedding", "rotary_base", "norm_head",
                   "tie_embeddings", "qkv_bias", "rope_scaling_factor", "head_dim")

# The head's rows L2-normalised in the forward: Baichuan2's NormHead written without the class name.
_NORMALISED_HEAD = re.compile(r"normalize\(\s*self\.(?:lm_head\.)?weight")

# Keys that do not change the forward pass (or are read elsewhere: token ids by the exporter).
_IGNORED = {"_name_or_path", "transformers_version", "torch_dtype", "dtype", "use_cache", "bos_token_id",
            "eos_token_id", "pad_token_id", "architectures", "auto_map", "tokenizer_class", "_from_model_config",
            "pretraining_tp",  # Llama-2: a matmul slicing in old transformers, same result
            "attention_dropout",  # training dropout: the recipe's model.dropout decides ours
            "initializer_range", "output_attentions", "output_hidden_states", "return_dict", "chunk_size_feed_forward",
            "is_encoder_decoder", "tie_encoder_decoder", "id2label", "label2id", "problem_type",
            "gradient_checkpointing"}
_LLAMA_KEYS = {"model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
               "num_attention_heads", "num_key_value_heads", "head_dim", "hidden_act", "max_position_embeddings",
               "rms_norm_eps", "rope_theta", "rope_scaling", "rope_parameters", "tie_word_embeddings"}
_KEYS = {
    "llama": _LLAMA_KEYS | {"attention_bias", "mlp_bias"},
    "mistral": _LLAMA_KEYS | {"sliding_window"},
    "qwen2": _LLAMA_KEYS | {"use_sliding_window", "sliding_window", "max_window_layers", "layer_types"},
    "baichuan": {"model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                 "num_attention_heads", "hidden_act", "max_position_embeddings", "model_max_length",
                 "rms_norm_eps", "tie_word_embeddings", "z_loss_weight"},
}
_CLASSES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM",
            "baichuan": "BaichuanForCausalLM"}
_FAMILY = {"llama": "llama", "mistral": "mistral", "qwen2": "qwen2", "baichuan": "baichuan2"}
# Names that mean a feature we cannot build, for a clearer refusal than "unknown key".
_FEATURES = {"num_experts": "mixture of experts", "num_local_experts": "mixture of experts",
             "n_routed_experts": "mixture of experts", "moe_intermediate_size": "mixture of experts",
             "quantization_config": "a quantized checkpoint", "use_mrope": "multimodal rope",
             "partial_rotary_factor": "partial rotary embeddings", "qk_layernorm": "q/k layer norms",
             "alibi": "ALiBi in a non-Baichuan model"}
LLAMA3_FIXED = {"low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}


class HFConfigError(ValueError):
    """A config.json we cannot build; the message names the file and the key."""


@dataclass
class _Reading:
    """What a config.json decides (``fields``) and what it cannot (``undecided``: field -> why)."""

    fields: Dict[str, Any]
    undecided: Dict[str, str] = field(default_factory=dict)


def _rope(config: dict, where: str) -> Tuple[float, Optional[float]]:
    """(rope_theta, llama3 scaling factor or None) from either transformers spelling."""
    params = config.get("rope_parameters")
    scaling = config.get("rope_scaling")
    theta = config.get("rope_theta")
    if isinstance(params, dict):
        theta = params.get("rope_theta", theta)
        scaling = params
    elif params is not None:
        raise HFConfigError(f"{where}: rope_parameters must be a mapping, got {params!r}")
    theta = float(10000.0 if theta is None else theta)
    if scaling is None:
        return theta, None
    if not isinstance(scaling, dict):
        raise HFConfigError(f"{where}: rope_scaling must be a mapping or null, got {scaling!r}")
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    extra = sorted(set(scaling) - {"rope_type", "type", "rope_theta", "factor", *LLAMA3_FIXED})
    if kind == "default":
        if set(scaling) - {"rope_type", "type", "rope_theta"}:
            raise HFConfigError(f"{where}: rope scaling type 'default' with parameters "
                                f"{sorted(set(scaling) - {'rope_type', 'type', 'rope_theta'})} is not supported")
        return theta, None
    if kind != "llama3":
        raise HFConfigError(f"{where}: rope scaling type {kind!r} is not supported (only none and 'llama3')")
    if extra:
        raise HFConfigError(f"{where}: llama3 rope scaling key(s) {extra} are not supported")
    for key, fixed in LLAMA3_FIXED.items():
        if float(scaling.get(key, fixed)) != fixed:
            raise HFConfigError(f"{where}: llama3 rope scaling {key}={scaling[key]} is not supported "
                                f"(megatron-core 0.16.1 fixes it at {fixed:g})")
    if "factor" not in scaling:
        raise HFConfigError(f"{where}: llama3 rope scaling without a factor")
    return theta, float(scaling["factor"])


def _need(config: dict, key: str, where: str):
    if config.get(key) is None:
        raise HFConfigError(f"{where}: {key} is missing")
    return config[key]


def _baichuan_position(config: dict, beside: Optional[Path], where: str) -> _Reading:
    """Baichuan2-7B (RoPE) and -13B (ALiBi) share model_type and class; their released configs differ in
    ``max_position_embeddings`` (7B has it, 13B only ``model_max_length``) and their modeling files in the
    position code (7B: ``RotaryEmbedding``; 13B: ``_get_interleave`` / alibi masks). NormHead (Baichuan2, not
    Baichuan 1) shows in the modeling file as ``class NormHead`` (the released files) or as an L2 normalisation of
    the head's weight in the forward (``normalize(self.lm_head.weight ...)``, re-written files); without the file,
    the Baichuan2 vocabulary (125,696) says Baichuan2."""
    reading = _Reading({})
    by_config = None
    if config.get("max_position_embeddings") is not None:
        by_config = "rope"
    elif config.get("model_max_length") is not None:
        by_config = "alibi"
    modeling = beside / "modeling_baichuan.py" if beside is not None else None
    by_file = norm_head = None
    if modeling is not None and modeling.is_file():
        text = modeling.read_text(encoding="utf-8", errors="replace")
        alibi, rope = "alibi" in text.lower(), "rotary" in text.lower()
        by_file = "alibi" if alibi and not rope else "rope" if rope and not alibi else None
        norm_head = "class NormHead" in text or _NORMALISED_HEAD.search(text) is not None
    if by_file and by_config and by_file != by_config:
        raise HFConfigError(f"{where}: the config says {by_config} ("
                            + ("max_position_embeddings set" if by_config == "rope" else "only model_max_length")
                            + f") but {modeling} implements {by_file}")
    position = by_file or by_config
    if position is None:
        reading.undecided["position_embedding"] = ("cannot tell RoPE (Baichuan2-7B) from ALiBi (Baichuan2-13B): "
                                                   "no max_position_embeddings/model_max_length and no "
                                                   "modeling_baichuan.py beside config.json")
    else:
        reading.fields["position_embedding"] = position
        reading.fields["max_position_embeddings"] = int(config.get("max_position_embeddings")
                                                        or config["model_max_length"])
    if norm_head is None and config.get("vocab_size") == 125696:
        norm_head = True
    if norm_head is None:
        reading.undecided["norm_head"] = ("cannot tell Baichuan2 (NormHead) from Baichuan 1: place Baichuan's "
                                          "modeling_baichuan.py beside config.json")
    else:
        reading.fields["norm_head"] = norm_head
    return reading


def read_config(config: dict, where: str, beside: Optional[Path] = None) -> _Reading:
    """Every field a config decides; ``HFConfigError`` for anything unsupported (named)."""
    kind = config.get("model_type")
    if kind not in _KEYS:
        raise HFConfigError(f"{where}: model_type {kind!r} is not supported (supported: {', '.join(sorted(_KEYS))})")
    for key, feature in _FEATURES.items():
        if key in config and config[key] not in (None, False, 0, 1.0):
            raise HFConfigError(f"{where}: {key}={config[key]!r}: {feature} is not supported")
    unknown = sorted(set(config) - _KEYS[kind] - _IGNORED - set(_FEATURES))
    if unknown:
        raise HFConfigError(f"{where}: unsupported key(s) {', '.join(unknown)} for model_type {kind} (not read by "
                            "this converter; a key that does not change the model can be removed)")
    archs = config.get("architectures") or [_CLASSES[kind]]
    if archs != [_CLASSES[kind]]:
        raise HFConfigError(f"{where}: architectures {archs} is not supported for model_type {kind} "
                            f"(expected [{_CLASSES[kind]!r}])")
    act = config.get("hidden_act", "silu")
    if act != "silu":
        raise HFConfigError(f"{where}: hidden_act {act!r} is not supported (SwiGLU with silu only)")
    for key in ("attention_bias", "mlp_bias"):
        if config.get(key):
            raise HFConfigError(f"{where}: {key}=true is not supported (llama models without biases)")
    if kind == "mistral" and config.get("sliding_window") is not None:
        raise HFConfigError(f"{where}: sliding_window={config['sliding_window']} is not supported (full attention "
                            "only; Mistral v0.2+ configs have sliding_window null)")
    if kind == "qwen2":
        if config.get("use_sliding_window"):
            raise HFConfigError(f"{where}: use_sliding_window=true is not supported (full attention only)")
        sliding = [t for t in config.get("layer_types") or [] if t != "full_attention"]
        if sliding:
            raise HFConfigError(f"{where}: layer_types {sorted(set(sliding))} are not supported (full attention only)")
    if kind == "baichuan" and config.get("z_loss_weight"):
        raise HFConfigError(f"{where}: z_loss_weight={config['z_loss_weight']} is not supported (no z-loss)")

    heads = int(_need(config, "num_attention_heads", where))
    hidden = int(_need(config, "hidden_size", where))
    fields: Dict[str, Any] = dict(
        family=_FAMILY[kind], hf_architecture=_CLASSES[kind],
        num_layers=int(_need(config, "num_hidden_layers", where)), hidden_size=hidden,
        num_attention_heads=heads, num_query_groups=int(config.get("num_key_value_heads") or heads),
        ffn_hidden_size=int(_need(config, "intermediate_size", where)),
        vocab_size=int(_need(config, "vocab_size", where)),
        norm_eps=float(_need(config, "rms_norm_eps", where)),
        tie_embeddings=bool(config.get("tie_word_embeddings", False)),
        init_method_std=float(config.get("initializer_range", 0.02)),
        qkv_bias=kind == "qwen2",
    )
    head_dim = config.get("head_dim")
    if head_dim is not None and int(head_dim) * heads != hidden:
        fields["kv_channels"] = int(head_dim)
    elif head_dim is None and hidden % heads:
        raise HFConfigError(f"{where}: hidden_size {hidden} is not divisible by num_attention_heads {heads} "
                            "and there is no head_dim")
    reading = _Reading(fields)
    if kind == "baichuan":
        sub = _baichuan_position(config, beside, where)
        reading.fields.update(sub.fields)
        reading.undecided.update(sub.undecided)
        reading.fields["rotary_base"] = 10000.0  # fixed in Baichuan2-7B's modeling code
    else:
        theta, factor = _rope(config, where)
        reading.fields.update(position_embedding="rope", rotary_base=theta, rope_scaling_factor=factor,
                              norm_head=False,
                              max_position_embeddings=int(_need(config, "max_position_embeddings", where)))
    if reading.fields.get("tie_embeddings") and reading.fields.get("norm_head"):
        raise HFConfigError(f"{where}: tie_word_embeddings=true with Baichuan2's NormHead is not supported")
    return reading


def _config_path(path: str | Path) -> Path:
    p = Path(path)
    if p.is_dir():
        p = p / "config.json"
    if not p.is_file():
        raise FileNotFoundError(f"Hugging Face config not found: {p}")
    return p


def load_config(path: str | Path) -> Tuple[dict, Path]:
    """(config dict, its path) from a config.json file or a directory holding one."""
    p = _config_path(path)
    try:
        config = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise HFConfigError(f"{p}: not valid JSON ({err})") from None
    if not isinstance(config, dict):
        raise HFConfigError(f"{p}: top level must be a JSON object")
    return config, p


def _arch_name(kind: str, p: Path) -> str:
    return f"{kind}:{p.parent.name or p}"


def arch_from_config(path: str | Path, arch: Optional[ArchSpec] = None) -> ArchSpec:
    """The ArchSpec of a config.json (file or directory). With ``arch`` (a named preset) the two must agree on
    every field of :data:`COMPARED_FIELDS` the config decides; fields it cannot decide come from ``arch``."""
    config, p = load_config(path)
    reading = read_config(config, str(p), beside=p.parent)
    decided = dict(reading.fields)
    if arch is not None:
        check_agree(arch, decided, f"--arch {arch.name}", str(p))
        return arch.with_overrides(vocab_size=decided["vocab_size"])
    if reading.undecided:
        raise HFConfigError(f"{p}: " + "; ".join(f"{k}: {why}" for k, why in reading.undecided.items())
                            + " (or name the arch with --arch / model.arch)")
    head_dim = decided.pop("kv_channels", None)
    return ArchSpec(name=_arch_name(config["model_type"], p), kv_channels=head_dim, **decided)


def _field_value(source: Any, name: str):
    if isinstance(source, ArchSpec):
        return getattr(source, name)
    if name == "head_dim":
        if "kv_channels" in source:
            return source["kv_channels"]
        return source["hidden_size"] // source["num_attention_heads"] if "hidden_size" in source else None
    return source.get(name)


def mismatches(a: ArchSpec, b: Any) -> List[str]:
    """``field: a-value vs b-value`` for each compared field that ``b`` (an ArchSpec or a dict of decided
    fields) holds and that differs."""
    out = []
    for name in COMPARED_FIELDS:
        if isinstance(b, dict) and name not in b and name != "head_dim":
            continue
        va, vb = _field_value(a, name), _field_value(b, name)
        if vb is None and name == "head_dim":
            continue
        if isinstance(va, float) or isinstance(vb, float):
            same = va is not None and vb is not None and float(va) == float(vb) or va == vb
        else:
            same = va == vb
        if not same:
            out.append(f"{name}: {va!r} vs {vb!r}")
    return out


def check_agree(a: ArchSpec, b: Any, a_label: str, b_label: str) -> None:
    bad = mismatches(a, b)
    if bad:
        raise HFConfigError(f"{a_label} does not match {b_label} ({a_label} vs config): " + "; ".join(bad))


def read_info(directory: str | Path) -> Optional[dict]:
    """``huatuo_checkpoint.json`` of an import or training directory, or None."""
    p = Path(directory) / INFO_FILE
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as err:
        raise HFConfigError(f"{p}: not valid JSON ({err})") from None


def recorded_arch(directory: str | Path) -> Optional[ArchSpec]:
    """The ArchSpec an import (or a training run) recorded in its ``huatuo_checkpoint.json``, or None."""
    info = read_info(directory)
    if not info or "arch_spec" not in info:
        return None
    return ArchSpec.from_json(info["arch_spec"], str(Path(directory) / INFO_FILE))


def resolve(arch_name: Optional[str] = None, hf_config: Optional[str | Path] = None,
            recorded: Optional[ArchSpec] = None, recorded_where: str = "") -> ArchSpec:
    """The one ArchSpec from whatever the user gave: a registry name, a config.json (file, HF directory, or an
    import directory whose ``huatuo_checkpoint.json`` records it), and what a checkpoint recorded. All given must
    agree (compared fields); at least one is needed."""
    named = get_arch(arch_name) if arch_name else None
    from_config = None
    if hf_config is not None:
        hp = Path(hf_config)
        inside = recorded_arch(hp) if hp.is_dir() else None
        if inside is not None:
            from_config = inside
            if named is not None:
                check_agree(named, inside, f"--arch {named.name}", str(hp / INFO_FILE))
        else:
            from_config = arch_from_config(hp, named)
    arch = from_config or named or recorded
    if arch is None:
        raise HFConfigError("no architecture: name a registry arch (--arch) or a config.json (--hf-config)"
                            + (f"; {recorded_where} records none" if recorded_where else ""))
    if recorded is not None and arch is not recorded:
        check_agree(arch, recorded, "the given architecture", f"the one recorded in {recorded_where}")
    return arch


SOURCE_FILES = ("config.json", "generation_config.json")  # copied from the source model beside the recorded arch


def source_files(hf_config: Optional[str | Path]) -> Dict[str, Path]:
    """The source model's config.json / generation_config.json that exist beside ``hf_config`` (a config.json, an
    HF directory or an import directory)."""
    if hf_config is None:
        return {}
    p = Path(hf_config)
    folder = p if p.is_dir() else p.parent
    found = {}
    if not p.is_dir() and p.is_file():
        found["config.json"] = p
    for name in SOURCE_FILES:
        if name not in found and (folder / name).is_file():
            found[name] = folder / name
    return found


def record(directory: str | Path, arch: ArchSpec, info: Dict[str, Any], hf_config: Optional[str | Path] = None
           ) -> None:
    """Write ``huatuo_checkpoint.json`` (``info`` + ``arch_spec``) into ``directory`` and copy the source model's
    config.json / generation_config.json beside it, so export, verify and a recipe's ``model.hf_config`` read the
    architecture back without the user repeating it (and compare it with anything the user does repeat)."""
    from megatron_huatuo.atomic import AtomicFiles

    out = Path(directory)
    files = source_files(hf_config)
    texts = {name: path.read_text(encoding="utf-8") for name, path in files.items()
             if path.resolve() != (out / name).resolve()}
    targets = [out / INFO_FILE] + [out / name for name in texts]
    with AtomicFiles(*targets) as handles:
        handles[0].write(json.dumps({**info, "arch_spec": arch.to_json()}, indent=2) + "\n")
        for handle, text in zip(handles[1:], texts.values()):
            handle.write(text)
