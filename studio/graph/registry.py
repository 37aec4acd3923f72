"""The registry of node types, and the loading of third-party node packs into one.

This layer knows no node module: the application builds its registry from above
(:func:`studio.library.installed_registry`: the built-in ``nodes`` package plus every
pack) and passes it to the workflows and engines that need it.

A third-party node pack is a Python package that declares an entry point in the
group ``studio.nodes``; the entry point names a module (every :class:`NodeSpec`
at its top level is registered) or a callable returning an iterable of specs.
A pack that fails to import is reported in :attr:`Registry.load_errors` and
never stops Studio from starting.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from importlib.metadata import entry_points
from types import ModuleType

from studio.graph.spec import NodeSpec
from studio.graph.types import ValueType, can_connect

ENTRY_POINT_GROUP = "studio.nodes"


class Registry:
    """A set of node types, addressable by type id and searchable by text and port type."""

    def __init__(self, specs: Iterable[NodeSpec] = ()):
        self._specs: dict[str, NodeSpec] = {}
        self.load_errors: list[str] = []
        for spec in specs:
            self.register(spec)

    def register(self, spec: NodeSpec, *, replace: bool = False) -> NodeSpec:
        if not replace and spec.type_id in self._specs and self._specs[spec.type_id] is not spec:
            raise ValueError(f"node type {spec.type_id!r} is registered twice")
        self._specs[spec.type_id] = spec
        return spec

    def register_module(self, module: ModuleType) -> list[NodeSpec]:
        found = [v for v in vars(module).values() if isinstance(v, NodeSpec)]
        for spec in found:
            self.register(spec)
        return found

    def get(self, type_id: str) -> NodeSpec | None:
        return self._specs.get(type_id)

    def __getitem__(self, type_id: str) -> NodeSpec:
        return self._specs[type_id]

    def __contains__(self, type_id: object) -> bool:
        return type_id in self._specs

    def __iter__(self) -> Iterator[NodeSpec]:
        return iter(self._specs.values())

    def __len__(self) -> int:
        return len(self._specs)

    def categories(self) -> list[str]:
        return sorted({s.category for s in self._specs.values() if not s.frontend_only} | set())

    def search(
        self,
        text: str = "",
        *,
        accepts: ValueType | str | None = None,
        gives: ValueType | str | None = None,
        limit: int | None = None,
    ) -> list[NodeSpec]:
        """Node types matching ``text``, best first.

        ``text`` is matched fuzzily against title, category, type id and the words
        of the description. ``accepts`` keeps types with an input that can take a
        value of that type; ``gives`` keeps types with an output that can feed an
        input of that type (the canvas uses these when a wire is dropped on empty canvas).
        """
        scored: list[tuple[float, str, NodeSpec]] = []
        query = text.strip().lower()
        for spec in self._specs.values():
            if accepts is not None and not any(
                can_connect(accepts, i.type) for i in spec.inputs if i.type is not ValueType.ANY
            ):
                continue
            if gives is not None and not any(
                can_connect(o.type, gives) for o in spec.outputs if o.type is not ValueType.ANY
            ):
                continue
            score = _match_score(query, spec) if query else 1.0
            if score > 0:
                scored.append((-score, spec.title.lower(), spec))
        scored.sort(key=lambda t: (t[0], t[1]))
        result = [s for _, _, s in scored]
        return result[:limit] if limit else result


def _match_score(query: str, spec: NodeSpec) -> float:
    title = spec.title.lower()
    words = query.split()
    haystacks = [
        (title, 10.0),
        (spec.type_id.lower(), 6.0),
        (spec.category.lower(), 4.0),
        (spec.description.lower(), 1.0),
    ]
    total = 0.0
    for word in words:
        best = 0.0
        for hay, weight in haystacks:
            if hay.startswith(word):
                best = max(best, weight * 3)
            elif any(w.startswith(word) for w in hay.replace("_", " ").split()):
                best = max(best, weight * 2)
            elif word in hay:
                best = max(best, weight * 1.5)
            elif weight >= 6.0 and _is_subsequence(word, hay):
                best = max(best, weight * 0.5)
        if best == 0.0:
            return 0.0
        total += best
    return total - len(title) * 0.01


def _is_subsequence(needle: str, hay: str) -> bool:
    it = iter(hay)
    return all(ch in it for ch in needle)


# -- node packs -----------------------------------------------------------------------


def load_entry_points(reg: Registry, group: str = ENTRY_POINT_GROUP) -> None:
    """Register every installed node pack's specs into ``reg`` (errors into ``load_errors``)."""
    for ep in entry_points(group=group):
        try:
            target = ep.load()
            if isinstance(target, ModuleType):
                reg.register_module(target)
            elif callable(target):
                for spec in target():
                    reg.register(spec)
            else:
                raise TypeError("entry point is neither a module nor a callable")
        except Exception as exc:  # a broken pack must not stop Studio
            reg.load_errors.append(f"node pack {ep.name!r} ({ep.value}): {exc}")
