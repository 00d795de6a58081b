"""Buildbot try job files, versions 1 to 6: reading, checking, writing.

Valid files read exactly as Buildbot's ``Try_Jobdir.parseJob`` reads them (same fields,
same defaults, the patch as bytes). Every malformed file raises :class:`BadJob` with a
one-line reason, including the inputs on which Buildbot itself crashes. Jobs are written
exactly as Buildbot's ``createJobfile`` writes them: v5, or v6 when the patch is not UTF-8.

:func:`transcode` is the one reader. It takes the netstrings one by one and can pass the
job through to a writer as it goes, pinning ``who`` on the way, so the forced command
never holds a patch in memory: v1-v4 netstrings pass through as they come, and the JSON
of a v5/v6 job is spliced (:mod:`tryssh.core.jobsplice`).
"""

from __future__ import annotations

import binascii
import codecs
import io
import json
import os
from collections.abc import Callable

from tryssh.core import netstring
from tryssh.errors import BadJob

TYPE_CHECKING = False  # typing is not imported at run time: start-up cost
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any, BinaryIO

    from tryssh.core.jobsplice import Output

# Fields other than the patch are short; a bigger one is garbage, and the cap keeps the
# forced command's memory flat whatever a v1-v4 job holds.
MAX_FIELD = 1 << 20
MAX_BUILDERS = 10_000
MAX_TRAILING = 1000  # netstrings after a v5/v6 job's JSON

V1_KEYS = ("jobid", "branch", "baserev", "patch_level", "patch_body")
V2_KEYS = (*V1_KEYS, "repository", "project")
V3_KEYS = (*V2_KEYS, "who")
V4_KEYS = (*V3_KEYS, "comment")
NETSTRING_KEYS = {1: V1_KEYS, 2: V2_KEYS, 3: V3_KEYS, 4: V4_KEYS}
# The order in which Buildbot's client writes the JSON keys (tryclient.createJobfile).
JSON_KEY_ORDER = (
    "jobid", "branch", "baserev", "patch_level", "repository", "project",
    "who", "comment", "builderNames", "properties",
)  # fmt: skip
# Fields Buildbot's master stores in NOT NULL columns: a JSON null there fails an assertion
# ("repository cannot be None") after the job has left new/, and the job is lost.
NOT_NULL_TEXT = ("repository", "project")


def bytes_repr_revision(value: object) -> str | None:
    """The revision inside ``"b'...'"``, the Python repr of bytes that Buildbot's own client
    (3.x, 4.x) sends as the ``baserev`` of hg and svn jobs; None for any other value. No
    VCS names a revision with quotes, so the repr is never a real revision."""
    if not isinstance(value, str) or len(value) < 3 or not value.startswith("b'"):
        return None
    inner = value[2:-1]
    if not value.endswith("'") or "'" in inner or "\\" in inner or not inner.isprintable():
        return None
    return inner


def normalise_for_buildbot(obj: dict[str, Any], job: Job | None = None) -> bool:
    """Rewrite, in the v5/v6 JSON *obj* (and *job*), the values that break Buildbot at
    delivery. True when something changed. The one definition: the whole-job path, the
    streaming splice and the builders that forward jobs all call it.

    - A null ``repository`` or ``project`` becomes ``""`` (what Buildbot itself defaults a
      missing one to): the master asserts and loses the job. ``buildbot try --diff``
      without ``--repository`` sends null.
    - A ``baserev`` of ``"b'REV'"`` becomes ``"REV"``: Buildbot's client sends that for hg
      and svn, and every build of it fails to check the revision out.
    """
    changed = False
    for key in NOT_NULL_TEXT:
        if key in obj and obj[key] is None:
            obj[key] = ""
            if job is not None:
                setattr(job, key, "")
            changed = True
    revision = bytes_repr_revision(obj.get("baserev"))
    if revision is not None:
        obj["baserev"] = revision
        if job is not None:
            job.baserev = revision or None
        changed = True
    return changed


class Job:
    """One try job. ``patch_body`` is bytes (or None when a v5 job sent null).

    A plain class rather than a dataclass: the forced command imports this module, and
    dataclasses costs more start-up time than the rest of the command.
    """

    FIELDS = (
        "jobid", "branch", "baserev", "patch_level", "patch_body", "builder_names",
        "repository", "project", "who", "comment", "properties", "version", "extra",
    )  # fmt: skip

    def __init__(
        self,
        jobid: str | None,
        branch: str | None,
        baserev: str | None,
        patch_level: int,
        patch_body: bytes | None,
        builder_names: list[str] | None,
        repository: str | None = "",
        project: str | None = "",
        who: str | None = "",
        comment: str | None = "",
        properties: dict[str, Any] | None = None,
        version: int = 5,
        extra: dict[str, Any] | None = None,
    ) -> None:
        self.jobid = jobid
        self.branch = branch
        self.baserev = baserev
        self.patch_level = patch_level
        self.patch_body = patch_body
        self.builder_names = builder_names
        self.repository = repository
        self.project = project
        self.who = who
        self.comment = comment
        self.properties = {} if properties is None else properties
        self.version = version
        self.extra = {} if extra is None else extra  # unknown JSON keys, kept

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Job):
            return NotImplemented
        return all(getattr(self, f) == getattr(other, f) for f in self.FIELDS)

    def __repr__(self) -> str:
        shown = ", ".join(f"{f}={getattr(self, f)!r}" for f in self.FIELDS)
        return f"Job({shown})"

    def as_buildbot_dict(self) -> dict[str, Any]:
        """The dict Buildbot's ``parseJob`` returns for this job."""
        result: dict[str, Any] = {
            "jobid": self.jobid,
            "branch": self.branch,
            "baserev": self.baserev,
            "patch_level": self.patch_level,
            "patch_body": self.patch_body,
            "builderNames": self.builder_names,
            "repository": self.repository,
            "project": self.project,
            "who": self.who,
            "comment": self.comment,
            "properties": self.properties,
        }
        result.update(self.extra)
        return result


def encode_job(job: Job) -> bytes:
    """The job file bytes, exactly as Buildbot's ``createJobfile`` writes them."""
    body = _json_fields(job)
    version = 5
    try:
        body["patch_body"] = None if job.patch_body is None else job.patch_body.decode("utf-8")
    except UnicodeDecodeError:
        version = 6
        import base64  # only for binary patches: kept off the forced command's start-up

        body["patch_body_base64"] = base64.b64encode(job.patch_body or b"").decode("ascii")
    return netstring.encode(b"%d" % version) + netstring.encode(json.dumps(body).encode("ascii"))


ENCODE_CHUNK = 1 << 20
# The bytes json.dumps writes as a two-character escape, and those it writes as \u00XX.
_SHORT_ESCAPES = b'"\\\n\r\t\b\f'
_LONG_ESCAPES = bytes(c for c in range(0x20) if bytes([c]) not in _SHORT_ESCAPES) + b"\x7f"
_ALL_BUT_LONG = bytes(c for c in range(256) if bytes([c]) not in _LONG_ESCAPES)
_AS_THEMSELVES = bytes(c for c in range(0x20, 0x7F) if c not in b'"\\')  # json leaves these
# The escapes _escape_json writes with bytes.replace, the backslash's first (the others
# add backslashes); a byte that needs a \u00XX escape goes to json's encoder.
_REPLACEMENTS = tuple((bytes([c]), json.dumps(chr(c))[1:-1].encode())
                     for c in sorted(_SHORT_ESCAPES, key=lambda c: c != ord("\\")))  # fmt: skip
_PLAIN = _AS_THEMSELVES + _SHORT_ESCAPES


def _escape_json(chunk: bytes, plain: bool = False) -> bytes:
    """*chunk* (ASCII) as ``json.dumps`` writes it inside a string, without the quotes.

    A diff is printable ASCII and line ends: then one ``bytes.replace`` per escape (each a
    memchr-speed pass) does the job five times faster than json's encoder, which builds
    the text character by character. Anything else goes to that encoder. *plain*: the
    caller knows the chunk needs no \\u00XX escape.
    """
    if not plain and chunk.translate(None, _PLAIN):
        from json.encoder import encode_basestring_ascii

        return encode_basestring_ascii(chunk.decode("ascii"))[1:-1].encode("ascii")
    for char, escape in _REPLACEMENTS:
        if char in chunk:
            chunk = chunk.replace(char, escape)
    return chunk


class EncodedJob:
    """A job file as :func:`encode_job` writes it, produced chunk by chunk as it is sent.

    Its size is known before the first chunk (the escaped length of an ASCII patch is
    counted, base64's is computed), so the client can start the upload at once and
    encode while it sends, instead of building the whole file first.
    """

    def __init__(self, job: Job) -> None:
        patch = job.patch_body
        self.version = 5
        self._patch = patch
        self._whole: bytes | None = None
        self._plain = False  # the patch needs no \u00XX escape (then replaces do it all)
        if patch is not None and not patch.isascii():
            try:
                patch.decode("utf-8")
            except UnicodeDecodeError:
                self.version = 6
            else:  # non-ASCII text: \uXXXX escapes, not worth counting; encoded at once
                self._whole = encode_job(job)
        if self._whole is not None:
            self.size = len(self._whole)
            return
        key = "patch_body" if self.version == 5 else "patch_body_base64"
        body = _json_fields(job)
        body[key] = "" if patch is not None or self.version == 6 else None
        text = json.dumps(body).encode("ascii")
        if body[key] is None:  # no patch: nothing to stream
            self._prefix, self._suffix, patch_len = text, b"", 0
            self._patch = None
        else:
            self._prefix, self._suffix = text[:-2], text[-2:]  # '..."patch_body": "' and '"}'
            assert patch is not None
            if self.version == 6:
                patch_len = (len(patch) + 2) // 3 * 4
            else:
                # One pass over the patch: the bytes json escapes (\n and \" two bytes long,
                # a control byte six), then the long ones among those few.
                escaped = patch.translate(None, _AS_THEMSELVES)
                long = len(escaped.translate(None, _ALL_BUT_LONG))
                patch_len = len(patch) + len(escaped) + 4 * long
                self._plain = not long
        self._json_len = len(self._prefix) + patch_len + len(self._suffix)
        self._head = netstring.encode(b"%d" % self.version) + netstring.header(self._json_len)
        self.size = len(self._head) + self._json_len + 1

    def chunks(self) -> Iterator[bytes]:
        """The job file's bytes, in order."""
        if self._whole is not None:
            yield self._whole
            return
        yield self._head + self._prefix
        patch = self._patch
        if patch is not None:
            view = memoryview(patch)
            if self.version == 6:
                import binascii

                step = max(3, ENCODE_CHUNK // 4 * 3)
                for start in range(0, len(patch), step):
                    yield binascii.b2a_base64(view[start : start + step], newline=False)
            else:
                for start in range(0, len(patch), ENCODE_CHUNK):
                    yield _escape_json(patch[start : start + ENCODE_CHUNK], self._plain)
        yield self._suffix + b","

    def __bytes__(self) -> bytes:
        return self._whole if self._whole is not None else b"".join(self.chunks())


def _json_fields(job: Job) -> dict[str, Any]:
    """The JSON object's fields before the patch, in createJobfile's order."""
    return {
        "jobid": job.jobid,
        "branch": job.branch,
        "baserev": job.baserev,
        "patch_level": job.patch_level,
        "repository": job.repository,
        "project": job.project,
        "who": job.who,
        "comment": job.comment,
        "builderNames": job.builder_names,
        "properties": job.properties,
    }


def parse_job(data: bytes, *, allow_truncated_tail: bool = True) -> Job:
    """Read a whole job file held in memory.

    A truncated last netstring is dropped, as Buildbot does, unless
    *allow_truncated_tail* is false.
    """
    return transcode(io.BytesIO(data), keep_patch=True, allow_truncated_tail=allow_truncated_tail)


def parse_job_file(path: str, *, limit: int | None = None) -> Job:
    """Read the job file at *path*: a regular file (NotAJobFile, a BadJob, otherwise)."""
    from tryssh.core.jobdir import open_job

    with os.fdopen(open_job(path), "rb") as f:
        return transcode(f, limit=limit, keep_patch=True, allow_truncated_tail=True)


def read_job_head(path: str) -> Job:
    """The job file at *path* without its patch (``patch_body`` None): what ``status``
    shows of a job not yet recorded. A v1-v4 patch is skipped with a seek; a v5/v6 file is
    read up to its patch when ``who`` comes before it, as tryserver delivers it, and
    otherwise streamed past the patch in fixed memory. Fields of the wrong type read as
    None: the consumer, which reads the whole job, says what is wrong with it.
    Not a regular file (a FIFO would block for ever): NotAJobFile, a BadJob."""
    from tryssh.core.jobdir import open_job

    with os.fdopen(open_job(path), "rb") as f:
        reader = netstring.NetstringReader(f, chunk=64 * 1024)
        version = _read_version(reader)
        if version <= 4:
            return _transcode_netstrings(reader, version, None, None, False, True, skip=True)
        from tryssh.core.jobsplice import splice

        read, _ = splice(reader, version, None, None, stop_when=("who",))

    def text(key: str, default: str | None = None) -> str | None:
        value = read.get(key, default)
        return value if isinstance(value, str) else None

    level = read.get("patch_level")
    return Job(
        jobid=text("jobid"),
        branch=text("branch") or None,
        baserev=text("baserev") or None,
        patch_level=level if isinstance(level, int) else 0,
        patch_body=None,
        builder_names=None,
        repository=text("repository", ""),
        project=text("project", ""),
        who=text("who", ""),
        comment=text("comment", ""),
        version=version,
    )


def transcode(
    stream: BinaryIO,
    *,
    emit: Callable[[bytes], object] | Output | None = None,
    pin_who: str | None = None,
    limit: int | None = None,
    keep_patch: bool = False,
    allow_truncated_tail: bool = False,
    stream_json: bool = True,
    chunk: int = netstring.CHUNK,
) -> Job:
    """Read and check one job from *stream*; pass it on to *emit* as it goes.

    With *pin_who*, the job handed to *emit* carries that ``who`` whatever the client
    sent; a v1 or v2 job becomes v3 to have a place for it. What reaches *emit* is a
    job Buildbot's master reads: a v1-v4 patch must then be UTF-8, and a v5/v6 job's
    fields that crash Buildbot are made safe (:func:`normalise_for_buildbot`). The patch of a
    v1-v4 job is returned only with *keep_patch*, so that it need not be held in memory.

    A v5/v6 job is spliced as it streams; *emit* is then best an
    :class:`~tryssh.core.jobsplice.Output` (``write`` and ``rewrite_head``), or it gets the
    whole job in one call. ``stream_json=False`` takes the whole-job path instead (decode,
    fix, ``json.dumps``): the reference the splice is tested against.
    """
    reader = netstring.NetstringReader(stream, limit=limit, chunk=chunk)
    version = _read_version(reader)
    if version <= 4:
        return _transcode_netstrings(
            reader, version, emit, pin_who, keep_patch, allow_truncated_tail
        )
    if emit is not None and stream_json:
        return _splice_json(reader, version, emit, pin_who, allow_truncated_tail)
    return _transcode_json(reader, version, emit, pin_who, allow_truncated_tail)


def _read_version(reader: netstring.NetstringReader) -> int:
    length = reader.next_length()
    if length is None:
        raise BadJob("could not find any complete netstrings (empty job)")
    if length > 8:
        raise BadJob("the version netstring is too long")
    text = reader.read_payload(length)
    if not text.isdigit() or (len(text) > 1 and text.startswith(b"0")):
        # "05" would compare as 5, but Buildbot's master crashes on it (IndexError).
        raise BadJob(f"unknown job version {text.decode('ascii', 'replace')!r}")
    version = int(text)
    if not 1 <= version <= 6:
        raise BadJob(f"unknown job version {version} (tryssh reads versions 1 to 6)")
    return version


def _read_text(reader: netstring.NetstringReader, name: str) -> str:
    length = reader.next_length()
    if length is None:
        raise BadJob(f"job ends before the {name} field")
    if length > MAX_FIELD:
        raise BadJob(f"the {name} field is larger than {MAX_FIELD} bytes")
    raw = reader.read_payload(length)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadJob(f"the {name} field is not valid UTF-8") from None
    return check_text(name, text)


def check_text(name: str, text: str) -> str:
    """*text* if it can be stored and shown: no NUL, no lone surrogate; BadJob otherwise.

    Such a job could never build (a NUL cannot be an argument, a surrogate cannot be
    written as UTF-8), so it is refused at the door rather than accepted and lost later.
    """
    if "\0" in text:
        raise BadJob(f"the {name} field holds a NUL character")
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise BadJob(f"the {name} field holds a lone surrogate, not text") from None
    return text


def check_builder_names(names: list[str] | None) -> list[str] | None:
    """The same caps for every version: how many names, and their size together."""
    if names is None:
        return None
    if len(names) > MAX_BUILDERS:
        raise BadJob(f"the job names more than {MAX_BUILDERS} builders")
    if sum(len(n) for n in names) > MAX_FIELD:
        raise BadJob(f"the builder names are larger than {MAX_FIELD} bytes together")
    for i, name in enumerate(names):
        check_text(f"builder name {i + 1}", name)
    return names


def _transcode_netstrings(
    reader: netstring.NetstringReader,
    version: int,
    emit: Callable[[bytes], object] | None,
    pin_who: str | None,
    keep_patch: bool,
    allow_truncated_tail: bool,
    skip: bool = False,
) -> Job:
    out_version = max(version, 3) if pin_who is not None else version
    if emit:
        emit = _writer(emit)
        emit(netstring.encode(b"%d" % out_version))

    def pass_text(name: str, value: str) -> None:
        if emit:
            emit(netstring.encode(value.encode("utf-8")))

    values: dict[str, Any] = {}
    for name in ("jobid", "branch", "baserev", "patch_level"):
        values[name] = _read_text(reader, name)
        pass_text(name, values[name])
    try:
        patch_level = int(values["patch_level"])
    except ValueError:
        raise BadJob(f"patch_level {values['patch_level'][:20]!r} is not a number") from None

    length = reader.next_length()
    if length is None:
        raise BadJob("job ends before the patch_body field")
    if emit:
        emit(netstring.header(length))
    if skip:
        reader.skip_payload(length)
    decoder = codecs.getincrementaldecoder("utf-8")()
    utf8 = True
    kept: list[bytes] = []
    for chunk in () if skip else reader.iter_payload(length):
        # ASCII needs no decoding; only look closer at other bytes or a split sequence.
        if utf8 and (not chunk.isascii() or decoder.getstate()[0]):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError:
                utf8 = False
        if emit:
            emit(chunk)
        if keep_patch:
            kept.append(chunk)
    if utf8:
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            utf8 = False
    if not utf8:
        # Buildbot's master reads the file as UTF-8 text and crashes on it.
        raise BadJob(
            "the patch is not valid UTF-8, which a Buildbot master cannot read in a "
            f"version {version} job: send a version 6 job instead"
        )
    if emit:
        emit(b",")

    for name in NETSTRING_KEYS[version][len(V1_KEYS) :]:
        values[name] = _read_text(reader, name)
    if pin_who is not None:
        values["who"] = pin_who
        values.setdefault("repository", "")
        values.setdefault("project", "")
    for name in NETSTRING_KEYS[out_version][len(V1_KEYS) :]:
        pass_text(name, values[name])

    builders: list[str] = []
    names_size = 0
    try:
        while (length := reader.next_length()) is not None:
            # The names are kept: capped together, not one by one, so that memory stays flat.
            names_size += length
            if names_size > MAX_FIELD:
                raise BadJob(f"the builder names are larger than {MAX_FIELD} bytes together")
            if len(builders) >= MAX_BUILDERS:
                raise BadJob(f"the job names more than {MAX_BUILDERS} builders")
            raw = reader.read_payload(length)
            try:
                name = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise BadJob(f"builder name {len(builders) + 1} is not valid UTF-8") from None
            builders.append(check_text(f"builder name {len(builders) + 1}", name))
            if emit:
                emit(netstring.encode(raw))
    except netstring.TruncatedNetstring:
        if not allow_truncated_tail:
            raise
    return Job(
        jobid=values["jobid"],
        branch=values["branch"] or None,
        baserev=values["baserev"] or None,
        patch_level=patch_level,
        patch_body=b"".join(kept) if keep_patch else None,
        builder_names=builders,
        repository=values.get("repository", ""),
        project=values.get("project", ""),
        who=values.get("who", ""),
        comment=values.get("comment", ""),
        properties={},
        version=out_version if emit else version,
    )


def _writer(emit: Callable[[bytes], object] | Output) -> Callable[[bytes], object]:
    write = getattr(emit, "write", None)
    return write if write is not None else emit  # type: ignore[return-value]


def _fix_fields(pin_who: str | None) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def fix(obj: dict[str, Any]) -> dict[str, Any]:
        if pin_who is not None:
            obj["who"] = pin_who
        normalise_for_buildbot(obj)
        return obj

    return fix


def _splice_json(
    reader: netstring.NetstringReader,
    version: int,
    emit: Callable[[bytes], object] | Output,
    pin_who: str | None,
    allow_truncated_tail: bool,
) -> Job:
    from tryssh.core.jobsplice import MemoryOutput, splice

    out = emit if hasattr(emit, "rewrite_head") else MemoryOutput()
    read, written = splice(reader, version, out, _fix_fields(pin_who))  # type: ignore[arg-type]
    _skip_trailing(reader, allow_truncated_tail)
    job_from_json(read, version)  # what the client sent must be valid, pinned or not
    job = job_from_json(written, version)
    job.patch_body = None  # streamed, not held
    if out is not emit:
        emit(bytes(out.data))  # type: ignore[operator,union-attr]
    return job


def _skip_trailing(reader: netstring.NetstringReader, allow_truncated_tail: bool) -> None:
    # Buildbot ignores netstrings after the JSON; we check their framing and drop them.
    # Its client never writes any: a flood of tiny ones would only burn CPU, so few are taken.
    try:
        count = 0
        while (extra := reader.next_length()) is not None:
            count += 1
            if count > MAX_TRAILING:
                raise BadJob(f"more than {MAX_TRAILING} netstrings after the JSON")
            for _ in reader.iter_payload(extra):
                pass
    except netstring.TruncatedNetstring:
        if not allow_truncated_tail:
            raise


def _transcode_json(
    reader: netstring.NetstringReader,
    version: int,
    emit: Callable[[bytes], object] | Output | None,
    pin_who: str | None,
    allow_truncated_tail: bool,
) -> Job:
    length = reader.next_length()
    if length is None:
        raise BadJob(f"version {version} job has no JSON netstring")
    raw = reader.read_payload(length)
    _skip_trailing(reader, allow_truncated_tail)
    try:
        obj = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise BadJob("the JSON is not valid UTF-8") from None
    except (ValueError, RecursionError) as err:  # RecursionError: nested too deeply
        raise BadJob(f"unable to parse JSON: {err}") from None
    job = job_from_json(obj, version)
    if emit:
        before = dict(obj)
        _fix_fields(pin_who)(obj)
        if obj != before or list(obj) != list(before):
            job = job_from_json(obj, version)
            try:
                raw = json.dumps(obj).encode("ascii")
            except RecursionError:  # defensive: loads took it, but dumps runs a frame deeper
                raise BadJob("unable to write the JSON back: nested too deeply") from None
        _writer(emit)(netstring.encode(b"%d" % version) + netstring.encode(raw))
    return job


def _text_or_none(obj: dict[str, Any], key: str, default: str | None) -> str | None:
    value = obj.get(key, default)
    if value is not None and not isinstance(value, str):
        raise BadJob(f"{key} must be a string or null, not {type(value).__name__}")
    return value if value is None else check_text(key, value)


def job_from_json(obj: object, version: int) -> Job:
    """Check a v5/v6 JSON object and turn it into a :class:`Job`."""
    if not isinstance(obj, dict):
        raise BadJob(f"the JSON must be an object, not {type(obj).__name__}")
    patch_key = "patch_body" if version == 5 else "patch_body_base64"
    for key in ("jobid", "branch", "baserev", "patch_level", "builderNames", patch_key):
        if key not in obj:
            raise BadJob(f"the JSON has no {key!r} key")
    jobid = obj["jobid"]
    if not isinstance(jobid, str):
        raise BadJob(f"jobid must be a string, not {type(jobid).__name__}")
    check_text("jobid", jobid)
    level = obj["patch_level"]
    if isinstance(level, dict | list) or level is None:
        raise BadJob(f"patch_level must be a number, not {type(level).__name__}")
    try:
        patch_level = int(level)
    except (ValueError, OverflowError):
        raise BadJob(f"patch_level {str(level)[:20]!r} is not a number") from None
    builders = obj["builderNames"]
    if builders is not None and (
        not isinstance(builders, list) or not all(isinstance(b, str) for b in builders)
    ):
        raise BadJob("builderNames must be a list of strings or null")
    check_builder_names(builders)  # v1-v4 have the same caps, checked as they stream
    properties = obj.get("properties", {})
    if not isinstance(properties, dict):
        raise BadJob(f"properties must be an object, not {type(properties).__name__}")
    if version == 5:
        body = obj["patch_body"]
        if body is not None and not isinstance(body, str):
            raise BadJob(f"patch_body must be a string or null, not {type(body).__name__}")
        try:
            patch = None if body is None else body.encode("utf-8")
        except UnicodeEncodeError:
            raise BadJob("patch_body holds a lone surrogate, not text") from None
    else:
        encoded = obj["patch_body_base64"]
        if not isinstance(encoded, str):
            raise BadJob("patch_body_base64 must be a string")
        try:
            import base64  # only for v6: kept off the forced command's start-up

            patch = base64.b64decode(encoded)
        except (binascii.Error, ValueError):
            raise BadJob("patch_body_base64 is not valid base64") from None
    # Buildbot drops patch_body_base64 from a v6 job only; in v5 it is an unknown key.
    known = {*JSON_KEY_ORDER, "patch_body"} | ({"patch_body_base64"} if version == 6 else set())
    return Job(
        jobid=jobid,
        branch=_text_or_none(obj, "branch", None) or None,
        baserev=_text_or_none(obj, "baserev", None) or None,
        patch_level=patch_level,
        patch_body=patch,
        builder_names=builders,
        repository=_text_or_none(obj, "repository", ""),
        project=_text_or_none(obj, "project", ""),
        who=_text_or_none(obj, "who", ""),
        comment=_text_or_none(obj, "comment", ""),
        properties=properties,
        version=version,
        extra={k: v for k, v in obj.items() if k not in known},
    )
