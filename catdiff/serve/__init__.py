"""The web app (FastAPI): ``catdiff serve``."""

from catdiff.serve.app import create_app

__all__ = ["create_app"]
