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

Any other combination of the switches is the variant ``"<loading>+<prefill>+<policy>"``, e.g.
``"dual+full+dualpath"`` (DualPath without layer-wise prefill): every study and both runtimes take
it wherever they take a variant name (:func:`get_variant`).
"""

from __future__ import annotations

import dataclasses

from dualpath_jax.config import ConfigError
from dualpath_jax.sched.knobs import PREFILL_MODES
from dualpath_jax.sched.types import LOADINGS, POLICIES

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
    """A variant of :data:`VARIANTS` by name, or the switches of ``"<loading>+<prefill>+<policy>"``
    (``loading`` of ``sched.LOADINGS``, ``prefill`` of ``PREFILL_MODES``, ``policy`` of
    ``sched.POLICIES``).

    Raises:
      ConfigError: field ``variants`` for an unknown name or switch value.
    """
    if isinstance(name, str) and "+" in name:
        parts = name.split("+")
        if len(parts) != 3:
            raise ConfigError("variants", f"{name!r}: a combination of switches is '<loading>+<prefill>+<policy>', "
                              f"e.g. 'dual+full+dualpath'")
        for switch, value, allowed in zip(("loading", "prefill", "policy"), parts,
                                          (LOADINGS, PREFILL_MODES, POLICIES)):
            if value not in allowed:
                raise ConfigError("variants", f"{name!r}: {switch} must be one of {list(allowed)} (got {value!r})")
        return Variant(name, *parts)
    if name not in VARIANTS:
        hint = ""
        if isinstance(name, str) and "," in name:  # --config.variants=basic,dualpath: a string, not a tuple
            names = ",".join(repr(n.strip().strip("()[]'\" ")) for n in name.split(","))
            hint = f"; several variants are a tuple: --config.variants=\"({names})\""
        raise ConfigError("variants", f"unknown variant {name!r}; known: {list(VARIANTS)}, or "
                          f"'<loading>+<prefill>+<policy>' such as 'dual+full+dualpath'{hint}")
    return VARIANTS[name]
