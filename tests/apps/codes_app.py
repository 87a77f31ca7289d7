"""An app that answers with what its environ says about the request, for the request-code tests
(tests/wsgi/test_environ.py, test_request_codes_keep_environs_apart)."""


def application(environ, start_response):
    body = " ".join((environ["PATH_INFO"], environ["QUERY_STRING"], environ["REMOTE_PORT"],
                     environ.get("HTTP_X_N", "-"), environ.get("HTTP_X_EXTRA", "-"),
                     str(environ["wsgi.input"].read()))).encode()
    environ["PATH_INFO"] = "/changed-by-the-app"   # must not reach the next request
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
