"""The tutorials of the docs site run, on tiny settings, as a reader would run them.

Every page ``docs/tutorials/<name>.md`` includes its script ``docs/tutorials/<name>.py`` (pymdownx
snippets), so the code on the page is the code tested here: each script runs in its own Python
process with ``LIPZOO_TUTORIAL_TINY=1`` (a few hundred images at most, a few training steps, the
bound with ``effort="none"``: still proved, looser), its files under the test's folder, the bound cache
there too, and ``HF_HUB_OFFLINE=1`` (the Hub tutorial uses a local fake Hub). The MNIST test split
ships with lipzoo, so no tutorial needs a data folder.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
TUTORIALS = REPO / "docs" / "tutorials"
SCRIPTS = sorted(TUTORIALS.glob("*.py"))
SNIPPET = re.compile(r'^--8<-- "docs/tutorials/([\w-]+\.py)"$', re.MULTILINE)
SCRIPT_TIMEOUT_S = 300  # each takes 5-20 s on one thread of a shared 2-core CPU; a hang must not stall CI


class _MkDocsLoader(yaml.SafeLoader):
    """Reads mkdocs.yml: its tags (``!relative``, ``!ENV``) are mkdocs's; their values are not needed here."""


_MkDocsLoader.add_multi_constructor("!", lambda loader, suffix, node: None)


def _tutorial_env(tmp_path: Path) -> dict[str, str]:
    env = {**os.environ, "LIPZOO_TUTORIAL_TINY": "1", "LIPZOO_TUTORIAL_OUT": str(tmp_path),
           "LIPZOO_CACHE": str(tmp_path / "bound-cache"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "MPLBACKEND": "Agg", "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    data = os.environ.get("LIPZOO_DATA")
    if data and not (Path(data) / "mnist.npz").is_file():
        env.pop("LIPZOO_DATA")  # the bundled MNIST test split serves the tutorials
    return env


def test_every_tutorial_page_includes_its_script_and_is_in_the_nav():
    nav = yaml.load((REPO / "mkdocs.yml").read_text(encoding="utf-8"), Loader=_MkDocsLoader)["nav"]
    tutorials = next(item["Tutorials"] for item in nav if "Tutorials" in item)
    listed = {p if isinstance(p, str) else next(iter(p.values())) for p in tutorials}
    assert SCRIPTS, "no tutorial scripts in docs/tutorials/"
    for script in SCRIPTS:
        page = script.with_suffix(".md")
        assert page.is_file(), f"{script.name} has no page {page.name}"
        assert SNIPPET.findall(page.read_text(encoding="utf-8")) == [script.name], \
            f"{page.name} must include exactly its script: --8<-- \"docs/tutorials/{script.name}\""
        assert f"tutorials/{page.name}" in listed, f"{page.name} is not in mkdocs.yml's Tutorials nav"


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.stem)
def test_tutorial_runs(script: Path, tmp_path: Path):
    # a deprecated lipzoo call in a tutorial fails it (the warning is attributed to the script, __main__)
    proc = subprocess.run([sys.executable, "-W", "error::DeprecationWarning:__main__", str(script)],
                          cwd=tmp_path, env=_tutorial_env(tmp_path), capture_output=True, text=True,
                          timeout=SCRIPT_TIMEOUT_S)
    assert proc.returncode == 0, f"{script.name} failed:\n{proc.stdout}\n{proc.stderr}"
    assert proc.stdout.strip(), f"{script.name} printed nothing"
