"""schemathesis hooks for scripts/fuzz.py (loaded through SCHEMATHESIS_HOOKS).

A workaround, not a check changed: schemathesis 4.32.5 looks for URLs in
response bodies to learn links, and `urllib.parse.urlsplit` raises on a
string such as "http://[x" (the fuzzer's own text, echoed back in a
workflow it created), which ends the whole run with an internal error.
Such a string is no URL of this API, which is what the function answers
here instead of raising. Every check still runs on every response.
"""

from schemathesis.engine import observations

_same_origin_path = observations._same_origin_path


def _same_origin_path_or_none(value: str, origin: tuple[str, str]) -> str | None:
    try:
        return _same_origin_path(value, origin)
    except ValueError:
        return None


observations._same_origin_path = _same_origin_path_or_none
