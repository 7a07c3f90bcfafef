"""``chestzoo serve``: a small Flask application around :class:`~chestzoo.serve.models.ServedModels`.

Routes: ``/`` (the page), ``/static/<name>`` (its script and style, kept in memory: a request path never reaches the
file system), ``/api/status``, ``/api/analyse`` (multipart upload, field ``file``), ``/api/heatmap``,
``/api/generate/gmvae`` and ``/api/generate/dcgan`` (JSON). Errors come back as ``{"error": message}`` (plus
``command`` when a bundle must be trained first) with a 4xx status.
"""

from __future__ import annotations

import logging
from importlib import resources

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from ..data.input_gate import check_file
from .models import ExpiredImage, RequestError, ServedModels
from .uploads import UploadError, read_upload

logger = logging.getLogger(__name__)

STATIC = {"app.js": "text/javascript", "style.css": "text/css"}
CSP = "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; object-src 'none'"


def _static_files() -> dict[str, bytes]:
    folder = resources.files("chestzoo.serve") / "static"
    return {name: (folder / name).read_bytes() for name in ["index.html", *STATIC]}


class NotTrained(Exception):
    def __init__(self, problem: dict):
        super().__init__(problem["message"])
        self.problem = problem


def create_app(models: ServedModels, max_upload_mb: float = 32.0, accept_any_image: bool = False) -> Flask:
    app = Flask(__name__, static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = int(max_upload_mb * 1024 * 1024)
    files = _static_files()
    limit_text = f"{max_upload_mb:g} MB"

    def need(name: str) -> None:
        if name not in models.models:
            raise NotTrained(models.problems[name])

    def number(payload: dict, key: str, default: int) -> int:
        value = payload.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise RequestError(f"{key} must be a whole number")
        try:
            return int(value)
        except ValueError:
            raise RequestError(f"{key} must be a whole number, not {value!r}") from None

    @app.after_request
    def headers(response: Response) -> Response:
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Content-Security-Policy"] = CSP
        response.headers["Cache-Control"] = "no-store"
        return response

    @app.errorhandler(RequestEntityTooLarge)
    def too_large(exc):
        return jsonify(error=f"the upload is larger than {limit_text}"), 413

    @app.errorhandler(UploadError)
    def bad_upload(exc):
        return jsonify(error=str(exc)), 400

    @app.errorhandler(RequestError)
    def bad_request(exc):
        return jsonify(error=str(exc)), 400

    @app.errorhandler(ExpiredImage)
    def gone(exc):
        return jsonify(error=str(exc)), 404

    @app.errorhandler(NotTrained)
    def not_trained(exc):
        return jsonify(error=exc.problem["message"], command=exc.problem["command"]), 409

    @app.errorhandler(HTTPException)
    def http_error(exc):
        return jsonify(error=f"{exc.code} {exc.name}"), exc.code

    @app.errorhandler(Exception)
    def internal_error(exc):  # a bug, not the user's input: logged with its traceback, summarised for the page
        logger.exception("request failed")
        return jsonify(error=f"internal error ({type(exc).__name__}: {exc})"), 500

    @app.get("/")
    def index():
        return Response(files["index.html"], mimetype="text/html")

    @app.get("/static/<name>")
    def static_file(name: str):
        if name not in STATIC:  # a fixed list: the name is a dictionary key, never a path
            return jsonify(error="not found"), 404
        return Response(files[name], mimetype=STATIC[name])

    @app.get("/api/status")
    def status():
        return jsonify({**models.status(), "max_upload_mb": max_upload_mb})

    @app.post("/api/analyse")
    def analyse():
        upload = request.files.get("file")
        if upload is None:
            raise UploadError("no file in the request (form field 'file')")
        data = upload.read()
        with read_upload(data, upload.filename or "upload") as (path, image):
            verdict = check_file(path, accept_any=accept_any_image)
            if not verdict.accepted:
                raise UploadError(f"{upload.filename or 'upload'}: not analysed, since it is not a frontal chest radiograph: "
                                  f"{verdict.reason} (serve with --accept_any_image True to analyse it anyway)")
            result = models.analyse(path, image)
        result["results"]["file"] = upload.filename or "upload"
        result["results"]["input_check"] = str(verdict)
        result["results"]["settings"] = models.settings
        return jsonify(result)

    @app.get("/api/heatmap")
    def heatmap():
        need("cxr14_lse_classification")
        args = request.args
        return jsonify(heatmap=models.heatmap(args.get("token", ""), args.get("finding", ""), args.get("method", "")))

    @app.post("/api/generate/gmvae")
    def generate_gmvae():
        need("cxr14_gmvae")
        payload = request.get_json(silent=True) or {}
        findings = payload.get("findings", [])
        if not isinstance(findings, list) or not all(isinstance(f, str) for f in findings):
            raise RequestError("findings must be a list of finding names")
        return jsonify(models.gmvae_samples(findings, number(payload, "per_finding", 4), number(payload, "seed", 0)))

    @app.post("/api/generate/dcgan")
    def generate_dcgan():
        need("lung_ct_dcgan")
        payload = request.get_json(silent=True) or {}
        return jsonify(models.dcgan_samples(number(payload, "count", 16), number(payload, "seed", 0)))

    return app


def serve(host: str = "127.0.0.1", port: int = 8000, max_upload_mb: float = 32.0, accept_any_image: bool = False,
          **model_options) -> None:
    """Load the models, then serve the page until interrupted."""
    from werkzeug.serving import make_server

    models = ServedModels(**model_options)
    app = create_app(models, max_upload_mb, accept_any_image)
    server = make_server(host, int(port), app, threaded=True)
    print(f"chestzoo serve: open http://{host}:{server.server_port}/ (Ctrl+C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("chestzoo serve: stopped", flush=True)
    finally:
        server.server_close()
