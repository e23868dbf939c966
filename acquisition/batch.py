"""Batch reconstruction of a recording on a Dask cluster (``nvplive reconstruct --scheduler``).

The timepoints are split into chunks of consecutive timepoints. Each chunk is one
Dask task: the worker opens the recording itself (the folder must be visible at the
same path on every worker: a shared filesystem), cold-starts the chunk's first
timepoint and warm-updates the rest in order, exactly as the serial
:func:`~nvplive.acquisition.offline.reconstruct_recording` does for the whole
recording, and returns the chunk's Δn volumes. The client writes
``volumes.ome.tif`` in timepoint order as chunks complete: a chunk that finishes
early is held until every chunk before it has been written.

Guarantees:

- With one chunk (``chunk_size ≥ T``) the volumes equal the serial reconstruction
  (same seed, same device, one torch thread on the worker and in the serial run).
- With several chunks every chunk equals a serial reconstruction of its own
  timepoints (its first timepoint cold-started); it differs from the serial chain
  only in that a chunk's first timepoint does not inherit the previous timepoint's
  state (see docs/batch.md for the measured difference).
- A worker lost mid-run: the scheduler gives its chunks to another worker (a
  worker's death counts toward ``distributed.scheduler.allowed-failures``, an
  exception raised by the task toward ``retries``). Results are deterministic, so a
  redone chunk gives the same volumes; the client writes each timepoint once.
- Bounded memory on the client: at most ``max_chunks_in_flight`` chunks are
  submitted beyond the next one to be written, so at most that many chunk results
  (``chunk_size × Z × Y × X × 4`` bytes each) are held.

No Qt here; ``distributed`` is an optional dependency (``pip install 'nvp-live[batch]'``)
imported only when a batch runs.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from nvplive import __version__
from nvplive.errors import NvpLiveError, ReconstructionError, RecordingError
from nvplive.recon.calibration import PupilCalibration
from nvplive.recon.pupil import PupilParameters
from nvplive.recon.reconstructor import ALLOCATOR_ENV, ProgressCallback, ReconConfig, cpu_threads

from .offline import Progress, _quiet, config_for, reconstructor_for, timepoint_progress
from .pupil_file import calibration_start, frames_origin, recording_pupil, volume_pupil_setting
from .recording import Recording, RecordingWriter

if TYPE_CHECKING:
    from distributed import Client

#: Seconds to wait for a scheduler to answer and for its first worker(s) to connect.
CONNECT_TIMEOUT_S = 30.0
#: Task retries after an exception in the task (a lost worker is handled by the scheduler).
DEFAULT_RETRIES = 2


@dataclass
class ChunkResult:
    """What a worker returns for the timepoints ``start … stop − 1``."""

    start: int
    stop: int
    volumes: np.ndarray  # float32 [stop − start, Z, Y, X]
    iterations: list[int]
    losses: list[float]
    flagged: list[int]  # timepoints whose update diverged and was rolled back
    sources_um_xyz: list[list[float]]  # refined sources after the chunk's last timepoint
    device: str
    worker: str
    seconds: float
    pupils: list[dict | None]  # the pupil each volume was rendered with (PupilParameters.to_dict(); None: the hard aperture)
    calibration: PupilCalibration | None = None  # the chunk's pupil calibration, when its cold start ran one
    cold_start_note: str = ""  # the chunk's cold start's result message (the depth start kept, a fallback)


@dataclass
class BatchSummary:
    """The outcome of :func:`reconstruct_distributed` (the fields of the serial summary plus the chunks)."""

    timepoints: int
    seconds: float  # the whole call's wall time
    startup_seconds: float  # the part of it until the workers answered (starting a LocalCluster)
    iterations: list[int]
    losses: list[float]
    flagged: list[int]
    device: str  # the devices the chunks ran on, comma-separated
    scheduler: str
    workers: int
    chunks: list[dict] = field(default_factory=list)  # start, stop, worker, device, seconds per chunk
    pupil_start: str = "the hard aperture"  # the pupil the run started from (calibration_start's words)
    cold_start_note: str = ""  # the first chunk's cold start's result message


def plan_chunks(n_timepoints: int, chunk_size: int) -> list[tuple[int, int]]:
    """Consecutive ``(start, stop)`` ranges of at most ``chunk_size`` timepoints covering ``0 … n − 1``."""
    if n_timepoints < 1 or chunk_size < 1:
        raise NvpLiveError(f"Cannot split {n_timepoints} timepoints into chunks of {chunk_size}.")
    return [(s, min(s + chunk_size, n_timepoints)) for s in range(0, n_timepoints, chunk_size)]


def worker_device(device: str = "auto") -> str:
    """The torch device a task uses on this worker.

    ``auto``: the CPU without CUDA; with one visible GPU (one worker per GPU,
    ``CUDA_VISIBLE_DEVICES`` set per worker) that GPU; with several visible GPUs
    the worker whose name is an integer (a LocalCluster's workers are named
    0, 1, …) takes GPU ``name mod count``, any other worker GPU 0.
    """
    if device != "auto":
        return device
    if not torch.cuda.is_available():
        return "cpu"
    count = torch.cuda.device_count()
    if count == 1:
        return "cuda"
    name: Any = None
    try:
        from distributed import get_worker

        name = get_worker().name
    except (ImportError, ValueError):
        pass
    index = int(name) if isinstance(name, int) or (isinstance(name, str) and name.isdigit()) else 0
    return f"cuda:{index % count}"


def worker_info(device: str = "auto") -> dict:
    """What a worker offers (run on every worker before a batch): versions and its device."""
    return {"nvplive": __version__, "torch": torch.__version__, "device": worker_device(device), "pid": os.getpid()}


#: Least time (s) between two progress events of a worker's timepoint in progress.
PROGRESS_EVENT_S = 0.5


def _progress_events(dask_worker: Any, topic: str, t: int, n: int) -> ProgressCallback:
    """The reconstruction callback of timepoint ``t`` (of ``n``) on a worker: its share done and
    the serial progress line's message, sent as events on ``topic``, throttled."""
    last = [-math.inf]

    def send(done: int, _total: int, message: str = "") -> None:
        now = time.monotonic()
        if now - last[0] >= PROGRESS_EVENT_S:
            last[0] = now
            dask_worker.log_event(topic, {"t": t, "fraction": min(max(done / 1000 - t, 0.0), 0.999), "message": message})

    return timepoint_progress(send, t, n)


def reconstruct_chunk(
    path: str, start: int, stop: int, config: dict, device: str = "auto", torch_threads: int | None = 1,
    pupil: dict | None = None,
    calibration: PupilCalibration | None = None,
    progress_topic: str | None = None,
) -> ChunkResult:
    """Reconstruct timepoints ``start … stop − 1`` of the recording at ``path`` (runs on a worker).

    The first timepoint is a cold start, the others warm updates in order. Frames
    are read from the recording one timepoint at a time. ``torch_threads`` sets
    torch's intra-op threads in the worker process (None: leave as is). ``pupil``
    (``PupilParameters.to_dict()``) is the known pupil, else the recording's pupil.json.
    ``calibration``: the pupil calibration of timepoint ``start``'s frames, already made
    (by the client, :meth:`.Reconstructor.adopt_calibration`); the cold start fits the
    volume from it instead of calibrating again. ``progress_topic``: where each timepoint is
    (its share done, as the serial reconstruction's progress line counts it) is sent to the
    client as events ``{"t": t, "fraction": f, "message": str}`` on this Dask topic, at most
    every :data:`PROGRESS_EVENT_S` seconds and when the timepoint is done (on a worker only).
    """
    begin = time.perf_counter()
    if torch_threads:
        torch.set_num_threads(int(torch_threads))
    cfg = ReconConfig.from_dict(config)
    dev = worker_device(device)
    dask_worker: Any = None
    try:
        from distributed import get_worker

        dask_worker = get_worker()
    except (ImportError, ValueError):
        pass
    worker = "local" if dask_worker is None else str(dask_worker.address)
    volumes, iterations, losses, flagged, pupils = [], [], [], [], []
    with Recording.open(path) as rec:
        if not 0 <= start < stop <= rec.n_timepoints:
            raise RecordingError(f"{path}: timepoints {start}…{stop - 1} are out of range (it has {rec.n_timepoints}).")
        known = PupilParameters.from_dict(pupil) if pupil is not None else recording_pupil(path)
        reconstructor = reconstructor_for(rec.meta, cfg, dev, known)
        if calibration is not None:
            reconstructor.adopt_calibration(calibration)
        events = progress_topic is not None and dask_worker is not None
        for t in range(start, stop):
            callback = _progress_events(dask_worker, progress_topic, t, rec.n_timepoints) if events else None
            result = reconstructor.warm_update(rec.frames(t), callback=callback)
            if t == start:
                note = result.message
            volumes.append(result.dn)
            pupils.append(volume_pupil_setting(result.pupil))
            iterations.append(result.iterations)
            losses.append(result.loss)
            if result.flagged:
                flagged.append(t)
            if events:
                dask_worker.log_event(progress_topic, {"t": t, "fraction": 1.0, "message": f"timepoint {t + 1} done"})
    return ChunkResult(
        start=start,
        stop=stop,
        volumes=np.stack(volumes).astype(np.float32, copy=False),
        iterations=iterations,
        losses=losses,
        flagged=flagged,
        sources_um_xyz=result.sources_um_xyz.tolist(),
        device=str(reconstructor.device),
        worker=worker,
        seconds=time.perf_counter() - begin,
        pupils=pupils,
        calibration=reconstructor.calibration,
        cold_start_note=note,
    )


def _import_distributed() -> Any:
    try:
        import distributed
    except ImportError:
        raise NvpLiveError(
            "Distributed reconstruction needs the 'distributed' package: pip install 'nvp-live[batch]'."
        ) from None
    return distributed


def default_local_workers(threads: int | None = None) -> int:
    """Workers of a LocalCluster when not given: one per GPU, else as many single-threaded
    workers as the CPU thread policy gives threads (:func:`~nvplive.recon.reconstructor.cpu_threads`
    of ``threads``: ``--threads``, ``$NVPLIVE_THREADS``, else all cores but one).

    Raises:
        ReconstructionError: ``threads`` or ``$NVPLIVE_THREADS`` is not a positive integer.
    """
    if torch.cuda.is_available():
        return torch.cuda.device_count()
    return cpu_threads(threads)[0]


def connect(
    scheduler: str | Client, workers: int | None = None, *, timeout_s: float = CONNECT_TIMEOUT_S,
    threads: int | None = None,
) -> tuple[Client, list[Any]]:
    """A client for ``scheduler``: ``local`` (a new LocalCluster of ``workers`` processes,
    default :func:`default_local_workers` of ``threads``), an address, or a Client.

    Returns ``(client, owned)``: ``owned`` lists what this call started (client,
    LocalCluster), for the caller to close in that order; empty for a given Client.
    With an address, ``workers`` is the number of workers to wait for (default 1).
    """
    distributed = _import_distributed()
    if isinstance(scheduler, distributed.Client):
        return scheduler, []
    if not isinstance(scheduler, str) or not scheduler:
        raise NvpLiveError(f"The scheduler must be 'local' or an address like tcp://host:8786, got {scheduler!r}.")
    if scheduler == "local":
        n = workers or default_local_workers(threads)
        # The workers inherit this process's environment, and Dask's nanny takes a variable set
        # there over its own configuration: nvp-live's allocator (ALLOCATOR_ENV) instead of Dask's
        # MALLOC_TRIM_THRESHOLD_ of 64 KiB, with which every torch allocation faulted fresh pages
        # in (a one-worker run took 307 s where the serial run took 50 s; BENCHMARKS.md, "Batch
        # reconstruction on Dask"). Set each time: a nanny leaves Dask's value here.
        os.environ.update(ALLOCATOR_ENV)
        cluster = distributed.LocalCluster(
            n_workers=n,
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",  # a free port: several clusters may run on one machine
            silence_logs=logging.ERROR,
        )
        try:
            client = distributed.Client(cluster)
        except BaseException:
            cluster.close()
            raise
        return client, [client, cluster]
    try:
        client = distributed.Client(scheduler, timeout=timeout_s)
    except (OSError, TimeoutError, ValueError) as exc:
        raise NvpLiveError(f"Cannot reach the Dask scheduler at {scheduler} ({exc}).") from None
    try:
        client.wait_for_workers(workers or 1, timeout=timeout_s)
    except (OSError, TimeoutError) as exc:
        client.close()
        raise NvpLiveError(
            f"The Dask scheduler at {scheduler} has fewer than {workers or 1} worker(s) after {timeout_s:.0f} s ({exc})."
        ) from None
    return client, [client]


def reconstruct_distributed(
    path: str | Path,
    config: ReconConfig = ReconConfig(),
    *,
    scheduler: str | Client = "local",
    workers: int | None = None,
    chunk_size: int | None = None,
    device: str = "auto",
    torch_threads: int | None = 1,
    retries: int = DEFAULT_RETRIES,
    max_chunks_in_flight: int | None = None,
    progress: Progress = _quiet,
    pupil: PupilParameters | None = None,
    pupil_from: str | None = None,
    threads: int | None = None,
) -> BatchSummary:
    """Reconstruct every timepoint of a recording on a Dask cluster into ``volumes.ome.tif``.

    Args:
        path: the recording folder, at a path every worker can read.
        config: reconstruction settings (as for the serial reconstruction).
        scheduler: ``local`` (a LocalCluster of ``workers`` processes, closed at the
            end), the address of a running scheduler, or a ``distributed.Client``.
        workers: LocalCluster size (default :func:`default_local_workers` of ``threads``:
            one per GPU, else one single-threaded worker per thread of the CPU thread
            policy); with an address, the number of workers to wait for.
        chunk_size: timepoints per task (default: the timepoints spread evenly over
            the workers, i.e. the fewest cold starts that keep every worker busy).
        device: ``auto`` (each worker uses its GPU, see :func:`worker_device`), ``cpu`` or ``cuda``.
        torch_threads: torch threads per worker task.
        retries: retries of a chunk whose task raised an exception.
        max_chunks_in_flight: chunks submitted beyond the next one to be written
            (default: twice the workers); bounds the results held by the client.
        progress: ``progress(done, total, message)`` in thousandths of a timepoint, as the
            serial reconstruction counts: from the workers' events while a timepoint is
            reconstructed (so a long chunk shows its progress) and per chunk written.
        pupil, pupil_from: the known pupil and where it came from (as for the serial
            reconstruction); the pupil calibrated on timepoint 0 is written to pupil.json.
        threads: the CPU thread request (``--threads``) that sizes a LocalCluster.

    The summary's ``seconds`` is the whole call's wall time, ``startup_seconds`` the part
    of it until the workers answered.
    """
    begin = time.perf_counter()
    path = Path(path).resolve()
    if chunk_size is not None and chunk_size < 1:
        raise NvpLiveError(f"The chunk size must be at least 1 timepoint, got {chunk_size}.")
    # The recording's lock first: a recording another process writes is refused before a cluster starts.
    writer = RecordingWriter.replace_volumes(path)
    try:
        n = writer.n_timepoints
        if n == 0:
            raise RecordingError(f"{path}: has no complete timepoint to reconstruct.")
        distributed = _import_distributed()
        client, owned = connect(scheduler, workers, threads=threads)
    except BaseException:
        writer.abandon()
        raise
    futures: dict[Any, int] = {}
    listening: str | None = None  # the progress topic while this run follows it
    report_lock = threading.Lock()  # progress events arrive on the client's event-loop thread
    try:
        try:
            infos = client.run(worker_info, device)
        except Exception as exc:
            raise NvpLiveError(
                f"Cannot run nvp-live on the Dask workers ({type(exc).__name__}: {exc}); is it installed on every worker?"
            ) from None
        if not infos:
            raise NvpLiveError(f"The Dask cluster at {client.scheduler.address} has no workers.")
        stale = sorted(a for a, info in infos.items() if info["nvplive"] != __version__)
        if stale:
            raise NvpLiveError(
                f"Dask worker(s) {', '.join(stale)} run nvp-live {infos[stale[0]]['nvplive']}, this client {__version__}; "
                "install the same version on every worker."
            )
        n_workers = len(infos)
        startup_seconds = time.perf_counter() - begin
        chunks = plan_chunks(n, chunk_size or math.ceil(n / n_workers))
        window = max(1, max_chunks_in_flight or 2 * n_workers)
        config = config_for(writer.meta, config)
        config_dict = config.to_dict()
        known, known_from = calibration_start(path, pupil, pupil_from)
        pupil_dict = None if pupil is None else pupil.to_dict()
        # The pupil is the instrument's: calibrated once, on timepoint 0, here; the first chunk's
        # cold start adopts it and every later chunk is given it as it is (as a serial run keeps it).
        later_config, later_pupil = config_dict, pupil_dict
        calibration = None
        if config.self_calibration and config.pupil_calibration and len(chunks) > 1:
            progress(0, 1000 * n, "calibrating the pupil on timepoint 0's frames (before the chunks start)")
            with Recording.open(path) as rec:
                calibration = reconstructor_for(rec.meta, config, "cpu", known).calibrate(rec.frames(0))
            later_config, later_pupil = {**config_dict, "pupil_calibration": False}, calibration.pupil.to_dict()
        run_id = uuid.uuid4().hex[:8]
        held: dict[int, ChunkResult] = {}
        done_chunks: list[ChunkResult] = []
        written: set[int] = set()
        shares: dict[int, float] = {}  # each timepoint's share done on a worker (1: reconstructed)

        def report(updates: dict[int, float], message: str = "") -> None:
            with report_lock:
                if listening is None:  # an event after the run ended
                    return
                for t, share in updates.items():
                    shares[t] = max(shares.get(t, 0.0), share)
                finished = sum(1 for share in shares.values() if share >= 1.0)
                done = int(1000 * sum(shares.values()))
                progress(done, 1000 * n, f"{message + '; ' if message else ''}{finished}/{n} timepoints reconstructed, "
                         f"{len(written)} written ({next_chunk}/{len(chunks)} chunks)")

        def on_event(event: tuple[float, dict]) -> None:
            msg = event[1]
            report({int(msg["t"]): float(msg["fraction"])}, str(msg.get("message", "")))

        topic = f"nvplive-progress-{run_id}"
        client.subscribe_topic(topic, on_event)
        listening = topic
        next_chunk = 0  # the next chunk to be written
        submitted = 0
        pending = distributed.as_completed()

        def submit_more() -> None:
            nonlocal submitted
            while submitted < len(chunks) and submitted < next_chunk + window:
                s, e = chunks[submitted]
                future = client.submit(
                    reconstruct_chunk, str(path), s, e, config_dict if s == 0 else later_config, device, torch_threads,
                    pupil_dict if s == 0 else later_pupil, calibration if s == 0 else None, topic,
                    key=f"nvplive-chunk-{run_id}-{s}-{e}", pure=False, retries=retries, priority=-submitted,
                )
                futures[future] = submitted
                pending.add(future)
                submitted += 1

        with writer:
            submit_more()
            for future in pending:
                index = futures.pop(future)
                try:
                    held[index] = future.result()
                except NvpLiveError:
                    raise
                except Exception as exc:
                    s, e = chunks[index]
                    raise ReconstructionError(
                        f"Timepoints {s}…{e - 1} failed on the Dask cluster ({type(exc).__name__}: {exc})."
                    ) from None
                future.release()
                while next_chunk in held:
                    chunk = held.pop(next_chunk)
                    for i, t in enumerate(range(chunk.start, chunk.stop)):
                        if t in written:  # never twice (cannot happen: one result per chunk)
                            continue
                        settings = {
                            **config_dict,
                            "device": chunk.device,
                            "iterations_run": chunk.iterations[i],
                            "chunk": [chunk.start, chunk.stop],
                            "worker": chunk.worker,
                            "pupil": chunk.pupils[i],
                        }
                        if i == 0 and chunk.cold_start_note:
                            settings["message"] = chunk.cold_start_note
                        writer.write_volume(t, chunk.volumes[i], config.method, settings)
                        written.add(t)
                    chunk.volumes = np.empty((0,), np.float32)  # written: drop the data, keep the record
                    done_chunks.append(chunk)
                    next_chunk += 1
                    report(dict.fromkeys(range(chunk.start, chunk.stop), 1.0))
                submit_more()
            if len(written) != n:
                raise ReconstructionError(f"{path}: only {len(written)} of {n} timepoints were reconstructed.")
            writer.update_sources(done_chunks[-1].sources_um_xyz)
            if calibration is None:  # one chunk: its cold start calibrated the pupil, if any did
                calibration = done_chunks[0].calibration
            if calibration is not None:
                writer.write_pupil(
                    calibration.pupil, writer.meta.optics, calibrated_from=frames_origin(path, 0, known_from),
                    bead_diameter_um=config.bead_diameter_um, method="frames", fitted_noll=calibration.noll, residual=calibration.residual,
                    residual_before=calibration.residual_start,
                )
        return BatchSummary(
            timepoints=n,
            seconds=time.perf_counter() - begin,
            startup_seconds=startup_seconds,
            iterations=[i for c in done_chunks for i in c.iterations],
            losses=[v for c in done_chunks for v in c.losses],
            flagged=[t for c in done_chunks for t in c.flagged],
            device=",".join(sorted({c.device for c in done_chunks})),
            scheduler=str(client.scheduler.address),
            workers=n_workers,
            chunks=[
                {"start": c.start, "stop": c.stop, "worker": c.worker, "device": c.device, "seconds": c.seconds}
                for c in done_chunks
            ],
            pupil_start=known_from,
            cold_start_note=done_chunks[0].cold_start_note if done_chunks else "",
        )
    finally:
        with report_lock:
            if listening is not None:
                client.unsubscribe_topic(listening)
            listening = None
        writer.abandon()  # no-op after a successful run; otherwise the previous volumes stay
        for future in list(futures):
            future.cancel()
        for thing in owned:
            thing.close()
