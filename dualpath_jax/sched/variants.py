"""The paper's ablation ladder (PAPER.md section 6.5, Fig. 12 right), shared by engine and simulator.

Each variant flips one more switch than the previous one:

==========  ===========  =========  ===========
variant     loading      prefill    scheduling
==========  ===========  =========  ===========
basic       pe_read      full       round_robin
layerwise   pe_read      layerwise  round_robin
dpl         dual         layerwise  round_robin  (naive read side: alternate PE/DE per request)
dualpath    dual         layerwise  dualpath
oracle      oracle       layerwise  dualpath     (no KV I/O at all)
==========  ===========  =========  ===========

:data:`VARIANTS` adds ``split`` (beyond the paper, its stated future work: one request's blocks
read from both sides), which both runtimes accept.
"""

from __future__ import annotations

import dataclasses

from dualpath_jax.config import ConfigError

__all__ = ["Variant", "ABLATION_VARIANTS", "VARIANTS", "get_variant"]


@dataclasses.dataclass(frozen=True)
class Variant:
    """One point of the ablation: the three switches."""

    name: str
    loading: str
    prefill: str
    policy: str


ABLATION_VARIANTS: dict[str, Variant] = {
    "basic": Variant("basic", "pe_read", "full", "round_robin"),
    "layerwise": Variant("layerwise", "pe_read", "layerwise", "round_robin"),
    "dpl": Variant("dpl", "dual", "layerwise", "round_robin"),
    "dualpath": Variant("dualpath", "dual", "layerwise", "dualpath"),
    "oracle": Variant("oracle", "oracle", "layerwise", "dualpath"),
}


VARIANTS: dict[str, Variant] = {
    **ABLATION_VARIANTS,
    "split": Variant("split", "split", "layerwise", "dualpath"),
}
"""The ablation ladder plus ``split`` loading."""


def get_variant(name: str) -> Variant:
    """Look up a variant of :data:`VARIANTS` by name.

    Raises:
      ConfigError: field ``variants`` for an unknown name.
    """
    if name not in VARIANTS:
        hint = ""
        if isinstance(name, str) and "," in name:  # --config.variants=basic,dualpath: a string, not a tuple
            names = ",".join(repr(n.strip().strip("()[]'\" ")) for n in name.split(","))
            hint = f"; several variants are a tuple: --config.variants=\"({names})\""
        raise ConfigError("variants", f"unknown variant {name!r}; known: {list(VARIANTS)}{hint}")
    return VARIANTS[name]
