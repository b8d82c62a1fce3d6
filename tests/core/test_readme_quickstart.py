"""The README's quick start is examples/shop.py: same lines, and it runs.

`nox -s install` runs shop.py on real workers after installing each README line;
here the README's code blocks are held against the file (so neither drifts), and
the file's sagas run in eager mode on a fresh memory store per test (the
`saga_eager` fixture of `celery_saga.contrib.pytest`, as docs/testing.md shows).
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

import pytest
from celery import Celery

from celery_saga.contrib.pytest import assert_compensated, assert_steps

ROOT = Path(__file__).resolve().parents[2]
SHOP = ROOT / "examples" / "shop.py"


def _code_lines(text: str) -> list[str]:
    """Non-blank lines with their comments and indentation removed."""
    lines = (re.sub(r"\s+#.*$", "", line).strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def _quickstart_blocks() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Quick start") :]
    section = section[: section.index("\n## ", 1)]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_the_readme_quick_start_blocks_are_lines_of_examples_shop() -> None:
    blocks = _quickstart_blocks()
    assert len(blocks) == 2, "the quick start has the builder and the functional example"
    shop = _code_lines(SHOP.read_text())
    for block in blocks:
        position = 0
        for line in _code_lines(block):
            assert line in shop[position:], (
                f"README quick-start line {line!r} is not in examples/shop.py (in order): "
                "change both together"
            )
            position = shop.index(line, position) + 1


@pytest.fixture(scope="module")
def shop_module() -> ModuleType:
    """examples/shop.py, loaded once (its tasks register once)."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("SHOP_SAGA_BACKEND", "memory://readme-quickstart")
        spec = importlib.util.spec_from_file_location("shop_quickstart", SHOP)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return module


@pytest.fixture
def saga_app(shop_module: ModuleType) -> Celery:
    """The app the plugin's fixtures configure: the example's."""
    app: Celery = shop_module.app
    return app


@pytest.fixture
def shop(shop_module: ModuleType, saga_eager: Celery) -> ModuleType:
    """The loaded example, eager, with its stand-in services reset."""
    shop_module.payments.charges.clear()
    shop_module.STOCK.update({"book": 3, "lamp": 0})
    return shop_module


def test_the_quick_start_order_saga_completes_and_its_functional_twin_returns_the_payment(
    shop: ModuleType,
) -> None:
    output = shop.order_saga.run(order_id="o-1", amount=10.0, idempotency_key="k-o-1").get(
        timeout=10
    )
    assert output["validated"] is True
    assert output["reserved"] is True
    assert output["confirmation"] == "order o-1 confirmed"
    assert shop.payments.charges == {output["transaction_id"]: 10.0}

    returned = shop.order_saga_fn.run(order_id="o-2", amount=3.0).get(timeout=10)
    assert set(returned) == {"transaction_id"}
    assert shop.payments.charges[returned["transaction_id"]] == 3.0


def test_the_quick_start_refunds_the_payment_when_stock_runs_out(shop: ModuleType) -> None:
    from celery_saga import SagaCompensated

    result = shop.order_saga.run(order_id="o-3", amount=7.0, item="lamp")
    with pytest.raises(SagaCompensated):
        result.get(timeout=10)
    assert_steps(result, ["success", "compensated", "failed", "pending"])
    assert_compensated(result, [1])
    assert shop.payments.charges == {}, "the charge was refunded"
    assert shop.STOCK == {"book": 3, "lamp": 0}
