from django.contrib import admin

from annotation.models import AuditEvent, Case, CellImage, ImportBatch, Label


@admin.register(Case)
class CaseAdmin(admin.ModelAdmin):
    list_display = ("accession_id", "patient_pseudonym", "diagnosis", "status", "created_at")
    search_fields = ("accession_id", "patient_pseudonym")
    list_filter = ("status",)


@admin.register(CellImage)
class CellImageAdmin(admin.ModelAdmin):
    list_display = ("id", "case", "source_class_name", "current_label", "has_label_conflict")
    list_filter = ("has_label_conflict",)
    raw_id_fields = ("case", "current_label")


class ReadOnlyAdmin(admin.ModelAdmin):
    """Labels and audit events are append-only: nobody edits or deletes them here."""

    def has_add_permission(self, request, obj=None):  # type: ignore[no-untyped-def]
        return False

    def has_change_permission(self, request, obj=None):  # type: ignore[no-untyped-def]
        return False

    def has_delete_permission(self, request, obj=None):  # type: ignore[no-untyped-def]
        return False


@admin.register(Label)
class LabelAdmin(ReadOnlyAdmin):
    list_display = ("id", "cell", "code", "source", "annotator", "created_at", "supersedes")
    list_filter = ("source", "code")


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdmin):
    list_display = ("id", "created_at", "actor", "action", "target_type", "target_id")
    list_filter = ("action",)


@admin.register(ImportBatch)
class ImportBatchAdmin(ReadOnlyAdmin):
    list_display = ("id", "source", "status", "files_total", "created_at")
