#!/usr/bin/env python3
"""The module map of the host: files, lines, and two-way import cycles between its
top-level modules (`crate::X` uses outside comments). Usage: scripts/modgraph.py [host/src]
Prints one summary line, then each module's files, lines and what it imports."""
import itertools
import os
import re
import sys

root = sys.argv[1] if len(sys.argv) > 1 else "host/src"
deps, files, lines = {}, {}, {}
for dirpath, _, names in os.walk(root):
    for name in names:
        if not name.endswith(".rs"):
            continue
        path = os.path.join(dirpath, name)
        top = os.path.relpath(path, root).split("/")[0].removesuffix(".rs")
        text = open(path, encoding="utf-8").read()
        files[top] = files.get(top, 0) + 1
        lines[top] = lines.get(top, 0) + text.count("\n")
        code = "\n".join(l for l in text.split("\n") if not l.strip().startswith("//"))
        used = set(re.findall(r"crate::([a-z_]+)", code))
        for group in re.findall(r"crate::\{([^}]*)\}", code):
            used.update(p.strip().split("::")[0] for p in group.split(",") if p.strip())
        deps.setdefault(top, set()).update(used - {top})
mods = sorted(m for m in deps if m not in ("main", "lib"))
cycles = [(a, b) for a, b in itertools.combinations(mods, 2) if b in deps[a] and a in deps[b]]
print(f"{sum(files.values())} files, {sum(lines.values())} lines, "
      f"{len(cycles)} two-way cycles: {', '.join(f'{a}<->{b}' for a, b in cycles) or 'none'}")
for m in mods:
    print(f"  {m:14} {files[m]:3} files {lines[m]:6} lines  -> {', '.join(sorted(d for d in deps[m] if d in mods))}")
