-- wrk: POST a 1 MiB body to the URL (bench/run.sh's `post` scenario; the app answers
-- the length it read).
wrk.method = "POST"
wrk.body = string.rep("x", 1048576)
wrk.headers["Content-Type"] = "application/octet-stream"
