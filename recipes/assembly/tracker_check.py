"""A start-up check of an MLflow tracking server (`logger=mlflow logger.mlflow.tracking_uri=http://...`): one
short request before anything trains, so a server that is not there is one line, not a minute of MLflow's
retries ending in a page of chained tracebacks. A local store (the default SQLite file) needs no check."""

from __future__ import annotations

import ssl
import urllib.error
import urllib.request
from typing import Any

from omegaconf import DictConfig

from recipes.errors import RecipeError

__all__ = ["TIMEOUT_S", "check_tracking_server"]

TIMEOUT_S = 5.0  # a tracking server answers its health check in well under a second


def _unreachable(uri: str) -> str | None:
    """Why no server answers at `uri` (refused, timed out, unknown host), else None. Any HTTP answer, an
    error status included (a proxy in front, a server without /health), or a TLS handshake counts as one
    being there."""
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=TIMEOUT_S):  # noqa: S310 - http(s) only
            return None
    except urllib.error.HTTPError:
        return None
    except urllib.error.URLError as err:
        reason: Any = err.reason
        if isinstance(reason, ssl.SSLError):  # something answers; MLflow's own TLS settings may accept it
            return None
        return str(getattr(reason, "strerror", None) or reason)
    except TimeoutError:
        return f"no answer within {TIMEOUT_S:g} s"
    except OSError as err:
        return err.strerror or str(err)


def check_tracking_server(cfg: DictConfig) -> None:
    """Refuse an http(s) MLflow tracking URI where no server answers."""
    node = (cfg.get("logger") or {}).get("mlflow")
    uri = str(node.get("tracking_uri") or "") if node else ""
    if not uri.startswith(("http://", "https://")):
        return
    why = _unreachable(uri)
    if why is not None:
        raise RecipeError(
            f"logger.mlflow.tracking_uri={uri}: no MLflow tracking server answers there ({why}); start it "
            f"(mlflow server --host HOST --port PORT) or drop the override to track in the local SQLite store"
        )
