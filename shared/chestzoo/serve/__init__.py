"""``chestzoo serve``: a web page for trying the trained bundles on one chest X-ray (see :mod:`.app`)."""

from .app import create_app, serve
from .models import ROLES, ServedModels

__all__ = ["ROLES", "ServedModels", "create_app", "serve"]
