"""Serving: an OpenAI-compatible HTTP API over the continuous-batching engine, with a playground page.

app.py (routes, loading, health), schemas.py (request validation), generation.py (requests to
engine requests, events to responses), streaming.py (engine thread to server-sent events),
admission.py (bounded queue), auth.py (API key), metrics.py (Prometheus), embeddings.py (sentence
embeddings), server.py (uvicorn, graceful shutdown), static/ (the playground).
"""

from lmlab.serving.app import Backend, ServerLimits, create_app
from lmlab.serving.server import ServeSettings, build_server, serve, serve_in_thread

__all__ = ["Backend", "ServeSettings", "ServerLimits", "build_server", "create_app", "serve", "serve_in_thread"]
