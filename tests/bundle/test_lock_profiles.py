"""Lock profiles in the release description: checked against the chip's eFuse table at build, shown to approvers."""

from __future__ import annotations

import json

from tests.bundle.conftest import Release
from tests.cli.test_token_cli import assert_one_line_error
from vault.verify.devices import SimulatedDevice, lock_device

DIGEST = "9f" * 32
PROFILE = f"""lock_profiles:
  production:
    chip: esp32s3
    efuses:
      DIS_PAD_JTAG: 1
      SOFT_DIS_JTAG: 7
    keys:
      - block: BLOCK_KEY0
        purpose: SECURE_BOOT_DIGEST0
        digest: "{DIGEST}"
"""


def test_a_lock_profile_is_built_into_the_signed_statement_and_shown_to_approvers(release: Release) -> None:
    out = release.setup.tmp / "locked.vbundle"
    code, _, err = release.bundle("build", str(release.description(extra=PROFILE)), "-o", str(out))
    assert code == 0, err
    code, stdout, err = release.bundle("inspect", str(out), "--json")
    assert code == 0, err
    assert json.loads(stdout)["lock_profiles"] == {
        "production": {
            "chip": "esp32s3",
            "efuses": {"DIS_PAD_JTAG": 1, "SOFT_DIS_JTAG": 7},
            "keys": [{"block": "BLOCK_KEY0", "purpose": "SECURE_BOOT_DIGEST0", "digest": DIGEST}],
        }
    }
    code, stdout, err = release.bundle("inspect", str(out))
    assert code == 0, err
    line = (
        f"lock profile  production (esp32s3): DIS_PAD_JTAG=1, SOFT_DIS_JTAG=7, BLOCK_KEY0 SECURE_BOOT_DIGEST0 {DIGEST}"
    )
    assert line in stdout


def test_a_release_without_lock_profiles_builds_and_reads_as_before(release: Release) -> None:
    out = release.setup.tmp / "plain.vbundle"
    code, _, err = release.bundle("build", str(release.description()), "-o", str(out))
    assert code == 0, err
    code, stdout, err = release.bundle("inspect", str(out), "--json")
    assert code == 0, err
    assert json.loads(stdout)["lock_profiles"] == {}
    code, stdout, _ = release.bundle("inspect", str(out))
    assert "lock profile" not in stdout


def line_of(release: Release, text: str) -> int:
    lines = (release.setup.tmp / "bad.yaml").read_text().splitlines()
    return next(i for i, line in enumerate(lines, 1) if text in line)


def test_every_lock_profile_refusal_names_the_file_line_and_field_before_anything_is_built(release: Release) -> None:
    cases = [  # first: an eFuse name the chip does not have, refused before anything is built
        (PROFILE.replace("SOFT_DIS_JTAG: 7", "DIS_JTAG: 1"), "DIS_JTAG: 1", "no eFuse 'DIS_JTAG' (did you mean"),
        (PROFILE.replace("SOFT_DIS_JTAG: 7", "SOFT_DIS_JTAG: 9"), "SOFT_DIS_JTAG: 9", "efuses.SOFT_DIS_JTAG: SOFT_DIS"),
        (PROFILE.replace("chip: esp32s3", "chip: esp32c3"), "chip: esp32c3", "production.chip: the esp32 adapter"),
        (PROFILE.replace("BLOCK_KEY0", "BLOCK_KEY7"), "BLOCK_KEY7", "keys[0].block: esp32s3 has no key block"),
        (PROFILE.replace("SECURE_BOOT_DIGEST0", "HMAC_UP"), "HMAC_UP", "keys[0].purpose: a profile burns public"),
        (PROFILE.replace(f'"{DIGEST}"', "abc"), "digest: abc", "keys[0].digest: expected 64 hex digits"),
        (PROFILE.replace("    chip:", "    chips:"), "chips:", "unknown field 'chips' (did you mean 'chip'?)"),
    ]
    for extra, text, expected in cases:
        path = release.description("bad.yaml", extra=extra)
        code, _, err = release.bundle("build", str(path), "-o", str(release.setup.tmp / "bad.vbundle"))
        assert code == 1, text
        assert_one_line_error(err, f"bad.yaml:{line_of(release, text)}: ")
        assert expected in err, err
        assert not (release.setup.tmp / "bad.vbundle").exists()


def test_an_offset_an_esp_chip_cannot_write_is_refused_with_its_line(release: Release) -> None:
    path = release.description("bad.yaml", extra=PROFILE)
    path.write_text(path.read_text().replace('"0x08000000"', '"0x10010"'))
    code, _, err = release.bundle("build", str(path), "-o", str(release.setup.tmp / "bad.vbundle"))
    assert code == 1
    assert_one_line_error(
        err,
        f"bad.yaml:{line_of(release, '0x10010')}: images[0].load_address: 0x10010 is not a multiple of 0x1000",
    )


class Recording(SimulatedDevice):
    """A device whose adapter applies lock profiles: records what the station hands it."""

    profiles: object = None

    def lock_with(self, profiles: object) -> None:
        self.profiles = profiles


def test_the_lock_step_hands_the_profiles_to_an_adapter_that_applies_them_and_locks_others() -> None:
    profiles = {"production": {"chip": "esp32s3", "efuses": {"DIS_PAD_JTAG": 1}}}
    recording = Recording()
    lock_device(recording, profiles)
    assert recording.profiles == profiles and not recording.locked
    plain = SimulatedDevice()
    lock_device(plain, profiles)
    assert plain.locked


def secrets(*targets: str) -> str:
    return "secrets:\n" + "".join(f"  - {{name: s{i}, kind: psk-256, target: '{t}'}}\n" for i, t in enumerate(targets))


def test_a_secret_target_the_esp32_adapter_cannot_install_is_refused_with_its_line(release: Release) -> None:
    cases = [
        (("otp:3",), "otp:3", "secrets[0].target: the esp32 adapter has no secret target 'otp:3' (it takes nvs:"),
        (("nvs:psk", "efuse:BLOCK_KEY2/USER"), "USER", "secrets[1].target: the esp32 adapter burns a secret only"),
        (("nvs:psk", "nvs:vault/psk"), "nvs:vault/psk", "secrets[1].target: another secret already goes to nvs:vault"),
        (("efuse:BLOCK_KEY0/HMAC_UP",), "BLOCK_KEY0/", "a lock profile burns a public-key digest into BLOCK_KEY0"),
    ]
    for targets, text, expected in cases:
        path = release.description("bad.yaml", extra=PROFILE + secrets(*targets))
        code, _, err = release.bundle("build", str(path), "-o", str(release.setup.tmp / "bad.vbundle"))
        assert code == 1, text
        assert_one_line_error(err, f"bad.yaml:{line_of(release, text)}: ")
        assert expected in err, err
        assert not (release.setup.tmp / "bad.vbundle").exists()
    # targets the adapter takes pass these checks (this policy then has no secrets recipient to seal them to)
    path = release.description(
        "bad.yaml", extra=PROFILE + secrets("nvs:psk", "nvs:wifi/psk", "efuse:BLOCK_KEY3/HMAC_UP")
    )
    code, _, err = release.bundle("build", str(path), "-o", str(release.setup.tmp / "bad.vbundle"))
    assert code == 1 and "names no secrets recipient" in err, err
    # without an ESP chip's lock profile the target is another adapter's business
    path = release.description("bad.yaml", extra=secrets("otp:3"))
    code, _, err = release.bundle("build", str(path), "-o", str(release.setup.tmp / "bad.vbundle"))
    assert code == 1 and "names no secrets recipient" in err, err
