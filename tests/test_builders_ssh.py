"""forward = "ssh://..." through a real OpenSSH sshd running the real tryserver forced command."""

from __future__ import annotations

import os
from pathlib import Path

from helpers import venv_bin

from tryssh.core.jobdir import Jobdir
from tryssh.core.jobfile import Job, encode_job, parse_job
from tryssh.server import builders
from tryssh.server.config import config_from_dict


def setup_forward(tmp_path: Path, sshd_factory, user_key, known_hosts_file):
    downstream = Jobdir(str(tmp_path / "downstream")).create()
    forced = f"{venv_bin('tryserver')} --jobdir {downstream.path} --user alice"
    server = sshd_factory([f'restrict,command="{forced}" {user_key.public_line}'])
    known = known_hosts_file(server) if known_hosts_file else tmp_path / "empty_known_hosts"
    Path(known).touch()
    upstream = Jobdir(str(tmp_path / "upstream")).create()
    config = config_from_dict({
        "jobdir": upstream.path,
        "builders": {"far": {
            "forward": f"ssh://{server.user}@{server.host}:{server.port}/srv/ignored-jobdir",
            "identity": user_key.private_path, "known_hosts": str(known), "timeout": 30,
        }},
        "users": {"*": {}},
    }, str(tmp_path / "tryssh.toml"))  # fmt: skip
    job = Job("id1", "main", "abc", 1, b"--- a/f\n+++ b/f\n", ["far"], who="alice",
              properties={"k": "v"})  # fmt: skip
    name = "1700000000.M1P1Q1Rab.host"
    path = os.path.join(upstream.cur, name)
    Path(path).write_bytes(encode_job(job))
    ctx = builders.BuildContext(config, name, job, path, config.builders["far"],
                                builders.log_path(config, name, "far"))  # fmt: skip
    return ctx, downstream, server


def test_forward_over_ssh_to_a_tryserver(tmp_path, sshd_factory, user_key, known_hosts):
    ctx, downstream, server = setup_forward(tmp_path, sshd_factory, user_key, known_hosts)
    outcome = builders.run(ctx)
    log = Path(ctx.log_path).read_text()
    # Delivered, and then out of sight: never reported as a success.
    assert outcome.result == "unknown", log + server.log_text()[-2000:]
    [name] = downstream.pending()
    assert f"as {name};" in outcome.reason and outcome.fields == {"delivered_as": name}
    data = Path(downstream.new, name).read_bytes()
    assert data == Path(ctx.job_path).read_bytes()  # same job, naming only "far", who alice
    assert parse_job(data).properties == {"k": "v"}


def test_forward_over_ssh_refuses_an_unknown_host_key(tmp_path, sshd_factory, user_key):
    ctx, downstream, _server = setup_forward(tmp_path, sshd_factory, user_key, None)
    outcome = builders.run(ctx)
    assert outcome.result == "error" and "cannot deliver into ssh://" in outcome.reason
    assert downstream.pending() == []
