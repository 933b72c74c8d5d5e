"""rwsgi against gunicorn's raw request corpus (`<repo>/../shared/conformance/
gunicorn-requests/`, see its README.md): every valid request an application can see must
reach it as gunicorn parses it, and every invalid one must be refused (a 4xx/5xx status or
a closed connection, never a 2xx).

How the corpus is mapped
- `.http` files become bytes exactly as gunicorn's tests/treq.py does (README).
- Config overrides: limit_request_line / limit_request_fields / limit_request_field_size /
  forwarded_allow_ips become the rwsgi flags of the same name, with gunicorn's clamping
  (limit_request_line >= 8190 acts as 8190; limit_request_field_size 0 means the 8190
  default, not unlimited). Any other override (proxy_protocol, permit_obsolete_folding,
  permit_unconventional_http_method, casefold_http_method, strip_header_spaces,
  header_map) has no rwsgi equivalent: the case is counted "not applicable" (n/a), and
  is not collected as a test.
- Each valid file is sent whole and split at a fixed pseudo-random point (50 ms pause);
  the app (`guard_apps:conformance_echo`) echoes the method, RAW_URI, PATH_INFO,
  QUERY_STRING, SERVER_PROTOCOL, the HTTP_*/CONTENT_* keys and the body; they are compared
  with expected.json. Normalisations: PATH_INFO is percent-decoded (PEP 3333) where
  gunicorn's `path` is raw; a `#fragment` is not part of RAW_URI (hyper drops it; RFC 9112's
  request-target has no fragment); trailers are not compared (WSGI has no way to show
  them). CONNECT (authority-form targets) is answered 501 by rwsgi itself: known-stricter.
- HTTP/1.1 requests without a Host header: RFC 9112 §3.2 says a server MUST answer 400, and
  rwsgi does (checked for each such file). They are then sent again with
  `Host: conformance.test` added after the request line, and that must parse as expected
  (plus the Host header).
- valid/099.http declares 17914 body bytes and carries 8599: it is sent and the write side
  shut (SHUT_WR). rwsgi buffers whole bodies, so it answers 400 or closes; that counts as
  n/a (a 2xx must match gunicorn's parse).
- Invalid files are sent (whole, then split); if neither an answer nor a close comes
  within 1 s (an incomplete request), the write side is shut (gunicorn's harness drives
  the parser to the end of the input) and a close or an error status must follow. An
  HTTP/1.1 one without Host is also sent with `Host: x` added, so that it is refused for
  its own fault and not just for the missing Host; both must be refused.
- invalid/003c.http (method `-bl`) is n/a: gunicorn refuses it only by the default of its
  permit_unconventional_http_method setting (lower case, under 3 characters); it is a valid
  RFC 9110 token and rwsgi has no such setting.
- invalid/019.http (X-Forwarded-Proto: https with X-Forwarded-Ssl: off) is n/a: the error
  comes from gunicorn's secure_scheme_headers, a setting rwsgi does not have (it reads
  only X-Forwarded-Proto / Forwarded).
"""

from __future__ import annotations

import json
import os
import random
import re
import socket
from pathlib import Path
from urllib.parse import unquote_to_bytes

import pytest

from conftest import ROOT, Server
from test_guard import exchange, parse_responses

CORPUS = ROOT.parent / "shared" / "conformance" / "gunicorn-requests"
SUMMARY_FILE = Path(__file__).resolve().parent / ".conformance-summary.txt"

UNMAPPABLE = {"proxy_protocol", "permit_obsolete_folding", "permit_unconventional_http_method",
              "casefold_http_method", "strip_header_spaces", "header_map"}
NOT_APPLICABLE = {
    "invalid/003c.http": "`-bl` is refused by gunicorn's default method policy "
                         "(permit_unconventional_http_method=False: no lower case, 3-20 "
                         "characters), not by HTTP: RFC 9110 §9.1 allows any token, and "
                         "rwsgi has no such setting",
    "invalid/019.http": "needs gunicorn's secure_scheme_headers (X-Forwarded-Ssl), which "
                        "rwsgi does not have",
}

#: Valid for gunicorn, deliberately refused by rwsgi (after a missing Host is added).
KNOWN_STRICTER = {
    "valid/009.http": (400, "Content-Length together with Transfer-Encoding (identity) is "
                            "refused outright: the CL.TE smuggling shape (RFC 9112 §6.1 lets "
                            "a server reject it)"),
    "valid/014.http": (400, '`"` is not a URI character (RFC 3986 §2); hyper refuses the '
                            "request target"),
    "valid/025.http": (501, "gzip transfer coding (two Transfer-Encoding fields): not "
                            "implemented, RFC 9112 §6.1 says 501; gunicorn hands the app a "
                            "still-gzipped body"),
    "valid/025_line.http": (501, "Transfer-Encoding: gzip,chunked: as 025"),
    "valid/rfc9112_smuggle_gzip_chunked_01.http": (501, "Transfer-Encoding: gzip, chunked: "
                                                        "as 025"),
    "valid/029.http": (501, "Transfer-Encoding: identity then chunked: `identity` is no "
                            "longer a transfer coding (RFC 7230 removed it); any coding but "
                            "chunked is answered 501"),
    "valid/030.http": (501, "as 029"),
    "valid/rfc9112_target_authority_connect_01.http": (501, "CONNECT: rwsgi is no forward "
                                                            "proxy and WSGI cannot hold a "
                                                            "tunnel, so it answers 501 itself"),
    "valid/rfc9112_target_authority_ipv6_01.http": (501, "CONNECT [::1]:443: as above"),
    "valid/rfc9112_smuggle_te_identity_chunked_01.http": (501, "Transfer-Encoding: identity, "
                                                               "chunked: as 029"),
}

ADDED_HOST = b"Host: conformance.test\r\n"
ADDED_HOST_INVALID = b"Host: x\r\n"


MISSING = "corpus-missing"
MISSING_MESSAGE = (f"gunicorn's request corpus is missing: expected {CORPUS}/expected.json "
                   "(`shared/conformance/gunicorn-requests/` beside the repository; CI "
                   "provides it)")


def corpus_missing():
    """Without the corpus: a clone of the project alone skips these tests, saying why;
    under CI (which provides `shared/` beside the clone) they fail, never skip."""
    if os.environ.get("CI"):
        pytest.fail(MISSING_MESSAGE + "; CI is set, and CI must provide it")
    pytest.skip(MISSING_MESSAGE)


def test_corpus_is_present():
    if not (CORPUS / "expected.json").is_file():
        corpus_missing()


def case_of(table: dict, name: str) -> dict:
    """The case `name`; without the corpus, see `corpus_missing`."""
    if name == MISSING:
        corpus_missing()
    return table[name]


# -- the corpus ------------------------------------------------------------------------

def to_bytes(text: bytes) -> bytes:
    """README, "Turning a .http file into the bytes to send"."""
    data = text.replace(b"\n", b"")
    data = data.replace(b"\\r\\n", b"\r\n")
    data = data.replace(b"\\0", b"\x00").replace(b"\\n", b"\n").replace(b"\\t", b"\t")
    data = re.sub(rb"\\x([0-9A-Fa-f]{2})", lambda m: bytes([int(m.group(1), 16)]), data)
    assert b"\\" not in data, f"a backslash is left: {data[:200]!r}"
    return data


def flags_for(config: dict) -> tuple | None:
    """The rwsgi flags for a gunicorn config override; None when one has no equivalent."""
    if UNMAPPABLE & set(config):
        return None
    flags = []
    for key, value in sorted(config.items()):
        if key == "limit_request_line":
            value = 8190 if value < 0 or value >= 8190 else value
            flags += ["--limit-request-line", str(value)]
        elif key == "limit_request_fields":  # rwsgi maps 0 to 32768 itself, as gunicorn
            value = 32768 if value > 32768 else value
            flags += ["--limit-request-fields", str(value)]
        elif key == "limit_request_field_size":  # rwsgi maps 0 to 8190 itself, as gunicorn
            flags += ["--limit-request-field-size", str(value)]
        elif key == "forwarded_allow_ips":
            flags += ["--forwarded-allow-ips", ",".join(value)]
        else:
            return None
    return tuple(flags)


def load():
    if not (CORPUS / "expected.json").is_file():
        return {}, {}, {}
    expected = json.loads((CORPUS / "expected.json").read_text())
    valid, invalid, not_applicable = {}, {}, {}
    for kind, table in (("valid", valid), ("invalid", invalid)):
        for name, case in sorted(expected[kind].items()):
            key = f"{kind}/{name}"
            flags = flags_for(case["config"])
            if flags is None:
                not_applicable[key] = f"config {sorted(case['config'])} has no rwsgi equivalent"
                continue
            if key in NOT_APPLICABLE:
                not_applicable[key] = NOT_APPLICABLE[key]
                continue
            table[key] = dict(case, flags=flags,
                              data=to_bytes((CORPUS / kind / name).read_bytes()))
    return valid, invalid, not_applicable


VALID, INVALID, NOT_APPLICABLE_CASES = load()
SHORT_BODY = "valid/099.http"


def frame_requests(data: bytes) -> list:
    """(start, end) of each request in a valid file's bytes (CRLF heads only)."""
    spans, pos = [], 0
    while pos < len(data):
        head_end = data.find(b"\r\n\r\n", pos)
        if head_end < 0:
            break
        head = data[pos:head_end].split(b"\r\n")
        fields = [line.partition(b":") for line in head[1:]]
        te = b",".join(v for n, _, v in fields if n.strip().lower() == b"transfer-encoding")
        cl = [v for n, _, v in fields if n.strip().lower() == b"content-length"]
        end = head_end + 4
        if b"chunked" in te.lower():
            while True:
                eol = data.index(b"\r\n", end)
                size = int(data[end:eol].split(b";")[0], 16)
                end = eol + 2
                if size == 0:
                    end = data.index(b"\r\n\r\n", end - 2) + 4
                    break
                end += size + 2
        elif cl:
            end = min(len(data), end + int(cl[0]))
        spans.append((pos, end))
        pos = end
    return spans


def needs_host(request: dict) -> bool:
    return request["version"] == [1, 1] and not any(n == "HOST" for n, _ in request["headers"])


def with_host(data: bytes, requests: list) -> bytes:
    """`data` with a Host header added to each expected HTTP/1.1 request lacking one."""
    spans = frame_requests(data)
    out, last = b"", 0
    for (start, _), request in zip(spans, requests):
        line_end = data.index(b"\r\n", start) + 2
        out += data[last:line_end] + (ADDED_HOST if needs_host(request) else b"")
        last = line_end
    return out + data[last:]


def split_point(name: str, data: bytes) -> int:
    return random.Random(name).randrange(1, len(data))


# -- servers: one per distinct flag set, shared by the module --------------------------

@pytest.fixture(scope="module")
def servers():
    started = {}

    def get(flags: tuple) -> Server:
        if flags not in started:
            started[flags] = Server("guard_apps:conformance_echo", *flags, workers=2)
        return started[flags]

    yield get
    for server in started.values():
        server.stop()


RESULTS: dict = {"valid": {}, "valid_host_added": {}, "stricter": {}, "invalid": {},
                 "invalid_host_added": {}, "short_body": {}}


def by_file(table: dict) -> dict:
    """{(name, delivery): ok} -> {name: ok}: a file passes only if every delivery passes."""
    files: dict = {}
    for (name, _), ok in table.items():
        files[name] = files.get(name, True) and ok
    return files


@pytest.fixture(scope="module", autouse=True)
def summary():
    yield
    valid, stricter = by_file(RESULTS["valid"]), by_file(RESULTS["stricter"])
    invalid = RESULTS["invalid"]
    short = RESULTS["short_body"]
    short_ok = sum(ok is True for ok in short.values())
    short_na = {k: ok for k, ok in short.items() if ok not in (True, False)}
    na_valid = sum(k.startswith("valid/") for k in NOT_APPLICABLE_CASES) + len(short_na)
    na_invalid = sum(k.startswith("invalid/") for k in NOT_APPLICABLE_CASES)
    lines = [
        f"valid: {sum(valid.values()) + short_ok}/{len(valid) + short_ok} parsed as expected "
        f"({len(RESULTS['valid_host_added'])} of them once the Host header RFC 9112 §3.2 "
        f"requires is added; as sent they are refused 400 as required), "
        f"{sum(stricter.values())}/{len(stricter)} known-stricter refused as documented, "
        f"{na_valid} n/a",
        f"invalid: {sum(invalid.values())}/{len(invalid)} refused "
        f"({len(RESULTS['invalid_host_added'])} of them also with a Host header added), "
        f"{na_invalid} n/a",
    ]
    failed = sorted(k for table in (valid, stricter, invalid) for k, ok in table.items()
                    if not ok)
    if failed:
        lines.append("failing: " + " ".join(failed))
    lines += [f"n/a: {name}: {why}" for name, why in sorted(NOT_APPLICABLE_CASES.items())]
    lines += [f"n/a: {name}: {what} (its declared body never comes)"
              for name, what in short_na.items()]
    if valid or invalid:
        text = "\n".join(lines) + "\n"
        print("\n" + text, end="")
        SUMMARY_FILE.write_text(text)


# -- comparing with gunicorn's parse ---------------------------------------------------

def environ_headers(request: dict, host_added: bool) -> dict:
    headers: dict = {}
    for name, value in request["headers"]:
        if name in ("CONTENT-TYPE", "CONTENT-LENGTH"):
            key = name.replace("-", "_")
        else:
            key = "HTTP_" + name.replace("-", "_")
        headers[key] = f"{headers[key]},{value}" if key in headers else value
    if host_added and needs_host(request):
        headers["HTTP_HOST"] = ADDED_HOST.split(b":", 1)[1].strip().decode()
    # Where rwsgi differs from gunicorn on purpose: the body is buffered whole before the
    # app runs, so a chunked body reaches it with its length and without its framing
    # (as behind nginx; issue 13).
    if headers.pop("HTTP_TRANSFER_ENCODING", None) is not None:
        body = request["body"]
        headers["CONTENT_LENGTH"] = str(len(body.encode("latin-1") if isinstance(body, str)
                                            else body))
    return headers


def check_parse(response, request: dict, host_added: bool, where: str):
    assert response.status == 200, f"{where}: {response.status} {response.body[:200]!r}"
    seen = json.loads(response.body)
    uri = request["uri"].split("#", 1)[0]
    wanted = {
        "method": request["method"],
        "raw_uri": uri,
        "query": request["query"],
        "protocol": "HTTP/%d.%d" % tuple(request["version"]),
        "headers": environ_headers(request, host_added),
        "body": request["body"],
    }
    wanted["path"] = unquote_to_bytes(request["path"].encode("latin-1")).decode("latin-1")
    got = {key: seen.get(key) for key in wanted}
    # rwsgi gives a request without an X-Request-Id one of its own (test_access_log.py).
    if not any(name == "X-REQUEST-ID" for name, _ in request["headers"]):
        got["headers"] = dict(got["headers"] or {})
        made = got["headers"].pop("HTTP_X_REQUEST_ID", "")
        assert re.fullmatch(r"[0-9a-f]{32}", made), f"{where}: request id {made!r}"
    # And an X-Request-Start of its own (test_request_start.py).
    if not any(name == "X-REQUEST-START" for name, _ in request["headers"]):
        got["headers"] = dict(got["headers"] or {})
        stamped = got["headers"].pop("HTTP_X_REQUEST_START", "")
        assert re.fullmatch(r"t=[0-9]{16}", stamped), f"{where}: request start {stamped!r}"
    assert got == wanted, where


def send(data: bytes, server: Server, delivery: str, name: str, **kwargs):
    if delivery == "split":
        return exchange(server.port, data, split=split_point(name, data), pause=0.05, **kwargs)
    return exchange(server.port, data, **kwargs)


# -- valid files -----------------------------------------------------------------------

VALID_CASES = [k for k in VALID if k != SHORT_BODY]
NO_HOST_CASES = [k for k in VALID_CASES if any(needs_host(r) for r in VALID[k]["requests"])]


def or_missing(names: list) -> list:
    return names or [MISSING]


@pytest.mark.parametrize("delivery", ["whole", "split"])
@pytest.mark.parametrize("name", or_missing([k for k in VALID_CASES if k not in KNOWN_STRICTER]))
def test_valid(servers, name, delivery):
    case = case_of(VALID, name)
    host_added = name in NO_HOST_CASES
    data = with_host(case["data"], case["requests"]) if host_added else case["data"]
    RESULTS["valid"][name, delivery] = False
    if host_added:
        RESULTS["valid_host_added"][name] = True
    result = send(data, servers(case["flags"]), delivery, name, until=len(case["requests"]))
    assert len(result.responses) >= len(case["requests"]), (
        f"{len(result.responses)} responses to {len(case['requests'])} requests; "
        f"closed={result.closed}; got {result.raw[:300]!r}")
    for i, (response, request) in enumerate(zip(result.responses, case["requests"])):
        check_parse(response, request, host_added, f"{name} ({delivery}), request {i + 1}")
    RESULTS["valid"][name, delivery] = True


@pytest.mark.parametrize("name", or_missing(NO_HOST_CASES))
def test_valid_without_host_is_refused(servers, name):
    """RFC 9112 §3.2: the first HTTP/1.1 request lacking Host is answered 400 and the
    connection closed; the requests before it are answered normally."""
    case = case_of(VALID, name)
    table = RESULTS["stricter" if name in KNOWN_STRICTER else "valid"]
    table[name, "as sent, without Host"] = False
    first_bad = next(i for i, r in enumerate(case["requests"]) if needs_host(r))
    result = exchange(servers(case["flags"]).port, case["data"], timeout=3)
    assert result.statuses == [200] * first_bad + [400], result.raw[:300]
    for i in range(first_bad):
        check_parse(result.responses[i], case["requests"][i], False, f"{name}, request {i + 1}")
    assert result.closed
    table[name, "as sent, without Host"] = True


@pytest.mark.parametrize("delivery", ["whole", "split"])
@pytest.mark.parametrize("name", sorted(KNOWN_STRICTER))
def test_valid_known_stricter(servers, name, delivery):
    case = case_of(VALID, name if VALID else MISSING)
    status, reason = KNOWN_STRICTER[name]
    data = with_host(case["data"], case["requests"])
    RESULTS["stricter"][name, delivery] = False
    result = send(data, servers(case["flags"]), delivery, name, timeout=3)
    assert result.statuses == [status], f"{reason}: {result.raw[:300]!r}"
    assert result.closed, reason
    RESULTS["stricter"][name, delivery] = True


def test_valid_short_body_half_closed(servers):
    """valid/099: 8599 of 17914 declared body bytes, then SHUT_WR: 400 or a close (n/a),
    or a 2xx that matches gunicorn's parse."""
    case = case_of(VALID, SHORT_BODY if VALID else MISSING)
    result = exchange(servers(case["flags"]).port, case["data"], shut=True, timeout=3)
    if result.statuses and 200 <= result.statuses[0] < 300:
        RESULTS["short_body"][SHORT_BODY] = False
        check_parse(result.responses[0], case["requests"][0], False, SHORT_BODY)
        RESULTS["short_body"][SHORT_BODY] = True
    else:
        assert result.statuses in ([], [400]), result.raw[:300]
        assert result.closed
        RESULTS["short_body"][SHORT_BODY] = (f"answered {result.statuses[0]}" if result.statuses
                                             else "closed without an answer")


# -- invalid files ---------------------------------------------------------------------

def request_lines(data: bytes) -> int:
    return len(re.findall(rb"(?:^|\n)[!-~]+ [!-~]+ HTTP/[0-9.]+\r?\n", data))


def refused(result, requests: int) -> bool:
    """A 4xx/5xx for the bad request, or a close without answering it (pipelined requests
    before it may be answered 2xx)."""
    statuses = result.statuses
    if statuses and statuses[-1] >= 400:
        return True
    if result.closed and len([s for s in statuses if s < 400]) < max(requests, 1):
        return True
    return False


def send_invalid(data: bytes, server: Server, delivery: str, name: str):
    """Sends `data` and waits 1 s for an answer or a close; if neither came (the input is
    incomplete, e.g. NoMoreData), shuts the write side (gunicorn's harness drives its
    parser to the end of the input) and waits 2 s more. Not half-closing at once matters:
    hyper drops an in-flight request when it reads EOF, which would pass for a refusal."""
    s = socket.create_connection(("127.0.0.1", server.port), timeout=3)
    try:
        split = split_point(name, data) if delivery == "split" else None
        first = exchange(0, data, sock=s, split=split, timeout=1.0)
        if first.responses or first.closed or first.send_failed:
            return first
        try:
            s.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        second = exchange(0, sock=s, timeout=2.0)
    finally:
        s.close()
    second.raw = first.raw + second.raw
    second.responses, _ = parse_responses(second.raw, at_eof=second.closed is not None)
    second.responses = [r for r in second.responses if r.status >= 200]
    return second


def invalid_with_host(data: bytes) -> bytes | None:
    """The first request with `Host: x` added, if it is HTTP/1.1 without one."""
    line_end = data.find(b"\r\n")
    if line_end < 0 or not data[:line_end].endswith(b" HTTP/1.1"):
        return None
    head_end = data.find(b"\r\n\r\n")
    head = data[:head_end if head_end >= 0 else len(data)]
    if re.search(rb"\r\nhost\s*:", head, re.IGNORECASE):
        return None
    return data[:line_end + 2] + ADDED_HOST_INVALID + data[line_end + 2:]


@pytest.mark.parametrize("name", or_missing(list(INVALID)))
def test_invalid_is_refused(servers, name):
    case = case_of(INVALID, name)
    server = servers(case["flags"])
    variants = [("as is", case["data"])]
    host_variant = invalid_with_host(case["data"])
    if host_variant is not None:
        variants.append(("with Host added", host_variant))
        RESULTS["invalid_host_added"][name] = True
    RESULTS["invalid"][name] = False
    problems = []
    for label, data in variants:
        for delivery in ("whole", "split"):
            result = send_invalid(data, server, delivery, name)
            if not refused(result, request_lines(data)):
                problems.append(f"{label}, {delivery}: {case['error']} not refused: "
                                f"statuses {result.statuses}, closed={result.closed}, "
                                f"{result.raw[:240]!r}")
    assert not problems, "\n".join(problems)
    RESULTS["invalid"][name] = True
