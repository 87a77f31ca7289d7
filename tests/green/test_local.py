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


def test_a_plain_local_keeps_each_green_thread_apart() -> None:
    """A plain local (no subclass) is read and set in the calling green thread's own dict, without
    the lock (spawning/green/local.py): a name another green thread set is missing here, with
    the AttributeError object.__getattribute__ gives, and names of the class still go through it."""
    store = green.local()

    def visitor(i: int) -> tuple:
        seen = hasattr(store, "value")          # another green thread's value is not ours
        try:
            err = store.value   # raises: set by another green thread only
            err = ("read", err)
        except AttributeError as e:
            err = (str(e), e.name, e.obj is store)
        store.value = i
        green.sleep(0.001)                      # the others set theirs meanwhile
        return seen, err, store.value, getattr(store, "missing", "default")

    def main() -> list:
        store.value = -1
        results = [t.join() for t in [green.spawn(visitor, i) for i in range(3)]]
        return [*results, store.value, type(store).__name__, store.__class__ is green.local]

    missing = ("'local' object has no attribute 'value'", "value", True)
    assert green.run(main) == [(False, missing, 0, "default"), (False, missing, 1, "default"),
                               (False, missing, 2, "default"), -1, "local", True]


def test_a_plain_local_s_dict_is_the_green_thread_s() -> None:
    """vars() and __dict__ see what the fast reads and writes saw; __dict__ stays read-only."""
    store = green.local()

    def visitor() -> tuple:
        store.a = 1
        d = vars(store)
        try:
            store.__dict__ = {}
            ro = False
        except AttributeError:
            ro = True
        return dict(d), ro, store.a

    def main() -> tuple:
        store.b = 2
        other = green.spawn(visitor).join()
        return other, dict(vars(store)), store.b

    assert green.run(main) == (({"a": 1}, True, 1), {"b": 2}, 2)


class WithClassAttributes(green.local):
    kind = "class attribute"

    @property
    def doubled(self) -> int:
        return self.value * 2

    def describe(self) -> str:
        return f"{self.kind} {self.value}"


def test_a_subclass_s_class_attributes_and_deletion() -> None:
    """A subclass's reads take the general way (csrc/py/glocal.c reads a plain local's only): its
    properties, methods and class attributes work per green thread; deletion is per green thread
    too, and a deleted name reads as missing."""
    store = WithClassAttributes()
    plain = green.local()

    def visitor() -> tuple:
        store.value = 5
        plain.x = "theirs"
        del plain.x
        return store.doubled, store.describe(), store.kind, hasattr(plain, "x")

    def main() -> tuple:
        store.value = 1
        plain.x = "mine"
        other = green.spawn(visitor).join()
        del store.value
        return other, hasattr(store, "value"), store.kind, plain.x, type(plain).__name__

    assert green.run(main) == ((10, "class attribute 5", "class attribute", False), False,
                               "class attribute", "mine", "local")
