from django.apps import AppConfig


class AnnotationConfig(AppConfig):
    name = "annotation"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.db.models.signals import post_migrate

        from annotation.services.roles import roles_ensure_on_migrate

        # Permissions only exist after migrate has run, so role groups are (re)built then.
        post_migrate.connect(roles_ensure_on_migrate, sender=self)

        from django.contrib.auth.signals import user_login_failed

        from annotation.services.audit import audit_login_failed

        # Failed sign-ins belong in the audit trail (who tried which account, from where).
        user_login_failed.connect(audit_login_failed, dispatch_uid="wbc-audit-login-failed")

        from axes.signals import user_locked_out

        from annotation.services.login_throttle import login_locked_audit

        # So are lockouts (django-axes sends the signal; annotation/services/login_throttle.py).
        user_locked_out.connect(login_locked_audit, dispatch_uid="wbc-audit-login-locked")
