"""RFC 9162 Merkle trees: against a naive reference, published vectors, and tampering."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence

import pytest

from vault.errors import FormatError, LogError
from vault.merkle import (
    EMPTY_ROOT,
    MAX_PROOF_HASHES,
    InclusionPaths,
    TreeBuilder,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    root_from_leaf_hashes,
    subtree_hash,
    verify_consistency,
    verify_inclusion,
)

MAX_N = 70

# --- a naive reference, written from the RFC's recursive definitions ---------


def ref_mth(hashes: Sequence[bytes]) -> bytes:
    """MTH(D[n]) of RFC 9162 section 2.1.1, over leaf hashes."""
    n = len(hashes)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return hashes[0]
    k = 1
    while k * 2 < n:
        k *= 2
    return hashlib.sha256(b"\x01" + ref_mth(hashes[:k]) + ref_mth(hashes[k:])).digest()


def ref_path(m: int, hashes: Sequence[bytes]) -> list[bytes]:
    """PATH(m, D[n]) of section 2.1.3.1."""
    n = len(hashes)
    if n <= 1:
        return []
    k = 1
    while k * 2 < n:
        k *= 2
    if m < k:
        return ref_path(m, hashes[:k]) + [ref_mth(hashes[k:])]
    return ref_path(m - k, hashes[k:]) + [ref_mth(hashes[:k])]


def ref_subproof(m: int, hashes: Sequence[bytes], whole: bool) -> list[bytes]:
    """SUBPROOF(m, D[n], b) of section 2.1.4.1."""
    n = len(hashes)
    if m == n:
        return [] if whole else [ref_mth(hashes)]
    k = 1
    while k * 2 < n:
        k *= 2
    if m <= k:
        return ref_subproof(m, hashes[:k], whole) + [ref_mth(hashes[k:])]
    return ref_subproof(m - k, hashes[k:], False) + [ref_mth(hashes[:k])]


LEAVES = [leaf_hash(b"entry %d" % i) for i in range(MAX_N + 1)]
ROOTS = [ref_mth(LEAVES[:n]) for n in range(MAX_N + 1)]


def accessor(start: int, end: int) -> list[bytes]:
    return LEAVES[start:end]


def flip(value: bytes, bit: int = 0) -> bytes:
    return bytes([value[0] ^ (1 << bit)]) + value[1:]


# --- published vectors: transparency-dev/merkle testonly/constants.go and proof/verify_test.go ---

VECTOR_INPUTS = [
    bytes.fromhex(h)
    for h in ["", "00", "10", "2021", "3031", "40414243", "5051525354555657", "606162636465666768696a6b6c6d6e6f"]
]
VECTOR_ROOTS = [
    bytes.fromhex(h)
    for h in [
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ]
]
VECTOR_CONSISTENCY = [
    (
        1,
        8,
        [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        6,
        8,
        [
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (
        2,
        5,
        [
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
    (
        6,
        7,
        [
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
]
VECTOR_INCLUSION = [
    (
        0,
        8,
        [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        5,
        8,
        [
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (2, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (
        1,
        5,
        [
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
]
VECTOR_LEAVES = [leaf_hash(data) for data in VECTOR_INPUTS]


def vector_accessor(start: int, end: int) -> list[bytes]:
    return VECTOR_LEAVES[start:end]


def test_hashing_primitives() -> None:
    assert EMPTY_ROOT == hashlib.sha256(b"").digest()
    assert leaf_hash(b"x") == hashlib.sha256(b"\x00x").digest()
    assert node_hash(b"a" * 32, b"b" * 32) == hashlib.sha256(b"\x01" + b"a" * 32 + b"b" * 32).digest()


def test_published_roots() -> None:
    for n, expected in enumerate(VECTOR_ROOTS):
        assert root_from_leaf_hashes(VECTOR_LEAVES[:n]) == (n, expected)


@pytest.mark.parametrize(("old", "new", "proof"), VECTOR_CONSISTENCY)
def test_published_consistency_proofs(old: int, new: int, proof: list[str]) -> None:
    expected = [bytes.fromhex(h) for h in proof]
    assert consistency_proof(old, new, vector_accessor) == expected
    verify_consistency(old, new, VECTOR_ROOTS[old], VECTOR_ROOTS[new], expected)


@pytest.mark.parametrize(("index", "size", "proof"), VECTOR_INCLUSION)
def test_published_inclusion_proofs(index: int, size: int, proof: list[str]) -> None:
    expected = [bytes.fromhex(h) for h in proof]
    assert inclusion_proof(index, size, vector_accessor) == expected
    verify_inclusion(index, size, VECTOR_LEAVES[index], expected, VECTOR_ROOTS[size])


# --- roots ----------------------------------------------------------------------


def test_roots_match_reference_for_every_size() -> None:
    builder = TreeBuilder()
    assert builder.root() == EMPTY_ROOT
    for n in range(MAX_N + 1):
        assert root_from_leaf_hashes(iter(LEAVES[:n])) == (n, ROOTS[n])
        assert subtree_hash(accessor, 0, n) == ROOTS[n]
        assert builder.size == n
        assert builder.root() == ROOTS[n]
        assert len(builder.frontier) == len(builder.heights) == n.bit_count()
        resumed = TreeBuilder.from_frontier(n, builder.frontier)
        assert resumed.root() == ROOTS[n]
        resumed.extend(LEAVES[n : n + 3])
        assert resumed.root() == ref_mth(LEAVES[: min(n + 3, MAX_N + 1)])
        if n < MAX_N:
            builder.append(LEAVES[n])


def test_frontier_heights_and_hashes() -> None:
    builder = TreeBuilder()
    builder.extend(LEAVES[:13])  # 13 = 8 + 4 + 1
    assert builder.heights == (3, 2, 0)
    assert builder.frontier == (ref_mth(LEAVES[:8]), ref_mth(LEAVES[8:12]), LEAVES[12])


def test_subtree_hash_of_inner_ranges() -> None:
    for start in range(0, 20):
        for end in range(start, 25):
            assert subtree_hash(accessor, start, end) == ref_mth(LEAVES[start:end])


def test_subtree_hash_reads_in_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("vault.merkle._CHUNK", 4)
    calls: list[tuple[int, int]] = []

    def counting(start: int, end: int) -> list[bytes]:
        calls.append((start, end))
        return LEAVES[start:end]

    assert subtree_hash(counting, 3, 14) == ref_mth(LEAVES[3:14])
    assert calls == [(3, 7), (7, 11), (11, 14)]


def test_short_accessor_is_a_log_error() -> None:
    with pytest.raises(LogError, match="truncated"):
        subtree_hash(lambda start, end: LEAVES[start : end - 1], 0, 5)


def test_bad_leaf_hashes_and_frontiers_are_refused() -> None:
    with pytest.raises(FormatError, match="31 bytes"):
        root_from_leaf_hashes([b"\x00" * 31])
    with pytest.raises(FormatError, match="must be bytes"):
        TreeBuilder().append("00" * 32)  # type: ignore[arg-type]
    with pytest.raises(FormatError, match="frontier of 2 hashes"):
        TreeBuilder.from_frontier(3, [LEAVES[0]])
    with pytest.raises(FormatError, match="outside"):
        TreeBuilder.from_frontier(-1, [])
    with pytest.raises(FormatError, match="whole number"):
        TreeBuilder.from_frontier(True, [LEAVES[0]])


# --- inclusion -------------------------------------------------------------------


def test_inclusion_for_every_leaf_of_every_size() -> None:
    for size in range(1, MAX_N + 1):
        for index in range(size):
            proof = inclusion_proof(index, size, accessor)
            assert proof == ref_path(index, LEAVES[:size])
            verify_inclusion(index, size, LEAVES[index], proof, ROOTS[size])


def test_tampered_inclusion_fails() -> None:
    """Wrong leaves, roots or proofs fail; see the consistency test for why size + 1 is not probed."""
    for size in range(1, 40):
        for index in range(size):
            proof = inclusion_proof(index, size, accessor)
            root, leaf = ROOTS[size], LEAVES[index]
            probes: list[tuple[int, int, bytes, list[bytes], bytes]] = [
                (index, size, flip(leaf), proof, root),
                (index, size, leaf, proof, flip(root)),
                (index, size, leaf, [*proof, root], root),
                (index, size, leaf, [root, *proof], root),
                (index, size * 2, leaf, proof, root),
            ]
            if size > 1:
                probes.append((index ^ 1 if index ^ 1 < size else index - 1, size, leaf, proof, root))
                probes.append((index, size, leaf, proof[:-1], root))
                probes.append((index, size // 2 or 1, leaf, proof, root))
            for i in range(len(proof)):
                probes.append((index, size, leaf, [*proof[:i], flip(proof[i], 4), *proof[i + 1 :]], root))
            for p_index, p_size, p_leaf, p_proof, p_root in probes:
                if (p_index, p_size, p_leaf, p_proof, p_root) == (index, size, leaf, proof, root):
                    continue
                if p_index < p_size and p_proof == ref_path(p_index, LEAVES[:p_size]) and p_root == ROOTS[p_size]:
                    continue  # the probe happens to be another true statement
                with pytest.raises(LogError):
                    verify_inclusion(p_index, p_size, p_leaf, p_proof, p_root)


def test_inclusion_edge_cases() -> None:
    verify_inclusion(0, 1, LEAVES[0], [], LEAVES[0])
    with pytest.raises(LogError, match="not in the log of size 0"):
        verify_inclusion(0, 0, LEAVES[0], [], EMPTY_ROOT)
    with pytest.raises(LogError, match="not in the log of size 3"):
        verify_inclusion(3, 3, LEAVES[3], [], ROOTS[3])
    with pytest.raises(FormatError, match="not in a tree of size 3"):
        inclusion_proof(3, 3, accessor)
    with pytest.raises(FormatError, match="leaf hash is 0 bytes"):
        verify_inclusion(0, 1, b"", [], LEAVES[0])
    with pytest.raises(FormatError, match="root hash is 31 bytes"):
        verify_inclusion(0, 1, LEAVES[0], [], LEAVES[0][:31])
    with pytest.raises(FormatError, match="inclusion proof hash 1 is 33 bytes"):
        verify_inclusion(0, 2, LEAVES[0], [LEAVES[1] + b"\x00"], ROOTS[2])
    with pytest.raises(FormatError, match="more than the limit of 64"):
        verify_inclusion(0, 2, LEAVES[0], [LEAVES[1]] * (MAX_PROOF_HASHES + 1), ROOTS[2])
    with pytest.raises(FormatError, match="sequence of hashes"):
        verify_inclusion(0, 2, LEAVES[0], LEAVES[1], ROOTS[2])  # type: ignore[arg-type]


# --- consistency -------------------------------------------------------------------


def test_consistency_for_every_pair_of_sizes() -> None:
    for new in range(MAX_N + 1):
        for old in range(new + 1):
            proof = consistency_proof(old, new, accessor)
            if 0 < old < new:
                assert proof == ref_subproof(old, LEAVES[:new], True)
            else:
                assert proof == []
            verify_consistency(old, new, ROOTS[old], ROOTS[new], proof)


def test_tampered_consistency_fails() -> None:
    """Wrong roots, proofs or old size fail.

    A wrong *new* size alone can pass when its tree has the same shape along the
    proof (1 to 4 and 1 to 3, say): the RFC algorithm binds sizes only through the
    roots, and the checkpoint's signature binds each root to its size.
    """
    for new in range(2, 40):
        for old in range(1, new):
            proof = consistency_proof(old, new, accessor)
            r_old, r_new = ROOTS[old], ROOTS[new]
            probes: list[tuple[int, int, bytes, bytes, list[bytes]]] = [
                (old, new, flip(r_old), r_new, proof),
                (old, new, r_old, flip(r_new), proof),
                (old, new, r_new, r_old, proof),
                (old, new, r_old, r_new, []),
                (old, new, r_old, r_new, proof[:-1]),
                (old, new, r_old, r_new, [*proof, r_old]),
                (old, new, r_old, r_new, [*proof, r_new]),
                (old, new, r_old, r_new, [r_old, *proof]),
                (old, new, r_old, r_new, [proof[0], *proof]),
                (old - 1, new, r_old, r_new, proof),
                (old + 1, new, r_old, r_new, proof),
                (old, new * 2, r_old, r_new, proof),
            ]
            for i in range(len(proof)):
                probes.append((old, new, r_old, r_new, [*proof[:i], flip(proof[i], 4), *proof[i + 1 :]]))
            for p_old, p_new, p_r_old, p_r_new, p_proof in probes:
                with pytest.raises(LogError):
                    verify_consistency(p_old, p_new, p_r_old, p_r_new, p_proof)


def test_forked_log_is_not_consistent() -> None:
    forked = LEAVES[:10] + [leaf_hash(b"rewritten")] + LEAVES[11:20]
    forked_root = ref_mth(forked)
    proof = consistency_proof(12, 20, lambda start, end: forked[start:end])
    with pytest.raises(LogError, match="not an extension of the checkpoint of size 12: rewritten or forked"):
        verify_consistency(12, 20, ROOTS[12], forked_root, proof)


def test_consistency_edge_cases() -> None:
    with pytest.raises(LogError, match="shorter than the checkpoint of size 5: truncated"):
        verify_consistency(5, 4, ROOTS[5], ROOTS[4], [])
    with pytest.raises(FormatError, match="backwards"):
        consistency_proof(5, 4, accessor)
    with pytest.raises(LogError, match="another root"):
        verify_consistency(5, 5, ROOTS[5], ROOTS[4], [])
    with pytest.raises(LogError, match="between equal sizes must be empty"):
        verify_consistency(5, 5, ROOTS[5], ROOTS[5], [ROOTS[5]])
    with pytest.raises(LogError, match="from the empty tree must be empty"):
        verify_consistency(0, 5, EMPTY_ROOT, ROOTS[5], [ROOTS[5]])
    with pytest.raises(LogError, match="empty tree's root"):
        verify_consistency(0, 5, ROOTS[1], ROOTS[5], [])
    verify_consistency(0, 0, EMPTY_ROOT, EMPTY_ROOT, [])
    with pytest.raises(LogError, match="another root"):
        verify_consistency(0, 0, EMPTY_ROOT, ROOTS[1], [])
    with pytest.raises(LogError, match="empty tree's root"):
        verify_consistency(0, 0, ROOTS[1], ROOTS[1], [])
    with pytest.raises(FormatError, match="more than the limit"):
        verify_consistency(1, 2, ROOTS[1], ROOTS[2], [LEAVES[1]] * 65)
    with pytest.raises(FormatError, match="old root hash is 4 bytes"):
        verify_consistency(1, 2, b"root", ROOTS[2], [LEAVES[1]])
    with pytest.raises(FormatError, match="outside"):
        verify_consistency(1, 2**63, ROOTS[1], ROOTS[2], [LEAVES[1]])


def test_largest_sizes_stay_within_the_proof_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    """Proofs for the largest trees fit in 64 hashes; the size cap is what guarantees it."""
    ranges: list[tuple[int, int]] = []

    def recording(_: object, start: int, end: int) -> bytes:
        ranges.append((start, end))
        return b"\x00" * 32

    def unused(start: int, end: int) -> list[bytes]:
        raise AssertionError("not reached")

    monkeypatch.setattr("vault.merkle.subtree_hash", recording)
    big = 2**63 - 1
    for old in (1, 2, 3, 2**62, 2**62 + 1, big - 1):
        assert len(consistency_proof(old, big, unused)) <= MAX_PROOF_HASHES
    for index in (0, 2**62, big - 1):
        assert len(inclusion_proof(index, big, unused)) <= MAX_PROOF_HASHES
    assert all(0 <= start < end <= big for start, end in ranges)


def test_verification_is_fast_enough_for_an_audit() -> None:
    """A proof checks in well under a millisecond: no leaf reads, about two hashes per proof element."""
    big_leaves = [leaf_hash(i.to_bytes(4, "big")) for i in range(3000)]
    builder = TreeBuilder()
    builder.extend(big_leaves[:1234])
    old_root = builder.root()
    builder.extend(big_leaves[1234:])
    proof = consistency_proof(1234, 3000, lambda start, end: big_leaves[start:end])
    started = time.perf_counter()
    for _ in range(1000):
        verify_consistency(1234, 3000, old_root, builder.root(), proof)
    assert time.perf_counter() - started < 2.0


@pytest.mark.parametrize("size", [1, 2, 3, 7, 8, 33])
def test_inclusion_paths_are_the_inclusion_proofs_and_verify(size: int) -> None:
    leaves = [leaf_hash(i.to_bytes(4, "big")) for i in range(size)]
    paths = InclusionPaths(leaves)
    _, root = root_from_leaf_hashes(leaves)
    assert paths.root() == root
    for index in range(size):
        path = paths.path(index)
        assert path == inclusion_proof(index, size, lambda a, b: leaves[a:b])
        verify_inclusion(index, size, leaves[index], path, root)
    with pytest.raises(FormatError):
        paths.path(size)
