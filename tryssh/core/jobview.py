"""The human view of a job record: one formatter for ``tryserver status``, ``tryssh status``,
``tryssh try --wait`` and ``tryserver jobs``.

    job 1717171717.M1P2Q3.ci: failure
      who: alice  branch: main  baserev: abc123  received: ...  finished: ...
      unit: success (log /srv/tryssh/logs/.../unit.log)
      lint: failure (exit status 1; log /srv/tryssh/logs/.../lint.log)

Records come from the server (over SSH, as JSON), so every field may be missing or odd: the
view never fails on a record, it shows ``?`` instead.
"""

from __future__ import annotations

from tryssh.core.safetext import printable

TYPE_CHECKING = False  # typing is not imported at run time: tryserver status uses this
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

    from tryssh.core.records import BuilderEntry, JobRecord

# jobid: what Buildbot knows the job by (its buildset's external_idstring).
DETAILS = ("jobid", "who", "branch", "baserev", "received", "finished")


def head_line(record: JobRecord | Mapping[str, Any]) -> str:
    """``job NAME: STATE`` and the job's reason, if any."""
    text = f"job {record.get('job') or '?'}: {record.get('state') or '?'}"
    return text + (f" ({record['reason']})" if record.get("reason") else "")


def details_line(record: JobRecord | Mapping[str, Any]) -> str | None:
    """``  who: X  branch: Y ...`` for the fields the record has; None when it has none."""
    details = [f"{key}: {record[key]}" for key in DETAILS if record.get(key)]  # type: ignore[literal-required]
    return "  " + "  ".join(details) if details else None


def builder_line(
    name: str, entry: BuilderEntry | Mapping[str, Any], show_log: bool = True
) -> str:
    """``  NAME: RESULT`` once done (else its state), with its reason, a cancel that came
    too late, its log (unless *show_log* is false: a developer cannot read the master's
    files) and its link (``url``) when the builder kind has one."""
    state = entry.get("state") or "?"
    result = entry.get("result")
    notes = [str(entry["reason"])] if entry.get("reason") else []
    if entry.get("cancel"):
        notes.append(str(entry["cancel"]))
    if show_log and entry.get("log"):
        notes.append(f"log {entry['log']}")
    text = f"  {name}: {result if state == 'done' and result else state}"
    text += f" ({'; '.join(notes)})" if notes else ""
    return text + (f"  {entry['url']}" if entry.get("url") else "")


def status_lines(record: JobRecord | Mapping[str, Any], show_log: bool = True) -> list[str]:
    """The whole status of one job, one string per line (no newlines); the builders' log
    paths unless *show_log* is false (the client's view: ``tryssh log`` brings logs)."""
    lines = [head_line(record)]
    details = details_line(record)
    if details:
        lines.append(details)
    builders = record.get("builders") or {}
    lines.extend(builder_line(name, entry or {}, show_log) for name, entry in builders.items())
    # Branch names, reasons and builder names come from clients (or a server): no escape
    # sequence may reach a terminal, and no newline may forge a line.
    return [printable(line) for line in lines]


def format_status(record: JobRecord | Mapping[str, Any]) -> str:
    """:func:`status_lines` as text, each line ended."""
    return "".join(line + "\n" for line in status_lines(record))


def format_jobs(records: list[JobRecord], show_who: bool = False) -> str:
    """One line per job: name, state, branch, builders with results, comment (tab-separated;
    the comment on one line, at most 60 characters). With *show_who* (the admin's view of
    everyone's jobs) the user comes after the name."""
    lines = []
    for record in records:
        results = ",".join(
            f"{printable(str(n))}={printable(str(e.get('result') or e.get('state')))}"
            for n, e in (record.get("builders") or {}).items()
        )
        comment = " ".join(str(record.get("comment") or "").split())[:60]
        who = [record.get("who") or "-"] if show_who else []
        fields = (record["job"], *who, record.get("state"), record.get("branch") or "-")
        # Each field escaped on its own: a tab or newline in a branch cannot forge a column.
        lines.append(
            "\t".join(printable(str(f)) for f in fields)
            + f"\t{results or '-'}\t{printable(comment) or '-'}\n"
        )
    return "".join(lines)
