"""The consumer: claim jobs from the jobdir, check the policy, run the builders.

One :class:`Consumer` watches ``new/`` (inotify through the kernel API with ctypes, or
polling every ``[consume] poll_interval`` seconds where inotify is missing), claims jobs
oldest first by renaming them into ``cur/`` (several consumers may share a jobdir: the
rename decides who gets a job), and processes each job in a thread:

1. parse it and check the ``[users]`` policy; a refused or unreadable job stays in
   ``cur/`` with a ``rejected`` record saying why;
2. run its builders, in parallel, each builder limited to ``concurrency`` builds at once;
3. keep the durable record (:mod:`tryssh.core.records`) up to date at every step.

Crash safety: while a consumer processes a job it holds the job's lock (a ``flock`` on the
job file in ``cur/``). At start a consumer takes over every job that is claimed but
unfinished and whose lock is free.
Builders that had finished keep their result; builders that had not started run now;
a builder that was running when the consumer died is **not** run again: its result is
``error`` with the reason ``interrupted (consumer restarted)`` and the job ends in state
``interrupted``; but a ``buildbot`` builder whose job Buildbot already has (its ``jobid``
is recorded) is followed again through the API, not sent again. Nothing is lost, and
nothing runs twice.

Reload: SIGHUP (``systemctl reload``) reads the config file again. A config that fails to
load or check is refused with a ``reload-failed`` line and the old one stays. Jobs claimed
from then on use the new config; a job already being processed finishes under the config
it started with. ``jobdir``, ``state_dir`` and ``max_parallel`` take a restart.
"""

from __future__ import annotations

import hashlib
import os
import select
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from tryssh.core import defaults
from tryssh.core.jobdir import AlreadyTaken, Jobdir, unique_name
from tryssh.core.jobfile import Job, parse_job
from tryssh.core.logfmt import DEBUG, ERR, INFO, NOTICE, WARNING, EventLog, iso_time
from tryssh.core.records import (
    FINAL_STATES,
    INTERRUPTED,
    DamagedRecord,
    JobLock,
    RecordStore,
    builder_entry,
    job_fields,
    new_record,
    now_iso,
    overall_state,
)
from tryssh.errors import (
    BadJob,
    CannotCreate,
    ConfigError,
    TrysshError,
    describe_oserror,
    exit_code_for_oserror,
)
from tryssh.server import builders as builders_mod
from tryssh.server.checks import refuse_problems
from tryssh.server.config import Config
from tryssh.server.inotify import Inotify
from tryssh.server.policy import PolicyRefused, choose_builders

INOTIFY_RESCAN = 60.0  # with inotify, still list new/ this often: a safety net
GC_INTERVAL = 3600.0
MAX_RECORDED_NAME = 250  # NAME_MAX (255) less ".json"
RETRY_INTERVAL = 5.0  # seconds before a job that could not be recorded (disk full) is retried
HEARTBEAT_FILE = "consumer.heartbeat"  # in state_dir; its mtime says the consumer is alive
HEARTBEAT_INTERVAL = 10.0  # touched at most this often, and at least every INOTIFY_RESCAN
SENT = "already sent: a cancel cannot take it back"  # a webhook's or forward's cancel note

TYPE_CHECKING = False
if TYPE_CHECKING:
    from tryssh.core.records import JobRecord

Runner = Callable[[builders_mod.BuildContext], builders_mod.Outcome]


# --- the consumer --------------------------------------------------------------------


class _JobRun:
    """The in-memory side of one job being processed: record, its lock, pending builders."""

    def __init__(
        self, name: str, path: str, record: JobRecord, config: Config | None = None
    ) -> None:
        self.name = name
        self.path = path
        self.record = record
        self.config = config  # the config the job started under: a reload does not change it
        self.lock = threading.Lock()  # guards record and its writes
        self.written = False
        self.job: Job | None = None
        self.remaining = 0
        self.done = threading.Event()
        self.cancelled: dict[str, Any] | None = None  # the cancel request, once seen
        self.contexts: dict[str, builders_mod.BuildContext] = {}  # builds started


class Consumer:
    """Claims and processes the jobs of one config's jobdir.

    *runner* replaces :func:`tryssh.server.builders.run` (tests and the benchmark use an
    in-process no-op); *use_inotify* False forces polling.
    """

    def __init__(
        self,
        config: Config,
        log: EventLog | None = None,
        runner: Runner | None = None,
        use_inotify: bool = True,
    ) -> None:
        self.config = config
        self.log = log or EventLog()
        self.runner = runner or builders_mod.run
        self.jobdir = Jobdir(config.jobdir)
        self.store = RecordStore(config.state_dir)
        self.use_inotify = use_inotify
        self.poll_interval = float(config.consume.get("poll_interval", defaults.POLL_INTERVAL))
        self.max_parallel = int(config.consume.get("max_parallel", defaults.MAX_PARALLEL))
        self._builder_slots = {
            name: threading.BoundedSemaphore(b.concurrency) for name, b in config.builders.items()
        }
        self._slots = threading.BoundedSemaphore(self.max_parallel)
        self._stop = threading.Event()
        self._pending_lock = threading.Lock()  # max_pending: check and record as one step
        self._in_flight = 0
        self._in_flight_lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._pool = ThreadPoolExecutor(self.max_parallel, thread_name_prefix="tryssh-job")
        self._extra_threads: list[threading.Thread] = []
        self._last_gc: float | None = None
        self.retry_interval = RETRY_INTERVAL
        self._retry: dict[str, float] = {}  # job -> when to try again (no record could be written)
        self._retry_lock = threading.Lock()
        self.processed = 0  # jobs this consumer finished (any final state)
        self._runs: dict[str, _JobRun] = {}  # jobs whose builders run here, for cancel
        self._runs_lock = threading.Lock()
        self.ident = f"{os.uname().nodename}:{os.getpid()}"  # recorded as the job's "consumer"
        self._reload_wanted = threading.Event()
        self._last_heartbeat: float | None = None
        # Jobs left in new/ because the claim failed (e.g. cur/ not writable), each logged
        # once: --once must not wait for them for ever.
        self._claim_failures: dict[str, tuple[str, int]] = {}

    # -- life cycle --

    def prepare(self) -> None:
        """Check everything before the first job: jobdir, state and log directories."""
        refuse_problems(self.config)
        self.jobdir.check()
        self.store.create()
        try:
            os.makedirs(self.config.log_dir, mode=0o2750, exist_ok=True)
        except OSError as err:
            raise CannotCreate(
                f"cannot create log directory: {describe_oserror(err, 'mkdir')}"
            ) from None

    def stop(self) -> None:
        """Stop claiming; in-flight jobs finish (safe from a signal handler or a thread)."""
        self._stop.set()
        self._wake()

    def _heartbeat(self) -> None:
        """Touch state_dir/consumer.heartbeat so that ``tryssh doctor`` can see us alive."""
        now = time.monotonic()
        if self._last_heartbeat is not None and now - self._last_heartbeat < HEARTBEAT_INTERVAL:
            return
        self._last_heartbeat = now
        path = os.path.join(self.config.state_dir, HEARTBEAT_FILE)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o660)
            try:
                os.write(fd, f"{self.ident}\n".encode())
            finally:
                os.close(fd)
        except OSError as err:
            self.log(WARNING, event="heartbeat-failed", reason=describe_oserror(err, "write"))

    def request_reload(self) -> None:
        """Ask the main loop to read the config again (safe from a signal handler)."""
        self._reload_wanted.set()
        self._wake()

    def reload(self, path: str | None = None) -> bool:
        """Read and check the config again; keep the old one if the new one fails.

        Returns whether the new config is now in use. Jobs being processed keep theirs.
        """
        from tryssh.server.config import load_config

        path = path or self.config.path
        try:
            config = load_config(path)
            refuse_problems(config)
            for key in ("jobdir", "state_dir"):
                if getattr(config, key) != getattr(self.config, key):
                    raise ConfigError(f"{path}: {key}: changed; a change of {key} takes a restart")
        except TrysshError as err:
            self.log(ERR, event="reload-failed", config=path, reason=err.message,
                     kept="the config in use")  # fmt: skip
            return False
        max_parallel = int(config.consume.get("max_parallel", defaults.MAX_PARALLEL))
        if max_parallel != self.max_parallel:
            self.log(WARNING, event="reload-partial", reason="max_parallel takes a restart",
                     max_parallel=self.max_parallel)  # fmt: skip
        slots = dict(self._builder_slots)
        for name, builder in config.builders.items():
            old = self.config.builders.get(name)
            if name not in slots or old is None or old.concurrency != builder.concurrency:
                # A build running now releases the semaphore it took, the old one.
                slots[name] = threading.BoundedSemaphore(builder.concurrency)
        self._builder_slots = slots
        self.poll_interval = float(config.consume.get("poll_interval", defaults.POLL_INTERVAL))
        self.config = config
        self.log(NOTICE, event="reloaded", config=path, builders=",".join(config.builders))
        return True

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except (BlockingIOError, OSError):
            pass

    def run(self, once: bool = False, handle_signals: bool = False) -> int:
        """Process jobs until stopped (or, with *once*, until the queue is empty); 0 when
        it ends cleanly."""
        self.prepare()
        if handle_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: self.stop())
            signal.signal(signal.SIGHUP, lambda *_: self.request_reload())
        watcher = None
        if self.use_inotify:
            try:
                watcher = Inotify(self.jobdir.new)
                watcher.add(self.store.cancel_dir)
            except OSError as err:
                self.log(WARNING, event="inotify-unavailable", reason=str(err),
                         poll_interval=self.poll_interval)  # fmt: skip
        self.log(INFO, event="start", jobdir=self.jobdir.path, pid=os.getpid(),
                 watch="inotify" if watcher else f"poll {self.poll_interval:g}s",
                 max_parallel=self.max_parallel)  # fmt: skip
        try:
            self.resume()
            self._maybe_gc()
            while not self._stop.is_set():
                if self._reload_wanted.is_set():
                    self._reload_wanted.clear()
                    self.reload()
                self._check_cancels()
                self._retry_due()
                self._drain()
                self._heartbeat()
                if once and self._idle_and_empty():
                    break  # a job left to retry stays in cur/: the next start resumes it
                if once and self._only_unclaimable_left():
                    count = len(self._claim_failures)
                    reason, code = next(iter(self._claim_failures.values()))
                    raise TrysshError(f"{count} jobs left in new/, cannot claim: {reason}", code)
                self._maybe_gc()
                with self._retry_lock:
                    soon = self.retry_interval if self._retry else None
                if watcher is not None:
                    self._wait([watcher.fd, self._wake_r], min(INOTIFY_RESCAN, soon or 1e9))
                    watcher.drain()
                else:
                    self._wait([self._wake_r], min(self.poll_interval, soon or 1e9))
        finally:
            self.log(INFO, event="stopping", in_flight=self._in_flight)
            self._pool.shutdown(wait=True)
            for thread in list(self._extra_threads):
                thread.join()
            if watcher is not None:
                watcher.close()
            self.log(INFO, event="stopped", processed=self.processed)
        return 0

    def close(self) -> None:
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass

    def _only_unclaimable_left(self) -> bool:
        with self._in_flight_lock:
            busy = self._in_flight
        if busy or not self._claim_failures:
            return False
        return set(self.jobdir.pending()) <= set(self._claim_failures)

    def _idle_and_empty(self) -> bool:
        with self._in_flight_lock:
            busy = self._in_flight
        return busy == 0 and not self.jobdir.pending()

    def _wait(self, fds: list[int], timeout: float) -> None:
        try:
            select.select(fds, [], [], timeout)
        except InterruptedError:
            pass
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass

    def _maybe_gc(self) -> None:
        if self.config.keep_days is None:
            return
        if self._last_gc is not None and time.monotonic() - self._last_gc < GC_INTERVAL:
            return
        self._last_gc = time.monotonic()
        if any(t.name == "tryssh-gc" and t.is_alive() for t in self._extra_threads):
            return  # the last one is still going
        # Off the main loop: a gc of a long history must never hold up a claim.
        thread = threading.Thread(target=self._gc, name="tryssh-gc", daemon=True)
        self._extra_threads[:] = [t for t in self._extra_threads if t.is_alive()]
        self._extra_threads.append(thread)
        thread.start()

    def _gc(self) -> None:
        from tryssh.server.gc import collect

        assert self.config.keep_days is not None
        try:
            removed = collect(self.config, self.config.keep_days)
        except (OSError, TrysshError) as err:
            self.log(ERR, event="gc-failed", reason=str(err))
            return
        if removed:
            self.log(INFO, event="gc", removed=len(removed))

    # -- claiming --

    def _drain(self) -> None:
        """Claim every job now in new/, oldest first, as slots free up."""
        for name in self.jobdir.pending():
            if not self._take_slot():
                return
            try:
                if len(name) > MAX_RECORDED_NAME:
                    name, path = self._claim_renamed(name)
                else:
                    path = self.jobdir.claim(name)
            except AlreadyTaken:
                self._slots.release()
                self.log(DEBUG, job=name, event="taken-by-another-consumer")
                continue
            except OSError as err:
                # Left in new/ and tried again at the next scan (Buildbot forgets it);
                # logged once, not at every scan.
                self._slots.release()
                reason = describe_oserror(err, "rename")
                if name not in self._claim_failures:
                    self.log(ERR, job=name, event="claim-failed", reason=reason)
                self._claim_failures[name] = (reason, exit_code_for_oserror(err))
                continue
            self._claim_failures.pop(name, None)
            self._submit(name, path, None)

    def _claim_renamed(self, name: str) -> tuple[str, str]:
        """Claim a job whose name is too long for its record (``NAME.json``) under a new one.

        tryserver never makes such names; one planted in new/ would otherwise end without
        a record. The log ties the two names together.
        """
        new_name = unique_name()
        target = os.path.join(self.jobdir.cur, new_name)
        try:
            os.rename(os.path.join(self.jobdir.new, name), target)
        except FileNotFoundError:
            raise AlreadyTaken(f"job {name} is already taken") from None
        self.log(WARNING, job=new_name, event="renamed", reason="name too long for a record",
                 was=name)  # fmt: skip
        return new_name, target

    def _retry_later(self, name: str, err: OSError) -> None:
        """A job claimed but not recorded (ENOSPC, EIO): try it again soon, not at a restart.

        Before, it stayed in cur/ with no record and its developer saw ``queued`` for good.
        """
        with self._retry_lock:
            first = name not in self._retry
            self._retry[name] = time.monotonic() + self.retry_interval
        if first:
            self.log(ERR, job=name, event="cannot-record", reason=err.strerror or str(err),
                     retry=f"every {self.retry_interval:g}s")  # fmt: skip
        self._wake()

    def _retry_due(self) -> None:
        now = time.monotonic()
        with self._retry_lock:
            due = [n for n, when in self._retry.items() if when <= now]
            for name in due:
                del self._retry[name]
        for name in due:
            if not self._take_slot():
                return
            self._submit(name, os.path.join(self.jobdir.cur, name), None)

    def _take_slot(self) -> bool:
        while not self._stop.is_set():
            if self._slots.acquire(timeout=0.2):
                return True
            self._check_cancels()  # every slot busy: still notice cancel requests
            self._heartbeat()  # and still alive
        return False

    # -- cancel requests --

    def _check_cancels(self) -> None:
        """Carry out the cancel requests (``STATE_DIR/cancel/JOB``) of jobs running here;
        drop the requests of jobs that are final. Others wait for their job's claim."""
        for name in self.store.cancel_requests():
            with self._runs_lock:
                run = self._runs.get(name)
            if run is not None:
                request = self.store.cancel_request(name)
                if request is not None:
                    self._cancel(run, request)
                continue
            record = self.store.read_or_skip(name)
            if record is not None and record.get("state") in FINAL_STATES:
                self.store.forget_cancel(name)

    def _register(self, run: _JobRun) -> None:
        """Make *run* cancellable; then look for a request that came before (race-free:
        a request written later is seen by _check_cancels, which runs after its event)."""
        with self._runs_lock:
            self._runs[run.name] = run
        request = self.store.cancel_request(run.name)
        if request is not None:
            self._cancel(run, request)

    def _cancel(self, run: _JobRun, request: dict[str, Any]) -> None:
        """Stop *run*: pending builders will not start, running commands are stopped
        (their process group: TERM, then KILL), a buildbot builder's follow loop asks the
        master to stop its builds (from its own thread: this never blocks on the network);
        a webhook or forward already sent stays sent and its entry says so."""
        by = str(request.get("by") or "?")
        with run.lock:
            if run.cancelled is not None or run.record.get("state") in FINAL_STATES:
                return
            run.cancelled = request
            run.record["cancelled"] = {"by": by, "requested": request.get("requested"),
                                       "seen": now_iso()}  # fmt: skip
            run.record["reason"] = f"cancelled by {by}"
            builders = (run.config or self.config).builders
            for bname, entry in run.record["builders"].items():
                kind = getattr(builders.get(bname), "kind", None)
                if entry.get("state") == "done" and kind in ("webhook", "forward"):
                    entry["cancel"] = SENT  # its receiver may be building it still
            contexts = list(run.contexts.values())
            if run.written:
                self._write(run)
        self.log(NOTICE, job=run.name, who=run.record.get("who"), event="cancel", by=by)
        for ctx in contexts:
            ctx.cancel(by)

    def _submit(self, name: str, path: str, hint: dict[str, Any] | None) -> None:
        with self._in_flight_lock:
            self._in_flight += 1
        self._pool.submit(self._process, name, path, hint)

    def _finished_job(self) -> None:
        with self._in_flight_lock:
            self._in_flight -= 1
        self._slots.release()
        self._wake()

    # -- resuming after a crash --

    def resume(self) -> int:
        """Take over claimed, unfinished jobs no live consumer holds; returns how many."""
        count = 0
        for name in self.store.active_jobs():
            try:
                final = self.store.read(name)
            except DamagedRecord as err:
                final = None  # its job is marked interrupted when processed (_process)
                self.log(ERR, job=name, event="damaged-record", reason=err.message)
            if final is not None and final.get("state") in FINAL_STATES:
                try:  # a stale active copy left by a crash just after the final write
                    os.unlink(self.store.active_path(name))
                except OSError:
                    pass
                continue
            if self._resume_one(name):
                count += 1
        # Jobs claimed (in cur/) before any record was written.
        in_cur = self.jobdir.claimed()
        known = self.store.job_names()  # a set: no sort of the whole history
        for name in sorted(set(in_cur) - known):
            if self._resume_one(name):
                count += 1
        return count

    def _resume_one(self, name: str) -> bool:
        if not self._take_slot():
            return False
        self.log(DEBUG, job=name, event="resume-candidate")
        self._submit(name, self.jobdir.cur_path(name), {"resume": True})
        return True

    # -- one job --

    def _process(self, name: str, path: str, hint: dict[str, Any] | None) -> None:
        config = self.config  # this job's config, whatever a reload does meanwhile
        run: _JobRun | None = None
        lock = JobLock(path)
        try:
            try:
                if not lock.try_acquire():
                    self.log(DEBUG, job=name, event="locked-by-another-consumer")
                    return
            except FileNotFoundError:
                self._job_file_gone(name, path)
                return
            except (BadJob, OSError) as err:
                # A FIFO, directory, symlink or unreadable file: never a job, but its
                # submitter gets a record saying why (before, a FIFO hung a slot for ever).
                self._not_a_job(name, path, err)
                return
            # Read again under the lock: another consumer may have finished it meanwhile.
            try:
                record = self.store.read(name)
            except DamagedRecord as err:
                self._damaged(name, path, err)
                return
            if record is not None and record.get("state") in FINAL_STATES:
                return
            if record is not None:
                run = self._resumed(name, path, record, config)
            else:
                assert lock.fd is not None
                run = self._fresh(name, path, lock.fd, config)
            if run is not None:
                self._register(run)
                self._run_builders(run)
        except OSError as err:
            # Its record could not be written: processed again soon, from what is on disk
            # (no record: fresh; queued: resumed; running: interrupted), never lost.
            self._retry_later(name, err)
        except Exception as err:
            self.log(ERR, job=name, event="internal-error", reason=f"{type(err).__name__}: {err}")
            if run is not None:
                self._fail_run(run, f"internal error: {type(err).__name__}: {err}")
        finally:
            with self._runs_lock:
                self._runs.pop(name, None)
            lock.release()
            self._finished_job()

    def _not_a_job(self, name: str, path: str, err: Exception) -> None:
        """A name in cur/ that cannot be opened as a job file: a ``rejected`` record."""
        reason = err.message if isinstance(err, TrysshError) else (err.strerror or str(err))
        if self.store.read_or_skip(name) is not None:
            return  # recorded already (by us before a restart, or by another consumer)
        self._reject(_JobRun(name, path, new_record(name, consumer=self.ident)),
                     f"bad job: {reason}")  # fmt: skip

    def _damaged(self, name: str, path: str, err: DamagedRecord) -> None:
        """The job's record is damaged: it may have run already, so never build it again.

        A truncated active record after a crash would otherwise make the job look new and
        build it twice, the second time recorded as a plain success.
        """
        self.log(ERR, job=name, event="damaged-record", reason=err.message)
        if os.path.dirname(err.path) != self.store.active:
            return  # a damaged final record: the job is finished; the record is left alone
        record = new_record(name, consumer=self.ident)
        reason = f"{INTERRUPTED}: its record was damaged ({err.why}); not built again"
        record.update(state="interrupted", finished=now_iso(), reason=reason)
        try:
            if os.path.isdir(err.path) and not os.path.islink(err.path):
                os.rmdir(err.path)  # the final write removes a damaged file, not a directory
        except OSError:
            pass
        self._write(_JobRun(name, path, record))
        self.processed += 1
        self.log(NOTICE, job=name, state="interrupted", reason=reason)

    def _job_file_gone(self, name: str, path: str) -> None:
        """The job file vanished (removed by hand): finish its record, if any, as error."""
        record = self.store.read_or_skip(name)
        if record is None or record.get("state") in FINAL_STATES:
            self.log(WARNING, job=name, event="vanished")
            return
        now = now_iso()
        for entry in record["builders"].values():
            if entry.get("state") != "done":
                entry.update(state="done", result="error", finished=now,
                             reason="the job file is gone from cur/")  # fmt: skip
        record["reason"] = "the job file is gone from cur/"
        self._finish(_JobRun(name, path, record))

    def _fresh(self, name: str, path: str, fd: int, config: Config) -> _JobRun | None:
        record = new_record(name, consumer=self.ident)
        run = _JobRun(name, path, record, config)
        try:
            info = os.fstat(fd)
            # Delivery sets the mtime, and the claim (a rename) keeps it: the arrival time.
            record["received"] = iso_time(info.st_mtime, micros=True)
            size = info.st_size
            hard_limit = config.hard_size_limit()
            record["size"] = size
            if info.st_nlink > 1 and not self._delivering(name, info):
                # A planted hard link to a file its planter cannot read (a consumer running
                # as root would read it): refused unread, so nothing of it reaches a record.
                raise BadJob(f"the file has {info.st_nlink} hard links: not a delivered job")
            if size > hard_limit:
                raise BadJob(f"job is {size} bytes, more than any limit ({hard_limit})")
            data = _read_all(fd, size)
            record["sha256"] = hashlib.sha256(data).hexdigest()
            job = parse_job(data)
        except (BadJob, OSError) as err:
            reason = (
                err.message if isinstance(err, TrysshError) else describe_oserror(err, "read", path)
            )
            self._reject(run, f"bad job: {reason}")
            return None
        run.job = job
        record.update(job_fields(job))  # type: ignore[typeddict-item]
        who = job.who or ""
        policy = config.user(who)
        try:
            if policy is not None and policy.max_pending is not None:
                with self._pending_lock:
                    # Check and record as one step, so two jobs cannot both take the last place.
                    pending = self.store.pending_count(who)
                    names = choose_builders(
                        config, who, job.builder_names, job.branch, size, pending
                    )
                    self._init_builders(run, names)
                    self._write(run)
            else:
                names = choose_builders(config, who, job.builder_names, job.branch, size)
                self._init_builders(run, names)
        except PolicyRefused as err:
            self._reject(run, err.message)
            return None
        self.log(INFO, job=name, who=who, state="queued", builders=",".join(names))
        return run

    def _delivering(self, name: str, info: os.stat_result) -> bool:
        """Whether tryserver's ``tmp/NAME`` is this very file (delivery links, then unlinks)."""
        try:
            twin = os.stat(os.path.join(self.jobdir.tmp, name), follow_symlinks=False)
        except OSError:
            return False
        return (twin.st_dev, twin.st_ino) == (info.st_dev, info.st_ino)

    def _init_builders(self, run: _JobRun, names: list[str]) -> None:
        run.record["builders"] = {
            n: builder_entry(log=builders_mod.log_path(run.config or self.config, run.name, n))
            for n in names
        }

    def _reject(self, run: _JobRun, reason: str) -> None:
        record = run.record
        record.update(state="rejected", reason=reason, finished=now_iso())
        self._write(run)
        self.processed += 1
        self.log(NOTICE, job=run.name, who=record.get("who"), state="rejected", reason=reason)

    def _resumed(
        self, name: str, path: str, record: JobRecord, config: Config
    ) -> _JobRun | None:
        run = _JobRun(name, path, record, config)
        run.written = True
        interrupted = []
        now = now_iso()
        for bname, entry in record["builders"].items():
            if entry.get("state") == "running":
                builder = self.config.builders.get(bname)
                if builder is not None and builder.kind == "buildbot" and entry.get("jobid"):
                    # Buildbot has the job and builds it whatever became of us: follow it
                    # again, do not send it twice.
                    entry.update(state="pending", follow=entry["jobid"])
                    continue
                reason = INTERRUPTED
                # Its build may still run (the consumer died, not the build): end it, so
                # that no build runs unseen and concurrency limits hold after a restart.
                if entry.get("log") and (pgid := builders_mod.end_leftover_group(entry["log"])):
                    reason += f"; its leftover process group {pgid} was killed"
                entry.update(state="done", result="error", reason=reason, finished=now)
                interrupted.append(bname)
        record["resumed"] = now
        record["resumed_from"] = record.get("consumer")
        record["consumer"] = self.ident
        if interrupted:
            record["reason"] = (
                f"{INTERRUPTED}: {', '.join(interrupted)} was running and was not run again"
            )
        self.log(NOTICE, job=name, who=record.get("who"), event="resumed",
                 interrupted=",".join(interrupted) or None)  # fmt: skip
        pending = [n for n, e in record["builders"].items() if e.get("state") == "pending"]
        if pending:
            try:
                with open(path, "rb") as f:
                    run.job = parse_job(f.read())
            except (OSError, BadJob) as err:
                reason = err.message if isinstance(err, TrysshError) else describe_oserror(
                    err, "read"
                )
                for n in pending:
                    record["builders"][n].update(
                        state="done", result="error", reason=f"cannot read job: {reason}",
                        finished=now,
                    )  # fmt: skip
                pending = []
        if not pending:
            self._finish(run)
            return None
        return run

    def _units(self, run: _JobRun, names: list[str]) -> list[list[str]]:
        """The builders to run, grouped: each local builder alone, and the forward or
        buildbot builders that deliver to the same place together (one delivery each)."""
        config = run.config or self.config
        units: list[list[str]] = []
        groups: dict[tuple[str, str], list[str]] = {}
        for name in names:
            builder = config.builders.get(name)
            if builder is None or builder.destination is None or self.runner is not (
                builders_mod.run
            ):
                units.append([name])
                continue
            key = (builder.kind, builder.destination)
            if key not in groups:
                groups[key] = []
                units.append(groups[key])
            groups[key].append(name)
        return units

    def _run_builders(self, run: _JobRun) -> None:
        names = [n for n, e in run.record["builders"].items() if e["state"] == "pending"]
        run.remaining = len(names)
        units = self._units(run, names)
        threads = []
        for unit in units[1:]:
            thread = threading.Thread(
                target=self._build_safely, args=(run, unit), name=f"tryssh-{unit[0]}"
            )
            thread.start()
            threads.append(thread)
        try:
            self._build_unit(run, units[0])
        finally:
            for thread in threads:  # a failure here must not leave builds running unseen
                thread.join()

    def _build_unit(self, run: _JobRun, unit: list[str]) -> None:
        builder = (run.config or self.config).builders.get(unit[0])
        if len(unit) == 1 and (
            self.runner is not builders_mod.run or builder is None or builder.destination is None
        ):
            self._build(run, unit[0])
        else:
            self._build_group(run, unit)

    def _build_safely(self, run: _JobRun, unit: list[str]) -> None:
        """_build_unit in a thread of its own: an unexpected error ends the builds as error."""
        try:
            self._build_unit(run, unit)
        except Exception as err:
            reason = f"internal error: {type(err).__name__}: {err}"
            self.log(ERR, job=run.name, builder=",".join(unit), event="internal-error",
                     reason=reason)  # fmt: skip
            for bname in unit:
                if run.record["builders"][bname].get("state") != "done":
                    try:
                        self._builder_done(run, bname, builders_mod.Outcome("error", reason=reason))
                    except Exception:  # noqa: S110 - the record cannot be written: logged above
                        pass

    def _build_group(self, run: _JobRun, unit: list[str]) -> None:
        """One delivery for the forward or buildbot builders in *unit* (same receiver)."""
        config = run.config or self.config
        slots = [self._builder_slots.get(n) or threading.BoundedSemaphore(1)
                 for n in sorted(unit)]  # one order: no deadlock  # fmt: skip
        # Delivered before a restart: Buildbot has it, so even a cancel must follow it
        # (and ask Buildbot to stop it) rather than drop it.
        follow = next((run.record["builders"][n].get("follow") for n in unit
                       if run.record["builders"][n].get("follow")), None)  # fmt: skip

        def waiting() -> None:  # its record says "queued" while the slot is busy
            with run.lock:
                if not run.written:
                    self._write(run)

        taken = _take_slots(slots, lambda: run.cancelled is not None and not follow, waiting)
        try:
            ctxs: list[builders_mod.BuildContext] | None = []
            with run.lock:
                cancelled = run.cancelled
                if taken is None or (cancelled is not None and not follow):
                    ctxs = None  # cancelled before the hand-over: never sent
                else:
                    now = now_iso()
                    for bname in unit:
                        entry = run.record["builders"][bname]
                        entry.update(state="running", started=now)
                        assert run.job is not None
                        ctx = builders_mod.BuildContext(
                            config, run.name, run.job, run.path, config.builders[bname],
                            entry["log"], attempt=int(entry.get("attempt") or 1),
                        )  # fmt: skip
                        ctxs.append(ctx)
                        run.contexts[bname] = ctx  # from now on a cancel reaches it
                    run.record["state"] = "running"
                    run.record["started"] = run.record["started"] or now
                    self._write(run)
            if ctxs is None:
                for bname in unit:
                    self._builder_done(run, bname, _cancelled_outcome(run))
                return
            if cancelled is not None:  # came before these contexts: _cancel did not see them
                for ctx in ctxs:
                    ctx.cancel(str(cancelled.get("by") or "?"))
            self.log(INFO, job=run.name, who=run.record.get("who"), state="running",
                     builder=",".join(unit), to=ctxs[0].builder.destination)  # fmt: skip

            def progress(bname: str, fields: dict[str, Any]) -> None:
                with run.lock:
                    entry = run.record["builders"][bname]
                    if entry.get("state") == "done" or all(
                        entry.get(k) == v for k, v in fields.items()
                    ):
                        return
                    entry.update(fields)
                    self._write(run)
                if "cancel" in fields:
                    self.log(NOTICE, job=run.name, who=run.record.get("who"), builder=bname,
                             event="cancel", note=fields["cancel"])  # fmt: skip

            builders_mod.run_group(
                ctxs, lambda bname, outcome: self._builder_done(run, bname, outcome), progress,
                follow=follow,
            )
        finally:
            for slot in taken or ():
                slot.release()

    def _build(self, run: _JobRun, bname: str) -> None:
        config = run.config or self.config
        builder = config.builders.get(bname)
        entry = run.record["builders"][bname]
        if builder is None:  # the config changed while the job waited
            self._builder_done(run, bname, builders_mod.Outcome(
                "error", reason=f"builder {bname!r} is no longer configured"))  # fmt: skip
            return
        slots = self._builder_slots.get(bname) or threading.BoundedSemaphore(builder.concurrency)
        if not slots.acquire(blocking=False):
            with run.lock:
                if not run.written:
                    self._write(run)
            self.log(DEBUG, job=run.name, builder=bname, event="waiting-for-slot")
            while not slots.acquire(timeout=0.25):
                if run.cancelled is not None:  # cancelled while it waited: never starts
                    self._builder_done(run, bname, _cancelled_outcome(run))
                    return
        try:
            ctx = None
            with run.lock:
                if run.cancelled is None:
                    entry.update(state="running", started=now_iso())
                    record = run.record
                    record["state"] = "running"
                    record["started"] = record["started"] or entry["started"]
                    self._write(run)  # durable before the build starts: a crash can tell
                    assert run.job is not None
                    ctx = builders_mod.BuildContext(
                        config, run.name, run.job, run.path, builder, entry["log"],
                        attempt=int(entry.get("attempt") or 1),
                    )  # fmt: skip
                    run.contexts[bname] = ctx  # from now on a cancel stops it
            if ctx is None:
                outcome = _cancelled_outcome(run)
            else:
                self.log(INFO, job=run.name, who=run.record.get("who"), state="running",
                         builder=bname, attempt=entry.get("attempt"))  # fmt: skip
                try:
                    outcome = self.runner(ctx)
                except Exception as err:
                    outcome = builders_mod.Outcome("error", reason=f"internal error: {err}")
        finally:
            slots.release()
        self._builder_done(run, bname, outcome)

    def _builder_done(self, run: _JobRun, bname: str, outcome: builders_mod.Outcome) -> None:
        with run.lock:
            entry = run.record["builders"][bname]
            entry.update(outcome.fields)
            entry.update(state="done", result=outcome.result, exit=outcome.exit,
                         finished=now_iso())  # fmt: skip
            if outcome.reason:
                entry["reason"] = outcome.reason
            if run.cancelled is not None and outcome.result != "cancelled":
                builder = (run.config or self.config).builders.get(bname)
                if builder is not None and builder.kind in ("webhook", "forward"):
                    entry["cancel"] = SENT
                elif not entry.get("cancel"):  # a buildbot builder's says what Buildbot did
                    entry["cancel"] = "finished before the cancel took effect"
            run.remaining -= 1
            last = run.remaining <= 0
            self.log(INFO, job=run.name, who=run.record.get("who"), builder=bname,
                     result=outcome.result, exit=outcome.exit, reason=outcome.reason)  # fmt: skip
            if last:
                self._finish(run)
            else:
                self._write(run)

    def _finish(self, run: _JobRun) -> None:
        record = run.record
        record["state"] = overall_state(record)
        record["finished"] = now_iso()
        self._write(run)
        self.processed += 1
        self.log(INFO, job=run.name, who=record.get("who"), state=record["state"],
                 reason=record.get("reason"))  # fmt: skip

    def _fail_run(self, run: _JobRun, reason: str) -> None:
        record = run.record
        if record["state"] in FINAL_STATES:
            return
        record.update(state="error", reason=reason, finished=now_iso())
        for entry in record["builders"].values():
            if entry["state"] != "done":
                entry.update(state="done", result="error", finished=now_iso())
        try:
            self._write(run)
        except OSError:
            pass

    def _write(self, run: _JobRun) -> None:
        self.store.write(run.record)
        run.written = True
        if run.record["state"] in FINAL_STATES and (
            run.cancelled is not None or self.store.cancel_request(run.name) is not None
        ):
            self.store.forget_cancel(run.name)  # carried out, or too late: done with it


def _take_slots(
    slots: list[threading.BoundedSemaphore], cancelled: Callable[[], bool],
    waiting: Callable[[], None],
) -> list[threading.BoundedSemaphore] | None:
    """Take every one of *slots* in their order (*waiting*() when one is busy); None,
    holding none, once *cancelled*()."""
    taken: list[threading.BoundedSemaphore] = []
    for slot in slots:
        if not slot.acquire(blocking=False):
            waiting()
            while not slot.acquire(timeout=0.25):
                if cancelled():
                    for held in taken:
                        held.release()
                    return None
        taken.append(slot)
    return taken


def _cancelled_outcome(run: _JobRun) -> builders_mod.Outcome:
    by = (run.cancelled or {}).get("by") or "?"
    return builders_mod.Outcome("cancelled", reason=f"cancelled by {by}")


def _read_all(fd: int, size: int) -> bytes:
    chunks = []
    offset = 0
    while True:
        chunk = os.pread(fd, max(size - offset, 65536), offset)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        offset += len(chunk)


__all__ = ["Consumer"]
