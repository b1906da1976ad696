"""The ``ray`` runtime: every node of the engine cluster a Ray actor in its own process.

Under ``threads`` (the default) every engine is a thread of one process. Under ``ray`` each node
is a :class:`~.ray_node.NodeHost` actor (its own process; under a Ray cluster, on any host that offers the
node's resources) that owns the node's JAX device(s) and runs the *same* worker code as
``threads``: its engines' :class:`~dualpath_jax.engine.pe.PrefillWorker` or
:class:`~dualpath_jax.engine.de.DecodeWorker` threads, its :class:`~dualpath_jax.engine.reader.NodeReader`,
its DRAM buffer and its links (SNIC, the engines' CNICs). Only launching and transport differ:

* **Control.** The scheduler driver (:class:`~dualpath_jax.sched.driver.SchedulingDriver`)
  and the controller loop of :class:`~dualpath_jax.engine.cluster.EngineCluster` stay in the
  driver process. Its orders (read, enqueue for prefill, join for decode, fail) are numbered per
  node and run in that order; those given while the controller handles one batch of events
  leave together, one actor call per node (:meth:`RemoteNodes.flush`, :meth:`NodeHost.command`);
  the workers' events (read done, prefilled, finished, persisted, failed, worker error) come
  back through :meth:`NodeHost.poll`, each with the fields its stage filled in
  (``RequestState`` replicas live in every process a request visits; the driver's copy is the
  record of the run). The readers' read-queue changes (one per block) are held in their node
  and leave with its next events, or when the driver, with a tick pending that may place
  requests, asks for them (:meth:`RemoteNodes.pull_read_q`, :meth:`NodeHost.read_q_changes`;
  one fetch period ahead when the tick was just scheduled): the scheduler's inputs are then as
  old as the paper's periodic fetch of engine state allows, without a call per block.
* **KV between engines.** What a PE does to a DE's node (``ctx.peers``, :mod:`.peers`) becomes
  :class:`~.ray_peers.RayPeers`: the DE buffer reservation is a call to the DE's node; each layer's DE-side
  hit Layer Blocks are offered by the DE node (``uint8[P, Z, Bt]`` per layer) and pulled by the
  PE through JAX's transfer server (:mod:`dualpath_jax.transfer.remote`) inside the PE's CNIC-in
  transfer; the DE node carries each layer over its CNIC out first (from the forward's start,
  layer after layer) and offers it only then, so a busy DE CNIC out still holds the PE back
  without an actor call per layer. The hand-off goes the other way: the PE offers
  a layer's segments and carries them over its CNIC out while its call to the DE node goes out;
  the DE node pulls them under its CNIC in, and the send is over (the request can be handed off)
  when the DE node answers, so the PE's next layers need not wait for that answer. So
  the emulated link rates still apply (the storage-bound regime on one host), and with the
  rates unlimited the run measures the real transport. Bytes that crossed a process boundary
  are ``ClusterResult.cross_process_kv_bytes`` (the endpoints' ``bytes_pulled``).
* **Storage.** Every node opens the run's file store at its path (a local directory on one
  host; across hosts a shared filesystem mounted at the same path on every host).
* **Time.** Every process measures ``time.time()`` from the driver's start (``RunContext.clock``);
  across hosts the clocks must be synchronised (NTP), or cross-host latencies are off by the skew.
* **Supervision.** A node whose process dies (killed, out of memory) is detected by the driver's
  event pump (the actor's call fails): the death is recorded in ``worker_errors`` (worker
  ``node<n>``), its engines stop taking requests, and every unfinished request on it is failed
  and placed again on the surviving engines (recomputing what was lost), as for any failed
  attempt. Only a cluster left with no PE or no DE ends the run early.

Actors are kept between runs (:class:`RayRuntime`), so a study's runs after the first compile
nothing and start in milliseconds; a dead actor is replaced at the next run. Placement: each
node actor asks Ray for ``gpus_per_engine`` GPUs per engine and, optionally, one unit of a
custom resource per role (``pe_resource``/``de_resource``: start the hosts with
``ray start --resources='{"pe_host": 1}'`` to pin prefill nodes there).
"""
from __future__ import annotations

import math
import os
import queue
import threading

import jax
import numpy as np

from dualpath_jax.config import ConfigError
from dualpath_jax.engine.config import ClusterConfig
from dualpath_jax.engine.faults import FaultConfig
from dualpath_jax.engine.ray_node import JOIN_FIELDS, POLL_S, NodeHost, apply_patch, snapshot
from dualpath_jax.engine.ray_peers import RequestInfo
from dualpath_jax.engine.reader import ReadJob
from dualpath_jax.engine.request import RequestState
from dualpath_jax.kvcache import BlockLayout
from dualpath_jax.model.spec import ModelSpec
from dualpath_jax.raylaunch import ray_module
from dualpath_jax.store import StoreConfig

__all__ = ["RayRuntime", "RemoteNodes", "RemoteReader", "RemotePE", "RemoteDE", "translate", "start_error"]

_ARENAS = "2"
"""glibc's ``MALLOC_ARENA_MAX`` in the node processes (unless the driver's environment sets one).
Every run starts new worker threads in each node, and glibc gives threads arenas of their own (up
to 8 per core), whose freed memory it keeps: in a 4-minute soak a DE node's resident memory grew
from 0.6 to 1.4 GB and was still growing; with two arenas it stays near 0.7 GB. The node actors'
own ``runtime_env`` sets it, so it replaces a value given in a job-level ``runtime_env``."""


class RayRuntime:
    """Node actors for engine runs, kept between runs (module docstring).

    Args:
      address: a Ray cluster to join (``"auto"``, ``"HOST:PORT"``); ``""``: a Ray instance already
        started in this process, else a local one started here.
      gpus_per_engine: GPUs each engine's node actor asks for per engine (0 on CPU hosts).
      pe_resource, de_resource: a custom Ray resource every PE / DE node actor needs one unit of
        ("" = none), to pin roles to hosts.
      jit_cache_dir: JAX's persistent compilation cache for the actors ("" = the driver's setting).
      start_timeout_s: how long the node actors may take to be placed and started, and then to
        build a run's workers (Ray waits for resources that are in use, e.g. by another run's
        actors, without end).
    """

    def __init__(self, address: str = "", *, gpus_per_engine: float = 0, pe_resource: str = "",
                 de_resource: str = "", jit_cache_dir: str = "", start_timeout_s: float = 600.0):
        self.address, self.gpus_per_engine = str(address or ""), float(gpus_per_engine)
        self.start_timeout_s = float(start_timeout_s)
        self.resource = {"pe": pe_resource, "de": de_resource}
        self.jit_cache_dir = jit_cache_dir or (jax.config.jax_compilation_cache_dir or "")
        self._key = self._params_of = None
        self.actors: list = []
        self._runs = 0
        self.pids: list[int] = []  # the node actors' processes
        self.xla_threads: dict[int, frozenset[int]] = {}  # pid -> its XLA threads (profile.start_backends)

    def ray(self):
        return ray_module(self.address, field="runtime_address")

    def nodes(self, config: ClusterConfig, spec: ModelSpec, layout: BlockLayout, params: dict,
              scheduler_cls: type) -> list:
        """The node actors for this cluster shape and model (started, or reused; a dead one replaced).

        Raises:
          ConfigError: naming the ``ray.*`` field, when the Ray cluster lacks what the actors ask for
            (:meth:`_check_resources`); naming ``ray.start_timeout_s``, when they are not placed or
            not started within it (the resources exist but are in use, or a slow start); naming
            ``scheduler``, when a node cannot import the policy's module.
          RuntimeError: a node actor died while starting (its error's last line).
        """
        ray = self.ray()
        key = (config.prefill_nodes, config.decode_nodes, config.engines_per_node, spec, layout, scheduler_cls)
        if key != self._key or params is not self._params_of:
            self._check_resources(ray, config)  # before any state changes: a retry checks again
            self.close()
            # host copies: a device array unpickled in the actor would start its JAX backend before
            # NodeHost does (profile.start_backends then cannot tell XLA's threads)
            host = jax.tree.map(np.asarray, params)
            self._key, self._params_of, self._params = key, params, ray.put(host)
            self._args = (spec, layout, scheduler_cls)
            self.actors = [None] * config.num_nodes
        g = config.engines_per_node
        for n in range(config.num_nodes):
            if self.actors[n] is not None:
                try:
                    ray.get(self.actors[n].ping.remote(), timeout=60)
                    continue
                except (ray.exceptions.RayError, ray.exceptions.GetTimeoutError):
                    pass  # dead or hung: replace it
            role = "pe" if n < config.prefill_nodes else "de"
            engines = (list(range(n * g, (n + 1) * g)) if role == "pe" else
                       list(range(config.num_pe + (n - config.prefill_nodes) * g,
                                  config.num_pe + (n - config.prefill_nodes + 1) * g)))
            opts = {"num_cpus": 0, "max_concurrency": 64, "max_restarts": 0,
                    "runtime_env": {"env_vars": {"MALLOC_ARENA_MAX": os.environ.get("MALLOC_ARENA_MAX", _ARENAS)}}}
            if self.gpus_per_engine:
                opts["num_gpus"] = self.gpus_per_engine * g
            if self.resource[role]:
                opts["resources"] = {self.resource[role]: 1}
            spec_, layout_, sched_ = self._args
            self.actors[n] = ray.remote(NodeHost).options(**opts).remote(
                n, role, engines, spec_, layout_, self._params, sched_, self.jit_cache_dir)
        try:
            up = ray.get([a.ping.remote() for a in self.actors], timeout=self.start_timeout_s)
        except ray.exceptions.GetTimeoutError:
            self.close()
            raise ConfigError("ray.start_timeout_s", f"the {config.num_nodes} node actors were not all placed or not "
                              f"started within {self.start_timeout_s:g} s: the Ray cluster has the GPUs and resources "
                              f"they ask for, but not free now (another run's actors? `ray status` shows what is in "
                              f"use), or they start slowly (raise ray.start_timeout_s)") from None
        except ray.exceptions.RayActorError as e:
            self.close()
            raise start_error(e, scheduler_cls) from None
        self.pids = [pid for pid, _ in up]
        self.xla_threads = {pid: frozenset(tids) for pid, tids in up}
        return list(self.actors)

    def warm_up_prefill(self, shapes) -> int:
        """Compile the PE node actors' prefill programs for ``(T bucket, P bucket)`` shapes in their
        processes (:meth:`NodeHost.warm_up_prefill`; the driver's own compilation does not reach
        them); returns the XLA programs the actors compiled (or loaded from the persistent cache)
        for it. Start the actors first (:meth:`nodes`)."""
        ray = self.ray()
        return sum(ray.get([a.warm_up_prefill.remote(list(shapes)) for a in self.actors if a is not None]))

    def _check_resources(self, ray, config: ClusterConfig) -> None:
        """Raise ConfigError (naming the ``ray.*`` field) when the Ray cluster lacks the GPUs or the custom
        resources the node actors ask for: Ray would otherwise wait for them forever."""
        have = ray.cluster_resources()
        have_gpus = have.get("GPU", 0.0)
        engines = config.num_pe + config.num_de
        need_gpus = self.gpus_per_engine * engines
        per_node = self.gpus_per_engine * config.engines_per_node  # one actor's, on one host
        if per_node > 1 and abs(per_node - round(per_node)) > 1e-9:
            raise ConfigError("ray.gpus_per_engine", f"{self.gpus_per_engine:g} GPU(s) per engine x "
                              f"{config.engines_per_node} engines per node = {per_node:g} GPUs per node actor: "
                              f"above one, Ray places whole GPUs")
        hosts = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
        most = max((h.get("GPU", 0.0) for h in hosts), default=have_gpus)
        if per_node > most + 1e-9 and need_gpus <= have_gpus + 1e-9:
            raise ConfigError("ray.gpus_per_engine", f"a node actor needs {per_node:g} GPU(s) on one host "
                              f"({self.gpus_per_engine:g} per engine x {config.engines_per_node} engines per node); "
                              f"the largest host of the Ray cluster has {most:g}")
        if need_gpus > have_gpus + 1e-9:
            raise ConfigError("ray.gpus_per_engine", f"{self.gpus_per_engine:g} GPU(s) per engine for {engines} "
                              f"engines needs {need_gpus:g} GPU(s); the Ray cluster has {have_gpus:g} "
                              "(0 on hosts without GPUs)")
        for role, nodes in (("pe", config.prefill_nodes), ("de", config.decode_nodes)):
            name = self.resource[role]
            if name and have.get(name, 0.0) < nodes:
                raise ConfigError(f"ray.{role}_resource", f"{nodes} {role.upper()} node(s) need one unit each of "
                                  f"{name!r}; the Ray cluster has {have.get(name, 0.0):g} (a host gives it with "
                                  f"`ray start --resources='{{\"{name}\": N}}'`)")

    def close(self) -> None:
        """Stop the node actors (Ray itself keeps running)."""
        if self.actors:
            import ray  # noqa: PLC0415

            for a in self.actors:
                if a is not None:
                    try:
                        ray.kill(a)
                    except Exception:  # noqa: BLE001 - already gone
                        pass
        self.actors, self._key, self._params_of = [], None, None

    def next_run_id(self) -> str:
        """A new run's id (orders and results of another run are refused by the nodes)."""
        self._runs += 1
        return f"{os.getpid()}-{id(self)}-{self._runs}"


def start_error(error: BaseException, scheduler_cls: type | None = None) -> Exception:
    """The error to raise for a node actor that died while starting (``RayActorError``): the
    actor's own error in one line (the last ``SomeError: ...`` line of Ray's report, which holds the
    worker's traceback); a ConfigError naming ``scheduler`` when the module it could not import is
    the policy's (``scheduler_cls``'s top package: missing from the workers' import path)."""
    lines = [ln.strip() for ln in str(error).splitlines()]
    own = next((ln for ln in reversed(lines) if ln and ln.split(":", 1)[0].endswith(("Error", "Exception"))
                and " " not in ln.split(":", 1)[0]), "")
    missing = own.partition("No module named ")[2].strip("'\"").partition(".")[0]
    policy = (getattr(scheduler_cls, "__module__", "") or "").partition(".")[0]
    if own.startswith(("ModuleNotFoundError", "ImportError")) and missing and missing == policy:
        return ConfigError("scheduler", f"a node actor cannot import the policy's module ({own}): every host's Ray "
                           f"workers must import it (its folder on their PYTHONPATH, or in the job's runtime_env)")
    first = lines[0] if lines else type(error).__name__
    return RuntimeError(f"a node actor died while starting: {own or first}")


class RemoteNodes:
    """The driver's side of one ``ray`` run: orders to the node actors, their events into the
    controller's queue (one pump thread per node), and the run's results at the end."""

    def __init__(self, runtime: RayRuntime, actors: list, config: ClusterConfig, n_layers: int, events: queue.Queue):
        self.runtime, self.actors, self.config, self.n_layers = runtime, actors, config, n_layers
        self.ray = runtime.ray()
        self._events = events
        self._seq = [0] * len(actors)
        self._pending: dict[int, list] = {}
        self._lock = threading.Lock()
        self.dead: dict[int, str] = {}
        self._stop = threading.Event()
        self._pumps: list[threading.Thread] = []
        self._pulling: set[int] = set()  # the nodes whose read_q_changes call is not answered yet
        self._pulls_done = threading.Condition()
        self.run_id = runtime.next_run_id()

    def begin(self, store_config: StoreConfig, sched_args: tuple, time_model, max_blocks: int, node_of: list,
              faults: FaultConfig | None = None) -> tuple[dict, dict, dict, int]:
        """Build every node's workers (see :meth:`NodeHost.begin_run`; ``faults``: what each node
        injects; ``node_of``: engine id -> node). Returns the driver's handles, ``(pes, des,
        readers, processes)``: PE and DE engine id -> :class:`RemotePE` / :class:`RemoteDE`, node
        -> :class:`RemoteReader`, and the count of distinct node processes."""
        infos = self._answers([a.begin_run.remote(self.run_id, self.config, store_config, self.actors, sched_args,
                                                  time_model, max_blocks, faults) for a in self.actors],
                              "build their workers (compiling the DE decode steps)")
        kv_tokens = {e: v for i in infos for e, v in i["max_kv_tokens"].items()}
        blocks = {e: v for i in infos for e, v in i["num_blocks"].items()}
        cfg = self.config
        pes = {e: RemotePE(self, node_of[e], e, kv_tokens[e]) for e in range(cfg.num_pe)}
        des = {e: RemoteDE(self, node_of[e], e, blocks[e]) for e in range(cfg.num_pe, cfg.num_pe + cfg.num_de)}
        readers = {n: RemoteReader(self, n) for n in range(cfg.num_nodes)}
        return pes, des, readers, len({i["pid"] for i in infos})

    def start(self, t0: float) -> None:
        """Start every node at the driver's ``t0`` (``time.time()``) and the event pumps."""
        self._answers([a.start_run.remote(t0) for a in self.actors], "start the run")
        for n in range(len(self.actors)):
            t = threading.Thread(target=self._pump, args=(n,), name=f"pump-node{n}", daemon=True)
            t.start()
            self._pumps.append(t)

    def _answers(self, refs: list, doing: str) -> list:
        """The nodes' answers to ``refs`` (one call per node), waiting at most the runtime's
        ``start_timeout_s`` (a hung node never stalls the run).

        Raises:
          ConfigError: naming ``ray.start_timeout_s``, with the nodes that had not answered.
        """
        ray = self.ray
        _, waiting = ray.wait(refs, num_returns=len(refs), timeout=self.runtime.start_timeout_s)
        if waiting:
            late = ", ".join(f"node{refs.index(r)}" for r in waiting)
            raise ConfigError("ray.start_timeout_s", f"{late} did not {doing} within {self.runtime.start_timeout_s:g} "
                              f"s (a large model or a cold compilation cache on a slow host: raise it)")
        return ray.get(refs)

    def _pump(self, n: int) -> None:
        ray = self.ray
        while not self._stop.is_set():
            try:
                events = ray.get(self.actors[n].poll.remote(POLL_S), timeout=max(30.0, self.config.timeout_s))
            except (ray.exceptions.RayError, ray.exceptions.GetTimeoutError) as e:
                self._kill(n)  # dead, or hung past the deadline: never reused
                self._events.put(("node_died", n, f"{type(e).__name__}: {e}".splitlines()[0][:300]))
                return
            for ev in events:
                self._events.put(ev)

    def _kill(self, n: int) -> None:
        try:
            self.ray.kill(self.actors[n])
        except Exception:  # noqa: BLE001 - already gone
            pass

    def command(self, node: int, op: str, *args) -> None:
        """Queue an order for node ``node``; it leaves with the next :meth:`flush`."""
        if node in self.dead:
            return
        with self._lock:
            self._pending.setdefault(node, []).append((op, args))

    def flush(self) -> None:
        """Send the queued orders: one actor call per node for all of its orders, numbered in
        the order they were given (the controller flushes before it waits for events, so an
        order waits no longer than the handling of the events that came with its cause)."""
        with self._lock:  # numbered and sent under one lock: a node sees its orders' numbers without gaps
            pending, self._pending = self._pending, {}
            for node, orders in pending.items():
                if node in self.dead:
                    continue
                self.actors[node].command.remote(self.run_id, self._seq[node], orders)
                self._seq[node] += len(orders)

    def pull_for_tick(self, driver, read_q, pulled_for: float) -> float:
        """Before ``driver``'s pending tick, if it may place requests (only placements read the
        read queues: some request waits), ask the nodes with reads in flight (``read_q``: the
        controller's :class:`~.reader.ReadQueues`) for the read-queue changes they hold
        (:meth:`pull_read_q`), once per tick; the answers come back as events, a fetch period
        ahead when the tick was just scheduled (else the controller waits for them when the tick
        is due, :meth:`await_pulls`). ``pulled_for``: the tick asked for last (seconds; ``inf``:
        none); returns the one asked for now."""
        t = driver.next_tick_s
        if t < math.inf and t != pulled_for and driver.has_waiting():
            self.pull_read_q([n for n in range(self.config.num_nodes) if read_q.tokens(n)])
            return t
        return pulled_for

    def pull_read_q(self, nodes) -> None:
        """Ask ``nodes`` for the read-queue changes they hold (:meth:`NodeHost.read_q_changes`);
        the answers join the events (from a Ray thread), before :meth:`end` returns."""
        for n in nodes:
            with self._pulls_done:
                if n in self.dead or n in self._pulling:
                    continue  # (a node whose last ask is still out is not asked again)
                self._pulling.add(n)
            try:
                self.actors[n].read_q_changes.remote(self.run_id).future().add_done_callback(
                    lambda fut, n=n: self._pulled(n, fut))
            except Exception:  # the call could not go (Ray is shutting down): nothing to wait for
                self._pull_over(n)
                raise

    def _pulled(self, n: int, fut) -> None:
        try:
            for ev in fut.result():
                self._events.put(ev)
        except self.ray.exceptions.RayActorError:
            pass  # the node died: its pump reports it, and its read queue goes with it
        finally:  # (another error is logged by the future, and the changes it held show as a leak)
            self._pull_over(n)

    def _pull_over(self, n: int) -> None:
        with self._pulls_done:
            self._pulling.discard(n)
            self._pulls_done.notify_all()

    def await_pulls(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` until every :meth:`pull_read_q` answer is in the events (or
        its node died); whether they all are."""
        with self._pulls_done:
            return self._pulls_done.wait_for(lambda: not self._pulling, timeout=timeout_s)

    def info(self, req: RequestState) -> RequestInfo:
        return RequestInfo.of(req, self.n_layers)

    def translate(self, ev: tuple, requests: list) -> tuple:
        """A node's event in the controller's terms (:func:`translate`)."""
        return translate(ev, requests)

    def end(self) -> list[dict | None]:
        """Send the orders still queued, stop the pumps and every node's run; per node its results
        (None for a dead node)."""
        self.flush()
        self._stop.set()
        for n, a in enumerate(self.actors):
            if n not in self.dead:
                a.wake.remote()  # a pump waiting in a long poll returns at once
        for t in self._pumps:
            t.join(timeout=max(30.0, self.config.timeout_s))
        # the answers first (end_run drains the rest); past the bound, a late one's changes show as a leak
        self.await_pulls(max(30.0, self.config.timeout_s))
        out = []
        for n, a in enumerate(self.actors):
            if n in self.dead:
                out.append(None)
                continue
            try:
                out.append(self.ray.get(a.end_run.remote(self.run_id, self._seq[n]),
                                        timeout=max(60.0, 3 * self.config.timeout_s)))
            except (self.ray.exceptions.RayError, self.ray.exceptions.GetTimeoutError) as e:
                self._kill(n)
                self.dead[n] = f"{type(e).__name__}: {e}".splitlines()[0][:300]
                out.append(None)
        return out


class RemoteReader:
    """The driver's handle on node ``node``'s reader."""

    def __init__(self, nodes: RemoteNodes, node: int):
        self.nodes, self.node = nodes, node

    def submit(self, job: ReadJob) -> None:
        self.nodes.command(self.node, "read", self.nodes.info(job.req), job.side, job.first, job.last)


class RemotePE:
    """The driver's handle on PE ``engine`` (its measurements filled in at the run's end)."""

    def __init__(self, nodes: RemoteNodes, node: int, engine: int, max_kv_tokens: float):
        self.nodes, self.node, self.engine_id, self.max_kv_tokens = nodes, node, engine, max_kv_tokens
        self.forwards, self.compute_s, self.shapes = [], 0.0, set()

    def enqueue(self, req: RequestState) -> None:
        self.nodes.command(self.node, "enqueue", self.nodes.info(req), self.engine_id, req.hit_blocks, len(req.de_hit))


class RemoteDE:
    """The driver's handle on DE ``engine`` (its measurements filled in at the run's end)."""

    def __init__(self, nodes: RemoteNodes, node: int, engine: int, num_blocks: int):
        self.nodes, self.node, self.engine_id, self.num_blocks = nodes, node, engine, num_blocks
        self.free_blocks = num_blocks
        self.steps, self.compute_s, self.shapes, self.join_s, self.join_count = [], 0.0, set(), 0.0, 0

    def join(self, req: RequestState) -> None:
        self.nodes.command(self.node, "join", self.nodes.info(req), self.engine_id, snapshot(req, JOIN_FIELDS))


def translate(ev: tuple, requests: list) -> tuple:
    """A node's event in the controller's terms: request ids become the driver's RequestState
    (updated with the fields the event carries), a read's block count a list of that length."""
    kind = ev[0]
    if kind in ("prefilled", "finished", "persisted"):
        req = requests[ev[1]]
        apply_patch(req, ev[2])
        return (kind, req)
    if kind == "failed":
        return (kind, requests[ev[1]], ev[2], ev[3])
    if kind == "read_done":
        _, rid, side, node, first, last, n, failures = ev
        return (kind, ReadJob(requests[rid], side, node, first, last), [None] * n, failures)
    if kind == "read_failed":
        _, rid, side, node, first, last, carried, cause = ev
        return (kind, ReadJob(requests[rid], side, node, first, last), carried, cause)
    return ev

