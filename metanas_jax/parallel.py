"""Scale-out: device meshes, several hosts, sharded meta-steps and candidate evaluation.

* :func:`initialize` joins a multi-host run (``jax.distributed.initialize``) with the
  coordinator from arguments, command-line flags (:func:`add_distributed_flags`) or the
  environment (``METANAS_COORDINATOR``, ``METANAS_NUM_PROCESSES``, ``METANAS_PROCESS_ID``;
  or whatever ``jax.distributed`` detects itself, e.g. SLURM). On CPU it selects the gloo
  collectives, without which a multi-process CPU run cannot reduce across processes.
* :func:`make_mesh`: a 1-D mesh (axis ``"data"``) over every device of every process.
* :func:`host_slice` / :func:`global_batch`: each host loads only its share of a
  meta-batch; the shares are assembled into one global, task-sharded array.
* :func:`make_sharded_meta_step`: ``meta.make_meta_step(..., mesh=mesh)``, tasks split over
  devices inside ``shard_map`` with explicitly averaged meta-gradients.
* :func:`make_sharded_evaluate_fn` / :class:`PairRunner`: ``search.make_evaluate_fn`` /
  ``search.collect_experience``'s (task, architecture) pairs split over devices.
* :func:`mesh_from_config`: the job's mesh from ``runtime.mesh`` ("auto" or a device count;
  1 = the unchanged single-device paths); :func:`is_primary`: the process that writes files.

Checkpoints: :class:`metanas_jax.checkpoint.StageCheckpoints`, which every process calls
(each writes the shards of a global array it holds, the primary the rest; writes are
atomic), restored into a template's shardings.
"""
from __future__ import annotations

import argparse
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA = "data"
ENV = {"coordinator_address": "METANAS_COORDINATOR", "num_processes": "METANAS_NUM_PROCESSES",
       "process_id": "METANAS_PROCESS_ID"}


# -- joining hosts ------------------------------------------------------------------------------
def add_distributed_flags(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``--coordinator HOST:PORT --num-processes N --process-id I`` (defaults: environment)."""
    g = parser.add_argument_group("multi-host (jax.distributed)")
    g.add_argument("--coordinator", default=None,
                   help=f"coordinator HOST:PORT (env {ENV['coordinator_address']})")
    g.add_argument("--num-processes", type=int, default=None,
                   help=f"number of processes (env {ENV['num_processes']})")
    g.add_argument("--process-id", type=int, default=None,
                   help=f"this process's index (env {ENV['process_id']})")
    return parser


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *, args: argparse.Namespace | None = None,
               cpu_collectives: str = "gloo", **kw) -> tuple[int, int]:
    """Join a multi-process run; returns ``(process_index, process_count)``.

    Arguments win over ``args`` (from :func:`add_distributed_flags`), which win over the
    environment. With nothing given anywhere this is a single-process run and nothing is
    initialised (unless ``jax.distributed`` can detect a cluster, e.g. under SLURM, where
    ``METANAS_AUTO_DISTRIBUTED=1`` asks it to). Must run before any computation.
    """
    given = {"coordinator_address": coordinator_address, "num_processes": num_processes,
             "process_id": process_id}
    flag_names = {"coordinator_address": "coordinator", "num_processes": "num_processes",
                  "process_id": "process_id"}
    for name in given:
        if given[name] is None and args is not None:
            given[name] = getattr(args, flag_names[name], None)
        if given[name] is None and os.environ.get(ENV[name]):
            given[name] = os.environ[ENV[name]]
    for name in ("num_processes", "process_id"):
        if given[name] is not None:
            given[name] = int(given[name])
    auto = os.environ.get("METANAS_AUTO_DISTRIBUTED") == "1"
    if given["coordinator_address"] is None and not auto:
        if given["num_processes"] not in (None, 1):
            raise ValueError(f"initialize: {given['num_processes']} processes but no "
                             f"coordinator address (--coordinator or {ENV['coordinator_address']})")
        return 0, 1
    if given["coordinator_address"] is not None:
        for name in ("num_processes", "process_id"):
            if given[name] is None:
                raise ValueError(f"initialize: coordinator given but no {name} "
                                 f"(--{flag_names[name].replace('_', '-')} or {ENV[name]})")
        if not 0 <= given["process_id"] < given["num_processes"]:
            raise ValueError(f"initialize: process_id {given['process_id']} not in "
                             f"[0, {given['num_processes']})")
    if cpu_collectives:
        jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
    jax.distributed.initialize(**{k: v for k, v in given.items() if v is not None}, **kw)
    return jax.process_index(), jax.process_count()


# -- meshes and data ----------------------------------------------------------------------------
def make_mesh(num_devices: int | None = None, axis: str = DATA, devices=None) -> Mesh:
    """1-D mesh over ``devices`` (default: every device of every process, in process order,
    so each process's devices hold a contiguous block of the sharded axis)."""
    devices = list(jax.devices() if devices is None else devices)
    if num_devices is not None:
        if not 1 <= num_devices <= len(devices):
            raise ValueError(f"make_mesh: {num_devices} devices requested, {len(devices)} exist")
        devices = devices[:num_devices]
    devices = sorted(devices, key=lambda d: (d.process_index, d.id))
    return Mesh(np.array(devices), (axis,), axis_types=(jax.sharding.AxisType.Auto,))


def sharded(mesh: Mesh, axis: str = DATA) -> NamedSharding:
    """Leading axis split over ``axis``."""
    return NamedSharding(mesh, P(axis))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def host_slice(n: int, mesh: Mesh | None = None, axis: str = DATA) -> slice:
    """This process's contiguous share of a leading axis of ``n`` items (tasks, candidates):
    the rows whose shards live on its devices. ``n`` must divide by the mesh size."""
    mesh = make_mesh(axis=axis) if mesh is None else mesh
    devices = list(mesh.devices.reshape(-1))
    if n % len(devices):
        raise ValueError(f"host_slice: {n} items do not split over {len(devices)} devices")
    per = n // len(devices)
    mine = [i for i, d in enumerate(devices) if d.process_index == jax.process_index()]
    if not mine or mine != list(range(mine[0], mine[-1] + 1)):
        raise ValueError("host_slice: this process's devices are not contiguous in the mesh")
    return slice(mine[0] * per, (mine[-1] + 1) * per)


def global_batch(local, mesh: Mesh, axis: str = DATA):
    """Assemble each host's share (a pytree, e.g. ``data.TaskBatch``, of its
    :func:`host_slice` rows) into global arrays sharded along the leading axis."""
    sh = sharded(mesh, axis)
    n_proc = len({d.process_index for d in mesh.devices.reshape(-1)})

    def one(a):
        a = np.asarray(a)
        return jax.make_array_from_process_local_data(sh, a, (a.shape[0] * n_proc, *a.shape[1:]))

    return jax.tree_util.tree_map(one, local)


def replicate(tree, mesh: Mesh):
    """Every leaf replicated on every device of ``mesh`` (each host passes the same values)."""
    rep = replicated(mesh)

    def one(a):
        a = np.asarray(a)
        return jax.make_array_from_process_local_data(rep, a, a.shape)

    return jax.tree_util.tree_map(one, tree)


# -- sharded programs ---------------------------------------------------------------------------
def make_sharded_meta_step(learner, cfg, mesh: Mesh | None = None, axis: str = DATA,
                           jit: bool = True):
    """``meta.make_meta_step`` with the meta-batch's tasks split over ``mesh``."""
    from metanas_jax import meta

    return meta.make_meta_step(learner, cfg, jit=jit, mesh=make_mesh(axis=axis) if mesh is None
                               else mesh, axis=axis)


def make_sharded_evaluate_fn(space, task, key: jax.Array, mesh: Mesh | None = None, *,
                             num_classes: int | None = None, train=None, axis: str = DATA):
    """``search.make_evaluate_fn`` with each round's candidates split over ``mesh``.

    Every device trains at most ``train.chunk`` candidates per call (padded, padding skipped
    on CPU); candidates get the same initialisation keys as in the single-device evaluator,
    so scores agree with it. ``evaluate.stats`` as there (``compilations`` counts the sharded
    program's). Works on multi-process meshes: every process passes the same candidates
    (process 0's are used) and gets every score back."""
    from metanas_jax.search import experience as ex

    train = ex.TrainConfig() if train is None else train
    sx, sy, qx, qy = (np.asarray(a) for a in task)
    num_classes = int(num_classes or int(np.max(sy)) + 1)
    runner = PairRunner(space, num_classes, train, (sx[None], sy[None], qx[None], qy[None]),
                        make_mesh(axis=axis) if mesh is None else mesh, axis)

    def evaluate(zs):
        zs = np.asarray(zs, np.float32)
        if jax.process_count() > 1:
            zs = _same_on_all_processes(zs)
        keys = jnp.stack([ex._arch_key(key, space, z) for z in zs]) if len(zs) else None
        return runner(keys, zs, np.zeros(len(zs), np.int32))

    evaluate.stats = runner.stats
    return evaluate


def _same_on_all_processes(x: np.ndarray) -> np.ndarray:
    """Process 0's ``x`` on every process (guards against processes drifting apart)."""
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.broadcast_one_to_all(x))


def _pow2_at_least(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


class PairRunner:
    """Train-and-score (task, architecture) pairs with the pairs split over ``mesh``.

    ``tasks = (sx, sy, qx, qy)`` with a leading task axis, replicated on every device;
    ``runner(keys, zs, task_index) -> scores`` (host numpy, one per pair). Each device runs
    ``search.experience``'s single-device program on its share of the pairs (at most
    ``train.chunk`` per call: the smallest power of two that covers ``n / devices``, so a
    few shapes serve every call), the pairs padded to a multiple of the device count.
    The scores equal the single-device program's: every pair is trained by the same
    per-pair computation with the same key. Inputs are assembled with
    ``jax.make_array_from_callback`` (each process transfers only its devices' rows) and
    the scores come back replicated, so multi-process meshes work too."""

    def __init__(self, space, num_classes: int, train, tasks, mesh: Mesh, axis: str = DATA):
        from metanas_jax.search import experience as ex

        self.mesh, self.axis, self.train = mesh, axis, train
        self.n_dev = mesh.shape[axis]
        self._fn = ex._train_eval_fn(space, int(num_classes), train)
        self._tasks = tuple(put_replicated(np.asarray(a), mesh) for a in tasks)
        self._run, self._impl = None, None
        self.stats: dict[str, Any] = {"evaluations": 0, "seconds": 0.0, "compilations": 0}

    def _build(self, impl):
        fn, axis = self._fn, self.axis

        def per_device(valid, kd, zs, tidx, sx, sy, qx, qy):
            keys = kd if impl is None else jax.random.wrap_key_data(kd, impl=impl)
            return fn(valid, keys, zs, sx[tidx], sy[tidx], qx[tidx], qy[tidx])

        # check_vma=False: every device trains its own candidates from scratch (nothing is
        # differentiated wrt a replicated input), and the supernets start scan carries from
        # constants, which vma typing would reject once the data is device-varying
        return jax.jit(jax.shard_map(per_device, mesh=self.mesh, in_specs=(P(axis),) * 4 + (P(),) * 4,
                                     out_specs=P(axis), check_vma=False),
                       out_shardings=replicated(self.mesh))

    def __call__(self, keys, zs, task_index) -> np.ndarray:
        from metanas_jax.search import experience as ex

        zs = np.asarray(zs, np.float32)
        n = zs.shape[0]
        if n == 0:
            return np.zeros((0,), np.float32)
        typed = jnp.issubdtype(keys.dtype, jax.dtypes.prng_key)
        impl = jax.random.key_impl(keys) if typed else None
        kd = np.asarray(jax.random.key_data(keys) if typed else keys)
        if self._run is None or impl != self._impl:
            self._run, self._impl = self._build(impl), impl
        per = min(self.train.chunk, _pow2_at_least(-(-n // self.n_dev)))
        sh = sharded(self.mesh, self.axis)
        t0 = time.perf_counter()
        out = []
        for valid, j in ex._padded_chunks(n, per * self.n_dev):
            args = [_put(a, sh) for a in (valid, kd[j], zs[j], np.asarray(task_index, np.int32)[j])]
            out.append(np.asarray(self._run(*args, *self._tasks).addressable_data(0)))
        self.stats["seconds"] += time.perf_counter() - t0
        self.stats["evaluations"] += n
        self.stats["compilations"] = ex._compilations(self._run)
        return np.concatenate(out)[:n]


def _put(a: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """A global array with ``sharding`` from the same host array on every process (each
    process transfers only the pieces its own devices hold); a typed PRNG key goes as its
    key data and is wrapped again."""
    if isinstance(a, jax.Array) and jnp.issubdtype(a.dtype, jax.dtypes.prng_key):
        return jax.random.wrap_key_data(_put(np.asarray(jax.random.key_data(a)), sharding),
                                        impl=jax.random.key_impl(a))
    a = np.asarray(a)
    return jax.make_array_from_callback(a.shape, sharding, lambda idx: a[idx])


def put_sharded(tree, mesh: Mesh, axis: str = DATA):
    """Every leaf (a host array, the same on every process) split along its leading axis."""
    sh = sharded(mesh, axis)
    return jax.tree_util.tree_map(lambda a: _put(a, sh), tree)


def put_replicated(tree, mesh: Mesh):
    """Every leaf (a host array, the same on every process) replicated over ``mesh``."""
    rep = replicated(mesh)
    return jax.tree_util.tree_map(lambda a: _put(a, rep), tree)


def to_local(tree):
    """Host numpy copies of (replicated, possibly multi-process) arrays: this process's
    first shard of each leaf; other leaves unchanged."""
    return jax.tree_util.tree_map(
        lambda a: np.asarray(a.addressable_data(0)) if isinstance(a, jax.Array) else a, tree)


# -- the job's mesh ---------------------------------------------------------------------------
def is_primary() -> bool:
    """Whether this process writes the run's files (process 0)."""
    return jax.process_index() == 0


def mesh_size(value) -> int:
    """The number of devices ``runtime.mesh`` asks for: ``"auto"`` = every device of every
    process, or a number >= 1 (a digit string is accepted, as the command line gives
    one); ``ValueError`` naming ``runtime.mesh`` otherwise."""
    total = jax.device_count()
    if isinstance(value, str) and value.strip().lower() == "auto":
        return total
    try:
        n = int(str(value).strip()) if not isinstance(value, (bool, float)) else None
    except ValueError:
        n = None
    if n is None or n < 1:
        raise ValueError(f"runtime.mesh must be 'auto' (all {total} devices) or a number of "
                         f"devices >= 1, got {value!r}")
    if n > total:
        raise ValueError(f"runtime.mesh={n}: only {total} device(s) exist (jax.device_count(), "
                         f"backend {jax.default_backend()!r}); use 'auto' or a number <= {total}")
    if jax.process_count() > 1 and n != total:
        raise ValueError(f"runtime.mesh={n}: a run of {jax.process_count()} processes uses every "
                         f"device of every process ({total}); use 'auto'")
    return n


def mesh_from_config(value, axis: str = DATA) -> Mesh | None:
    """The mesh of ``runtime.mesh`` (:func:`mesh_size`), or ``None`` for one device: the
    single-device code paths, unchanged."""
    n = mesh_size(value)
    return None if n == 1 else make_mesh(n, axis=axis)
