"""The 14-Diff white blood cell taxonomy: the one source of truth for class codes.

Everything that needs the class list (model heads, checkpoints, metrics, the labelling UI,
exports) imports it from here, so the order of the classes and their keyboard shortcuts
can never disagree between components. The order of ``CLASSES`` is the order of the
model's output units and must not change once checkpoints exist.

Keyboard keys are single lower-case letters, mnemonic where possible. The labelling UI
reserves Enter (accept), Backspace (undo), Escape (cancel an undo), ``s`` (skip), ``f``
(flag) and ``v`` (outlines on/off), so no class uses those.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Group = Literal["normal", "abnormal"]

RESERVED_KEYS: frozenset[str] = frozenset({"Enter", "Backspace", "Escape", "s", "f", "v"})


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


# --- names used by analysers and datasets ---------------------------------------------
# The analyser's own folder names (CellaVision exports), dataset fine labels (PBC) and the
# codes themselves. Only names seen in real exports or documented datasets are listed;
# an unknown name is reported by the import rather than guessed. Keys are compared after
# ``normalise_source_name``.
_SOURCE_NAMES: dict[str, tuple[str, ...]] = {
    "NE": (
        "Segmented neutrophils",
        "Segmented neutrophil",
        "Band neutrophils",
        "Band neutrophil",
        "Neutrophil",
        "Neutrophils",
        "SNE",
        "BNE",
    ),
    "LY": ("Lymphocyte", "Lymphocytes"),
    "MO": ("Monocyte", "Monocytes"),
    "EO": ("Eosinophil", "Eosinophils"),
    "BA": ("Basophil", "Basophils"),
    "ME": ("Metamyelocyte", "Metamyelocytes", "MMY"),
    "MY": ("Myelocyte", "Myelocytes"),
    "PR": ("Promyelocyte", "Promyelocytes", "PMY"),
    "LR": (
        "Lymphocyte, variant",
        "Variant lymphocyte",
        "Variant lymphocytes",
        "Reactive lymphocyte",
        "Reactive lymphocytes",
    ),
    "LA": (
        "Lymphocyte, abnormal",
        "Abnormal lymphocyte",
        "Abnormal lymphocytes",
        "Malignant lymphocyte",
    ),
    "BL": (
        "Blast, no lineage spec",
        "Blast",
        "Blasts",
        "Myeloblast",
        "Myeloblasts",
        "Lymphoblast",
        "Lymphoblasts",
    ),
    "PC": ("Plasma cell", "Plasma cells"),
    "NR": ("Erythroblast", "Erythroblasts", "NRBC", "Nucleated red blood cell", "ERB"),
    "AR": (
        "Smudge cells",
        "Smudge cell",
        "Artifact",
        "Artifacts",
        "Artefact",
        "Artefacts",
        "Arifact",
    ),
}

# Classes the analyser reports that are not white cells of the 14-Diff scheme. Cells
# under these names are imported without a 14-Diff label; their name is kept.
OUT_OF_TAXONOMY_NAMES: tuple[str, ...] = (
    "Promonocyte",
    "Promonocytes",
    "Giant thrombocyte",
    "Giant thrombocytes",
    "Thrombocyte aggregation",
    "Thrombocyte aggregations",
    "Unidentified",
    "Large thrombocyte",
    "Not classified",
)


def normalise_source_name(name: str) -> str:
    """Case- and whitespace-insensitive key for a class name."""
    return " ".join(name.replace("_", " ").split()).casefold()


_SOURCE_TO_CODE: dict[str, str] = {normalise_source_name(c): c for c in CODES}
for _code, _names in _SOURCE_NAMES.items():
    for _name in _names:
        _SOURCE_TO_CODE[normalise_source_name(_name)] = _code
_OUT_OF_TAXONOMY: frozenset[str] = frozenset(
    normalise_source_name(n) for n in OUT_OF_TAXONOMY_NAMES
)


@dataclass(frozen=True, slots=True)
class SourceClass:
    """What a source's class name means here.

    ``code`` is the 14-Diff code, or None when the name is outside the 14 classes.
    ``known`` says whether the name is in the mapping at all (False for a name nobody
    has told us about, which an import reports so the mapping can be extended).
    """

    name: str
    code: str | None
    known: bool


def resolve_source_name(name: str) -> SourceClass:
    key = normalise_source_name(name)
    code = _SOURCE_TO_CODE.get(key)
    if code is not None:
        return SourceClass(name=name, code=code, known=True)
    return SourceClass(name=name, code=None, known=key in _OUT_OF_TAXONOMY)


def _check_consistency() -> None:
    keys = [c.key for c in CLASSES]
    if len(set(CODES)) != len(CODES):
        raise RuntimeError("duplicate 14-Diff codes")
    if len(set(keys)) != len(keys):
        raise RuntimeError("duplicate labelling keys")
    if RESERVED_KEYS.intersection(keys):
        raise RuntimeError("a labelling key collides with a key the UI reserves")
    if _OUT_OF_TAXONOMY.intersection(_SOURCE_TO_CODE):
        raise RuntimeError("a source name is both a 14-Diff class and outside the taxonomy")


_check_consistency()
