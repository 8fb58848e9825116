"""Head records in real SoftHSM2 tokens: generations, private objects, torn and foreign records."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from pkcs11 import Attribute, ObjectClass

from vault.errors import StateError
from vault.token import Pkcs11Uri, open_token
from vault.token._heads import APPLICATION

Tokens = Callable[[list[str]], dict[str, Pkcs11Uri]]


def _data_objects(token: object, name: str) -> list[object]:
    session = token._session  # type: ignore[attr-defined]
    return list(session.get_objects({Attribute.CLASS: ObjectClass.DATA, Attribute.LABEL: name}))


def test_a_head_advances_by_generation_and_keeps_one_private_object(fresh_tokens: Tokens) -> None:
    uri = fresh_tokens(["heads"])["heads"]
    with open_token(uri, rw=True) as token:
        assert token.head("log") is None
        first = token.write_head("log", {"size": 1}, after=None)
        second = token.write_head("log", {"size": 2}, after=first)
        assert (first.generation, second.generation) == (1, 2)
        assert token.head("log") == second
        objects = _data_objects(token, "log")
        assert len(objects) == 1
        assert objects[0][Attribute.PRIVATE] is True  # type: ignore[index]
        assert objects[0][Attribute.APPLICATION] == APPLICATION  # type: ignore[index]
    with open_token(uri) as again:  # another session reads what was written
        assert again.head("log") == second


def test_a_write_on_a_stale_read_is_refused_and_changes_nothing(fresh_tokens: Tokens) -> None:
    uri = fresh_tokens(["heads"])["heads"]
    with open_token(uri, rw=True) as token:
        first = token.write_head("log", {"size": 1}, after=None)
        token.write_head("log", {"size": 2}, after=first)
        with pytest.raises(StateError, match="changed meanwhile"):
            token.write_head("log", {"size": 9}, after=first)
        with pytest.raises(StateError, match="changed meanwhile"):
            token.write_head("log", {"size": 9}, after=None)
        assert token.head("log").value == {"size": 2}  # type: ignore[union-attr]


def test_the_highest_readable_generation_wins_over_torn_and_older_objects(fresh_tokens: Tokens) -> None:
    uri = fresh_tokens(["heads"])["heads"]
    with open_token(uri, rw=True) as token:
        head = token.write_head("log", {"size": 5}, after=None)
        session = token._session
        for value in (b"{not json", json.dumps({"generation": 0, "name": "log", "value": {}}).encode()):
            session.create_object(
                {Attribute.CLASS: ObjectClass.DATA, Attribute.TOKEN: True, Attribute.PRIVATE: True,
                 Attribute.APPLICATION: APPLICATION, Attribute.LABEL: "log", Attribute.VALUE: value}
            )  # fmt: skip
        assert token.head("log") == head
        nxt = token.write_head("log", {"size": 6}, after=head)
        assert [o[Attribute.VALUE] for o in _data_objects(token, "log")] == [  # type: ignore[index]
            json.dumps({"generation": 2, "name": "log", "value": {"size": 6}}, separators=(",", ":")).encode()
        ]
        assert nxt.generation == 2


def test_two_different_records_of_one_generation_are_refused(fresh_tokens: Tokens) -> None:
    uri = fresh_tokens(["heads"])["heads"]
    with open_token(uri, rw=True) as token:
        token.write_head("log", {"size": 5}, after=None)
        token._session.create_object(
            {Attribute.CLASS: ObjectClass.DATA, Attribute.TOKEN: True, Attribute.PRIVATE: True,
             Attribute.APPLICATION: APPLICATION, Attribute.LABEL: "log",
             Attribute.VALUE: json.dumps({"generation": 1, "name": "log", "value": {"size": 0}}).encode()}
        )  # fmt: skip
        with pytest.raises(StateError, match="two different 'log' head records of generation 1"):
            token.head("log")


def test_a_head_is_not_readable_without_login(fresh_tokens: Tokens) -> None:
    from vault.token._session import find_token

    uri = fresh_tokens(["heads"])["heads"]
    with open_token(uri, rw=True) as token:
        token.write_head("log", {"size": 1}, after=None)
    with find_token(uri).open() as public:
        assert list(public.get_objects({Attribute.CLASS: ObjectClass.DATA})) == []
