"""Audit events and labels are append-only in the database itself (PostgreSQL): an
UPDATE or DELETE of a row raises, whatever code or person issues it."""

from django.db import migrations

TABLES = ("annotation_auditevent", "annotation_label")

FUNCTION = """
CREATE OR REPLACE FUNCTION wbc_refuse_change() RETURNS trigger AS $$
BEGIN
  RAISE EXCEPTION '%% rows are append-only: %% refused', TG_TABLE_NAME, TG_OP
    USING ERRCODE = 'insufficient_privilege';
END;
$$ LANGUAGE plpgsql;
"""


def forwards(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    schema_editor.execute(FUNCTION)
    for table in TABLES:
        schema_editor.execute(
            f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
            "FOR EACH ROW EXECUTE FUNCTION wbc_refuse_change()"
        )


def backwards(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    for table in TABLES:
        schema_editor.execute(f"DROP TRIGGER IF EXISTS {table}_append_only ON {table}")
    schema_editor.execute("DROP FUNCTION IF EXISTS wbc_refuse_change()")


class Migration(migrations.Migration):
    dependencies = [("annotation", "0003_evaluation_set")]

    operations = [migrations.RunPython(forwards, backwards)]
