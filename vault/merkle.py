"""RFC 9162 Merkle tree hashing, inclusion and consistency proofs.

The tree is the Certificate Transparency one (RFC 9162 section 2.1, the same
as RFC 6962): a leaf is ``SHA-256(0x00 || data)``, an interior node is
``SHA-256(0x01 || left || right)``, the empty tree is ``SHA-256("")``, and a
tree of ``n > 1`` leaves splits at the largest power of two below ``n``.

A log grows by appending; its state between appends is a *frontier*: the
roots of the complete subtrees that make it up, one per set bit of its size,
largest first. :class:`TreeBuilder` keeps only that frontier, so a log of
millions of entries is hashed in memory logarithmic in its size and can be
saved and resumed with :attr:`TreeBuilder.frontier` and
:meth:`TreeBuilder.from_frontier`.

Proofs are made from a *leaf-hash accessor*: a callable that takes a half-open
range ``(start, end)`` and returns that range's leaf hashes (a slice of a
list, or a ``SELECT`` over the log's table). Making a proof reads at most
every leaf once; checking one reads nothing and costs one hash per proof
element. Checks raise :class:`~vault.errors.LogError` when a proof, root or
size does not verify and :class:`~vault.errors.FormatError` when a hash is not
32 bytes, a size is out of range or a proof is longer than
:data:`MAX_PROOF_HASHES`.

Example:
    >>> leaves = [leaf_hash(b"entry %d" % i) for i in range(5)]
    >>> tree = TreeBuilder()
    >>> for h in leaves[:3]:
    ...     tree.append(h)
    >>> old_root = tree.root()
    >>> for h in leaves[3:]:
    ...     tree.append(h)
    >>> (tree.size, tree.root()) == root_from_leaf_hashes(leaves)
    True
    >>> proof = consistency_proof(3, 5, lambda start, end: leaves[start:end])
    >>> verify_consistency(3, 5, old_root, tree.root(), proof)
    >>> verify_consistency(3, 5, EMPTY_ROOT, tree.root(), proof)
    Traceback (most recent call last):
    ...
    vault.errors.LogError: the log of size 5 is not an extension of the checkpoint of size 3: rewritten or forked
    >>> path = inclusion_proof(1, 5, lambda start, end: leaves[start:end])
    >>> verify_inclusion(1, 5, leaves[1], path, tree.root())
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence

from vault.errors import FormatError, LogError

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "MAX_PROOF_HASHES",
    "MAX_TREE_SIZE",
    "InclusionPaths",
    "LeafHashes",
    "TreeBuilder",
    "consistency_proof",
    "inclusion_proof",
    "leaf_hash",
    "node_hash",
    "root_from_leaf_hashes",
    "subtree_hash",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE = 32
"""Bytes in every leaf, node and root hash (SHA-256)."""

MAX_TREE_SIZE = 2**63 - 1
"""Largest tree size accepted: the largest SQLite INTEGER, so no proof needs more than 64 hashes."""

MAX_PROOF_HASHES = 64
"""Longest inclusion or consistency proof accepted, checked before any hashing."""

EMPTY_ROOT = hashlib.sha256(b"").digest()
"""The root of the empty tree: SHA-256 of the empty string."""

LeafHashes = Callable[[int, int], Sequence[bytes]]
"""A leaf-hash accessor: ``(start, end)`` to the leaf hashes of entries ``start`` to ``end - 1``."""

_CHUNK = 65536  # leaves read per accessor call when hashing a large range
_sha256 = hashlib.sha256


def leaf_hash(data: bytes) -> bytes:
    """The hash of a leaf: ``SHA-256(0x00 || data)``.

    Example:
        >>> leaf_hash(b"").hex()[:16]
        '6e340b9cffb37a98'
    """
    return _sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """The hash of an interior node: ``SHA-256(0x01 || left || right)``."""
    return _sha256(b"\x01" + left + right).digest()


class TreeBuilder:
    """A Merkle tree grown one leaf at a time, holding only its frontier.

    The frontier is the list of roots of the complete subtrees the tree is
    made of, largest (leftmost) first; subtree ``i`` has ``2**h`` leaves where
    ``h`` is the position of the ``i``-th set bit of :attr:`size`, counted
    from the most significant. Appending costs one hash per trailing one bit
    of the old size (amortised under two).

    Example:
        >>> tree = TreeBuilder()
        >>> for i in range(3):
        ...     tree.append(leaf_hash(bytes([i])))
        >>> saved = (tree.size, tree.frontier)
        >>> len(saved[1])
        2
        >>> TreeBuilder.from_frontier(*saved).root() == tree.root()
        True
    """

    __slots__ = ("_size", "_stack")

    def __init__(self) -> None:
        self._size = 0
        self._stack: list[bytes] = []

    @classmethod
    def from_frontier(cls, size: int, hashes: Sequence[bytes]) -> TreeBuilder:
        """A builder resumed from a saved :attr:`size` and :attr:`frontier`.

        Raises:
            FormatError: the size is out of range, or the number or length
                of the hashes does not fit it.
        """
        _check_size(size, what="tree size")
        hashes = list(hashes)
        expected = size.bit_count()
        if len(hashes) != expected:
            raise FormatError(f"a tree of size {size} has a frontier of {expected} hashes, not {len(hashes)}")
        for index, value in enumerate(hashes):
            _check_hash(value, what=f"frontier hash {index + 1}")
        builder = cls()
        builder._size = size
        builder._stack = hashes
        return builder

    @property
    def size(self) -> int:
        """How many leaves the tree has."""
        return self._size

    @property
    def frontier(self) -> tuple[bytes, ...]:
        """The roots of the tree's complete subtrees, largest first; their heights follow from :attr:`size`."""
        return tuple(self._stack)

    @property
    def heights(self) -> tuple[int, ...]:
        """The height of each :attr:`frontier` subtree (a subtree of height ``h`` has ``2**h`` leaves)."""
        return tuple(h for h in range(self._size.bit_length() - 1, -1, -1) if self._size >> h & 1)

    def append(self, leaf_hash: bytes) -> None:
        """Add one leaf, given by its leaf hash (see :func:`leaf_hash`).

        Raises:
            FormatError: the hash is not 32 bytes, or the tree is full.
        """
        if not isinstance(leaf_hash, bytes) or len(leaf_hash) != HASH_SIZE:
            _check_hash(leaf_hash, what=f"leaf hash {self._size}")
        if self._size >= MAX_TREE_SIZE:
            raise FormatError(f"a tree may not grow past {MAX_TREE_SIZE} leaves")
        stack = self._stack
        carry = self._size
        node = leaf_hash
        while carry & 1:
            node = _sha256(b"\x01" + stack.pop() + node).digest()
            carry >>= 1
        stack.append(node)
        self._size += 1

    def extend(self, leaf_hashes: Iterable[bytes]) -> None:
        """Add each leaf of ``leaf_hashes`` in turn (see :meth:`append`)."""
        for value in leaf_hashes:
            self.append(value)

    def root(self) -> bytes:
        """The tree's root hash (MTH); :data:`EMPTY_ROOT` when it has no leaves."""
        stack = self._stack
        if not stack:
            return EMPTY_ROOT
        node = stack[-1]
        for left in reversed(stack[:-1]):
            node = _sha256(b"\x01" + left + node).digest()
        return node


def root_from_leaf_hashes(hashes: Iterable[bytes]) -> tuple[int, bytes]:
    """The size and root hash of the tree whose leaves hash to ``hashes``, in order.

    The hashes are consumed as a stream; memory stays logarithmic in their
    number, so a generator over a database cursor is fine.

    Raises:
        FormatError: a hash is not 32 bytes.
    """
    builder = TreeBuilder()
    builder.extend(hashes)
    return builder.size, builder.root()


def subtree_hash(leaf_hashes: LeafHashes, start: int, end: int) -> bytes:
    """MTH of the entries ``start`` to ``end - 1`` of a log, read through ``leaf_hashes``.

    The range is read in chunks, so memory stays bounded however large it is.

    Raises:
        FormatError: the range is out of bounds, or a hash is not 32 bytes.
        LogError: the accessor returned fewer or more hashes than asked for.
    """
    _check_size(start, what="range start")
    _check_size(end, what="range end")
    if start > end:
        raise FormatError(f"range {start}..{end} runs backwards")
    builder = TreeBuilder()
    for lo in range(start, end, _CHUNK):
        hi = min(lo + _CHUNK, end)
        chunk = leaf_hashes(lo, hi)
        if len(chunk) != hi - lo:
            raise LogError(f"the log returned {len(chunk)} leaf hashes for entries {lo}..{hi - 1}: truncated")
        builder.extend(chunk)
    return builder.root()


def inclusion_proof(index: int, size: int, leaf_hashes: LeafHashes) -> list[bytes]:
    """The RFC 9162 inclusion proof (PATH, section 2.1.3.1) of entry ``index`` in the tree of ``size`` entries.

    Hashes are ordered from the leaf up, as :func:`verify_inclusion` takes them.

    Raises:
        FormatError: the index or size is out of range, or a hash is not 32 bytes.
        LogError: the accessor returned the wrong number of hashes.
    """
    _check_size(size, what="tree size")
    _check_size(index, what="leaf index")
    if index >= size:
        raise FormatError(f"entry {index} is not in a tree of size {size}")
    return _path(index, size, lambda start, end: subtree_hash(leaf_hashes, start, end))


class InclusionPaths:
    """RFC 9162 inclusion proofs for many entries of one tree held in memory, each subtree hashed once.

    :func:`inclusion_proof` hashes the subtrees of each path from the leaves
    again; proving every entry of a tree that way costs O(n) per entry. Here
    each subtree hash is kept once computed, so proving them all costs O(n log n)
    in all, and memory is about two hashes per leaf.

    Example:
        >>> leaves = [leaf_hash(bytes([i])) for i in range(5)]
        >>> paths = InclusionPaths(leaves)
        >>> paths.path(3) == inclusion_proof(3, 5, lambda a, b: leaves[a:b])
        True
    """

    def __init__(self, leaves: Sequence[bytes]) -> None:
        for leaf in leaves:
            _check_hash(leaf, what="leaf hash")
        self._leaves = leaves
        self._memo: dict[tuple[int, int], bytes] = {}

    @property
    def size(self) -> int:
        return len(self._leaves)

    def root(self) -> bytes:
        """The tree's root (MTH)."""
        return self._hash(0, len(self._leaves)) if self._leaves else EMPTY_ROOT

    def path(self, index: int) -> list[bytes]:
        """The inclusion proof of entry ``index``, ordered from the leaf up (see :func:`inclusion_proof`)."""
        _check_size(index, what="leaf index")
        if index >= len(self._leaves):
            raise FormatError(f"entry {index} is not in a tree of size {len(self._leaves)}")
        return _path(index, len(self._leaves), self._hash)

    def _hash(self, start: int, end: int) -> bytes:
        if end - start == 1:
            return self._leaves[start]
        found = self._memo.get((start, end))
        if found is None:
            k = _split(end - start)
            found = node_hash(self._hash(start, start + k), self._hash(start + k, end))
            self._memo[(start, end)] = found
        return found


def _path(index: int, size: int, subtree: Callable[[int, int], bytes]) -> list[bytes]:
    """PATH(index, D[size]) of RFC 9162 section 2.1.3.1, with ``subtree(start, end)`` giving MTH of a range."""
    outer: list[bytes] = []  # PATH(m, D[n]) = PATH(inner) : outer, so collected outside-in
    start, end = 0, size
    while end - start > 1:
        k = _split(end - start)
        if index - start < k:
            outer.append(subtree(start + k, end))
            end = start + k
        else:
            outer.append(subtree(start, start + k))
            start += k
    outer.reverse()
    return outer


def consistency_proof(size_old: int, size_new: int, leaf_hashes: LeafHashes) -> list[bytes]:
    """The RFC 9162 consistency proof (PROOF/SUBPROOF, section 2.1.4.1) from ``size_old`` to ``size_new``.

    The proof is empty when ``size_old`` is 0 or equals ``size_new``.

    Raises:
        FormatError: a size is out of range, ``size_old > size_new``, or a
            hash is not 32 bytes.
        LogError: the accessor returned the wrong number of hashes.
    """
    _check_size(size_old, what="old tree size")
    _check_size(size_new, what="new tree size")
    if size_old > size_new:
        raise FormatError(f"no consistency proof runs backwards, from size {size_old} to {size_new}")
    if size_old == 0 or size_old == size_new:
        return []
    outer: list[bytes] = []  # SUBPROOF(m, D[n], b) = SUBPROOF(inner) : outer, so collected outside-in
    start, end, m, whole = 0, size_new, size_old, True
    while m != end - start:
        k = _split(end - start)
        if m <= k:
            outer.append(subtree_hash(leaf_hashes, start + k, end))
            end = start + k
        else:
            outer.append(subtree_hash(leaf_hashes, start, start + k))
            start += k
            m -= k
            whole = False
    if not whole:
        outer.append(subtree_hash(leaf_hashes, start, end))
    outer.reverse()
    return outer


def verify_inclusion(index: int, size: int, leaf_hash: bytes, proof: Sequence[bytes], root: bytes) -> None:
    """Check that entry ``index`` of the tree of ``size`` entries and root ``root`` hashes to ``leaf_hash``.

    This is RFC 9162 section 2.1.3.2, step by step.

    Raises:
        FormatError: a size or index is out of range, a hash is not 32 bytes,
            or the proof is longer than :data:`MAX_PROOF_HASHES`.
        LogError: the entry is past the end of the tree, or the proof does
            not lead from the leaf to the root.
    """
    _check_size(size, what="tree size")
    _check_size(index, what="leaf index")
    _check_hash(leaf_hash, what="leaf hash")
    _check_hash(root, what="root hash")
    _check_proof(proof, what="inclusion proof")
    if index >= size:
        raise LogError(f"entry {index} is not in the log of size {size}: truncated")
    fn, sn, r = index, size - 1, leaf_hash
    for p in proof:
        if sn == 0:
            raise LogError(_not_included(index, size))
        if fn & 1 or fn == sn:
            r = _sha256(b"\x01" + p + r).digest()
            while not fn & 1 and fn:
                fn >>= 1
                sn >>= 1
        else:
            r = _sha256(b"\x01" + r + p).digest()
        fn >>= 1
        sn >>= 1
    if sn != 0 or r != root:
        raise LogError(_not_included(index, size))


def verify_consistency(size_old: int, size_new: int, root_old: bytes, root_new: bytes, proof: Sequence[bytes]) -> None:
    """Check that the tree of ``size_new`` entries and ``root_new`` extends the one of ``size_old`` and ``root_old``.

    This is RFC 9162 section 2.1.4.2, step by step, for ``0 < size_old <
    size_new``. Outside that range: an old size of 0 needs an empty proof and
    :data:`EMPTY_ROOT` as the old root (any log extends the empty one); equal
    sizes need an empty proof and equal roots; a smaller new size is refused.

    Raises:
        FormatError: a size is out of range, a hash is not 32 bytes, or the
            proof is longer than :data:`MAX_PROOF_HASHES`.
        LogError: the new tree is smaller (truncated), or is not an
            extension of the old one (rewritten or forked).
    """
    _check_size(size_old, what="old tree size")
    _check_size(size_new, what="new tree size")
    _check_hash(root_old, what="old root hash")
    _check_hash(root_new, what="new root hash")
    _check_proof(proof, what="consistency proof")
    if size_old > size_new:
        raise LogError(f"the log of size {size_new} is shorter than the checkpoint of size {size_old}: truncated")
    if size_old == 0 and root_old != EMPTY_ROOT:
        raise LogError("the checkpoint of size 0 does not have the empty tree's root")
    if size_old == size_new:
        if root_old != root_new:
            raise LogError(
                f"the log of size {size_new} has another root than the checkpoint of that size: rewritten or forked"
            )
        if proof:
            raise LogError(f"a consistency proof between equal sizes must be empty, not {len(proof)} hashes")
        return
    if size_old == 0:
        if proof:
            raise LogError(f"a consistency proof from the empty tree must be empty, not {len(proof)} hashes")
        return
    # 1. An empty proof fails.
    if not proof:
        raise LogError(_not_extended(size_old, size_new))
    # 2. If the old size is a power of two, the old root is the proof's implicit first hash.
    path = [root_old, *proof] if size_old & (size_old - 1) == 0 else list(proof)
    # 3.-4. Index of the last old and new leaves, less the levels where the old tree is complete.
    fn, sn = size_old - 1, size_new - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    # 5. Both running roots start from the first hash.
    fr = sr = path[0]
    # 6. Fold in the rest.
    for c in path[1:]:
        if sn == 0:
            raise LogError(_not_extended(size_old, size_new))
        if fn & 1 or fn == sn:
            fr = _sha256(b"\x01" + c + fr).digest()
            sr = _sha256(b"\x01" + c + sr).digest()
            while not fn & 1 and fn:
                fn >>= 1
                sn >>= 1
        else:
            sr = _sha256(b"\x01" + sr + c).digest()
        fn >>= 1
        sn >>= 1
    # 7. Both roots must come out, with every level of the new tree used.
    if sn != 0 or fr != root_old or sr != root_new:
        raise LogError(_not_extended(size_old, size_new))


def _split(n: int) -> int:
    """The largest power of two smaller than ``n`` (for ``n >= 2``)."""
    return 1 << ((n - 1).bit_length() - 1)


def _not_extended(size_old: int, size_new: int) -> str:
    return f"the log of size {size_new} is not an extension of the checkpoint of size {size_old}: rewritten or forked"


def _not_included(index: int, size: int) -> str:
    return f"entry {index} is not at that place in the log of size {size}: the proof, entry or root was altered"


def _check_size(value: int, *, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise FormatError(f"{what} must be a whole number, not {type(value).__name__}")
    if not 0 <= value <= MAX_TREE_SIZE:
        raise FormatError(f"{what} {value} is outside 0..{MAX_TREE_SIZE}")


def _check_hash(value: bytes, *, what: str) -> None:
    if not isinstance(value, bytes):
        raise FormatError(f"{what} must be bytes, not {type(value).__name__}")
    if len(value) != HASH_SIZE:
        raise FormatError(f"{what} is {len(value)} bytes, not {HASH_SIZE}")


def _check_proof(proof: Sequence[bytes], *, what: str) -> None:
    if isinstance(proof, (bytes, str)):
        raise FormatError(f"{what} must be a sequence of hashes, not {type(proof).__name__}")
    if len(proof) > MAX_PROOF_HASHES:
        raise FormatError(f"{what} has {len(proof)} hashes, more than the limit of {MAX_PROOF_HASHES}")
    for index, value in enumerate(proof):
        _check_hash(value, what=f"{what} hash {index + 1}")
