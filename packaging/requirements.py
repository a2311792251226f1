"""Print the runtime's requirements (setup.cfg's install_requires), one per line.

The bundle's build environment installs these and PyInstaller, and nothing else: what is
not installed cannot end up in the bundle. Reading setup.cfg keeps one list of them.
"""

import configparser
import sys
from pathlib import Path


def runtime_requirements(setup_cfg: Path) -> list[str]:
    parser = configparser.ConfigParser()
    parser.read(setup_cfg)
    text = parser["options"]["install_requires"]
    return [line.strip() for line in text.splitlines() if line.strip()]


if __name__ == "__main__":
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parents[1] / "setup.cfg"
    print("\n".join(runtime_requirements(path)))
