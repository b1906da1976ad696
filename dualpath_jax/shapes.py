"""The dimension glossary used in einsums, docstrings and annotations across the project.

======  ==========================================================================================
letter  meaning
======  ==========================================================================================
B       sequences (requests) in a batch
T       new (query) tokens
S       KV tokens (cached + new)
L       transformer layers
N       query heads
K       KV heads (GQA); 1 for MLA's latent cache
H       head dim
Hk      head dim of queries and keys in the attention kernels (GQA: H; MLA absorbed: C + R)
Hv      head dim of values in the attention kernels (GQA: H; MLA absorbed: C)
D       model (hidden) dim
F       MLP hidden dim
E       routed experts
V       vocabulary size
P       pages / blocks of one sequence (block-table columns)
Pt      blocks in a block pool, shared by the batch (block ids lie in ``[0, Pt)``)
Z       tokens per block (64 by default, PAPER.md section 2.2)
Bt      bytes of KV per token per layer of a block layout (``BlockLayout.bytes_per_token_per_layer``)
C       MLA latent dim (``kv_lora_rank``)
R       rope dim of MLA's decoupled rope key (``qk_rope_head_dim``)
A       agents (trajectories) of a workload
W       time windows of the traffic metrics (``dualpath_jax.metrics.traffic``)
======  ==========================================================================================

Index arrays are written ``i32[B, P]``; float arrays ``f32[T, D]`` / ``bf16[...]``.
Byte sizes of KV come only from :mod:`dualpath_jax.kvcache` layouts and
:mod:`dualpath_jax.model.cost`.
"""

BLOCK_TOKENS = 64
"""Default Z: tokens per Full/Layer Block (PAPER.md section 2.2, 'e.g., 64 tokens')."""

GLOSSARY = {
    "B": "sequences in a batch",
    "T": "new (query) tokens",
    "S": "KV tokens (cached + new)",
    "L": "layers",
    "N": "query heads",
    "K": "KV heads",
    "H": "head dim",
    "Hk": "query/key head dim (kernels)",
    "Hv": "value head dim (kernels)",
    "D": "model dim",
    "F": "MLP hidden dim",
    "E": "routed experts",
    "V": "vocab",
    "P": "pages/blocks of a sequence",
    "Pt": "blocks in a block pool",
    "Z": "tokens per block",
    "Bt": "KV bytes per token per layer",
    "C": "MLA latent dim",
    "R": "MLA rope dim",
    "A": "agents",
    "W": "time windows",
}
