"""What a person may see of a cell: the blinding policy, in one place, applied where cells
are read (after Zulip's ``access_message``: who may see what is decided by the selector
that reads the data, never by a serializer).

Readers (hematologists and senior hematologists who are not admins) are measured by gold
cells and read double-read cells independently, so while a cell could give them the answer
they are blinded on it:

- an active gold cell, for every reader: any reader may still be handed it (each gets each
  gold cell once), and one who has read it could pass the expert's answer on. They see it
  as an ordinary unlabelled queued cell, exactly as the queue shows a gold item
  (``review_item_payload``): no current label, no label history, no source class name or
  source labels, no conflict flag, no past review items (one closed item per reader, their
  labels absent from the history, would mark it as gold), no file name.
- a cell the reader holds as an independent read (their lease of an item needing two or
  more reads): no current label and no label history; the source class name stays, as in
  the queue. Other readers' reads of an open item are hidden from everyone anyway
  (``visible_labels``).

File names (``original_filename``) carry the class in PBC-style datasets
(``BA_124389.jpg``), so only admins and data scientists see them (they trace exports and
imports back to the source files); nobody sees the file name of a cell they are blinded
on. The model's prediction stays visible: the queue shows it to the reader too.

Admins and data scientists see everything. ``user=None`` is the system's own view (tasks,
services, exports): everything. docs/security.md, "Blinding", lists every read path.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, overload

from django.db.models import BooleanField, Exists, ExpressionWrapper, OuterRef, Q, QuerySet

from annotation.models import CellImage, GoldCell, ReviewItem
from annotation.roles import ADMIN, DATA_SCIENTIST, HEMATOLOGIST, SENIOR_HEMATOLOGIST, user_roles
from annotation.types import UserLike

READER_ROLES = frozenset({HEMATOLOGIST, SENIOR_HEMATOLOGIST})
FILENAME_ROLES = frozenset({ADMIN, DATA_SCIENTIST})


@dataclass(frozen=True)
class Visibility:
    """What one person may see of one cell."""

    label: bool  # the current label and the label history
    sources: bool  # what the import said: source class name(s), the label-conflict flag
    past_items: bool  # closed review items of the cell
    filename: bool  # original_filename


EVERYTHING = Visibility(label=True, sources=True, past_items=True, filename=True)
NOTHING = Visibility(label=False, sources=False, past_items=False, filename=False)


def _is_reader(roles: frozenset[str]) -> bool:
    return bool(roles & READER_ROLES) and ADMIN not in roles


def user_is_blinded(*, user: UserLike | None) -> bool:
    """Whether ``user`` is a reader, blinded on gold and independent-read cells."""
    return user is not None and _is_reader(user_roles(user))


# Fields of a cell that a reader may be blinded on. Websocket events go to groups every
# signed-in user shares, so none may carry them to a reader (annotation/consumers.py).
CELL_ANSWER_KEYS = frozenset(
    {
        "label",
        "labels",
        "current_label",
        "reads",
        "source_class_name",
        "source_labels",
        "original_filename",
    }
)


def payload_carries_cell_answers(payload: Any) -> bool:
    """Whether a broadcast payload holds, at any depth, a field of ``CELL_ANSWER_KEYS``."""
    if isinstance(payload, dict):
        return any(
            key in CELL_ANSWER_KEYS or payload_carries_cell_answers(value)
            for key, value in payload.items()
        )
    if isinstance(payload, list | tuple):
        return any(payload_carries_cell_answers(value) for value in payload)
    return False


def _open_for(user: UserLike) -> QuerySet[ReviewItem]:
    return ReviewItem.objects.filter(
        cell=OuterRef("pk"), status=ReviewItem.Status.LEASED, leased_to=user.pk
    )


def _gold_cell_q(user: UserLike) -> Q:
    """Active gold cells, and the user's gold item of a cell retired while they hold it."""
    active = GoldCell.objects.filter(cell=OuterRef("pk"), retired_at__isnull=True)
    return Q(Exists(active)) | Q(Exists(_open_for(user).filter(is_gold=True)))


def sources_hidden_q(*, user: UserLike | None) -> Q | None:
    """Cells (a condition on ``CellImage``) whose sources ``user`` may not see, or None
    when they see every cell's."""
    if user is None or not _is_reader(user_roles(user)):
        return None
    return _gold_cell_q(user)


def label_hidden_q(*, user: UserLike | None) -> Q | None:
    """Cells (a condition on ``CellImage``) whose label ``user`` may not see, or None when
    they see every cell's. Filters use it, so blinded cells read as unlabelled there too
    (``?label=NE`` must not find a gold cell the answer column hides)."""
    if user is None or not _is_reader(user_roles(user)):
        return None
    independent = _open_for(user).filter(labels_required__gt=1)
    return _gold_cell_q(user) | Q(Exists(independent))


def label_hidden_annotation(*, user: UserLike | None) -> ExpressionWrapper | None:
    """``label_hidden_q`` as a boolean column, to read with the cells in one query."""
    q = label_hidden_q(user=user)
    return None if q is None else ExpressionWrapper(q, output_field=BooleanField())


def sources_hidden_annotation(*, user: UserLike | None) -> ExpressionWrapper | None:
    q = sources_hidden_q(user=user)
    return None if q is None else ExpressionWrapper(q, output_field=BooleanField())


def _filename_allowed(user: UserLike | None) -> bool:
    return user is None or bool(user_roles(user) & FILENAME_ROLES)


def _visibility(*, label: bool, sources: bool, filename_role: bool) -> Visibility:
    blinded = not label
    return Visibility(
        label=label,
        sources=sources,
        past_items=sources,
        filename=filename_role and not blinded,
    )


def cell_visibility_for(*, user: UserLike | None, cell_ids: Iterable[int]) -> dict[int, Visibility]:
    """What ``user`` may see of each cell: one query for a reader, none for anyone else.
    Ids that name no cell are left out."""
    ids = list(cell_ids)
    filename_role = _filename_allowed(user)
    label_q, sources_q = label_hidden_q(user=user), sources_hidden_q(user=user)
    if label_q is None or sources_q is None:
        full = _visibility(label=True, sources=True, filename_role=filename_role)
        return {pk: full for pk in ids}
    rows = (
        CellImage.objects.filter(pk__in=ids)
        .annotate(
            label_hidden=ExpressionWrapper(label_q, output_field=BooleanField()),
            sources_hidden=ExpressionWrapper(sources_q, output_field=BooleanField()),
        )
        .values_list("pk", "label_hidden", "sources_hidden")
    )
    return {
        pk: _visibility(
            label=not label_hidden, sources=not sources_hidden, filename_role=filename_role
        )
        for pk, label_hidden, sources_hidden in rows
    }


def review_item_visibility(*, user: UserLike | None, item: ReviewItem) -> Visibility:
    """What the holder of a leased item may see of its cell in the queue, without a query
    (the queue reads one cell per item and must stay cheap). A reader gets what
    ``cell_visibility_for`` gives them for that cell while they hold the item. A gold item
    is disguised for every holder, admins too, as it always was: its label, sources and
    past items would tell it from an ordinary item (admins, who keep the file name, can
    read the gold list anyway)."""
    roles = user_roles(user) if user is not None else frozenset()
    filename_role = _filename_allowed(user)
    reader = user is not None and _is_reader(roles)
    if item.is_gold:
        return Visibility(
            label=False, sources=False, past_items=False, filename=filename_role and not reader
        )
    if not reader or user is None:
        return _visibility(label=True, sources=True, filename_role=filename_role)
    independent = item.labels_required > 1 and item.leased_to_id == user.pk
    return _visibility(label=not independent, sources=True, filename_role=filename_role)


def cell_blind(cell: CellImage, visibility: Visibility) -> CellImage:
    """Take out of ``cell``, in memory only, what ``visibility`` hides. Never save a cell
    that went through this. Prefetched histories (``label_history``, ``review_history``
    from ``cell_get``) are emptied or cut to the open items too."""
    if not visibility.label:
        cell.current_label = None
        if hasattr(cell, "label_history"):
            cell.label_history = []
    if not visibility.sources:
        cell.source_class_name = ""
        cell.source_labels = []
        cell.has_label_conflict = False
    if not visibility.past_items and hasattr(cell, "review_history"):
        cell.review_history = [
            i for i in cell.review_history if i.status in (ReviewItem.Status.QUEUED, "leased")
        ]
    if not visibility.filename:
        cell.original_filename = ""
    return cell


class BlindedCells(Sequence[CellImage]):
    """A cell queryset as pagination reads it (``count()``, then one slice), each cell of
    the slice blinded for ``user``: one more query per page, for readers only."""

    def __init__(self, queryset: QuerySet[CellImage], *, user: UserLike | None) -> None:
        self.queryset = queryset
        self.user = user

    def count(self, value: Any = None) -> int:
        return self.queryset.count()

    def __len__(self) -> int:
        return self.count()

    @overload
    def __getitem__(self, index: int) -> CellImage: ...
    @overload
    def __getitem__(self, index: slice) -> list[CellImage]: ...
    def __getitem__(self, index: int | slice) -> CellImage | list[CellImage]:
        if isinstance(index, int):
            return self[index : index + 1][0]
        cells = list(self.queryset[index])
        return cells_blind(cells=cells, user=self.user)

    def __iter__(self) -> Iterator[CellImage]:
        return iter(cells_blind(cells=list(self.queryset), user=self.user))


def cells_blind(*, cells: list[CellImage], user: UserLike | None) -> list[CellImage]:
    """``cell_blind`` for each of ``cells`` as ``user`` may see it (one query at most)."""
    if not cells:
        return cells
    seen = cell_visibility_for(user=user, cell_ids=[c.pk for c in cells])
    for cell in cells:
        cell_blind(cell, seen.get(cell.pk, NOTHING))  # a cell gone since: fail closed
    return cells


__all__ = [
    "EVERYTHING",
    "NOTHING",
    "BlindedCells",
    "Visibility",
    "cell_blind",
    "cell_visibility_for",
    "cells_blind",
    "label_hidden_annotation",
    "label_hidden_q",
    "payload_carries_cell_answers",
    "review_item_visibility",
    "sources_hidden_annotation",
    "sources_hidden_q",
    "user_is_blinded",
]
