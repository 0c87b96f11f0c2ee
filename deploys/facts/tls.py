"""Fact: the certificate nginx serves and certbot's lineage for it. Paired with
``deploys/operations/tls.py``."""

from __future__ import annotations

from dataclasses import dataclass

from pyinfra.api import FactBase, QuoteString, StringCommand
from typing_extensions import override

from deploys.core.tls import LETSENCRYPT_DIR

# One line per finding; a file that is missing or does not parse says so, never fails the fact.
_PROBE = r"""
cert=$1; key=$2; lineage=$3
fp() { openssl x509 -in "$1" -noout -fingerprint -sha256 2>/dev/null | cut -d= -f2; }
names() { openssl x509 -in "$1" -noout -ext subjectAltName 2>/dev/null \
  | tr ',' '\n' | sed -n 's/^ *DNS://p' | sort | tr '\n' ' '; }
if [ -e "$cert" ]; then
  echo "served_fp $(fp "$cert")"
  echo "served_names $(names "$cert")"
fi
[ -e "$key" ] && echo "key_present"
if [ -n "$lineage" ] && [ -e "$LE/renewal/$lineage.conf" ]; then
  echo "lineage_server $(sed -n 's/^server *= *//p' "$LE/renewal/$lineage.conf")"
  echo "lineage_hook $(sed -n 's/^renew_hook *= *//p' "$LE/renewal/$lineage.conf")"
  echo "lineage_fp $(fp "$LE/live/$lineage/fullchain.pem")"
  echo "lineage_names $(names "$LE/live/$lineage/cert.pem")"
fi
true
"""


@dataclass(frozen=True)
class Certificates:
    served_fingerprint: str | None = None  # None: no certificate at the path (or unreadable)
    served_names: tuple[str, ...] = ()
    key_present: bool = False
    lineage_server: str | None = None  # None: certbot has no lineage by that name
    lineage_fingerprint: str | None = None
    lineage_hook: str | None = None  # the deploy hook certbot saved for renewals
    lineage_names: tuple[str, ...] = ()


class TlsCertificates(FactBase[Certificates]):
    """
    Returns the served certificate's SHA-256 fingerprint and names, whether the key exists, and
    certbot's lineage: its ACME server, saved deploy hook, fingerprint and names. One command;
    needs ``openssl`` for the certificate details.

    + certificate_path: the certificate nginx serves
    + key_path: its key
    + lineage: certbot's certificate name, or "" for none (``files`` mode)

    .. code:: python

        host.get_fact(TlsCertificates, certificate_path="/etc/nginx/tls/fullchain.pem",
                      key_path="/etc/nginx/tls/privkey.pem", lineage="matrix.example.org")
    """

    default = Certificates

    @override
    def command(self, certificate_path: str, key_path: str, lineage: str) -> StringCommand:
        return StringCommand(
            f"LE={LETSENCRYPT_DIR}",
            "sh",
            "-c",
            QuoteString(_PROBE),
            "probe",
            QuoteString(certificate_path),
            QuoteString(key_path),
            QuoteString(lineage),
        )

    @override
    def process(self, output: list[str]) -> Certificates:
        found: dict[str, str] = {}
        for line in output:
            key, _, value = line.partition(" ")
            found[key] = value.strip()
        return Certificates(
            served_fingerprint=found.get("served_fp") or None,
            served_names=tuple(found.get("served_names", "").split()),
            key_present="key_present" in found,
            lineage_server=found.get("lineage_server") or None,
            lineage_fingerprint=found.get("lineage_fp") or None,
            lineage_hook=found.get("lineage_hook") or None,
            lineage_names=tuple(found.get("lineage_names", "").split()),
        )
