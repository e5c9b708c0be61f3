"""Print the exact tested versions of the project's dependency closure (with the dev and postgres extras).

`make constraints` writes them to constraints.txt from the venv: `pip freeze` filtered to the
packages numerics-orchestrator needs, directly or through its dependencies. `make install` and
CI install with `pip install -c constraints.txt ...`, so a fresh machine gets what was tested,
while pyproject.toml keeps the ranges the library supports.
"""
import importlib.metadata as md
import re
import subprocess
import sys

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

seen: dict[str, set[str]] = {}
todo = [("numerics-orchestrator", {"dev", "postgres"})]
while todo:
    name, extras = todo.pop()
    key = canonicalize_name(name)
    if key in seen and extras <= seen[key]:
        continue
    seen.setdefault(key, set()).update(extras)
    try:
        dist = md.distribution(name)
    except md.PackageNotFoundError:
        continue
    for text in dist.requires or []:
        req = Requirement(text)
        if req.marker is not None and not any(req.marker.evaluate({"extra": e}) for e in (extras or {""})):
            continue
        todo.append((req.name, set(req.extras)))
freeze = subprocess.run([sys.executable, "-m", "pip", "freeze", "--exclude-editable"], capture_output=True, text=True, check=True).stdout
for line in freeze.splitlines():
    m = re.match(r"^([A-Za-z0-9_.\-]+)==([^\s;]+)", line)
    if m and canonicalize_name(m.group(1)) in seen and canonicalize_name(m.group(1)) != "numerics-orchestrator":
        # a local label (2.13.0+cpu) is dropped: ==2.13.0 matches the CPU wheel already installed
        print(f"{m.group(1)}=={m.group(2).split('+')[0]}")
