"""The paper's datasets (PAPER.md section 6.2, Table 2): a seeded generator of agent trajectories.

The paper replays 500 production agentic-RL trajectories per MAL (32K / 48K / 64K) and publishes
only their means (Table 2). This module generates stream trajectories (see
:mod:`dualpath_jax.workload.trajectory`) whose means, under the definitions of
:mod:`dualpath_jax.workload.stats`, match Table 2 for every MAL: averaged over 16 seeds the five
columns are within 0.1% of Table 2; one seed's 500 trajectories deviate by about 1% (sd), at most
3.1% over 32 held-out seeds; a test checks all five columns within 5% for several seeds.

Per-trajectory latents (k = 1..K), drawn by centred Latin hypercube sampling: each latent takes
exactly the K normal quantiles ``Phi^-1((j + 1/2) / K)`` in a seeded random order, which
removes most of the sample-to-sample spread of the means without fixing the pairing:

* verbosity ``u_k ~ LogNormal`` with mean 1 and log-sd ``verbosity_sigma``, shared by the
  appends and generations of a trajectory. Its spread is what lets Table 2 hold: a mean total of
  55,958 tokens with 157 turns of 429 + 176 tokens needs short-round trajectories to run many
  turns and long-round ones few (per-trajectory means of ``turns`` and ``append`` are averaged
  separately).
* first append ``F_k ~ LogNormal`` (mean ``first_append_mean``, log-sd 0.3): the initial prompt
  (system prompt, tool schemas, task). This front-loading puts the mean context near 0.59 of
  the total, as in Table 2, instead of the 0.5 of uniformly growing contexts.
* length fraction ``c_k ~ LogNormal`` (median ``length_fraction_median``, log-sd 0.4): the agent
  stops on its own once its context would exceed ``F_k + g_1 + c_k (MAL - F_k - g_1)``; the
  MAL truncates the rest (c_k >= 1).

Per round i >= 2 (round 1 appends F_k): ``a_i = max(1, rint(append_mean * u_k * e))`` with
``e ~ LogNormal(mean 1, log-sd 0.8)`` (heavy-tailed tool outputs); every round generates
``g_i = max(1, rint(gen_mean * u_k * e'))``, ``e' ~ LogNormal(mean 1, log-sd 0.7)``; think time 0
(the paper's evaluation issues the next round at once). Rounds are drawn in 256-column chunks of
a K x 256 matrix until every trajectory has stopped: the work is vectorised numpy.

More agents than the base trajectories (paper A.3): agent ``j >= K`` replays base trajectory
``b_j`` (the bases are cycled through seeded permutations, so each is used equally often) with
one synthetic round prepended: ``prefix_append_tokens`` random tokens appended and ``g = 1``;
the result is truncated at the MAL again. Every agent's token stream is keyed by its own agent
id, so agents never share cached blocks.

The five free parameters per MAL (``PAPER_PARAMS``) were fitted by
:func:`dualpath_jax.workload.calibrate.calibrate_generator` (Gauss-Newton on the means over 16
seeds of 500 trajectories); the shape parameters are fixed choices.
"""

from __future__ import annotations

import dataclasses
import statistics

import numpy as np

from dualpath_jax.config import ConfigError, check_at_most, check_in, check_non_negative, check_positive
from dualpath_jax.shapes import BLOCK_TOKENS
from dualpath_jax.workload.trajectory import TrajectorySet
from dualpath_jax.workload.transforms import restream

__all__ = [
    "MAL_TOKENS",
    "Table2Row",
    "TABLE2",
    "GeneratorParams",
    "PAPER_PARAMS",
    "mal_to_tokens",
    "generate_base_trajectories",
    "expand_agents",
    "paper_dataset",
    "MAX_AGENTS",
    "MAX_BASE",
]

MAL_TOKENS = {"32K": 32 * 1024, "48K": 48 * 1024, "64K": 64 * 1024}
"""MAL (Max Agent Length) of each paper dataset in tokens."""

_CHUNK_ROUNDS = 256

MAX_AGENTS = 1_000_000
"""Most agents :func:`expand_agents` makes (the paper's largest run, Table 3, has 48K; a million
agents, about 156 M rounds, take some 40 s and 4 GB)."""
MAX_BASE = 100_000
"""Most base trajectories :func:`generate_base_trajectories` makes (the paper: 500; 100K take some 25 s)."""


@dataclasses.dataclass(frozen=True)
class Table2Row:
    """One row of the paper's Table 2 (means; token counts)."""

    turns: float
    append: float
    gen: float
    total: float
    context: float


TABLE2 = {
    "32K": Table2Row(turns=60, append=608, gen=148, total=28_639, context=17_183),
    "48K": Table2Row(turns=106, append=474, gen=172, total=42_607, context=25_120),
    "64K": Table2Row(turns=157, append=429, gen=176, total=55_958, context=32_721),
}
"""Paper Table 2 (section 7.2), typed in from PAPER.md section 6.2."""


@dataclasses.dataclass(frozen=True)
class GeneratorParams:
    """Parameters of the trajectory generator (see the module docstring).

    Raises:
      ConfigError: naming the field, for a non-positive value.
    """

    first_append_mean: float
    append_mean: float
    gen_mean: float
    verbosity_sigma: float
    length_fraction_median: float
    first_append_sigma: float = 0.3
    append_sigma: float = 0.8
    gen_sigma: float = 0.7
    length_fraction_sigma: float = 0.4

    def __post_init__(self):
        for f in dataclasses.fields(self):
            check_positive(f"generator.{f.name}", getattr(self, f.name))

    FREE = ("first_append_mean", "append_mean", "gen_mean", "verbosity_sigma", "length_fraction_median")
    """The fitted fields, in the order :mod:`~dualpath_jax.workload.calibrate` uses."""

    def free_vector(self) -> np.ndarray:
        return np.array([getattr(self, name) for name in self.FREE], dtype=np.float64)

    def with_free(self, values) -> "GeneratorParams":
        return dataclasses.replace(self, **{n: float(v) for n, v in zip(self.FREE, values)})


PAPER_PARAMS = {
    "32K": GeneratorParams(first_append_mean=7064.0, append_mean=422.5, gen_mean=148.1,
                           verbosity_sigma=0.6619, length_fraction_median=0.9553),
    "48K": GeneratorParams(first_append_mean=8719.0, append_mean=339.6, gen_mean=172.5,
                           verbosity_sigma=0.6753, length_fraction_median=0.9352),
    "64K": GeneratorParams(first_append_mean=10525.0, append_mean=311.2, gen_mean=175.7,
                           verbosity_sigma=0.7141, length_fraction_median=0.9024),
}
"""Calibrated parameters per MAL (``calibrate_generator(mal)``, 16 seeds x 500 trajectories)."""


def mal_to_tokens(mal: str) -> int:
    """Tokens of a MAL name (``"32K"|"48K"|"64K"``); raises ConfigError naming ``mal``."""
    check_in("mal", mal, MAL_TOKENS)
    return MAL_TOKENS[mal]


def _lhs_normal(rng: np.random.Generator, k: int) -> np.ndarray:
    """f64[k]: the k centred normal quantiles in a random order (centred Latin hypercube)."""
    nd = statistics.NormalDist()
    quantiles = np.array([nd.inv_cdf((j + 0.5) / k) for j in range(k)])
    return quantiles[rng.permutation(k)]


def _mean_one_lognormal(z: np.ndarray, sigma: float) -> np.ndarray:
    return np.exp(sigma * z - 0.5 * sigma * sigma)


def generate_base_trajectories(mal: str = "64K", num_trajectories: int = 500, seed: int = 0,
                               params: GeneratorParams | None = None) -> TrajectorySet:
    """The K base trajectories of a paper dataset (stream trajectories, think time 0).

    Args:
      mal: ``"32K"|"48K"|"64K"``.
      num_trajectories: K (the paper uses 500).
      seed: generator seed; the same (mal, K, seed, params) gives identical trajectories.
      params: generator parameters; default ``PAPER_PARAMS[mal]``.
    Returns:
      TrajectorySet with agent ids ``"paper<mal>-s<seed>-<k:05d>"``.
    Raises:
      ConfigError: unknown ``mal``, ``num_trajectories`` outside [1, :data:`MAX_BASE`] or a
        negative or non-integer ``seed``.
    """
    max_tokens = mal_to_tokens(mal)
    check_positive("num_trajectories", num_trajectories, integer=True)
    check_at_most("num_trajectories", num_trajectories, MAX_BASE, "the paper generates 500")
    check_non_negative("seed", seed, integer=True)
    p = PAPER_PARAMS[mal] if params is None else params
    k = int(num_trajectories)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), max_tokens, k]))
    u = _mean_one_lognormal(_lhs_normal(rng, k), p.verbosity_sigma)
    first = p.first_append_mean * _mean_one_lognormal(_lhs_normal(rng, k), p.first_append_sigma)
    fraction = p.length_fraction_median * np.exp(p.length_fraction_sigma * _lhs_normal(rng, k))

    a_chunks, g_chunks, keep_chunks = [], [], []
    context = np.zeros(k, dtype=np.int64)
    active = np.ones(k, dtype=bool)
    target = None
    while active.any():
        ea = _mean_one_lognormal(rng.standard_normal((k, _CHUNK_ROUNDS)), p.append_sigma)
        eg = _mean_one_lognormal(rng.standard_normal((k, _CHUNK_ROUNDS)), p.gen_sigma)
        a = np.maximum(1, np.rint(p.append_mean * u[:, None] * ea)).astype(np.int64)
        g = np.maximum(1, np.rint(p.gen_mean * u[:, None] * eg)).astype(np.int64)
        if target is None:
            g[:, 0] = np.minimum(g[:, 0], max_tokens - 1)
            a[:, 0] = np.clip(np.rint(first), 1, max_tokens - g[:, 0]).astype(np.int64)
            round0 = a[:, 0] + g[:, 0]
            target = np.minimum(max_tokens, round0 + fraction * (max_tokens - round0))
        running = context[:, None] + np.cumsum(a + g, axis=1)
        keep = (running <= target[:, None]) & active[:, None]
        a_chunks.append(a)
        g_chunks.append(g)
        keep_chunks.append(keep)
        context = np.where(keep[:, -1], running[:, -1], context)
        active &= keep[:, -1]
    keep = np.concatenate(keep_chunks, axis=1)
    append = np.concatenate(a_chunks, axis=1)[keep]
    gen = np.concatenate(g_chunks, axis=1)[keep]
    counts = keep.sum(axis=1)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    ids = tuple(f"paper{mal}-s{seed}-{j:05d}" for j in range(k))
    return TrajectorySet.unchecked(
        round_offsets=offsets, num_append_tokens=append, num_gen_tokens=gen,
        num_hit_tokens=restream(append, gen, offsets), think_time_s=np.zeros(len(append)), agent_ids=ids,
        token_scopes=ids, block_tokens=np.full(k, BLOCK_TOKENS, np.int64), start_offset_s=np.zeros(k),
        parent_ids=(None,) * k, hashes=(None,) * k, source=f"synthetic:{mal}:seed{seed}")


def expand_agents(base: TrajectorySet, num_agents: int, seed: int = 0, *, prefix_append_tokens: int = 64,
                  mal_tokens: int | None = None, id_prefix: str | None = None) -> TrajectorySet:
    """``num_agents`` agents from stream base trajectories, as the paper makes more (A.3).

    The first ``min(num_agents, len(base))`` agents are the bases themselves; agent j beyond
    them replays a base (seeded permutations, each base used equally often) with a prepended
    round of ``prefix_append_tokens`` appended tokens and one generated token, then is truncated
    at ``mal_tokens`` (if given). Agent ids continue the bases' numbering when ``id_prefix`` is
    given (``f"{id_prefix}{j:05d}"``), else are ``"<base id>+<j>"``.

    Raises:
      ConfigError: ``num_agents`` outside [1, :data:`MAX_AGENTS`] or ``prefix_append_tokens`` < 1;
        ValueError: hashed bases.
    """
    check_positive("num_agents", num_agents, integer=True)
    check_at_most("num_agents", num_agents, MAX_AGENTS, "the paper's largest run has 48K agents (Table 3)")
    check_positive("prefix_append_tokens", prefix_append_tokens, integer=True)
    if not base.all_stream:
        raise ValueError("expand_agents: base trajectories must be stream trajectories")
    nb = len(base)
    if num_agents <= nb:
        return base.select(np.arange(num_agents))
    extra = num_agents - nb
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0xA6E47, nb]))
    reps = -(-extra // nb)
    pick = np.concatenate([rng.permutation(nb) for _ in range(reps)])[:extra]
    lengths = base.num_rounds[pick] + 1
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    total = int(offsets[-1])
    first = np.zeros(total, dtype=bool)
    first[offsets[:-1]] = True
    src = np.repeat(base.round_offsets[pick] - 1 - offsets[:-1], lengths) + np.arange(total)
    src = np.where(first, 0, src)
    append = np.where(first, prefix_append_tokens, base.num_append_tokens[src]).astype(np.int64)
    gen = np.where(first, 1, base.num_gen_tokens[src]).astype(np.int64)
    hit = np.where(first, 0, base.num_hit_tokens[src] + prefix_append_tokens + 1)
    if mal_tokens is None:
        keep = np.ones(total, dtype=bool)
    else:
        if prefix_append_tokens + 1 > mal_tokens:
            raise ConfigError("prefix_append_tokens", f"must be < mal_tokens={mal_tokens} "
                              f"(got {prefix_append_tokens})")
        keep = hit + append + gen <= mal_tokens  # a prefix of every agent's rounds (contexts grow)
    counts = np.add.reduceat(keep.astype(np.int64), offsets[:-1])
    if id_prefix is not None:
        ids = tuple(f"{id_prefix}{j:05d}" for j in range(nb, num_agents))
    else:
        ids = tuple(f"{base.agent_ids[b]}+{j}" for j, b in zip(range(nb, num_agents), pick))
    extras = TrajectorySet.unchecked(
        round_offsets=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        num_append_tokens=append[keep], num_gen_tokens=gen[keep], num_hit_tokens=hit[keep],
        think_time_s=base.think_time_s[src][keep] * ~first[keep], agent_ids=ids, token_scopes=ids,
        block_tokens=base.block_tokens[pick], start_offset_s=np.zeros(extra), parent_ids=(None,) * extra,
        hashes=(None,) * extra, source=base.source)
    return TrajectorySet.concatenate([base, extras])


def paper_dataset(mal: str = "64K", num_agents: int = 500, seed: int = 0, *,
                  num_base: int = 500, params: GeneratorParams | None = None,
                  prefix_append_tokens: int = 64) -> TrajectorySet:
    """``num_agents`` agents of the paper's ``mal`` dataset: ``num_base`` generated trajectories
    expanded by :func:`expand_agents` (48K agents take well under a second; PAPER.md section 6.2, A.3).

    Raises:
      ConfigError: naming the field: ``mal`` not ``"32K"|"48K"|"64K"``; ``num_agents`` not an
        integer in [1, :data:`MAX_AGENTS`]; ``num_trajectories`` for ``num_base`` not an integer in
        [1, :data:`MAX_BASE`]; ``seed`` negative or not an integer; ``prefix_append_tokens`` < 1,
        or (when ``num_agents > num_base`` adds agents) not below the MAL's tokens.
    """
    base = generate_base_trajectories(mal, num_base, seed, params)
    return expand_agents(base, num_agents, seed, prefix_append_tokens=prefix_append_tokens,
                         mal_tokens=mal_to_tokens(mal), id_prefix=f"paper{mal}-s{seed}-")
