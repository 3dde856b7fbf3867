"""Every shell block marked runnable in docs/ runs, and exits 0.

Convention (documented at the top of docs/index.md): a fenced code block whose
info string is ``sh runnable`` is run by this test, as one bash script
(``set -euo pipefail``), in a fresh temporary working directory, with the
repository's tbdprof first on PATH and TBDPROF_DATA pointing at one data-set
cache shared by all blocks. Blocks run in order within a page, in the same
directory, so a later block may use the runs an earlier one made (say
``runs/first``). Only cheap commands (tiny presets, few steps) are marked; a
block has BLOCK_TIMEOUT_S seconds. Plain ``sh`` / ``console`` blocks are
documentation only.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
MARKER = "sh runnable"
BLOCK_TIMEOUT_S = 90
FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>```+|~~~+)[ \t]*(?P<info>[^\n`]*)$")


def runnable_blocks(text: str) -> list[tuple[int, str]]:
    """(line number, code) of every fenced block whose info string is exactly the marker."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, info, start = m["fence"], m["info"].strip(), i
        body, i = [], i + 1
        while i < len(lines) and not lines[i].strip().startswith(fence):
            body.append(lines[i][len(m["indent"]):] if lines[i].startswith(m["indent"]) else lines[i])
            i += 1
        i += 1
        if info == MARKER:
            blocks.append((start + 1, "\n".join(body)))
    return blocks


PAGES = {p.relative_to(ROOT).as_posix(): runnable_blocks(p.read_text()) for p in sorted(DOCS.rglob("*.md"))}
PAGES = {page: blocks for page, blocks in PAGES.items() if blocks}


def test_marker_parser():
    text = "x\n```sh runnable\necho a\n```\n```sh\necho no\n```\n  ```sh runnable\n  echo b\n  ```\n"
    assert runnable_blocks(text) == [(2, "echo a"), (8, "echo b")]


def test_docs_have_runnable_blocks():
    assert "docs/index.md" in PAGES and "docs/cli.md" in PAGES, sorted(PAGES)


@pytest.mark.parametrize("page", sorted(PAGES))
def test_runnable_blocks(page, tmp_path, data_cache):
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["TBDPROF_DATA"] = str(data_cache)
    env["COLUMNS"] = "100"
    env.pop("TBDPROF_RUN_DIR", None)
    for line, code in PAGES[page]:
        t0 = time.monotonic()
        try:
            proc = subprocess.run(["bash", "-c", "set -euo pipefail\n" + code], cwd=tmp_path, env=env,
                                  capture_output=True, text=True, timeout=BLOCK_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{page}:{line}: block ran past {BLOCK_TIMEOUT_S} s:\n{code}")
        took = time.monotonic() - t0
        print(f"{page}:{line}: exit {proc.returncode} in {took:.1f} s")
        assert proc.returncode == 0, (f"{page}:{line}: block exited {proc.returncode}:\n{code}\n"
                                      f"--- stdout (tail)\n{proc.stdout[-3000:]}\n--- stderr (tail)\n{proc.stderr[-3000:]}")


def test_index_links_every_page():
    index = (DOCS / "index.md").read_text()
    pages = sorted(p.name for p in DOCS.glob("*.md") if p.name != "index.md")
    missing = [p for p in pages if f"]({p}" not in index]
    assert not missing, f"docs/index.md does not link to {missing}"


def test_tutorial_figures_are_small():
    for png in (DOCS / "tutorial").glob("*.png"):
        assert png.stat().st_size < 150_000, f"{png.name}: {png.stat().st_size} bytes (keep figures under 150 KB)"
