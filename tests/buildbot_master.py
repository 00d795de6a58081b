"""A real Buildbot master and worker for tests, loaded from ``contrib/master.cfg``.

:class:`BuildbotMaster` owns a directory with a master (sqlite), two workers, a git, an hg
and an svn repository (each holding ``state.txt`` and the test step's ``check.sh``, which
passes while ``state.txt`` says ``good``) and the master's ``Try_Jobdir``. Ports are chosen
at run time on 127.0.0.1; the jobdir is polled every 0.2 s instead of Buildbot's 10 s.
Both daemons run in the foreground (``twistd --nodaemon``) as our children and are
stopped by pid.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from helpers import GIT_ENV, free_port, wait_until

CONTRIB_CFG = Path(__file__).resolve().parent.parent / "contrib" / "master.cfg"
CHECK = b"grep -q good state.txt\n"
START_TIMEOUT = 60.0
# Two workers: a builder runs two builds at once (a test's passing and failing change).
WORKERS = (("worker1", "pass"), ("worker2", "pass"))


def _bin(name: str) -> str:
    path = Path(sys.executable).parent / name
    return str(path) if path.exists() else shutil.which(name) or name


def _run(argv: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, check=False, timeout=120,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    if result.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed: {result.stderr.decode(errors='replace')[-2000:]}")
    return result.stdout.decode().strip()


def vcs_env(home: Path) -> dict[str, str]:
    """A VCS environment with a fixed identity and no user or system config."""
    return {**os.environ, **GIT_ENV, "HOME": str(home), "HGUSER": "Alice <alice@example.org>",
            "HGRCPATH": "", "LC_ALL": "C"}  # fmt: skip


class BuildbotMaster:
    """A master and a worker in *directory*; :meth:`start`, then :meth:`stop`."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.master_dir = directory / "master"
        self.worker_dirs = [directory / name for name, _ in WORKERS]
        self.jobdir = directory / "jobdir"
        self.home = directory / "home"
        self.www_port = 0
        self.pb_port = 0
        self.procs: list[subprocess.Popen[bytes]] = []
        self.repos: dict[str, str] = {}

    @property
    def api(self) -> str:
        """The web server's base URL (the REST API is under ``api/v2``)."""
        return f"http://127.0.0.1:{self.www_port}/"

    # -- set-up --

    def _make_repos(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        env = vcs_env(self.home)
        seed = self.dir / "seed"
        seed.mkdir()
        (seed / "state.txt").write_text("good\n")
        (seed / "check.sh").write_bytes(CHECK)
        git_seed = self.dir / "git-seed"
        shutil.copytree(seed, git_seed)
        _run(["git", "init", "-q", "-b", "main"], git_seed, env)
        _run(["git", "add", "."], git_seed, env)
        _run(["git", "commit", "-q", "-m", "base"], git_seed, env)
        _run(["git", "clone", "-q", "--bare", str(git_seed), str(self.dir / "repo.git")],
             self.dir, env)  # fmt: skip
        self.repos["git"] = str(self.dir / "repo.git")
        hg_repo = self.dir / "repo.hg"
        shutil.copytree(seed, hg_repo)
        _run(["hg", "init"], hg_repo, env)
        _run(["hg", "commit", "-q", "-A", "-m", "base"], hg_repo, env)
        self.repos["hg"] = str(hg_repo)
        svn_repo = self.dir / "repo.svn"
        _run(["svnadmin", "create", str(svn_repo)], self.dir, env)
        url = f"file://{svn_repo}"
        _run(["svn", "import", "-q", "-m", "base", str(seed), url], self.dir, env)
        self.repos["svn"] = url

    def checkout(self, vc: str, dest: Path) -> Path:
        """A working copy of the *vc* repository at *dest*, tracking it."""
        env = vcs_env(self.home)
        if vc == "git":
            _run(["git", "clone", "-q", self.repos["git"], str(dest)], self.dir, env)
        elif vc == "hg":
            _run(["hg", "clone", "-q", self.repos["hg"], str(dest)], self.dir, env)
        else:
            _run(["svn", "checkout", "-q", self.repos["svn"], str(dest)], self.dir, env)
        return dest

    def env(self) -> dict[str, str]:
        """The environment the master reads its settings from (contrib master.cfg)."""
        return {
            **os.environ,
            "TRYSSH_BB_JOBDIR": str(self.jobdir),
            "TRYSSH_BB_WWW": f"tcp:{self.www_port}:interface=127.0.0.1",
            "TRYSSH_BB_URL": self.api,
            "TRYSSH_BB_PB": f"tcp:{self.pb_port}:interface=127.0.0.1",
            "TRYSSH_BB_WORKERS": ",".join(":".join(w) for w in WORKERS),
            "TRYSSH_BB_GIT": self.repos["git"],
            "TRYSSH_BB_HG": self.repos["hg"],
            "TRYSSH_BB_SVN": self.repos["svn"],
            "TRYSSH_BB_POLL": "0.2",
        }

    def start(self) -> BuildbotMaster:
        from tryssh.core.jobdir import Jobdir

        self._make_repos()
        Jobdir(str(self.jobdir)).create()
        self.www_port, self.pb_port = free_port(), free_port()
        env = vcs_env(self.home)
        _run([_bin("buildbot"), "create-master", "-q", str(self.master_dir)], self.dir, env)
        shutil.copy(CONTRIB_CFG, self.master_dir / "master.cfg")
        for where, worker in zip(self.worker_dirs, WORKERS, strict=True):
            _run([_bin("buildbot-worker"), "create-worker", "-q", str(where),
                  f"127.0.0.1:{self.pb_port}", *worker], self.dir, env)  # fmt: skip
        run_env = {**self.env(), **{k: v for k, v in env.items() if k not in os.environ}}
        run_env["HOME"] = str(self.home)
        for where in (self.master_dir, *self.worker_dirs):
            self.procs.append(subprocess.Popen(
                [_bin("twistd"), "--nodaemon", "--no_save", "--pidfile=", "-y", "buildbot.tac"],
                cwd=where, env=run_env, stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            ))  # fmt: skip
        try:
            wait_until(self._ready, timeout=START_TIMEOUT, interval=0.2,
                       message=lambda: f"Buildbot did not start:\n{self.log_tail()}")  # fmt: skip
        except BaseException:
            self.stop()
            raise
        return self

    def _ready(self) -> bool:
        for proc in self.procs:
            if proc.poll() is not None:
                raise AssertionError(f"Buildbot exited ({proc.returncode}):\n{self.log_tail()}")
        try:
            with urllib.request.urlopen(self.api + "api/v2/workers", timeout=10) as response:  # noqa: S310
                workers = json.loads(response.read())["workers"]
        except (OSError, http.client.HTTPException, ValueError):
            return False
        # Ready when every worker is attached to every builder.
        return len(workers) == len(WORKERS) and all(
            len(w["connected_to"]) == 1 and len(w["configured_on"]) == len(self.repos)
            for w in workers
        )

    def log_tail(self, lines: int = 40) -> str:
        text = []
        for where in (self.master_dir, *self.worker_dirs):
            try:
                text += (where / "twistd.log").read_text(errors="replace").splitlines()[-lines:]
            except OSError:
                pass
        return "\n".join(text)

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()

    # -- the REST API --

    def get(self, path: str) -> Any:
        """``GET`` *path* as JSON. Buildbot's web server under load sometimes ends an answer
        early (IncompleteRead): asked again until a deadline."""
        problems: list[str] = []

        def attempt() -> Any:
            try:
                with urllib.request.urlopen(self.api + path, timeout=10) as response:  # noqa: S310
                    return [json.loads(response.read())]
            except (OSError, http.client.HTTPException, ValueError) as err:
                problems.append(f"{type(err).__name__}: {err}")
                return None

        return wait_until(attempt, timeout=30, interval=0.1,
                          message=lambda: f"GET {path}: {problems[-3:]}")[0]  # fmt: skip

    def buildsets(self, jobid: str) -> list[dict[str, Any]]:
        """The buildsets Buildbot made for the job with this ``jobid``."""
        from urllib.parse import quote

        return self.get(
            f"api/v2/buildsets?external_idstring={quote(jobid)}&field=bsid"
            "&field=external_idstring&field=results&field=complete"
        )["buildsets"]

    def builds(self, bsid: int) -> list[dict[str, Any]]:
        """Every build of buildset *bsid*, with its builder's name as ``builder``."""
        names = {b["builderid"]: b["name"] for b in self.get("api/v2/builders")["builders"]}
        found = []
        for request in self.get(f"api/v2/buildrequests?buildsetid={bsid}")["buildrequests"]:
            brid = request["buildrequestid"]
            for build in self.get(f"api/v2/builds?buildrequestid={brid}")["builds"]:
                build["builder"] = names[build["builderid"]]
                found.append(build)
        return found

    def wait_complete(self, jobid: str, timeout: float = 60.0) -> list[dict[str, Any]]:
        """The finished buildsets of *jobid*, once every one of them is complete."""

        def done() -> list[dict[str, Any]] | None:
            sets = self.buildsets(jobid)
            return sets if sets and all(s["complete"] for s in sets) else None

        return wait_until(done, timeout=timeout, interval=0.2,
                          message=lambda: f"no complete buildset for {jobid}:\n{self.log_tail()}")

    def results_by_builder(self, jobid: str, timeout: float = 60.0) -> dict[str, int]:
        """Buildbot's result code per builder name for the job *jobid* (waits for it)."""
        results = {}
        for buildset in self.wait_complete(jobid, timeout):
            for build in self.builds(buildset["bsid"]):
                results[build["builder"]] = build["results"]
        return results

