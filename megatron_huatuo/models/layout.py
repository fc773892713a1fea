"""How the decoder layers are split over pipeline stages, checked before any process group exists.

megatron-core splits evenly unless ``num_layers_in_first_pipeline_stage`` / ``num_layers_in_last_pipeline_stage``
(TransformerConfig, 0.16.1) are set; then the remaining layers are split evenly over the middle stages. With the
interleaved schedule every stage's count must also divide by the virtual size (each virtual chunk of a stage gets
the same number of layers). :func:`stage_layers` applies those rules and says which one a layout breaks, naming the
recipe keys, so a bad split fails on the login node instead of inside TransformerConfig on every rank.

No megatron-core import: the recipe validation and the converters read it alone.
"""
from __future__ import annotations

from typing import List, Optional


def stage_layers(num_layers: int, pipeline_parallel: int, virtual_pipeline: Optional[int] = None,
                 first: Optional[int] = None, last: Optional[int] = None) -> List[int]:
    """Layers per pipeline stage (length ``pipeline_parallel``); ``ValueError`` naming the rule a layout breaks.

    ``first`` / ``last``: layers of the first / last stage (None: even share). Keys in messages are the recipe's
    (``parallel.first_stage_layers``, ``parallel.last_stage_layers``).
    """
    pp, vpp = pipeline_parallel, virtual_pipeline if virtual_pipeline and virtual_pipeline > 1 else 1
    if (first is not None or last is not None) and pp < 2:
        raise ValueError("parallel.first_stage_layers/last_stage_layers need parallel.pp >= 2")
    for key, value in (("parallel.first_stage_layers", first), ("parallel.last_stage_layers", last)):
        if value is not None and value < 1:
            raise ValueError(f"{key} must be >= 1, got {value}")
        if value is not None and value % vpp:
            raise ValueError(f"{key}={value} is not divisible by parallel.vpp={vpp} (each virtual chunk of a stage "
                             "holds the same number of layers)")
    if first is None and last is None:
        if num_layers % (pp * vpp):
            raise ValueError(f"{num_layers} layers cannot be split evenly over pp*vpp={pp * vpp} (pipeline_parallel="
                             f"{pp} x virtual_pipeline={vpp}); set parallel.first_stage_layers / "
                             "parallel.last_stage_layers for an uneven split")
        return [num_layers // pp] * pp
    middle_stages = pp - (first is not None) - (last is not None)
    middle_layers = num_layers - (first or 0) - (last or 0)
    if middle_layers < 0 or bool(middle_layers) != bool(middle_stages):
        raise ValueError(f"{num_layers} layers: first_stage_layers={first}, last_stage_layers={last} leave "
                         f"{middle_layers} layers for {middle_stages} middle stage(s) of parallel.pp={pp}")
    if middle_stages and middle_layers % (middle_stages * vpp):
        raise ValueError(f"the {middle_layers} layers between the first and last stage do not split evenly over "
                         f"{middle_stages} middle stage(s) x vpp={vpp}")
    each = middle_layers // middle_stages if middle_stages else 0
    return ([first if first is not None else each] + [each] * (pp - 2)
            + [last if last is not None else each])[:pp] if pp > 1 else [num_layers]
