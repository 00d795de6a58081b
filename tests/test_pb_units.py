"""The PB door's pure parts: turning a ``try`` call into a job, the [pb] settings, secrets."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tryssh.core.jobfile import parse_job
from tryssh.errors import ConfigError, TrysshError
from tryssh.server.config import config_from_dict
from tryssh.server.passwords import load_pb_secret, pb_secret
from tryssh.server.pb import Settings, encode_job, job_from_try

# No NUL: a job holding one could never build, so the door refuses it (tested apart).
chars = st.characters(blacklist_categories=("Cs",), blacklist_characters="\0")
text = st.text(chars, max_size=40)
text_or_bytes = st.one_of(st.none(), text, text.map(lambda t: t.encode("utf-8")))


@given(
    branch=text_or_bytes,
    revision=text_or_bytes,
    level=st.integers(0, 999),
    body=st.one_of(st.none(), st.binary(max_size=200), st.text(max_size=200)),
    builders=st.one_of(st.none(), st.lists(st.text(chars, min_size=1, max_size=20), max_size=4)),
    comment=text_or_bytes,
    properties=st.dictionaries(
        st.text(chars, max_size=10), st.one_of(st.integers(), st.text(chars))
    ),
)
def test_try_call_becomes_the_job_buildbot_reads(
    branch, revision, level, body, builders, comment, properties
) -> None:
    job = job_from_try("alice", branch, revision, (level, body), b"repo", "", builders,
                       comment, properties)  # fmt: skip
    back = parse_job(encode_job(job))

    def as_text(value: object) -> object:
        return value.decode() if isinstance(value, bytes) else value

    assert back.who == "alice"
    assert back.branch == (as_text(branch) or None)  # Buildbot's "" -> None
    assert back.baserev == (as_text(revision) or None)
    assert back.patch_level == level
    want = body.encode() if isinstance(body, str) else body
    assert back.patch_body == want
    assert back.version == (5 if want is None or _utf8(want) else 6)
    assert back.builder_names == (builders or None)
    assert back.comment == as_text(comment)
    assert back.properties == properties


def _utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"patch": (0, 1)}, "the diff must be bytes, not int"),
        ({"patch": (0,)}, "patch must be (patchlevel, diff)"),
        ({"patch": (True, b"")}, "patchlevel"),
        ({"patch": (-1, b"")}, "patchlevel"),
        ({"branch": 5}, "branch must be a string, not int"),
        ({"branch": b"\xff"}, "branch is not UTF-8"),
        ({"branch": "x" * 5000}, "branch is longer than 4096"),
        ({"builders": "pass"}, "builderNames must be a list"),
        ({"builders": [None]}, "builder name must be a string"),
        ({"properties": [1]}, "properties must be a dict"),
        ({"properties": {1: 2}}, "properties must be a dict with string keys"),
        ({"properties": {"a": {1, 2}}}, "properties must be JSON values"),
    ],
)
def test_bad_try_arguments_name_what_is_wrong(args: dict, message: str) -> None:
    call = {"branch": "main", "patch": (1, b"diff"), "builders": ["pass"], "properties": {}}
    call.update(args)
    with pytest.raises(TrysshError, match=message.replace("(", r"\(").replace(")", r"\)")):
        job_from_try("alice", call["branch"], "abc", call["patch"], "", "", call["builders"],
                     None, call["properties"])  # fmt: skip


def _config(pb: dict) -> object:
    return config_from_dict({"jobdir": "/srv/j", "pb": pb})


@pytest.mark.parametrize("listen", ["127.0.0.1:8031", "[::1]:0", "localhost:9", "127.1.2.3:1"])
def test_loopback_listen_is_accepted(listen: str) -> None:
    Settings(_config({"listen": listen}))  # type: ignore[arg-type]


@pytest.mark.parametrize("listen", ["0.0.0.0:8031", "[::]:1", "10.0.0.1:1", "example.org:1"])
def test_network_listen_needs_insecure_network(listen: str) -> None:
    with pytest.raises(ConfigError, match="not a loopback address"):
        _config({"listen": listen})
    Settings(_config({"listen": listen, "insecure_network": True}))  # type: ignore[arg-type]


def test_pb_table_keys_are_checked() -> None:
    with pytest.raises(ConfigError, match=r"pb\.port: unknown key"):
        _config({"port": 1})
    with pytest.raises(ConfigError, match=r"pb\.insecure_network: must be true or false"):
        _config({"insecure_network": "yes"})
    with pytest.raises(ConfigError, match=r"pb\.max_connections: must be greater than 0"):
        _config({"max_connections": 0})
    with pytest.raises(ConfigError, match=r"pb\.listen: expected HOST:PORT"):
        _config({"listen": "nowhere"})


def test_pb_secret_is_md5_of_the_password(tmp_path: Path) -> None:
    line = pb_secret("pässword")
    assert line == "pb-md5:" + hashlib.md5("pässword".encode()).hexdigest()
    path = tmp_path / "s"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, (line + "\n").encode())
    os.close(fd)
    assert load_pb_secret(str(path)) == hashlib.md5("pässword".encode()).digest()
    os.chmod(path, 0o640)
    with pytest.raises(ConfigError, match="readable by others"):
        load_pb_secret(str(path))
    os.chmod(path, 0o600)
    path.write_text("pb-md5:abc\n")
    with pytest.raises(ConfigError, match="32 hex digits"):
        load_pb_secret(str(path))
    path.write_text("scrypt$1$2$3$x$y\n")
    with pytest.raises(ConfigError, match="expected a 'pb-md5:HEX' line"):
        load_pb_secret(str(path))
    with pytest.raises(ConfigError, match="No such file"):
        load_pb_secret(str(tmp_path / "missing"))


# -- following a job's record -----------------------------------------------------------------


def test_build_set_follows_the_record() -> None:
    from tryssh.server.pb import EXCEPTION, FAILURE, SUCCESS, BuildSet

    bs = BuildSet(None, None, "J", ["a", "b"])  # type: ignore[arg-type]
    a, b = bs.requests["a"], bs.requests["b"]
    bs.update(None)  # not claimed yet
    assert a.build is None and b.build is None and not bs.done
    bs.update({"state": "running", "builders": {"a": {"state": "running"}, "b": {}}})
    assert a.build is not None and a.build.results is None and b.build is None
    finished: list[object] = []
    a.build.remote_waitUntilFinished().addCallback(finished.append)  # type: ignore[union-attr]
    bs.update({"state": "failure", "builders": {
        "a": {"state": "done", "result": "success", "exit": 0},
        "b": {"state": "done", "result": "failure", "exit": 2, "reason": "exit status 2"},
    }})  # fmt: skip
    assert finished == [a.build]  # waitUntilFinished answers with the build itself
    assert a.build.remote_getResults() == SUCCESS
    assert a.build.remote_getText() == ["build successful", "job J"]
    assert b.build is not None and b.build.remote_getResults() == FAILURE
    assert b.build.remote_getText() == ["failure: exit status 2", "job J"]
    assert b.build.remote_waitUntilFinished() is b.build  # already finished: at once
    assert bs.done
    rejected = BuildSet(None, None, "K", ["a"])  # type: ignore[arg-type]
    rejected.update({"state": "rejected", "reason": "branch 'x' is not allowed", "builders": {}})
    build = rejected.requests["a"].build
    assert build is not None and build.remote_getResults() == EXCEPTION
    assert build.remote_getText() == ["rejected: branch 'x' is not allowed", "job K"]


@pytest.mark.parametrize(
    ("result", "code"),
    [("success", 0), ("failure", 2), ("error", 4), ("cancelled", 6), ("interrupted", 4),
     (None, 4), ("something new", 4)],
)  # fmt: skip
def test_results_map_to_buildbot_codes(result: str | None, code: int) -> None:
    from tryssh.server.pb import _results

    assert _results({"state": "done", "result": result}, "J")[0] == code
