"""Print the project's requirements from pyproject.toml, one per line, for pip.

    python scripts/requirements.py --extra dev --without llama-cpp-python

`make install` uses it to install everything except llama-cpp-python while that compiles in
parallel (a separate make target), then installs the project itself once both are done.
"""

from __future__ import annotations

import argparse
import re
import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--extra", action="append", default=[], help="also an optional-dependencies group")
    parser.add_argument("--without", action="append", default=[], help="leave out this package")
    args = parser.parse_args()
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in args.extra:
        requirements += project["optional-dependencies"][extra]
    skip = {w.lower() for w in args.without}
    for requirement in requirements:
        if name(requirement) not in skip:
            print(requirement)  # noqa: T201 - the output is the product


if __name__ == "__main__":
    main()
