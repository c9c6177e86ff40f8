"""Rate limits and cost budgets shared by the front ends of a multi-process server (``service.shared_buckets``).

Two attachments of one table stand for two front ends: whatever one takes, the other cannot. The table
must also give exactly the answers of the in-process ``TokenBuckets`` it replaces.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from service.security import TokenBuckets, token_buckets
from service.shared_buckets import ENV_PREFIX, PROBE, SharedTokenBuckets, client_key


@pytest.fixture
def table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    owner = SharedTokenBuckets.create("rate", tmp_path, slots=1024)
    for name, value in owner.env.items():
        monkeypatch.setenv(name, value)  # as the supervisor does for its children; undone after the test
    yield owner
    owner.close(unlink=True)


def test_two_front_ends_draw_on_one_bucket(table: SharedTokenBuckets) -> None:
    a = SharedTokenBuckets.from_env("rate", rate=1.0, burst=4)
    b = SharedTokenBuckets.from_env("rate", rate=1.0, burst=4)
    assert a is not None and b is not None
    granted = [x.take("addr:10.0.0.7", now=100.0) for x in (a, b, a, b)]
    assert granted == [0.0, 0.0, 0.0, 0.0]
    assert b.take("addr:10.0.0.7", now=100.0) == pytest.approx(1.0)  # the fifth waits a second, wherever it lands
    assert a.take("addr:10.0.0.8", now=100.0) == 0.0  # another client has its own bucket
    assert a.take("addr:10.0.0.7", now=101.5, amount=1.0) == 0.0  # refilled by 1.5 tokens
    a.close()
    b.close()


def test_in_a_front_end_the_factory_returns_the_shared_table(table: SharedTokenBuckets) -> None:
    assert isinstance(token_buckets("rate", 2.0, 3), SharedTokenBuckets)
    assert isinstance(token_buckets("cost", 2.0, 3), TokenBuckets)  # no table for that limit: per process


def test_same_answers_as_the_in_process_buckets(table: SharedTokenBuckets) -> None:
    shared = SharedTokenBuckets.from_env("rate", rate=3.0, burst=5)
    local = TokenBuckets(3.0, 5)
    rng = random.Random(7)
    now = 0.0
    for _ in range(2000):
        now += rng.expovariate(20.0)
        client, amount = f"key:{rng.randrange(40)}", rng.choice([1.0, 2.0, 4.5])
        assert shared.take(client, now=now, amount=amount) == pytest.approx(local.take(client, now=now, amount=amount))
    shared.close()


def test_a_full_neighbourhood_forgets_the_client_seen_longest_ago(tmp_path: Path) -> None:
    tiny = SharedTokenBuckets.create("tiny", tmp_path, slots=1)  # one window of PROBE slots for everyone
    try:
        tiny.rate, tiny.burst = 1.0, 1.0
        clients = [f"key:{i}" for i in range(PROBE + 1)]
        for t, client in enumerate(clients[:PROBE]):
            assert tiny.take(client, now=float(t)) == 0.0
        assert tiny.take(clients[0], now=8.0) == 0.0  # refilled: 8 s at 1 token/s
        assert tiny.take(clients[PROBE], now=8.5) == 0.0  # a newcomer: evicts key:1, seen at t=1
        assert tiny.take(clients[1], now=8.6) == 0.0  # forgotten, so it starts again with a full bucket
        assert tiny.take(clients[0], now=8.6) > 0  # remembered: still empty
    finally:
        tiny.close(unlink=True)
    assert ENV_PREFIX + "TINY" not in os.environ  # only the supervisor names a table to its children


def test_keys_are_stable_across_processes() -> None:
    """Every front end must find a client in the same slots: ``hash()`` is salted per process, BLAKE2b is not."""
    code = "from service.shared_buckets import client_key; print(client_key('addr:127.0.0.1'))"
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": str(Path(__file__).parents[1])}
    other = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert int(other.stdout) == client_key("addr:127.0.0.1") != client_key("addr:127.0.0.2")
