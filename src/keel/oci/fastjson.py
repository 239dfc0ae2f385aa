"""JSON through the C accelerator in `_json`, without importing `json`.

`import json` costs about 8 ms (it pulls in `re` and `enum`); keel-runtime reads
and writes JSON on every command, so it uses the same C scanner and encoder
that `json` itself uses, wired up here with the defaults of json.loads/dumps.
"""

import _json


class _Context:
    # The attributes the C scanner reads from json.decoder.JSONDecoder.
    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    memo = None

    @staticmethod
    def parse_constant(name):
        return {"NaN": float("nan"), "Infinity": float("inf"), "-Infinity": float("-inf")}[name]


_scan = _json.make_scanner(_Context())
_WS = " \t\n\r"


class JSONError(ValueError):
    def __init__(self, msg, pos):
        super().__init__(f"{msg} at offset {pos}")
        self.pos = pos


def loads(s):
    if isinstance(s, (bytes, bytearray)):
        s = s.decode("utf-8")
    if s.startswith("\ufeff"):
        raise JSONError("unexpected UTF-8 BOM", 0)
    end = len(s)
    i = 0
    while i < end and s[i] in _WS:
        i += 1
    try:
        obj, i = _scan(s, i)
    except StopIteration as e:
        raise JSONError("expecting a value", e.value) from None
    except (SystemError, ValueError) as e:
        raise _syntax_error(s, i, e) from None
    while i < end and s[i] in _WS:
        i += 1
    if i != end:
        raise JSONError("extra data", i)
    return obj


def _syntax_error(s, start, err):
    """The C scanner reports a syntax error with json.decoder.JSONDecodeError, which it looks up
    in sys.modules only: before `json` is imported it fails with a SystemError instead. On
    this error path importing json costs nothing that matters; scan again to learn what is wrong."""
    if not hasattr(err, "pos"):
        import json.decoder  # noqa: F401 - registers JSONDecodeError for the scanner

        try:
            _scan(s, start)
        except ValueError as e:
            err = e
        except StopIteration as e:
            return JSONError("expecting a value", e.value)
    pos = getattr(err, "pos", start)
    msg = (getattr(err, "msg", None) or str(err)).removesuffix(" at")
    return JSONError(msg[:1].lower() + msg[1:], pos)


def _no_default(o):
    raise TypeError(f"object of type {type(o).__name__} is not JSON serializable")


_compact = _json.make_encoder(None, _no_default, _json.encode_basestring_ascii, None,
                              ":", ",", False, False, False)
_sorted = _json.make_encoder(None, _no_default, _json.encode_basestring_ascii, None,
                             ":", ",", True, False, False)


def dumps(obj, sort_keys=False):
    """Compact JSON like json.dumps(obj, separators=(",", ":"))."""
    return "".join((_sorted if sort_keys else _compact)(obj, 0))


def dumps_indent(obj, indent="  ", _level=0):
    """Indented JSON like json.dumps(obj, indent=2) (Go's MarshalIndent shape)."""
    pad = "\n" + indent * (_level + 1)
    if isinstance(obj, dict) and obj:
        items = [dumps(str(k)) + ": " + dumps_indent(v, indent, _level + 1) for k, v in obj.items()]
        return "{" + pad + ("," + pad).join(items) + "\n" + indent * _level + "}"
    if isinstance(obj, (list, tuple)) and obj:
        items = [dumps_indent(v, indent, _level + 1) for v in obj]
        return "[" + pad + ("," + pad).join(items) + "\n" + indent * _level + "]"
    return dumps(obj)
