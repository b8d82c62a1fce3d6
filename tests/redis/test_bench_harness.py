"""The benchmark harness's turn-taking: what `alternate` runs in which order, and how a
repetition's blocks make one run (`combined`). Every figure of docs/performance.md goes
through both, so they are checked here without timing anything."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

sys.path.append(str(Path(__file__).resolve().parents[2] / "benchmarks"))  # after the tests

from contenders import Run
from workloads import alternate, combined


@dataclass(frozen=True)
class Named:
    key: str
    label: str


A, B, C = Named("a", "A"), Named("b", "B"), Named("c", "C")


@pytest.mark.parametrize(
    ("contenders", "reps", "rounds", "calls", "orders"),
    [
        # Each repetition starts one contender later: no one always goes first.
        ([A, B], 3, 1, "a0 b0 b1 a1 a2 b2", [["a", "b"], ["b", "a"], ["a", "b"]]),
        (
            [A, B, C],
            3,
            1,
            "a0 b0 c0 b1 c1 a1 c2 a2 b2",
            [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"]],
        ),
        # With rounds, the contenders take turns every block, in the repetition's order.
        ([A, B], 2, 3, "a0 b0 a0 b0 a0 b0 b1 a1 b1 a1 b1 a1", [["a", "b"], ["b", "a"]]),
    ],
)
def test_contenders_take_turns_in_a_rotating_order(
    contenders: list[Named], reps: int, rounds: int, calls: str, orders: list[list[str]]
) -> None:
    made: list[str] = []

    def measure(contender: Named, rep: int) -> list[str]:
        made.append(f"{contender.key}{rep}")
        return [made[-1]]

    def joined(parts: list[list[str]]) -> list[str]:
        return [call for part in parts for call in part]

    results, got = alternate(
        "W0", contenders, reps, measure, str, rounds=rounds, combine=joined if rounds > 1 else None
    )
    assert " ".join(made) == calls
    assert got == orders
    for contender in contenders:  # one result per repetition, of that contender's blocks only
        assert [len(r) for r in results[contender.key]] == [rounds] * reps
        assert all(c[0] == contender.key for r in results[contender.key] for c in r)


def test_rounds_without_a_way_to_combine_them_are_refused() -> None:
    with pytest.raises(ValueError, match="combine"):
        alternate("W0", [A], 1, lambda c, r: 0, str, rounds=2)


def run(**fields: Any) -> Run:
    return Run(**{"seconds": 1.0, **fields})


@pytest.mark.parametrize(
    ("parts", "expected"),
    [
        (
            [
                run(
                    seconds=1.5,
                    worker_cpu=2.0,
                    caller_cpu=0.5,
                    statuses={"COMPLETED": 100},
                    ids=["x"],
                ),
                run(
                    seconds=2.5,
                    worker_cpu=3.0,
                    caller_cpu=0.25,
                    statuses={"COMPLETED": 99, "FAILED": 1},
                    not_completed=1,
                    ids=["y", "z"],
                ),
            ],
            run(
                seconds=4.0,
                worker_cpu=5.0,
                caller_cpu=0.75,
                statuses={"COMPLETED": 199, "FAILED": 1},
                not_completed=1,
                ids=["x", "y", "z"],
            ),
        ),
        # `lost` is counted only by the workload that looks (W2): None stays None.
        ([run(), run()], run(seconds=2.0)),
        ([run(lost=0), run(lost=2)], run(seconds=2.0, lost=2)),
    ],
)
def test_a_repetitions_blocks_sum_to_one_run(parts: list[Run], expected: Run) -> None:
    assert combined(parts) == expected
