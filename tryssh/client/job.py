"""The job ``tryssh try`` sends: the developer's request, the change it carries, the job built
from them, and what is shown before sending.

The job is written exactly as Buildbot's ``createJobfile`` writes it (v5, v6 for a patch that
is not UTF-8), so a Buildbot master reads it as well as tryssh's consumer.
"""

from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass, field
from typing import Any

from tryssh.core.jobfile import Job
from tryssh.errors import BadJob, UsageError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from tryssh.client.vcs import PatchStats, SourceChange


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


def parse_properties(
    items: list[str] | tuple[str, ...], split_commas: bool = False
) -> dict[str, str]:
    """``K=V`` strings, as Buildbot reads them: ``--property`` splits at the first '=';
    ``--properties`` (*split_commas*) first splits ``a=1,b=2`` at the commas."""
    props: dict[str, str] = {}
    flag = "--properties" if split_commas else "--property"
    for text in items:
        for item in text.split(",") if split_commas else [text]:
            key, eq, value = item.partition("=")
            if not eq or not key.strip():
                raise UsageError(f"{flag} needs KEY=VALUE, not {item!r}")
            props[key.strip()] = value
    return props


def gather_change(req: TryRequest, cwd: str | None = None) -> SourceChange:
    """The change to send: from ``--diff`` or from the working copy around *cwd*."""
    from tryssh.client import vcs

    if req.diff is not None:
        if req.baserev is None:
            raise UsageError("--diff needs --baserev (the revision the patch applies to)")
        return vcs.from_diff(
            req.diff,
            baserev=req.baserev,
            patch_level=req.patchlevel or 0,
            branch=req.branch,
            repository=req.repository,
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
        hint = ""
        if change.vcs == "git" and not req.untracked and change.topdir:
            from tryssh.client.vcs import untracked_files

            if untracked_files(change.topdir):
                hint = "; there are untracked files: pass --untracked to include them"
        raise BadJob(
            "the diff is empty: nothing to try (change something, or pass --allow-empty to "
            f"build the base revision as it is){hint}"
        )
    if req.branch:
        # As Buildbot sends it: git drops a "<remote>/" prefix (vcs.extract did that).
        branch = change.branch or req.branch
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
            "files": stats.files,
            "added": stats.added,
            "removed": stats.removed,
            "bytes": stats.size,
        },
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "notes": list(getattr(change, "notes", [])),
    }
