"""vault.registry: the device maker's allowed-devices list, fed from audited evidence only.

:func:`read_audited` reads the folder ``vault audit --cosign`` wrote and
authenticates every device in it: its proof must verify, with its
certificate, against the current trust policy (station CA, log inclusion,
the cosigners' threshold, station not revoked), and must name the device the
index lists. :func:`write_registry` then writes the list in the forms cloud
services take, and the excluded devices, each with its finding code, beside
it:

- ``allowed-devices.json`` and ``allowed-devices.csv``: device id, serial,
  hardware id, station, log position, certificate (PEM) and proof;
- ``aws-iot-template.json`` and ``aws-iot-bulk.jsonl``: an AWS IoT Core
  provisioning template and one line of its parameters per device (the
  input file of ``StartThingRegistrationTask``, or ``RegisterThing``'s
  ``parameters`` one device at a time);
- ``azure-dps-enrollments.json``: an Azure IoT Hub Device Provisioning
  Service bulk enrollment operation of individual X.509 enrollments;
- ``excluded-devices.json``: every device the audit saw that has no proof,
  with the code of the finding that keeps it out.

Example::

    from vault.registry import read_audited, write_registry
    audited = read_audited(Path("audited"), policy)        # raises InputError on a proof that does not verify
    write_registry(audited, Path("registry"))
"""

from vault.registry._export import FORMS, Audited, RegistryDevice, read_audited, write_registry

__all__ = ["FORMS", "Audited", "RegistryDevice", "read_audited", "write_registry"]
