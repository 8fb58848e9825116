"""Custodian shares: SLIP-39 split, check and combine, and every way a share is refused."""

from __future__ import annotations

import itertools
import json
import os
import random as stdlib_random

import pytest

from vault.ceremony._shares import (
    ShareSet,
    ShareSetRecord,
    check_share,
    combine_shares,
    normalise_mnemonic,
    split_secret,
)
from vault.errors import FormatError, InputError, ShareError

SECRET = bytes(range(32))


@pytest.fixture(scope="module")
def two_of_three() -> ShareSet:
    return split_secret(SECRET, 2, 3)


@pytest.fixture(scope="module")
def three_of_five() -> ShareSet:
    return split_secret(SECRET, 3, 5)


def foreign_set(shares: ShareSet) -> ShareSet:
    """Another split of the same secret, with another SLIP-39 identifier."""
    while True:
        other = split_secret(SECRET, shares.record.threshold, shares.record.count)
        if other.record.identifier != shares.record.identifier:
            return other


def change_word(mnemonic: str, index: int) -> str:
    """The mnemonic with word ``index`` (0-based) replaced by another valid SLIP-39 word."""
    words = mnemonic.split()
    words[index] = "academic" if words[index] != "academic" else "acid"
    return " ".join(words)


# --- round trips ------------------------------------------------------------


@pytest.mark.parametrize(("threshold", "count"), [(1, 1), (2, 2), (2, 3), (3, 5), (5, 7), (16, 16), (2, 16)])
def test_round_trip(threshold: int, count: int) -> None:
    secret = os.urandom(32)
    shares = split_secret(secret, threshold, count)
    assert len(shares.mnemonics) == count
    assert len(set(shares.mnemonics)) == count
    assert combine_shares(shares.mnemonics[:threshold], shares.record) == secret
    assert combine_shares(shares.mnemonics[-threshold:]) == secret


@pytest.mark.parametrize("size", [16, 18, 32, 64])
def test_round_trip_secret_sizes(size: int) -> None:
    secret = os.urandom(size)
    shares = split_secret(secret, 2, 3)
    assert combine_shares(shares.mnemonics[1:], shares.record) == secret


@pytest.mark.parametrize("fixture", ["two_of_three", "three_of_five"])
def test_every_subset_of_threshold_size_combines(fixture: str, request: pytest.FixtureRequest) -> None:
    shares: ShareSet = request.getfixturevalue(fixture)
    m = shares.record.threshold
    for subset in itertools.combinations(shares.mnemonics, m):
        assert combine_shares(subset, shares.record) == SECRET
        assert combine_shares(list(reversed(subset)), shares.record) == SECRET


def test_more_than_threshold_combines(three_of_five: ShareSet) -> None:
    assert combine_shares(three_of_five.mnemonics, three_of_five.record) == SECRET
    assert combine_shares(three_of_five.mnemonics[:4]) == SECRET


def test_typed_from_paper(two_of_three: ShareSet) -> None:
    first, second, _ = two_of_three.mnemonics
    messy = "  " + "\n".join(w.upper() if i % 2 else w for i, w in enumerate(first.split())) + "\n\n"
    assert normalise_mnemonic(messy) == first
    assert combine_shares([messy, second.replace(" ", "   \t")], two_of_three.record) == SECRET
    assert check_share(messy, two_of_three.record).member_index == 1


def test_each_split_is_fresh() -> None:
    a = split_secret(SECRET, 2, 3)
    b = split_secret(SECRET, 2, 3)
    assert set(a.mnemonics).isdisjoint(b.mnemonics)
    assert a.record.share_digests != b.record.share_digests
    assert a.record.secret_commitment == b.record.secret_commitment


def test_caller_random_source_is_used() -> None:
    calls: list[int] = []

    def token_rng(n: int) -> bytes:
        calls.append(n)
        return os.urandom(n)

    shares = split_secret(SECRET, 3, 5, random=token_rng)
    assert calls
    assert combine_shares(shares.mnemonics[2:], shares.record) == SECRET


def test_caller_random_source_makes_split_reproducible() -> None:
    def seeded(seed: int) -> ShareSet:
        rng = stdlib_random.Random(seed)
        return split_secret(SECRET, 2, 3, random=rng.randbytes)

    assert seeded(1) == seeded(1)
    assert seeded(1).mnemonics != seeded(2).mnemonics


def test_random_source_returning_short_output_is_refused() -> None:
    with pytest.raises(ShareError, match="random source"):
        split_secret(SECRET, 2, 3, random=lambda n: b"\0" * (n - 1))


def test_share_set_repr_hides_mnemonics(two_of_three: ShareSet) -> None:
    text = repr(two_of_three)
    assert all(m.split()[5] not in text.split() for m in two_of_three.mnemonics)
    assert "ShareSetRecord" in text


# --- the record ---------------------------------------------------------------


def test_record_facts(three_of_five: ShareSet) -> None:
    record = three_of_five.record
    assert (record.threshold, record.count) == (3, 5)
    assert len(record.share_digests) == 5
    assert SECRET.hex() not in json.dumps(record.to_dict())
    assert all(m not in json.dumps(record.to_dict()) for m in three_of_five.mnemonics)


def test_record_json_round_trip(three_of_five: ShareSet) -> None:
    record = three_of_five.record
    again = ShareSetRecord.from_dict(json.loads(json.dumps(record.to_dict())))
    assert again == record


@pytest.mark.parametrize(
    "change",
    [
        {"scheme": "bip39"},
        {"threshold": 0},
        {"threshold": 6},
        {"count": 17},
        {"identifier": 1 << 15},
        {"identifier": True},
        {"share_digests": ["00" * 32] * 5},
        {"share_digests": ["AB" * 32, "00" * 32]},
        {"secret_commitment": "zz"},
        {"extra": 1},
    ],
)
def test_record_from_dict_refuses_malformed(three_of_five: ShareSet, change: dict[str, object]) -> None:
    data = three_of_five.record.to_dict() | change
    with pytest.raises(FormatError, match="share set record"):
        ShareSetRecord.from_dict(data)


def test_record_from_dict_refuses_missing_field(three_of_five: ShareSet) -> None:
    data = three_of_five.record.to_dict()
    del data["secret_commitment"]
    with pytest.raises(FormatError, match="secret_commitment"):
        ShareSetRecord.from_dict(data)


# --- too few, altered, unknown, foreign, repeated ---------------------------


def test_too_few_shares_says_how_many_are_missing(three_of_five: ShareSet) -> None:
    with pytest.raises(ShareError, match="^3 of 5 shares needed: 2 given, 1 more missing$"):
        combine_shares(three_of_five.mnemonics[:2], three_of_five.record)
    with pytest.raises(ShareError, match="^3 of 5 shares needed: 1 given, 2 more missing$"):
        combine_shares(three_of_five.mnemonics[4:], three_of_five.record)


def test_too_few_shares_without_record(two_of_three: ShareSet) -> None:
    with pytest.raises(ShareError, match="^2 shares needed: 1 given, 1 more missing$"):
        combine_shares(two_of_three.mnemonics[1:2])


def test_no_shares() -> None:
    with pytest.raises(ShareError, match="no shares"):
        combine_shares([])


@pytest.mark.parametrize("word", [0, 3, 10, -1])
def test_changed_word_fails_checksum_naming_the_share(three_of_five: ShareSet, word: int) -> None:
    m = list(three_of_five.mnemonics[:3])
    m[1] = change_word(m[1], word)
    with pytest.raises(ShareError, match=r"^share 2 fails its checksum.*refused, not corrected"):
        combine_shares(m, three_of_five.record)
    with pytest.raises(ShareError, match=r"^share 2 fails its checksum"):
        combine_shares(m)


def test_swapped_words_fail_checksum(two_of_three: ShareSet) -> None:
    words = two_of_three.mnemonics[0].split()
    i = next(i for i in range(6, len(words) - 1) if words[i] != words[i + 1])
    words[i], words[i + 1] = words[i + 1], words[i]
    with pytest.raises(ShareError, match="^share 1 fails its checksum"):
        combine_shares([" ".join(words), two_of_three.mnemonics[1]])


def test_unknown_word_names_share_position_and_word(two_of_three: ShareSet) -> None:
    words = two_of_three.mnemonics[2].split()
    words[4] = "bitcoin"
    with pytest.raises(ShareError, match=r"^share 2: word 5 'bitcoin' is not a SLIP-39 word$"):
        combine_shares([two_of_three.mnemonics[0], " ".join(words)])


def test_truncated_share_refused(two_of_three: ShareSet) -> None:
    short = " ".join(two_of_three.mnemonics[1].split()[:-1])
    with pytest.raises(ShareError, match="^share 2 "):
        combine_shares([two_of_three.mnemonics[0], short])


def test_share_from_another_set_refused(three_of_five: ShareSet) -> None:
    other = foreign_set(three_of_five)
    given = [three_of_five.mnemonics[0], three_of_five.mnemonics[1], other.mnemonics[2]]
    with pytest.raises(ShareError, match="^share 3 belongs to another share set"):
        combine_shares(given, three_of_five.record)
    with pytest.raises(ShareError, match="^share 3 belongs to another share set"):
        combine_shares(given)


def test_foreign_share_named_even_when_first(three_of_five: ShareSet) -> None:
    other = foreign_set(three_of_five)
    given = [other.mnemonics[0], *three_of_five.mnemonics[1:4]]
    with pytest.raises(ShareError, match="^share 1 belongs to another share set"):
        combine_shares(given)


def test_duplicate_share_refused(three_of_five: ShareSet) -> None:
    m = three_of_five.mnemonics
    with pytest.raises(ShareError, match="^share 3 repeats share 1"):
        combine_shares([m[0], m[1], m[0]], three_of_five.record)
    with pytest.raises(ShareError, match="^share 4 repeats share 2"):
        combine_shares([m[0], m[1], m[2], m[1].upper()])


def test_wrong_record_fails_commitment(two_of_three: ShareSet) -> None:
    other = split_secret(os.urandom(32), 2, 3)
    forged = ShareSetRecord(
        identifier=two_of_three.record.identifier,
        threshold=2,
        count=3,
        share_digests=two_of_three.record.share_digests,
        secret_commitment=other.record.secret_commitment,
    )
    with pytest.raises(ShareError, match="commitment"):
        combine_shares(two_of_three.mnemonics[:2], forged)


def test_other_sets_record_refuses_shares(two_of_three: ShareSet) -> None:
    other = foreign_set(two_of_three)
    with pytest.raises(ShareError, match="^share 1 belongs to another share set"):
        combine_shares(two_of_three.mnemonics[:2], other.record)


# --- a custodian checks their own share ---------------------------------------


@pytest.mark.parametrize("fixture", ["two_of_three", "three_of_five"])
def test_check_share_accepts_each_genuine_share(fixture: str, request: pytest.FixtureRequest) -> None:
    shares: ShareSet = request.getfixturevalue(fixture)
    record = shares.record
    for member, mnemonic in enumerate(shares.mnemonics, start=1):
        result = check_share(mnemonic, record)
        assert result.member_index == member
        assert (result.threshold, result.count, result.identifier) == (
            record.threshold,
            record.count,
            record.identifier,
        )
        assert str(result) == f"share {member} of {record.count}, threshold {record.threshold}"


def test_check_share_refuses_altered_share(two_of_three: ShareSet) -> None:
    with pytest.raises(ShareError, match="^the share fails its checksum"):
        check_share(change_word(two_of_three.mnemonics[1], 12), two_of_three.record)


def test_check_share_refuses_unknown_word(two_of_three: ShareSet) -> None:
    words = two_of_three.mnemonics[1].split()
    words[0] = "zzz"
    with pytest.raises(ShareError, match="word 1 'zzz'"):
        check_share(" ".join(words), two_of_three.record)


def test_check_share_refuses_foreign_share(two_of_three: ShareSet) -> None:
    other = foreign_set(two_of_three)
    with pytest.raises(ShareError, match="^the share belongs to another share set"):
        check_share(other.mnemonics[0], two_of_three.record)


def test_check_share_refuses_share_not_in_record_digests(two_of_three: ShareSet) -> None:
    record = two_of_three.record
    swapped = ShareSetRecord(
        record.identifier,
        record.threshold,
        record.count,
        (record.share_digests[1], record.share_digests[0], record.share_digests[2]),
        record.secret_commitment,
    )
    with pytest.raises(ShareError, match="digest"):
        check_share(two_of_three.mnemonics[0], swapped)


def test_check_share_refuses_other_threshold(two_of_three: ShareSet) -> None:
    record = two_of_three.record
    claimed = ShareSetRecord(record.identifier, 3, 3, record.share_digests, record.secret_commitment)
    with pytest.raises(ShareError, match="another share set"):
        check_share(two_of_three.mnemonics[0], claimed)


# --- parameter validation -----------------------------------------------------


@pytest.mark.parametrize(
    ("secret", "threshold", "count", "match"),
    [
        (SECRET, 1, 3, "1-of-3"),
        (SECRET, 1, 2, "1-of-2"),
        (SECRET, 0, 3, "threshold"),
        (SECRET, 4, 3, "threshold"),
        (SECRET, 2, 17, "number of shares"),
        (SECRET, 0, 0, "number of shares"),
        (bytes(15), 2, 3, "at least 16 bytes"),
        (bytes(17), 2, 3, "even"),
        (b"", 2, 3, "at least 16 bytes"),
    ],
)
def test_split_parameters_validated(secret: bytes, threshold: int, count: int, match: str) -> None:
    with pytest.raises(ShareError, match=match):
        split_secret(secret, threshold, count)


def test_share_error_is_an_input_error() -> None:
    with pytest.raises(InputError):
        split_secret(SECRET, 1, 3)


def test_combine_refuses_a_single_string(two_of_three: ShareSet) -> None:
    with pytest.raises(ShareError, match="list"):
        combine_shares(two_of_three.mnemonics[0])


def test_overlong_share_refused_before_parsing(two_of_three: ShareSet) -> None:
    with pytest.raises(ShareError, match="^share 2 is .* characters long"):
        combine_shares([two_of_three.mnemonics[0], "academic " * 1000])
