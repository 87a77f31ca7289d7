"""spawning.green.local: attributes per green thread (per request in green mode)."""

from __future__ import annotations

from spawning import green


class Named(green.local):
    def __init__(self, name: str) -> None:
        self.name = name


def test_each_green_thread_sees_its_own_attributes() -> None:
    store = Named("initial")

    def visitor(i: int) -> tuple[str, int]:
        fresh = store.name       # __init__ ran again for this green thread
        store.value = i
        green.sleep(0.001)       # the others set theirs meanwhile
        return fresh, store.value

    def main() -> list:
        store.value = -1
        results = [t.join() for t in [green.spawn(visitor, i) for i in range(3)]]
        return [*results, store.value]

    assert green.run(main) == [("initial", 0), ("initial", 1), ("initial", 2), -1]
