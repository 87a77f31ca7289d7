"""The framework apps of the benchmark's realistic scenarios, made on first use.

A real Django project (DEBUG off, the default middleware that needs no database, one plain
view rendering a small page) and a real Flask view. Both are imported only when a scenario asks
for them (``apps.django_view`` / ``apps.flask_view``), so the other scenarios need neither.
"""

from __future__ import annotations

PAGE = "<!doctype html><title>item {id}</title><p>Item {id} of {q}.</p>\n"


def django_app():
    import django
    from django.conf import settings

    if not settings.configured:
        settings.configure(
            DEBUG=False,
            SECRET_KEY="bench-only-not-secret",
            ALLOWED_HOSTS=["*"],
            ROOT_URLCONF=__name__,
            USE_TZ=True,
            MIDDLEWARE=[
                "django.middleware.security.SecurityMiddleware",
                "django.middleware.common.CommonMiddleware",
                "django.middleware.csrf.CsrfViewMiddleware",
                "django.middleware.clickjacking.XFrameOptionsMiddleware",
            ],
            INSTALLED_APPS=[],
            LOGGING_CONFIG=None,
        )
        django.setup()
    from django.core.wsgi import get_wsgi_application
    return get_wsgi_application()


def _django_view(request):
    from django.http import HttpResponse
    return HttpResponse(PAGE.format(id=request.GET.get("id", "0"), q=request.GET.get("q", "")))


def _urls():
    from django.urls import re_path
    return [re_path(r"", _django_view)]


def __getattr__(name):
    # Django reads ROOT_URLCONF's urlpatterns on the first request.
    if name == "urlpatterns":
        return _urls()
    raise AttributeError(name)


def flask_app():
    from flask import Flask, request

    app = Flask("bench")

    @app.route("/", defaults={"path": ""})
    @app.route("/<path:path>")
    def view(path):
        return PAGE.format(id=request.args.get("id", "0"), q=request.args.get("q", ""))

    return app
