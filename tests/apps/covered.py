"""An application for the --coverage tests: /hit runs one branch, nothing ever runs the other."""


def application(environ, start_response):
    if environ["PATH_INFO"] == "/hit":
        body = b"branch_that_runs\n"
    else:
        body = b"branch_never_taken\n"
    if environ["PATH_INFO"] == "/never/asked/for":
        body = never_called()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def never_called():
    return b"only_in_the_report_as_missed\n"
