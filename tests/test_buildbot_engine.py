"""Buildbot as the engine: a real master and worker build what tryssh hands them, and
their results come back through ``tryssh try --wait`` and ``status``.

Set-ups (each with git, hg and svn, a passing and a failing change):

- consumer in front: ``buildbot`` builders hand jobs to the master's jobdir and read the
  results from its REST API;
- ssh:// : the same, delivered over SSH to a tryserver that writes into the master's jobdir;
- drop-in: tryserver (over SSH) delivers straight into the master's Try_Jobdir, and
  ``status`` asks the master's API by jobid;
- ``buildbot try --connect=ssh`` into tryssh, consumer in front.

The master is the session's (``buildbot_master``: builders try-git, try-hg, try-svn whose
test step passes while ``state.txt`` says good). Submissions of one test run at once so
that the three Buildbot builders work in parallel.

Every build costs seconds, so by default only the consumer set-up runs the whole matrix and
the others git (the ssh:// jobdir and Buildbot's client a failing change only, the latter
also passing hg and svn --diff jobs); ``TRYSSH_BUILDBOT_MATRIX=full``
runs every VCS with a passing and a failing change in every set-up.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from buildbot_master import BuildbotMaster, vcs_env
from helpers import LoopbackHttp, venv_bin, wait_until
from sshd import Sshd, UserKey, client_options, make_user_key, write_known_hosts

from tryssh.core.jobdir import Jobdir
from tryssh.core.jobfile import Job, encode_job
from tryssh.core.records import RecordStore
from tryssh.errors import EX_TEMPFAIL, EX_UNAVAILABLE
from tryssh.server.buildbot import Api, job_view

VCS = ("git", "hg", "svn")
FULL = os.environ.get("TRYSSH_BUILDBOT_MATRIX") == "full"
MATRIX = [(vc, kind) for vc in VCS for kind in ("good", "bad")]
GIT_ONLY = MATRIX if FULL else [("git", "good"), ("git", "bad")]
GIT_BAD = MATRIX if FULL else [("git", "bad")]
GOOD = "good\nand more\n"
BAD = "bad\n"
PATCH_BAD = b"--- a/state.txt\n+++ b/state.txt\n@@ -1 +1 @@\n-good\n+bad\n"
WAIT = 180.0


def toml(value: object) -> str:
    return json.dumps(value)  # strings, numbers and lists read the same in TOML


def inline(table: dict[str, object]) -> str:
    return "{ " + ", ".join(f"{k} = {toml(v)}" for k, v in table.items()) + " }"


def edit(wc: Path, text: str) -> None:
    (wc / "state.txt").write_text(text)


def start_all(argvs: Sequence[tuple[list[str], Path]], env: dict[str, str]
              ) -> list[subprocess.Popen[str]]:  # fmt: skip
    return [subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
            for argv, cwd in argvs]  # fmt: skip


def finish_all(procs: list[subprocess.Popen[str]]) -> list[tuple[int, str, str]]:
    done = []
    for proc in procs:
        out, err = proc.communicate(timeout=WAIT)
        done.append((proc.returncode, out, err))
    return done


@dataclass
class Ssh:
    """A real sshd whose only key runs tryserver with *forced* options."""

    sshd: Sshd
    key: UserKey
    known_hosts: Path

    def tryssh_args(self) -> list[str]:
        return ["--host", self.sshd.host, "--port", str(self.sshd.port), "-u", self.sshd.user,
                "-i", self.key.private_path, "--known-hosts", str(self.known_hosts)]  # fmt: skip

    def url(self, path: Path) -> str:
        return f"ssh://{self.sshd.user}@{self.sshd.host}:{self.sshd.port}{path}"


def start_ssh(directory: Path, forced: str) -> Ssh:
    directory.mkdir(parents=True, exist_ok=True)
    key = make_user_key(directory, "id_ed25519")
    sshd = Sshd([f'restrict,command="{forced}" {key.public_line}'],
                directory=directory / "sshd").start()  # fmt: skip
    return Ssh(sshd, key, write_known_hosts(directory / "known_hosts", sshd))


@dataclass
class Front:
    """tryssh's consumer (config, jobdir) in front of the session's Buildbot master, and an
    sshd whose forced tryserver delivers into the master's jobdir (the ssh:// builders')."""

    config: Path
    jobdir: Path
    master: BuildbotMaster
    home: Path
    to_master: Ssh

    def env(self) -> dict[str, str]:
        return vcs_env(self.home)

    def store(self) -> RecordStore:
        return RecordStore(str(self.jobdir / "state"))

    def try_argv(self, *args: str) -> list[str]:
        return [venv_bin("tryssh"), "try", "-c", "local", "--jobdir", str(self.jobdir),
                "--config", str(self.config), "--json", *args]  # fmt: skip

    def record_where(self, **fields: object) -> dict:
        """The finished record whose fields match (waits for it)."""

        def find() -> dict | None:
            for name in self.store().final_jobs():
                record = self.store().read(name)
                if record and all(record.get(k) == v for k, v in fields.items()):
                    return record
            return None

        return wait_until(find, timeout=WAIT, interval=0.2,
                          message=lambda: f"no finished record with {fields}")  # fmt: skip


def front_config(base: Path, master: BuildbotMaster, jobdir: Path, ssh: Ssh) -> Path:
    lines = [f"jobdir = {toml(str(jobdir))}", "[consume]", "poll_interval = 0.1"]
    for vc in VCS:
        table = {"jobdir": str(master.jobdir), "api": master.api, "poll_interval": 0.2,
                 "builders": [f"try-{vc}"]}  # fmt: skip
        lines += [f"[builders.try-{vc}]", f"buildbot = {inline(table)}"]
        # The same master, reached over SSH (a tryserver writes into its jobdir).
        table = {**table, "jobdir": ssh.url(master.jobdir)}
        lines += [f"[builders.ssh-{vc}]", f"buildbot = {inline(table)}",
                  f"identity = {toml(ssh.key.private_path)}",
                  f"known_hosts = {toml(str(ssh.known_hosts))}"]  # fmt: skip
    # A Buildbot builder the master lacks: Buildbot drops the job and logs it.
    table = {"jobdir": str(master.jobdir), "api": master.api, "poll_interval": 0.2,
             "builders": ["no-such"], "pickup_timeout": 2}  # fmt: skip
    lines += ["[builders.nosuch]", f"buildbot = {inline(table)}"]
    lines += ["[builders.lint]", 'command = ["sh", "-c", "exit 0"]']
    # A plain forward cannot see results: its builds are "delivered", never "success".
    lines += ["[builders.fwd]", f"forward = {toml(str(base / 'elsewhere'))}"]
    lines += ['[users."*"]']
    Jobdir(str(base / "elsewhere")).create()
    path = base / "tryssh.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def front(buildbot_master: BuildbotMaster, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[Front]:  # fmt: skip
    base = tmp_path_factory.mktemp("front")
    jobdir = base / "jobdir"
    Jobdir(str(jobdir)).create()
    ssh = start_ssh(base / "to-master", f"{venv_bin('tryserver')} --jobdir "
                    f"{buildbot_master.jobdir} --user front")  # fmt: skip
    config = front_config(base, buildbot_master, jobdir, ssh)
    home = base / "home"
    home.mkdir()
    log = open(base / "consume.log", "wb")
    proc = subprocess.Popen([venv_bin("tryssh"), "consume", "--config", str(config)],
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        # Up before the first --wait: a jobdir no consumer keeps records for says at once
        # that it cannot report results.
        wait_until(lambda: (jobdir / "state" / "consumer.heartbeat").exists(), timeout=60,
                   message=lambda: (base / "consume.log").read_text())  # fmt: skip
        yield Front(config, jobdir, buildbot_master, home, ssh)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        log.close()
        ssh.sshd.stop()


def working_copies(master: BuildbotMaster, base: Path, combos: list[tuple[str, str]]
                   ) -> list[tuple[str, str, Path]]:  # fmt: skip
    """(vc, good|bad, a working copy with that change) for each of *combos*."""
    copies = []
    for vc, kind in combos:
        wc = master.checkout(vc, base / f"{vc}-{kind}")
        edit(wc, GOOD if kind == "good" else BAD)
        copies.append((vc, kind, wc))
    return copies


def check_matrix(results: list[tuple[int, str, str]], copies: list[tuple[str, str, Path]],
                 master: BuildbotMaster, prefix: str) -> None:  # fmt: skip
    """Every good change exits 0 and every bad one 1, with Buildbot's own verdict."""
    for (code, out, err), (vc, kind, _) in zip(results, copies, strict=True):
        want = 0 if kind == "good" else 1
        assert code == want, f"{vc} {kind}: exit {code}\n{err}\n{out}\n{master.log_tail(15)}"
        receipt = json.loads(out)
        entry = receipt["result"]["builders"][f"{prefix}-{vc}"]
        assert entry["result"] == ("success" if kind == "good" else "failure")
        assert entry["url"].startswith(master.api + "#/builders/")
        jobid = entry.get("jobid") or receipt["jobid"]  # a drop-in has no tryssh record
        assert receipt["jobid"] == jobid
        assert master.results_by_builder(jobid) == {f"try-{vc}": 0 if want == 0 else 2}
        if kind == "bad":
            assert "Buildbot: FAILURE" in entry["reason"]
            assert f"{prefix}-{vc}: failure (Buildbot: FAILURE" in err  # the --wait line


@pytest.mark.parametrize("prefix", ["try", "ssh"])
def test_consumer_buildbot_builders_pass_and_fail(front: Front, prefix: str, tmp_path: Path
                                                  ) -> None:  # fmt: skip
    """try-*: the master's jobdir on this machine; ssh-*: over SSH (an ssh:// jobdir)."""
    copies = working_copies(front.master, tmp_path, MATRIX if prefix == "try" else GIT_BAD)
    argvs = [(front.try_argv("-b", f"{prefix}-{vc}", "--wait"), wc) for vc, _, wc in copies]
    results = finish_all(start_all(argvs, front.env()))
    check_matrix(results, copies, front.master, prefix)
    for (_, _, err), (vc, kind, _) in zip(results, copies, strict=True):
        if kind == "bad":  # why, without Buildbot's web UI: its failed step's log, copied
            assert f"Buildbot builder try-{vc}: step 'test' failed; the end of its log" in err
            assert "sh check.sh\nprogram finished with exit code 1\n" in err
            assert err.count("step 'test' failed") == 1
            assert "  PATH=" not in err  # the worker's environment stays out


def test_two_buildbot_builders_give_one_buildset_and_a_mixed_job_builds_both_sides(
    front: Front,
) -> None:
    jobdir = Jobdir(str(front.jobdir))
    both = jobdir.deliver_bytes(encode_job(Job(
        "two-builders", None, None, 1, PATCH_BAD, ["try-git", "try-hg", "lint"], who="bob",
    )))  # fmt: skip
    record = front.record_where(job=both)
    results = {n: e["result"] for n, e in record["builders"].items()}
    assert results == {"try-git": "failure", "try-hg": "failure", "lint": "success"}
    assert record["state"] == "failure" and record["jobid"] == "two-builders"
    [buildset] = front.master.buildsets("two-builders")  # one delivery, one buildset
    assert {b["builder"] for b in front.master.builds(buildset["bsid"])} == {"try-git", "try-hg"}


def test_a_builder_buildbot_lacks_is_an_error_not_a_wait(front: Front) -> None:
    name = Jobdir(str(front.jobdir)).deliver_bytes(encode_job(Job(
        "no-such-builder", None, None, 1, PATCH_BAD, ["nosuch"], who="bob")))  # fmt: skip
    record = front.record_where(job=name)
    entry = record["builders"]["nosuch"]
    assert record["state"] == "error" and entry["result"] == "error"
    assert "Buildbot made no buildset for jobid no-such-builder" in entry["reason"]
    assert front.master.buildsets("no-such-builder") == []


def test_plain_forward_is_delivered_not_success(front: Front, tmp_path: Path) -> None:
    wc = front.master.checkout("git", tmp_path / "wc")
    edit(wc, GOOD)
    result = subprocess.run(front.try_argv("-b", "fwd", "-b", "lint", "--wait"), cwd=wc,
                            env=front.env(), capture_output=True, text=True, timeout=WAIT,
                            check=False)  # fmt: skip
    assert result.returncode == EX_UNAVAILABLE, result.stderr
    record = json.loads(result.stdout)["result"]
    assert record["state"] == "delivered"
    assert record["builders"]["fwd"]["result"] == "unknown"
    assert record["builders"]["lint"]["result"] == "success"
    [name] = os.listdir(front.jobdir.parent / "elsewhere" / "new")
    assert record["builders"]["fwd"]["delivered_as"] == name


def test_buildbot_try_over_ssh_into_tryssh(front: Front, tmp_path: Path) -> None:
    """Buildbot's own client, consumer in front. Its hg jobs carry a baserev of "b'NODE'"
    (str of bytes), which tryserver unwraps; its svn extraction makes an empty patch
    (``svn diff -rb'1'``), so svn sends --diff with --baserev and no --repository (a null
    repository, which tryserver makes Buildbot-safe)."""
    ssh = start_ssh(tmp_path / "ssh", f"{venv_bin('tryserver')} --jobdir {front.jobdir} "
                    f"--config {front.config} --user alice")  # fmt: skip
    try:
        ssh_cmd = shlex.join(["ssh", *client_options(ssh.sshd, ssh.key.private_path,
                                                     ssh.known_hosts)])  # fmt: skip
        argvs = []
        copies = working_copies(front.master, tmp_path, MATRIX if FULL else [
            ("git", "bad"), ("hg", "good"), ("svn", "good")])  # fmt: skip
        env = {k: v for k, v in front.env().items() if not k.startswith("SSH_")}
        for vc, kind, wc in copies:
            argv = [venv_bin("buildbot"), "try", "--connect=ssh", "--host", ssh.sshd.host,
                    "--port", str(ssh.sshd.port), "--username", ssh.sshd.user,
                    "--jobdir", "x", "--ssh", ssh_cmd, "-b", f"try-{vc}",
                    "--comment", f"bb-{vc}-{kind}-{tmp_path.name}"]  # fmt: skip
            if vc in ("git", "hg"):
                argv += ["--vc", vc]
            else:
                diff, base, level = vcs_diff(vc, wc, front.env())
                (wc.parent / f"{vc}-{kind}.diff").write_bytes(diff)
                argv += ["--diff", str(wc.parent / f"{vc}-{kind}.diff"), "--baserev", base,
                         "-p", level]  # fmt: skip
            argvs.append((argv, wc))
        for code, out, err in finish_all(start_all(argvs, env)):
            assert code == 0 and "job has been delivered" in out, err
        for vc, kind, _ in copies:
            record = front.record_where(comment=f"bb-{vc}-{kind}-{tmp_path.name}")
            entry = record["builders"][f"try-{vc}"]
            assert record["who"] == "alice"
            assert entry["result"] == ("success" if kind == "good" else "failure"), record
            assert entry["url"].startswith(front.master.api)
            if vc == "svn":
                assert record["repository"] == ""  # sent as null: tryserver made it ""
            if vc == "hg":
                assert not record["baserev"].startswith("b'")  # unwrapped by tryserver
    finally:
        ssh.sshd.stop()


def vcs_diff(vc: str, wc: Path, env: dict[str, str]) -> tuple[bytes, str, str]:
    """(patch, base revision, patch level) of an svn working copy."""
    def out(*argv: str) -> bytes:
        return subprocess.run(argv, cwd=wc, env=env, capture_output=True, check=True,
                              timeout=60).stdout  # fmt: skip

    assert vc == "svn"
    info = out("svn", "info", "--show-item", "revision").decode().strip()
    return out("svn", "diff"), info, "0"


# -- drop-in: tryserver writes into the master's Try_Jobdir, no consumer -------------------------


@pytest.fixture(scope="module")
def drop_in(buildbot_master: BuildbotMaster, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[tuple[Ssh, Ssh]]:  # fmt: skip
    """Two doors into the master's jobdir: one whose tryserver config names the master's
    API, one without it."""
    base = tmp_path_factory.mktemp("drop-in")
    config = base / "tryssh.toml"
    # The policy at the door names Buildbot's builders: declared as buildbot builders whose
    # jobdir is this very jobdir (a drop-in config: no consumer may run on it).
    table = {"jobdir": str(buildbot_master.jobdir), "api": buildbot_master.api}
    config.write_text(
        f"jobdir = {toml(str(buildbot_master.jobdir))}\n"
        f"[buildbot]\napi = {toml(buildbot_master.api)}\n"
        + "".join(f"[builders.try-{vc}]\nbuildbot = {inline(table)}\n" for vc in VCS)
        + '[users."*"]\n')  # fmt: skip
    tryserver = venv_bin("tryserver")
    with_api = start_ssh(base / "api", f"{tryserver} --config {config} --user alice")
    without = start_ssh(base / "plain", f"{tryserver} --jobdir {buildbot_master.jobdir} "
                        "--user alice")  # fmt: skip
    yield with_api, without
    with_api.sshd.stop()
    without.sshd.stop()


def test_drop_in_with_api_reports_buildbot_results(
    drop_in: tuple[Ssh, Ssh], buildbot_master: BuildbotMaster, tmp_path: Path
) -> None:
    ssh, _ = drop_in
    copies = working_copies(buildbot_master, tmp_path, GIT_ONLY)
    env = vcs_env(tmp_path)
    argvs = [([venv_bin("tryssh"), "try", *ssh.tryssh_args(), "--accept-new-host-key", "-b",
               f"try-{vc}", "--wait", "--json"], wc) for vc, _, wc in copies]  # fmt: skip
    check_matrix(finish_all(start_all(argvs, env)), copies, buildbot_master, "try")


def test_drop_in_without_api_says_it_cannot_report(
    drop_in: tuple[Ssh, Ssh], buildbot_master: BuildbotMaster, tmp_path: Path
) -> None:
    _, ssh = drop_in
    wc = buildbot_master.checkout("git", tmp_path / "wc")
    edit(wc, BAD)
    result = tryssh("try", *ssh.tryssh_args(), "-b", "try-git", "--wait", "--json", cwd=wc,
                    env=vcs_env(tmp_path), timeout=WAIT)  # fmt: skip
    assert result.returncode == EX_UNAVAILABLE, result.stderr
    assert "this server cannot report the results" in result.stderr
    receipt = json.loads(result.stdout)
    assert receipt["result"]["followable"] is False
    # Buildbot builds it all the same (and fails it): what --wait could not tell.
    assert buildbot_master.results_by_builder(receipt["jobid"]) == {"try-git": 2}
    # status now says "claimed": the job has left new/.
    status = tryssh("status", *ssh.tryssh_args(), "--json", receipt["job"])
    assert status.returncode == 0, status.stderr
    record = json.loads(status.stdout)
    assert record["state"] == "claimed" and record["jobid"] == receipt["jobid"]


def test_drop_in_job_buildbot_took_but_never_built_is_an_error(
    buildbot_master: BuildbotMaster, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tryssh.server import queries

    jobdir = Jobdir(str(buildbot_master.jobdir))
    name = jobdir.deliver_bytes(encode_job(Job(
        "dropped-by-buildbot", None, None, 1, PATCH_BAD, ["no-such"], who="carol")))  # fmt: skip
    wait_until(lambda: os.path.exists(os.path.join(jobdir.cur, name)), timeout=30,
               message="Buildbot did not take the job from new/")  # fmt: skip
    status = queries.job_status(jobdir.path, str(buildbot_master.dir / "no-state"), name,
                                "carol", {"api": buildbot_master.api})  # fmt: skip
    assert status["state"] == "claimed"  # not yet known to be dropped
    monkeypatch.setattr(queries, "NO_BUILDSET_GRACE", 0.0)
    status = queries.job_status(jobdir.path, str(buildbot_master.dir / "no-state"), name,
                                "carol", {"api": buildbot_master.api})  # fmt: skip
    assert status["state"] == "error" and "made no buildset" in status["reason"]


def tryssh(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
           timeout: float = 60) -> subprocess.CompletedProcess[str]:  # fmt: skip
    """Run the real ``tryssh`` client (text output, no stdin, no check)."""
    return subprocess.run([venv_bin("tryssh"), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout, check=False, stdin=subprocess.DEVNULL)


def try_git_running(api: Api, jobid: str) -> bool:
    """Whether Buildbot builds the try-git build of the job *jobid* right now."""
    view = job_view(api, jobid)
    return bool(view) and view["builders"].get("try-git", {}).get("state") == "running"


def wait_running(master: BuildbotMaster, find: Callable[[], tuple[str, str] | None]
                 ) -> tuple[str, str]:  # fmt: skip
    """(job, jobid) once *find* sees the job's build running."""
    return wait_until(find, timeout=WAIT, interval=0.2, message=lambda: f"the build did "
                      f"not start:\n{master.log_tail(15)}")  # fmt: skip


def claimed_with_comment(master: BuildbotMaster, comment: str) -> str | None:
    """The name of the job in the master's cur/ whose comment is *comment* (or None)."""
    from tryssh.core.jobfile import read_job_head

    cur = master.jobdir / "cur"
    for name in os.listdir(cur):
        if read_job_head(str(cur / name)).comment == comment:
            return name
    return None


def test_drop_in_cancel_stops_the_buildset_through_the_api(
    drop_in: tuple[Ssh, Ssh], buildbot_master: BuildbotMaster, tmp_path: Path
) -> None:
    """``tryssh cancel`` over the door whose tryserver knows the master's API: Buildbot
    stops the job's build (CANCELLED), and the waiting ``--wait`` and ``status`` end
    ``cancelled``, not ``error``, not a hang."""
    ssh, _ = drop_in
    wc = buildbot_master.checkout("git", tmp_path / "wc")
    (wc / "check.sh").write_text("sleep 60\n")  # the test step hangs until stopped
    marker = f"drop-in-cancel-{tmp_path.name}"
    env = vcs_env(tmp_path)
    [waiting] = start_all([([venv_bin("tryssh"), "try", *ssh.tryssh_args(), "-b", "try-git",
                             "-C", marker, "--wait", "--json"], wc)], env)  # fmt: skip
    api = Api(buildbot_master.api)

    def running() -> tuple[str, str] | None:
        from tryssh.core.jobfile import read_job_head

        name = claimed_with_comment(buildbot_master, marker)
        if name is None:
            return None
        jobid = read_job_head(str(buildbot_master.jobdir / "cur" / name)).jobid
        return (name, jobid) if try_git_running(api, jobid) else None

    name, jobid = wait_running(buildbot_master, running)
    cancel = tryssh("cancel", *ssh.tryssh_args(), name, timeout=WAIT)
    assert cancel.returncode == 0, cancel.stderr
    [line] = cancel.stdout.splitlines()
    assert line.startswith(f"job {name}: cancelled by alice (asked Buildbot to stop buildset ")
    assert line.endswith(" (1 build))")
    # Buildbot's own word: the build was stopped, not left to run out its sleep.
    assert buildbot_master.results_by_builder(jobid) == {"try-git": 6}  # CANCELLED
    [(code, out, err)] = finish_all([waiting])
    assert code == EX_TEMPFAIL, err
    result = json.loads(out)["result"]
    assert result["state"] == "cancelled"
    entry = result["builders"]["try-git"]
    assert entry["result"] == "cancelled"
    assert entry["reason"] == "cancelled by alice (Buildbot: CANCELLED)"
    assert entry["url"].startswith(buildbot_master.api + "#/builders/")
    status = tryssh("status", *ssh.tryssh_args(), name)
    assert status.returncode == EX_TEMPFAIL, status.stderr
    assert f"job {name}: cancelled" in status.stdout
    assert "try-git: cancelled (cancelled by alice (Buildbot: CANCELLED))" in status.stdout
    again = tryssh("cancel", *ssh.tryssh_args(), name)
    assert again.returncode == 2 and "already finished (cancelled)" in again.stderr


def test_drop_in_cancel_without_api_says_it_cannot_stop_a_claimed_job(
    drop_in: tuple[Ssh, Ssh], buildbot_master: BuildbotMaster, tmp_path: Path
) -> None:
    _, ssh = drop_in
    wc = buildbot_master.checkout("git", tmp_path / "wc")
    edit(wc, BAD)
    sent = tryssh("try", *ssh.tryssh_args(), "-b", "try-git", "--json", cwd=wc,
                  env=vcs_env(tmp_path), timeout=WAIT)  # fmt: skip
    assert sent.returncode == 0, sent.stderr
    name = json.loads(sent.stdout)["job"]
    wait_until(lambda: (buildbot_master.jobdir / "cur" / name).exists(), timeout=60,
               message="Buildbot did not take the job from new/")  # fmt: skip
    cancel = tryssh("cancel", *ssh.tryssh_args(), name)
    assert cancel.returncode == EX_UNAVAILABLE, cancel.stderr
    [line] = cancel.stderr.splitlines()
    assert line.startswith(f"tryssh: this server cannot stop job {name}: Buildbot has claimed")
    assert "no [buildbot] api" in line and "consumer" not in line
    assert cancel.stdout == ""
    # Nothing was recorded that would pretend otherwise: status still cannot follow it.
    status = tryssh("status", *ssh.tryssh_args(), "--json", name)
    assert json.loads(status.stdout)["followable"] is False
    assert buildbot_master.results_by_builder(json.loads(sent.stdout)["jobid"]) == {
        "try-git": 2}  # built all the same  # fmt: skip


def test_drop_in_cancel_takes_a_queued_job_back_from_new(tmp_path: Path) -> None:
    """A job no master has taken yet (here, no master reads this jobdir) is renamed out of
    new/ into withdrawn/, where no Buildbot master looks: it never builds, and its status
    says ``cancelled``."""
    jobdir = Jobdir(str(tmp_path / "jobdir")).create()
    ssh = start_ssh(tmp_path / "ssh", f"{venv_bin('tryserver')} --jobdir {jobdir.path} "
                    "--user alice")  # fmt: skip
    try:
        wc = tmp_path / "wc"
        wc.mkdir()
        (wc / "change.diff").write_bytes(PATCH_BAD)
        sent = tryssh("try", *ssh.tryssh_args(), "-b", "try-git", "--diff", "change.diff",
                      "--baserev", "HEAD", "--json", cwd=wc, env=vcs_env(tmp_path))  # fmt: skip
        assert sent.returncode == 0, sent.stderr
        name = json.loads(sent.stdout)["job"]
        assert jobdir.pending() == [name]
        cancel = tryssh("cancel", *ssh.tryssh_args(), name)
        assert cancel.returncode == 0, cancel.stderr
        assert cancel.stdout == (f"job {name}: cancelled by alice (taken back from new/ "
                                 "before Buildbot took it)\n")  # fmt: skip
        assert jobdir.pending() == [] and os.listdir(jobdir.cur) == []
        assert os.listdir(jobdir.withdrawn) == [name]  # kept, never deleted
        status = tryssh("status", *ssh.tryssh_args(), "--json", name)
        assert status.returncode == EX_TEMPFAIL, status.stderr
        record = json.loads(status.stdout)
        assert record["state"] == "cancelled" and record["cancelled"]["by"] == "alice"
        assert record["reason"] == "cancelled by alice before Buildbot took it"
    finally:
        ssh.sshd.stop()


def test_the_admin_cancels_a_queued_drop_in_job_with_the_config(tmp_path: Path) -> None:
    """On the master, ``tryssh cancel --config`` of a drop-in config (no [buildbot] api;
    its builders are declared into its own jobdir: no consumer) takes a queued job back
    the same way; a consumer config's queued job is left to its consumer (a request)."""
    jobdir = Jobdir(str(tmp_path / "jobdir")).create()
    config = tmp_path / "tryssh.toml"
    config.write_text(f"jobdir = {toml(jobdir.path)}\n[builders.try-git]\n"
                      f"forward = {toml(jobdir.path)}\n[users.\"*\"]\n")  # fmt: skip
    name = jobdir.deliver_bytes(encode_job(Job("admin", None, None, 1, PATCH_BAD, ["try-git"],
                                               who="bob")))  # fmt: skip
    cancel = tryssh("cancel", "--config", str(config), "--json", name)
    assert cancel.returncode == 0, cancel.stderr
    answer = json.loads(cancel.stdout)
    assert answer["cancelled"] is True and answer["state"] == "cancelled"
    assert answer["message"] == "taken back from new/ before Buildbot took it"
    assert os.listdir(jobdir.withdrawn) == [name] and jobdir.pending() == []
    # A consumer's config: the request is left for the consumer, the job stays in new/.
    consumer = tmp_path / "consumer.toml"
    consumer.write_text(f"jobdir = {toml(jobdir.path)}\n[builders.lint]\n"
                        'command = ["true"]\n[users."*"]\n')  # fmt: skip
    other = jobdir.deliver_bytes(encode_job(Job("c", None, None, 1, None, ["lint"], who="bob")))
    cancel = tryssh("cancel", "--config", str(consumer), "--no-wait", other)
    assert cancel.returncode == 0, cancel.stderr
    assert "the consumer stops it" in cancel.stdout
    assert jobdir.pending() == [other]


def test_withdraw_loses_to_a_claim_and_never_deletes(tmp_path: Path) -> None:
    """A job claimed first (Buildbot's MaildirService renames new/ to cur/) cannot be
    withdrawn; one withdrawn first cannot be claimed. Either way the file is kept."""
    from tryssh.errors import TrysshError

    jobdir = Jobdir(str(tmp_path / "jobdir")).create()
    data = encode_job(Job("race", None, None, 1, PATCH_BAD, ["try-git"], who="alice"))
    first, second = jobdir.deliver_bytes(data), jobdir.deliver_bytes(data)
    jobdir.claim(first)
    assert jobdir.withdraw(first) is False
    assert os.path.exists(jobdir.cur_path(first))
    assert jobdir.withdraw(second) is True
    with pytest.raises(TrysshError, match="already taken"):
        jobdir.claim(second)
    assert Path(jobdir.withdrawn_path(second)).read_bytes() == data
    with pytest.raises(TrysshError, match="not a job name"):
        jobdir.withdraw("../cur/" + first)


def test_stop_through_the_api_cancels_a_running_try_build(buildbot_master: BuildbotMaster
                                                          ) -> None:  # fmt: skip
    """What a cancel does to a job Buildbot builds: its build ends CANCELLED, tryssh's error."""
    from tryssh.server.buildbot import Api, job_view

    slow = b"--- a/check.sh\n+++ b/check.sh\n@@ -1 +1 @@\n-grep -q good state.txt\n+sleep 120\n"
    Jobdir(str(buildbot_master.jobdir)).deliver_bytes(encode_job(Job(
        "to-be-stopped", None, None, 1, slow, ["try-git"], who="carol")))  # fmt: skip
    api = Api(buildbot_master.api)

    def running() -> bool:
        view = job_view(api, "to-be-stopped")
        return bool(view) and view["builders"].get("try-git", {}).get("state") == "running"

    wait_until(running, timeout=60, interval=0.2, message="the build did not start")
    assert api.stop("to-be-stopped", "cancelled by carol") == 1
    assert buildbot_master.results_by_builder("to-be-stopped") == {"try-git": 6}  # CANCELLED
    view = job_view(api, "to-be-stopped")
    assert view is not None and view["state"] == "error"
    assert view["builders"]["try-git"]["reason"].startswith("Buildbot: CANCELLED")
    assert api.stop("to-be-stopped", "again") == 0  # finished: nothing left to stop


def test_cancel_of_a_buildbot_builder_stops_its_build_through_the_api(front: Front,
                                                                     tmp_path: Path) -> None:
    """``tryssh cancel`` of a job Buildbot is building: the consumer asks the master to
    stop it, the build ends CANCELLED, and the job, its ``--wait`` and ``status`` end
    ``cancelled`` (not success, not a hang)."""
    wc = front.master.checkout("git", tmp_path / "wc")
    (wc / "check.sh").write_text("sleep 60\n")  # the test step hangs until stopped
    marker = f"cancel-me-{tmp_path.name}"
    [waiting] = start_all([(front.try_argv("-b", "try-git", "--wait", "-C", marker), wc)],
                          front.env())  # fmt: skip
    api = Api(front.master.api)
    store = front.store()

    def running() -> tuple[str, str] | None:
        for name in store.active_jobs():
            record = store.read(name) or {}
            jobid = record.get("builders", {}).get("try-git", {}).get("jobid")
            if record.get("comment") == marker and jobid and try_git_running(api, jobid):
                return name, jobid
        return None

    name, jobid = wait_running(front.master, running)
    cancel = subprocess.run(
        [venv_bin("tryssh"), "cancel", "--config", str(front.config), "--json", name],
        capture_output=True, text=True, timeout=WAIT, check=False, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert cancel.returncode == 0, cancel.stderr
    answer = json.loads(cancel.stdout)
    assert answer["cancelled"] is True and answer["state"] == "cancelled"
    entry = answer["record"]["builders"]["try-git"]
    assert entry["result"] == "cancelled"
    assert entry["reason"].startswith("cancelled by ")
    assert "Buildbot: CANCELLED" in entry["reason"]
    assert entry["cancel"].startswith("asked Buildbot to stop buildset ")
    assert entry["url"].startswith(front.master.api + "#/builders/")
    # Buildbot's own word: the build was stopped, not left to run out its sleep.
    assert front.master.results_by_builder(jobid) == {"try-git": 6}  # CANCELLED
    [(code, out, err)] = finish_all([waiting])
    assert code == EX_TEMPFAIL, err  # --wait ends at once, with the cancelled state
    assert json.loads(out)["result"]["state"] == "cancelled"
    status = subprocess.run(
        [venv_bin("tryssh"), "status", "--config", str(front.config), name],
        capture_output=True, text=True, timeout=WAIT, check=False, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert status.returncode == EX_TEMPFAIL, status.stderr
    assert f"job {name}: cancelled" in status.stdout
    assert "try-git: cancelled (cancelled by" in status.stdout
    assert "asked Buildbot to stop buildset" in status.stdout
    log = Path(entry["log"]).read_text()
    assert "cancel: asked Buildbot to stop buildset" in log and "result: cancelled" in log


class ReadOnlyApi:
    """Buildbot's API behind a proxy on loopback that passes every GET to the master and
    refuses every control call (POST) with 503: a stop that cannot get through."""

    def __init__(self, master: BuildbotMaster) -> None:
        import urllib.error
        import urllib.request
        from http.server import BaseHTTPRequestHandler

        self.posts: list[str] = []
        posts = self.posts

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                url = master.api + self.path.lstrip("/")
                try:
                    with urllib.request.urlopen(url, timeout=10) as answer:  # noqa: S310
                        status, body = answer.status, answer.read()
                except urllib.error.HTTPError as err:
                    status, body = err.code, err.read()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                posts.append(self.path)
                self.send_error(503, "read-only")

            def log_message(self, *args: object) -> None:
                pass

        self.http = LoopbackHttp(Handler)
        self.url = self.http.url

    def close(self) -> None:
        self.http.close()


def test_a_stop_buildbot_refuses_is_one_note_and_the_build_is_still_followed(
    buildbot_master: BuildbotMaster, tmp_path: Path
) -> None:
    """The API does not take the stop: the entry says why in one line, the consumer goes
    on claiming, and the builder ends with what Buildbot reports (here, success)."""
    import io
    import threading

    from tryssh.server.buildbot import Api, job_view
    from tryssh.server.config import load_config
    from tryssh.server.consumer import Consumer, EventLog

    proxy = ReadOnlyApi(buildbot_master)
    go = tmp_path / "go"  # the build's test step waits for it (a minute at most)
    slow = (b"--- a/check.sh\n+++ b/check.sh\n@@ -1 +1,2 @@\n"
            b"+i=0; while [ ! -e " + str(go).encode() + b" ] && [ $i -lt 600 ]; "
            b"do sleep 0.1; i=$((i+1)); done\n grep -q good state.txt\n")  # fmt: skip
    jobdir = Jobdir(str(tmp_path / "jobdir")).create()
    table = {"jobdir": str(buildbot_master.jobdir), "api": proxy.url, "poll_interval": 0.2,
             "builders": ["try-git"]}  # fmt: skip
    (tmp_path / "tryssh.toml").write_text(
        f"jobdir = {toml(jobdir.path)}\n[consume]\npoll_interval = 0.1\n"
        f"[builders.bb]\nbuildbot = {inline(table)}\n"
        '[builders.lint]\ncommand = ["true"]\n[users."*"]\n')  # fmt: skip
    store = RecordStore(str(jobdir.path) + "/state")
    out = io.StringIO()
    consumer = Consumer(load_config(str(tmp_path / "tryssh.toml")), log=EventLog(out))
    thread = threading.Thread(target=consumer.run)
    thread.start()
    try:
        jobid = f"stop-refused-{tmp_path.name}"
        name = jobdir.deliver_bytes(encode_job(Job(jobid, None, None, 1, slow, ["bb"],
                                                   who="carol")))  # fmt: skip

        def running() -> bool:
            view = job_view(Api(buildbot_master.api), jobid)
            return bool(view) and view["builders"]["try-git"]["state"] == "running"

        wait_until(running, timeout=WAIT, interval=0.2, message="the build did not start")
        store.request_cancel(name, "carol")
        entry = wait_until(lambda: (store.read(name) or {}).get("builders", {}).get("bb", {})
                           .get("cancel") and store.read(name)["builders"]["bb"],
                           timeout=WAIT, message="no cancel note")  # fmt: skip
        # The consumer goes on: another job is claimed and built meanwhile.
        other = jobdir.deliver_bytes(encode_job(Job("other", None, None, 1, None, ["lint"],
                                                    who="dave")))  # fmt: skip
        wait_until(lambda: (store.read(other) or {}).get("state") == "success", timeout=WAIT)
        assert (store.read(name) or {}).get("state") == "running"  # still followed
        go.touch()
        record = wait_until(lambda: (r := store.read(name)) and r["state"] != "running" and r,
                            timeout=WAIT, message="the job did not end")  # fmt: skip
    finally:
        go.touch()
        consumer.stop()
        thread.join(60)
        consumer.close()
        proxy.close()
    assert entry["cancel"].startswith("could not ask Buildbot to stop buildset ")
    assert entry["cancel"].endswith("(stop): HTTP 503") and "\n" not in entry["cancel"]
    assert len(proxy.posts) == 1 and proxy.posts[0].startswith("/api/v2/builds/")  # once
    final = record["builders"]["bb"]
    assert final["result"] == "success"  # what Buildbot reported: it was not stopped
    assert final["cancel"] == entry["cancel"]
    assert record["state"] == "cancelled" and record["cancelled"]["by"] == "carol"
    assert buildbot_master.results_by_builder(jobid) == {"try-git": 0}
    log = out.getvalue()
    assert "event=cancel" in log and "could not ask Buildbot" in log
    assert "Traceback" not in log


def test_restarted_consumer_follows_a_delivered_job_and_a_reused_jobid_gets_a_fresh_one(
    buildbot_master: BuildbotMaster, tmp_path: Path
) -> None:
    """A consumer that died while Buildbot built a job follows it again (the job is not
    sent twice); a job whose jobid Buildbot already knows is sent under its own name."""
    import io

    from tryssh.core.records import builder_entry, new_record
    from tryssh.server.builders import forwarded_job
    from tryssh.server.config import load_config
    from tryssh.server.consumer import Consumer, EventLog

    jobdir = Jobdir(str(tmp_path / "jobdir")).create()
    table = {"jobdir": str(buildbot_master.jobdir), "api": buildbot_master.api,
             "poll_interval": 0.2}  # fmt: skip
    (tmp_path / "tryssh.toml").write_text(
        f"jobdir = {toml(jobdir.path)}\n[builders.try-svn]\nbuildbot = {inline(table)}\n"
        '[users."*"]\n')  # fmt: skip
    config = load_config(str(tmp_path / "tryssh.toml"))
    job = Job("resume-me", None, None, 0, None, ["try-svn"], who="dave")
    # The state a consumer killed right after the hand-over leaves behind.
    name = jobdir.deliver_bytes(encode_job(job))
    jobdir.claim(name)
    Jobdir(str(buildbot_master.jobdir)).deliver_bytes(forwarded_job(job, ["try-svn"]))
    store = RecordStore(config.state_dir).create()
    store.write(new_record(name, state="running", jobid="resume-me", who="dave", builders={
        "try-svn": builder_entry(state="running", jobid="resume-me", log=str(tmp_path / "l"))}))
    # Buildbot took it (the consumer died after the hand-over), then a new job comes with
    # the same jobid.
    wait_until(lambda: buildbot_master.buildsets("resume-me"), timeout=60,
               message="Buildbot did not take the job")  # fmt: skip
    again = jobdir.deliver_bytes(encode_job(job))

    consumer = Consumer(config, log=EventLog(io.StringIO()))
    try:
        assert consumer.run(once=True) == 0
    finally:
        consumer.close()
    resumed, fresh = store.read(name), store.read(again)
    assert resumed is not None and fresh is not None
    assert resumed["state"] == "success", resumed["builders"]
    assert resumed["builders"]["try-svn"]["url"].startswith(buildbot_master.api)
    assert len(buildbot_master.buildsets("resume-me")) == 1  # followed, not sent again
    assert fresh["state"] == "success", fresh["builders"]
    assert fresh["builders"]["try-svn"]["jobid"] == again  # Buildbot knew "resume-me"
    assert len(buildbot_master.buildsets(again)) == 1
