"""Task code fingerprints and the definition hash: stable for equal code, different
for changed code, across processes and hash seeds."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import nbflow as nf
from nbflow.core.fingerprint import fingerprint


def _compile(src: str, name: str = "f", env: dict | None = None) -> object:
    """Define a function from source in a fresh module namespace, like a notebook cell."""
    namespace: dict = {"__name__": "__main__", **(env or {})}
    exec(compile(textwrap.dedent(src), f"<cell-{id(namespace)}>", "exec"), namespace)
    return namespace[name]


def test_same_code_gives_equal_fingerprints_across_cells() -> None:
    src = "def f(x):\n    return x * 2 + 1\n"
    assert fingerprint(_compile(src)) == fingerprint(_compile(src))


def test_changed_code_changes_fingerprint() -> None:
    one = _compile("def f(x):\n    return x * 2\n")
    two = _compile("def f(x):\n    return x * 3\n")
    three = _compile("def f(x):\n    return str(x)\n")
    assert len({fingerprint(one), fingerprint(two), fingerprint(three)}) == 3


def test_docstring_and_comment_edits_do_not_count() -> None:
    one = _compile("def f(x):\n    return x\n")
    two = _compile('def f(x):\n    """Now documented."""\n    # a comment\n    return x\n')
    assert fingerprint(one) == fingerprint(two)


def test_closure_values_count() -> None:
    def make(factor):
        def scale(x):
            return x * factor

        return scale

    assert fingerprint(make(2)) == fingerprint(make(2))
    assert fingerprint(make(2)) != fingerprint(make(3))
    assert fingerprint(make([1, 2])) != fingerprint(make([1, 3]))
    assert fingerprint(make({"a": 1})) == fingerprint(make({"a": 1}))


def test_default_values_count() -> None:
    assert fingerprint(_compile("def f(x, k=1):\n    return x + k\n")) != fingerprint(
        _compile("def f(x, k=2):\n    return x + k\n")
    )


def test_helper_function_edits_count() -> None:
    helper_v1 = _compile("def helper(x):\n    return x + 1\n", "helper")
    helper_v2 = _compile("def helper(x):\n    return x + 2\n", "helper")
    task_src = "def f(x):\n    return helper(x) * 10\n"
    f1 = _compile(task_src, env={"helper": helper_v1})
    f1_again = _compile(task_src, env={"helper": helper_v1})
    f2 = _compile(task_src, env={"helper": helper_v2})
    assert fingerprint(f1) == fingerprint(f1_again)
    assert fingerprint(f1) != fingerprint(f2)


def test_version_overrides_code() -> None:
    one = _compile("def f(x):\n    return x * 2\n")
    two = _compile("def f(x):\n    return x * 3\n")
    assert fingerprint(one, version="1") == fingerprint(two, version="1")
    assert fingerprint(one, version="1") != fingerprint(one, version="2")

    @nf.task(version=7)
    def g(x):
        return x

    wf = nf.Workflow("w").then(g).build()
    assert wf.node("g").fingerprint == fingerprint(two, version="7")


def test_lambdas_on_one_line_differ() -> None:
    fns = [lambda x: x + 1, lambda x: x - 1]
    assert fingerprint(fns[0]) != fingerprint(fns[1])


def test_recursive_and_unusual_callables_do_not_crash() -> None:
    import functools

    def rec(n):
        return 1 if n <= 1 else n * rec(n - 1)

    class Callable_:
        def __call__(self, x):
            return x

    fingerprint(rec)
    fingerprint(functools.partial(rec, 3))
    fingerprint(Callable_())
    fingerprint(len)
    fingerprint(str.upper)


_HASH_SCRIPT = """
import json, sys
import nbflow as nf

def load(path): return [path]
def clean(rows): return rows
def stats(clean): return {"n": len(clean), "tags": {"a", "b"}}
def plot(clean): return clean
def report(parts): return parts

wf = (nf.Workflow("etl", metadata={"z": 1, "a": 2})
      .then(load).then(clean, retries=2, tags=["x", "y"])
      .fork().branch("stats", stats).branch(plot, lambda p: p).join(report)
      .then(lambda r: r)
      .build())
print(json.dumps({"hash": wf.definition_hash, "fps": wf.fingerprints(), "ids": list(wf.task_ids)}))
"""


def test_definition_hash_and_fingerprints_equal_across_hash_seeds(tmp_path: Path) -> None:
    script = tmp_path / "wf.py"
    script.write_text(_HASH_SCRIPT)
    outputs = []
    for seed in ("1", "987654"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        outputs.append(done.stdout)
    assert outputs[0] == outputs[1]
    assert '"hash"' in outputs[0]
