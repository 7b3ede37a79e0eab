"""Real cluster plumbing for the launch tests: Slurm (munge, slurmctld, two slurmd), sshd + pdsh.

Contract
--------
Everything here runs for real on one Debian host as root and PUTS EVERYTHING BACK:

* ``ensure_packages`` installs missing binaries with ``apt-get`` (CI is a fresh Debian 12);
* ``Daemons`` starts foreground daemons and stops each one by PID (TERM, then KILL);
* ``edited_file`` appends lines to a system file (``/etc/hosts``, ``~/.ssh/config``) and
  restores its exact previous bytes — or its absence — on exit, even when a test fails;
* ``slurm_cluster`` is a 2-node Slurm (``node1`` = 127.0.0.2, ``node2`` = 127.0.0.3, one
  slurmd each on its own port) driven through ``SLURM_CONF`` so ``/etc/slurm`` is untouched;
* ``ssh_nodes`` is an sshd on 127.0.0.1:2222 with a throwaway key, and an ssh client config
  that maps ``node1``/``node2`` onto it (what ``pdsh -R ssh`` and DeepSpeed's ssh check use).

Nothing here knows about training; the tests drive the project's launcher scripts through it.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

NODES = {"node1": "127.0.0.2", "node2": "127.0.0.3"}
SSH_PORT = 2222

# binary -> Debian package that provides it
PACKAGES = {
    "munged": "munge", "slurmctld": "slurmctld", "slurmd": "slurmd", "sbatch": "slurm-client",
    "sshd": "openssh-server", "ssh": "openssh-client", "ssh-keygen": "openssh-client", "pdsh": "pdsh",
    "pgrep": "procps",  # the launcher scripts track their children with it; slim images lack it
}


def which(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/sbin:/bin")


def ensure_packages(binaries: list[str]) -> None:
    """Install the Debian packages for any missing binary (apt-get; needs root and a mirror)."""
    missing = sorted({PACKAGES[b] for b in binaries if which(b) is None})
    if not missing:
        return
    if os.geteuid() != 0:
        raise RuntimeError(f"launch tests need root to install {missing}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing]
    if subprocess.run(install, env=env, capture_output=True).returncode != 0:
        # A fresh machine has no package lists yet.
        subprocess.run(["apt-get", "update", "-q"], env=env, check=True, capture_output=True)
        subprocess.run(install, env=env, check=True, capture_output=True)


@dataclass
class Daemons:
    """Foreground daemons started by this process; ``stop_all`` ends each by its own PID."""

    procs: list[tuple[str, subprocess.Popen]] = field(default_factory=list)

    def start(self, name: str, cmd: list[str], log: Path, **kwargs) -> subprocess.Popen:
        fh = open(log, "ab")
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, **kwargs)
        fh.close()
        self.procs.append((name, proc))
        return proc

    def check_alive(self) -> None:
        for name, proc in self.procs:
            if proc.poll() is not None:
                raise RuntimeError(f"daemon {name} (pid {proc.pid}) exited with {proc.returncode}")

    def stop_all(self, grace: float = 15) -> None:
        """SIGTERM each daemon, SIGKILL what is still alive after ``grace`` seconds."""
        for _, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.time() + grace
        for _, proc in reversed(self.procs):
            try:
                proc.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()


@contextlib.contextmanager
def edited_file(path: Path, text: str, *, prepend: bool = False) -> Iterator[None]:
    """Add ``text`` to ``path`` for the duration; restore the old bytes (or absence) after.

    Written in place (not rename) because /etc/hosts is often a bind mount in containers.
    """
    old = path.read_bytes() if path.exists() else None
    made_parent = not path.parent.exists()
    path.parent.mkdir(parents=True, exist_ok=True)
    base = (old or b"").decode()
    if base and not base.endswith("\n"):
        base += "\n"
    new = text + base if prepend else base + text
    try:
        with open(path, "w") as fh:
            fh.write(new)
        yield
    finally:
        if old is None:
            path.unlink(missing_ok=True)
            if made_parent:
                with contextlib.suppress(OSError):
                    path.parent.rmdir()
        else:
            with open(path, "wb") as fh:
                fh.write(old)


@contextlib.contextmanager
def run_dir(path: Path, owner: str | None = None) -> Iterator[None]:
    """Make ``path`` (e.g. /run/munge) if missing, remove it afterwards only if we made it."""
    made = not path.exists()
    path.mkdir(parents=True, exist_ok=True)
    if owner:
        shutil.chown(path, owner, owner)
    try:
        yield
    finally:
        if made:
            shutil.rmtree(path, ignore_errors=True)


def hosts_text() -> str:
    return "".join(f"{addr} {name}  # adaspec-dist launch tests\n" for name, addr in NODES.items())


def wait_for(predicate, timeout: float, what: str, poll: float = 0.5, daemons: Daemons | None = None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if daemons:
            daemons.check_alive()
        result = predicate()
        if result:
            return result
        time.sleep(poll)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


# ----------------------------------------------------------------------------- munge + Slurm
def munge_works() -> bool:
    enc = subprocess.run(["munge", "-n"], capture_output=True)
    if enc.returncode != 0:
        return False
    return subprocess.run(["unmunge"], input=enc.stdout, capture_output=True).returncode == 0


def slurm_conf(tmp: Path) -> str:
    """A 2-node, no-accounting, no-cgroup Slurm config whose state lives under ``tmp``."""
    nodes = "".join(
        f"NodeName={name} NodeAddr={addr} NodeHostname={name} Port={17001 + i} CPUs=1 RealMemory=1000 State=UNKNOWN\n"
        for i, (name, addr) in enumerate(NODES.items()))
    return f"""ClusterName=adaspec
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort=16817
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation={tmp}/ctld
SlurmdSpoolDir={tmp}/spool/%n
SlurmctldPidFile={tmp}/slurmctld.pid
SlurmdPidFile={tmp}/slurmd.%n.pid
SlurmctldLogFile={tmp}/slurmctld.log
SlurmdLogFile={tmp}/slurmd.%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/builtin
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=300
KillWait=30
JobRequeue=1
{nodes}PartitionName=debug Nodes={",".join(NODES)} Default=YES MaxTime=INFINITE State=UP
"""


@dataclass
class Slurm:
    conf: Path
    tmp: Path
    env: dict[str, str]

    def run(self, *cmd: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        proc = subprocess.run(list(cmd), env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stdout}{proc.stderr}\n"
                                 f"{self.logs()}")
        return proc

    def node_states(self) -> dict[str, str]:
        out = self.run("sinfo", "-N", "-h", "-o", "%N %T", check=False).stdout
        return dict(line.split()[:2] for line in out.splitlines() if line.strip())

    def job_field(self, job_id: str, fmt: str) -> str:
        return self.run("squeue", "-h", "-j", job_id, "-o", fmt, check=False).stdout.strip()

    def job_info(self, job_id: str) -> dict[str, str]:
        """``scontrol show job`` as a flat key -> value map (works for finished jobs until MinJobAge)."""
        out = self.run("scontrol", "-o", "show", "job", job_id).stdout
        info = {}
        for tok in out.split():
            if "=" in tok:
                key, value = tok.split("=", 1)
                info[key] = value
        return info

    def start_now(self, job_id: str) -> None:
        """Let a requeued job start at once (Slurm holds requeued jobs ~2 min via BeginTime)."""
        self.run("scontrol", "update", f"JobId={job_id}", "StartTime=now", check=False)

    def cancel_all(self, timeout: float = 60) -> None:
        """Cancel this cluster's jobs and wait until none is left (steps must not outlive slurmd)."""
        self.run("scancel", "--user=root", check=False)
        try:
            wait_for(lambda: not self.run("squeue", "-h", check=False).stdout.strip(), timeout, "jobs to end")
        except TimeoutError:
            pass  # leftover processes are ended below, by PID

    def logs(self) -> str:
        parts = []
        for log in sorted(self.tmp.glob("slurm*.log")):
            parts.append(f"--- {log.name} (tail)\n" + "\n".join(log.read_text(errors="replace").splitlines()[-25:]))
        return "\n".join(parts)


@contextlib.contextmanager
def slurm_cluster(tmp: Path, base_env: dict[str, str]) -> Iterator[Slurm]:
    """munged + slurmctld + slurmd node1/node2 on loopback; all stopped by PID on exit."""
    ensure_packages(["munged", "slurmctld", "slurmd", "sbatch"])
    tmp.mkdir(parents=True, exist_ok=True)
    for sub in ("ctld", "spool/node1", "spool/node2"):
        (tmp / sub).mkdir(parents=True, exist_ok=True)
    conf = tmp / "slurm.conf"
    conf.write_text(slurm_conf(tmp))
    env = dict(base_env, SLURM_CONF=str(conf))
    daemons = Daemons()
    with contextlib.ExitStack() as stack:
        stack.enter_context(edited_file(Path("/etc/hosts"), hosts_text()))
        # ExitStack unwinds LIFO: daemons stop first, then the dirs and files are put back.
        stack.callback(daemons.stop_all)
        if not munge_works():
            key = Path("/etc/munge/munge.key")
            if not key.exists():
                subprocess.run(["mungekey", "--create", "--keyfile", str(key)], check=True)
                shutil.chown(key, "munge", "munge")
            stack.enter_context(run_dir(Path("/run/munge"), owner="munge"))
            daemons.start("munged", ["/usr/sbin/munged", "-F", "--force"], tmp / "munged.log",
                          user="munge", group="munge")
            wait_for(munge_works, 20, "munged", daemons=daemons)
        daemons.start("slurmctld", ["/usr/sbin/slurmctld", "-D", "-i", "-f", str(conf)], tmp / "slurmctld.out",
                      env=env)
        slurm = Slurm(conf=conf, tmp=tmp, env=env)
        wait_for(lambda: slurm.run("scontrol", "ping", check=False).stdout.count("UP") > 0, 30,
                 "slurmctld", daemons=daemons)
        for name in NODES:
            daemons.start(f"slurmd-{name}", ["/usr/sbin/slurmd", "-D", "-N", name, "-f", str(conf)],
                          tmp / f"slurmd-{name}.out", env=env)
        try:
            wait_for(lambda: all(s.startswith("idle") for s in slurm.node_states().values())
                     and len(slurm.node_states()) == len(NODES), 60, "2 idle Slurm nodes", daemons=daemons)
        except TimeoutError as err:
            raise TimeoutError(f"{err}: {slurm.node_states()}\n{slurm.logs()}") from None
        stack.callback(kill_leftovers, conf)
        stack.callback(slurm.cancel_all)
        yield slurm


def kill_leftovers(conf: Path) -> None:
    """End, by PID, the processes of this cluster that outlived it (job steps, slurmstepd).

    slurmstepd detaches from slurmd, so stopping slurmd leaves running steps behind; every
    process of this cluster carries ``SLURM_CONF=<conf>`` in its environment, nothing else does.
    """
    marker = f"SLURM_CONF={conf}".encode()
    me = os.getpid()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            if marker in (entry / "environ").read_bytes().split(b"\0"):
                pids.append(int(entry.name))
        except OSError:
            continue
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        if sig == signal.SIGTERM and pids:
            time.sleep(3)


# ----------------------------------------------------------------------------- sshd + pdsh
@dataclass
class SshNodes:
    key: Path
    port: int
    tmp: Path

    def ssh(self, host: str, command: str) -> subprocess.CompletedProcess:
        return subprocess.run(["ssh", "-o", "PasswordAuthentication=no", host, command],
                              capture_output=True, text=True, timeout=30)


@contextlib.contextmanager
def ssh_nodes(tmp: Path) -> Iterator[SshNodes]:
    """sshd on 127.0.0.1:2222 (throwaway keys) + a client config for node1/node2 + hosts entries."""
    ensure_packages(["sshd", "ssh", "ssh-keygen", "pdsh"])
    tmp.mkdir(parents=True, exist_ok=True)
    host_key, user_key = tmp / "ssh_host_ed25519_key", tmp / "id_ed25519"
    for key in (host_key, user_key):
        if not key.exists():
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    (tmp / "authorized_keys").write_text(Path(str(user_key) + ".pub").read_text())
    sshd_config = tmp / "sshd_config"
    sshd_config.write_text(f"""Port {SSH_PORT}
ListenAddress 127.0.0.1
HostKey {host_key}
PidFile {tmp}/sshd.pid
AuthorizedKeysFile {tmp}/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
StrictModes no
UsePAM no
AcceptEnv LANG LC_*
""")
    client = f"""# adaspec-dist launch tests (removed when the tests end)
Host {" ".join(NODES)}
  HostName 127.0.0.1
  Port {SSH_PORT}
  User root
  IdentityFile {user_key}
  IdentitiesOnly yes
  StrictHostKeyChecking no
  UserKnownHostsFile /dev/null
  LogLevel ERROR

"""
    daemons = Daemons()
    with contextlib.ExitStack() as stack:
        stack.enter_context(edited_file(Path("/etc/hosts"), hosts_text()))
        # ssh uses the first value it reads: our block goes on top of any existing config.
        stack.enter_context(edited_file(Path.home() / ".ssh" / "config", client, prepend=True))
        stack.enter_context(run_dir(Path("/run/sshd")))  # sshd's privilege-separation dir
        stack.callback(daemons.stop_all)  # LIFO: daemons stop before files and dirs are restored
        daemons.start("sshd", [which("sshd"), "-D", "-e", "-f", str(sshd_config)], tmp / "sshd.log")
        nodes = SshNodes(key=user_key, port=SSH_PORT, tmp=tmp)
        try:
            wait_for(lambda: nodes.ssh("node1", "true").returncode == 0, 20, "sshd on 127.0.0.1:2222",
                     daemons=daemons)
        except TimeoutError as err:
            raise TimeoutError(f"{err}: {nodes.ssh('node1', 'true').stderr}\n"
                               f"{(tmp / 'sshd.log').read_text(errors='replace')[-2000:]}") from None
        yield nodes
