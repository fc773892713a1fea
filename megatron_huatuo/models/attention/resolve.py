"""Which core-attention backend a model gets: the names, the ``auto`` rule and the checks, without megatron-core.

A backend is only the core attention (``SelfAttention.submodules.core_attention``: softmax(QK^T/sqrt(d) + bias) V);
the projections, norms and MLP are unchanged, so every backend loads the same checkpoint.

- ``local``: megatron-core's ``DotProductAttention`` (RoPE) / our ``AlibiDotProductAttention`` (ALiBi), dense
  [B, 1, S, S] mask for isolated packing. The reference, and what everything did before backends existed.
- ``sdpa``: ``torch.nn.functional.scaled_dot_product_attention`` (flash kernel for causal rows on Hopper, GQA
  without copying K/V); ALiBi as an additive bias; isolated packing as one boolean mask shared by all layers.
- ``flex``: ``torch.nn.attention.flex_attention``: ALiBi as a ``score_mod``, isolated packing as a ``BlockMask``
  built from ``segment_ids`` (no [S, S] tensor on CUDA); compiled on CUDA. Forward only on CPU (torch has no CPU
  backward for it), no attention dropout.
- ``te``: Transformer Engine's fused attention (ALiBi through TE's own slopes argument, isolated packing in TE's
  THD format); needs TE and CUDA.
- ``auto``: ``te`` when TE is importable on a CUDA machine; else on CUDA ``flex`` for ALiBi or isolated packing
  and ``sdpa`` for causal RoPE rows; on CPU ``local`` (the reference path; results identical to earlier runs).
"""
from __future__ import annotations

import importlib.util
from typing import Optional

import torch

BACKENDS = ("auto", "te", "sdpa", "flex", "local")
CONCRETE_BACKENDS = ("te", "sdpa", "flex", "local")


class AttentionBackendError(ValueError):
    """A backend that cannot run here or with these settings; the message says why and what to use instead."""


def have_flex_attention() -> bool:
    """True when this torch ships ``torch.nn.attention.flex_attention`` (torch >= 2.5)."""
    try:
        return importlib.util.find_spec("torch.nn.attention.flex_attention") is not None
    except ModuleNotFoundError:
        return False


def te_installed() -> bool:
    """True when Transformer Engine for PyTorch is installed (whether or not a GPU is visible)."""
    return importlib.util.find_spec("transformer_engine") is not None


def check_backend(name: str, arch, *, attention_dropout: float = 0.0) -> None:
    """Checks that do not depend on the machine's device (a login node can run them for a GPU job).

    Raises :class:`AttentionBackendError` for an unknown name, ``te`` without Transformer Engine installed,
    ``flex`` on a torch without FlexAttention or with attention dropout.
    """
    if name not in BACKENDS:
        raise AttentionBackendError(f"expected one of {'|'.join(BACKENDS)}, got {name!r}")
    if name == "te" and not te_installed():
        raise AttentionBackendError("te needs Transformer Engine (pip install 'megatron-huatuo[gpu]'), which is "
                                    "not installed here; use sdpa or flex (torch-native) or auto")
    if name == "flex":
        if not have_flex_attention():
            raise AttentionBackendError(f"flex needs torch.nn.attention.flex_attention (torch >= 2.5); this torch "
                                        f"is {torch.__version__}: use sdpa")
        if attention_dropout > 0.0:
            raise AttentionBackendError("flex has no attention dropout (model.dropout > 0): use sdpa, or dropout 0")


def resolve_backend(name: str, arch, *, isolated: bool = False, training: bool = False,
                    attention_dropout: float = 0.0, cuda: Optional[bool] = None) -> str:
    """The concrete backend for ``name`` on this machine (``auto`` resolved), or :class:`AttentionBackendError`.

    ``isolated``: rows hold several attention-isolated documents (segment ids). ``training``: a backward pass
    will run (FlexAttention has none on CPU). ``cuda`` defaults to ``torch.cuda.is_available()``.
    """
    check_backend(name, arch, attention_dropout=attention_dropout)
    cuda = torch.cuda.is_available() if cuda is None else cuda
    alibi = arch.position_embedding == "alibi"
    if name == "auto":
        if not cuda:
            return "local"
        if te_installed():
            return "te"
        if (alibi or isolated) and have_flex_attention() and attention_dropout == 0.0:
            return "flex"
        return "sdpa"
    if name == "te" and not cuda:
        raise AttentionBackendError("te needs a CUDA device (Transformer Engine has no CPU kernels): "
                                    "use local or sdpa here")
    if name == "flex" and training and not cuda:
        raise AttentionBackendError(f"flex cannot train on CPU (torch {torch.__version__}: FlexAttention has no "
                                    "CPU backward): use sdpa or local on CPU, flex on CUDA")
    return name


def build_kwargs(name: str, arch, *, isolated: bool = False, training: bool = False, fp8: bool = False,
                 attention_dropout: float = 0.0, cuda: Optional[bool] = None) -> dict:
    """``build_model``/``build_model_chunks`` keyword arguments for backend ``name`` (``auto`` resolved here).

    The one mapping from a backend name to how the model is built, so every command that runs our forward
    (trainer, ``checkpoints_tools verify``, evaluation) wires ``--attention-backend`` in one line:
    ``build_model(arch, config, **build_kwargs(name, arch))``. ``te`` and FP8 take Transformer Engine's layer spec.
    """
    backend = resolve_backend(name, arch, isolated=isolated, training=training,
                              attention_dropout=attention_dropout, cuda=cuda)
    return dict(attention_backend=backend, masked_segments=isolated,
                transformer_impl="transformer_engine" if backend == "te" or fp8 else "local")
