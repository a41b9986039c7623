"""Settings, all from the environment.

With no environment at all this is the embedded default: SQLite and local files under
``WBC_DATA_DIR`` (./data), Celery tasks run in-process, an in-memory channel layer.
``DATABASE_URL`` switches to PostgreSQL (or any dj-database-url backend); ``REDIS_URL``
switches Celery to a Redis broker with the queues ``cpu`` and ``gpu`` and Channels to the
Redis layer. See README.md, "Configuration".
"""

from __future__ import annotations

import os
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    if raw.lower() in {"1", "true", "yes", "on"}:
        return True
    if raw.lower() in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name}={raw!r} is not a boolean; use true or false")


def env_list(name: str, default: list[str]) -> list[str]:
    raw = os.environ.get(name)
    if not raw:
        return default
    return [item.strip() for item in raw.split(",") if item.strip()]


DEBUG = env_bool("DEBUG", False)
_DEV_SECRET = "dev-only-insecure-secret-key-set-SECRET_KEY-in-production"
# WBC_ENV=production (set by docker-compose.yml) refuses to start without a real secret.
PRODUCTION = os.environ.get("WBC_ENV", "development") == "production"
SECRET_KEY = os.environ.get("SECRET_KEY") or ("" if PRODUCTION else _DEV_SECRET)
if not SECRET_KEY:
    raise ImproperlyConfigured("WBC_ENV=production needs SECRET_KEY in the environment")

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["127.0.0.1", "localhost", "testserver"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

DATA_DIR = Path(os.environ.get("WBC_DATA_DIR", BASE_DIR / "data")).resolve()

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "axes",  # the sign-in lockout (annotation/services/login_throttle.py)
    "annotation",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Content-Security-Policy on every page (wbcportal/middleware.py, WBC_CSP below).
    "wbcportal.middleware.ContentSecurityPolicyMiddleware",
    # Serves the UI's static files from the app itself, in the embedded default and in
    # production alike (compressed, cache-busted after collectstatic).
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Answers a sign-in axes locked out (wbcportal/login.py). Above the sync-only database
    # middleware, so it runs sync and gets the form's page (its async path drops it).
    "axes.middleware.AxesMiddleware",
    # A lost database connection: 503 with what to do (wbcportal/middleware.py).
    "wbcportal.middleware.DatabaseUnavailableMiddleware",
]

ROOT_URLCONF = "wbcportal.urls"
ASGI_APPLICATION = "wbcportal.asgi.application"
WSGI_APPLICATION = None

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "frontend"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- database -------------------------------------------------------------------------
DATABASE_URL = os.environ.get("DATABASE_URL", "")
if DATABASE_URL:
    # Under ASGI every request runs in its own thread, so persistent per-thread
    # connections would pile up (one per request) until PostgreSQL refuses more. Hence no
    # persistent connections by default; WBC_DB_POOL=true uses psycopg's pool instead.
    DATABASES = {
        "default": dj_database_url.parse(
            DATABASE_URL, conn_max_age=int(os.environ.get("WBC_DB_CONN_MAX_AGE", 0))
        )
    }
    if env_bool("WBC_DB_POOL", False):
        DATABASES["default"]["CONN_MAX_AGE"] = 0
        DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
            "min_size": int(os.environ.get("WBC_DB_POOL_MIN", 2)),
            "max_size": int(os.environ.get("WBC_DB_POOL_MAX", 16)),
            "timeout": 10,
        }
else:
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    # SQLite has one writer at a time; the web server's request threads and the embedded
    # task thread (wbcportal/embedded.py) all write. WAL lets readers go on while one
    # writes. IMMEDIATE makes every transaction take the write lock when it begins, so a
    # writer waits its turn (up to ``timeout`` seconds, SQLite's busy timeout) instead of
    # failing: a DEFERRED transaction that has read and then wants to write while another
    # holds the lock gets "database is locked" at once, busy timeout or not, since waiting
    # there could deadlock. synchronous=NORMAL is durable across crashes of the process
    # under WAL (a power cut can lose the last commits, never corrupt the file).
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": str(DATA_DIR / "wbcportal.sqlite3"),
            "OPTIONS": {
                "timeout": int(os.environ.get("WBC_SQLITE_TIMEOUT", 30)),
                "transaction_mode": "IMMEDIATE",
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL",
            },
        }
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- storage --------------------------------------------------------------------------
# Any django-storages backend can be named in WBC_STORAGE_BACKEND (e.g. S3); its own
# settings then come from its documented environment variables.
MEDIA_ROOT = Path(os.environ.get("MEDIA_ROOT", DATA_DIR / "media")).resolve()
MEDIA_URL = "/media/"
STORAGES = {
    "default": {
        "BACKEND": os.environ.get(
            "WBC_STORAGE_BACKEND", "django.core.files.storage.FileSystemStorage"
        ),
    },
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
STATIC_URL = "/static/"
STATIC_ROOT = DATA_DIR / "static"
# Without collectstatic (the embedded default) files are found where they live.
WHITENOISE_USE_FINDERS = True
STATICFILES_DIRS = [BASE_DIR / "frontend" / "static"]

# --- auth -----------------------------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
# Sign-in lockout per username and client address, by django-axes
# (annotation/services/login_throttle.py): this many failures, each within the window of
# the one before, lock the pair out for the window.
WBC_LOGIN_MAX_FAILURES = int(os.environ.get("WBC_LOGIN_MAX_FAILURES", 5))
WBC_LOGIN_WINDOW_SECONDS = int(os.environ.get("WBC_LOGIN_WINDOW_SECONDS", 15 * 60))
AUTHENTICATION_BACKENDS = [
    # First: a locked-out pair is refused before its password is checked.
    "wbcportal.login.LockoutBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
# Callables, so the two WBC_ settings above are read on each attempt.
AXES_FAILURE_LIMIT = "annotation.services.login_throttle.login_failure_limit"
AXES_COOLOFF_TIME = "annotation.services.login_throttle.login_cooloff"
AXES_USERNAME_CALLABLE = "annotation.services.login_throttle.login_username"
AXES_LOCKOUT_CALLABLE = "wbcportal.login.lockout_response"
AXES_RESET_ON_SUCCESS = True
# Attempts refused during a lockout do not prolong it: it ends when the message said.
AXES_RESET_COOL_OFF_ON_FAILURE_DURING_LOCKOUT = False
# Failed sign-ins and lockouts are audit events; axes' log of every successful sign-in
# would be a new table that grows without bound (the portal never kept one).
AXES_DISABLE_ACCESS_LOG = True
# Cells the labelling screen leases and loads ahead of the one on screen (0: one at a
# time, fetched after each label; benchmarks/bench_browser.py measures both).
WBC_LABEL_PREFETCH = max(0, min(9, int(os.environ.get("WBC_LABEL_PREFETCH", 4))))
LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/accounts/login/"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

# --- Redis: Celery and Channels -------------------------------------------------------
REDIS_URL = os.environ.get("REDIS_URL", "")

# The queues themselves are declared in wbcportal/celery.py. Route by resource; the task
# names are those the tasks had in mlworker/tasks.py (annotation/tasks/ now).
CELERY_TASK_DEFAULT_QUEUE = "cpu"
CELERY_TASK_ROUTES = {
    "mlworker.tasks.segment_*": {"queue": "cpu"},
    "mlworker.tasks.score_*": {"queue": "gpu"},
    "mlworker.tasks.train_*": {"queue": "gpu"},
}
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_TIME_LIMIT = int(os.environ.get("CELERY_TASK_TIME_LIMIT", 6 * 3600))
CELERY_TASK_SOFT_TIME_LIMIT = int(os.environ.get("CELERY_TASK_SOFT_TIME_LIMIT", 6 * 3600 - 60))
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
# Tasks write their results to the database; nothing waits on a task's return value. Not
# tracking results also keeps the web app from subscribing to Redis for each task it
# sends, a subscription that after a Redis outage fails for good ("the Celery
# application must be restarted"): tests/faults/test_redis.py.
CELERY_TASK_IGNORE_RESULT = True
CELERY_TIMEZONE = TIME_ZONE
# A cell still lacking its segmentation or prediction this long after it was imported,
# while no such task waits in the queue and none has stored a result for this long, is
# stranded (annotation/selectors/pipeline.py): housekeeping queues it again and /health/
# says "degraded". Longer than one batch takes, so a live worker's batch is left alone.
WBC_STRANDED_AFTER_SECONDS = int(os.environ.get("WBC_STRANDED_AFTER_SECONDS", 120))
if REDIS_URL:
    # Shared by every web process: throttling, the queue-broadcast debounce.
    CACHES = {
        "default": {
            "BACKEND": "wbcportal.cache.SharedRedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": "wbc",
        }
    }
    CELERY_BROKER_URL = REDIS_URL
    CELERY_RESULT_BACKEND = REDIS_URL
    CELERY_TASK_ALWAYS_EAGER = False
    # Redis hands an unacknowledged task to another worker after this long, whether or
    # not its worker is still running it: it must exceed the longest task (training, 6 h),
    # or a slow task would run twice. So it is only the last resort for a dead worker's
    # task: housekeeping queues stranded cells again (WBC_STRANDED_AFTER_SECONDS) and the
    # training watchdog fails a silent job (WBC_TRAINING_HEARTBEAT_TIMEOUT) long before;
    # the late redelivery then finds its work done. docs/faults.md.
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "visibility_timeout": int(
            os.environ.get("WBC_VISIBILITY_TIMEOUT", CELERY_TASK_TIME_LIMIT + 600)
        )
    }
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            # redis-py 8 reads with a 5 s socket timeout by default, shorter than the
            # layer's idle blocking read: every websocket would drop after 5 s.
            "CONFIG": {"hosts": [{"address": REDIS_URL, "socket_timeout": None}]},
        }
    }
else:
    # Embedded default: no broker, tasks run in the calling process. In the web server
    # (wbcportal/asgi.py sets WBC_TASKS_IN_BACKGROUND) they run one at a time in a
    # background thread, as a solo worker would, so a request that starts a training
    # returns at once (wbcportal/embedded.py); commands such as load_demo run them inline.
    CELERY_BROKER_URL = "memory://"
    CELERY_RESULT_BACKEND = "cache+memory://"
    CELERY_TASK_ALWAYS_EAGER = True
    CELERY_TASK_EAGER_PROPAGATES = True
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

# Embedded default only (no REDIS_URL): run in-process tasks in one background thread.
WBC_TASKS_IN_BACKGROUND = not REDIS_URL and env_bool("WBC_TASKS_IN_BACKGROUND", False)

# --- import limits --------------------------------------------------------------------
# A single-cell crop from the analyser is 360x363; anything much larger is a slide
# overview or not a cell crop at all.
WBC_MAX_CELL_SIDE = int(os.environ.get("WBC_MAX_CELL_SIDE", 1024))
WBC_MIN_CELL_SIDE = int(os.environ.get("WBC_MIN_CELL_SIDE", 32))
WBC_MAX_UPLOAD_BYTES = int(os.environ.get("WBC_MAX_UPLOAD_BYTES", 20 * 1024 * 1024))
WBC_MAX_ZIP_BYTES = int(os.environ.get("WBC_MAX_ZIP_BYTES", 4 * 1024 * 1024 * 1024))
# A zip member that unpacks to more than this many times its compressed size is refused
# from the archive's directory, before a byte is extracted (a zip bomb); real JPEG/PNG
# crops barely compress, a BMP or TIFF a few times.
WBC_MAX_ZIP_RATIO = int(os.environ.get("WBC_MAX_ZIP_RATIO", 100))
# Request bodies other than uploaded files (JSON, form fields): over this is a 413.
DATA_UPLOAD_MAX_MEMORY_SIZE = int(os.environ.get("WBC_MAX_BODY_BYTES", 2_621_440))
# JSON bodies nested deeper than this are a 400 (annotation/api/parsers.py).
WBC_API_MAX_JSON_DEPTH = int(os.environ.get("WBC_API_MAX_JSON_DEPTH", 32))

# --- production hardening -------------------------------------------------------------
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", PRODUCTION)
CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", PRODUCTION)
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", PRODUCTION)
SECURE_HSTS_SECONDS = int(os.environ.get("SECURE_HSTS_SECONDS", 31536000 if PRODUCTION else 0))
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", PRODUCTION)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", PRODUCTION)
SECURE_REDIRECT_EXEMPT = [r"^health/$"]  # the load balancer's probe speaks plain HTTP
X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_HTTPONLY = True
# The portal's pages load only their own script and CSS; cell images and masks come from
# the app (thumbnails may be data:/blob: URLs); fetch and the websocket go to the app.
WBC_CSP = os.environ.get(
    "WBC_CSP",
    "default-src 'self'; img-src 'self' data: blob:; connect-src 'self' ws: wss:; "
    "script-src 'self'; style-src 'self'; object-src 'none'; base-uri 'self'; "
    "form-action 'self'; frame-ancestors 'none'",
)
WBC_CSP_EXEMPT = env_list("WBC_CSP_EXEMPT", ["/api/docs/", "/admin/"])

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}

from wbcportal.settings_api import *  # noqa: E402, F403

# --- pipeline -------------------------------------------------------------------------
WBC_SEGMENT_BATCH = int(os.environ.get("WBC_SEGMENT_BATCH", 64))
WBC_SCORE_BATCH = int(os.environ.get("WBC_SCORE_BATCH", 64))
# Extra flags for retraining jobs (mlworker/training.md lists them all). Empty: the
# defaults for retraining from the active version (10 epochs of layer4 + head, then a
# 5-epoch weak-class pass), sized for a GPU worker; on a CPU-only worker use e.g.
# "--epochs-finetune 3 --epochs-weak 1".
WBC_RETRAIN_ARGS = os.environ.get("WBC_RETRAIN_ARGS", "")
WBC_RETRAIN_CRON = os.environ.get("WBC_RETRAIN_CRON", "0 2 * * *")  # nightly at 02:00
# Cached-trunk retraining keeps the frozen trunk's activations here, per trunk fingerprint,
# so the next retrain skips decoding and the trunk (mlworker/train/cached.py); "" = memory only.
WBC_TRUNK_CACHE_DIR = os.environ.get("WBC_TRUNK_CACHE_DIR", str(DATA_DIR / "trunk-cache"))
WBC_TRAINING_HEARTBEAT_TIMEOUT = int(os.environ.get("WBC_TRAINING_HEARTBEAT_TIMEOUT", 600))
# Scoring engine of this worker (docs/cpu-scoring.md): "torch" (the reference; GPU or CPU),
# "onnx" (the model exported to ONNX, run with ONNX Runtime: CPU workers) or "onnx-int8"
# (the same, quantised to int8 with calibration cells). The export is made on first use
# of a version in each worker and kept in WBC_ONNX_CACHE_DIR; if it fails, torch scores.
WBC_SCORING_ENGINE = os.environ.get("WBC_SCORING_ENGINE", "torch")
if WBC_SCORING_ENGINE not in ("torch", "onnx", "onnx-int8"):
    raise ImproperlyConfigured(
        f"WBC_SCORING_ENGINE={WBC_SCORING_ENGINE!r}: use torch, onnx or onnx-int8"
    )
WBC_ONNX_CACHE_DIR = os.environ.get("WBC_ONNX_CACHE_DIR", str(DATA_DIR / "onnx-cache"))
WBC_ONNX_THREADS = int(os.environ.get("WBC_ONNX_THREADS", 0))  # 0: the worker's cores
# int8 calibrates on the first (oldest) readable cells of the database, up to this many
WBC_ONNX_CALIBRATION_CELLS = int(os.environ.get("WBC_ONNX_CALIBRATION_CELLS", 128))
# ... and its top-1 agreement with fp32 is judged on the next this many (not calibrated on)
WBC_ONNX_CHECK_CELLS = int(os.environ.get("WBC_ONNX_CHECK_CELLS", 256))

# --- results sent to the laboratory information system (docs/lis.md) -----------------
# Off unless configured: a final report (first sign-off, or an amendment) is sent to each
# endpoint set here. FHIR: the base URL that takes a transaction Bundle (POST), with an
# optional bearer token. HL7 v2.5 ORU^R01 over MLLP: host and port.
WBC_LIS_FHIR_URL = os.environ.get("WBC_LIS_FHIR_URL", "")
WBC_LIS_FHIR_TOKEN = os.environ.get("WBC_LIS_FHIR_TOKEN", "")
WBC_LIS_HL7_HOST = os.environ.get("WBC_LIS_HL7_HOST", "")
WBC_LIS_HL7_PORT = int(os.environ.get("WBC_LIS_HL7_PORT", 0) or 0)
# MSH-3..6 of the HL7 message: who sends and who receives.
WBC_LIS_HL7_SENDING_FACILITY = os.environ.get("WBC_LIS_HL7_SENDING_FACILITY", "LAB")
WBC_LIS_HL7_RECEIVING_APPLICATION = os.environ.get("WBC_LIS_HL7_RECEIVING_APPLICATION", "LIS")
WBC_LIS_HL7_RECEIVING_FACILITY = os.environ.get("WBC_LIS_HL7_RECEIVING_FACILITY", "LAB")
# Seconds one attempt may take (connect, send, and the receiver's answer or ACK).
WBC_LIS_TIMEOUT_SECONDS = float(os.environ.get("WBC_LIS_TIMEOUT_SECONDS", 10))
# Attempts after the first while the receiver is unreachable or answers 5xx, waiting
# BACKOFF, 2xBACKOFF, 4xBACKOFF ... (at most BACKOFF_MAX) in between; then "failed", and
# an admin can send it again. Read when the worker starts.
WBC_LIS_MAX_RETRIES = int(os.environ.get("WBC_LIS_MAX_RETRIES", 10))
WBC_LIS_RETRY_BACKOFF_SECONDS = int(os.environ.get("WBC_LIS_RETRY_BACKOFF_SECONDS", 30))
WBC_LIS_RETRY_BACKOFF_MAX_SECONDS = int(os.environ.get("WBC_LIS_RETRY_BACKOFF_MAX_SECONDS", 3600))
# A pending or retrying delivery whose next attempt is this overdue lost its task (a
# worker died, Redis was flushed): housekeeping sends it to the queue again.
WBC_LIS_LOST_AFTER_SECONDS = int(os.environ.get("WBC_LIS_LOST_AFTER_SECONDS", 300))
