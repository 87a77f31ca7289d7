"""A Pyramid app for tests/test_frameworks.py: a view returning a Response, a JSON renderer, a
redirect raised as HTTPFound, Pyramid's own 404, and WebOb's answer to HEAD (its headers and an
iterable yielding nothing)."""

from __future__ import annotations

from pyramid.config import Configurator
from pyramid.httpexceptions import HTTPFound
from pyramid.response import Response


def home(request) -> Response:
    return Response("pyramid home\n", content_type="text/plain")


def hello(request) -> dict[str, str]:
    return {"hello": request.matchdict["name"]}


def go(request) -> Response:
    raise HTTPFound(location=request.route_url("home"))


def make_app():
    with Configurator() as config:
        config.add_route("home", "/")
        config.add_route("hello", "/hello/{name}")
        config.add_route("go", "/go")
        config.add_view(home, route_name="home")
        config.add_view(hello, route_name="hello", renderer="json")
        config.add_view(go, route_name="go")
        return config.make_wsgi_app()


application = make_app()
