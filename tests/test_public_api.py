"""The curated public API: every exported name resolves and is documented."""

from __future__ import annotations

import inspect

import trioraft


def test_every_export_resolves_and_is_documented() -> None:
    undocumented = []
    for name in trioraft.__all__:
        obj = getattr(trioraft, name)
        if (inspect.isclass(obj) or inspect.isfunction(obj)) and not inspect.getdoc(obj):
            undocumented.append(name)
    assert undocumented == []


def test_the_core_types_a_user_needs_are_exported() -> None:
    for name in ("open_raft_node", "RaftNode", "StateMachine", "Config", "TcpTransport"):
        assert name in trioraft.__all__
    assert set(dir(trioraft)) >= set(trioraft.__all__)


def test_unknown_attribute_is_an_attribute_error() -> None:
    try:
        _ = trioraft.no_such_name  # type: ignore[attr-defined]
    except AttributeError as exc:
        assert "no_such_name" in str(exc)
    else:  # pragma: no cover - a failure path
        raise AssertionError("expected AttributeError")
