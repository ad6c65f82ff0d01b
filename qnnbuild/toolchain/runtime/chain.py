"""Sessions of a graph split into parts (an LLM built with `parts: K`) run in order as one session: what a
deliverable's parts are to everything that runs it (the LLM runner, validate, profile)."""

from __future__ import annotations

from typing import Any


class Chain:
    """Sessions of a split graph run in order as one session ."""

    def __init__(self, sessions: list[Any], inputs: list[str], outputs: list[str]) -> None:
        self.sessions = sessions
        meta = {m.name: m for s in sessions for m in (*s.get_inputs(), *s.get_outputs())}
        self._inputs = [meta[n] for n in inputs]
        self._outputs = [meta[n] for n in outputs]

    def get_inputs(self) -> list[Any]:
        return self._inputs

    def get_outputs(self) -> list[Any]:
        return self._outputs

    def run(self, names: list[str] | None, feeds: dict[str, Any]) -> list[Any]:
        values = dict(feeds)
        for session in self.sessions:
            wanted = [o.name for o in session.get_outputs()]
            values.update(zip(wanted, session.run(wanted, {i.name: values[i.name] for i in session.get_inputs()}),
                              strict=True))
        return [values[n] for n in (names or [o.name for o in self._outputs])]
