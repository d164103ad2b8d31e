"""Run every fenced command of README.md as a user of a fresh clone would, offline.

What runs: each line of a ```bash block (continuation lines joined) and each
```python block, in a copy of this checkout's tracked files, with the environment
already set up (``.venv``; ``GDMCOM_SETUP=0`` so ``scripts/demo.sh`` does not
repeat ``scripts/setup.sh``), ``HF_HUB_OFFLINE=1`` and one torch thread per
command (``OMP_NUM_THREADS=1``; several commands run at once, ``--jobs``).

How a line is read:
- a trailing comment with ``[GPU]``, ``[network]`` (``[GPU, network]`` ...) or
  ``[not run by scripts/readme-check.sh]`` marks a line that is listed and
  skipped, with the count printed;
- ``. FILE`` / ``source FILE`` (``. .venv/bin/activate``) is run before every
  later line of its block;
- a line ending in ``&`` starts a service (``gdmcom serve ... &``): it starts
  before the other lines, must print its first line of output (its "listening"
  line) and must still run when they are done; then it is stopped;
- a line repeated word for word runs once.

Each line runs in its own ``bash -c`` from the copy's root, several at once in
README order, so no line may need another's output (the README's lines are
independent examples; they share the copy's folders, ``out/...``).  A line that
fails prints itself and the tail of its output, and the check exits 1.

    bash scripts/readme-check.sh [--jobs N] [--list]     # after scripts/setup.sh
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

ROOT = Path(__file__).resolve().parent.parent
#: A trailing-comment tag that keeps a line out of the offline check.
SKIP_TAG = re.compile(r"\[(?:GPU|network)[^\]]*\]|\[not run by scripts/readme-check\.sh\]")
FENCE = re.compile(r"^```(bash|python)[ \t]*\n(.*?)^```", flags=re.S | re.M)


@dataclass
class Command:
    """One fenced command: its text as written, how to run it, and why not."""

    text: str
    kind: str  # "bash" or "python"
    words: List[str] = field(default_factory=list)  # shell words, comment dropped (bash)
    prefix: List[str] = field(default_factory=list)  # `. FILE` lines before it in its block
    skip: Optional[str] = None  # the tag that keeps it out
    background: bool = False  # ends in `&`: a service
    same_as: Optional[int] = None  # index of the identical line that runs instead

    def script(self) -> str:
        """The bash script that runs this line (the service without its `&`)."""
        line = shlex.join(self.words[:-1]) if self.background else self.text
        return "\n".join(["set -e", *self.prefix, line])


def commands(readme: str) -> List[Command]:
    """The fenced commands of a README text, in order."""
    out: List[Command] = []
    seen = {}
    for kind, body in FENCE.findall(readme):
        if kind == "python":
            out.append(Command(text=body, kind="python"))
            continue
        prefix: List[str] = []
        for line in body.replace("\\\n", " ").splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            words = shlex.split(line, comments=True)
            if words[0] in (".", "source"):
                prefix.append(line)
                continue
            cmd = Command(text=line, kind="bash", words=words, prefix=list(prefix))
            tag = SKIP_TAG.search(line)
            cmd.skip = tag.group(0) if tag else None
            cmd.background = words[-1] == "&"
            key = (tuple(words), tuple(prefix))
            if cmd.skip is None and key in seen:
                cmd.same_as = seen[key]
            elif cmd.skip is None:
                seen[key] = len(out)
            out.append(cmd)
    return out


def copy_checkout(work: Path) -> None:
    """The tracked files of this checkout (as they are in the working tree), and its .venv."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for name in filter(None, files.decode().split("\0")):
        src, dst = ROOT / name, work / name
        if src.is_file():
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_bytes(src.read_bytes())
            dst.chmod(src.stat().st_mode)
    (work / ".venv").symlink_to(ROOT / ".venv")


def environment(work: Path) -> dict:
    """A fresh clone's shell after set-up, offline, with one torch thread per command."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", GDMCOM_SETUP="0", GDMCOM_NO_GRC_CONFIG="1",
               OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(work),
               GRC_BLOCKS_PATH=str(work / "grc"))
    env.pop("VIRTUAL_ENV", None)
    return env


class Runner:
    """Runs commands in the copy, prints one line each, and keeps the failures and CPU seconds."""

    def __init__(self, work: Path, env: dict, timeout: float):
        self.work, self.env, self.timeout = work, env, timeout
        self.failed: List[str] = []
        self.cpu = 0.0
        self.lock = threading.Lock()

    def argv(self, i: int, cmd: Command) -> List[str]:
        if cmd.kind == "python":
            path = self.work / f"readme_block{i}.py"
            path.write_text(cmd.text)
            return [str(self.work / ".venv" / "bin" / "python"), path.name]
        return ["bash", "-c", cmd.script()]

    def report(self, ok: bool, seconds: float, cmd: Command, log: Path, why: str = "",
               cpu: Optional[float] = None) -> None:
        shown = cmd.text if cmd.kind == "bash" else "python block:\n" + cmd.text.rstrip()
        cpu_s = "" if cpu is None else f" ({cpu:5.1f} s CPU)"
        with self.lock:
            self.cpu += cpu or 0.0
            print(f"{'ok  ' if ok else 'FAIL'} {seconds:6.1f} s{cpu_s}  {shown}{why}", flush=True)
            if not ok:
                self.failed.append(cmd.text if cmd.kind == "bash" else f"python block ({cmd.text.strip().splitlines()[0]} ...)")
                for line in log.read_text(errors="replace").splitlines()[-25:] if log.exists() else []:
                    print("       | " + line, flush=True)

    def run(self, i: int, cmd: Command) -> None:
        log = self.work / f"readme_log{i}.txt"
        t0 = time.monotonic()
        with open(log, "w") as f:
            proc = subprocess.Popen(self.argv(i, cmd), cwd=self.work, env=self.env, stdin=subprocess.DEVNULL,
                                    stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        timed_out = threading.Event()

        def kill():
            timed_out.set()
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:  # it ended just now
                pass

        timer = threading.Timer(self.timeout, kill)
        timer.start()
        _, status, usage = os.wait4(proc.pid, 0)  # its own CPU time, whatever else runs on the machine
        timer.cancel()
        proc.returncode = rc = os.waitstatus_to_exitcode(status)
        try:
            os.killpg(proc.pid, signal.SIGTERM)  # anything it left running
        except ProcessLookupError:
            pass
        why = ("" if rc == 0 else f"    (timed out after {self.timeout:g} s)" if timed_out.is_set()
               else f"    (exit status {rc})" if rc > 0 else f"    (killed by signal {-rc})")
        self.report(rc == 0, time.monotonic() - t0, cmd, log, why, cpu=usage.ru_utime + usage.ru_stime)

    def start(self, i: int, cmd: Command, ready_s: float = 180.0):
        """Start a service; None when it did not print its first line and stay up."""
        log = self.work / f"readme_log{i}.txt"
        t0 = time.monotonic()
        with open(log, "w") as f:
            proc = subprocess.Popen(self.argv(i, cmd), cwd=self.work, env=self.env, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=f, start_new_session=True, text=True)
        first = []
        reader = threading.Thread(target=lambda: first.append(proc.stdout.readline()), daemon=True)
        reader.start()
        reader.join(ready_s)
        if first and first[0] and proc.poll() is None:
            threading.Thread(target=proc.stdout.read, daemon=True).start()  # keep its pipe drained
            with self.lock:
                print(f"up   {time.monotonic() - t0:6.1f} s  {cmd.text}\n       | {first[0].rstrip()}", flush=True)
            return proc, t0
        stop(proc)
        self.report(False, time.monotonic() - t0, cmd, log, "    (service: no first line of output, or it exited)")
        return None

    def finish(self, cmd: Command, proc, t0: float, log: Path) -> None:
        alive = proc.poll() is None
        stop(proc)
        self.report(alive, time.monotonic() - t0, cmd, log, "" if alive else
                    f"    (service exited with status {proc.returncode} before the other lines were done)")


def stop(proc) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--readme", default=str(ROOT / "README.md"), help="the file whose fenced commands run")
    p.add_argument("--jobs", type=int, default=int(os.environ.get("GDMCOM_README_JOBS", 0)) or os.cpu_count(),
                   help="lines run at once, each with one torch thread [default: GDMCOM_README_JOBS or the CPUs]")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per line [default=%(default)r]")
    p.add_argument("--list", action="store_true", help="print what would run and what is skipped, run nothing")
    args = p.parse_args(argv)
    cmds = commands(Path(args.readme).read_text())
    todo = [(i, c) for i, c in enumerate(cmds) if c.skip is None and c.same_as is None]
    skipped = [c for c in cmds if c.skip]
    print(f"readme-check: {len(cmds)} fenced commands in {args.readme}: {len(todo)} to run ({args.jobs} at once), "
          f"{sum(c.same_as is not None for c in cmds)} repeated, {len(skipped)} marked and skipped", flush=True)
    if args.list:
        for c in cmds:
            state = f"skip {c.skip}" if c.skip else f"same as {c.same_as}" if c.same_as is not None else "run"
            print(f"{state:30s} {c.text if c.kind == 'bash' else 'python block'}")
        return 0
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="readme-check.") as tmp:
        work = Path(tmp)
        copy_checkout(work)
        runner = Runner(work, environment(work), args.timeout)
        services = []
        try:
            for i, c in todo:
                if c.background:
                    started = runner.start(i, c)
                    if started:
                        services.append((c, *started, work / f"readme_log{i}.txt"))
            with ThreadPoolExecutor(max(1, args.jobs)) as pool:
                list(pool.map(lambda ic: runner.run(*ic), [(i, c) for i, c in todo if not c.background]))
        finally:
            for c, proc, started_at, log in services:
                runner.finish(c, proc, started_at, log)
    for c in skipped:
        print(f"skip {c.skip:12s}  {c.text}")
    print(f"readme-check: {len(todo) - len(runner.failed)} ok, {len(runner.failed)} failed, {len(skipped)} skipped "
          f"(marked [GPU]/[network]/not run here), {time.monotonic() - t0:.0f} s "
          f"({runner.cpu:.0f} s CPU)", flush=True)
    for text in runner.failed:
        print(f"readme-check: FAILED: {text}")
    return 1 if runner.failed else 0


if __name__ == "__main__":
    sys.exit(main())
