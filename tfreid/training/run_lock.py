"""One writer per run directory: a lock file MODEL_DIR/.tfreid.lock.

Two trainings started on one --model_dir would otherwise write a mix of both runs
(checkpoints, config.yaml, summaries) and both exit 0. The chief takes the lock when its
Trainer starts and releases it when the process ends; a second writer is refused with a
message naming the first (host, process id, start time, command).

- A lock left by a process that no longer runs (kill -9, a crashed machine) on this host is
  taken over: the process id is checked, and so is its start time (a process id reused by
  another program is not mistaken for the run).
- A lock of another host (shared storage, e.g. a multi-worker run's model_dir on a network
  file system) cannot be checked from here: the message says how to remove it if that run
  is gone. Only the chief of a multi-worker run takes the lock; its workers write scratch
  files elsewhere.
- The lock is created with O_CREAT | O_EXCL, atomic on local file systems and on NFS v3+;
  object stores (gs://) have no such primitive, and no lock is taken there.
"""

from __future__ import annotations

import atexit
import json
import os
import socket
import sys
import time

LOCK_NAME = ".tfreid.lock"
_HELD: list[str] = []


class RunDirectoryBusy(RuntimeError):
  """Another process is writing to this run directory."""


def _start_time(pid: int) -> str | None:
  """The process's start time in clock ticks since boot (Linux), or None."""
  try:
    with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
      return f.read().rsplit(")", 1)[1].split()[19]
  except (OSError, IndexError):
    return None


def _alive(pid: int, start: str | None) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  now = _start_time(pid)
  return start is None or now is None or now == start


def _describe(owner: dict) -> str:
  started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(owner.get("time", 0)))
  return (f"process {owner.get('pid')} on host {owner.get('host')!r}, started {started}: "
          f"{owner.get('command', '?')}")


def acquire(model_dir: str) -> str | None:
  """Takes the lock of `model_dir` for this process; returns its path (None where no lock
  can be taken: an object-store path). Raises RunDirectoryBusy naming the owner."""
  if "://" in model_dir:
    return None
  os.makedirs(model_dir, exist_ok=True)
  path = os.path.join(model_dir, LOCK_NAME)
  me = {"pid": os.getpid(), "host": socket.gethostname(), "time": time.time(),
        "start": _start_time(os.getpid()), "command": " ".join(sys.argv)[:300]}
  for _ in range(3):
    try:
      fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      try:
        with open(path, encoding="utf-8") as f:
          owner = json.load(f)
      except (OSError, ValueError):
        owner = {}
      if owner.get("host") == me["host"] and owner.get("pid") == me["pid"]:
        return path  # this process already holds it (a second Trainer in one program)
      if owner.get("host") == me["host"] and isinstance(owner.get("pid"), int) and not _alive(
          owner["pid"], owner.get("start")):
        os.remove(path)  # left by a process that is gone (kill -9): take it over
        continue
      if not owner:
        raise RunDirectoryBusy(
            f"{model_dir} has an unreadable lock file {path}: another run may be writing "
            "there. If none is, delete the file and run again.")
      where = ("" if owner.get("host") == me["host"] else
               " It runs on another host, which cannot be checked from here: if that run is "
               f"gone, delete {path} and run again.")
      raise RunDirectoryBusy(
          f"{model_dir} is in use by another training run ({_describe(owner)}). Two runs "
          "writing one directory would mix their checkpoints: wait for it, stop it, or use "
          f"another --model_dir.{where}")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
      json.dump(me, f)
    if not _HELD:
      atexit.register(release_all)
    _HELD.append(path)
    return path
  raise RunDirectoryBusy(f"could not take the lock {path}; run again.")


def release(path: str | None) -> None:
  """Removes the lock if this process holds it."""
  if not path:
    return
  try:
    with open(path, encoding="utf-8") as f:
      owner = json.load(f)
    if owner.get("pid") == os.getpid() and owner.get("host") == socket.gethostname():
      os.remove(path)
  except (OSError, ValueError):
    pass


def release_all() -> None:
  """Releases every lock this process took (at exit, also on an error exit)."""
  while _HELD:
    release(_HELD.pop())
