"""gunicorn entry point: ``gunicorn mlpd.web.wsgi:app``."""

from mlpd.web import create_app

app = create_app()
