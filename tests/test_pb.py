"""The PB door against Buildbot's own ``buildbot try --connect=pb``, unchanged.

One ``tryssh serve --consume`` with ``[pb]`` on a loopback port chosen at run time; the
client runs from a real git working tree (a clone with an upstream and a local change).
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import run, venv_bin, wait_until
from pbserve import PASSWORD, PBServe, buildbot_try, git_tree

from tryssh.core.records import FINAL_STATES, RecordStore

ALICE_LIMIT = 4000  # alice's max_job_size: small, so that an over-limit diff is cheap


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PBServe]:
    root = tmp_path_factory.mktemp("pb")
    serve = PBServe(root, alice_toml=f"max_job_size = {ALICE_LIMIT}").start()
    yield serve
    serve.stop()


@pytest.fixture
def work(tmp_path: Path) -> Path:
    return git_tree(tmp_path)


def _new_job(server: PBServe, before: list[str]) -> str:
    (name,) = wait_until(lambda: sorted(set(server.jobs()) - set(before)), timeout=20)
    return name


def test_get_builder_names_lists_the_users_builders(server: PBServe, work: Path) -> None:
    result = buildbot_try(work, server.port, "--get-builder-names")
    out = result.stdout.decode()
    assert result.returncode == 0, out + result.stderr.decode()
    names = out.split("available for the try scheduler:", 1)[1].split()
    assert names == ["pass", "fail", "gate"]  # not "secret": alice may not use it


def test_submit_delivers_a_job_with_who_pinned(server: PBServe, work: Path) -> None:
    before = server.jobs()
    result = buildbot_try(
        work, server.port, "-b", "pass", "--who=mallory", "--comment=via pb",
        "--property=color=blue",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert b"job has been delivered" in result.stdout
    name = _new_job(server, before)
    job = server.job(name)
    assert job.who == "alice"  # the login name, not --who
    assert job.builder_names == ["pass"]
    assert job.comment == "via pb"
    assert job.branch == "main"
    assert job.properties == {"color": "blue"}
    assert job.patch_body is not None and b"+two" in job.patch_body
    assert job.version == 5
    line = next(x for x in server.audit().splitlines() if f"job={name}" in x)
    assert "auth=pb" in line and "user=alice" in line and "from=127.0.0.1:" in line
    assert "cmd=deliver" in line and "outcome=ok" in line


def test_wait_for_a_passing_build_exits_0(server: PBServe, work: Path) -> None:
    result = buildbot_try(work, server.port, "-b", "pass", "--wait")
    out = result.stdout.decode()
    assert result.returncode == 0, out + result.stderr.decode()
    assert "All Builds Complete" in out
    assert "pass: success (build successful job " in out


def test_wait_for_a_failing_build_exits_1(server: PBServe, work: Path) -> None:
    result = buildbot_try(work, server.port, "-b", "fail", "-b", "pass", "--wait")
    out = result.stdout.decode()
    assert result.returncode == 1, out + result.stderr.decode()
    assert "fail: failure (failure: exit status 1 job " in out
    assert "pass: success" in out


def test_client_gone_mid_wait_leaves_the_job_running(server: PBServe, work: Path) -> None:
    before = server.jobs()
    argv = [
        venv_bin("buildbot"), "try", "--connect=pb", f"--master=127.0.0.1:{server.port}",
        "--username=alice", f"--passwd={PASSWORD}", "--vc=git", "-b", "gate", "--wait",
    ]  # fmt: skip
    env = {"HOME": str(work), "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    proc = subprocess.Popen(argv, cwd=work, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        name = _new_job(server, before)
        store = RecordStore(str(server.jobdir / "state"))
        wait_until(lambda: (store.read(name) or {}).get("state") == "running", timeout=20)
    finally:
        proc.kill()
        proc.wait(timeout=10)
    wait_until(lambda: "event=connection door=pb user=alice" in server.audit().split(name)[-1],
               timeout=30)  # fmt: skip
    (server.root / "go").touch()
    record = wait_until(lambda: (r := store.read(name)) and r["state"] in FINAL_STATES and r,
                        timeout=20)  # fmt: skip
    assert record["state"] == "success"


def test_disallowed_builder_gets_buildbots_own_message(server: PBServe, work: Path) -> None:
    before = server.jobs()
    result = buildbot_try(work, server.port, "-b", "secret", "--wait")
    out = result.stdout.decode()
    # What Buildbot's client says when the master answers None (and its exit status).
    assert "try scheduler on the master does not have the builder configured" in out
    assert result.returncode == 0
    assert server.jobs() == before
    assert "reason=\"builder 'secret' is not allowed for 'alice'\"" in server.audit()


def _hung_client(server: PBServe, work: Path, *args: str, until: str, password: str = PASSWORD):
    """Buildbot's client hangs after any refusal (its own bug): wait for *until* in the
    audit log, then stop it. Returns its stderr."""
    argv = [
        venv_bin("buildbot"), "try", "--connect=pb", f"--master=127.0.0.1:{server.port}",
        "--username=alice", f"--passwd={password}", "--vc=git", *args,
    ]  # fmt: skip
    env = {"HOME": str(work), "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    proc = subprocess.Popen(
        argv, cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    err: list[bytes] = []
    reader = threading.Thread(target=lambda: err.extend(proc.stderr), daemon=True)  # type: ignore[arg-type]
    reader.start()
    try:
        wait_until(lambda: until in server.audit(), timeout=30,
                   message=lambda: server.audit())  # fmt: skip
        wait_until(lambda: b"RemoteError" in b"".join(err), timeout=10)
    finally:
        proc.kill()
        proc.wait(timeout=10)
        reader.join(timeout=10)
    return b"".join(err).decode()


def test_wrong_password_is_refused_and_audited(server: PBServe, work: Path) -> None:
    before = server.jobs()
    err = _hung_client(server, work, "-b", "pass", password="wrong",
                       until="event=auth outcome=failed method=pb user=alice")  # fmt: skip
    assert "wrong user name or password" in err
    assert server.jobs() == before


def test_over_limit_diff_is_refused(server: PBServe, work: Path) -> None:
    (work / "f.txt").write_text("x" * (ALICE_LIMIT + 1000) + "\n")
    before = server.jobs()
    err = _hung_client(server, work, "-b", "pass", until=f"more than the limit of {ALICE_LIMIT}")
    assert f"more than the limit of {ALICE_LIMIT} for 'alice'" in err
    assert server.jobs() == before


def test_sigterm_stops_both_doors(tmp_path: Path) -> None:
    serve = PBServe(tmp_path, consume=False).start()
    serve.stop()
    assert serve.proc is not None and serve.proc.returncode == 0, serve.output()
    assert "event=serve-stopped" in serve.output()


# -- configuration --------------------------------------------------------------------------


def test_non_loopback_listen_is_refused(tmp_path: Path) -> None:
    serve = PBServe(tmp_path, consume=False, pb={"listen": "0.0.0.0:0"})
    result = run([venv_bin("tryssh"), "serve", "--config", str(serve.config)], timeout=30)
    assert result.returncode == 78, result.stderr
    err = result.stderr.decode()
    assert "not a loopback address" in err and "insecure_network = true" in err
    assert len(err.strip().splitlines()) == 1


def test_without_twisted_pb_fails_naming_the_extra(tmp_path: Path) -> None:
    serve = PBServe(tmp_path, consume=False)
    code = "import sys; sys.modules['twisted'] = None; from tryssh.cli.main import main; "
    code += "sys.exit(main())"
    result = run([sys.executable, "-c", code, "serve", "--config", str(serve.config)])
    assert result.returncode == 78, result.stderr
    err = result.stderr.decode().strip()
    assert "pip install 'tryssh[pb]'" in err and len(err.splitlines()) == 1


def test_secret_readable_by_others_is_refused(tmp_path: Path) -> None:
    serve = PBServe(tmp_path, consume=False)
    os.chmod(tmp_path / "alice.pb", 0o644)
    result = run([venv_bin("tryssh"), "serve", "--config", str(serve.config)], timeout=30)
    assert result.returncode == 78
    assert b"readable by others" in result.stderr


def test_passwd_pb_prints_the_md5_secret() -> None:
    result = run([venv_bin("tryssh"), "passwd", "--pb", "--stdin"], input=b"open sesame\n")
    assert result.returncode == 0
    # MD5("open sesame"): what Twisted's PB login derives from the password.
    import hashlib

    want = hashlib.md5(b"open sesame", usedforsecurity=False).hexdigest()
    assert result.stdout.decode().strip() == f"pb-md5:{want}"


# -- layering: Twisted stays off every other path ---------------------------------------------


def test_only_the_pb_module_imports_twisted() -> None:
    package = Path(__file__).resolve().parent.parent / "tryssh"
    importers = set()
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            if any(n.split(".")[0] in ("twisted", "zope") for n in names):
                importers.add(path.relative_to(package).as_posix())
    assert importers == {"server/pb.py"}


@pytest.mark.parametrize(
    "module", ["tryssh.server.tryserver", "tryssh.server.serve", "tryssh.cli.serve"]
)
def test_forced_command_and_ssh_serve_do_not_load_twisted(module: str) -> None:
    code = f"import sys, {module}; print('twisted' in sys.modules)"
    result = run([sys.executable, "-c", code])
    assert result.stdout.strip() == b"False", result.stderr
