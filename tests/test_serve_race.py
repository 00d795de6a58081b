"""``tryssh serve`` answers fast requests without losing the exec reply.

serve used to start a request's worker inside ``check_channel_exec_request``, before
paramiko had sent the reply accepting the exec: a fast request (``builders``) could send
its output, exit status and close first, and the client saw ``Channel closed``.
"""

from __future__ import annotations

from pathlib import Path

from test_serve import Serve

from tryssh.client.sshclient import SshOptions, connect
from tryssh.client.transport import run_remote
from tryssh.errors import TrysshError

REQUESTS = 300


def test_hundreds_of_fast_requests_none_fails(tmp_path: Path) -> None:
    server = Serve(tmp_path).start()
    try:
        opts = SshOptions(
            host="127.0.0.1", port=server.port, user="alice",
            identity=server.alice.private_path, known_hosts=str(server.known_hosts),
            ssh_config="/dev/null", agent=False, timeout=30, quiet=True,
        )  # fmt: skip
        failures: list[str] = []
        with connect(opts) as conn:
            for _ in range(REQUESTS):
                try:
                    out, _err = run_remote(conn, "tryserver builders", b"")
                except TrysshError as err:
                    failures.append(err.message)
                    continue
                if out != b"unit\n":
                    failures.append(f"answer {out!r}")
        assert failures == [], f"{len(failures)} of {REQUESTS} failed, e.g. {failures[:3]}"
    finally:
        assert server.stop() == 0, server.output()
