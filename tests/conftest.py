"""Fixtures: a pair of real agents on 127.0.0.1 in a temp dir."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pairlib import PairEnv, cleanup_base, make_base, new_pair


@pytest.fixture
def base() -> Iterator[Path]:
    b = make_base()
    yield b
    cleanup_base(b)


@pytest.fixture
def make_pair(base: Path) -> Iterator[Callable[..., PairEnv]]:
    made: list[PairEnv] = []

    def factory(**kwargs: object) -> PairEnv:
        env = new_pair(base, **kwargs)  # type: ignore[arg-type]
        made.append(env)
        return env

    yield factory
    for env in made:
        env.stop()
