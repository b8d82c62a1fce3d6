"""The worked example of docs/composing.md runs as printed: a child payment saga, a gift
wrap taken, the bank's webhook (a repeat refused), and the revert that undoes it all."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_composing_example_runs_and_undoes_everything_in_reverse() -> None:
    run = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "composing.py")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    events = run.stdout.split("what happened, in order:\n", 1)[1].split()
    text = " ".join(events)
    assert text == (
        "reserve lamp authorize 30.0 for A-7 capture auth-A-7 wrap as a gift "
        "confirm A-7 (bank-991) unwrap refund cap-auth-A-7 void authorization auth-A-7 "
        "release lamp"
    )
    assert "webhook refused: step 'bank_confirmation' is already success" in run.stdout
    assert "order reverted: the customer returned the lamp" in run.stdout


def test_the_docs_page_includes_the_example_it_describes() -> None:
    page = (ROOT / "docs" / "composing.md").read_text()
    assert "{literalinclude} ../examples/composing.py" in page
    source = (ROOT / "examples" / "composing.py").read_text()
    for marker in ('start-at: "# -- the payment saga"', 'end-before: "def main"'):
        assert marker in page
        assert marker.split(": ", 1)[1].strip('"') in source
