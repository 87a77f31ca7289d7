wrk.method = "POST"
wrk.body = string.rep("a", 16384)
wrk.headers["Content-Type"] = "application/octet-stream"
