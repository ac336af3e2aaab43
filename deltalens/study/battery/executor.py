"""Where the battery's units are computed: in this process (serial) or on Ray workers.

The runner hands a list of :class:`Unit` s to :meth:`Battery.compute
<deltalens.study.battery.runner.Battery.compute>`, which passes them to its executor. Both
executors return the units' results in the order given and store every unit through the run's
:class:`~deltalens.study.battery.units.UnitStore` (atomic, hash-keyed), so a stored unit is read
back instead of computed and a rerun after any crash resumes from the finished units.

* :class:`SerialExecutor` computes each missing unit in turn, in this process.
* :class:`RayExecutor` keeps a pool of Ray actors (workers). Each builds its own copy of the
  battery once (it loads each checkpoint it needs once) and computes the units it is sent; the
  results come back to the driver, which writes them. A worker that dies is restarted and its
  unit retried; a worker never writes a file, so a unit killed half-way leaves nothing behind.
  Workers use the driver's torch thread count, so their numbers equal a serial run's bit for bit.

A unit is shipped to a worker as the *name* of a battery method and its arguments: its
``compute`` must be a :func:`functools.partial` of a method of the battery. Any other callable
(a lambda) is computed on the driver. ``import ray`` happens only here, only for ``ray``.

Example:
    >>> from deltalens.study.battery import Battery, BatteryConfig
    >>> from deltalens.study.battery.executor import RayExecutor
    >>> Battery(BatteryConfig(), "results/", executor=RayExecutor(address="auto")).run()  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

Battery = Any
"""A :class:`~deltalens.study.battery.runner.Battery` (not imported here: the runner imports this module)."""

EXECUTORS = ("serial", "ray")
"""The names ``deltalens run --executor`` accepts."""

RAY_MISSING = "--executor ray: the ray package is not installed; install deltalens[ray] (pip install 'deltalens[ray]')"

MAX_RETRIES = 3
"""How often a dead worker is restarted, and a unit it was computing retried, before the run fails."""


class ExecutorError(ValueError):
    """An executor that cannot run as asked (ray missing, a cluster too small); the message says why."""


@dataclass(frozen=True)
class Unit:
    """One unit of work: its store name, its key (everything its numbers depend on) and how to compute it.

    Attributes:
        name: the unit's name in the store (``sweep-useful-parallel-topk-0.5``).
        key: the unit's inputs, hashed into its file name (see ``Battery.unit_key``).
        compute: ``functools.partial(battery.method, *args)`` (can run on a worker), or any
            callable (computed on the driver).
        kind: ``"json"`` (compute returns a JSON-able dict) or ``"parquet"`` (a DataFrame).
    """

    name: str
    key: dict[str, Any]
    compute: Callable[[], Any]
    kind: str = "json"

    def __repr__(self) -> str:
        return f"Unit({self.name!r}, kind={self.kind!r})"


def remote_call(unit: Unit, battery: Any) -> tuple[str, tuple, dict] | None:
    """``(method name, args, kwargs)`` when ``unit.compute`` is a partial of a method of ``battery``."""
    c = unit.compute
    if isinstance(c, functools.partial) and getattr(c.func, "__self__", None) is battery:
        return c.func.__name__, c.args, dict(c.keywords)
    return None


class SerialExecutor:
    """Compute every missing unit in this process, in order (the default)."""

    name = "serial"

    def run(self, battery: Battery, units: Sequence[Unit], desc: str = "units") -> list[Any]:
        """The results of ``units`` in order; each stored one is read back, each missing one computed and stored."""
        from tqdm.auto import tqdm

        return [
            battery.units.get(u.name, u.key, u.compute, kind=u.kind)
            for u in tqdm(units, desc=desc, disable=not battery.progress)
        ]

    def close(self) -> None:
        """Nothing to release."""

    def __repr__(self) -> str:
        return "SerialExecutor()"


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ExecutorError(RAY_MISSING) from None
    return ray


class _Worker:
    """A Ray actor: the battery rebuilt from its config and resolved family, models loaded once."""

    def __init__(self, battery_cls: type, cfg: Any, family: Any, threads: int) -> None:
        import tempfile

        import torch

        torch.set_num_threads(threads)
        self.battery = battery_cls(cfg, tempfile.mkdtemp(prefix="deltalens-worker-"), progress=False)
        self.battery.family = family

    def pid(self) -> int:
        return os.getpid()

    def compute(self, method: str, args: tuple, kwargs: dict) -> tuple[Any, float, int]:
        """``(result, seconds, pid)`` of ``battery.method(*args, **kwargs)``."""
        t = time.perf_counter()
        result = getattr(self.battery, method)(*args, **kwargs)
        return result, time.perf_counter() - t, os.getpid()


class RayExecutor:
    """Compute units on a pool of Ray actors; the driver stores what they return.

    Args:
        address: the Ray cluster to join (``"auto"``, ``"ray://host:10001"``, ``"host:6379"``);
            None starts a local one unless Ray is already initialised in this process.
        workers: how many actors; None: as many as the cluster's CPUs (or GPUs) fit.
        num_cpus: CPUs each worker reserves.
        num_gpus: GPUs each worker reserves (Ray sets ``CUDA_VISIBLE_DEVICES`` for it).

    Attributes:
        worker_pids: the process ids of the workers as started.
        pids: ``unit name -> worker pid`` of every unit this executor computed (a restarted
            worker has a new pid).
    """

    name = "ray"

    def __init__(
        self, address: str | None = None, workers: int | None = None, num_cpus: float = 1, num_gpus: float = 0
    ) -> None:
        self.ray = _import_ray()
        self.address, self.workers, self.num_cpus, self.num_gpus = address, workers, num_cpus, num_gpus
        self.actors: list[Any] = []
        self.worker_pids: list[int] = []
        self.pids: dict[str, int] = {}
        self._owner: int | None = None
        self._started = False

    @classmethod
    def from_config(cls, cfg: Any, address: str | None = None) -> RayExecutor:
        """An executor sized by a config's ``ray`` block (``workers``, ``num_cpus``, ``num_gpus``)."""
        r = cfg.ray
        return cls(address=address, workers=r.workers, num_cpus=r.num_cpus, num_gpus=r.num_gpus)

    def __repr__(self) -> str:
        return (
            f"RayExecutor(address={self.address!r}, workers={len(self.actors) or self.workers}, "
            f"num_cpus={self.num_cpus}, num_gpus={self.num_gpus})"
        )

    # ---------------------------------------------------------------- pool
    def _init(self) -> None:
        if not self.ray.is_initialized():
            self.ray.init(address=self.address, include_dashboard=False, log_to_driver=False)
            self._started = True

    def _pool_size(self) -> int:
        res = self.ray.cluster_resources()
        fits = [res.get("CPU", 0) / self.num_cpus if self.num_cpus else float("inf")]
        if self.num_gpus:
            fits.append(res.get("GPU", 0) / self.num_gpus)
        n = int(min(fits))
        if n < 1:
            raise ExecutorError(
                f"ray: the cluster has {res.get('CPU', 0):g} CPUs and {res.get('GPU', 0):g} GPUs; a worker "
                f"needs num_cpus={self.num_cpus:g} and num_gpus={self.num_gpus:g}, so none fits"
            )
        return min(n, self.workers) if self.workers else n

    def _start(self, battery: Battery) -> None:
        """One pool per battery: the actors hold its config and family (checkpoints load on first use)."""
        import torch

        if self._owner == id(battery) and self.actors:
            return
        self.close()
        self._init()
        actor = self.ray.remote(_Worker).options(
            num_cpus=self.num_cpus,
            num_gpus=self.num_gpus,
            max_restarts=MAX_RETRIES,
            max_task_retries=MAX_RETRIES,
        )
        args = (type(battery), battery.cfg, battery.family, torch.get_num_threads())
        self.actors = [actor.remote(*args) for _ in range(self._pool_size())]
        self.worker_pids = self.ray.get([a.pid.remote() for a in self.actors])
        self._owner = id(battery)

    # ---------------------------------------------------------------- run
    def run(self, battery: Battery, units: Sequence[Unit], desc: str = "units") -> list[Any]:
        """The results of ``units`` in order. Stored units are read back; the missing ones are
        computed on the workers (at most one in flight per worker) and stored as they finish."""
        from tqdm.auto import tqdm

        results: list[Any] = [None] * len(units)
        todo: list[tuple[int, Unit, tuple[str, tuple, dict]]] = []
        for i, u in enumerate(units):
            call = remote_call(u, battery)
            if call is None or battery.units.path(u.name, u.key, u.kind).is_file():
                results[i] = battery.units.get(u.name, u.key, u.compute, kind=u.kind)
            else:
                todo.append((i, u, call))
        if todo:
            self._start(battery)
            with tqdm(total=len(todo), desc=desc, disable=not battery.progress) as bar:
                self._dispatch(battery, todo, results, bar)
        return results

    def _dispatch(self, battery: Battery, todo: list, results: list[Any], bar: Any) -> None:
        """Keep every worker busy with one unit; store each result as it arrives."""
        pending = list(reversed(todo))
        running: dict[Any, tuple[int, Unit, Any]] = {}
        idle = list(self.actors)
        while pending or running:
            while pending and idle:
                i, u, (method, args, kwargs) = pending.pop()
                actor = idle.pop()
                running[actor.compute.remote(method, args, kwargs)] = (i, u, actor)
            [ref], _ = self.ray.wait(list(running), num_returns=1)
            i, u, actor = running.pop(ref)
            value, seconds, pid = self.ray.get(ref)
            results[i] = battery.units.put(u.name, u.key, value, kind=u.kind, seconds=seconds)
            self.pids[u.name] = pid
            idle.append(actor)
            bar.update(1)

    def close(self) -> None:
        """Stop the workers (and the local Ray instance this executor started)."""
        for a in self.actors:
            self.ray.kill(a)
        self.actors, self._owner = [], None
        if self._started:
            self.ray.shutdown()
            self._started = False


def make_executor(name: str = "serial", address: str | None = None, cfg: Any = None) -> Any:
    """The executor ``deltalens run --executor NAME [--address ADDR]`` asks for.

    Raises:
        ExecutorError: an unknown name, ``--address`` without ``ray``, or ray not installed.
    """
    if name not in EXECUTORS:
        raise ExecutorError(f"--executor: {name!r} is not one of {EXECUTORS}")
    if name == "serial":
        if address is not None:
            raise ExecutorError(f"--address {address!r}: only with --executor ray")
        return SerialExecutor()
    if cfg is None:
        return RayExecutor(address=address)
    return RayExecutor.from_config(cfg, address=address)
