"""Job files v1-v6: reading, checking, writing, and the streaming transcoder."""

from __future__ import annotations

import io
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tryssh.core.jobfile import (
    Job,
    bytes_repr_revision,
    encode_job,
    normalise_for_buildbot,
    parse_job,
    parse_job_file,
    transcode,
)
from tryssh.core.netstring import encode as ns
from tryssh.errors import BadJob

DIFF = "this is my diff, -- ++, etc."


def netstrings(*fields: str | bytes) -> bytes:
    """A job file made of netstrings (str fields are UTF-8 encoded)."""
    return b"".join(ns(f.encode() if isinstance(f, str) else f) for f in fields)


def v5(obj: object, version: str = "5") -> bytes:
    return netstrings(version, json.dumps(obj))


def passthrough(data: bytes, **kwargs: object) -> tuple[Job, bytes]:
    """transcode *data* as tryserver does; the job and the bytes it emitted."""
    out: list[bytes] = []
    job = transcode(io.BytesIO(data), emit=out.append, **kwargs)
    return job, b"".join(out)


BASE_JSON = {
    "jobid": "extid",
    "branch": "trunk",
    "baserev": "1234",
    "patch_level": 1,
    "repository": "repo",
    "project": "proj",
    "who": "who",
    "comment": "comment",
    "builderNames": ["buildera", "builderc"],
    "properties": {"foo": "bar"},
    "patch_body": DIFF,
}


# -- hypothesis strategies (also used by test_interop_buildbot) ---------------------------------

# Every text a job can carry: no NUL (refused at the door; hypothesis already leaves lone
# surrogates out of st.text()).
_chars = st.characters(codec="utf-8", exclude_characters="\0")
texts = st.text(_chars, max_size=30)
nonempty = st.text(_chars, min_size=1, max_size=30)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | texts,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
    max_leaves=8,
)
properties = st.dictionaries(texts, json_values, max_size=4)
patches = st.none() | st.binary(max_size=200) | st.text(max_size=200).map(str.encode)


@st.composite
def jobs(draw: st.DrawFn, optional_none: bool = True) -> Job:
    """A Job as Buildbot's client could send it (version set as createJobfile chooses)."""
    maybe = (lambda s: st.none() | s) if optional_none else (lambda s: s)
    patch = draw(patches)
    try:
        version = 5 if patch is None or patch.decode("utf-8") is not None else 6
    except UnicodeDecodeError:
        version = 6
    return Job(
        jobid=draw(texts),
        branch=draw(maybe(nonempty)),
        baserev=draw(nonempty if not optional_none else st.none() | nonempty),
        patch_level=draw(st.integers(0, 10**6)),
        patch_body=patch,
        builder_names=draw(maybe(st.lists(texts, max_size=4))),
        repository=draw(maybe(texts)),
        project=draw(maybe(texts)),
        who=draw(maybe(texts)),
        comment=draw(maybe(texts)),
        properties=draw(properties),
        version=version,
    )


@st.composite
def netstring_jobs(draw: st.DrawFn) -> tuple[bytes, Job]:
    """A canonical v1-v4 job file and the Job that Buildbot reads from it."""
    version = draw(st.integers(1, 4))
    fields = {
        "jobid": draw(texts),
        "branch": draw(texts),
        "baserev": draw(texts),
        "patch_level": draw(st.integers(0, 10**6)),
        "patch_body": draw(st.text(max_size=200)).encode(),
    }
    extra = ["repository", "project", "who", "comment"][: {1: 0, 2: 2, 3: 3, 4: 4}[version]]
    for name in extra:
        fields[name] = draw(texts)
    builders = draw(st.lists(texts, max_size=4))
    data = netstrings(
        str(version),
        fields["jobid"],
        fields["branch"],
        fields["baserev"],
        str(fields["patch_level"]),
        fields["patch_body"],
        *(fields[n] for n in extra),
        *builders,
    )
    job = Job(
        jobid=fields["jobid"],
        branch=fields["branch"] or None,
        baserev=fields["baserev"] or None,
        patch_level=fields["patch_level"],
        patch_body=fields["patch_body"],
        builder_names=builders,
        repository=fields.get("repository", ""),
        project=fields.get("project", ""),
        who=fields.get("who", ""),
        comment=fields.get("comment", ""),
        version=version,
    )
    return data, job


# -- the Job class ----------------------------------------------------------------------------


def test_job_equality_and_repr():
    a = Job("id", "b", "r", 1, b"p", ["x"])
    b = Job("id", "b", "r", 1, b"p", ["x"])
    assert a == b
    assert a != Job("id", "b", "r", 1, b"p", ["x"], who="w")
    assert a != Job("id", "b", "r", 1, b"p", ["x"], version=6)
    assert a.__eq__("id") is NotImplemented
    assert "patch_body=b'p'" in repr(a)
    assert a.properties == {} and a.extra == {}


def test_as_buildbot_dict():
    job = Job("id", None, "r", 2, b"p", None, who="w", properties={"a": 1}, extra={"x": 2})
    assert job.as_buildbot_dict() == {
        "jobid": "id",
        "branch": None,
        "baserev": "r",
        "patch_level": 2,
        "patch_body": b"p",
        "builderNames": None,
        "repository": "",
        "project": "",
        "who": "w",
        "comment": "",
        "properties": {"a": 1},
        "x": 2,
    }


# -- writing ----------------------------------------------------------------------------------


def test_encode_job_v5_layout():
    job = Job("extid", "trunk", "1234", 1, DIFF.encode(), ["b1"], "repo", "proj", "who", "c",
              {"foo": "bar"})  # fmt: skip
    body = (
        '{"jobid": "extid", "branch": "trunk", "baserev": "1234", "patch_level": 1, '
        '"repository": "repo", "project": "proj", "who": "who", "comment": "c", '
        '"builderNames": ["b1"], "properties": {"foo": "bar"}, '
        '"patch_body": "this is my diff, -- ++, etc."}'
    )
    assert encode_job(job) == b"1:5," + b"%d:%s," % (len(body), body.encode())


def test_encode_job_v6_for_binary_patch():
    job = Job("id", "", "", 0, b"\xff\x00diff", None, None, "", None, "", {})
    data = encode_job(job)
    assert data.startswith(b"1:6,")
    obj = json.loads(data[data.index(b":", 4) + 1 : -1])
    assert "patch_body" not in obj
    assert obj["patch_body_base64"] == "/wBkaWZm"
    assert list(obj)[-1] == "patch_body_base64"


def test_encode_job_is_ascii_and_null_patch_is_v5():
    job = Job("é", "brañch", "r", 1, None, ["ü"], who="名前")
    data = encode_job(job)
    assert data.isascii()
    assert data.startswith(b"1:5,")
    assert json.loads(data[4:].split(b":", 1)[1][:-1])["patch_body"] is None
    assert parse_job(data) == job


# -- reading: the upstream examples (Buildbot's test_trysched vectors) ------------------------


def expected(**overrides: object) -> dict[str, object]:
    result: dict[str, object] = {
        "baserev": "1234",
        "branch": "trunk",
        "builderNames": ["buildera", "builderc"],
        "jobid": "extid",
        "patch_body": DIFF.encode(),
        "patch_level": 1,
        "project": "",
        "who": "",
        "comment": "",
        "repository": "",
        "properties": {},
    }
    result.update(overrides)
    return result


V1 = netstrings("1", "extid", "trunk", "1234", "1", DIFF, "buildera", "builderc")
V2 = netstrings("2", "extid", "trunk", "1234", "1", DIFF, "repo", "proj", "buildera", "builderc")
V3 = netstrings(
    "3", "extid", "trunk", "1234", "1", DIFF, "repo", "proj", "who", "buildera", "builderc"
)
V4 = netstrings(
    "4", "extid", "trunk", "1234", "1", DIFF, "repo", "proj", "who", "comment", "buildera",
    "builderc",
)  # fmt: skip
V5 = v5(BASE_JSON)
V6 = v5({**{k: v for k, v in BASE_JSON.items() if k != "patch_body"},
         "patch_body_base64": "dGhpcyBpcyBteSBkaWZmLCAtLSArKywgZXRjLg=="}, "6")  # fmt: skip

UPSTREAM = [
    pytest.param(V1, expected(), id="v1"),
    pytest.param(V2, expected(repository="repo", project="proj"), id="v2"),
    pytest.param(V3, expected(repository="repo", project="proj", who="who"), id="v3"),
    pytest.param(
        V4, expected(repository="repo", project="proj", who="who", comment="comment"), id="v4"
    ),
    pytest.param(
        V5,
        expected(
            repository="repo",
            project="proj",
            who="who",
            comment="comment",
            properties={"foo": "bar"},
        ),
        id="v5",
    ),
    pytest.param(
        V6,
        expected(
            repository="repo",
            project="proj",
            who="who",
            comment="comment",
            properties={"foo": "bar"},
        ),
        id="v6",
    ),
    pytest.param(
        netstrings("1", "extid", "", "", "1", DIFF, "buildera", "builderc"),
        expected(branch=None, baserev=None),
        id="v1-empty-branch-rev",
    ),
    pytest.param(
        netstrings("3", "extid", "trunk", "1234", "1", DIFF, "repo", "proj", "who"),
        expected(repository="repo", project="proj", who="who", builderNames=[]),
        id="v3-no-builders",
    ),
    pytest.param(
        v5({**BASE_JSON, "patch_level": "1", "builderNames": []}),
        expected(
            repository="repo",
            project="proj",
            who="who",
            comment="comment",
            properties={"foo": "bar"},
            builderNames=[],
        ),
        id="v5-string-level-no-builders",
    ),
]


@pytest.mark.parametrize(("data", "want"), UPSTREAM)
def test_upstream_examples(data, want):
    job = parse_job(data)
    assert job.as_buildbot_dict() == want
    assert job.version == int(data[2:3])


def test_v1_defaults_and_v4_fields_as_job():
    assert parse_job(V1) == Job("extid", "trunk", "1234", 1, DIFF.encode(),
                                ["buildera", "builderc"], version=1)  # fmt: skip
    job = parse_job(V4)
    assert (job.repository, job.project, job.who, job.comment) == ("repo", "proj", "who", "comment")


@pytest.mark.parametrize(
    ("field", "value", "want"),
    [
        ("patch_level", " 2 ", 2),  # int() as Buildbot does
        ("patch_level", "0", 0),
        ("patch_level", "+3", 3),
    ],
)
def test_v1_patch_level_as_int(field, value, want):
    data = netstrings("1", "id", "b", "r", value, "p")
    assert parse_job(data).patch_level == want


@pytest.mark.parametrize(
    ("obj_update", "attr", "want"),
    [
        ({"patch_level": 1.9}, "patch_level", 1),
        ({"patch_level": True}, "patch_level", 1),
        ({"patch_level": " 4 "}, "patch_level", 4),
        ({"who": None}, "who", None),  # null stays None; only a missing key gets ''
        ({"comment": None}, "comment", None),
        ({"repository": None}, "repository", None),
        ({"branch": ""}, "branch", None),
        ({"baserev": None}, "baserev", None),
        ({"builderNames": None}, "builder_names", None),
        ({"patch_body": None}, "patch_body", None),
        ({"patch_body": "é\n"}, "patch_body", "é\n".encode()),
    ],
)
def test_v5_values(obj_update, attr, want):
    assert getattr(parse_job(v5({**BASE_JSON, **obj_update})), attr) == want


def test_v5_missing_optional_keys_get_defaults():
    obj = {k: BASE_JSON[k] for k in ("jobid", "branch", "baserev", "patch_level", "builderNames",
                                     "patch_body")}  # fmt: skip
    job = parse_job(v5(obj))
    assert (job.repository, job.project, job.who, job.comment, job.properties) == (
        "", "", "", "", {}
    )  # fmt: skip


def test_v5_unknown_keys_are_kept_and_extra_netstrings_ignored():
    data = v5({**BASE_JSON, "future": [1, 2], "patch_body_base64": "eA=="}) + ns(b"trailing")
    job = parse_job(data)
    assert job.extra == {"future": [1, 2], "patch_body_base64": "eA=="}
    assert job.patch_body == DIFF.encode()


def test_netstrings_after_the_json_are_capped():
    assert parse_job(V5 + ns(b"x") * 1000).jobid == "extid"
    with pytest.raises(BadJob, match="more than 1000 netstrings after the JSON"):
        parse_job(V5 + ns(b"x") * 1001)


def test_v6_patch_body_key_is_overwritten():
    obj = {**BASE_JSON, "patch_body": "ignored", "patch_body_base64": "/w=="}
    job = parse_job(v5(obj, "6"))
    assert job.patch_body == b"\xff"
    assert "patch_body" not in job.extra and "patch_body_base64" not in job.extra


def test_truncated_tail_is_dropped_by_parse_job_only():
    data = V1 + b"8:builderd"
    assert parse_job(data).builder_names == ["buildera", "builderc"]
    with pytest.raises(BadJob, match="ends"):
        parse_job(data, allow_truncated_tail=False)


def test_no_size_ceiling():
    patch = b"+line\n" * 50_000  # 300 KB, three times twisted's MAX_LENGTH
    job = Job("id", "b", "r", 1, patch, ["b1"])
    assert parse_job(encode_job(job)).patch_body == patch
    data = netstrings("2", "id", "b", "r", "1", patch, "repo", "proj")
    assert parse_job(data).patch_body == patch


# -- reading: malformed files -------------------------------------------------------------------


BAD = [
    # (data, what the one-line message must mention)
    (b"", "could not find any complete netstrings"),
    (b"this is not a netstring", "expected a length"),
    (b"1:9,", "unknown job version 9"),
    (b"1:7,", "unknown job version 7"),
    (b"1:0,", "unknown job version 0"),  # Buildbot reads it with the v4 keys
    (b"2:05,", "unknown job version '05'"),  # Buildbot: IndexError
    (b"2:10,", "unknown job version 10"),  # Buildbot: IndexError
    (b"2:01," + V1[4:], "unknown job version '01'"),
    (b"0:,", "unknown job version ''"),  # Buildbot: ValueError
    (b"3:3.5,", "unknown job version '3.5'"),  # Buildbot: ValueError
    (b"4:five,", "unknown job version 'five'"),
    (b"9:123456789,", "too long"),
    (netstrings("1", "id", "b", "r"), "ends before the patch_level"),  # Buildbot: IndexError
    (netstrings("1", "id", "b", "r", "1"), "ends before the patch_body"),
    (netstrings("2", "id", "b", "r", "1", "p", "repo"), "ends before the project"),
    (netstrings("4", "id", "b", "r", "1", "p", "repo", "proj", "who"), "ends before the comment"),
    (netstrings("1", "id", "b", "r", "one", "p"), "patch_level 'one' is not a number"),
    (netstrings("1", "id", "b", "r", "", "p"), "patch_level '' is not a number"),
    (netstrings("1", b"\xff", "b", "r", "1", "p"), "jobid field is not valid UTF-8"),
    (netstrings("2", "id", "b", "r", "1", "p", b"\xc3", "x"), "repository field is not valid"),
    (netstrings("1", "id", "b", "r", "1", b"p\xff"), "patch is not valid UTF-8"),
    (netstrings("1", "id", "b", "r", "1", b"\xe2\x82"), "patch is not valid UTF-8"),  # cut char
    (netstrings("1", "id", "b", "r", "1", "p", b"\xff"), "builder name 1 is not valid UTF-8"),
    (V1[: V1.index(b"my diff")], "input ends inside netstring 6"),  # cut in the patch
    (b"1:5,10:{}", "input ends"),  # a truncated JSON netstring
    (netstrings("5"), "has no JSON netstring"),  # Buildbot: IndexError
    (netstrings("5", "{not json"), "unable to parse JSON"),
    (netstrings("5", '{"comment": "com}'), "unable to parse JSON"),
    (netstrings("5", b'{"jobid": "\xff"}'), "JSON is not valid UTF-8"),
    (netstrings("5", "[]"), "must be an object, not list"),  # Buildbot: TypeError
    (netstrings("5", "[" * 100_000 + "]" * 100_000), "unable to parse JSON"),  # RecursionError
    (netstrings("5", '"text"'), "must be an object, not str"),
    (netstrings("5", "null"), "must be an object, not NoneType"),
    (v5({k: v for k, v in BASE_JSON.items() if k != "patch_body"}), "no 'patch_body' key"),
    (v5({k: v for k, v in BASE_JSON.items() if k != "branch"}), "no 'branch' key"),
    (v5({k: v for k, v in BASE_JSON.items() if k != "baserev"}), "no 'baserev' key"),
    (v5({k: v for k, v in BASE_JSON.items() if k != "patch_level"}), "no 'patch_level' key"),
    (v5({k: v for k, v in BASE_JSON.items() if k != "jobid"}), "no 'jobid' key"),
    (v5({k: v for k, v in BASE_JSON.items() if k != "builderNames"}), "no 'builderNames' key"),
    (v5(BASE_JSON, "6"), "no 'patch_body_base64' key"),  # Buildbot: KeyError
    (v5({**BASE_JSON, "patch_level": None}), "patch_level must be a number"),  # TypeError
    (v5({**BASE_JSON, "patch_level": [1]}), "patch_level must be a number"),
    (v5({**BASE_JSON, "patch_level": "x"}), "patch_level 'x' is not a number"),
    (v5({**BASE_JSON, "patch_level": 1e400}), "is not a number"),  # inf: OverflowError
    (v5({**BASE_JSON, "jobid": 7}), "jobid must be a string"),
    (v5({**BASE_JSON, "branch": 7}), "branch must be a string or null"),
    (v5({**BASE_JSON, "who": ["x"]}), "who must be a string or null"),
    (v5({**BASE_JSON, "builderNames": "b1"}), "builderNames must be a list"),
    (v5({**BASE_JSON, "builderNames": [1]}), "builderNames must be a list"),
    (v5({**BASE_JSON, "properties": []}), "properties must be an object"),
    (v5({**BASE_JSON, "patch_body": 5}), "patch_body must be a string or null"),
    (netstrings("5", json.dumps(BASE_JSON).replace('"this', '"\\ud800this')), "lone surrogate"),
    (v5({**BASE_JSON, "patch_body_base64": "not base64!"}, "6"), "not valid base64"),
    (v5({**BASE_JSON, "patch_body_base64": "é"}, "6"), "not valid base64"),
    (v5({**BASE_JSON, "patch_body_base64": 12}, "6"), "patch_body_base64 must be a string"),
]


@pytest.mark.parametrize(("data", "message"), BAD)
def test_bad_jobs(data, message):
    with pytest.raises(BadJob) as info:
        parse_job(data)
    assert message in info.value.message
    assert "\n" not in info.value.message
    assert info.value.exit_code == 65
    # The server's reader refuses them too.
    with pytest.raises(BadJob):
        passthrough(data, pin_who="alice")


def test_huge_fields_are_refused():
    big = "x" * ((1 << 20) + 1)
    with pytest.raises(BadJob, match="jobid field is larger"):
        parse_job(netstrings("1", big, "b", "r", "1", "p"))
    with pytest.raises(BadJob, match="builder names are larger than 1048576 bytes together"):
        parse_job(netstrings("1", "id", "b", "r", "1", "p", "b1", big))


def test_builder_names_are_capped_together():
    """Kept in memory, so capped in number and in total size: memory stays flat."""
    head = netstrings("2", "id", "b", "r", "1", "p", "", "")
    assert len(parse_job(head + ns(b"ab") * 10_000).builder_names) == 10_000
    with pytest.raises(BadJob, match="more than 10000 builders"):
        parse_job(head + ns(b"ab") * 10_001)
    names = [b"n" * 1000] * 1048
    assert len(parse_job(head + b"".join(ns(n) for n in names)).builder_names) == 1048
    with pytest.raises(BadJob, match="larger than 1048576 bytes together"):
        parse_job(head + b"".join(ns(n) for n in names) + ns(b"n" * 577))


# -- the transcoder (tryserver's reader) -------------------------------------------------------


@pytest.mark.parametrize("data", [V1, V2, V3, V4, V5, V6])
def test_passthrough_without_pin_is_identity(data):
    job, out = passthrough(data)
    assert out == data
    assert parse_job(out) == parse_job(data)
    assert job.version == parse_job(data).version


@pytest.mark.parametrize(
    ("data", "version_out"), [(V1, 3), (V2, 3), (V3, 3), (V4, 4), (V5, 5), (V6, 6)]
)
def test_pin_who(data, version_out):
    job, out = passthrough(data, pin_who="alice")
    assert job.who == "alice"
    got = parse_job(out)
    assert got.who == "alice"
    assert got.version == version_out
    original = parse_job(data)
    original.who = "alice"
    original.version = version_out
    assert got == original


def test_pin_v1_gives_a_v3_file():
    _, out = passthrough(V1, pin_who="alice")
    assert out == netstrings(
        "3", "extid", "trunk", "1234", "1", DIFF, "", "", "alice", "buildera", "builderc"
    )


def test_pin_replaces_any_spelling_of_who_in_json():
    # json decodes escapes in key names, and the last duplicate wins: the pin must too.
    raw = json.dumps(BASE_JSON)[:-1] + ', "\\u0077ho": "mallory"}'
    job, out = passthrough(netstrings("5", raw), pin_who="alice")
    assert job.who == "alice"
    assert b"mallory" not in out
    assert parse_job(out).who == "alice"


def test_passthrough_refuses_truncated_tail_and_drops_trailing_netstrings():
    with pytest.raises(BadJob, match="ends"):
        passthrough(V1 + b"8:builderd")
    with pytest.raises(BadJob, match="ends"):
        passthrough(V5 + b"3:ab")
    _, out = passthrough(V5 + ns(b"extra"))
    assert out == V5


def test_keep_patch():
    job = transcode(io.BytesIO(V2))
    assert job.patch_body is None  # not held in memory unless asked
    assert transcode(io.BytesIO(V2), keep_patch=True).patch_body == DIFF.encode()
    assert transcode(io.BytesIO(V5)).patch_body == DIFF.encode()  # JSON: it is there anyway


def test_limit():
    assert transcode(io.BytesIO(V5), limit=len(V5)).jobid == "extid"
    with pytest.raises(BadJob, match=f"larger than the limit of {len(V5) - 1} bytes"):
        transcode(io.BytesIO(V5), limit=len(V5) - 1)
    with pytest.raises(BadJob, match="limit"):
        transcode(io.BytesIO(V2), limit=len(V2) - 1)


def test_multibyte_utf8_split_across_chunks():
    patch = ("ü€😀" * 400_000).encode()  # > 1 MiB: the reader's chunks split characters
    data = netstrings("2", "id", "b", "r", "1", patch, "", "")
    job, out = passthrough(data, keep_patch=True)
    assert out == data
    assert job.patch_body == patch
    with pytest.raises(BadJob, match="not valid UTF-8"):
        passthrough(netstrings("2", "id", "b", "r", "1", patch[:-1], "", ""))


def test_parse_job_file(tmp_path):
    path = tmp_path / "job"
    path.write_bytes(V4)
    assert parse_job_file(str(path)).comment == "comment"
    with pytest.raises(BadJob, match="limit"):
        parse_job_file(str(path), limit=10)


# -- properties -------------------------------------------------------------------------------


@given(jobs())
def test_encode_parse_round_trip(job):
    data = encode_job(job)
    assert data.isascii()
    got = parse_job(data)
    # Buildbot's reader turns '' into None for branch and baserev; the strategy has no ''.
    assert got == job
    # Canonical: passed through byte for byte, but for what breaks Buildbot (normalised).
    fields = {k: getattr(job, k) for k in ("repository", "project", "baserev")}
    if normalise_for_buildbot(fields, job):
        assert parse_job(passthrough(data)[1]) == job
    else:
        assert passthrough(data)[1] == data


@given(netstring_jobs())
def test_v1_to_v4_round_trip(case):
    data, job = case
    assert parse_job(data) == job
    _, out = passthrough(data)
    assert out == data


@given(netstring_jobs() | jobs().map(lambda j: (encode_job(j), j)), texts)
def test_pin_changes_only_who(case, who):
    data, job = case
    _, out = passthrough(data, pin_who=who)
    got = parse_job(out)
    job.who = who
    if job.version >= 5:  # what breaks Buildbot is normalised (v5/v6 JSON only)
        normalise_for_buildbot({k: getattr(job, k) for k in ("repository", "project",
                                                             "baserev")}, job)  # fmt: skip
    if job.version < 3:  # upgraded to carry who
        job.version = 3
    if job.repository is None:  # made safe for Buildbot's master
        job.repository = ""
    if job.project is None:
        job.project = ""
    assert got == job


@pytest.mark.parametrize("pin", [None, "alice"])
@pytest.mark.parametrize("version", ["5", "6"])
def test_null_repository_and_project_become_empty_on_the_way_through(pin, version):
    """Buildbot's master asserts 'repository cannot be None' and loses such a job."""
    obj = {**BASE_JSON, "repository": None, "project": None, "comment": None}
    if version == "6":
        obj["patch_body_base64"] = "eA=="
        del obj["patch_body"]
    job, out = passthrough(v5(obj, version), pin_who=pin)
    assert (job.repository, job.project) == ("", "")
    written = json.loads(out[out.index(b"{") : -1])
    assert (written["repository"], written["project"], written["comment"]) == ("", "", None)
    assert parse_job(out).repository == ""


def test_jobs_without_nulls_pass_through_byte_for_byte():
    data = v5({**BASE_JSON, "repository": "", "who": None})
    assert passthrough(data)[1] == data


@pytest.mark.parametrize(("baserev", "want"), [
    ("b'8210199642b1a96d2ad635abe4af300ba81a3ff2'", "8210199642b1a96d2ad635abe4af300ba81a3ff2"),
    ("b'1'", "1"), ("b''", None), ("abc", "abc"), ("b'a'b'", "b'a'b'"), ("b'x", "b'x"),
    ("b'\\x00'", "b'\\x00'"),
])  # fmt: skip
def test_buildbot_clients_bytes_repr_baserev_is_unwrapped(baserev, want):
    """buildbot try --vc=hg/svn sends str(bytes): every build of it fails to update."""
    job, out = passthrough(v5({**BASE_JSON, "baserev": baserev}))
    assert job.baserev == want and parse_job(out).baserev == want
    assert bytes_repr_revision(baserev) == (None if want == baserev else (want or ""))


@given(st.lists(st.sampled_from([b"a", b"+x y\n", b"\t", b"\r\n", b'"', b"\\", b"\x01",
                                 b"\x7f", b"~", b" ", b"\x1f", b"\\n", b"\x08", b"\x0c"]),
                        max_size=40)
       .map(b"".join))  # fmt: skip
def test_the_patch_escaper_writes_what_json_dumps_writes(chunk):
    from tryssh.core.jobfile import _escape_json

    assert _escape_json(chunk) == json.dumps(chunk.decode("ascii"))[1:-1].encode("ascii")
