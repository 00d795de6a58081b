"""The strict parser of a client's SSH command (SSH_ORIGINAL_COMMAND)."""

from __future__ import annotations

import pytest
from hostile import HOSTILE_COMMANDS
from hypothesis import given
from hypothesis import strategies as st

from tryssh.core.request import (
    MAX_COMMAND,
    CommandRefused,
    Request,
    parse_request_words,
    parse_ssh_command,
)
from tryssh.errors import UsageError

# -- accepted ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "verb", "job", "as_json", "client_jobdir"),
    [
        ("tryserver", "deliver", None, False, None),
        ("tryserver deliver", "deliver", None, False, None),
        # What Buildbot's client sends (its argv joined by ssh with single spaces).
        ("buildbot tryserver --jobdir ~/jobdir", "deliver", None, False, "~/jobdir"),
        ("buildbot tryserver --jobdir /srv/try/jobdir", "deliver", None, False, "/srv/try/jobdir"),
        ("/usr/local/bin/buildbot tryserver --jobdir x", "deliver", None, False, "x"),
        ("/opt/venv/bin/tryserver", "deliver", None, False, None),
        ("tryssh tryserver --jobdir=jd", "deliver", None, False, "jd"),
        ("/usr/bin/tryssh tryserver", "deliver", None, False, None),
        ("tryserver --jobdir ../../etc", "deliver", None, False, "../../etc"),  # ignored later
        ("tryserver --json", "deliver", None, True, None),
        ("'tryserver' \"--json\"", "deliver", None, True, None),
        ("tryserver builders", "builders", None, False, None),
        ("tryserver jobs --json", "jobs", None, True, None),
        (
            "tryserver status 1795462678.M153196P42Q1R0a0b0c0d.host",
            "status",
            "1795462678.M153196P42Q1R0a0b0c0d.host",
            False,
            None,
        ),
        ("  tryserver   builders  ", "builders", None, False, None),
    ],
)
def test_accepted(text, verb, job, as_json, client_jobdir):
    request = parse_ssh_command(text)
    assert isinstance(request, Request)
    assert (request.verb, request.job, request.json) == (verb, job, as_json)
    assert request.client_jobdir == client_jobdir
    assert verb in repr(request)


# -- refused ----------------------------------------------------------------------------------

HOSTILE = HOSTILE_COMMANDS


@pytest.mark.parametrize("text", HOSTILE, ids=lambda t: repr(t)[:40])
def test_hostile_commands_are_refused(text):
    with pytest.raises(CommandRefused) as info:
        parse_ssh_command(text)
    err = info.value
    assert isinstance(err, UsageError)
    assert err.exit_code == 64
    assert "\n" not in err.message and "\r" not in err.message
    assert err.message.isprintable()
    assert len(err.message) < 200


def test_command_of_the_maximum_length_is_accepted():
    text = "tryserver --jobdir " + "a" * (MAX_COMMAND - 19)
    assert len(text) == MAX_COMMAND
    assert parse_ssh_command(text).client_jobdir == "a" * (MAX_COMMAND - 19)


def test_long_command_message_is_short():
    with pytest.raises(CommandRefused, match=f"longer than {MAX_COMMAND}"):
        parse_ssh_command("tryserver " + "x" * 100_000)


def test_control_characters_are_named_not_echoed():
    with pytest.raises(CommandRefused, match="U\\+001B"):
        parse_ssh_command("tryserver\x1b]0;pwned\x07")
    with pytest.raises(CommandRefused, match="';'"):
        parse_ssh_command("tryserver; id")


@pytest.mark.parametrize("char", [chr(c) for c in range(0x20)] + ["\x7f", "\x85", "\xa0"])
def test_every_control_character_is_refused(char):
    with pytest.raises(CommandRefused):
        parse_ssh_command(f"tryserver{char}")


@given(st.text(max_size=60))
def test_anything_is_refused_or_a_known_request(text):
    """Whatever the client sends, the answer is CommandRefused or a request of the language."""
    try:
        request = parse_ssh_command(text)
    except CommandRefused as err:
        assert "\n" not in err.message
        return
    assert request.verb in ("deliver", "status", "builders", "jobs")
    assert not any(c in text for c in ";|&$`<>()\\*?\r\n\0")
    assert text.split()[0].rsplit("/", 1)[-1].strip("'\"") in ("tryserver", "buildbot", "tryssh")


@given(
    st.sampled_from(["tryserver", "buildbot tryserver", "tryssh tryserver", "/x/y/tryserver"]),
    st.lists(st.sampled_from(["--json", "--jobdir ~/jd", "--jobdir=/a/b"]), max_size=3),
    st.sampled_from(["", "deliver", "builders", "jobs", "status 17.M1P2Q3R4.h"]),
)
def test_the_language_is_accepted_in_any_order(program, options, verb):
    text = " ".join([program, *options, verb])
    request = parse_ssh_command(text)
    assert request.verb == (verb.split()[0] if verb else "deliver")
    assert request.json is ("--json" in options)


# -- the words after 'tryserver' (shared with the command line) -------------------------------


def test_parse_request_words():
    assert parse_request_words([]).verb == "deliver"
    request = parse_request_words(["--jobdir", "x", "status", "job1", "--json"])
    assert (request.verb, request.job, request.json, request.client_jobdir) == (
        "status",
        "job1",
        True,
        "x",
    )
    with pytest.raises(UsageError, match="--jobdir needs a value"):
        parse_request_words(["--jobdir"])
    with pytest.raises(UsageError, match="unknown option '--user'"):
        parse_request_words(["--user", "bob"])
    with pytest.raises(UsageError, match="unknown request 'rm'"):
        parse_request_words(["rm"])
    with pytest.raises(UsageError, match="status needs exactly one job name"):
        parse_request_words(["status"])
    with pytest.raises(UsageError, match="not a job name"):
        parse_request_words(["status", "a/b"])
    with pytest.raises(UsageError, match="builders takes no arguments"):
        parse_request_words(["builders", "x"])
    # The error class is the caller's: the forced command refuses, the CLI reports usage.
    with pytest.raises(CommandRefused):
        parse_request_words(["rm"], CommandRefused)
