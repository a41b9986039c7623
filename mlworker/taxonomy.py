"""The 14-Diff white blood cell taxonomy: the one source of truth for class codes.

Everything that needs the class list (model heads, checkpoints, metrics, the labelling UI,
exports) imports it from here, so the order of the classes and their keyboard shortcuts
can never disagree between components. The order of ``CLASSES`` is the order of the
model's output units and must not change once checkpoints exist.

Keyboard keys are single lower-case letters, mnemonic where possible. The labelling UI
reserves Enter (accept), Backspace (undo), ``s`` (skip) and ``f`` (flag), so no class uses
those.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Group = Literal["normal", "abnormal"]

RESERVED_KEYS: frozenset[str] = frozenset({"Enter", "Backspace", "s", "f"})


@dataclass(frozen=True, slots=True)
class CellClass:
    """One 14-Diff class: its code, a readable name, its group and its labelling key."""

    code: str
    name: str
    group: Group
    key: str


CLASSES: tuple[CellClass, ...] = (
    CellClass("NE", "Neutrophil (segmented and band)", "normal", "n"),
    CellClass("LY", "Lymphocyte", "normal", "l"),
    CellClass("MO", "Monocyte", "normal", "m"),
    CellClass("EO", "Eosinophil", "normal", "e"),
    CellClass("BA", "Basophil", "normal", "b"),
    CellClass("ME", "Metamyelocyte", "abnormal", "t"),  # meTamyelocyte
    CellClass("MY", "Myelocyte", "abnormal", "y"),  # mYelocyte
    CellClass("PR", "Promyelocyte", "abnormal", "p"),
    CellClass("LR", "Reactive lymphocyte", "abnormal", "r"),
    CellClass("LA", "Abnormal (malignant) lymphocyte", "abnormal", "a"),
    CellClass("BL", "Blast", "abnormal", "i"),  # the most Immature cell
    CellClass("PC", "Plasma cell", "abnormal", "c"),
    CellClass("NR", "Nucleated red blood cell (NRBC)", "abnormal", "o"),  # round red cell
    CellClass("AR", "Artifact / cell not reportable", "abnormal", "x"),  # crossed out
)

CODES: tuple[str, ...] = tuple(c.code for c in CLASSES)
NORMAL_CODES: tuple[str, ...] = tuple(c.code for c in CLASSES if c.group == "normal")
ABNORMAL_CODES: tuple[str, ...] = tuple(c.code for c in CLASSES if c.group == "abnormal")

_BY_CODE: dict[str, CellClass] = {c.code: c for c in CLASSES}


def by_code(code: str) -> CellClass:
    """Return the class with this 14-Diff code; raise ValueError naming the allowed codes."""
    try:
        return _BY_CODE[code]
    except KeyError:
        raise ValueError(
            f"Unknown 14-Diff class code {code!r}; allowed codes are {', '.join(CODES)}"
        ) from None


def index_of(code: str) -> int:
    """Return the position of a code in ``CODES`` (the model's output unit for it)."""
    by_code(code)
    return CODES.index(code)


def _check_consistency() -> None:
    keys = [c.key for c in CLASSES]
    if len(set(CODES)) != len(CODES):
        raise RuntimeError("duplicate 14-Diff codes")
    if len(set(keys)) != len(keys):
        raise RuntimeError("duplicate labelling keys")
    if RESERVED_KEYS.intersection(keys):
        raise RuntimeError("a labelling key collides with a key the UI reserves")


_check_consistency()
