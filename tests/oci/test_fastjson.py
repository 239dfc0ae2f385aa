"""keel.oci.fastjson matches the json module, without importing it on the runtime's path."""

import json
import math
import os
import random
import subprocess
import sys

import pytest

from keel.oci import fastjson

VALUES = [
    None, True, False, 0, -1, 1, 2 ** 63 - 1, -(2 ** 63), 2 ** 64, 10 ** 40, 0.5, -1.25e-10, 1e300,
    3.141592653589793, "", "a", "ünïcödé", "\u2028\u2029", "tab\tnew\nline\r", 'quote"back\\slash',
    "\x00\x1f", "😀", "/slash", [], {}, [1, [2, [3, []]]], {"a": {"b": {"c": {}}}},
    {"z": 1, "a": 2, "m": [None, True]}, {"": ""}, {"key with space": [1.0, 2, "3"]},
    ["mixed", 1, 1.5, None, True, {"x": []}],
]


def _random_value(rng, depth=0):
    kinds = ["int", "float", "str", "bool", "null"] + (["list", "dict"] if depth < 4 else [])
    k = rng.choice(kinds)
    if k == "int":
        return rng.randint(-(2 ** 70), 2 ** 70)
    if k == "float":
        return rng.uniform(-1e6, 1e6)
    if k == "str":
        return "".join(chr(rng.choice([rng.randint(0x20, 0x7E), rng.randint(0, 0x1F), rng.randint(0xA0, 0x2FFF),
                                       rng.randint(0x1F600, 0x1F64F)])) for _ in range(rng.randint(0, 12)))
    if k == "bool":
        return rng.random() < 0.5
    if k == "null":
        return None
    if k == "list":
        return [_random_value(rng, depth + 1) for _ in range(rng.randint(0, 5))]
    return {_random_value(rng, 5) if False else str(rng.random()): _random_value(rng, depth + 1)
            for _ in range(rng.randint(0, 5))}


RANDOM = [_random_value(random.Random(seed)) for seed in range(300)]


@pytest.mark.parametrize("value", VALUES + RANDOM)
def test_dumps_matches_json(value):
    assert fastjson.dumps(value) == json.dumps(value, separators=(",", ":"))
    assert fastjson.dumps(value, sort_keys=True) == json.dumps(value, separators=(",", ":"), sort_keys=True)


@pytest.mark.parametrize("value", VALUES + RANDOM)
def test_loads_matches_json(value):
    for text in (json.dumps(value), json.dumps(value, indent=2), json.dumps(value, ensure_ascii=False)):
        assert fastjson.loads(text) == json.loads(text)
    assert fastjson.loads(json.dumps(value).encode()) == value


@pytest.mark.parametrize("value", VALUES + RANDOM[:50])
def test_dumps_indent_matches_json(value):
    assert fastjson.dumps_indent(value) == json.dumps(value, indent=2)
    assert fastjson.dumps_indent(value, "\t") == json.dumps(value, indent="\t")


def test_tuples_and_int_keys_as_json():
    v = {1: (1, 2), 2.5: [], True: None}
    assert fastjson.dumps(v) == json.dumps(v, separators=(",", ":"))


def test_whitespace_and_constants():
    assert fastjson.loads(" \n\t[1, 2]\r\n ") == [1, 2]
    assert math.isnan(fastjson.loads("NaN"))
    assert fastjson.loads("[Infinity, -Infinity]") == [math.inf, -math.inf]


def test_not_serializable():
    with pytest.raises(TypeError, match="object of type set is not JSON serializable"):
        fastjson.dumps({1, 2})
    with pytest.raises(ValueError):
        fastjson.dumps(float("nan"))  # not valid JSON (json.dumps(..., allow_nan=False) agrees)


BAD = ['{"a": {', "{broken", "[1,", '{"a" 1}', "nul", '"abc', "[1 2]", '{"a":1,}', '"\\x"', "[1]x", "", "   ",
       "\ufeff{}", '{"a": 1} {"b": 2}', "[", "]", '"\x01"', "-", "01"]


@pytest.mark.parametrize("text", BAD)
def test_errors_match_json_positions(text):
    with pytest.raises(json.JSONDecodeError) as je:
        json.loads(text)
    with pytest.raises(ValueError) as fe:
        fastjson.loads(text)
    assert isinstance(fe.value, fastjson.JSONError)
    assert fe.value.pos == je.value.pos, (fe.value, je.value)
    assert "Traceback" not in str(fe.value) and str(fe.value).endswith(f"at offset {je.value.pos}")


def test_errors_without_json_imported():
    """keel-runtime never imports json: errors must still be JSONError (the C scanner looks up
    json.decoder in sys.modules only, and fails oddly without it)."""
    src = os.path.dirname(os.path.dirname(os.path.abspath(fastjson.__file__)))
    code = ("import sys; sys.path.insert(0, %r)\n"
            "from keel.oci import fastjson\n"
            "assert 'json' not in sys.modules\n"
            "for t in %r:\n"
            "    try:\n"
            "        fastjson.loads(t)\n"
            "    except fastjson.JSONError as e:\n"
            "        print(e.pos)\n" % (os.path.dirname(src), BAD))
    out = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    expected = []
    for t in BAD:
        try:
            json.loads(t)
        except json.JSONDecodeError as e:
            expected.append(str(e.pos))
    assert out.stdout.split() == expected


def test_start_up_path_does_not_import_json():
    src = os.path.dirname(os.path.dirname(os.path.abspath(fastjson.__file__)))
    code = ("import sys; sys.path.insert(0, %r)\n"
            "from keel.oci import fastjson, config\n"
            "fastjson.loads(fastjson.dumps({'a': [1, 2.5, None]}))\n"
            "print(sorted(m for m in ('json', 're', 'enum') if m in sys.modules))" % os.path.dirname(src))
    out = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
