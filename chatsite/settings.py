"""Settings, all from the environment (and an optional `.env` file at the root).

The defaults give a working single-process chat on SQLite with the bundled model;
`DATABASE_URL` and `REDIS_URL` turn it into a team deployment.
"""

import os
import secrets
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import dj_database_url
from dotenv import load_dotenv

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("CHAT_VAR_DIR", BASE_DIR / "var"))
VAR_DIR.mkdir(parents=True, exist_ok=True)

load_dotenv(BASE_DIR / ".env", override=False)


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_list(name: str, default: str) -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


def env_float(name: str, default: float) -> float:
    value = os.environ.get(name, "").strip()
    return float(value) if value else default


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    return int(value) if value else default


def _secret_key() -> str:
    key = os.environ.get("DJANGO_SECRET_KEY", "").strip()
    if key:
        return key
    path = VAR_DIR / "secret_key"
    if not path.exists():
        # Created once with owner-only permissions and reused by every process.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(50))
    return path.read_text().strip()


SECRET_KEY = _secret_key()
DEBUG = env_bool("DJANGO_DEBUG", False)
ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost")


def _derived_origins() -> list[str]:
    port = os.environ.get("PORT", "8000")
    origins = []
    for host in ALLOWED_HOSTS:
        if host.startswith(".") or host == "*":
            continue
        for scheme in ("http", "https"):
            origins += [f"{scheme}://{host}", f"{scheme}://{host}:{port}"]
    return origins


# Also the only origins a WebSocket handshake is accepted from.
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS", "") or _derived_origins()

INSTALLED_APPS = [
    "daphne",
    "conversations.apps.ChatAdminConfig",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "channels",
    "csp",
    "axes",
    "teams",
    "conversations",
    "billing",
    "review",
    "api",
    # Sign-in by the company's identity provider, and accounts people run themselves.
    "allauth",
    "allauth.account",
    "allauth.socialaccount",
    "allauth.socialaccount.providers.openid_connect",
    "accounts",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "csp.middleware.CSPMiddleware",
    "allauth.account.middleware.AccountMiddleware",
    # Last, as django-axes asks: it answers locked-out sign-ins.
    "axes.middleware.AxesMiddleware",
]

AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    # Passwords (refused for everyone but staff when OIDC_ONLY is set), and the
    # backend allauth signs people in with after single sign-on.
    "accounts.backends.SignInBackend",
    # Only for sessions signed in before accounts.backends existed; it never sees a
    # password (SignInBackend's answer on one is final).
    "django.contrib.auth.backends.ModelBackend",
]

ROOT_URLCONF = "chatsite.urls"
ASGI_APPLICATION = "chatsite.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "conversations.context_processors.sidebar",
            ],
        },
    },
]

_default_db = f"sqlite:///{VAR_DIR / 'db.sqlite3'}"
DATABASES = {"default": dj_database_url.parse(os.environ.get("DATABASE_URL") or _default_db)}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # WAL lets the reply checkpoints and page reads proceed side by side;
    # IMMEDIATE transactions wait for the lock instead of failing on upgrade.
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 20,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
# Keep connections between calls: each reply checkpoints through the ORM a few
# times a second, and opening a connection per call showed at the top of profiles.
DATABASES["default"]["CONN_MAX_AGE"] = env_int("DATABASE_CONN_MAX_AGE", 60)
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = os.environ.get("REDIS_URL", "").strip()
if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            # Pub/sub: a group send is one PUBLISH, not a Lua script per member, and
            # nothing piles up in lists for sockets that went away.
            "BACKEND": "chatsite.layers.RedisPubSubChannelLayer",
            "CONFIG": {"hosts": [REDIS_URL]},
        }
    }
else:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "chatsite.layers.InMemoryChannelLayer",
            "CONFIG": {"capacity": 1000},
        }
    }

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
# Sign-in throttling: after 5 failures for one username from one address, that
# pair waits 15 minutes. Counted in the database, so it holds across processes.
AXES_FAILURE_LIMIT = env_int("LOGIN_FAILURE_LIMIT", 5)
AXES_COOLOFF_TIME = env_float("LOGIN_COOLOFF_MINUTES", 15.0) / 60  # hours
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_TEMPLATE = "registration/locked_out.html"
AXES_VERBOSE = False
# Reverse proxies in front of daphne (docs/deploy.md: nginx, so 1): sign-in
# throttling counts the address the outermost of them saw (chatsite/proxies.py).
PROXY_COUNT = env_int("DJANGO_PROXY_COUNT", 0)
AXES_CLIENT_IP_CALLABLE = "chatsite.proxies.client_address"

# Behind a TLS-terminating proxy (see docs/deploy.md) set these; `make run` on
# plain http://127.0.0.1 leaves them off.
SECURE_PROXY_SSL_HEADER = (
    ("HTTP_X_FORWARDED_PROTO", "https")
    if env_bool("DJANGO_SECURE_PROXY_SSL_HEADER", False)
    else None
)
SECURE_SSL_REDIRECT = env_bool("DJANGO_SECURE_SSL_REDIRECT", False)
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = env_bool("DJANGO_SECURE_COOKIES", False)
SECURE_HSTS_SECONDS = env_int("DJANGO_HSTS_SECONDS", 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("DJANGO_HSTS_INCLUDE_SUBDOMAINS", False)
SECURE_HSTS_PRELOAD = env_bool("DJANGO_HSTS_PRELOAD", False)
SECURE_REFERRER_POLICY = "same-origin"
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
X_FRAME_OPTIONS = "DENY"

# The pages need no inline script or style; htmx's WebSocket is same-origin.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'"],
        "img-src": ["'self'"],
        "connect-src": ["'self'"],
        "font-src": ["'self'"],
        "object-src": ["'none'"],
        "base-uri": ["'none'"],
        "form-action": ["'self'"],
        "frame-ancestors": ["'none'"],
    }
}

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "conversation-list"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = VAR_DIR / "static"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "json": {"()": "chatsite.logs.JsonLineFormatter"},
        "line": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
    },
    "filters": {"quiet_health_probes": {"()": "chatsite.logs.QuietHealthProbes"}},
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": os.environ.get("LOG_FORMAT", "json"),
        }
    },
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
    "loggers": {
        "httpx": {"level": "WARNING"},
        "httpcore": {"level": "WARNING"},
        "daphne": {"level": "WARNING"},
        "django.request": {"filters": ["quiet_health_probes"]},
    },
}

# --- Models and the gateway --------------------------------------------------

CLOUDFLARE_ACCOUNT_ID = os.environ.get("CLOUDFLARE_ACCOUNT_ID", "").strip()
CLOUDFLARE_API_TOKEN = os.environ.get("CLOUDFLARE_API_TOKEN", "").strip()
CLOUDFLARE_AI_GATEWAY = os.environ.get("CLOUDFLARE_AI_GATEWAY", "default").strip()
CLOUDFLARE_AI_GATEWAY_TOKEN = os.environ.get("CLOUDFLARE_AI_GATEWAY_TOKEN", "").strip()
CLOUDFLARE_API_BASE_URL = os.environ.get(
    "CLOUDFLARE_API_BASE_URL", "https://api.cloudflare.com/client/v4"
).rstrip("/")
CLOUDFLARE_AI_GATEWAY_BASE_URL = os.environ.get(
    "CLOUDFLARE_AI_GATEWAY_BASE_URL", "https://gateway.ai.cloudflare.com/v1"
).rstrip("/")
CLOUDFLARE_CONFIGURED = bool(CLOUDFLARE_ACCOUNT_ID and CLOUDFLARE_API_TOKEN)

# Prices are USD per million tokens (input, output); operators update them here.
CHAT_MODELS: dict[str, dict[str, Any]] = {
    "anthropic/claude-sonnet-4": {
        "label": "Claude Sonnet 4",
        "provider": "cloudflare",
        "max_output_tokens": 64000,
        "price_per_million": (3.0, 15.0),
    },
    "anthropic/claude-haiku-4.5": {
        "label": "Claude Haiku 4.5",
        "provider": "cloudflare",
        "max_output_tokens": 64000,
        "price_per_million": (1.0, 5.0),
    },
    "local/smollm2-135m": {
        "label": "SmolLM2 135M (bundled, offline)",
        "provider": "local",
        "max_output_tokens": 2048,
        "price_per_million": (0.0, 0.0),
    },
}
CHAT_DEFAULT_MODEL = os.environ.get("CHAT_DEFAULT_MODEL", "").strip() or (
    "anthropic/claude-sonnet-4" if CLOUDFLARE_CONFIGURED else "local/smollm2-135m"
)
CHAT_DEFAULT_MAX_TOKENS = env_int("CHAT_DEFAULT_MAX_TOKENS", 1024)

# Upstream timeouts (seconds) and retries before the first token.
CHAT_CONNECT_TIMEOUT = env_float("CHAT_CONNECT_TIMEOUT", 10.0)
CHAT_HEADERS_TIMEOUT = env_float("CHAT_HEADERS_TIMEOUT", 15.0)
CHAT_FIRST_TOKEN_TIMEOUT = env_float("CHAT_FIRST_TOKEN_TIMEOUT", 60.0)
CHAT_IDLE_TIMEOUT = env_float("CHAT_IDLE_TIMEOUT", 30.0)
CHAT_RETRY_ATTEMPTS = env_int("CHAT_RETRY_ATTEMPTS", 4)
CHAT_RETRY_BUDGET = env_float("CHAT_RETRY_BUDGET", 30.0)
CHAT_RETRY_BASE_DELAY = env_float("CHAT_RETRY_BASE_DELAY", 0.5)
CHAT_RETRY_MAX_DELAY = env_float("CHAT_RETRY_MAX_DELAY", 8.0)

# Streaming: how often text is written to the database and flushed to sockets.
CHAT_CHECKPOINT_INTERVAL = env_float("CHAT_CHECKPOINT_INTERVAL", 0.5)
CHAT_FLUSH_INTERVAL = env_float("CHAT_FLUSH_INTERVAL", 0.1)
# All replies of one process together send at most this many pieces a second: with
# more than CHAT_PIECES_PER_SECOND times CHAT_FLUSH_INTERVAL replies running, the interval
# grows (500 replies: a piece every 0.5 s each).
CHAT_PIECES_PER_SECOND = env_float("CHAT_PIECES_PER_SECOND", 1000.0)
# A running reply writes a heartbeat this often; one silent for CHAT_STALE_AFTER
# seconds belongs to a dead process and is marked interrupted by the sweep.
CHAT_HEARTBEAT_INTERVAL = env_float("CHAT_HEARTBEAT_INTERVAL", 2.0)
CHAT_STALE_AFTER = env_float("CHAT_STALE_AFTER", 15.0)
CHAT_SWEEP_INTERVAL = env_float("CHAT_SWEEP_INTERVAL", 5.0)
CHAT_SHUTDOWN_GRACE = env_float("CHAT_SHUTDOWN_GRACE", 5.0)
# Outages: how long a finished reply keeps retrying its final database write, and
# its final broadcast to pages, before giving up (its text is kept in memory).
CHAT_FINAL_WRITE_PATIENCE = env_float("CHAT_FINAL_WRITE_PATIENCE", 120.0)
CHAT_FINAL_BROADCAST_PATIENCE = env_float("CHAT_FINAL_BROADCAST_PATIENCE", 120.0)
# A page acknowledges what it has read; a socket that leaves more than this many
# characters unread is closed (the page reconnects and catches up).
CHAT_SOCKET_UNREAD_LIMIT = env_int("CHAT_SOCKET_UNREAD_LIMIT", 2_000_000)
CHAT_SEND_RATE_LIMIT = env_int("CHAT_SEND_RATE_LIMIT", 30)
CHAT_SEND_RATE_WINDOW = env_float("CHAT_SEND_RATE_WINDOW", 60.0)
CHAT_MAX_FRAME_BYTES = env_int("CHAT_MAX_FRAME_BYTES", 1_000_000)
CHAT_MAX_MESSAGE_CHARS = env_int("CHAT_MAX_MESSAGE_CHARS", 200_000)
CHAT_VISIBLE_TURNS = env_int("CHAT_VISIBLE_TURNS", 50)
# After a conversation's first reply the cheapest configured model writes its title
# (recorded in the ledger, within the budget); off: the first message's words stay.
CHAT_TITLES = env_bool("CHAT_TITLES", True)
CHAT_TITLE_TIMEOUT = env_float("CHAT_TITLE_TIMEOUT", 30.0)

# --- Accounts: single sign-on (OpenID Connect, django-allauth) and e-mail ----

# One identity provider, provider id `sso`: register the redirect URI
# {origin}/accounts/oidc/sso/login/callback/ there. Unset: password sign-in only.
OIDC_ISSUER = os.environ.get("OIDC_ISSUER", "").strip().rstrip("/")
OIDC_CLIENT_ID = os.environ.get("OIDC_CLIENT_ID", "").strip()
OIDC_CLIENT_SECRET = os.environ.get("OIDC_CLIENT_SECRET", "").strip()
OIDC_NAME = os.environ.get("OIDC_NAME", "").strip() or "single sign-on"
OIDC_SCOPES = os.environ.get("OIDC_SCOPES", "").split() or ["openid", "profile", "email"]
# A claim listing the person's groups: a group named like a team puts them in it.
OIDC_TEAM_CLAIM = os.environ.get("OIDC_TEAM_CLAIM", "").strip()
OIDC_CONFIGURED = bool(OIDC_ISSUER and OIDC_CLIENT_ID)
# Password sign-in only for staff; everyone else signs in through the provider.
OIDC_ONLY = OIDC_CONFIGURED and env_bool("OIDC_ONLY", False)

SOCIALACCOUNT_PROVIDERS: dict[str, Any] = {
    "openid_connect": {
        "OAUTH_PKCE_ENABLED": True,
        "APPS": (
            [
                {
                    "provider_id": "sso",
                    "name": OIDC_NAME,
                    "client_id": OIDC_CLIENT_ID,
                    "secret": OIDC_CLIENT_SECRET,
                    "settings": {
                        "server_url": OIDC_ISSUER,
                        "oauth_pkce_enabled": True,
                        "scope": OIDC_SCOPES,
                    },
                }
            ]
            if OIDC_CONFIGURED
            else []
        ),
    }
}
if OIDC_CONFIGURED:
    # The sign-in form's answer redirects the browser to the provider's authorization
    # endpoint, which browsers check against form-action.
    _issuer = urlsplit(OIDC_ISSUER)
    CONTENT_SECURITY_POLICY["DIRECTIVES"]["form-action"].append(
        f"{_issuer.scheme}://{_issuer.netloc}"
    )
SOCIALACCOUNT_ADAPTER = "accounts.adapters.SocialAccountAdapter"
SOCIALACCOUNT_AUTO_SIGNUP = True
# An existing account is linked only through an address the provider says it verified.
SOCIALACCOUNT_EMAIL_AUTHENTICATION = True
SOCIALACCOUNT_EMAIL_AUTHENTICATION_AUTO_CONNECT = True
SOCIALACCOUNT_STORE_TOKENS = False
SOCIALACCOUNT_REQUESTS_TIMEOUT = env_int("OIDC_TIMEOUT", 5)
ACCOUNT_ADAPTER = "accounts.adapters.AccountAdapter"
ACCOUNT_LOGIN_METHODS = {"username"}
ACCOUNT_SIGNUP_FIELDS = ["email*", "username*", "password1*", "password2*"]
ACCOUNT_EMAIL_VERIFICATION = "none"
ACCOUNT_UNIQUE_EMAIL = True
ACCOUNT_LOGOUT_ON_PASSWORD_CHANGE = False
ACCOUNT_PASSWORD_RESET_BY_CODE_ENABLED = False
# An invitation's link works once, for this many days.
INVITATION_DAYS = env_int("INVITATION_DAYS", 7)

# Password reset mails: printed on the console unless an SMTP server is named.
EMAIL_BACKEND = os.environ.get("EMAIL_BACKEND", "").strip() or (
    "django.core.mail.backends.smtp.EmailBackend"
    if os.environ.get("EMAIL_HOST", "").strip()
    else "django.core.mail.backends.console.EmailBackend"
)
EMAIL_HOST = os.environ.get("EMAIL_HOST", "").strip() or "localhost"
EMAIL_PORT = env_int("EMAIL_PORT", 25)
EMAIL_HOST_USER = os.environ.get("EMAIL_HOST_USER", "").strip()
EMAIL_HOST_PASSWORD = os.environ.get("EMAIL_HOST_PASSWORD", "").strip()
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", False)
EMAIL_USE_SSL = env_bool("EMAIL_USE_SSL", False)
EMAIL_FILE_PATH = os.environ.get("EMAIL_FILE_PATH", "").strip() or str(VAR_DIR / "mail")
DEFAULT_FROM_EMAIL = os.environ.get("DEFAULT_FROM_EMAIL", "").strip() or "chat@localhost"
