"""``bench/api.py`` at a tiny scale: a relay imports the CSV and every member comes back
through the pages.  Counts only, never timings: a slow machine must not fail this."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.api import run

pytestmark = pytest.mark.timeout(120)


def test_the_api_bench_imports_and_walks_every_member(tmp_path: Path) -> None:
    result = run(members=230, pages=3, limit=50, database_url="", folder=tmp_path)
    assert result["members"] == 230 and result["pages_walked"] == 5
    assert result["pages_timed"] >= 3
    assert float(result["page_p95_ms"]) > 0 and float(result["import_s"]) > 0  # type: ignore[arg-type]
