"""Buildbot's REST API (``/api/v2``) as tryssh reads it: a try job's buildset and builds.

Buildbot's ``Try_Jobdir`` stores a job file's ``jobid`` as the buildset's
``external_idstring``; that is how a job handed to a master is found again. A filter works
only on a field that is also selected with ``field=``, hence the explicit field lists.

Buildbot's results map to tryssh's: SUCCESS and WARNINGS are ``success``, FAILURE is
``failure``; SKIPPED, EXCEPTION, RETRY and CANCELLED are ``error`` with the reason. A master
that does not answer is retried with exponential backoff; after that the caller gets
:class:`Unavailable`, never a result it did not see. So does a master (or a proxy in front
of it) whose answer is not what tryssh reads: larger than :data:`MAX_ANSWER`, not JSON, or
without the lists and fields of :data:`SHAPES` (checked once, in :meth:`Api.get`, so that
nothing after it meets a wrong type). Standard library only (urllib).
"""

from __future__ import annotations

import http.client
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any

from tryssh.core.safetext import printable
from tryssh.errors import EX_NOPERM, EX_TEMPFAIL, EX_UNAVAILABLE, TrysshError
from tryssh.server.httpfetch import fetch

RESULT_NAMES = ("SUCCESS", "WARNINGS", "FAILURE", "SKIPPED", "EXCEPTION", "RETRY", "CANCELLED")
RESULT_MAP = {0: "success", 1: "success", 2: "failure"}  # every other code is "error"
HTTP_TIMEOUT = 10.0  # seconds, for each connect and each read
# Seconds for one request in all (connect, headers, body): a master or proxy that trickles
# its answer would otherwise hold the caller (the consumer's poll, a status --wait).
ANSWER_DEADLINE = 30.0
RETRIES = 4
BACKOFF_BASE = 0.5  # seconds, doubled after each failed attempt
BACKOFF_MAX = 30.0
TAIL_LINES = 30  # of a failed step's log, copied into the tryssh builder's log
BUILDSET_FIELDS = ("bsid", "external_idstring", "results", "complete", "submitted_at",
                   "complete_at", "reason")  # fmt: skip
# An answer is read into memory whole: a master (or proxy) may not make it larger than this.
# A log is read as a window of lines (failed_step_tail), so this bounds logs too.
MAX_ANSWER = 16 * 2**20
# Build requests of one buildset (one per builder the job names): each is a GET at every
# poll, so a master that answered with thousands would be asked thousands of times a second.
MAX_REQUESTS = 256
NONE = type(None)
# Of each list Buildbot answers with, the fields tryssh reads and the types it reads them
# as (NONE: the field may be null or left out). Whatever else an object holds is ignored.
SHAPES: dict[str, dict[str, tuple[type, ...]]] = {
    "buildsets": {"bsid": (int,), "submitted_at": (int, float, NONE), "reason": (str, NONE)},
    "builders": {"builderid": (int,), "name": (str,)},
    "buildrequests": {"buildrequestid": (int,), "builderid": (int,), "results": (int, NONE)},
    "builds": {"buildid": (int,), "number": (int,), "builderid": (int,),
               "results": (int, NONE), "state_string": (str, NONE)},
    "steps": {"stepid": (int,), "number": (int, NONE), "name": (str,)},
    "logs": {"logid": (int,), "num_lines": (int, NONE)},
    "logchunks": {"content": (str, NONE)},
}  # fmt: skip
KINDS = {int: "an integer", float: "a number", str: "a string", NONE: "null", bool: "a boolean",
         list: "a list", dict: "an object"}  # fmt: skip


class Unavailable(TrysshError):
    """Buildbot's API did not answer (or answered nonsense) after every retry."""

    exit_code = EX_UNAVAILABLE


class Malformed(ValueError):
    """An answer that is not the JSON tryssh reads (retried like a connection error)."""


class TooLarge(Malformed):
    """An answer larger than :data:`MAX_ANSWER` (not retried: it will not shrink)."""


def read_answer(response: http.client.HTTPResponse) -> Any:
    """The JSON value *response* carries, read whole but never more than MAX_ANSWER bytes;
    TooLarge or Malformed (both ValueError) when it is not that."""
    too_large = TooLarge(f"more than {MAX_ANSWER // 2**20} MiB")
    length = response.length  # None: chunked, or up to the connection's close
    if length is not None and length > MAX_ANSWER:  # said so up front: nothing is read
        raise too_large
    # With a Content-Length, read() says IncompleteRead when the answer is cut short (a
    # read(n) would not); without one, read(n) reads no more than n bytes.
    data = response.read() if length is not None else response.read(MAX_ANSWER + 1)
    if len(data) > MAX_ANSWER:
        raise too_large
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as err:  # RecursionError: [[[[... nested too deep
        raise Malformed(f"no JSON ({one_line(err, 80)})") from None


def check_shape(answer: Any, key: str) -> list[dict[str, Any]]:
    """The list *key* of *answer*, every item an object whose fields of :data:`SHAPES`
    have the types tryssh reads them as; Malformed, naming what is wrong, otherwise."""
    items = answer.get(key) if isinstance(answer, dict) else None
    if not isinstance(items, list):
        raise Malformed(f"{key} without a list")
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise Malformed(f"{key}[{index}] {kind_of(item)}, not an object")
        for field, kinds in SHAPES[key].items():
            value = item.get(field)
            if isinstance(value, bool) or not isinstance(value, kinds):  # JSON true is no int
                what = kind_of(value) if field in item else "missing"
                want = " or ".join(KINDS[k] for k in kinds if k is not int or float not in kinds)
                raise Malformed(f"{key}[{index}].{field} {what}, not {want}")
    return items


def kind_of(value: Any) -> str:
    """The JSON kind of *value*, as a message names it (``a string``)."""
    return KINDS.get(type(value), type(value).__name__)


def one_line(text: object, limit: int = 200) -> str:
    """A master's own words (an error message) as one printable line of at most *limit*."""
    line = printable(" ".join(str(text).split()))
    return line if len(line) <= limit else line[:limit] + "..."


class Refused(Unavailable):
    """Buildbot answered a control call with 401 or 403: its authz does not let this
    token do that. Asking again will not help; the site's config must change."""

    exit_code = EX_NOPERM


def result_name(code: int | None) -> str:
    """Buildbot's name for a result code (``FAILURE``), or ``running`` for None."""
    if code is None:
        return "running"
    return RESULT_NAMES[code] if 0 <= code < len(RESULT_NAMES) else f"result {code}"


def tryssh_result(code: int) -> str:
    """tryssh's result for Buildbot's result *code*."""
    return RESULT_MAP.get(code, "error")


def read_token(path: str | None) -> str | None:
    """The bearer token in *path* (for a proxy in front of the API), without the newline."""
    if not path:
        return None
    with open(path, encoding="utf-8") as f:
        return f.read().strip()


class Api:
    """One Buildbot master's REST API at *url* (the web UI's base URL)."""

    def __init__(
        self,
        url: str,
        token: str | None = None,
        retries: int = RETRIES,
        timeout: float = HTTP_TIMEOUT,
        sleep: Callable[[float], None] = time.sleep,
        deadline: float = ANSWER_DEADLINE,
    ) -> None:
        self.url = url if url.endswith("/") else url + "/"
        self.token = token
        self.retries = retries
        self.timeout = timeout
        self.deadline = deadline
        self.sleep = sleep
        self._builder_names: dict[int, str] = {}

    def get(
        self, path: str, params: list[tuple[str, str]] | tuple = (), key: str | None = None
    ) -> dict[str, Any]:
        """``GET api/v2/PATH?PARAMS`` as a JSON object, retried with backoff; Unavailable at
        the end. With *key*, the object's list *key* is checked (:func:`check_shape`)."""
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        url = f"{self.url}api/v2/{path}{query}"
        headers = {"Accept": "application/json", "User-Agent": "tryssh"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        problem = ""
        for attempt in range(self.retries + 1):
            if attempt:
                self.sleep(min(BACKOFF_BASE * 2 ** (attempt - 1), BACKOFF_MAX))
            # Only http(s) URLs reach here: the config checks them.
            request = urllib.request.Request(url, headers=headers)  # noqa: S310
            try:
                answer = self._fetch(request)
                if not isinstance(answer, dict):
                    raise Malformed(f"{kind_of(answer)}, not an object")
                if key is not None:
                    check_shape(answer, key)
                return answer
            except urllib.error.HTTPError as err:
                problem = f"does not answer: GET {url}: HTTP {err.code}"
                if err.code < 500 and err.code not in (408, 429):
                    break  # a 4xx will not improve on retry
            except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
                # HTTPException: a connection cut mid-answer (IncompleteRead) and the like
                reason = getattr(err, "reason", None) or type(err).__name__
                problem = f"does not answer: GET {url}: {reason}"
            except ValueError as err:  # Malformed (a proxy's error page may be passing)
                problem = f"answered GET {url} with {err}"
                if isinstance(err, TooLarge):
                    break  # it will not shrink
        raise Unavailable(f"Buildbot's API {problem}")

    def _fetch(self, request: urllib.request.Request) -> Any:
        """The JSON value of *request*'s answer (:func:`read_answer`), within
        :attr:`deadline` seconds in all (:func:`~tryssh.server.httpfetch.fetch`)."""
        return fetch(request, timeout=self.timeout, deadline=self.deadline, read=read_answer)

    def items(
        self, path: str, params: list[tuple[str, str]] | tuple, key: str
    ) -> list[dict[str, Any]]:
        """The list *key* of ``GET api/v2/PATH``: objects whose fields tryssh reads have the
        types it reads them as (:data:`SHAPES`), else Unavailable."""
        return self.get(path, params, key)[key]

    def post(self, path: str, method: str, params: dict[str, Any]) -> dict[str, Any]:
        """A JSON-RPC control call (``POST api/v2/PATH``), once: a stop is not retried blindly.
        Unavailable when refused or unreachable (the web UI's authz must allow it)."""
        body = json.dumps({"jsonrpc": "2.0", "method": method, "id": 1, "params": params})
        headers = {"Content-Type": "application/json", "User-Agent": "tryssh"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        url = f"{self.url}api/v2/{path}"
        request = urllib.request.Request(url, data=body.encode(), headers=headers)  # noqa: S310
        try:
            answer = self._fetch(request)
        except urllib.error.HTTPError as err:
            if err.code in (401, 403):
                raise Refused(f"POST {url} ({method}): HTTP {err.code}: Buildbot's authz does "
                              "not allow it for tryssh's token ([buildbot] token_file)") from None
            raise Unavailable(f"POST {url} ({method}): HTTP {err.code}") from None
        except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as err:
            raise Unavailable(f"POST {url} ({method}): {getattr(err, 'reason', err)}") from None
        error = answer.get("error") if isinstance(answer, dict) else None
        if error:  # JSON-RPC's is an object with a message; a proxy's may be anything
            message = error.get("message") if isinstance(error, dict) else error
            raise Unavailable(f"POST {url} ({method}): {one_line(message)}")
        return answer if isinstance(answer, dict) else {}

    def stop(self, jobid: str, reason: str) -> int:
        """Stop every build, and cancel every request not started yet, of the try job
        *jobid* (tryssh's cancel); how many were asked to stop."""
        return sum(self.stop_buildset(b["bsid"], reason) for b in self.buildsets(jobid)
                   if not b.get("complete"))  # fmt: skip

    def stop_buildset(self, bsid: int, reason: str) -> int:
        """Stop the running builds of buildset *bsid* and cancel its requests not started
        yet (Buildbot ends both CANCELLED); how many were asked to stop. Unavailable when
        the master does not answer or refuses (its authz must allow ``stop``/``cancel``)."""
        count = 0
        for view in self.builds(bsid).values():
            if view["state"] == "running" and view.get("buildid") is not None:
                self.post(f"builds/{view['buildid']}", "stop", {"reason": reason})
                count += 1
            elif view["state"] == "pending":
                self.post(f"buildrequests/{view['buildrequestid']}", "cancel",
                          {"reason": reason})  # fmt: skip
                count += 1
        return count

    def failed_step_tail(
        self, buildid: int, lines: int = TAIL_LINES
    ) -> tuple[str, list[str]] | None:
        """The first failed step of build *buildid* and the last *lines* lines of its
        stdio log (``steps``, ``logs``, ``logs/ID/contents``); None when no step failed."""
        fields = [("field", f) for f in ("stepid", "number", "name", "results")]
        steps = self.items(f"builds/{buildid}/steps", fields, "steps")
        failed = [s for s in steps if s.get("results") not in (None, 0, 1, 3)]  # 3: SKIPPED
        if not failed:
            return None
        step = min(failed, key=lambda s: s.get("number") or 0)
        logs = self.items(f"steps/{step['stepid']}/logs", (), "logs")
        log = next((lg for lg in logs if lg.get("type") == "s"), logs[0] if logs else None)
        if log is None:
            return step["name"], []
        # Three times as many: Buildbot's indented header lines are left out below.
        offset = max(0, int(log.get("num_lines") or 0) - 3 * lines)
        window = [("offset", str(offset)), ("limit", str(3 * lines))]
        chunks = self.items(f"logs/{log['logid']}/contents", window, "logchunks")
        text = "".join(c.get("content") or "" for c in chunks).splitlines()
        if log.get("type") == "s":
            # A stdio log's lines start with their stream: o(ut), e(rr), h(eader). Of the
            # header, the worker's environment, argv and directory (indented) stay out of
            # tryssh's logs; the command and its exit code stay in.
            text = [ln[1:] for ln in text if ln[:1] != "h" or not ln[1:2].isspace()]
        return step["name"], text[-lines:]

    def buildsets(self, jobid: str) -> list[dict[str, Any]]:
        """The buildsets of the try job whose job file said ``jobid``."""
        params = [("external_idstring", jobid)] + [("field", f) for f in BUILDSET_FIELDS]
        return self.items("buildsets", params, "buildsets")

    def builder_name(self, builderid: int) -> str:
        if builderid not in self._builder_names:
            fields = [("field", "builderid"), ("field", "name")]
            for builder in self.items("builders", fields, "builders"):
                self._builder_names[builder["builderid"]] = builder["name"]
        return self._builder_names.get(builderid, f"builder {builderid}")

    def build_url(self, builderid: int, number: int) -> str:
        """The web UI's page of a build."""
        return f"{self.url}#/builders/{builderid}/builds/{number}"

    def builds(self, bsid: int) -> dict[str, dict[str, Any]]:
        """What each Buildbot builder of buildset *bsid* is doing, by builder name:
        ``state`` (pending, running, done), ``result`` (tryssh's), ``buildbot_result``
        (Buildbot's name), ``state_string``, ``url``, ``complete_at``."""
        found: dict[str, dict[str, Any]] = {}
        requests = self.items("buildrequests", [("buildsetid", str(bsid))], "buildrequests")
        if len(requests) > MAX_REQUESTS:  # each costs a GET at every poll
            raise Unavailable(f"Buildbot's API answered buildset {bsid} with {len(requests)} "
                              f"build requests (a try job has one per builder; tryssh reads "
                              f"at most {MAX_REQUESTS})")  # fmt: skip
        for request in requests:
            name = self.builder_name(request["builderid"])
            brid = request["buildrequestid"]
            builds = self.items("builds", [("buildrequestid", str(brid))], "builds")
            view: dict[str, Any] = {"builder": name, "buildrequestid": brid, "state": "pending",
                                    "result": None, "buildbot_result": None,
                                    "state_string": None, "url": None,
                                    "complete_at": None}  # fmt: skip
            if builds:
                build = builds[-1]  # a retried request has several builds: the last counts
                view.update(
                    buildid=build["buildid"], number=build["number"],
                    url=self.build_url(build["builderid"], build["number"]),
                    state_string=build.get("state_string"), complete_at=build.get("complete_at"),
                )  # fmt: skip
                if build.get("complete") and build.get("results") is not None:
                    code = build["results"]
                    view.update(state="done", result=tryssh_result(code),
                                buildbot_result=result_name(code))  # fmt: skip
                    if code == 5 and not request.get("complete"):  # RETRY: a new build follows
                        view.update(state="running", result=None)
                else:
                    view["state"] = "running"
            elif request.get("complete"):  # cancelled before it started
                code = request.get("results")
                code = 6 if code is None else code
                view.update(state="done", result=tryssh_result(code),
                            buildbot_result=result_name(code),
                            state_string="cancelled before it started")  # fmt: skip
            found[name] = view
        return found


def describe(view: dict[str, Any]) -> str | None:
    """The reason shown for a finished build that did not succeed (or None)."""
    if view.get("result") in (None, "success"):
        return None
    text = f"Buildbot: {view.get('buildbot_result')}"
    if view.get("state_string"):
        text += f" ({view['state_string']})"
    return text


def stop_buildsets(api: Api, bsids: list[int], reason: str) -> tuple[int, str]:
    """Ask Buildbot to stop the buildsets *bsids* (:meth:`Api.stop_buildset`); 0 if it
    took the request, else the exit code of why not (77 refused by its authz, 75 no
    answer: worth asking again), and one line saying what came of it."""
    which = ", ".join(str(b) for b in bsids)
    try:
        count = sum(api.stop_buildset(bsid, reason) for bsid in bsids)
    except TrysshError as err:
        code = EX_NOPERM if isinstance(err, Refused) else EX_TEMPFAIL
        return code, f"could not ask Buildbot to stop buildset {which}: {err.message}"
    if not count:
        return 0, f"Buildbot had nothing left to stop in buildset {which}"
    builds = f"{count} build{'' if count == 1 else 's'}"
    return 0, f"asked Buildbot to stop buildset {which} ({builds})"


def try_reason(who: str | None) -> str:
    """The reason Buildbot's ``Try_Jobdir`` gives the buildset of a job whose ``who`` is
    *who* (tryserver pins ``who``, so this names the job's owner)."""
    return "'try' job" + (f" by user {who}" if who else "")


def foreign_buildsets(api: Api, jobid: str, bsids: list[int], who: str | None) -> list[str]:
    """Of the buildsets *bsids* of *jobid*, those Buildbot says another user's try job
    made (a reused jobid), each as ``N ("REASON")``: a cancel must not stop them."""
    reasons = {b["bsid"]: b.get("reason") for b in api.buildsets(jobid)}
    want = try_reason(who)
    return [f"{b} ({reasons.get(b)!r:.100})" for b in bsids if reasons.get(b) != want]


# Buildbot's clock and ours may differ a little; a buildset this much older than the
# delivery is still taken as the job's.
CLOCK_SLACK = 60.0


def job_buildset(api: Api, jobid: str, since: float | None = None) -> dict[str, Any] | None:
    """The buildset of the job delivered at *since* (epoch seconds) with this *jobid*.

    One delivery makes exactly one buildset. A client chooses the jobid, so another job
    may carry the same one (copied from Buildbot's web UI, where it is shown): only the
    first buildset submitted since the delivery is the job's, so that a later job with
    a stolen jobid can never stand in for it.
    """
    buildsets = api.buildsets(jobid)
    if since is not None:
        # submitted_at is in whole seconds; a master whose clock is a little behind ours
        # is allowed for only when nothing was submitted since the delivery.
        after = [b for b in buildsets if (b.get("submitted_at") or 0) >= int(since)]
        buildsets = after or [
            b for b in buildsets if (b.get("submitted_at") or 0) >= since - CLOCK_SLACK
        ]
    return min(buildsets, key=lambda b: b["bsid"]) if buildsets else None


def job_view(api: Api, jobid: str, since: float | None = None) -> dict[str, Any] | None:
    """A tryssh record's ``state`` and ``builders`` for the try job *jobid* delivered at
    *since*, read from Buildbot; None when Buildbot has no buildset for it (yet)."""
    buildset = job_buildset(api, jobid, since)
    if buildset is None:
        return None
    buildsets = [buildset]
    builders: dict[str, dict[str, Any]] = {}
    for buildset in buildsets:
        for name, view in api.builds(buildset["bsid"]).items():
            builders[name] = {
                "state": view["state"], "result": view["result"], "reason": describe(view),
                "url": view["url"], "state_string": view["state_string"],
                "buildbot_result": view["buildbot_result"], "buildid": view.get("buildid"),
            }  # fmt: skip
    results = [b["result"] for b in builders.values()]
    if not all(b.get("complete") for b in buildsets) or None in results:
        state = "running"  # (a build not yet read as finished: ask again, never guess)
    elif "error" in results or not results:
        state = "error"  # not results: Buildbot finished the buildset without a build
    else:
        state = "failure" if "failure" in results else "success"
    return {"state": state, "builders": builders, "bsids": [b["bsid"] for b in buildsets]}
