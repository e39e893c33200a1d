"""The CSD that signs each company's global CFDIs, loaded and checked once.

A configured CSD that cannot be used stops the agent at start-up with the reason; a
CSD that expires while the agent runs makes each global invoice fail with that reason
(and the panel and `status` say so) instead of crashing a job in the night.
"""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from sync.csd import Csd, CsdError, load_csd
from sync.sandbox_csd import sandbox_csd_files


class Signers:
    def __init__(self, config, data_dir: Path, upstream_kind: str):
        self.config = config
        self.data_dir = data_dir
        self.upstream_kind = upstream_kind
        self._loaded: dict[str, Csd] = {}

    def check(self, now: datetime | None = None) -> None:
        """Load every configured CSD now; CsdError naming the company if one is unusable."""
        for company in self.config.companies:
            if company.csd is not None:
                self._load(company, now)

    def __call__(self, company) -> Csd:
        csd = self._loaded.get(company.key) or self._load(company)
        now = datetime.now(timezone.utc)
        if now > csd.not_after.replace(tzinfo=timezone.utc):
            raise CsdError(f"company {company.rfc}: the CSD expired on {csd.not_after:%Y-%m-%d}; "
                           "configure the new one SAT issued")
        return csd

    def describe(self, company) -> str:
        """One line for status pages."""
        try:
            csd = self(company)
        except CsdError as exc:
            return f"unusable: {exc}"
        source = "sandbox test certificate" if company.csd is None else "configured"
        return f"{source}, No. {csd.certificate_number}, valid until {csd.not_after:%Y-%m-%d}"

    def _load(self, company, now: datetime | None = None) -> Csd:
        if company.csd is not None:
            try:
                password = company.csd.read_password()
            except OSError as exc:
                raise CsdError(f"company {company.rfc}: cannot read {company.csd.password_file}: {exc.strerror}") from None
            try:
                csd = load_csd(company.csd.cer, company.csd.key, password, now=now, expected_rfc=company.rfc)
            except CsdError as exc:
                raise CsdError(f"company {company.rfc}: {exc}") from None
        elif self.upstream_kind == "sandbox":
            cer, key, password = sandbox_csd_files(self.data_dir / "sandbox-csd", company.rfc, company.legal_name)
            csd = load_csd(cer, key, password, now=now, expected_rfc=company.rfc)
        else:
            raise CsdError(f"company {company.rfc} has no csd configured; the {self.upstream_kind} upstream needs one")
        self._loaded[company.key] = csd
        return csd
