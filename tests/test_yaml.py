"""Strict YAML loading: every refusal names the source, the line and the field."""

from __future__ import annotations

import dataclasses
import datetime
import doctest
from typing import Any

import pytest

import vault._yaml
from vault._yaml import (
    Bool,
    Date,
    DateTime,
    Enum,
    Field,
    Hex,
    Int,
    Kind,
    List,
    Map,
    Record,
    Str,
    load_yaml,
)
from vault.errors import InputError, ScriptError

ROLE = Record(
    {
        "name": Field(Str(pattern=r"[a-z][a-z0-9-]*", max_len=32)),
        "threshold": Field(Int(min=1, max=9)),
        "keys": Field(List(Hex(length=64), min_len=1, max_len=3)),
    }
)
POLICY = Record(
    {
        "version": Field(Int(min=1)),
        "product": Field(Str()),
        "expires": Field(DateTime()),
        "issued": Field(Date(), required=False),
        "algorithm": Field(Enum(["ecdsa-p256-sha256", "ed25519"]), required=False, default="ecdsa-p256-sha256"),
        "rehearsal": Field(Bool(), required=False, default=False),
        "roles": Field(List(ROLE), required=True),
        "stations": Field(Map(Int(min=0)), required=False, default={}),
    }
)

KEY_A = "a" * 64
KEY_B = "B" * 64

GOOD = f"""\
# trust policy for the widget line
version: 3
product: widget
expires: 2026-01-31T00:00:00Z
issued: 2025-01-31
roles:
  - name: root
    threshold: 2
    keys: [{KEY_A}, {KEY_B}]
  - name: release
    threshold: 1
    keys:
      - "{KEY_A}"
stations:
  st-01: 500
  "bench 2": 0
"""


def error(text: str | bytes, schema: Kind = POLICY, **kwargs: Any) -> str:
    with pytest.raises(ScriptError) as info:
        load_yaml(text, schema, source="policies/root.yaml", **kwargs)
    return str(info.value)


def with_role(**changes: str) -> str:
    """GOOD with fields of the second role (lines 10-13) replaced, as in ``threshold="two"``, or added."""
    lines = GOOD.splitlines()
    start = lines.index("  - name: release")
    for field, value in changes.items():
        for i in range(start, start + 3):
            if lines[i].lstrip(" -").startswith(f"{field}:"):
                lines[i] = lines[i][: lines[i].index(field)] + f"{field}: {value}"
                if field == "keys":
                    del lines[i + 1]  # its block item
                break
        else:
            lines.insert(start + 1, f"    {field}: {value}")
    return "\n".join(lines) + "\n"


# --- documents that load ----------------------------------------------------


def test_a_valid_nested_document_loads_into_plain_values() -> None:
    assert load_yaml(GOOD, POLICY, source="policies/root.yaml") == {
        "version": 3,
        "product": "widget",
        "expires": datetime.datetime(2026, 1, 31, tzinfo=datetime.UTC),
        "issued": datetime.date(2025, 1, 31),
        "algorithm": "ecdsa-p256-sha256",
        "rehearsal": False,
        "roles": [
            {"name": "root", "threshold": 2, "keys": [KEY_A, KEY_B.lower()]},
            {"name": "release", "threshold": 1, "keys": [KEY_A]},
        ],
        "stations": {"st-01": 500, "bench 2": 0},
    }


def test_bytes_and_a_byte_order_mark_are_accepted() -> None:
    loaded = load_yaml(b"\xef\xbb\xbf" + GOOD.encode(), POLICY, source="p.yaml")
    assert loaded["product"] == "widget"


def test_defaults_are_fresh_copies() -> None:
    schema = Record({"tags": Field(List(Str()), required=False, default=[])})
    first = load_yaml("{}", schema, source="a.yaml")
    first["tags"].append("x")
    assert load_yaml("{}", schema, source="a.yaml") == {"tags": []}


def test_scalars_are_read_by_the_schema_not_by_yaml_implicit_types() -> None:
    schema = Record({"version": Field(Str()), "country": Field(Str()), "when": Field(Str()), "id": Field(Hex())})
    text = "version: 1.10\ncountry: NO\nwhen: 2025-01-01\nid: 1234\n"
    assert load_yaml(text, schema, source="s.yaml") == {
        "version": "1.10",
        "country": "NO",
        "when": "2025-01-01",
        "id": "1234",
    }


def test_booleans_and_integers() -> None:
    schema = Record({"on": Field(Bool()), "off": Field(Bool()), "n": Field(Int()), "m": Field(Int())})
    assert load_yaml("on: true\noff: false\nn: -7\nm: 0\n", schema, source="b.yaml") == {
        "on": True,
        "off": False,
        "n": -7,
        "m": 0,
    }


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2025-03-01T12:30:00Z", datetime.datetime(2025, 3, 1, 12, 30, tzinfo=datetime.UTC)),
        (
            "2025-03-01T12:30:00+02:00",
            datetime.datetime(2025, 3, 1, 12, 30, tzinfo=datetime.timezone(datetime.timedelta(hours=2))),
        ),
        ("'2025-03-01 12:30:00.5Z'", datetime.datetime(2025, 3, 1, 12, 30, 0, 500000, tzinfo=datetime.UTC)),
    ],
)
def test_date_times_keep_their_timezone(text: str, expected: datetime.datetime) -> None:
    loaded = load_yaml(f"at: {text}\n", Record({"at": Field(DateTime())}), source="t.yaml")
    assert loaded["at"] == expected
    assert loaded["at"].utcoffset() == expected.utcoffset()


def test_naive_date_times_are_utc_only_if_the_schema_says_so() -> None:
    schema = Record({"at": Field(DateTime(assume_utc=True))})
    loaded = load_yaml("at: 2025-03-01T12:30:00\n", schema, source="t.yaml")
    assert loaded["at"] == datetime.datetime(2025, 3, 1, 12, 30, tzinfo=datetime.UTC)
    assert error("at: 2025-03-01T12:30:00\n", Record({"at": Field(DateTime())})) == (
        "policies/root.yaml:1: at: '2025-03-01T12:30:00' has no timezone (add 'Z' or an offset such as '+00:00')"
    )


# --- dataclasses ------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Officer:
    name: str
    key_id: str


@dataclasses.dataclass(frozen=True)
class Ceremony:
    title: str
    not_before: datetime.date
    officers: list[Officer]
    quorum: int = 2


CEREMONY = Record(
    {
        "title": Field(Str()),
        "not-before": Field(Date()),
        "officers": Field(List(Record({"name": Field(Str()), "key-id": Field(Hex(8))}, cls=Officer))),
        "quorum": Field(Int(min=1), required=False, default=2),
    },
    cls=Ceremony,
)


def test_records_can_build_frozen_dataclasses() -> None:
    text = "title: root key\nnot-before: 2025-06-01\nofficers:\n  - {name: ana, key-id: 0A0B0C0D}\n"
    ceremony = load_yaml(text, CEREMONY, source="c.yaml")
    assert ceremony == Ceremony("root key", datetime.date(2025, 6, 1), [Officer("ana", "0a0b0c0d")], 2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        ceremony.title = "other"


def test_a_record_whose_fields_do_not_match_its_dataclass_is_a_programming_error() -> None:
    with pytest.raises(TypeError, match="do not match Officer"):
        Record({"name": Field(Str())}, cls=Officer)


def test_a_required_field_cannot_have_a_default() -> None:
    with pytest.raises(TypeError, match="required field cannot have a default"):
        Field(Int(), default=3)


# --- schema errors ----------------------------------------------------------


def test_errors_are_script_errors_on_one_line() -> None:
    message = error(with_role(threshold="two"))
    assert message == "policies/root.yaml:11: roles[1].threshold: expected an integer, got 'two'"
    assert "\n" not in message
    assert issubclass(ScriptError, InputError)


def test_unknown_field_suggests_the_closest_known_one_at_the_key_line() -> None:
    assert error(with_role(thresold="1")) == (
        "policies/root.yaml:11: roles[1]: unknown field 'thresold' (did you mean 'threshold'?)"
    )
    assert error(GOOD + "colour: blue\n") == "policies/root.yaml:17: unknown field 'colour'"


def test_missing_required_field_names_it_at_the_line_of_the_mapping() -> None:
    text = GOOD.replace("    threshold: 1\n", "")
    assert error(text) == "policies/root.yaml:10: roles[1]: missing required field 'threshold'"
    assert error("{}\n") == "policies/root.yaml:1: missing required fields 'version', 'product', 'expires', 'roles'"


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("'2'", "expected an integer, got the quoted string '2'"),
        ("02", "expected an integer, got '02'"),
        ("0x2", "expected an integer, got '0x2'"),
        ("2.0", "expected an integer, got '2.0'"),
        ("", "expected an integer, got an empty value"),
        ("~", "expected an integer, got null"),
        ("[1]", "expected an integer, got a list"),
        ("{a: 1}", "expected an integer, got a mapping"),
        ("0", "must be at least 1, got 0"),
        ("10", "must be at most 9, got 10"),
    ],
)
def test_integer_errors(value: str, problem: str) -> None:
    assert error(with_role(threshold=value)) == f"policies/root.yaml:11: roles[1].threshold: {problem}"


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("Release", "'Release' does not match the pattern '[a-z][a-z0-9-]*'"),
        ("''", "must not be empty"),
        ("r" * 33, "is 33 characters long, at most 32 allowed"),
        ("null", "expected a string, got null"),
        ("[release]", "expected a string, got a list"),
    ],
)
def test_string_errors(value: str, problem: str) -> None:
    assert error(with_role(name=value)) == f"policies/root.yaml:10: roles[1].name: {problem}"


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("[]", "has 0 items, at least 1 needed"),
        (f"[{KEY_A}, {KEY_A}, {KEY_A}, {KEY_A}]", "has 4 items, at most 3 allowed"),
        ("abc", "expected a list, got 'abc'"),
    ],
)
def test_list_errors(value: str, problem: str) -> None:
    assert error(with_role(keys=value)) == f"policies/root.yaml:12: roles[1].keys: {problem}"


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("a" * 63, "expected 64 hex digits, got 63"),
        ("g" * 64, f"expected 64 hex digits, got '{'g' * 37}...'"),
    ],
)
def test_hex_errors(value: str, problem: str) -> None:
    assert error(with_role(keys=f"[{KEY_A}, {value}]")) == f"policies/root.yaml:12: roles[1].keys[1]: {problem}"
    assert error("id: abc\n", Record({"id": Field(Hex())})) == (
        "policies/root.yaml:1: id: expected an even number of hex digits, got 3"
    )


def test_bool_refuses_yaml_1_1_spellings() -> None:
    assert error(GOOD + "rehearsal: yes\n") == "policies/root.yaml:17: rehearsal: expected true or false, got 'yes'"
    assert error(GOOD + "rehearsal: 'true'\n") == (
        "policies/root.yaml:17: rehearsal: expected true or false, got the quoted string 'true'"
    )


def test_enum_names_the_choices_and_suggests_one() -> None:
    assert error(GOOD + "algorithm: ed2551\n") == (
        "policies/root.yaml:17: algorithm: expected one of 'ecdsa-p256-sha256', 'ed25519', got 'ed2551'"
        " (did you mean 'ed25519'?)"
    )


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("2025-02-30", "'2025-02-30' is not a valid date (day is out of range for month)"),
        ("2025-02-03T00:00:00Z", "expected a date (YYYY-MM-DD), got '2025-02-03T00:00:00Z'"),
        ("31.01.2025", "expected a date (YYYY-MM-DD), got '31.01.2025'"),
    ],
)
def test_date_errors(value: str, problem: str) -> None:
    assert error(GOOD.replace("issued: 2025-01-31", f"issued: {value}")) == f"policies/root.yaml:5: issued: {problem}"


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("2026-01-31", "expected a date and time (YYYY-MM-DDTHH:MM:SSZ), got '2026-01-31'"),
        ("2026-01-31T25:00:00Z", "'2026-01-31T25:00:00Z' is not a valid date and time (hour must be in 0..23)"),
        ("tomorrow", "expected a date and time (YYYY-MM-DDTHH:MM:SSZ), got 'tomorrow'"),
    ],
)
def test_date_time_errors(value: str, problem: str) -> None:
    text = GOOD.replace("expires: 2026-01-31T00:00:00Z", f"expires: {value}")
    assert error(text) == f"policies/root.yaml:4: expires: {problem}"


def test_map_errors_name_the_entry() -> None:
    assert error(GOOD + "  st-02: -1\n") == "policies/root.yaml:17: stations.st-02: must be at least 0, got -1"
    assert error(GOOD + "  bench 3: x\n") == "policies/root.yaml:17: stations['bench 3']: expected an integer, got 'x'"
    by_number = Record({"slots": Field(Map(Str(), key=Int()))})
    assert error("slots:\n  1: a\n  +1: b\n", by_number) == (
        "policies/root.yaml:3: slots: duplicate key '+1' (the same as another key)"
    )
    assert error("slots:\n  one: a\n", by_number) == "policies/root.yaml:2: slots.one: expected an integer, got 'one'"


def test_the_root_must_be_what_the_schema_says() -> None:
    assert error("- a\n- b\n") == "policies/root.yaml:1: expected a mapping, got a list"
    assert error("~\n") == "policies/root.yaml:1: expected a mapping, got null"


# --- document-level errors --------------------------------------------------


def test_duplicate_keys_are_refused() -> None:
    assert error(GOOD + "version: 4\n") == "policies/root.yaml:17: duplicate key 'version' (first at line 2)"
    text = with_role(threshold="1\n    'threshold': 2")
    assert error(text) == "policies/root.yaml:12: roles[1]: duplicate key 'threshold' (first at line 11)"


def test_keys_must_be_plain_text() -> None:
    assert error("? [a, b]\n: 1\n") == "policies/root.yaml:1: keys must be plain text, got a list"
    assert error("~: 1\n") == "policies/root.yaml:1: keys must be plain text, got null"


@pytest.mark.parametrize(
    ("tail", "line"),
    [
        ("---\nversion: 4\n", 17),
        ("...\nversion: 4\n", 18),
        ("...\n]\n", 18),
    ],
)
def test_only_one_document_and_nothing_after_it(tail: str, line: int) -> None:
    assert error(GOOD + tail) == (
        f"policies/root.yaml:{line}: trailing content after the document (only one document is allowed)"
    )


def test_a_document_end_marker_and_comments_after_it_are_fine() -> None:
    assert load_yaml(GOOD + "...\n# end\n", POLICY, source="p.yaml")["version"] == 3


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "version: 1\nproduct: [widget\n",
            "policies/root.yaml:3: invalid YAML: expected ',' or ']', but got '<stream end>'"
            " (while parsing a flow sequence)",
        ),
        ("version: 1\n  product: widget\n", "policies/root.yaml:2: invalid YAML: mapping values are not allowed here"),
        (
            "version: 1\n}\n",
            "policies/root.yaml:2: invalid YAML: expected <block end>, but found '}' (while parsing a block mapping)",
        ),
        ("version: 1\nproduct: \x07\n", "policies/root.yaml:2: invalid YAML: character 0x0007 is not allowed"),
    ],
)
def test_syntax_errors_report_the_line(text: str, message: str) -> None:
    assert error(text) == message


def test_anchors_and_aliases_are_refused() -> None:
    assert error("version: &v 1\nproduct: x\n") == "policies/root.yaml:1: anchors are not allowed ('&v')"
    assert error("version: *v\n") == "policies/root.yaml:1: aliases are not allowed ('*v')"
    laughs = 'a: &a ["lol","lol"]\nb: &b [*a,*a]\nc: &c [*b,*b]\n'
    assert error(laughs, Record({})) == "policies/root.yaml:1: anchors are not allowed ('&a')"


@pytest.mark.parametrize(
    ("value", "tag"),
    [
        ("!!python/object/apply:os.system ['true']", "tag:yaml.org,2002:python/object/apply:os.system"),
        ("!!str 1", "tag:yaml.org,2002:str"),
        ("! 1", "!"),
        ("!custom {a: 1}", "!custom"),
    ],
)
def test_explicit_tags_are_refused(value: str, tag: str) -> None:
    assert error(f"version: 1\nproduct: {value}\n") == f"policies/root.yaml:2: explicit tags are not allowed ('{tag}')"


def test_deep_nesting_is_refused() -> None:
    assert error("a: " + "[" * 200 + "]" * 200 + "\n") == "policies/root.yaml:1: nested more than 64 levels deep"


def test_oversized_input_is_refused_before_parsing() -> None:
    big = GOOD + "#" * (1024 * 1024)
    assert error(big) == "policies/root.yaml: larger than the limit of 1048576 bytes"
    assert error(big.encode()) == f"policies/root.yaml: {len(big)} bytes, larger than the limit of 1048576 bytes"
    # the cap counts bytes: 300 two-byte characters are 600 bytes
    assert error("é" * 300, max_bytes=500) == "policies/root.yaml: 600 bytes, larger than the limit of 500 bytes"
    # not parsed: the syntax error beyond the cap is never reached
    assert error("[" + "x" * 600, max_bytes=500) == "policies/root.yaml: larger than the limit of 500 bytes"


def test_non_utf8_input_is_refused() -> None:
    assert error(b"version: 1\nproduct: caf\xe9\n") == "policies/root.yaml:2: not UTF-8 text (byte 0xe9 at offset 23)"
    assert error("version: 1\n".encode("utf-16")) == "policies/root.yaml:1: not UTF-8 text (byte 0xff at offset 0)"
    assert error("version: 1\nproduct: \udc80\n") == "policies/root.yaml:2: not valid Unicode text"


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n", "---\n", "--- \n...\n", b""])
def test_an_empty_document_is_refused(text: str | bytes) -> None:
    assert error(text) == "policies/root.yaml: empty document"


def test_module_docstring_example_runs() -> None:
    result = doctest.testmod(vault._yaml, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0
    assert result.failed == 0
