"""What a client or worker presents to a cluster with TLS and authentication: a CA to
trust, a client certificate and its key, or a file holding a bearer token."""

from __future__ import annotations

import os
from typing import Optional, Union

PathLike = Union[str, "os.PathLike[str]"]


def credential_paths(
    ca: Optional[PathLike],
    cert: Optional[PathLike],
    key: Optional[PathLike],
    token_file: Optional[PathLike],
) -> tuple[Optional[str], Optional[str], Optional[str], Optional[str]]:
    """The four paths as strings for the native module, checked for the combinations that
    cannot work (a certificate without its key, a certificate without a CA)."""
    if (cert is None) != (key is None):
        raise ValueError("a client certificate needs its key, and a key its certificate")
    if cert is not None and ca is None:
        raise ValueError("a client certificate is presented over TLS only: give ca= too")
    if token_file is not None and ca is None:
        raise ValueError(
            "a bearer token is sent over TLS only (it would travel in plaintext): give ca= too"
        )

    def path(value: Optional[PathLike]) -> Optional[str]:
        return None if value is None else os.fspath(value)

    return (path(ca), path(cert), path(key), path(token_file))
