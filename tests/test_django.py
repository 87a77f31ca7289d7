"""Django, for real: a project made by ``django-admin startproject`` served through
``spawning.factories.django`` (and as ``mysite.wsgi:application``): the admin login page renders, a
POST with a CSRF token round-trips, static files are not the server's job; and a whole admin
session (log in, 50 pages over one keep-alive connection, log out) as a browser has it, in thread
and green mode. The factory's own checks (bad settings, nothing imported before fork):
tests/factories/test_django_factory.py."""

from __future__ import annotations

import http.cookies
import os
import re
import subprocess
import sys
import urllib.parse
from pathlib import Path

import pytest
from conftest import Browser

pytest.importorskip("django")

DJANGO = "--factory=spawning.factories.django.config_factory"


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """``django-admin startproject mysite`` with its database migrated (the admin login POST looks
    the user up)."""
    root = tmp_path_factory.mktemp("django")
    subprocess.run([sys.executable, "-m", "django", "startproject", "mysite", str(root)],
                   check=True, timeout=60, capture_output=True)
    subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=root, check=True, timeout=60,
                   capture_output=True)
    return root


@pytest.fixture(scope="module")
def superuser(project) -> tuple[str, str]:
    """An admin account in the project's SQLite database: (username, password)."""
    env = {**os.environ, "DJANGO_SUPERUSER_PASSWORD": "spawning-e2e-pass"}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    subprocess.run([sys.executable, "manage.py", "createsuperuser", "--noinput", "--username", "admin",
                    "--email", "admin@example.com"], cwd=project, env=env, check=True, timeout=60,
                   capture_output=True)
    return "admin", "spawning-e2e-pass"


def login_page(server) -> tuple[str, str]:
    """GETs the admin login page; returns (csrftoken cookie, csrfmiddlewaretoken field)."""
    status, headers, body = server.get("/admin/login/")
    assert status == 200, body[:500]
    html = body.decode()
    assert "<form" in html and 'name="username"' in html and 'name="password"' in html
    field = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', html)
    assert field, html[:2000]
    cookie = http.cookies.SimpleCookie(headers["set-cookie"])
    return cookie["csrftoken"].value, field.group(1)


def test_admin_login_and_csrf_post_round_trip(spawn, project):
    server = spawn(DJANGO, "-s", "2", "mysite.settings", cwd=project)
    cookie, token = login_page(server)
    form = urllib.parse.urlencode({"csrfmiddlewaretoken": token, "username": "nobody",
                                   "password": "wrong", "next": "/admin/"}).encode()
    headers = {"Content-Type": "application/x-www-form-urlencoded", "Cookie": f"csrftoken={cookie}"}
    status, _, body = server.get("/admin/login/", method="POST", body=form, headers=headers)
    assert status == 200, body[:1000]  # the form again, with an error: CSRF passed
    assert "Please enter the correct username and password" in body.decode()
    # Without the token Django refuses it: the check is real.
    status, _, _ = server.get("/admin/login/", method="POST", body=b"username=x&password=y",
                              headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 403
    # Static files are the front server's (or WhiteNoise's) job, not the WSGI server's.
    assert server.get("/static/admin/css/base.css")[0] == 404
    assert len(server.workers()) == 2


def test_wsgi_module_works_without_the_factory(spawn, project):
    server = spawn("-s", "1", "mysite.wsgi:application", cwd=project)
    login_page(server)


CSRF_FIELD = re.compile(r'name="csrfmiddlewaretoken" value="([^"]+)"')
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
# Logged-in pages the session goes round (the user's change page is the superuser's, id 1).
ADMIN_PAGES = ["/admin/", "/admin/auth/user/", "/admin/auth/user/1/change/", "/admin/auth/group/"]


@pytest.mark.parametrize("args", [("-s", "2", "-t", "4"), ("-s", "1", "-t", "0"), ("-s", "1", "-t", "1"),
                                  ("-s", "2", "-t", "4", "--no-keepalive")],
                         ids=["threads", "green", "one-thread", "no-keepalive"])
def test_admin_session_end_to_end(spawn, project, superuser, args):
    """Every answer of a login session arrives, the bodiless 302s first: before 6a781ed the
    admin's redirect to its login page (Content-Length: 0) never left the server."""
    keepalive = "--no-keepalive" not in args
    server = spawn(DJANGO, *args, "mysite.settings", cwd=project)
    browser = Browser(server.port, keepalive=keepalive)

    resp, body = browser.request("GET", "/admin/")
    assert (resp.status, resp.getheader("Content-Length"), body) == (302, "0", b"")
    assert resp.getheader("Location") == "/admin/login/?next=/admin/"
    resp, body = browser.follow(resp)
    assert resp.status == 200 and "csrftoken" in browser.cookies
    token = CSRF_FIELD.search(body.decode())
    assert token, body[:2000]

    username, password = superuser
    form = urllib.parse.urlencode({"csrfmiddlewaretoken": token.group(1), "username": username,
                                   "password": password, "next": "/admin/"}).encode()
    resp, body = browser.request("POST", "/admin/login/?next=/admin/", body=form, headers=FORM)
    assert (resp.status, resp.getheader("Location"), body) == (302, "/admin/", b""), body[:2000]
    assert "sessionid" in browser.cookies
    resp, body = browser.follow(resp)
    assert resp.status == 200 and b"Site administration" in body

    for i in range(50):
        page = ADMIN_PAGES[i % len(ADMIN_PAGES)]
        resp, body = browser.request("GET", page)
        assert resp.status == 200, (page, resp.status, body[:1000])
        assert b"/admin/logout/" in body, (page, body[:2000])   # logged in, on every page
    assert b"admin@example.com" in body   # the last page, the user list, shows the account
    token = CSRF_FIELD.search(body.decode())
    assert token, body[:2000]

    # Django 5 logs out by POST only (with the CSRF token); 4.2 takes it as well.
    form = urllib.parse.urlencode({"csrfmiddlewaretoken": token.group(1)}).encode()
    resp, body = browser.request("POST", "/admin/logout/", body=form, headers=FORM)
    assert resp.status == 200 and b"Logged out" in body, body[:2000]
    assert "sessionid" not in browser.cookies
    resp, body = browser.request("GET", "/admin/")
    assert (resp.status, resp.getheader("Location")) == (302, "/admin/login/?next=/admin/")

    assert browser.connections == (1 if keepalive else browser.requests)
    browser.close()
