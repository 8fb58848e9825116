"""An export's consistency proof gives the Merkle frontier its entries are hashed onto."""

from __future__ import annotations

import pytest

from vault import merkle
from vault.audit._engine import _frontier_from_proof
from vault.errors import LogError


def test_the_frontier_read_from_a_proof_is_the_trees_own() -> None:
    leaves = [merkle.leaf_hash(b"entry %d" % i) for i in range(70)]
    for old in range(0, 40):
        tree = merkle.TreeBuilder()
        tree.extend(leaves[:old])
        for new in range(old, 70, 3):
            proof = merkle.consistency_proof(old, new, lambda a, b: leaves[a:b])
            if old == new:
                continue
            assert _frontier_from_proof(old, new, tree.root(), proof) == tree.frontier, (old, new)


def test_a_proof_for_another_root_gives_no_frontier() -> None:
    leaves = [merkle.leaf_hash(b"entry %d" % i) for i in range(9)]
    proof = merkle.consistency_proof(6, 9, lambda a, b: leaves[a:b])
    with pytest.raises(LogError):
        _frontier_from_proof(6, 9, merkle.leaf_hash(b"another root"), proof)
