"""Production settings: `check --deploy` is clean with the documented variables."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEPLOY_ENV = {
    "DJANGO_DEBUG": "false",
    "DJANGO_SECRET_KEY": "a-deployment-secret-that-is-long-and-random-0123456789-abcdefghij",
    "DJANGO_ALLOWED_HOSTS": "chat.example.com",
    "DJANGO_CSRF_TRUSTED_ORIGINS": "https://chat.example.com",
    "DJANGO_SECURE_COOKIES": "true",
    "DJANGO_SECURE_SSL_REDIRECT": "true",
    "DJANGO_SECURE_PROXY_SSL_HEADER": "true",
    "DJANGO_HSTS_SECONDS": "31536000",
    "DJANGO_HSTS_INCLUDE_SUBDOMAINS": "true",
    "DJANGO_HSTS_PRELOAD": "true",
}


def manage(*args: str, env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "CHAT_VAR_DIR": str(tmp_path), **env}
    full_env.pop("DJANGO_SETTINGS_MODULE", None)
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=full_env, capture_output=True,
        text=True, timeout=120,
    )  # fmt: skip


def test_check_deploy_reports_nothing_with_the_documented_variables(tmp_path) -> None:
    result = manage(
        "check", "--deploy", "--fail-level", "WARNING", env=DEPLOY_ENV, tmp_path=tmp_path
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues (0 silenced)." in result.stdout


def test_check_deploy_warns_when_tls_settings_are_missing(tmp_path) -> None:
    env = {k: v for k, v in DEPLOY_ENV.items() if "SECURE" not in k and "HSTS" not in k}
    result = manage("check", "--deploy", "--fail-level", "WARNING", env=env, tmp_path=tmp_path)
    assert result.returncode != 0
    assert "security.W004" in result.stderr + result.stdout


def test_logs_are_structured_lines(tmp_path) -> None:
    code = (
        "import logging; logging.getLogger('conversations.gateway').warning("
        "'upstream_failure status=%s', 529, extra={'log_id': 'log-1'})"
    )
    result = manage("shell", "-c", code, env={"DJANGO_SECRET_KEY": "x" * 60}, tmp_path=tmp_path)
    line = json.loads(result.stderr.strip().splitlines()[-1])
    assert line["level"] == "WARNING" and line["logger"] == "conversations.gateway"
    assert line["message"] == "upstream_failure status=529" and line["log_id"] == "log-1"
