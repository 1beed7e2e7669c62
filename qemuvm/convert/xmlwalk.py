"""Walking parsed XML so that nothing is dropped silently.

Every attribute and child element a converter reads is marked as used; `finish()` then reports each one
that was not, by its path (`/domain/devices/disk[2]/driver@io`), as unsupported. A converter says why
for the ones it knows (`unsupported`, `implied`); the rest get the generic reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal
from xml.etree.ElementTree import Element

NoteKind = Literal["unsupported", "implied", "kept"]
GENERIC = "qemuvm has no equivalent"
_NAMESPACES = {"http://libvirt.org/schemas/domain/qemu/1.0": "qemu"}


@dataclass(frozen=True)
class Note:
    """unsupported: not carried over, or only approximately (the guest may see a difference);
    implied: qemuvm does this by itself; kept: carried over through qemu.extra_args."""

    path: str
    why: str
    kind: NoteKind = "unsupported"

    def line(self) -> str:
        return f"{self.path}: {self.why}"


def tag_name(element: Element) -> str:
    tag = str(element.tag)
    if tag.startswith("{"):
        namespace, _, local = tag[1:].partition("}")
        return f"{_NAMESPACES.get(namespace, 'ns')}:{local}"
    return tag


@dataclass
class Node:
    element: Element
    path: str
    notes: list[Note]
    _attrs: set[str] = field(default_factory=set)
    _children: dict[int, Node] = field(default_factory=dict)
    _consumed: bool = False

    def __post_init__(self) -> None:
        self._elements = [child for child in self.element if isinstance(child.tag, str)]  # not comments
        names = [tag_name(child) for child in self._elements]
        seen: dict[str, int] = {}
        self._paths = []
        for name in names:
            seen[name] = seen.get(name, 0) + 1
            self._paths.append(f"{self.path}/{name}" + (f"[{seen[name]}]" if names.count(name) > 1 else ""))

    @classmethod
    def root(cls, element: Element) -> Node:
        return cls(element, "/" + tag_name(element), [])

    # -- reading (marks what was read as used) --------------------------------------------------------

    def attr(self, name: str, default: str | None = None) -> str | None:
        self._attrs.add(name)
        value = self.element.get(name)
        return default if value is None else value.strip()

    @property
    def text(self) -> str:
        return (self.element.text or "").strip()

    def children(self, tag: str | None = None) -> list[Node]:
        """The child elements (of one tag, or all), in document order."""
        return [self._child(index) for index, element in enumerate(self._elements)
                if tag is None or tag_name(element) == tag]

    def child(self, tag: str) -> Node | None:
        found = self.children(tag)
        for extra in found[1:]:
            extra.unsupported(f"only the first <{tag}> is read")
        return found[0] if found else None

    def _child(self, index: int) -> Node:
        if index not in self._children:
            self._children[index] = Node(self._elements[index], self._paths[index], self.notes)
        return self._children[index]

    # -- saying what happened ---------------------------------------------------------------------------

    def _note(self, kind: NoteKind, why: str, attr: str | None) -> None:
        if attr is not None:
            self._attrs.add(attr)
            value = self.element.get(attr)
            if value is None:  # nothing to say about an attribute the element does not have
                return
            where = f"{self.path}@{attr}" + (f"={value}" if value is not None else "")
        else:
            self.consume()
            where = self.path
        self.notes.append(Note(where, why, kind))

    def unsupported(self, why: str = GENERIC, attr: str | None = None) -> None:
        self._note("unsupported", why, attr)

    def implied(self, why: str, attr: str | None = None) -> None:
        self._note("implied", why, attr)

    def kept(self, why: str, attr: str | None = None) -> None:
        self._note("kept", why, attr)

    def consume(self) -> None:
        """This element and everything in it is accounted for (a note said so)."""
        self._consumed = True

    def finish(self) -> list[Note]:
        """Report every attribute and child element nobody read; returns all notes (of the whole tree)."""
        if self._consumed:
            return self.notes
        for name, value in self.element.attrib.items():
            if name not in self._attrs:
                self.notes.append(Note(f"{self.path}@{name}={value}", GENERIC))
        for index, path in enumerate(self._paths):
            if index in self._children:
                self._children[index].finish()
            else:
                self.notes.append(Note(path, GENERIC))
        return self.notes
