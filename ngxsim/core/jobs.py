"""Instance-wide periodic jobs: a function run every T in exactly one live worker.

What nginx modules do with a timer in "the first worker", made robust to workers dying: each job
has a lease in the core's ``@jobs`` zone (holder pid and start time, lease end, next due time,
run counts). In every worker a thread per job wakes at the job's due time (holder) or at the
lease's end (the others), and under the zone lock:

- the holder renews its lease (``lease`` seconds, default two intervals) and, when the job is
  due, sets the next due time and then runs the function outside the lock;
- another worker takes the lease when nobody holds it, its holder is dead (pid + start time, so
  a reused pid never counts as alive), or the holder let it run out (hung, stopped, or stuck in
  a long run). The due time lives in the zone, so a takeover keeps the instance's schedule.

A *service* (``config.jobs.declare_service``) is a job that runs for as long as its worker
holds the lease: the holder starts ``run(runtime, lease)`` in a thread of its own when it takes
the lease and renews the lease every ``interval`` (a quarter of the lease); the thread is told
to stop (``lease.stopping``) when the worker finds it no longer holds it or stops. A relay or a
watcher that must run in one worker of the instance, and move when that worker dies.

A lease slot is written under the zone lock one 8-byte word at a time, the holder's pid last
(``store_words``): ``struct.pack_into`` zeroed the slot first, so a worker killed there left the
job with no due time (run at once by the next worker, off the instance's schedule) and its
run count at 0, and ``status`` (no lock) read it so for an instant.

Guarantees: at most one worker *starts* a run per due time; a holder that dies is replaced at its
successor's next look (at most one interval later), one that hangs when its lease runs out
(default two intervals). A run still going in a hung holder is not interrupted: when it ends, that
worker sees it lost the lease and runs no more. Times are CLOCK_MONOTONIC, which every process of
the machine shares.
"""

from __future__ import annotations

import os
import struct
import threading
import time

from .conf.zones import JOB_SLOT, JOBS_ZONE, JobSpec
from .helper import run_in_process
from .http.logs import log
from .instance import alive, process_start_time
from .shm import store_words, words

# holder pid, pad, holder start time, lease end, next due (monotonic s), runs, last run start
# (wall ms), last run duration (s)
_SLOT = struct.Struct("<IIQddQQd")
_NAP_MIN = 0.005


class ServiceLease:
    """What a service's ``run(runtime, lease)`` is given: ``stopping`` is set when it must
    return (the lease is lost, or the worker stops); ``name`` is the service's."""

    def __init__(self, name: str):
        self.name = name
        self.stopping = threading.Event()
        self._on_stop: list = []
        self._lock = threading.Lock()

    def stop(self) -> None:
        """Tell the service to return: sets ``stopping`` and runs what ``on_stop`` was given."""
        with self._lock:
            if self.stopping.is_set():
                return
            self.stopping.set()
            callbacks, self._on_stop = self._on_stop, []
        for callback in callbacks:
            callback()

    def on_stop(self, callback) -> None:
        """Run ``callback()`` when the lease is told to stop (at once if it was already)."""
        with self._lock:
            if not self.stopping.is_set():
                self._on_stop.append(callback)
                return
        callback()

    @property
    def held(self) -> bool:
        return not self.stopping.is_set()


class Job:
    """One job's lease slot and its thread in this worker."""

    def __init__(self, runner: "JobRunner", spec: JobSpec, offset: int):
        self.runner = runner
        self.spec = spec
        self.offset = offset
        self._thread: threading.Thread | None = None
        self._service: threading.Thread | None = None
        self._lease: ServiceLease | None = None
        self.local_runs = 0
        self.errors = 0

    # -- shared state -------------------------------------------------------------------------

    def _read(self):
        return _SLOT.unpack_from(self.runner.zone.buf, self.offset)

    def _write(self, *values) -> None:
        store_words(self.runner.u64, self.offset, _SLOT.pack(*values))

    def status(self) -> dict:
        pid, _, start, lease_until, due, runs, last_msec, last_dur = self._read()
        now = time.monotonic()
        return {
            "name": self.spec.name, "module": self.spec.owner, "interval": self.spec.interval,
            "holder_pid": pid or None, "holder_alive": bool(pid) and alive(pid, start),
            "lease_left": round(max(lease_until - now, 0.0), 3) if pid else 0.0,
            "next_run_in": round(max(due - now, 0.0), 3) if due else 0.0,
            "runs": runs, "last_run_msec": last_msec, "last_duration": round(last_dur, 6),
        }

    # -- one look ----------------------------------------------------------------------------

    def tick(self, now: float) -> tuple[bool, float]:
        """Under the zone lock: hold or take the lease if we may. Returns (run now?, seconds
        until this worker should look again). For a service: (do we hold it?, ...), and a run
        counted each time a worker takes it."""
        me, my_start = self.runner.pid, self.runner.start_time
        spec = self.spec
        with self.runner.zone.lock():
            pid, pad, start, lease_until, due, runs, last_msec, last_dur = self._read()
            mine = pid == me and start == my_start
            if not mine:
                if pid and lease_until > now and alive(pid, start):
                    # held: look again when the lease would run out, at least once an interval
                    return False, max(min(lease_until - now, spec.interval), _NAP_MIN)
                pid, start, mine = me, my_start, True
                if not due or spec.service:
                    due = now
            lease_until = now + spec.lease
            if spec.service:  # held: renew; a take-over counts as a run
                if due:
                    runs += 1
                    last_msec = int(time.time() * 1000)
                self._write(pid, pad, start, lease_until, 0.0, runs, last_msec, last_dur)
                return True, spec.interval
            run = due <= now
            if run:
                due = now + spec.interval
                runs += 1
                last_msec = int(time.time() * 1000)
            self._write(pid, pad, start, lease_until, due, runs, last_msec, last_dur)
        return run, (spec.interval if run else max(due - now, _NAP_MIN))

    def _finished(self, duration: float) -> None:
        with self.runner.zone.lock():
            values = list(self._read())
            if values[0] == self.runner.pid and values[2] == self.runner.start_time:
                values[7] = duration
                self._write(*values)

    def release(self) -> None:
        """Give the lease up (clean exit): another worker takes it at its next look."""
        with self.runner.zone.lock():
            values = list(self._read())
            if values[0] == self.runner.pid and values[2] == self.runner.start_time:
                values[0] = 0
                values[3] = 0.0
                self._write(*values)

    # -- thread ------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name=f"ngxsim-job-{self.spec.name}", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        if self.spec.service:
            return self._service_loop()
        stopping = self.runner.stopping
        while not stopping.is_set():
            try:
                run, wait = self.tick(time.monotonic())
            except Exception:  # the zone went away under us (shutdown): stop quietly
                if stopping.is_set():
                    return
                log.exception("periodic job %s: lease check failed", self.spec.name)
                run, wait = False, self.spec.interval
            if run:
                began = time.monotonic()
                self._run()
                # the next due time counts from this run's start: waiting a whole interval after
                # its end would stretch every period by the run's length
                wait = max(wait - (time.monotonic() - began), _NAP_MIN)
            stopping.wait(wait)

    def _service_loop(self) -> None:
        """Renew the lease while held and keep the service thread running; stop it when the
        lease is lost or the worker stops."""
        stopping = self.runner.stopping
        while not stopping.is_set():
            try:
                mine, wait = self.tick(time.monotonic())
            except Exception:
                if stopping.is_set():
                    break
                log.exception("service %s: lease check failed", self.spec.name)
                mine, wait = False, self.spec.interval
            running = self._service is not None and self._service.is_alive()
            if mine and not running and not stopping.is_set():
                self._lease = ServiceLease(self.spec.name)
                self._service = threading.Thread(target=self._serve, args=(self._lease,),
                                                 name=f"ngxsim-service-{self.spec.name}", daemon=True)
                self._service.start()
            elif not mine and running:
                log.warning("service %s (module %s): this worker lost its lease, stopping it here",
                            self.spec.name, self.spec.owner)
                self._lease.stop()
            stopping.wait(wait)
        self.stop_service()

    def _serve(self, lease: ServiceLease) -> None:
        try:
            if self.spec.process:
                run_in_process(self.runner.runtime, self.spec, lease, self.offset)
            else:
                self.spec.run(self.runner.runtime, lease)
        except Exception:
            self.errors += 1
            log.exception("service %s (module %s) failed", self.spec.name, self.spec.owner)
        finally:
            self.local_runs += 1

    def stop_service(self, timeout: float = 3.0) -> None:
        """Tell the service thread to stop and wait for it (bounded)."""
        if self._lease is not None:
            self._lease.stop()
        if self._service is not None and self._service is not threading.current_thread():
            self._service.join(timeout)

    def _run(self) -> None:
        began = time.monotonic()
        try:
            self.spec.run(self.runner.runtime)
        except Exception:
            self.errors += 1
            log.exception("periodic job %s (module %s) failed", self.spec.name, self.spec.owner)
        finally:
            self.local_runs += 1
            try:
                self._finished(time.monotonic() - began)
            except Exception:
                pass


class JobRunner:
    """The jobs of one configuration in this worker (``runtime.jobs``)."""

    def __init__(self, runtime, specs):
        self.runtime = runtime
        self.specs = list(specs)
        self.zone = runtime.zone(JOBS_ZONE) if self.specs else None
        self.u64 = words(self.zone.buf) if self.zone is not None else None  # the lease slots' words, one view
        self.pid = os.getpid()
        self.start_time = process_start_time(self.pid) or 0
        self.stopping = threading.Event()
        self.jobs = {spec.name: Job(self, spec, i * JOB_SLOT) for i, spec in enumerate(self.specs)}

    def start(self) -> None:
        for job in self.jobs.values():
            job.start()

    def stop(self) -> None:
        self.stopping.set()
        for job in self.jobs.values():
            if job._thread is not None:
                job._thread.join(1.0)
            job.stop_service()
            try:
                job.release()
            except Exception:
                pass

    def status(self) -> list[dict]:
        """Each job's lease and counts, as every worker sees them."""
        return [job.status() for job in self.jobs.values()]


__all__ = ["JobRunner", "JOBS_ZONE", "ServiceLease"]
