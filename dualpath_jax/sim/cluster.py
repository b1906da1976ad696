"""The simulator's event loop: :class:`Simulator`, one run of a :class:`SimConfig` over agents.

Design: virtual time, one heap of events ``(t, seq, kind, a, b)`` (ties in time keep push order),
no wall clock; one handler per kind (an agent's arrival, a scheduler tick, a read done, a PE
forward done or kicked, a DE join, a DE unit's next completion). The state lives in flat per-node,
per-engine and per-request columns (:func:`~.result.request_columns`), and the whole module is
compiled by mypyc in the opt-in build (``setup.py``). What it models, hop by hop (servers, data
paths, buffers, prefill modes, groups, decode), is described in :mod:`dualpath_jax.sim`; the
servers and paths are :class:`~.hardware.Topology`'s.

**Scheduling** is the shared :class:`~dualpath_jax.sched.driver.SchedulingDriver` (the real
engine runs the same one): the simulator is its view (``group_loads``, ``read_queue_tokens``),
turns its tick requests into events and applies its placements.

The agents (:class:`~dualpath_jax.sim.agents.SimAgent`) are checked and laid out by
:mod:`dualpath_jax.sim.agents`; :mod:`.fit` checks that each of their requests fits the cluster.
"""

from __future__ import annotations

import array
import collections
import gc
import hashlib
import heapq
import itertools
import math
import operator
import random
import sys
from collections.abc import Sequence
from typing import SupportsIndex

import tqdm
from mypy_extensions import mypyc_attr

from dualpath_jax.config import ConfigError
from dualpath_jax.model import cost
from dualpath_jax.sched import BatchItem, ClusterScheduler, EngineLoad, SchedRequest, SchedulerConfig
from dualpath_jax.sched.driver import RunStalled, SchedulingDriver, next_round_s
from dualpath_jax.sim.agents import SimAgent, as_typed_array, flatten_agents, typical_round
from dualpath_jax.sim.compute import role_models
from dualpath_jax.sim.config import SimConfig
from dualpath_jax.sim.hardware import BufferQueues, Topology, reserve
from dualpath_jax.sim.result import SimResult, collect_result, request_columns, stall_report
from dualpath_jax.sim.fit import check_requests_fit, kv_memory
from dualpath_jax.sim.units import Unit

__all__ = ["SimAgent", "SimResult", "Simulator", "simulate"]

_ARRIVE, _TICK, _READ_DONE, _PE_DONE, _DE_JOIN, _DE_EVENT, _PE_KICK = range(7)
_MAX_BATCH_REQUESTS = 512

@mypyc_attr(allow_interpreted_subclasses=True)  # e.g. to check invariants per event (compiled: see setup.py)
class Simulator:
    """One run of :class:`SimConfig` over a list of :class:`SimAgent` (call :meth:`run`).

    ``scheduler_cls`` swaps in a :class:`~dualpath_jax.sched.ClusterScheduler` subclass, e.g. one
    overriding ``read_plan`` to try a new read-side policy; the runtime calls it exactly as it
    calls the built-in one.

    Args:
      config: the run's cluster, model, hardware and policy.
      agents: the agents (at least one); token counts in tokens, times in virtual seconds.
      scheduler_cls: the scheduler class (default the built-in :class:`~dualpath_jax.sched.ClusterScheduler`).

    Raises:
      ConfigError: naming the field: ``agents`` empty; ``agents[i].<field>`` for a malformed
        agent (:func:`~dualpath_jax.sim.agents.flatten_agents`); no HBM left for KV after the
        weights (:func:`~.fit.kv_memory`: ``sim.activation_reserve_bytes``,
        ``sim.hardware.hbm_bytes``, or the node count / EP field whose GPUs share the experts);
        a request that can never fit (:func:`~.fit.check_requests_fit`): its whole context's KV
        in a DE's HBM or its prompt's KV in a PE's free HBM (``sim.hardware.hbm_bytes``), or its
        prompt's KV in a node's DRAM buffer (``sim.hardware.dram_buffer_bytes``; not checked with
        ``loading="oracle"``). :meth:`run` lists what a run raises.

    Warns:
      ContextBeyondModelWarning: (:class:`~.fit.ContextBeyondModelWarning`) some requests'
        contexts (hit + append + generated tokens) exceed the model's
        ``max_position_embeddings``; the run prices them all the same.
    """

    def __init__(self, config: SimConfig, agents: Sequence[SimAgent], *, scheduler_cls: type = ClusterScheduler):
        self.cfg = cfg = config
        hw = cfg.hardware
        self.spec = spec = cfg.spec
        self.g = hw.gpus_per_node
        self.kvb = float(cost.stored_kv_bytes_per_token(spec, cfg.kv_dtype))  # KV + DSA indexer keys
        n_pe, n_de = cfg.prefill_nodes * self.g, cfg.decode_nodes * self.g
        ep_pe, ep_de = cfg.ep_gpus("pe"), cfg.ep_gpus("de")  # an EP group's GPUs hold the routed experts
        self.pe_model, self.de_model = role_models(cfg)
        self.pe_free_hbm, self.de_hbm, self.pe_max_kv_tokens = kv_memory(cfg, self.pe_model, self.de_model, self.kvb)
        self.agents = list(agents)
        if not self.agents:  # a run of nothing would end at 0 s, a JCT that looks like a result
            raise ConfigError("agents", "must hold at least one agent (got an empty list)")
        flat = flatten_agents(self.agents)
        check_requests_fit(cfg, flat, kvb=self.kvb, de_hbm=self.de_hbm, pe_free_hbm=self.pe_free_hbm,
                           pe_max_kv_tokens=self.pe_max_kv_tokens)
        # nodes: PE nodes 0..P-1, DE nodes P..P+D-1; engines: PEs 0..n_pe-1, DEs n_pe..
        n_nodes = cfg.prefill_nodes + cfg.decode_nodes
        sync = cfg.uses_ep_sync  # an EP group steps together, so it is also one scheduler group (fetches together)
        net = self.topology = Topology(hw, cfg.prefill_nodes, cfg.decode_nodes,
                                       pe_group_nodes=ep_pe // self.g if sync else 1,
                                       de_group_nodes=ep_de // self.g if sync else 1)
        self.snic_r, self.snic_w, self.dram, self.cnic_in, self.cnic_out = (net.snic_r, net.snic_w, net.dram,
                                                                              net.cnic_in, net.cnic_out)
        self.node_of, self.pe_ids, self.de_ids = net.node_of, net.pe_ids, net.de_ids
        self._read_path, self._to_hbm_path, self._to_dram_path, self._persist_path = (
            net.read_path, net.to_hbm_path, net.to_dram_path, net.persist_path)
        pe_groups, de_groups = net.pe_groups, net.de_groups
        self.buffers = BufferQueues(hw.dram_buffer_bytes, n_nodes)
        # scheduler thresholds in tokens (PAPER.md 5.2, A.4)
        ctx, app = typical_round(flat)
        # tok_e counts prompt tokens (hit + append): beta = 5 s of one engine's rate in prompt tokens
        prompt_tokens_per_s = self.pe_model.prefill_tokens_per_s(ctx, app) * (ctx + app) / app
        alpha = cfg.alpha_s * self.snic_r[0].rate / self.kvb  # a node's read rate: its SNICs, capped by storage
        beta = cfg.beta_s * prompt_tokens_per_s
        self.sched = scheduler_cls(SchedulerConfig(policy=cfg.policy, loading=cfg.loading, alpha_tokens=alpha,
                                                      beta_tokens=beta, z_factor=cfg.z_factor,
                                                      compute_quota_s=cfg.compute_quota_s), pe_groups, de_groups)
        self.alpha_tokens, self.beta_tokens = alpha, beta
        self.pe_units = [Unit(v) for v in pe_groups.values()] if sync else [Unit([e]) for e in self.pe_ids]
        self.de_units = [Unit(v) for v in de_groups.values()] if sync else [Unit([e]) for e in self.de_ids]
        self.pe_busy_s = [0.0] * len(self.pe_units)
        self.pe_forwards = [0] * len(self.pe_units)
        self.pe_batch_requests = [0] * len(self.pe_units)
        # engine -> index of its unit among the PE units or the DE units
        self.unit_of = {e: i for units in (self.pe_units, self.de_units)
                        for i, u in enumerate(units) for e in u.engines}
        # each engine's tok_e, seq_e and free HBM (PAPER.md 5.1), kept as the records the leaders report
        self.load = [EngineLoad(e, self.node_of[e], 0, 0, 0.0 if e < n_pe else self.de_hbm) for e in range(n_pe + n_de)]
        self._group_loads = {gid: [self.load[e] for e in engines]
                             for groups in (pe_groups, de_groups) for gid, engines in groups.items()}
        # the scheduling protocol (ticks, fetch order, load reports, read plans) is the shared driver's
        self.driver = SchedulingDriver(self.sched, self, on_pe_placed=self._on_pe_placed,
                                       on_de_placed=self._on_de_placed, fetch_period_s=cfg.fetch_period_s,
                                       loading=cfg.loading)
        # per PE: FIFO of BatchItem(request, cached, remaining) whose reads are done
        self.ready: list[collections.deque] = [collections.deque() for _ in range(n_pe + n_de)]
        self.de_batch = [0] * (n_pe + n_de)
        self.de_ctx = [0.0] * (n_pe + n_de)
        self.de_att = [0.0] * (n_pe + n_de)  # per DE: KV entries a decode step reads (DSA: top-k per sequence)
        self.time_model = self.pe_model  # ComputeModel.time_s(cached, bsz): attention seconds of a forward
        # the estimate's error (SimConfig.attention_time_error): a mean-one lognormal factor per forward,
        # drawn from a stream seeded by the workload (another seed's workload: another stream)
        self._attn_sigma = float(self.cfg.attention_time_error)
        self.noise_seed = self._workload_seed(flat)
        self._attn_rng = random.Random(self.noise_seed)
        self.attention_s: list[tuple[float, float]] = []  # per group forward: (max, mean) attention seconds
        self.attention_members: list[tuple[int, int]] = []  # per group forward: (busy members, members)
        self.attention_start_s: list[float] = []  # per group forward: when it started (virtual s)
        self._snic_samples_of = [array.array("d") for _ in self.snic_r]  # by node: start, finish, bytes, ...
        self.heap: list = []
        self._next_seq = itertools.count(1).__next__  # ties in time keep push order
        self.now = 0.0
        self.events = 0
        self._ran = False
        self._completed = 0
        self.de_step = [0.0] * (n_pe + n_de)
        # per-request columns, preallocated for every round of every agent (request ids are issue order)
        total = self._total = sum(len(a.append) for a in self.agents)
        self.R = request_columns(total)
        self._chunks_sent: dict[int, float] = {}  # request id -> when its earlier chunks' KV is in the DE buffer
        self._issued = 0
        self.agent_round = [0] * len(self.agents)
        self.agent_context = [int(a.initial_context) for a in self.agents]
        self.agent_stored = list(self.agent_context)  # of the context, tokens whose KV is stored
        # the agent's longest context so far and its stored tokens: a given hit beyond the previous
        # context reaches back to it (another thread of a traced conversation, SimAgent.hit)
        self.agent_longest = list(self.agent_context)
        self.agent_longest_stored = list(self.agent_context)
        self._req: list[SchedRequest | None] = [None] * total  # live requests' scheduler records
        self._reads = [0] * total  # reads still in flight per request
        # each agent's rounds as typed arrays, made at its first arrival (numpy scalars index slowly)
        self._rounds: list[tuple | None] = [None] * len(self.agents)

    def _push(self, t: float, kind: int, a=None, b=None):
        heapq.heappush(self.heap, (t, self._next_seq(), kind, a, b))

    # ---- main loop ------------------------------------------------------------------------------
    def run(self, *, max_events: SupportsIndex | None = None, progress: object = None) -> SimResult:
        """Simulate until every agent's last round finishes (or ``max_events``).

        ``max_events``: an int (numpy ints too). ``progress``: show a tqdm bar of finished requests
        with rate and ETA if true (default None: only when stderr is a terminal, so logs and CI stay quiet).

        Raises:
          RuntimeError: the simulator has run already (its state is spent; make a new one).
          RunStalled: (a ``RuntimeError``) the run stalled: no event is left but requests are
            unfinished (e.g. a custom scheduler that never places some request); the message says
            what the first unfinished one waits for.
          ValueError: a custom scheduler's ``read_plan`` is inconsistent (``sched.check_read_plan``), or
            ``max_events`` is negative.
        """
        if self._ran:
            raise RuntimeError("Simulator.run: this simulator has run already; make a new one for another run")
        limit = None if max_events is None else operator.index(max_events)
        if limit is not None and limit < 0:
            raise ValueError(f"Simulator.run: max_events must be >= 0 (got {limit})")
        show = None if progress is None else bool(progress)
        self._ran = True
        # The run allocates millions of short-lived acyclic objects; the cyclic collector would
        # rescan the (large, growing) live request state again and again for nothing.
        gc_enabled = gc.isenabled()
        gc.disable()
        try:
            return self._run(limit, show)
        finally:
            if gc_enabled:
                gc.enable()

    def _run(self, max_events: int | None, progress: bool | None) -> SimResult:
        for i, a in enumerate(self.agents):
            self._push(float(a.arrival_s), _ARRIVE, i)
        total = self._total
        if progress is None:
            progress = sys.stderr.isatty()
        bar = tqdm.tqdm(total=total, unit="req", desc=f"sim {self.cfg.loading}/{self.cfg.prefill}/{self.cfg.policy}",
                        disable=not progress, mininterval=1.0, leave=False)
        shown = 0
        handlers = [self._on_arrive, self._on_tick, self._on_read_done, self._on_pe_done, self._on_de_join,
                    self._on_de_event, self._on_pe_kick]  # indexed by event kind
        heap = self.heap
        limit = math.inf if max_events is None else max_events
        events = self.events
        try:
            while heap and events < limit:
                t, _, kind, a, b = heapq.heappop(heap)
                self.now = t
                events += 1
                handlers[kind](a, b)
                if progress and not events % 20000:
                    bar.update(self._completed - shown)
                    shown = self._completed
        finally:
            self.events = events
        bar.close()
        if not heap and self._completed < self._total:
            raise RunStalled(stall_report(self))
        return collect_result(self)

    def _workload_seed(self, flat) -> int:
        """A seed that the agents' rounds and arrivals set (BLAKE2b of their token counts and start
        times): the same workload draws the same stream, another workload another one."""
        h = hashlib.blake2b(digest_size=8)
        for column in (flat.append, flat.gen, flat.hit):
            h.update(column.tobytes())
        h.update(array.array("d", [float(a.arrival_s) for a in self.agents]).tobytes())
        return int.from_bytes(h.digest(), "little")

    # ---- agents ---------------------------------------------------------------------------------
    def _agent_rounds(self, agent: int) -> tuple:
        a = self.agents[agent]
        rounds = self._rounds[agent] = (  # typed arrays: an item is read as a Python int (or float)
            as_typed_array(a.append, "q"), as_typed_array(a.gen, "q"),
            None if a.hit is None else as_typed_array(a.hit, "q"),
            None if a.think_s is None else as_typed_array(a.think_s, "d"))
        return rounds

    def _on_arrive(self, agent: int, _):
        append_r, gen_r, hit_r, _think = self._rounds[agent] or self._agent_rounds(agent)
        r = self.agent_round[agent]
        append, gen = append_r[r], gen_r[r]
        context = self.agent_context[agent]
        stored = self.agent_stored[agent]
        if hit_r is None:
            hit = context
        else:
            hit = hit_r[r]
            if hit > context:
                if hit <= self.agent_longest[agent]:  # an earlier, longer context holds it
                    stored = self.agent_longest_stored[agent]
                else:
                    hit = context
        cached = min(hit, stored)  # the rest of the prompt's prefix is recomputed
        append += hit - cached
        hit = cached
        rid = self._issued
        self._issued = rid + 1
        R = self.R
        R["agent"][rid] = agent
        R["round"][rid] = r
        R["arrival_s"][rid] = self.now
        R["hit_tokens"][rid] = hit
        R["append_tokens"][rid] = append
        R["gen_tokens"][rid] = gen
        req = self._req[rid] = SchedRequest(rid, hit, append, gen, int((hit + append + gen) * self.kvb))
        t = self.driver.submit(req, self.now)
        if t is not None:
            self._push(t, _TICK)

    # ---- scheduling (the protocol is sched.driver's; this runtime provides its view) -------------
    def _request_tick(self):
        t = self.driver.request_tick(self.now)
        if t is not None:
            self._push(t, _TICK)

    def group_loads(self, group_id: int) -> list[EngineLoad]:
        """RuntimeView: the group's live load records (tok_e, seq_e, free HBM; PAPER.md 5.1)."""
        return self._group_loads[group_id]

    def read_queue_tokens(self, node: int) -> float:
        """RuntimeView: node ``node``'s disk read queue in tokens: SNIC backlog plus reads waiting
        for buffer space."""
        srv = self.snic_r[node]
        return (srv.backlog_s(self.now) * srv.rate + self.buffers.wait_bytes[node]) / self.kvb

    def _on_tick(self, _a, _b):
        self.driver.tick()

    def _place(self, asg, column: str) -> EngineLoad:
        """Record a placement: the request's engine column and the engine's tok_e, seq_e."""
        req, le = asg.request, self.load[asg.engine_id]
        self.R[column][req.request_id] = asg.engine_id
        le.tok += req.num_tokens
        le.seq += 1
        return le

    def _on_pe_placed(self, asg):
        self._place(asg, "pe")

    def _on_de_placed(self, asg):
        self._place(asg, "de").free_hbm_bytes -= asg.request.hbm_bytes
        self._start_read(asg.request.request_id)

    def _start_read(self, rid: int):
        R = self.R
        now = self.now
        R["placed_s"][rid] = now
        pe, de = R["pe"][rid], R["de"][rid]
        hit = R["hit_tokens"][rid]
        z = self.cfg.block_tokens
        hit_blocks = hit // z  # only whole Full Blocks are stored; the partial tail is recomputed
        if hit_blocks * z != hit:
            R["append_tokens"][rid] += hit - hit_blocks * z
            R["hit_tokens"][rid] = hit = hit_blocks * z
        pn, dn = self.node_of[pe], self.node_of[de]
        req = self._req[rid]
        assert req is not None  # live until it completes
        side, de_blocks = self.driver.read_plan(req, pn, dn, hit_blocks, z)
        R["side"][rid] = side
        R["de_blocks"][rid] = de_blocks
        kvb = self.kvb
        de_bytes = de_blocks * z * kvb
        pe_bytes = 0.0 if side == "none" else hit * kvb - de_bytes
        R["read_bytes_pe"][rid] = pe_bytes
        R["read_bytes_de"][rid] = de_bytes
        reads = (pe_bytes > 0) + (de_bytes > 0)
        self._reads[rid] = reads
        if self.cfg.loading == "oracle":
            self._push(now, _READ_DONE, rid)
            return
        # the DE buffer will hold the whole prompt's KV (DE-side hits, then the PE's hand-off): its
        # space is taken first, then the PE-side read's (always in this order, so no request holds
        # one buffer while it waits for the other in a cycle); the PE-side read waits meanwhile
        self.buffers.wait_bytes[pn] += pe_bytes
        self._admit_or_wait(dn, rid, de_bytes, (hit + R["append_tokens"][rid]) * kvb)

    def _admit_or_wait(self, node: int, rid: int, read_bytes: float, charge: float):
        """Take ``charge`` bytes of ``node``'s DRAM buffer for request ``rid`` and start its read of
        ``read_bytes``, or queue it (:class:`~.hardware.BufferQueues`: bounded PE/DE buffers, FIFO).
        On a DE node this is the request's DE buffer space, after which its PE-side read is admitted."""
        if self.buffers.take_or_wait(node, rid, read_bytes, charge):
            self._admit(node, rid, read_bytes, charge)

    def _admit(self, node: int, rid: int, read_bytes: float, charge: float):
        """Request ``rid`` holds ``charge`` bytes of ``node``'s buffer: start its read."""
        if read_bytes > 0:
            start, end = reserve(self._read_path[node], read_bytes, self.now, self.now)
            self._snic_samples_of[node].extend((start, end, read_bytes))
            self._push(end, _READ_DONE, rid)
        if node >= self.cfg.prefill_nodes:  # a DE node: the request's DE space is held, its PE-side read next
            R = self.R
            pe_bytes = R["read_bytes_pe"][rid]
            if pe_bytes > 0:
                pn = self.node_of[R["pe"][rid]]
                self.buffers.wait_bytes[pn] -= pe_bytes
                self._admit_or_wait(pn, rid, pe_bytes, pe_bytes)
            elif self._reads[rid] == 0:  # nothing to read: ready now
                self._push(self.now, _READ_DONE, rid)

    def _release_buffer(self, node: int, nbytes: float):
        if nbytes > 0:
            for rid, b, charge in self.buffers.release(node, nbytes):
                self._admit(node, rid, b, charge)

    def _on_read_done(self, rid: int, _):
        left = self._reads[rid] = self._reads[rid] - 1
        if left > 0:
            return
        R = self.R
        R["read_done_s"][rid] = self.now
        pe = R["pe"][rid]
        self.ready[pe].append(BatchItem(rid, R["hit_tokens"][rid], R["append_tokens"][rid]))
        u = self.unit_of[pe]
        unit = self.pe_units[u]
        if not unit.busy and not unit.kick:
            # an idle unit starts its forward after every event of this instant: requests of other
            # members that become ready at the same time join the same forward
            if self.heap and self.heap[0][0] <= self.now:
                unit.kick = True
                self._push(self.now, _PE_KICK, u)
            else:  # nothing else happens at this instant: start now (what the kick would do next)
                self._try_start_pe(u)

    def _on_pe_kick(self, u: int, _):
        self.pe_units[u].kick = False
        self._try_start_pe(u)

    # ---- prefill --------------------------------------------------------------------------------
    def _try_start_pe(self, u: int):
        unit = self.pe_units[u]
        if unit.busy:
            return
        cfg, L = self.cfg, self.spec.n_layers
        now = self.now
        plans, ends, attn = [], [], []
        hit_tokens, prefill_start = self.R["hit_tokens"], self.R["prefill_start_s"]
        ready = self.ready
        batches = []
        group_tokens = 0
        for e in unit.engines:
            if ready[e]:  # the batch formers read the FIFO only as far as the batch reaches
                batch = self.sched.form_pe_batch(itertools.islice(ready[e], _MAX_BATCH_REQUESTS),
                                                 time_model=self.time_model, max_tokens=cfg.basic_max_batch_tokens,
                                                 max_kv_tokens=self.pe_max_kv_tokens)
                bsz = [b.remaining for b in batch]
                batches.append((e, batch, [b.cached for b in batch], bsz))
                group_tokens += sum(bsz)
        # the routed experts compute every member's tokens, spread over the group (sim.compute's docstring)
        routed_tokens = group_tokens / len(unit.engines)
        for e, batch, cached, bsz in batches:
            t_a = self.pe_model.attention_time_s(cached, bsz)
            if self._attn_sigma > 0.0:  # what the forward takes, of which the batch former knew the estimate
                sigma = self._attn_sigma
                t_a *= math.exp(self._attn_rng.gauss(-0.5 * sigma * sigma, sigma))
            t_c = self.pe_model.prefill_time_s(cached, bsz, attention_s=t_a, routed_tokens=routed_tokens)
            attn.append(t_a)
            load_end = now
            layer_s = t_c / L
            for rid, cached_b, _ in batch:
                if cached_b == hit_tokens[rid]:  # the first chunk: no earlier one has run (each adds >= 1 token)
                    prefill_start[rid] = now
                in_end = self._prefill_loads(rid, e, cached_b, now)
                if in_end > load_end:
                    load_end = in_end
            if cfg.prefill == "layerwise":  # layer 0's KV leaves as the next layers compute
                end, sent = max(now + t_c, load_end + layer_s), now + layer_s
            else:  # all layers are loaded before the first is computed
                end, sent = load_end + t_c, load_end + layer_s
            outs = [self._prefill_sends(rid, e, cached_b, bsz_b, sent, now) for rid, cached_b, bsz_b in batch]
            plans.append((e, batch, outs))
            ends.append(end)
        if not plans:
            return
        if len(attn) > 1 or len(unit.engines) > 1:
            full = attn + [0.0] * (len(unit.engines) - len(attn))
            mean = sum(full) / len(full)
            if mean > 0:
                self.attention_s.append((max(full), mean))
                self.attention_members.append((sum([a > 0 for a in attn]), len(full)))
                self.attention_start_s.append(now)
        unit.busy = True
        end = max(ends)
        self.pe_busy_s[u] += end - now
        self.pe_forwards[u] += 1
        self.pe_batch_requests[u] += sum([len(p[1]) for p in plans])
        self._push(end, _PE_DONE, u, (plans, end))

    def _prefill_loads(self, rid, pe, cached, now):
        """Reserve the loads of one request chunk's cached KV (its hit plus its earlier chunks'
        tokens) into PE ``pe``'s HBM; returns when they end.

        The hit KV comes from the PE buffer and the DE buffer (the request's read split), in every
        chunk; an earlier chunk's KV from the PE host, where the chunk that computed it copied it
        (:meth:`_prefill_sends`; the engine's PE keeps it there: ``engine/pe.py``)."""
        R = self.R
        if self.cfg.loading == "oracle":
            return now
        hit = R["hit_tokens"][rid]
        de_share = self._de_share(rid, hit)
        kvb = self.kvb
        in_end = now
        b_pe, b_de = (hit * (1 - de_share) + (cached - hit)) * kvb, hit * de_share * kvb
        if b_pe > 0:
            in_end = reserve(self._to_hbm_path[pe], b_pe, now, now)[1]
        if b_de > 0:
            de = R["de"][rid]
            end = reserve((self.dram[self.node_of[de]], self.cnic_out[de], self.cnic_in[pe]), b_de, now, now)[1]
            if end > in_end:
                in_end = end
        return in_end

    def _de_share(self, rid, hit):
        """The share of request ``rid``'s ``hit`` tokens that its DE side read (0.0 without a hit)."""
        return self.R["de_blocks"][rid] * self.cfg.block_tokens / hit if hit else 0.0

    def _prefill_sends(self, rid, pe, cached, bsz, earliest, now):
        """Reserve what PE ``pe`` sends of one request chunk from ``earliest`` on (its first layer
        computed); returns when its KV is in the DE buffer (for the last chunk: when every chunk's is).

        Every chunk's new KV goes to the DE buffer, and with the first chunk of a PE-side read the
        hit KV too; each chunk but the last also copies its new KV to the PE host (D2H), which the
        next chunks load (:meth:`_prefill_loads`)."""
        R = self.R
        if self.cfg.loading == "oracle":
            return now
        de = R["de"][rid]
        hit = R["hit_tokens"][rid]
        out_bytes = bsz * self.kvb
        if cached == hit and hit:  # the first chunk: PE-side hit KV goes to the DE buffer too
            out_bytes += hit * (1 - self._de_share(rid, hit)) * self.kvb
        out_end = reserve((self.cnic_out[pe], self.cnic_in[de], self.dram[self.node_of[de]]), out_bytes,
                          earliest, now)[1]
        if cached + bsz < hit + R["append_tokens"][rid]:  # not the last chunk: its KV stays on the PE host
            reserve(self._to_dram_path[pe], bsz * self.kvb, earliest, now)
            sent = self._chunks_sent.get(rid, out_end)
            self._chunks_sent[rid] = out_end if out_end > sent else sent
            return out_end
        sent = self._chunks_sent.pop(rid, out_end)  # the hand-off waits for every chunk's KV: a later,
        return out_end if out_end > sent else sent  # smaller send may have filled an earlier gap

    def _on_pe_done(self, u: int, payload):
        plans, end = payload
        unit = self.pe_units[u]
        unit.busy = False
        R = self.R
        hit, app, first_token = R["hit_tokens"], R["append_tokens"], R["first_token_s"]
        R_de, read_bytes_pe = R["de"], R["read_bytes_pe"]
        now, kvb, node_of = self.now, self.kvb, self.node_of
        oracle = self.cfg.loading == "oracle"
        for e, batch, outs in plans:
            q = self.ready[e]
            pn = node_of[e]
            le = self.load[e]
            done = False
            for b, out_end in zip(batch, outs):
                item = q[0]
                assert item.request_id == b.request_id
                if item.remaining > b.remaining:  # chunked prefill: the rest stays at the head of the FIFO
                    q[0] = BatchItem(item.request_id, item.cached + b.remaining, item.remaining - b.remaining)
                    continue
                q.popleft()
                rid = b.request_id
                first_token[rid] = now
                done = True
                prompt = hit[rid] + app[rid]
                le.tok -= prompt
                le.seq -= 1
                pe_bytes = read_bytes_pe[rid]
                if pe_bytes > 0:
                    self._release_buffer(pn, pe_bytes)
                de = R_de[rid]
                kv_ready = now if now >= out_end else out_end
                h2d_end = reserve(self._to_hbm_path[de], 0.0 if oracle else prompt * kvb, kv_ready, now)[1]
                self._push(h2d_end, _DE_JOIN, rid)
            if done:
                self.driver.pe_released(e)
        self._request_tick()
        self._try_start_pe(u)

    # ---- decode ---------------------------------------------------------------------------------
    def _de_reschedule(self, u: int):
        """Make sure an event fires no later than the unit's next completion (``Unit.next_completion``)."""
        unit = self.de_units[u]
        t = unit.next_completion()
        if t is not None:
            self._push(t, _DE_EVENT, u, unit.version)

    def _on_de_join(self, rid: int, _):
        R = self.R
        de = R["de"][rid]
        if self.cfg.loading != "oracle":  # the whole prompt's KV left the DE buffer: DE-side hits + hand-off
            self._release_buffer(self.node_of[de], (R["hit_tokens"][rid] + R["append_tokens"][rid]) * self.kvb)
        now = self.now
        R["decode_start_s"][rid] = now
        gen = R["gen_tokens"][rid]
        # the request's new KV is persisted from the start of decode, HBM -> CNIC -> DRAM -> SNIC ->
        # storage: the prompt's now, each generated block as it fills (PAPER.md 2.5); the write is
        # reserved at once, its bytes being a small share of the node's traffic. Only complete Full
        # Blocks are stored, of the tokens with KV: the last generated token's KV is never computed
        z = self.cfg.block_tokens
        stored = (R["hit_tokens"][rid] + R["append_tokens"][rid] + gen - 1) // z * z
        R["persisted_s"][rid] = self._persist(rid, stored - R["hit_tokens"][rid])
        if gen <= 1:  # the PE produced the only token
            self._complete(rid)
            return
        u = self.unit_of[de]
        unit = self.de_units[u]
        unit.advance(self.now, self.R["second_token_s"])
        unit.last_t += self.cfg.de_join_s  # the unit decodes nothing while it admits the request
        mean_ctx = R["hit_tokens"][rid] + R["append_tokens"][rid] + (gen - 1) / 2.0  # context over the decode
        batch = self.de_batch[de] = self.de_batch[de] + 1
        ctx_sum = self.de_ctx[de] = self.de_ctx[de] + mean_ctx
        att_sum = self.de_att[de] = self.de_att[de] + self.de_model.attended(mean_ctx)
        unit.batch += 1
        self._set_de_step(unit, de, batch, ctx_sum, att_sum)
        heapq.heappush(unit.heap, (unit.steps + (gen - 1), rid, de, mean_ctx))
        heapq.heappush(unit.seconds, (unit.steps + 1, rid))  # its first decode step: stamped as passed
        self._de_reschedule(u)

    def _on_de_event(self, u: int, version: int):
        unit = self.de_units[u]
        if version != unit.version:
            return
        unit.next_t = math.inf
        unit.advance(self.now, self.R["second_token_s"])
        heap = unit.heap
        due = unit.steps + 1e-9
        if heap and heap[0][0] <= due:
            de_batch, de_ctx, de_att = self.de_batch, self.de_ctx, self.de_att
            attended = self.de_model.attended
            changed = set()
            while heap and heap[0][0] <= due:
                _, rid, de, mean_ctx = heapq.heappop(heap)
                de_batch[de] -= 1
                de_ctx[de] -= mean_ctx
                de_att[de] -= attended(mean_ctx)
                unit.batch -= 1
                changed.add(de)
                self._complete(rid)
            for de in changed:  # the step time after every completion of this instant
                if not de_batch[de]:  # no drift left behind by the sums of floats
                    de_ctx[de] = de_att[de] = 0.0
                self._set_de_step(unit, de, de_batch[de], de_ctx[de], de_att[de])
        self._de_reschedule(u)

    def _set_de_step(self, unit: Unit, de: int, batch: int, ctx_sum: float, att_sum: float) -> None:
        """Set DE ``de``'s step in its ``unit`` from its ``batch`` sequences of ``ctx_sum`` context
        tokens (``att_sum`` attended): under EP its own part, plus the routed experts' part at the
        unit's mean sequences per GPU (``sim.compute``); an engine alone (or a dense model) takes
        its whole step as :meth:`ComputeModel.decode_step_s` gives it, to the bit."""
        m = self.de_model
        if len(unit.engines) == 1 or not m.s_per_routed_token:
            unit.set_step(self.de_step, de, m.decode_step_s(batch, ctx_sum, att_sum), 0.0)
        else:
            unit.set_step(self.de_step, de, m.decode_step_s(batch, ctx_sum, att_sum, 0.0),
                          m.s_per_routed_token * unit.batch / len(unit.engines))

    def _complete(self, rid: int):
        R = self.R
        de = R["de"][rid]
        now = self.now
        R["finish_s"][rid] = now
        self._completed += 1
        prompt = R["hit_tokens"][rid] + R["append_tokens"][rid]
        context = prompt + R["gen_tokens"][rid]
        le = self.load[de]
        le.tok -= prompt
        le.seq -= 1
        le.free_hbm_bytes += context * self.kvb
        self.driver.de_released(de)
        self._req[rid] = None
        # the agent's next round reads this KV, so it is issued once the write is done (as in the
        # engine), plus its think time; its context is everything so far (hit prefix, append,
        # generation), of which all but the last generated token have KV (it is never fed back)
        persisted = R["persisted_s"][rid]
        if persisted < now:
            R["persisted_s"][rid] = now
        agent = R["agent"][rid]
        self.agent_context[agent] = context
        self.agent_stored[agent] = context - 1
        if context > self.agent_longest[agent]:
            self.agent_longest[agent] = context
            self.agent_longest_stored[agent] = context - 1
        r = self.agent_round[agent] = self.agent_round[agent] + 1
        append_r, _gen, _hit, think_r = self._rounds[agent]
        if r < len(append_r):
            at = next_round_s(now, persisted, 0.0 if think_r is None else think_r[r])
            if at > now:
                self._push(at, _ARRIVE, agent)
            else:  # issued now: no event needed
                self._on_arrive(agent, None)
        self._request_tick()

    def _persist(self, rid: int, tokens: int) -> float:
        """Reserve the write of ``tokens`` tokens' KV from request ``rid``'s DE to storage; returns its end."""
        if self.cfg.loading == "oracle" or tokens <= 0:
            return self.now
        return reserve(self._persist_path[self.R["de"][rid]], tokens * self.kvb, self.now, self.now)[1]


def simulate(config: SimConfig, agents: Sequence[SimAgent], *, max_events: SupportsIndex | None = None,
             scheduler_cls: type = ClusterScheduler) -> SimResult:
    """Run the simulator once: ``Simulator(config, agents, scheduler_cls=...).run(max_events=...)``.

    Args:
      config, agents, scheduler_cls: as for :class:`Simulator`.
      max_events: stop after this many events (an int >= 0, numpy ints too; None: run until every
        agent's last round finishes). A stopped run's result holds the requests so far, NaN
        times for the unfinished ones.

    Returns:
      The run's :class:`SimResult` (virtual seconds, bytes).

    Raises and warns as :class:`Simulator` (``ConfigError`` naming the field,
    ``ContextBeyondModelWarning``) and :meth:`Simulator.run` (``RunStalled``, a custom scheduler's
    inconsistent read plan); ``TypeError`` when ``max_events`` is not an integer, ``ValueError`` when
    it is negative.
    """
    return Simulator(config, agents, scheduler_cls=scheduler_cls).run(max_events=max_events)
