"""The streaming splice of v5/v6 jobs against the whole-job path it replaced.

The whole-job path (decode the JSON, pin ``who``, make fields safe, ``json.dumps``) is
kept as ``transcode(..., stream_json=False)``: it is the reference. Jobs are cut into
tiny chunks so that escapes, UTF-8 characters and surrogate pairs fall across chunk
boundaries.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tracemalloc

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_jobfile import BASE_JSON, jobs, netstrings, texts

from tryssh.core.jobdir import Jobdir
from tryssh.core.jobfile import EncodedJob, encode_job, parse_job, read_job_head, transcode
from tryssh.core.jobsplice import MemoryOutput, _safe_cut
from tryssh.core.records import job_fields
from tryssh.errors import BadJob
from tryssh.server.tryserver import JobWriter

chunks = st.sampled_from([1, 2, 3, 5, 7, 13, 64, 1 << 20])


def whole(data: bytes, **kwargs: object) -> bytes:
    out: list[bytes] = []
    transcode(io.BytesIO(data), emit=out.append, stream_json=False, **kwargs)
    return b"".join(out)


def spliced(data: bytes, chunk: int = 1 << 20, **kwargs: object) -> bytes:
    out = MemoryOutput()
    transcode(io.BytesIO(data), emit=out, chunk=chunk, **kwargs)
    return bytes(out.data)


def outcome(fn, *args, **kwargs) -> bytes | str:
    try:
        return fn(*args, **kwargs)
    except BadJob as err:
        return f"BadJob: {err.message}"


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(jobs(), st.none() | texts, chunks)
def test_splice_equals_whole_path_on_jobs_createjobfile_writes(job, who, chunk):
    data = encode_job(job)
    assert spliced(data, chunk, pin_who=who) == whole(data, pin_who=who)


# Spellings of the same JSON that createJobfile never writes.
def respell(obj: dict, draw: st.DrawFn) -> str:
    keys = list(obj)
    if draw(st.booleans()):
        keys = draw(st.permutations(keys))
    ws = draw(st.sampled_from(["", " ", "\n\t ", "\r\n"]))
    ascii_only = draw(st.booleans())
    parts = []
    for key in keys:
        value = json.dumps(obj[key], ensure_ascii=ascii_only)
        if draw(st.booleans()):
            value = value.replace("/", "\\/")
        parts.append(f"{ws}{json.dumps(key, ensure_ascii=ascii_only)}{ws}:{ws}{value}{ws}")
    return ws + "{" + ",".join(parts) + "}" + ws


@st.composite
def odd_json_jobs(draw: st.DrawFn) -> bytes:
    obj = dict(BASE_JSON)
    obj["patch_body"] = draw(st.text(max_size=60))
    if draw(st.booleans()):
        del obj["who"]
    obj["repository"] = draw(st.none() | texts)
    obj["comment"] = draw(st.text(max_size=10))
    text = respell(obj, draw)
    if draw(st.booleans()):  # a lone or paired surrogate written as escapes
        escape = draw(st.sampled_from(["\\ud83d", "\\ude00", "\\ud83d\\ude00", "\\uD83D\\uDE00"]))
        text = text.replace('"patch_body":', '"patch_body":', 1)
        at = text.find('"', text.find('"patch_body"') + len('"patch_body"')) + 1
        text = text[:at] + escape + text[at:]
    return netstrings("5", text.encode())


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(odd_json_jobs(), st.none() | texts, chunks)
def test_splice_accepts_what_the_whole_path_accepts_and_means_the_same(data, who, chunk):
    got = outcome(spliced, data, chunk, pin_who=who)
    want = outcome(whole, data, pin_who=who)
    assert isinstance(got, str) == isinstance(want, str), (got, want)
    if isinstance(got, bytes):
        assert parse_job(got) == parse_job(want)


@st.composite
def base64_texts(draw: st.DrawFn) -> str:
    import base64

    text = base64.b64encode(draw(st.binary(max_size=40))).decode()
    if draw(st.booleans()):
        junk = draw(st.text(alphabet="=\n !*-_é", max_size=3))
        at = draw(st.integers(0, len(text)))
        text = text[:at] + junk + text[at:]
    return text


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(base64_texts(), chunks)
def test_v6_splice_is_at_least_as_strict_as_the_whole_path(text, chunk):
    obj = {k: v for k, v in BASE_JSON.items() if k != "patch_body"}
    data = netstrings("6", json.dumps({**obj, "patch_body_base64": text}))
    got = outcome(spliced, data, chunk, pin_who="alice")
    if isinstance(got, bytes):
        assert got == whole(data, pin_who="alice")
        assert parse_job(got).patch_body == parse_job(data).patch_body


@pytest.mark.parametrize("chunk", range(1, 24))
def test_surrogate_pair_escapes_split_at_every_offset(chunk):
    obj = {**BASE_JSON, "patch_body": "a\\b\U0001f600\"\n😀"}
    data = netstrings("5", json.dumps(obj))
    assert spliced(data, chunk, pin_who="alice") == whole(data, pin_who="alice")
    lone = netstrings("5", json.dumps(obj).replace("\\ud83d\\ude00", "\\ud83d", 1))
    with pytest.raises(BadJob, match="lone surrogate"):
        spliced(lone, chunk)


def test_safe_cut_never_splits_an_escape_a_character_or_a_pair():
    assert _safe_cut(b'abc\\"') == 3  # cautious: a complete escape may wait too
    assert _safe_cut(b"abc\\") == 3
    assert _safe_cut(b"abc\\\\") == 5
    assert _safe_cut(b"abc\\\\\\") == 5
    assert _safe_cut(b"ab\\u00") == 2
    assert _safe_cut(b"ab\\ud83d") == 2  # a high surrogate waits for its pair
    assert _safe_cut(b"ab\\\\ud83d") == 9  # an escaped backslash, then text
    assert _safe_cut("ab€".encode()) == 2
    assert _safe_cut(b"\\" * 100_001) == 100_000  # a long run: no quadratic carry


def test_who_after_the_patch_and_missing_who():
    after = '{"jobid": "i", "branch": "b", "baserev": "r", "patch_level": 1, ' \
            '"builderNames": ["b1"], "patch_body": "x\\ny", "who": "mallory"}'  # fmt: skip
    data = netstrings("5", after)
    assert spliced(data, 3, pin_who="alice") == whole(data, pin_who="alice")
    assert parse_job(spliced(data, pin_who="alice")).who == "alice"
    missing = netstrings("5", after.replace(', "who": "mallory"', ""))
    out = spliced(missing, 3, pin_who="al")
    assert out == whole(missing, pin_who="al")
    assert out.endswith(b'"x\\ny", "who": "al"},')


def test_null_repository_and_project_are_delivered_as_empty():
    data = netstrings("5", json.dumps({**BASE_JSON, "repository": None, "project": None}))
    out = spliced(data)
    assert b'"repository": ""' in out and b'"project": ""' in out
    assert parse_job(out).repository == "" and parse_job(out).project == ""
    assert out == whole(data)


def head_changing_job(pad: int, who_after: str) -> bytes:
    obj = {k: v for k, v in BASE_JSON.items() if k != "who"}
    obj["patch_body"] = "p" * pad
    return netstrings("5", json.dumps(obj)[:-1] + f', "who": "{who_after}"}}')


@pytest.mark.parametrize("who", ["a" * 30, ""])
def test_job_writer_moves_the_patch_when_the_length_changes_width(tmp_path, who):
    # Tune the patch so that the JSON is 99,999 or 100,000+ bytes: with "who" after the
    # patch, its pinned value changes the length's number of digits, so the head is
    # rewritten and the patch moved (right when it grows, left when it shrinks).
    base = len(json.dumps({**{k: v for k, v in BASE_JSON.items() if k != "who"},
                           "patch_body": ""})[:-1] + f', "who": "{who}"}}')  # fmt: skip
    pad = (99_999 if who else 100_000) - base
    data = head_changing_job(pad, who)
    assert data.startswith(b"1:5,99999:" if who else b"1:5,100000:")
    jobdir = Jobdir(str(tmp_path / "jd")).create()
    pinned = "bob" if who else "b" * 40

    def write(fd: int) -> tuple[int, str]:
        writer = JobWriter(fd)
        transcode(io.BytesIO(data), emit=writer, pin_who=pinned, chunk=4096)
        return writer.size, writer.hexdigest()

    name, (size, sha) = jobdir.deliver(write)
    delivered = (tmp_path / "jd" / "new" / name).read_bytes()
    assert delivered == whole(data, pin_who=pinned)
    assert size == len(delivered)
    assert sha == hashlib.sha256(delivered).hexdigest()


def test_splice_does_not_hold_the_patch():
    patch = ("+" + "x" * 60 + ' "q" \\ \t\n') * 480_000  # about 34 MiB of JSON
    data = encode_job(
        parse_job(netstrings("5", json.dumps({**BASE_JSON, "patch_body": patch})))
    )
    sink = hashlib.sha256()

    class Sink:
        def write(self, chunk: bytes) -> None:
            sink.update(chunk)

        def rewrite_head(self, old: int, head: bytes) -> None:
            raise AssertionError("a canonical job's head is right the first time")

    stream = io.BytesIO(data)
    tracemalloc.start()
    try:
        transcode(stream, emit=Sink(), pin_who="alice")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(data) > 32 << 20
    assert peak < 16 << 20  # a few chunks, not the job
    assert sink.hexdigest() == hashlib.sha256(whole(data, pin_who="alice")).hexdigest()


def test_large_random_binary_v6_round_trip():
    patch = os.urandom(3 << 20)
    data = encode_job(parse_job(netstrings("5", json.dumps(BASE_JSON))))
    job = parse_job(data)
    job.patch_body = patch
    data = encode_job(job)
    assert data.startswith(b"1:6,")
    out = spliced(data, pin_who="alice")
    assert out == whole(data, pin_who="alice")
    assert parse_job(out).patch_body == patch


# -- read_job_head: what `status` reads of a job not yet recorded ------------------------------


def sparse_job(path, head: bytes, patch_size: int, tail: bytes) -> None:
    """A job file whose patch is a hole of NUL bytes: reading them would fail the job."""
    with open(path, "wb") as f:
        f.write(head)
        f.seek(patch_size, os.SEEK_CUR)
        f.write(tail)


def test_read_job_head_skips_a_v1_to_v4_patch(tmp_path):
    size = 64 << 20
    head = netstrings("4", "id", "main", "abc", "1") + b"%d:" % size
    sparse_job(tmp_path / "j", head, size, b"," + netstrings("repo", "proj", "alice", "c", "b1"))
    fields = job_fields(read_job_head(str(tmp_path / "j")))
    assert fields == {"jobid": "id", "who": "alice", "branch": "main", "baserev": "abc",
                      "project": "proj", "repository": "repo", "comment": "c"}  # fmt: skip
    with open(tmp_path / "j", "r+b") as f:
        f.truncate(len(head) + 100)
    with pytest.raises(BadJob, match="ends"):
        read_job_head(str(tmp_path / "j"))


def test_read_job_head_stops_at_a_v5_patch_once_who_is_known(tmp_path):
    size = 64 << 20
    prefix = json.dumps({**BASE_JSON, "who": "alice", "patch_body": ""})[:-2]
    json_len = len(prefix) + size + 2
    head = netstrings("5") + b"%d:" % json_len + prefix.encode()
    sparse_job(tmp_path / "j", head, size, b'"},')
    assert read_job_head(str(tmp_path / "j")).who == "alice"
    # A valid job with who after the patch is streamed through, and still answered.
    data = netstrings("5", json.dumps({"jobid": "i", "branch": "", "baserev": "r",
                                       "patch_level": 1, "builderNames": None,
                                       "patch_body": "x\n" * 1000, "who": "bob"}))  # fmt: skip
    (tmp_path / "k").write_bytes(data)
    # Missing fields read as Buildbot reads them: "" for repository, project, comment.
    assert job_fields(read_job_head(str(tmp_path / "k"))) == {
        "jobid": "i", "who": "bob", "branch": None, "baserev": "r", "project": "", "repository": "",
        "comment": "",
    }  # fmt: skip


# -- EncodedJob: the client's job, encoded as it is sent ----------------------------------------

ascii_patches = st.binary(max_size=300).map(lambda b: bytes(c & 0x7F for c in b))
# Printable ASCII and the bytes json writes as two-character escapes: the replace-only path.
plain_patches = st.text(st.sampled_from('ab "\\/\n\r\t\b\f~+-'), max_size=300).map(str.encode)


@settings(max_examples=150)
@given(jobs(), st.none() | ascii_patches | plain_patches | st.binary(max_size=300),
       st.integers(1, 9))
def test_encoded_job_equals_encode_job(job, patch, step):
    import tryssh.core.jobfile as jobfile

    job.patch_body = patch
    old = jobfile.ENCODE_CHUNK
    jobfile.ENCODE_CHUNK = step * 3  # many chunks, split anywhere
    try:
        encoded = EncodedJob(job)
        chunks = list(encoded.chunks())
    finally:
        jobfile.ENCODE_CHUNK = old
    assert b"".join(chunks) == encode_job(job)
    assert encoded.size == len(encode_job(job))
    assert bytes(encoded) == encode_job(job)


def test_job_writer_thread_for_big_jobs_rewrite_and_abort(tmp_path):
    # Past SMALL_JOB the writer hashes and writes in a thread: the head rewrite waits for
    # it, and a bad job stops it before the tmp file is closed and removed.
    data = head_changing_job(3 << 20, "mallory")
    jobdir = Jobdir(str(tmp_path / "jd")).create()

    def write(fd: int) -> tuple[int, str]:
        writer = JobWriter(fd)
        try:
            transcode(io.BytesIO(data), emit=writer, pin_who="a" * 300, chunk=65536)
        except BaseException:
            writer.abort()
            raise
        assert writer.rewritten
        return writer.size, writer.hexdigest()

    name, (size, sha) = jobdir.deliver(write)
    delivered = (tmp_path / "jd" / "new" / name).read_bytes()
    assert delivered == whole(data, pin_who="a" * 300)
    assert sha == hashlib.sha256(delivered).hexdigest() and size == len(delivered)
    at = data.rindex(b'", "who"') - 2
    bad = data[:at] + b"\\q" + data[at + 2 :]  # an invalid escape at the patch's end
    with pytest.raises(BadJob, match="Invalid"):
        jobdir.deliver(write_bad(bad))
    assert os.listdir(tmp_path / "jd" / "tmp") == []


def write_bad(data: bytes):
    def write(fd: int) -> None:
        writer = JobWriter(fd)
        try:
            transcode(io.BytesIO(data), emit=writer, pin_who="x", chunk=65536)
        except BaseException:
            writer.abort()
            raise

    return write


string_bytes = st.lists(
    st.sampled_from([b"a", b"\\", b'"', b"n", b"u", b"x", b"0", b"\x01", b"\t", b"\x7f",
                     b"\xc3\xa9", b"\\n", b'\\"', b"\\\\", b"\\u0041", b"\\ud83d"]),
    max_size=24,
).map(b"".join)  # fmt: skip


@settings(max_examples=1000)
@given(string_bytes)
def test_the_fast_check_of_string_content_accepts_only_what_json_accepts(piece):
    from json.decoder import scanstring

    from tryssh.core.jobsplice import _plain_ascii_content

    if _plain_ascii_content(piece):
        # json's own scanner takes all of it as the inside of one string
        _value, end = scanstring(piece.decode("ascii") + '"', 0, True)
        assert end == len(piece) + 1


def test_the_fast_check_takes_what_createjobfile_writes_for_a_plain_diff():
    from tryssh.core.jobsplice import _plain_ascii_content

    line = "+\tint a_b = 1; /* a/b */ char *s = \"\\\\n\";\n"
    lines = "--- a/x.c\n+++ b/x.c\n@@ -1 +1 @@\n" + line * 5
    body = json.dumps(lines + '+\tputs("é\\n");\n')[1:-1].encode()
    assert _plain_ascii_content(body)
    assert not _plain_ascii_content(body + b'"')  # the string's end: json's scanner finds it
