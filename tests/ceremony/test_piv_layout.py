"""Keys laid out the way OpenSC's PIV driver shows a PIV card, on SoftHSM2.

OpenSC names a PIV card's keys by slot: CKA_ID 01 'PIV AUTH key' (9a),
02 'SIGN key' (9c, PIN at every use), 03 'KEY MAN key' (9d), 04 'CARD AUTH
key' (9e), each with its public key ('PIV AUTH pubkey', ...). The keys here
are made the way a card's own tool makes them, outside vault; vault must
use them where the credentials name them, never make one, and refuse 9c's
per-signature PIN in one line. docs/piv.md says what was run on a real card.
"""

from __future__ import annotations

import base64
import json

import pytest
from pkcs11 import Attribute, KeyType, Mechanism
from pkcs11.util.ec import encode_named_curve_parameters

from tests.ceremony.conftest import POLICIES, Setup
from vault.errors import MechanismNotSupportedError
from vault.policy import load_policy
from vault.token import Pkcs11Uri, format_uri, open_token
from vault.token._session import open_session

PIV_SLOTS = {  # CKA_ID: (private label, public label, PIN at every use)
    1: ("PIV AUTH key", "PIV AUTH pubkey", False),
    2: ("SIGN key", "SIGN pubkey", True),
    3: ("KEY MAN key", "KEY MAN pubkey", False),
    4: ("CARD AUTH key", "CARD AUTH pubkey", False),
}


def lay_out_as_piv(uri: Pkcs11Uri) -> None:
    """Generate the four PIV slots' P-256 keys on ``uri``'s token, as a card's tool would (not through vault)."""
    with open_session(uri, rw=True) as session:
        for slot, (label, public_label, always_auth) in PIV_SLOTS.items():
            private = {
                Attribute.TOKEN: True, Attribute.PRIVATE: True, Attribute.SENSITIVE: True,
                Attribute.EXTRACTABLE: False, Attribute.SIGN: slot != 3, Attribute.DERIVE: slot == 3,
                Attribute.ID: bytes([slot]), Attribute.LABEL: label,
            }  # fmt: skip
            if always_auth:
                private[Attribute.ALWAYS_AUTHENTICATE] = True
            public = {
                Attribute.TOKEN: True, Attribute.VERIFY: slot != 3, Attribute.ID: bytes([slot]),
                Attribute.LABEL: public_label, Attribute.EC_PARAMS: encode_named_curve_parameters("secp256r1"),
            }  # fmt: skip
            session.generate_keypair(
                KeyType.EC, 0, mechanism=Mechanism.EC_KEY_PAIR_GEN, store=True,
                public_template=public, private_template=private,
            )  # fmt: skip


def test_an_approver_on_a_piv_layout_is_used_by_slot_and_never_made(setup: Setup) -> None:
    card = setup.tokens["approver-1"]
    lay_out_as_piv(card)
    with open_token(card) as token:
        before = sorted((o.label, o.type, o.id) for o in token.objects())
        piv_auth = token.key_for(Pkcs11Uri(token=card.token, id=b"\x01"))
        by_label = token.key_for(Pkcs11Uri(token=card.token, object="PIV AUTH key"))
        assert by_label.key_id == piv_auth.key_id
        # found again by its public key alone, as later steps do (its CKA_ID is the slot, not the key id)
        assert token.key_by_public(piv_auth.public_key).key_id == piv_auth.key_id
        with pytest.raises(MechanismNotSupportedError, match=r"CKA_ALWAYS_AUTHENTICATE, as PIV slot 9c"):
            token.key_for(Pkcs11Uri(token=card.token, id=b"\x02"))

    # the role ceremony names slot 9a in the credentials: that key becomes approver-1's, and none is made
    slot_9a = Pkcs11Uri(token=card.token, id=b"\x01", pin_source=card.pin_source)
    creds = setup.credentials("roles", (1, 3))
    creds.write_text(creds.read_text().replace(format_uri(card), format_uri(slot_9a)))
    code, _, err = setup.ceremony(POLICIES / "roles.yaml", setup.root / "policy-v1.json", "roles", creds=creds)
    assert code == 0, err
    policy = load_policy((setup.tmp / "roles" / "policy-v2.json").read_bytes(), setup.root_cert, highest_seen=1,
                         now=__import__("datetime").datetime.now(__import__("datetime").UTC))  # fmt: skip
    assert policy.approvers["approver-1"].key_id == piv_auth.key_id
    with open_token(card) as token:
        assert sorted((o.label, o.type, o.id) for o in token.objects()) == before
    transcript = json.loads((setup.tmp / "roles" / "transcript.json").read_text())
    assert piv_auth.key_id in base64.b64decode(transcript["payload"]).decode()

    # slot 9c is refused before anything is made, in one line
    slot_9c = Pkcs11Uri(token=card.token, id=b"\x02", pin_source=card.pin_source)
    creds.write_text(creds.read_text().replace(format_uri(slot_9a), format_uri(slot_9c)))
    code, _, err = setup.ceremony(
        POLICIES / "roles.yaml", setup.tmp / "roles" / "policy-v2.json", "roles-9c", creds=creds
    )
    assert code == 1 and "Traceback" not in err
    assert "asks for its PIN again at every use (CKA_ALWAYS_AUTHENTICATE, as PIV slot 9c does)" in err
