"""``tryssh try`` without the command line: build the job, deliver it, wait for its builds.

The job is written exactly as Buildbot's ``createJobfile`` writes it (v5, v6 for a patch that
is not UTF-8), so a Buildbot master reads it as well as tryssh's consumer.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tryssh.client.transport import DEFAULT_TRYSERVER_CMD, Receipt, run_remote, tryserver_command
from tryssh.core.jobfile import Job
from tryssh.core.safetext import printable
from tryssh.errors import (
    EX_NOINPUT,
    EX_NOPERM,
    EX_TEMPFAIL,
    EX_USAGE,
    BadJob,
    TempFail,
    TrysshError,
    UsageError,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from tryssh.client.sshclient import Connection, SshOptions
    from tryssh.client.vcs import PatchStats, SourceChange

TRANSPORTS = ("ssh", "scp", "local")
WAIT_INTERVAL = 1.0
FINAL_STATES = ("success", "failure", "error", "rejected", "interrupted")
# job state -> exit code of `tryssh try --wait` / `tryssh status`
STATE_EXIT = {"success": 0, "failure": 1, "rejected": EX_NOPERM, "error": EX_TEMPFAIL,
              "interrupted": EX_TEMPFAIL}  # fmt: skip


@dataclass
class TryRequest:
    """What the developer asked for (None: not given, use the default)."""

    builders: list[str] = field(default_factory=list)
    branch: str | None = None
    baserev: str | None = None
    patchlevel: int | None = None
    who: str | None = None
    comment: str | None = None
    properties: dict[str, Any] = field(default_factory=dict)
    repository: str | None = None
    project: str | None = None
    vc: str | None = None
    diff: str | None = None
    untracked: bool = False
    allow_empty: bool = False


def parse_properties(items: list[str] | tuple[str, ...]) -> dict[str, str]:
    """``K=V`` strings (as Buildbot's ``--property``: split at the first '=')."""
    props: dict[str, str] = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise UsageError(f"--property needs KEY=VALUE, not {item!r}")
        props[key.strip()] = value
    return props


def gather_change(req: TryRequest, cwd: str | None = None) -> SourceChange:
    """The change to send: from ``--diff`` or from the working copy around *cwd*."""
    from tryssh.client import vcs

    if req.diff is not None:
        if req.baserev is None:
            raise UsageError("--diff needs --baserev (the revision the patch applies to)")
        return vcs.from_diff(
            req.diff, baserev=req.baserev, patch_level=req.patchlevel or 0,
            branch=req.branch, repository=req.repository,
        )
    start = cwd or os.getcwd()
    kind, topdir = vcs.detect_vcs(start)
    if req.vc and req.vc != kind:
        raise UsageError(f"--vc {req.vc} given, but {start} is in a {kind} working copy")
    return vcs.extract(
        kind, topdir, baserev=req.baserev, branch=req.branch, include_untracked=req.untracked
    )


def build_job(change: SourceChange, req: TryRequest) -> Job:
    """The Buildbot job for *change*; an empty patch is refused unless ``allow_empty``."""
    if not change.patch and not req.allow_empty:
        raise BadJob(
            "the diff is empty: nothing to try (change something, or pass --allow-empty to "
            "build the base revision as it is)"
        )
    if req.branch:
        branch = req.branch
    else:
        # The branch the master can fetch (origin/main -> main), not a local name.
        branch = getattr(change, "upstream_branch", None) or change.branch or ""
    return Job(
        # Buildbot's client makes the jobid exactly like this.
        jobid=f"{time.time()}-{random.randint(0, 1000000)}",  # noqa: S311
        branch=branch,
        baserev=change.baserev or "",
        patch_level=req.patchlevel if req.patchlevel is not None else change.patch_level,
        patch_body=change.patch or None,
        builder_names=list(req.builders) or None,
        repository=req.repository or change.repository or "",
        project=req.project or "",
        who=req.who or "",
        comment=req.comment or "",
        properties=dict(req.properties),
    )


def summary_lines(job: Job, change: SourceChange, stats: PatchStats) -> list[str]:
    """What is about to be sent, for a human (shown before sending, and by --dry-run)."""
    base = job.baserev or "(none)"
    where = f" ({change.vcs}" + (f", branch {job.branch}" if job.branch else "") + ")"
    builders = ", ".join(job.builder_names) if job.builder_names else "(the server's default)"
    lines = [
        f"base:       {base}{where if change.vcs != 'none' else ''}",
        f"patch:      {stats.files} file{'s' if stats.files != 1 else ''}, "
        f"+{stats.added} -{stats.removed} lines, {stats.size} bytes, -p{job.patch_level}",
        f"builders:   {builders}",
    ]
    if job.repository:
        lines.append(f"repository: {job.repository}")
    if job.project:
        lines.append(f"project:    {job.project}")
    if job.comment:
        lines.append(f"comment:    {job.comment}")
    for key, value in job.properties.items():
        lines.append(f"property:   {key}={value}")
    lines.extend(f"note:       {note}" for note in getattr(change, "notes", []))
    return lines


def dry_run_dict(job: Job, change: SourceChange, stats: PatchStats, data: bytes) -> dict[str, Any]:
    import hashlib

    return {
        "dry_run": True,
        "vcs": change.vcs,
        "branch": job.branch,
        "baserev": job.baserev,
        "patch_level": job.patch_level,
        "builders": job.builder_names or [],
        "repository": job.repository,
        "project": job.project,
        "comment": job.comment,
        "properties": job.properties,
        "patch": {
            "files": stats.files, "added": stats.added, "removed": stats.removed,
            "bytes": stats.size,
        },
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "notes": list(getattr(change, "notes", [])),
    }


# -- delivery -------------------------------------------------------------------------------


@dataclass
class Destination:
    """Where to send: the transport and its options."""

    connect: str = "ssh"
    ssh: SshOptions | None = None
    jobdir: str | None = None
    tryserver_cmd: str = DEFAULT_TRYSERVER_CMD
    progress: bool = True
    config: str | None = None  # the master's config, for -c local --wait / status


def open_connection(dest: Destination) -> Connection:
    from tryssh.client.sshclient import connect

    if dest.ssh is None or not dest.ssh.host:
        raise UsageError(f"-c {dest.connect} needs --host (or try_host in the options file)")
    return connect(dest.ssh)


def deliver(data: bytes, dest: Destination, conn: Connection | None) -> Receipt:
    """Deliver *data* with the chosen transport (*conn* is open for ssh and scp)."""
    from tryssh.client import transport

    if dest.connect == "local":
        if not dest.jobdir:
            raise UsageError("-c local needs --jobdir (the jobdir on this machine)")
        return transport.deliver_local(data, dest.jobdir)
    assert conn is not None
    if dest.connect == "scp":
        if not dest.jobdir:
            raise UsageError("-c scp needs --jobdir (the jobdir on the server)")
        return transport.deliver_scp(conn, data, dest.jobdir, show_progress=dest.progress)
    if dest.connect == "ssh":
        return transport.deliver_ssh(
            conn, data, dest.jobdir, dest.tryserver_cmd, show_progress=dest.progress
        )
    raise UsageError(f"unknown transport {dest.connect!r} (use ssh, scp or local)")


# -- status and waiting ---------------------------------------------------------------------


def remote_query(conn: Connection, dest: Destination, *words: str) -> Any:
    """Run ``tryserver WORDS... --json`` on the server and return the decoded answer."""
    command = tryserver_command(dest.tryserver_cmd, dest.jobdir, *words, "--json")
    stdout, _ = run_remote(conn, command, b"", what=f"tryserver {words[0]}")
    try:
        return json.loads(stdout.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise TempFail(
            f"the server's answer to '{words[0]}' is not JSON (is it tryssh's tryserver?)"
        ) from None


def describe_builder(name: str, info: dict[str, Any]) -> str:
    state = info.get("state") or "?"
    result = info.get("result")
    text = f"{name}: {result if state == 'done' and result else state}"
    if info.get("log") and state == "done":
        text += f" (log {info['log']})"
    return text


def status_lines(record: dict[str, Any]) -> list[str]:
    """A human view of a status record."""
    head = f"job {record.get('job', '?')}: {record.get('state', '?')}"
    if record.get("reason"):
        head += f" ({record['reason']})"
    builders = record.get("builders") or {}
    lines = [head] + [f"  {describe_builder(n, i or {})}" for n, i in builders.items()]
    # The server's words (a branch name, a reason) must not drive the developer's terminal.
    return [printable(line) for line in lines]


def exit_code_for(record: dict[str, Any]) -> int:
    """0 every build succeeded, 1 a build failed, 77 rejected, 75 error/interrupted."""
    return STATE_EXIT.get(str(record.get("state")), EX_TEMPFAIL)


def wait_for(
    fetch: Callable[[], dict[str, Any]],
    timeout: float | None,
    echo: Callable[[str], None] | None,
    interval: float = WAIT_INTERVAL,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Poll *fetch* until the job reaches a final state; show changes through *echo*.

    Raises TempFail when *timeout* seconds pass first. A transient failure to ask (lost
    connection, server busy) is retried until then; a refusal (64, 77) or an unknown
    job (66: the server has no such job of yours) is final.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    seen: dict[str, str] = {}
    last_error = ""
    while True:
        try:
            record = fetch()
        except TrysshError as err:
            if err.exit_code in (EX_USAGE, EX_NOINPUT, EX_NOPERM):
                raise
            if echo is not None and err.message != last_error:
                echo(f"status not available yet: {err.message}")
            last_error = err.message
            record = None
        if record is not None:
            last_error = ""
            state = str(record.get("state"))
            if echo is not None and seen.get("") != state:
                reason = f" ({record['reason']})" if record.get("reason") else ""
                echo(f"job {record.get('job', '')}: {state}{reason}")
            seen[""] = state
            for name, info in (record.get("builders") or {}).items():
                line = describe_builder(name, info or {})
                if echo is not None and seen.get(name) != line:
                    echo(f"  {line}")
                seen[name] = line
            if state in FINAL_STATES:
                return record
        if deadline is not None and time.monotonic() + interval > deadline:
            raise TempFail(f"gave up waiting after {timeout:g}s (--wait-timeout); the job goes on")
        sleep(interval)


def echo_stderr(line: str) -> None:
    print(printable(line), file=sys.stderr, flush=True)
