"""Hostile v5/v6 jobs against tryserver's streaming splice: each is refused with one line
(BadJob, exit 65), and in bounded time and memory."""

from __future__ import annotations

import io
import json

import pytest

from tryssh.core.jobfile import transcode
from tryssh.core.jobsplice import MemoryOutput
from tryssh.core.netstring import encode as ns
from tryssh.errors import BadJob

BASE = {
    "jobid": "i", "branch": "b", "baserev": "r", "patch_level": 1, "repository": "",
    "project": "", "who": "w", "comment": "", "builderNames": ["b1"], "properties": {},
}  # fmt: skip


def job(text: str | bytes, version: str = "5") -> bytes:
    return ns(version.encode()) + ns(text.encode() if isinstance(text, str) else text)


def v5(patch_json: str, **extra: object) -> bytes:
    body = json.dumps({**BASE, **extra})[:-1]
    return job(f'{body}, "patch_body": {patch_json}}}')


HOSTILE = [
    pytest.param(v5('"abc'), "not terminated", id="unterminated-patch"),
    pytest.param(v5('"a\\qb"'), "Invalid \\escape", id="bad-escape"),
    pytest.param(v5('"a\\u12"'), "Invalid \\uXXXX", id="short-u-escape"),
    pytest.param(v5('"a\nb"'), "Invalid control character", id="raw-newline"),
    pytest.param(v5('"\\udc00"'), "lone surrogate", id="lone-low-surrogate"),
    pytest.param(v5('"\\ud800x"'), "lone surrogate", id="lone-high-surrogate"),
    pytest.param(job(b'{"patch_body": "\xff"}'), "not valid UTF-8", id="raw-bad-utf8"),
    pytest.param(v5('"a", "patch_body": "b"'), "twice", id="two-patches"),
    pytest.param(v5('"a"} {'), "extra data", id="trailing-object"),
    pytest.param(v5('"a",}'), "property name", id="trailing-comma"),
    pytest.param(job("[" * 100_000), "must be an object", id="nested-list"),
    pytest.param(v5('"a"', properties=json.loads("[" * 500 + "]" * 500)),
                 "properties must be an object", id="nested-properties"),
    pytest.param(job('{"properties": ' + "[" * 100_000 + "]" * 100_000 + "}"),
                 "nested too deeply", id="deeply-nested"),
    pytest.param(v5('"a"', comment="c" * (1 << 20)), "larger than", id="huge-comment"),
    pytest.param(job('{"' + "k" * (2 << 20) + '": 1}'), "larger than", id="huge-key"),
    pytest.param(v5('"a"', builderNames=["b"] * 10_001), "more than 10000", id="many-builders"),
    pytest.param(v5('"a"', builderNames=["b" * 600_000] * 2), "larger than",
                 id="builder-names-over-1mib"),
    pytest.param(job("{" + ", ".join(f'"k{i}": 1' for i in range(1001)) + "}"),
                 "more than 1000 fields", id="many-members"),
    pytest.param(job("{" + ", ".join(f'"k{i}": "' + "v" * 900_000 + '"' for i in range(5)) + "}"),
                 "exceed", id="small-fields-over-4mib"),
    pytest.param(job(" " * (4 << 20)), "expected '{'", id="whitespace-flood"),
    pytest.param(job('{"patch_body_base64": "QQ=A"}', "6"), "not valid base64",
                 id="b64-data-after-padding"),
    pytest.param(job('{"patch_body_base64": "QQ="}', "6"), "not valid base64",
                 id="b64-bad-padding"),
    pytest.param(job('{"patch_body_base64": "QQ\\u00e9="}', "6"), "not valid base64",
                 id="b64-non-ascii"),
    pytest.param(job('{"patch_body_base64": "QQ\n=="}', "6"), "not valid base64",
                 id="b64-raw-newline"),
    pytest.param(job('{"jobid": 1' + "0" * 5000 + "}"), "unable to parse JSON", id="huge-int"),
]


@pytest.mark.parametrize(("data", "message"), HOSTILE)
def test_hostile_json_job_is_refused(data, message):
    with pytest.raises(BadJob) as info:
        transcode(io.BytesIO(data), emit=MemoryOutput(), pin_who="alice", chunk=4096)
    assert message in info.value.message
    assert "\n" not in info.value.message
    assert info.value.exit_code == 65
