from __future__ import annotations

from django.core.management.base import CommandError

from annotation.models import ModelVersion


def version_by_name_or_id(ref: str) -> ModelVersion:
    query = ModelVersion.objects.filter(name=ref)
    if ref.isdigit():
        query = query | ModelVersion.objects.filter(pk=int(ref))
    version = query.first()
    if version is None:
        known = ", ".join(ModelVersion.objects.values_list("name", flat=True)[:20]) or "none"
        raise CommandError(f"No model version {ref!r}; known versions: {known}")
    return version
