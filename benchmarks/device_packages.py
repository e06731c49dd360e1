"""A folder of links to this machine's installs of the named packages (and what those installs require) only, so
the GPU session's dry run (benchmarks/gpu_session.sh) runs in a Python that sees what the GPU machine has and
nothing more: a package the benchmark needs but the device lacks fails the dry run here instead of the device run
there. Requirements come along because this machine's versions differ from the device's (its huggingface-hub
needs httpx2, the device's httpx): the device's own set is consistent there.

    python benchmarks/device_packages.py DIR torch transformers pillow ...
"""

from __future__ import annotations

import sys
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path


def top_level_paths(name: str) -> set[Path]:
    """The top-level files and folders of installed distribution `name` (its modules and its .dist-info)."""
    dist = distribution(name)
    base = Path(str(dist.locate_file("")))
    tops = set()
    for file in dist.files or ():
        first = Path(file).parts[0]
        if first == ".." or first == "__pycache__" or first.endswith(".data"):
            continue  # scripts installed outside site-packages, and wheel data folders
        tops.add(base / first)
    return tops


def with_requirements(names: list[str]) -> tuple[set[str], list[str]]:
    """`names` and every distribution their installs here require (markers evaluated, extras left out), and the
    names not installed here."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    found: set[str] = set()
    missing: list[str] = []
    todo = list(names)
    while todo:
        name = canonicalize_name(todo.pop())
        if name in found:
            continue
        try:
            dist = distribution(name)
        except PackageNotFoundError:
            missing.append(name)
            continue
        found.add(name)
        for text in dist.requires or ():
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return found, missing


def main() -> None:
    target = Path(sys.argv[1])
    target.mkdir(parents=True, exist_ok=True)
    names, missing = with_requirements(sys.argv[2:])
    for name in sorted(names):
        for path in top_level_paths(name):
            link = target / path.name
            if path.exists() and not link.exists():
                link.symlink_to(path)
    print(f"{target}: {len(list(target.iterdir()))} entries; not installed here: {', '.join(missing) or 'none'}")


if __name__ == "__main__":
    main()
