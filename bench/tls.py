"""A throwaway certificate authority for one run, so the gateway emulator serves HTTPS.

The server under test trusts this CA through ``SSL_CERT_FILE`` in its own environment
(httpx's default SSL context reads it), and only for the run: verification stays on,
and nothing outside the run's temporary directory changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class TlsFiles:
    ca: Path  # the CA certificate, PEM: what clients trust
    cert: Path  # the emulator's chain for 127.0.0.1 and localhost, PEM
    key: Path  # its private key, PEM


def make_tls_files(directory: Path) -> TlsFiles:
    """A new CA and a server certificate for 127.0.0.1 and localhost, written to `directory`."""
    import trustme  # the bench extra; imported here so plain runs do not need it

    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    issued = ca.issue_cert("127.0.0.1", "localhost")
    files = TlsFiles(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    ca.cert_pem.write_to_path(str(files.ca))
    issued.private_key_pem.write_to_path(str(files.key))
    with files.cert.open("wb") as chain:
        for blob in issued.cert_chain_pems:
            chain.write(blob.bytes())
    files.key.chmod(0o600)
    return files
